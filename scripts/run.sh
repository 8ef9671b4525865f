#!/usr/bin/env bash
# Runs Keel from source: `keel serve` in release mode, with any extra arguments passed on
# (e.g. `./scripts/run.sh --listen 0.0.0.0:8080`). The `v8` crate downloads its prebuilt V8
# library on the first build; where ../shared/v8 sits beside the repository (machines
# without that download), its installer puts the library where the crate looks first.
# Without DATABASE_URL, Keel uses the local PostgreSQL or starts a private cluster. The web
# console (console/, embedded in the binary) is built first by scripts/console.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -x ../shared/v8/install.sh ]]; then
    ../shared/v8/install.sh >&2
fi
bash scripts/console.sh
exec cargo run --release -- serve "$@"
