#!/usr/bin/env bash
# Installs the CRDs Trellis reads but does not ship, from the upstream Go
# modules (Go's module cache; nothing is vendored into this repository):
#
#   sigs.k8s.io/gateway-api  config/crd/experimental/  GatewayClass, Gateway,
#                            HTTPRoute, GRPCRoute (the experimental channel
#                            keeps HTTPRoute rule names, which TrafficPolicy's
#                            sectionName uses)
#   istio.io/api             kubernetes/customresourcedefinitions.gen.yaml:
#                            AuthorizationPolicy, WorkloadEntry only
#
# Needs go and kubectl (the cluster of $KUBECONFIG or the current context).
# The versions are the ones the end-to-end tests run against
# (tests/src/kube.rs checks they agree). Server-side apply: re-running it
# upgrades in place, and the large CRDs do not hit the client-side apply
# annotation limit.
set -euo pipefail

GATEWAY_API_VERSION=v1.3.0
ISTIO_API_VERSION=v1.32.0

GATEWAY_API_KINDS="gatewayclasses gateways httproutes grpcroutes"
ISTIO_CRDS="authorizationpolicies.security.istio.io workloadentries.networking.istio.io"

KUBECTL="${KUBECTL:-kubectl}"

die() { echo "install-prerequisites.sh: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not installed; it fetches the CRDs from the Go module proxy into the module cache"

# The module's folder in the Go module cache (downloaded if missing).
module_dir() {
    local dir
    dir="$(cd "${TMPDIR:-/tmp}" && GOFLAGS=-mod=mod go mod download -json "$1" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" \
        || die "go mod download $1 failed"
    [ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $1 gave no module folder"
    printf '%s\n' "$dir"
}

# The documents of a multi-document YAML file whose metadata.name is one of
# the given names (CRD names sit at two spaces of indent under metadata).
select_crds() {
    awk -v want=" $2 " '
        function flush() { if (keep) printf "---\n%s", doc; doc = ""; keep = 0 }
        /^---/ { flush(); next }
        {
            doc = doc $0 "\n"
            if ($0 ~ /^  name: /) { name = $2; if (index(want, " " name " ")) keep = 1 }
        }
        END { flush() }
    ' "$1"
}

gateway_dir="$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")/config/crd/experimental"
istio_file="$(module_dir "istio.io/api@$ISTIO_API_VERSION")/kubernetes/customresourcedefinitions.gen.yaml"

files=()
for kind in $GATEWAY_API_KINDS; do
    f="$gateway_dir/gateway.networking.k8s.io_$kind.yaml"
    [ -f "$f" ] || die "no $f in sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
    files+=(-f "$f")
done

istio_crds="$(select_crds "$istio_file" "$ISTIO_CRDS")"
for name in $ISTIO_CRDS; do
    grep -q "^  name: $name\$" <<<"$istio_crds" || die "no CRD $name in $istio_file"
done

"$KUBECTL" apply --server-side --force-conflicts "${files[@]}"
"$KUBECTL" apply --server-side --force-conflicts -f - <<<"$istio_crds"

names=()
for kind in $GATEWAY_API_KINDS; do names+=("crd/$kind.gateway.networking.k8s.io"); done
for name in $ISTIO_CRDS; do names+=("crd/$name"); done
"$KUBECTL" wait --for=condition=Established --timeout=60s "${names[@]}"
