#!/usr/bin/env bash
# Builds (once) and caches the real Kubernetes API server and etcd that the
# tests run, at the versions pinned in versions.env.
#
#   tests/kube/install.sh [--with-kubectl]
#
# On stdout it prints only `NAME=<absolute path>` lines, so a caller can eval
# them or parse them:
#
#   KUBE_APISERVER=/root/.cache/trellis/kube-v1.37.2/kube-apiserver
#   ETCD=/root/.cache/trellis/etcd-v3.7.4/etcd
#   KUBECTL=/root/.cache/trellis/kube-v1.37.2/kubectl   (only with --with-kubectl)
#
# Everything else goes to stderr. The cache root is $TRELLIS_CACHE, by default
# $HOME/.cache/trellis. A cached binary is reused when it runs, reports the
# pinned version, and was built from the current go.mod/go.sum; otherwise it is
# rebuilt from the Go modules (needs the go command and the Go module proxy;
# the first build of kube-apiserver takes a quarter of an hour on 2 cores).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[kube/install] %s\n' "$*" >&2; }
die() {
    printf '[kube/install] error: %s\n' "$*" >&2
    exit 1
}

with_kubectl=0
for arg in "$@"; do
    case "$arg" in
    --with-kubectl) with_kubectl=1 ;;
    -h | --help)
        sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
        exit 0
        ;;
    *) die "unknown argument: $arg (usage: $0 [--with-kubectl])" ;;
    esac
done

# ---- pinned versions ------------------------------------------------------
KUBE_VERSION=""
ETCD_VERSION=""
ETCD_SOURCE=""
# shellcheck source=versions.env
. "$here/versions.env"
[[ "$KUBE_VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] ||
    die "versions.env: KUBE_VERSION must look like v1.N.P, got '$KUBE_VERSION'"
staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
kube_minor="${BASH_REMATCH[1]}"
if [ "$ETCD_SOURCE" = "debian" ]; then
    [ -z "$ETCD_VERSION" ] || die "versions.env: set ETCD_VERSION or ETCD_SOURCE=debian, not both"
else
    [ -z "$ETCD_SOURCE" ] || die "versions.env: ETCD_SOURCE may only be 'debian' (or unset), got '$ETCD_SOURCE'"
    [[ "$ETCD_VERSION" =~ ^v3\.[0-9]+\.[0-9]+$ ]] ||
        die "versions.env: ETCD_VERSION must look like v3.N.P, got '$ETCD_VERSION'"
fi

# ---- go.mod must agree with versions.env ----------------------------------
# The version of `module` required in the go.mod file $1 (single-line or block
# form).
required_version() {
    awk -v m="$2" '
        $1 == "require" && $2 == m { print $3 }
        $1 == m && $2 ~ /^v/ { print $2 }
    ' "$1"
}
mod_kube="$(required_version "$here/go.mod" k8s.io/kubernetes)"
[ "$mod_kube" = "$KUBE_VERSION" ] ||
    die "tests/kube/go.mod requires k8s.io/kubernetes '$mod_kube' but versions.env says KUBE_VERSION=$KUBE_VERSION; update go.mod (cd tests/kube && go get k8s.io/kubernetes@$KUBE_VERSION, fix the replace lines, go mod tidy) or versions.env so they agree"
bad_replaces="$(awk -v want="$staging_version" '
    $2 == "=>" && $1 ~ /^k8s\.io\// && ($3 != $1 || $4 != want) { print "  " $0 }
' "$here/go.mod")"
[ -z "$bad_replaces" ] ||
    die "tests/kube/go.mod: every k8s.io/* replace must be 'k8s.io/X => k8s.io/X $staging_version' (staging v0.N.P for kubernetes v1.N.P); these are not:
$bad_replaces"
if [ "$ETCD_SOURCE" != "debian" ]; then
    mod_etcd="$(required_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
    [ "$mod_etcd" = "$ETCD_VERSION" ] ||
        die "tests/kube/etcd/go.mod requires go.etcd.io/etcd/server/v3 '$mod_etcd' but versions.env says ETCD_VERSION=$ETCD_VERSION; make them agree (cd tests/kube/etcd && go get go.etcd.io/etcd/server/v3@$ETCD_VERSION && go mod tidy)"
fi

# ---- cache ------------------------------------------------------------------
cache_root="${TRELLIS_CACHE:-${HOME:?HOME is unset; set TRELLIS_CACHE}/.cache/trellis}"
mkdir -p "$cache_root"
cache_root="$(cd "$cache_root" && pwd)"
kube_dir="$cache_root/kube-$KUBE_VERSION"
etcd_dir="$cache_root/etcd-$ETCD_VERSION"

# Two installs at once would build twice; the second waits for the first.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache_root/.install.lock"
    flock 9
fi

# Version stamping, as Kubernetes's own build does (hack/lib/version.sh): without
# it the binaries report v0.0.0-master.
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
done
etcd_ldflags="-s -w"

# What a cached binary was built from; a change rebuilds it.
inputs_hash() { # <module dir> <ldflags>
    { cat "$1/go.mod" "$1/go.sum"; printf '%s\n' "$2"; } | sha256sum | cut -d' ' -f1
}

# The version a binary reports (kubectl has `version --client`, not --version).
version_of() {
    case "$(basename "$1")" in
    kubectl) "$1" version --client 2>&1 ;;
    *) "$1" --version 2>&1 ;;
    esac
}

# cached <binary> <version substring> <inputs hash>: is it usable as it is?
cached() {
    [ -x "$1" ] && [ -f "$1.inputs" ] && [ "$(cat "$1.inputs")" = "$3" ] || return 1
    local out
    out="$(version_of "$1")" || return 1
    [[ "$out" == *"$2"* ]]
}

