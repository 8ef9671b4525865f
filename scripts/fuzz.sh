#!/usr/bin/env bash
# Fuzzes the gateway's request reader/normaliser and the warehouse flattener with cargo fuzz
# (libFuzzer, nightly toolchain): `bash scripts/fuzz.sh [SECONDS]` runs each target for
# SECONDS (default 10, what scripts/test.sh uses in CI); a long run is e.g.
# `bash scripts/fuzz.sh 1800`. Installs cargo-fuzz if missing. The corpus grows in
# fuzz/corpus/<target> (not committed) from the seeds in fuzz/seeds/<target>; a crash leaves
# its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-10}"
log() { echo "[fuzz] $*" >&2; }

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    log "no nightly toolchain (cargo fuzz needs one): rustup toolchain install nightly"
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz >&2
fi
cd fuzz
# Safe Rust only: no sanitizer (it would only slow the run); debug assertions catch overflow.
cargo +nightly fuzz build --sanitizer none --debug-assertions >&2
for target in normalize flatten; do
    mkdir -p "corpus/$target"
    log "$target for ${seconds}s"
    cargo +nightly fuzz run --sanitizer none --debug-assertions "$target" \
        "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >&2 2>"corpus/$target.log" \
        || { tail -40 "corpus/$target.log" >&2; log "$target: failure, input in fuzz/artifacts/$target/"; exit 1; }
    grep -E 'stat::number_of_executed_units|Done' "corpus/$target.log" | tail -2 >&2 || true
done
