#!/usr/bin/env bash
# Reruns every figure of the README's "Ambient against sidecars" section, in
# one command, on this machine (root: the benches build network namespaces):
#
#   sudo bash perf/ambient-vs-sidecars.sh [--quick]
#
# 1. trellis-bench: the L4 workloads (throughput, 64 B round trip, HTTP at a
#    fixed rate, new connections) for direct, Trellis ambient, ambient with a
#    waypoint, the Envoy sidecars L4 and L7, and Trellis sidecar-shaped; mesh memory against idle pods per node; memory
#    against mesh size; the call chain (latency and mesh CPU per request,
#    every column) -> results/latest.{json,md} (quick.* with --quick)
# 2. trellis-bench --only pod-start: from a pod's start to its first meshed
#    request -> results/pod-start.{json,md}
# 3. trellis-l7-bench: the waypoint against an Envoy waypoint and nginx
#    -> results/l7-latest.{json,md} (l7-quick.* with --quick)
# 4. trellis-plots: the charts, from the newest results -> results/plots/
#
# Envoy comes from PyPI (perf/envoy/install.sh, pinned in
# perf/envoy/versions.env), nginx from Debian's nginx-light. A full run
# takes about 45 minutes on 2 CPUs; --quick about 15. Other work on the
# machine disturbs the latency and CPU figures (not the memory ones): run it
# on a quiet machine. The benches take /run/lock/trellis-bench.lock, so two
# never run at once.
set -euo pipefail

cd "$(dirname "$0")/.."

quick=()
case "${1:-}" in
    "") ;;
    --quick) quick=(--quick) ;;
    *) echo "usage: sudo bash perf/ambient-vs-sidecars.sh [--quick]" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
    echo "error: the benchmarks build network namespaces and need root; run with sudo" >&2
    exit 1
fi
command -v nginx >/dev/null 2>&1 || {
    echo "installing nginx-light for the nginx column" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light >&2
}

say() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

say "building the proxies and the benches (release)"
cargo build --release -p trellis-perf -p trellis-node-proxy -p trellis-waypoint

bin=target/release
say "trellis-bench: L4 workloads, memory, mesh size, call chain"
"$bin/trellis-bench" "${quick[@]}"
say "trellis-bench --only pod-start"
"$bin/trellis-bench" --only pod-start "${quick[@]}"
say "trellis-l7-bench: the waypoint against the Envoy waypoint and nginx"
"$bin/trellis-l7-bench" "${quick[@]}"
say "trellis-plots"
"$bin/trellis-plots"
say "done: perf/results/ and perf/results/plots/"