tmp_dirs=()
cleanup() {
    local d
    for d in "${tmp_dirs[@]+"${tmp_dirs[@]}"}"; do rm -rf "$d"; done
}
trap cleanup EXIT

# build <module dir> <package> <dest> <version substring> <ldflags> <hash>
build() {
    local module="$1" pkg="$2" dest="$3" want="$4" ldflags="$5" hash="$6"
    command -v go >/dev/null 2>&1 ||
        die "$dest is not cached and the go command is not on PATH; install Go (see tests/kube/README.md)"
    mkdir -p "$(dirname "$dest")"
    local tmp
    tmp="$(mktemp -d "$(dirname "$dest")/.build.XXXXXX")"
    tmp_dirs+=("$tmp")
    local start=$SECONDS
    log "building $pkg into $dest ($(go version | cut -d' ' -f3-)); the first build can take 10-20 minutes"
    (
        cd "$module"
        # GOWORK=off: a go.work further up must not change what is built.
        # -mod=readonly: go.sum is committed; a missing entry is an error,
        # never a silent download of something unpinned.
        CGO_ENABLED=0 GOWORK=off go build -mod=readonly -trimpath \
            -ldflags "$ldflags" -o "$tmp/out" "$pkg"
    ) >&2 || die "go build $pkg failed (see above)"
    # Named like the destination so version_of knows how to ask it.
    mv "$tmp/out" "$tmp/$(basename "$dest")"
    local built="$tmp/$(basename "$dest")" out
    out="$(version_of "$built")" || die "the freshly built $pkg does not run: $out"
    [[ "$out" == *"$want"* ]] || die "the freshly built $pkg reports '$out', expected '$want'"
    printf '%s\n' "$hash" >"$built.inputs"
    # Same filesystem: each rename is atomic. The stamp goes last so a
    # binary is never taken with a stale stamp.
    mv -f "$built" "$dest"
    mv -f "$built.inputs" "$dest.inputs"
    log "built $dest in $((SECONDS - start)) s"
}

# Every k8s.io/* module that k8s.io/kubernetes takes from its ./staging must be
# replaced here; otherwise Go would look for the nonexistent v0.0.0.
check_staging_replaces() {
    local upstream_mod missing=""
    upstream_mod="$(cd "$here" && GOWORK=off go list -mod=readonly -m -f '{{.GoMod}}' k8s.io/kubernetes)" ||
        die "cannot read the go.mod of k8s.io/kubernetes $KUBE_VERSION"
    local m
    for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$upstream_mod"); do
        grep -qE "^[[:space:]]*(replace[[:space:]]+)?$m[[:space:]]+=>" "$here/go.mod" || missing+=" $m"
    done
    [ -z "$missing" ] ||
        die "tests/kube/go.mod lacks replace lines for these staging modules of k8s.io/kubernetes $KUBE_VERSION:$missing (add 'M => M $staging_version' for each)"
}

# ---- kube-apiserver (and kubectl) -------------------------------------------
kube_hash="$(inputs_hash "$here" "$kube_ldflags")"
apiserver="$kube_dir/kube-apiserver"
kubectl="$kube_dir/kubectl"
need_kube=0
cached "$apiserver" "Kubernetes $KUBE_VERSION" "$kube_hash" || need_kube=1
if [ "$with_kubectl" = 1 ]; then
    cached "$kubectl" "$KUBE_VERSION" "$kube_hash" || need_kube=1
fi
if [ "$need_kube" = 1 ]; then
    check_staging_replaces
    cached "$apiserver" "Kubernetes $KUBE_VERSION" "$kube_hash" ||
        build "$here" k8s.io/kubernetes/cmd/kube-apiserver "$apiserver" "Kubernetes $KUBE_VERSION" "$kube_ldflags" "$kube_hash"
    if [ "$with_kubectl" = 1 ]; then
        cached "$kubectl" "$KUBE_VERSION" "$kube_hash" ||
            build "$here" k8s.io/kubernetes/cmd/kubectl "$kubectl" "$KUBE_VERSION" "$kube_ldflags" "$kube_hash"
    fi
else
    log "cached: $apiserver"
fi

# ---- etcd -----------------------------------------------------------------
if [ "$ETCD_SOURCE" = "debian" ]; then
    etcd="/usr/bin/etcd"
    if [ ! -x "$etcd" ]; then
        [ "$(id -u)" -eq 0 ] ||
            die "etcd is not installed and only root can install it: run 'apt-get install -y etcd-server' as root, or this script as root"
        log "installing Debian's etcd-server"
        DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >&2; } ||
            die "apt-get install etcd-server failed"
    fi
    etcd_out="$("$etcd" --version 2>&1)" || die "$etcd --version failed: $etcd_out"
    [[ "$etcd_out" =~ etcd\ Version:\ 3\.([0-9]+)\. ]] && [ "${BASH_REMATCH[1]}" -ge 5 ] ||
        die "$etcd is too old for kube-apiserver $KUBE_VERSION (needs etcd >= 3.5): $etcd_out; pin ETCD_VERSION in versions.env to build it instead"
else
    etcd="$etcd_dir/etcd"
    etcd_hash="$(inputs_hash "$here/etcd" "$etcd_ldflags")"
    if cached "$etcd" "etcd Version: ${ETCD_VERSION#v}" "$etcd_hash"; then
        log "cached: $etcd"
    else
        build "$here/etcd" go.etcd.io/etcd/server/v3 "$etcd" "etcd Version: ${ETCD_VERSION#v}" "$etcd_ldflags" "$etcd_hash"
    fi
fi

printf 'KUBE_APISERVER=%s\n' "$apiserver"
printf 'ETCD=%s\n' "$etcd"
if [ "$with_kubectl" = 1 ]; then printf 'KUBECTL=%s\n' "$kubectl"; fi
