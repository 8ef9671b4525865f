#!/usr/bin/env bash
# Runs every Keel test from a fresh machine of the project's kind: makes sure PostgreSQL
# answers on 127.0.0.1:5432, installs what the tests need (cargo-nextest, cargo-deny and
# cargo-fuzz if missing, the real Segment/RudderStack SDKs under .cache/sdk, schemathesis
# under .cache/schemathesis, moto, DuckDB and clickhouse-server for the storage tests),
# builds the web console (scripts/console.sh), checks the dependency tree's licences and
# sources, fuzzes briefly, then runs the whole suite with nextest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "[test] $*" >&2; }

# Offline V8 for the `v8` crate when the shared copy is beside the repo (see README).
if [[ -x ../shared/v8/install.sh ]]; then
    ../shared/v8/install.sh >&2
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    log "starting PostgreSQL"
    if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
    else
        log "no PostgreSQL server found; installing it"
        apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
    fi
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

# The monitoring tests run the real Prometheus and promtool (Debian package `prometheus`;
# the tests start their own server, none is needed as a service) and validate
# docker-compose.yml with Compose (`docker-compose` when the docker client has no plugin).
monitoring_pkgs=()
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    monitoring_pkgs+=(prometheus)
fi
if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1 \
    && ! command -v docker-compose >/dev/null; then
    monitoring_pkgs+=(docker-compose)
fi
if ((${#monitoring_pkgs[@]})); then
    log "installing ${monitoring_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${monitoring_pkgs[@]}" >/dev/null
fi

for tool in python3 node npm; do
    if ! command -v "$tool" >/dev/null; then
        log "installing $tool"
        apt-get update -qq
        case "$tool" in
            python3) apt-get install -y -qq python3 python3-venv >/dev/null ;;
            *) apt-get install -y -qq nodejs npm >/dev/null ;;
        esac
    fi
done
# The web console's assets (npm ci + vite build into console/dist) before anything builds
# Keel: build.rs embeds them.
bash scripts/console.sh
bash tests/sdk/setup.sh
bash tests/browser/setup.sh
# moto (S3 server) and DuckDB under .cache/storage, Debian's clickhouse-server if missing.
bash tests/storage/setup.sh
bash tests/schemathesis/setup.sh

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest >&2
fi

# A few seconds of fuzzing per target (longer: bash scripts/fuzz.sh 1800).
bash scripts/fuzz.sh "${KEEL_FUZZ_SECONDS:-10}"

cargo build --workspace --all-targets >&2

# Licences, banned crates and sources of the dependency tree (deny.toml). The build above
# fetched the crates of this platform only; `cargo metadata` (under cargo-deny) reads every
# platform's, so fetch those first, then check offline. Advisories are left out: they need
# the advisory database.
if ! cargo deny --version >/dev/null 2>&1; then
    log "installing cargo-deny"
    cargo install --locked cargo-deny >&2
fi
cargo fetch --locked >&2
log "cargo deny check licenses bans sources"
cargo deny --frozen --log-level error check licenses bans sources >&2

exec cargo nextest run --workspace --no-fail-fast "$@"
