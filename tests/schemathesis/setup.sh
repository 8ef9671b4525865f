#!/usr/bin/env bash
# Installs schemathesis (PyPI) into <repo>/.cache/schemathesis/venv for the API
# conformance test (tests/it/openapi.rs). Idempotent: a stamp records the installed
# version; safe to run concurrently (flock). Everything it says goes to stderr.
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"

log() { echo "[schemathesis-setup] $*" >&2; }
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="$REPO_ROOT/.cache/schemathesis"
VENV="$DIR/venv"
STAMP="$DIR/installed.stamp"
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
if [[ -x "$VENV/bin/schemathesis" && "$(cat "$STAMP" 2>/dev/null)" == "$SCHEMATHESIS_VERSION" ]]; then
    exit 0
fi
log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
echo "$SCHEMATHESIS_VERSION" > "$STAMP"
