#!/usr/bin/env bash
# Long versions of the fault tests (tests/it/faults.rs) with the history checker: kill -9
# ten times every 5 s under load, three Postgres crashes of 10 s, a destination failing for
# minutes, actor panics. Several minutes; not part of CI (which runs the short versions).
# Prints each test's figures (the FIGURES lines), the source of docs/reliability.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KEEL_FAULT_LONG=1 cargo nextest run --profile faults --test it --no-capture \
    --test-threads 1 -E 'test(/^faults::/)' "$@" 2>&1 | tee target/faults.log
grep '^FIGURES' target/faults.log || true
