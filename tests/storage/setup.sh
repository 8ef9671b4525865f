#!/usr/bin/env bash
# Installs what the object-storage and ClickHouse tests need: an S3-protocol server
# (moto's `moto_server`) and DuckDB (reads the Parquet files back) in a Python venv under
# <repo>/.cache/storage, and Debian's `clickhouse-server` when no `clickhouse-server`
# binary is on PATH. The tests start both servers themselves, on free ports with private
# data folders, and stop them.
#
# Idempotent (a stamp file records the installed versions); safe to run concurrently
# (flock). Everything it says goes to stderr; it exits non-zero on any failure.
set -euo pipefail

MOTO_VERSION="5.2.5"
DUCKDB_VERSION="2.0.0"

log() { echo "[storage-setup] $*" >&2; }
die() { echo "[storage-setup] ERROR: $*" >&2; exit 1; }

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
DIR="$REPO_ROOT/.cache/storage"
VENV_DIR="$DIR/venv"
STAMP="$DIR/python.stamp"
PYTHON="${KEEL_SDK_PYTHON:-python3}"
WANT="moto[server]==$MOTO_VERSION duckdb==$DUCKDB_VERSION"

command -v flock >/dev/null 2>&1 || die "flock not found (util-linux)"
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9 || die "could not take lock $DIR/.lock"

if ! command -v clickhouse-server >/dev/null 2>&1 && ! command -v clickhouse >/dev/null 2>&1; then
    log "installing clickhouse-server (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        clickhouse-server clickhouse-client >/dev/null || die "apt-get install clickhouse-server failed"
fi
# The package's service is not wanted: the tests run their own server.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now clickhouse-server >/dev/null 2>&1 || true
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV_DIR/bin/moto_server" ]]; then
    log "python tools up to date ($WANT)"
else
    rm -f "$STAMP"
    if [[ ! -x "$VENV_DIR/bin/python" ]]; then
        rm -rf "$VENV_DIR"
        "$PYTHON" -m venv "$VENV_DIR" || die "python3 -m venv failed"
    fi
    log "pip install $WANT"
    # shellcheck disable=SC2086
    "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --quiet $WANT >&2 \
        || die "pip install of moto/duckdb failed"
    "$VENV_DIR/bin/python" -c "import duckdb, moto.server" || die "moto/duckdb cannot be imported"
    echo "$WANT" > "$STAMP"
fi
log "done: $VENV_DIR (moto_server, duckdb)"
