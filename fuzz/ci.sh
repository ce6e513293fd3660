#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (TRELLIS_FUZZ_SECONDS, default
# 25 s each) from its seeds in fuzz/seeds/, and fails if any crashed.
# tests/run (and so .ci/run) calls it after the tests pass. Stable
# toolchain: cargo-fuzz with --sanitizer none needs no nightly (libFuzzer's
# coverage comes from -Cpasses=sancov-module, a stable flag). Crashing
# inputs land in fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")"

say() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# Pinned: a new cargo-fuzz may change its flags or libFuzzer defaults.
CARGO_FUZZ_VERSION=0.13.1
seconds="${TRELLIS_FUZZ_SECONDS:-25}"
targets=(hbone_connect hbone_lite zds xds cni csr sniff waypoint_l7 config_yaml manifests)

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# Outside the checkout, so later runs on the same machine (a fresh clone
# each time in CI) reuse the release build of every dependency: a cold build
# is ~17 min on 2 shared cores, a warm one seconds. The corpus that runs
# grow lives there too.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trellis/fuzz-target}"
corpus="$CARGO_TARGET_DIR/corpus"

# cargo fuzz has no --locked: check first that fuzz/Cargo.lock is current,
# so that CI builds what the repository pins and never rewrites it.
say "fetching the fuzz crate's dependencies (fuzz/Cargo.lock, --locked)"
cargo fetch --locked --target "$(rustc -vV | sed -n 's/^host: //p')"

say "building the fuzz targets (into $CARGO_TARGET_DIR, kept between runs)"
cargo fuzz build --sanitizer none

failed=()
for t in "${targets[@]}"; do
    say "fuzzing $t for ${seconds}s"
    # The first corpus directory collects what the run finds; the seeds in
    # the repository are only read.
    mkdir -p "$corpus/$t"
    if ! cargo fuzz run --sanitizer none "$t" "$corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        echo "error: fuzz target $t crashed; the input is in fuzz/artifacts/$t/ (reproduce: cd fuzz && cargo fuzz run -s none $t <file>)" >&2
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: fuzz targets that crashed: ${failed[*]}" >&2
    exit 1
fi
say "all ${#targets[@]} fuzz targets ran ${seconds}s each without a crash"
