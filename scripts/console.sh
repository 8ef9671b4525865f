#!/usr/bin/env bash
# Builds the web console: console/ (Vite + Preact) → console/dist, which build.rs hands to
# rust-embed, so it must run before cargo builds Keel (scripts/run.sh and scripts/test.sh
# call it first). `npm ci` from the pinned package-lock.json when the lock changed since the
# last install (a stamp in node_modules records its hash), then `npm run build` when any
# source is newer than the last build; a second run with nothing changed takes well under
# a second. Needs Node.js >= 20.19 and npm (Vite 8's requirement).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../console"

log() { echo "[console] $*" >&2; }
die() { echo "[console] ERROR: $*" >&2; exit 1; }

command -v node >/dev/null && command -v npm >/dev/null \
    || die "node and npm are needed to build the console (Debian: apt-get install nodejs npm)"
node -e 'const [a, b] = process.versions.node.split(".").map(Number);
         process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
    || die "Node.js $(node --version) is too old for Vite 8 (needs >= 20.19)"

stamp=node_modules/.keel-lock-sha256
fresh=0
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "npm ci (console/package-lock.json)"
    npm ci --no-audit --no-fund --loglevel=error >&2
    echo "$want" > "$stamp"
    fresh=1
fi
if ((fresh)) || [[ ! -f dist/index.html ]] \
    || [[ -n "$(find index.html vite.config.js package.json package-lock.json src public \
        -newer dist/index.html -print -quit)" ]]; then
    log "npm run build → console/dist"
    npm run --silent build >&2
fi
