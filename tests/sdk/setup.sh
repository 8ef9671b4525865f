#!/usr/bin/env bash
# Installs the real Segment and RudderStack SDKs used by the SDK compatibility
# tests into <repo>/.cache/sdk (a Python venv and a node_modules tree).
#
# Idempotent: a stamp file records the installed versions and the work is
# skipped when they match. Safe to run concurrently (flock on a lock file).
# Everything it says goes to stderr; it exits non-zero on any failure.
set -euo pipefail

RUDDER_PY_VERSION="2.1.9"
SEGMENT_PY_VERSION="2.4.0"
RUDDER_NODE_VERSION="3.0.13"
SEGMENT_NODE_VERSION="3.1.0"

log() { echo "[sdk-setup] $*" >&2; }
die() { echo "[sdk-setup] ERROR: $*" >&2; exit 1; }

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
SDK_DIR="$REPO_ROOT/.cache/sdk"
VENV_DIR="$SDK_DIR/venv"
NODE_DIR="$SDK_DIR/node"
LOCK_FILE="$SDK_DIR/.lock"
PY_STAMP="$SDK_DIR/python.stamp"
NODE_STAMP="$SDK_DIR/node.stamp"

PYTHON="${KEEL_SDK_PYTHON:-python3}"
PY_WANT="rudder-sdk-python==$RUDDER_PY_VERSION segment-analytics-python==$SEGMENT_PY_VERSION"
NODE_WANT="@rudderstack/rudder-sdk-node@$RUDDER_NODE_VERSION @segment/analytics-node@$SEGMENT_NODE_VERSION"

command -v flock >/dev/null 2>&1 || die "flock not found (util-linux)"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
command -v node >/dev/null 2>&1 || die "node not found (Node >= 18 required)"
command -v npm >/dev/null 2>&1 || die "npm not found"

mkdir -p "$SDK_DIR"
exec 9>"$LOCK_FILE"
log "waiting for lock $LOCK_FILE"
flock 9 || die "could not take lock $LOCK_FILE"

# ---- Python ---------------------------------------------------------------
if [[ -f "$PY_STAMP" && "$(cat "$PY_STAMP")" == "$PY_WANT" && -x "$VENV_DIR/bin/python" ]]; then
    log "python SDKs up to date ($PY_WANT)"
else
    rm -f "$PY_STAMP"
    if [[ ! -x "$VENV_DIR/bin/python" ]]; then
        log "creating venv $VENV_DIR with $("$PYTHON" --version 2>&1)"
        rm -rf "$VENV_DIR"
        "$PYTHON" -m venv "$VENV_DIR" || die "python3 -m venv failed"
    fi
    log "pip install $PY_WANT"
    # shellcheck disable=SC2086
    "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --quiet $PY_WANT >&2 \
        || die "pip install of the python SDKs failed"
    "$VENV_DIR/bin/python" -c "import rudderstack.analytics, segment.analytics" \
        || die "python SDKs installed but cannot be imported"
    echo "$PY_WANT" > "$PY_STAMP"
    log "python SDKs installed"
fi

# ---- Node -----------------------------------------------------------------
if [[ -f "$NODE_STAMP" && "$(cat "$NODE_STAMP")" == "$NODE_WANT" && -d "$NODE_DIR/node_modules" ]]; then
    log "node SDKs up to date ($NODE_WANT)"
else
    rm -f "$NODE_STAMP"
    mkdir -p "$NODE_DIR"
    if [[ ! -f "$NODE_DIR/package.json" ]]; then
        printf '{\n  "name": "keel-sdk-tests",\n  "private": true,\n  "version": "0.0.0"\n}\n' \
            > "$NODE_DIR/package.json"
    fi
    log "npm install $NODE_WANT (in $NODE_DIR)"
    # shellcheck disable=SC2086
    (cd "$NODE_DIR" && npm install --save-exact --no-audit --no-fund --loglevel=error $NODE_WANT) >&2 \
        || die "npm install of the node SDKs failed"
    (cd "$NODE_DIR" && node --input-type=module -e \
        "await import('@rudderstack/rudder-sdk-node'); await import('@segment/analytics-node');") \
        || die "node SDKs installed but cannot be imported"
    echo "$NODE_WANT" > "$NODE_STAMP"
    log "node SDKs installed"
fi

log "done: venv=$VENV_DIR node_modules=$NODE_DIR/node_modules"
