#!/usr/bin/env bash
# Installs what the browser tests (tests/it/browser.rs → tests/browser/sdk.mjs, the SDKs;
# tests/it/console.rs → tests/browser/console.mjs, the web console) need:
# Debian's `chromium` (apt-get, when /usr/bin/chromium is missing) and, into
# <repo>/.cache/browser/node_modules, the npm packages pinned by tests/browser/package.json
# and package-lock.json (npm ci): playwright-core, esbuild, @rudderstack/analytics-js,
# @segment/analytics-next and axe-core.
#
# Idempotent: a stamp file records the lock file's hash and npm ci is skipped when it
# matches. Safe to run concurrently (flock on a lock file). Everything it says goes to
# stderr; it exits non-zero on any failure.
set -euo pipefail

log() { echo "[browser-setup] $*" >&2; }
die() { echo "[browser-setup] ERROR: $*" >&2; exit 1; }

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE_DIR="$REPO_ROOT/.cache/browser"
LOCK_FILE="$CACHE_DIR/.lock"
STAMP="$CACHE_DIR/npm.stamp"
CHROMIUM="/usr/bin/chromium"

command -v flock >/dev/null 2>&1 || die "flock not found (util-linux)"
command -v node >/dev/null 2>&1 || die "node not found (Node >= 18 required)"
command -v npm >/dev/null 2>&1 || die "npm not found"

mkdir -p "$CACHE_DIR"
exec 9>"$LOCK_FILE"
log "waiting for lock $LOCK_FILE"
flock 9 || die "could not take lock $LOCK_FILE"

# ---- Chromium (Debian package) ------------------------------------------------------------
if [[ -x "$CHROMIUM" ]]; then
    log "chromium present ($CHROMIUM)"
else
    command -v apt-get >/dev/null 2>&1 || die "$CHROMIUM missing and no apt-get to install it"
    log "installing Debian package chromium"
    apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2 \
        || die "apt-get install chromium failed"
    [[ -x "$CHROMIUM" ]] || die "chromium installed but $CHROMIUM is missing"
fi

# ---- npm packages -------------------------------------------------------------------------
WANT="$(cat "$SCRIPT_DIR/package.json" "$SCRIPT_DIR/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -d "$CACHE_DIR/node_modules" ]]; then
    log "npm packages up to date"
else
    rm -f "$STAMP"
    cp "$SCRIPT_DIR/package.json" "$SCRIPT_DIR/package-lock.json" "$CACHE_DIR/"
    log "npm ci in $CACHE_DIR"
    (cd "$CACHE_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2 \
        || die "npm ci of the browser test packages failed"
    (cd "$CACHE_DIR" && node -e "
        for (const m of ['playwright-core', 'esbuild', 'axe-core',
                         '@rudderstack/analytics-js/bundled', '@segment/analytics-next']) {
          require.resolve(m);
        }
        require('esbuild').buildSync({ stdin: { contents: '1' }, write: false });") \
        || die "npm packages installed but cannot be resolved"
    echo "$WANT" > "$STAMP"
    log "npm packages installed"
fi

log "done: chromium=$CHROMIUM node_modules=$CACHE_DIR/node_modules"
