#!/usr/bin/env bash
# Benchmarks for Keel: ingestion (throughput, acknowledgement latency, memory) and
# end to end (ingest -> Postgres -> processor -> router -> webhook).
#
#   bash scripts/bench.sh                              # full run, 20 s measured per scenario
#   BENCH_DURATION=5 bash scripts/bench.sh             # smoke run
#   BENCH_DURATION=10 BENCH_ONLY=e2e bash scripts/bench.sh   # end-to-end scenario only
#   BENCH_DURATION=10 BENCH_ONLY=warehouse bash scripts/bench.sh   # warehouse loading only
#   BENCH_DURATION=10 BENCH_ONLY=transform bash scripts/bench.sh   # end to end: plain webhook,
#                     trivial JS transformation, and the GA4 destination script
#   BENCH_DURATION=10 BENCH_ONLY=batched bash scripts/bench.sh   # end to end into a webhook
#                     with `batch: true` (JSON arrays of events), closed loop and paced at
#                     BENCH_BATCHED_RATE (default 50000) events/s
#   BENCH_DURATION=10 BENCH_ONLY=redis bash scripts/bench.sh # end to end into Redis
#                     (or rabbitmq, nats; `brokers` runs all three)
#   BENCH_DURATION=10 BENCH_ONLY=live bash scripts/bench.sh  # ingest with 5 console live-view
#                     clients attached vs none (phase 5)
#   BENCH_DURATION=10 BENCH_ONLY=backup bash scripts/bench.sh      # ingest with the raw
#                     backup on vs off (events/s, CPU, WAL of each and the ratio)
#   BENCH_DURATION=10 BENCH_ONLY=objectstore bash scripts/bench.sh # S3 JSON lines and
#                     S3_DATALAKE Parquet upload rate from a backlog (moto's S3 server)
#   BENCH_DURATION=10 BENCH_ONLY=clickhouse bash scripts/bench.sh  # ClickHouse load rate
#                     from a backlog (a private clickhouse-server)
#
# What it does: makes sure PostgreSQL answers on 127.0.0.1:5432 and builds keel,
# benches/loadgen and benches/sink in release mode. Then the phases below (warehouse loading, phase 3, is described at its code), each with its own
# fresh database keel_bench_<random> and its own keel process on a free loopback port:
#
# 1. Ingest. keel runs as a gateway-only node (KEEL_PROCESSOR__ENABLED=false) with a
#    one-source workspace without destinations, so the figures are of ingestion alone.
#    The scenarios below run one after another with loadgen. After each scenario it
#    reads the keel process's peak RSS (VmHWM: the peak since keel started, not per
#    scenario) and checks that the events committed to Postgres equal the events keel
#    answered 2xx for (cumulative over the run, warm-up included).
#
#    Which table proves "committed": every committed event gets a `dedup` row (one per
#    messageId, kept for the dedup window, 24 h by default) in the same statement as its
#    gw_jobs row; loadgen's messageIds are all distinct, so count(*) FROM dedup is the
#    number of events committed. sum(gw_jobs.event_count) is printed as gw_backlog (with
#    the processor off, nothing consumes gw_jobs, so it equals db_events).
#
# 2. End to end. benches/sink (a webhook receiver that counts distinct messageIds,
#    repeats, and now - receivedAt per event) is started on a free port, then keel with
#    its processor on and a workspace whose single WEBHOOK destination is the sink.
#    For each end-to-end scenario below (each with a fresh database, sink and keel),
#    loadgen sends /v1/batch for warm-up + duration; then the script waits (at most
#    BENCH_DRAIN_SECS) until the sink has every acknowledged event, or until the sink's
#    count stops growing for BENCH_DRAIN_STALL_SECS. It prints the delivered rate over
#    the sink's first-to-last delivery, the ingest-to-delivery latency, lost (acked but
#    never delivered; must be 0), repeats, peak RSS of keel and the sink, and the backlog
#    left in gw_jobs / rt_jobs / dlq_jobs.
#
# 4. Brokers (only with BENCH_ONLY=redis|rabbitmq|nats|brokers). Like end to end, but the
#    single destination is a broker on this machine (Redis 127.0.0.1:6379, RabbitMQ
#    127.0.0.1:5672 guest/guest, NATS JetStream 127.0.0.1:4222): REDIS stream mode into a
#    fixed stream, RABBITMQ to the default exchange with a queue as routing key, NATS
#    JetStream into a stream made for the run. benches/brokerctl prepares that
#    stream/queue, counts what arrived (XLEN / queue depth / stream messages, polled every
#    0.5 s from the start of the load) and removes it afterwards. delivered/s = messages
#    that arrived / (time the last one was first seen - time the first one was seen); each
#    was confirmed by the broker (XADD reply, publisher confirm, JetStream ack) before Keel
#    counted it delivered.
#
# 5. Live view (only with BENCH_ONLY=live). Does watching the console's live view slow
#    ingestion? The end-to-end setup (processor on, one webhook destination to the sink,
#    so destination answers flow into the feed too), /v1/batch with 100 events/request on
#    8 connections, run BENCH_LIVE_ROUNDS times (default 2) without and with 5 clients on
#    GET /admin/live (curl -N holding the stream open: four read as fast as they can, one
#    at 2 KB/s, which the server never waits for: it is dropped once its socket buffers and
#    about 3 s of output are full), each run on a fresh database, sink and keel. It prints
#    ingest events/s per run, the mean of each and the ratio with/without (the issue asks
#    for at least 95 %).
#
# Each keel is stopped with SIGTERM and its database dropped; the trap cleans up on any
# exit.
#
# Environment: BENCH_DURATION (measured seconds per scenario, default 20),
# BENCH_WARMUP (seconds per scenario not counted, default 3), BENCH_PG_URL (server URL
# without a database, default postgres://postgres@127.0.0.1:5432), BENCH_ONLY (`ingest`,
# `e2e` or `warehouse` to run one phase, default those three; `redis`, `rabbitmq`, `nats` or
# `brokers` for the broker phase alone), BENCH_WH_BATCH_ROWS and BENCH_WH_CONNECTIONS
# (warehouse phase: maxBatchRows, loadgen connections), BENCH_DRAIN_SECS (longest wait for delivery
# after the load, default 120), BENCH_DRAIN_STALL_SECS (give up when the sink got nothing
# for this long, default 15), BENCH_E2E_ENV (extra KEEL_* settings for the end-to-end
# keel, space-separated NAME=VALUE, added to the scenario's own), BENCH_E2E_CONNECTIONS
# (loadgen connections for the end-to-end scenario instead of the one below), BENCH_E2E_RATE
# (events/s the paced end-to-end scenario offers, default 25000).
# Only loopback traffic; every step is bounded in time.
#
# Note: loadgen, keel, the sink and PostgreSQL share this machine's cores, so figures are
# a lower bound.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION="${BENCH_DURATION:-20}"
WARMUP="${BENCH_WARMUP:-3}"
PG_URL="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}"
ONLY="${BENCH_ONLY:-}"
DRAIN_SECS="${BENCH_DRAIN_SECS:-120}"
DRAIN_STALL_SECS="${BENCH_DRAIN_STALL_SECS:-15}"
E2E_ENV="${BENCH_E2E_ENV:-}"
WRITE_KEY="bench-key"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

# Ingest scenarios: name | endpoint | events per request | connections. loadgen is
# closed-loop, so connections set how many events wait for a commit at once: 8 trades a
# little throughput for half the latency of 16, 32 only queues more.
SCENARIOS=(
    "batch-100x16|batch|100|16"
    "batch-100x8|batch|100|8"
    "batch-100x32|batch|100|32"
    "track-1x64|track|1|64"
)

# End-to-end scenarios: events per request | connections | keel settings
# (space-separated KEEL_*=value; empty = keel's defaults). loadgen is closed-loop, so
# 100x8 ingests faster than keel delivers (one webhook request per event): it measures
# delivery capacity, and its latency is mostly queueing in the backlog. 10x1 stays below
# that capacity and measures the pipeline's own ingest-to-delivery latency.
# Tried by hand on 2 cores (10 s runs): router concurrency 16/64 and processor batch_jobs
# 64/256 changed the delivered rate by less than run-to-run noise (5.7k-7.1k events/s)
# while batch_jobs=256 raised keel's peak RSS from ~185 to ~300 MiB (~400 MiB with
# concurrency 64 as well), so keel runs with its defaults. 8 connections: 4 gave the same
# delivered rate, 16 only a larger backlog. (Later, with rt_jobs bundles, batch_jobs 512
# let batched delivery keep up at 50,000 events/s offered where 256 did not; 512 is now
# the default, see docs/benchmarks.md.)
# 100x8@R offers R events/s (loadgen --rate; BENCH_E2E_RATE, default 25000) instead of as
# many as Keel acknowledges: delivery keeps up when d/s_load equals the offered rate and
# the ingest-to-delivery latency stays in milliseconds (no backlog builds up).
# Scenario: events per request | connections | extra KEEL_* settings | offered events/s (empty: closed loop).
E2E_RATE="${BENCH_E2E_RATE:-25000}"
E2E_SCENARIOS=(
    "100|8||"
    "100|8||$E2E_RATE"
    "10|1||"
)

log() { echo "[bench] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 ]] || die "BENCH_DURATION must be a whole number of seconds >= 1"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be a whole number of seconds"
[[ "${BENCH_E2E_CONNECTIONS:-1}" =~ ^[1-9][0-9]*$ ]] || die "BENCH_E2E_CONNECTIONS must be a whole number >= 1"
[[ "$DRAIN_SECS" =~ ^[0-9]+$ ]] || die "BENCH_DRAIN_SECS must be a whole number of seconds"
[[ "$DRAIN_STALL_SECS" =~ ^[0-9]+$ && "$DRAIN_STALL_SECS" -ge 1 ]] ||
    die "BENCH_DRAIN_STALL_SECS must be a whole number of seconds >= 1"
BROKER_KINDS=()
case "$ONLY" in
"" | ingest | e2e | warehouse | transform | batched | live | backup | objectstore | clickhouse) ;;
redis | rabbitmq | nats) BROKER_KINDS=("$ONLY") ;;
brokers) BROKER_KINDS=(redis rabbitmq nats) ;;
*) die "BENCH_ONLY must be 'ingest', 'e2e', 'warehouse', 'transform', 'batched', 'live', 'redis', 'rabbitmq', 'nats', 'brokers', 'backup', 'objectstore' or 'clickhouse'" ;;
esac
for kv in $E2E_ENV; do
    [[ "$kv" =~ ^KEEL_[A-Z0-9_]+=[^[:space:]]*$ ]] || die "BENCH_E2E_ENV: '$kv' is not KEEL_NAME=value"
done

TMP="$(mktemp -d /tmp/keel-bench.XXXXXX)"
KEEL_PID=""
SINK_PID=""
LOADGEN_PID=""
SAMPLER_PID=""
POLL_PID=""
LIVE_PIDS=() # live-view clients (phase 5)
BROKER_CLEANUP=""
DB=""
DBS=() # every database created, dropped on exit
STORAGE_PIDS=() # moto / clickhouse servers started by the storage phase

psql_pg() { psql "$PG_URL/postgres" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_db() { psql "$PG_URL/$DB" -X -q -t -A -v ON_ERROR_STOP=1 "$@"; }

# Creates a fresh database and makes it the current one ($DB).
new_db() {
    DB="keel_bench_$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    psql_pg -c "CREATE DATABASE \"$DB\"" >/dev/null
    DBS+=("$DB")
    log "database $DB created"
}

# Drops the current database.
drop_db() {
    [[ -n "$DB" ]] || return 0
    psql_pg -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 ||
        log "could not drop database $DB"
    DB=""
}

# stop_pid PID NAME: SIGTERM, SIGKILL after 60 s; returns the process's status.
stop_pid() {
    local pid="$1" name="$2" status=0
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || {
        wait "$pid" || status=$?
        return "$status"
    }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop within 60 s of SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" || status=$?
    return "$status"
}

# Stops keel; echoes nothing, returns keel's status.
stop_keel() {
    local pid="$KEEL_PID"
    KEEL_PID=""
    stop_pid "$pid" keel
}

stop_sink() {
    local pid="$SINK_PID"
    SINK_PID=""
    stop_pid "$pid" sink
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$LOADGEN_PID" ]]; then
        kill -TERM "$LOADGEN_PID" 2>/dev/null || true
        wait "$LOADGEN_PID" 2>/dev/null || true
    fi
    [[ -n "$SAMPLER_PID" ]] && kill "$SAMPLER_PID" 2>/dev/null
    for pid in "${LIVE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    stop_keel || true
    stop_sink || true
    if [[ -n "$POLL_PID" ]]; then
        kill "$POLL_PID" 2>/dev/null || true
        wait "$POLL_PID" 2>/dev/null || true
    fi
    if [[ -n "$BROKER_CLEANUP" ]]; then
        $BROKER_CLEANUP >/dev/null 2>&1 || log "could not remove broker resources: $BROKER_CLEANUP"
    fi
    for pid in "${STORAGE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for db in "${DBS[@]}"; do
        psql_pg -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 ||
            log "could not drop database $db"
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_listening PID LOGFILE NAME: echoes the port from the "listening addr=..." line.
wait_listening() {
    local pid="$1" logfile="$2" name="$3" port=""
    for _ in $(seq 1 600); do # up to 60 s for migrations and start-up
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logfile" >&2 || true
            die "$name exited during start-up"
        fi
        port="$(grep -o 'listening addr=127\.0\.0\.1:[0-9]*' "$logfile" | head -1 | sed 's/.*://')" || true
        [[ -n "$port" ]] && break
        sleep 0.1
    done
    [[ -n "$port" ]] || {
        tail -n 30 "$logfile" >&2 || true
        die "$name did not report 'listening addr=...' within 60 s"
    }
    echo "$port"
}

# wait_health URL: until GET URL answers 200, at most 10 s.
wait_health() {
    local code=""
    for _ in $(seq 1 100); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)"
        [[ "$code" == 200 ]] && return 0
        sleep 0.1
    done
    die "GET $1 answered '$code' instead of 200"
}

# start_keel WORKSPACE LOGNAME [KEEL_X=v ...]: starts keel on the current database with
# the given extra environment; sets KEEL_PID and URL.
start_keel() {
    local workspace="$1" logname="$2"
    shift 2
    # Port 0: the kernel picks a free port, which keel reports in its "listening" line.
    env DATABASE_URL="$PG_URL/$DB" KEEL_LOG="${KEEL_LOG:-info}" KEEL_ALLOW_PRIVATE_TARGETS=true "$@" \
        "$KEEL" serve --workspace "$workspace" --listen 127.0.0.1:0 --config /dev/null \
        >"$TMP/$logname.out" 2>"$TMP/$logname.log" &
    KEEL_PID=$!
    local port
    port="$(wait_listening "$KEEL_PID" "$TMP/$logname.log" keel)"
    URL="http://127.0.0.1:$port"
    wait_health "$URL/health"
}

# vm_kib PID KEY: a /proc/PID/status figure in KiB (VmRSS, VmHWM).
vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mib() { awk -v kib="$1" 'BEGIN { printf "%.1f", kib / 1024 }'; }
# jnum KEY FILE: a top-level number from a flat JSON line (loadgen's, the sink's).
jnum() { grep -o "\"$1\":[-0-9.eE+]*" "$2" | head -1 | cut -d: -f2; }
# jstatus FILE: the status map as "200:n 429:n".
jstatus() { grep -o '"status":{[^}]*}' "$1" | sed 's/"status":{//; s/}//; s/"//g; s/,/ /g'; }
# log_count FILE: lines of keel's log at WARN or ERROR level.
log_count() { grep -cE '(^|[[:space:]])(WARN|ERROR)[[:space:]]' "$1" || true; }

# run_loadgen OUT ENDPOINT BATCH CONNS [EXTRA ARGS]: runs loadgen in the background and
# waits for it (so an INT/TERM trap fires at once); returns loadgen's status.
run_loadgen() {
    local out="$1" endpoint="$2" batch="$3" conns="$4" status=0
    shift 4
    # loadgen stops by itself; the outer timeout is only a safety net.
    timeout $((WARMUP + DURATION + 120)) "$LOADGEN" --url "$URL" --write-key "$WRITE_KEY" \
        --endpoint "$endpoint" --batch-size "$batch" --connections "$conns" \
        --duration "$DURATION" --warmup "$WARMUP" --json "$@" >"$out" &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID" || status=$?
    LOADGEN_PID=""
    return "$status"
}

# --- PostgreSQL -------------------------------------------------------------------
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    log "PostgreSQL does not answer; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
    for _ in $(seq 1 30); do
        pg_isready -h 127.0.0.1 -p 5432 -q && break
        sleep 1
    done
    pg_isready -h 127.0.0.1 -p 5432 -q || die "PostgreSQL still does not answer on 127.0.0.1:5432"
fi

# --- build --------------------------------------------------------------------------
log "building keel, loadgen, sink and brokerctl (release)"
cargo build --release -p keel -p loadgen -p sink -p brokerctl >&2
KEEL="$TARGET_DIR/release/keel"
LOADGEN="$TARGET_DIR/release/loadgen"
SINK="$TARGET_DIR/release/sink"
BROKERCTL="$TARGET_DIR/release/brokerctl"
[[ -x "$KEEL" && -x "$LOADGEN" && -x "$SINK" && -x "$BROKERCTL" ]] || die "binaries not found under $TARGET_DIR/release"

# Machine calibration: machines of one kind differ (figures here have varied 2x between
# sittings), so the report names this one's single-core speed (SHA-256 of 256 MiB in
# Python's C code) and its fsync latency (8 kB pwrite + fdatasync, 200 times, under
# $TMP; Postgres' WAL is on the same disk on this project's machines).
CALIBRATION="$(python3 - "$TMP" 2>/dev/null <<'PY' || echo "calibration failed"
import hashlib, os, sys, time
buf = b"k" * (1 << 20)
h = hashlib.sha256()
t = time.perf_counter()
for _ in range(256):
    h.update(buf)
mbs = 256 / (time.perf_counter() - t)
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
t = time.perf_counter()
for _ in range(200):
    os.pwrite(fd, buf[:8192], 0)
    os.fdatasync(fd)
us = (time.perf_counter() - t) / 200 * 1e6
os.close(fd)
os.unlink(path)
print(f"sha256 {mbs:.0f} MB/s on one core, 8 kB write+fdatasync {us:.0f} us")
PY
)"
log "machine: $(nproc) CPU(s), $CALIBRATION"

FAILED=0

# === phase 1: ingest ================================================================
ROWS=()
INGEST_STOP=""
if [[ -z "$ONLY" || "$ONLY" == ingest ]]; then
    new_db
    cat >"$TMP/workspace.json" <<EOF
{"sources":[{"id":"src1","name":"bench","writeKey":"$WRITE_KEY","enabled":true,"destinations":[]}]}
EOF
    # A gateway-only node: nothing consumes gw_jobs, so the figures are of ingest alone.
    start_keel "$TMP/workspace.json" keel KEEL_PROCESSOR__ENABLED=false
    log "keel pid $KEEL_PID listening on $URL (processor off); idle RSS $(mib "$(vm_kib "$KEEL_PID" VmRSS)") MiB"

    ACKED_TOTAL=0
    UNKNOWN_TOTAL=0
    for spec in "${SCENARIOS[@]}"; do
        IFS='|' read -r name endpoint batch conns <<<"$spec"
        out="$TMP/$name.json"
        log "scenario $name: $endpoint, $batch event(s)/request, $conns connections, ${WARMUP} s warm-up + ${DURATION} s"
        lg_status=0
        run_loadgen "$out" "$endpoint" "$batch" "$conns" || lg_status=$?
        if [[ "$lg_status" != 0 ]]; then
            log "loadgen failed for $name (exit status $lg_status)"
            FAILED=1
            continue
        fi
        kill -0 "$KEEL_PID" 2>/dev/null || {
            tail -n 30 "$TMP/keel.log" >&2 || true
            die "keel died during $name"
        }

        hwm="$(mib "$(vm_kib "$KEEL_PID" VmHWM)")"
        ACKED_TOTAL=$((ACKED_TOTAL + $(jnum acked_events_total "$out")))
        UNKNOWN_TOTAL=$((UNKNOWN_TOTAL + $(jnum unknown_events_total "$out")))
        stored="$(psql_db -c 'SELECT count(*) FROM dedup')"
        backlog="$(psql_db -c 'SELECT coalesce(sum(event_count),0) FROM gw_jobs')"
        if [[ "$stored" == "$ACKED_TOTAL" ]]; then
            check="OK"
        else
            check="MISMATCH"
            FAILED=1
            ((UNKNOWN_TOTAL > 0)) && check="MISMATCH(${UNKNOWN_TOTAL} unknown-outcome)"
        fi
        ROWS+=("$(printf '%-14s %5s %6s %11s %9s %8s %8s %9s %6s %-18s %9s %11s %11s %10s  %s' \
            "$name" "$conns" "$batch" \
            "$(jnum events_per_s "$out")" "$(jnum requests_per_s "$out")" \
            "$(jnum p50_ms "$out")" "$(jnum p99_ms "$out")" "$(jnum max_ms "$out")" \
            "$(jnum errors "$out")" "$(jstatus "$out")" \
            "$hwm" "$stored" "$ACKED_TOTAL" "$backlog" "$check")")
        log "  $name done: $(jnum events_per_s "$out") events/s, p99 $(jnum p99_ms "$out") ms, DB $stored vs acked $ACKED_TOTAL: $check"
    done

    stop_started=$(date +%s.%N)
    keel_status=0
    stop_keel || keel_status=$?
    stop_secs=$(awk -v a="$stop_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    INGEST_STOP="keel stopped on SIGTERM in ${stop_secs} s, exit status ${keel_status}"
    if [[ "$keel_status" != 0 ]]; then
        tail -n 20 "$TMP/keel.log" >&2 || true
        FAILED=1
    fi
    drop_db
fi

# === phase 2: end to end ============================================================
E2E_ROWS=()
E2E_NOTES=()
# Destination variants: `plain` (a webhook), and with BENCH_ONLY=transform also `js-trivial`
# (the same webhook behind a trivial user transformation) and `js-ga4` (the trivial
# transformation, then the GA4 destination script, whose Measurement Protocol requests go
# to the sink; the transformation copies messageId and receivedAt into event parameters so
# the sink can count GA4 bodies).
E2E_VARIANTS=(plain)
if [[ "$ONLY" == transform ]]; then
    E2E_VARIANTS=(plain js-trivial js-ga4)
    E2E_SCENARIOS=("100|8||")
fi
# `batched`: the webhook with `batch: true` and Keel's default batch settings.
if [[ "$ONLY" == batched ]]; then
    E2E_VARIANTS=(batched)
    E2E_SCENARIOS=("100|8||" "100|8||${BENCH_BATCHED_RATE:-50000}")
fi
cat >"$TMP/bench-trivial.js" <<'JS'
export function transformEvent(event) {
  event.properties = { ...event.properties, message_id: event.messageId, received_at: event.receivedAt };
  return event;
}
JS
# e2e_destination VARIANT SINK_URL: the destination JSON of a variant.
e2e_destination() {
    local trivial="[{\"name\":\"trivial\",\"file\":\"$TMP/bench-trivial.js\"}]"
    case "$1" in
    plain) echo "{\"id\":\"sink\",\"name\":\"Sink\",\"enabled\":true,\"config\":{\"webhookUrl\":\"$2/hook\",\"webhookMethod\":\"POST\"},\"destinationDefinition\":{\"name\":\"WEBHOOK\"}}" ;;
    batched) echo "{\"id\":\"sink\",\"name\":\"Sink\",\"enabled\":true,\"config\":{\"webhookUrl\":\"$2/hook\",\"webhookMethod\":\"POST\",\"batch\":true},\"destinationDefinition\":{\"name\":\"WEBHOOK\"}}" ;;
    js-trivial) echo "{\"id\":\"sink\",\"name\":\"Sink\",\"enabled\":true,\"config\":{\"webhookUrl\":\"$2/hook\",\"webhookMethod\":\"POST\"},\"destinationDefinition\":{\"name\":\"WEBHOOK\"},\"transformations\":$trivial}" ;;
    js-ga4) echo "{\"id\":\"sink\",\"name\":\"GA4\",\"enabled\":true,\"config\":{\"measurementId\":\"G-BENCH\",\"apiSecret\":\"bench\",\"apiBaseUrl\":\"$2\"},\"destinationDefinition\":{\"name\":\"GA4\"},\"transformations\":$trivial}" ;;
    esac
}
if [[ -z "$ONLY" || "$ONLY" == e2e || "$ONLY" == transform || "$ONLY" == batched ]]; then
    for variant in "${E2E_VARIANTS[@]}"; do
    for spec in "${E2E_SCENARIOS[@]}"; do
        IFS='|' read -r batch conns settings rate <<<"$spec"
        conns="${BENCH_E2E_CONNECTIONS:-$conns}"
        name="e2e-batch-${batch}x${conns}"
        rate_args=()
        if [[ -n "$rate" ]]; then
            name="${name}@${rate}"
            rate_args=(--rate "$rate")
        fi
        [[ "$variant" == plain ]] || name="${variant}-${batch}x${conns}${rate:+@$rate}"
        # shellcheck disable=SC2206 # word splitting of NAME=value pairs is intended
        keel_env=(KEEL_PROCESSOR__ENABLED=true $settings $E2E_ENV)
        shown_settings="$(echo "$settings $E2E_ENV" | xargs)"
        [[ -n "$shown_settings" ]] || shown_settings="defaults"
        new_db

        "$SINK" --listen 127.0.0.1:0 >"$TMP/sink.out" 2>"$TMP/sink.log" &
        SINK_PID=$!
        sink_port="$(wait_listening "$SINK_PID" "$TMP/sink.log" sink)"
        SINK_URL="http://127.0.0.1:$sink_port"
        wait_health "$SINK_URL/health"

        cat >"$TMP/workspace-e2e.json" <<EOF
{"sources":[{"id":"src1","name":"bench","writeKey":"$WRITE_KEY","enabled":true,"destinations":[$(e2e_destination "$variant" "$SINK_URL")]}]}
EOF
        start_keel "$TMP/workspace-e2e.json" "keel-$name" "${keel_env[@]}"
        klog="$TMP/keel-$name.log"
        log "keel pid $KEEL_PID on $URL (settings: $shown_settings), sink pid $SINK_PID on $SINK_URL"

        out="$TMP/$name.json"
        stats="$TMP/$name-sink.json"
        log "scenario $name: batch, $batch events/request, $conns connections, ${rate:-closed-loop} events/s offered, ${WARMUP} s warm-up + ${DURATION} s, then drain"
        lg_status=0
        run_loadgen "$out" batch "$batch" "$conns" "${rate_args[@]}" || lg_status=$?
        if [[ "$lg_status" != 0 ]]; then
            log "loadgen failed for $name (exit status $lg_status)"
            FAILED=1
        fi
        kill -0 "$KEEL_PID" 2>/dev/null || {
            tail -n 30 "$klog" >&2 || true
            die "keel died during $name"
        }
        acked="$(jnum acked_events_total "$out" || true)"
        acked="${acked:-0}"
        unknown="$(jnum unknown_events_total "$out" || true)"
        unknown="${unknown:-0}"

        # Drain: until the sink has every acked event, it got nothing new for
        # DRAIN_STALL_SECS, or DRAIN_SECS passed.
        drain_started=$(date +%s.%N)
        drain_deadline=$(($(date +%s) + DRAIN_SECS))
        last_unique=-1
        last_growth=$(date +%s)
        polls=0
        load_end_ms=""
        while :; do
            curl -s --max-time 2 "$SINK_URL/stats" >"$stats" || true
            unique="$(jnum unique "$stats" || true)"
            unique="${unique:-0}"
            if [[ -z "$load_end_ms" ]]; then # delivered while the load ran
                load_end_ms=$(date +%s%3N)
                load_unique=$unique
            fi
            now=$(date +%s)
            ((unique >= acked)) && break
            if ((unique != last_unique)); then
                last_unique=$unique
                last_growth=$now
            fi
            if ((now - last_growth >= DRAIN_STALL_SECS)); then
                log "  the sink got nothing new for ${DRAIN_STALL_SECS} s; stopping the wait"
                break
            fi
            if ((now >= drain_deadline)); then
                log "  still draining after ${DRAIN_SECS} s; stopping the wait"
                break
            fi
            polls=$((polls + 1))
            if ((polls % 10 == 0)); then # every ~5 s: where the backlog is
                log "  draining: sink $unique of $acked; events in gw_jobs $(psql_db -c \
                    'SELECT coalesce(sum(event_count),0) FROM gw_jobs' || true), rt_jobs $(psql_db -c \
                    'SELECT count(*) FROM rt_jobs' || true)"
            fi
            sleep 0.5
        done
        drain_secs=$(awk -v a="$drain_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        # A last look, for repeats that arrive after the last new event.
        sleep 1
        curl -s --max-time 2 "$SINK_URL/stats" >"$stats" || true

        keel_hwm="$(mib "$(vm_kib "$KEEL_PID" VmHWM)")"
        keel_rss="$(mib "$(vm_kib "$KEEL_PID" VmRSS)")"
        sink_hwm="$(mib "$(vm_kib "$SINK_PID" VmHWM)")"
        unique="$(jnum unique "$stats")"
        dups="$(jnum duplicates "$stats")"
        invalid="$(jnum invalid "$stats")"
        first_at="$(jnum first_at_ms "$stats")"
        last_at="$(jnum last_at_ms "$stats")"
        # rate N FROM_MS TO_MS: N events over that span, per second.
        rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { if (b > a) printf "%.0f", n * 1000 / (b - a); else print 0 }'; }
        delivered_per_s="$(rate "$unique" "$first_at" "$last_at")"
        loaded_per_s="$(rate "$load_unique" "$first_at" "$load_end_ms")"
        drain_per_s="$(rate $((unique - load_unique)) "$load_end_ms" "$last_at")"
        lost=$((acked - unique))
        gw_left="$(psql_db -c 'SELECT count(*) FROM gw_jobs')"
        rt_left="$(psql_db -c 'SELECT count(*) FROM rt_jobs')"
        dlq="$(psql_db -c 'SELECT count(*) FROM dlq_jobs')"
        curl -s --max-time 2 "$URL/metrics" >"$TMP/$name.metrics" || true
        failed_deliveries="$(awk '/^keel_router_deliveries_total\{/ && !/outcome="delivered"/ { s += $NF }
            END { printf "%d", s }' "$TMP/$name.metrics")"
        warn_lines="$(log_count "$klog")"

        if ((lost == 0 && dups == 0 && invalid == 0 && rt_left == 0 && gw_left == 0)); then
            check="OK"
        else
            check="CHECK"
            ((lost != 0)) && { check="LOST"; FAILED=1; }
            ((unknown > 0 && lost > 0)) && check="LOST(${unknown} unknown-outcome)"
            ((lost > 0 && gw_left + rt_left > 0)) && check="UNDRAINED"
            ((invalid != 0)) && FAILED=1
        fi
        E2E_ROWS+=("$(printf '%-22s %5s %6s %11s %11s %9s %9s %7s %7s %7s %10s %10s %5s %5s %8s %8s %8s %7s %7s %4s %7s %8s  %s' \
            "$name" "$conns" "$batch" \
            "$(jnum events_per_s "$out")" "$delivered_per_s" "$loaded_per_s" "$drain_per_s" \
            "$(jnum p50_ms "$stats")" "$(jnum p99_ms "$stats")" "$(jnum max_ms "$stats")" \
            "$acked" "$unique" "$lost" "$dups" "$keel_hwm" "$keel_rss" "$sink_hwm" \
            "$gw_left" "$rt_left" "$dlq" "$drain_secs" "$failed_deliveries/$warn_lines" "$check")")
        E2E_NOTES+=("$name: keel settings: $shown_settings; loadgen ack p50/p99 $(jnum p50_ms "$out")/$(jnum p99_ms "$out") ms, errors $(jnum errors "$out"), status $(jstatus "$out")")
        log "  $name done: ingest $(jnum events_per_s "$out") events/s, delivered $delivered_per_s events/s, lost $lost, repeats $dups, rt_jobs left $rt_left"
        if ((warn_lines > 0)); then
            log "  keel logged $warn_lines WARN/ERROR line(s); the first ones:"
            grep -E '(^|[[:space:]])(WARN|ERROR)[[:space:]]' "$klog" | head -n 5 >&2 || true
        fi

        stop_started=$(date +%s.%N)
        keel_status=0
        stop_keel || keel_status=$?
        stop_secs=$(awk -v a="$stop_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        E2E_NOTES+=("$name: keel stopped on SIGTERM in ${stop_secs} s, exit status ${keel_status}")
        if [[ "$keel_status" != 0 ]]; then
            log "keel exited with status $keel_status after $name"
            tail -n 20 "$klog" >&2 || true
            FAILED=1
        fi
        stop_sink || true
        drop_db
    done
    done
fi

# === phase 3: warehouse ======================================================# keel with its processor on and one POSTGRES warehouse destination (uploadInterval 1 s,
# maxBatchRows BENCH_WH_BATCH_ROWS, default 20000) loading into a second fresh database;
# loadgen sends a mixed stream (--mix: tracks of three event names, identify, page,
# screen, group, alias). A sampler reads keel's /metrics every second
# (keel_warehouse_events_loaded_total, keel_warehouse_rows_loaded_total,
# keel_warehouse_lag_seconds). After the load the script waits until every acked event is
# loaded (at most BENCH_DRAIN_SECS), then checks the warehouse: the distinct messageIds in
# tracks + identifies + pages + screens + groups + aliases must equal the acked events.
WH_ROWS=()
WH_NOTES=()
if [[ -z "$ONLY" || "$ONLY" == warehouse ]]; then
    WH_BATCH_ROWS="${BENCH_WH_BATCH_ROWS:-20000}"
    WH_CONNS="${BENCH_WH_CONNECTIONS:-8}"
    new_db
    WH_DB="keel_bench_wh_$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    psql_pg -c "CREATE DATABASE \"$WH_DB\"" >/dev/null
    DBS+=("$WH_DB")
    printf '%s\n' "{\"sources\":[{\"id\":\"src1\",\"name\":\"bench\",\"writeKey\":\"$WRITE_KEY\",\"enabled\":true,\"destinations\":[{\"id\":\"wh\",\"name\":\"Warehouse\",\"enabled\":true,\"config\":{\"host\":\"127.0.0.1\",\"port\":\"5432\",\"database\":\"$WH_DB\",\"user\":\"postgres\",\"uploadInterval\":1,\"maxBatchRows\":$WH_BATCH_ROWS},\"destinationDefinition\":{\"name\":\"POSTGRES\"}}]}]}" >"$TMP/workspace-wh.json"
    start_keel "$TMP/workspace-wh.json" keel-wh KEEL_PROCESSOR__ENABLED=true
    log "keel pid $KEEL_PID on $URL loading into database $WH_DB (maxBatchRows $WH_BATCH_ROWS)"
    samples="$TMP/wh-samples.txt"
    : >"$samples"
    (
        while :; do
            m="$(curl -s --max-time 1 "$URL/metrics" || true)"
            ev="$(awk '/^keel_warehouse_events_loaded_total\{/ { s += $NF } END { printf "%d", s }' <<<"$m")"
            rows="$(awk '/^keel_warehouse_rows_loaded_total\{/ { s += $NF } END { printf "%d", s }' <<<"$m")"
            lag="$(awk '/^keel_warehouse_lag_seconds\{/ { v = $NF } END { printf "%.1f", v }' <<<"$m")"
            echo "$(date +%s%3N) $ev $rows $lag" >>"$samples"
            sleep 1
        done
    ) &
    SAMPLER_PID=$!
    out="$TMP/wh-load.json"
    log "scenario warehouse-mix: batch, 100 events/request, $WH_CONNS connections, ${WARMUP} s warm-up + ${DURATION} s, then drain"
    lg_status=0
    run_loadgen "$out" batch 100 "$WH_CONNS" --mix || lg_status=$?
    [[ "$lg_status" == 0 ]] || {
        log "loadgen failed (exit status $lg_status)"
        FAILED=1
    }
    load_end_ms=$(date +%s%3N)
    acked="$(jnum acked_events_total "$out" || true)"
    acked="${acked:-0}"
    drain_deadline=$(($(date +%s) + DRAIN_SECS))
    while :; do
        loaded="$(tail -n 1 "$samples" | awk '{ print $2 }')"
        ((${loaded:-0} >= acked)) && break
        if (($(date +%s) >= drain_deadline)); then
            log "  still loading after ${DRAIN_SECS} s"
            break
        fi
        sleep 1
    done
    sleep 1.5
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    # From the first sample with something loaded to the first with everything loaded.
    read -r t0 t1 ev_total rows_total lag_load < <(awk -v acked="$acked" -v end="$load_end_ms" '
        $2 > 0 && t0 == "" { t0 = $1 }
        $2 >= acked && t1 == "" { t1 = $1 }
        { ev = $2; rows = $3; if ($1 <= end && $4 > ll) ll = $4 }
        END { printf "%s %s %d %d %.1f\n", t0, (t1 == "" ? $1 : t1), ev, rows, ll }' "$samples")
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
    ev_per_s=$(awk -v n="$ev_total" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }')
    rows_per_s=$(awk -v n="$rows_total" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }')
    after_load=$(awk -v a="$load_end_ms" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
    in_wh="$(psql "$PG_URL/$WH_DB" -X -q -t -A -c "SELECT (SELECT count(DISTINCT id) FROM keel_bench.tracks)
        + (SELECT count(*) FROM keel_bench.identifies) + (SELECT count(*) FROM keel_bench.pages)
        + (SELECT count(*) FROM keel_bench.screens) + (SELECT count(*) FROM keel_bench.groups)
        + (SELECT count(*) FROM keel_bench.aliases)" 2>/dev/null || echo 0)"
    wh_left="$(psql_db -c 'SELECT coalesce(sum(event_count),0) FROM wh_jobs')"
    discards="$(psql "$PG_URL/$WH_DB" -X -q -t -A -c 'SELECT count(*) FROM keel_bench.keel_discards' 2>/dev/null || echo 0)"
    keel_hwm="$(mib "$(vm_kib "$KEEL_PID" VmHWM)")"
    if [[ "$in_wh" == "$acked" && "$wh_left" == 0 ]]; then
        check=OK
    else
        check=MISMATCH
        FAILED=1
    fi
    WH_ROWS+=("$(printf '%-14s %5s %11s %11s %11s %9s %10s %10s %9s %9s %9s %8s  %s' \
        warehouse-mix "$WH_CONNS" "$(jnum events_per_s "$out")" "$ev_per_s" "$rows_per_s" "$secs" \
        "$acked" "$in_wh" "$lag_load" "$after_load" "$discards" "$keel_hwm" "$check")")
    WH_NOTES+=("warehouse-mix: loadgen ack p50/p99 $(jnum p50_ms "$out")/$(jnum p99_ms "$out") ms, errors $(jnum errors "$out"); keel WARN/ERROR log lines: $(log_count "$TMP/keel-wh.log")")
    log "  warehouse-mix done: ingest $(jnum events_per_s "$out") events/s, loaded $ev_per_s events/s ($rows_per_s rows/s), in warehouse $in_wh of $acked"
    keel_status=0
    stop_keel || keel_status=$?
    if [[ "$keel_status" != 0 ]]; then
        log "keel exited with status $keel_status"
        FAILED=1
    fi
    drop_db
    # Scenario 2, loading capacity: the same stream while the warehouse is unreachable
    # (port 1), so every event waits in wh_jobs; then keel restarts with the warehouse
    # reachable and the backlog is timed from the first load until wh_jobs is empty.
    new_db
    WH_DB2="keel_bench_wh_$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    psql_pg -c "CREATE DATABASE \"$WH_DB2\"" >/dev/null
    DBS+=("$WH_DB2")
    for port in 1 5432; do
        printf '%s\n' "{\"sources\":[{\"id\":\"src1\",\"name\":\"bench\",\"writeKey\":\"$WRITE_KEY\",\"enabled\":true,\"destinations\":[{\"id\":\"wh\",\"name\":\"Warehouse\",\"enabled\":true,\"config\":{\"host\":\"127.0.0.1\",\"port\":\"$port\",\"database\":\"$WH_DB2\",\"user\":\"postgres\",\"uploadInterval\":1,\"maxBatchRows\":$WH_BATCH_ROWS},\"destinationDefinition\":{\"name\":\"POSTGRES\"}}]}]}" >"$TMP/workspace-wh-$port.json"
    done
    start_keel "$TMP/workspace-wh-1.json" keel-wh-down KEEL_PROCESSOR__ENABLED=true
    out="$TMP/wh-backlog.json"
    log "scenario warehouse-backlog: the same load with the warehouse unreachable, then a timed drain"
    lg_status=0
    run_loadgen "$out" batch 100 "$WH_CONNS" --mix || lg_status=$?
    [[ "$lg_status" == 0 ]] || {
        log "loadgen failed (exit status $lg_status)"
        FAILED=1
    }
    acked="$(jnum acked_events_total "$out" || true)"
    acked="${acked:-0}"
    for _ in $(seq 1 "$DRAIN_SECS"); do
        [[ "$(psql_db -c 'SELECT count(*) FROM gw_jobs')" == 0 ]] && break
        sleep 1
    done
    backlog="$(psql_db -c 'SELECT coalesce(sum(event_count),0) FROM wh_jobs')"
    stop_keel || true
    start_keel "$TMP/workspace-wh-5432.json" keel-wh-up KEEL_PROCESSOR__ENABLED=true
    t0=""
    t1=""
    drain_deadline=$(($(date +%s) + DRAIN_SECS))
    while :; do
        loaded="$(curl -s --max-time 1 "$URL/metrics" |
            awk '/^keel_warehouse_events_loaded_total\{/ { s += $NF } END { printf "%d", s }')"
        [[ -z "$t0" && "${loaded:-0}" -gt 0 ]] && t0=$(date +%s%3N)
        if [[ "$(psql_db -c 'SELECT count(*) FROM wh_jobs')" == 0 ]]; then
            t1=$(date +%s%3N)
            break
        fi
        if (($(date +%s) >= drain_deadline)); then
            log "  backlog not loaded after ${DRAIN_SECS} s"
            t1=$(date +%s%3N)
            break
        fi
        sleep 0.25
    done
    [[ -n "$t0" ]] || t0="$t1"
    rows_total="$(curl -s --max-time 1 "$URL/metrics" |
        awk '/^keel_warehouse_rows_loaded_total\{/ { s += $NF } END { printf "%d", s }')"
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
    ev_per_s=$(awk -v n="$backlog" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }')
    rows_per_s=$(awk -v n="$rows_total" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }')
    in_wh="$(psql "$PG_URL/$WH_DB2" -X -q -t -A -c "SELECT (SELECT count(DISTINCT id) FROM keel_bench.tracks)
        + (SELECT count(*) FROM keel_bench.identifies) + (SELECT count(*) FROM keel_bench.pages)
        + (SELECT count(*) FROM keel_bench.screens) + (SELECT count(*) FROM keel_bench.groups)
        + (SELECT count(*) FROM keel_bench.aliases)" 2>/dev/null || echo 0)"
    keel_hwm="$(mib "$(vm_kib "$KEEL_PID" VmHWM)")"
    if [[ "$in_wh" == "$acked" && "$backlog" == "$acked" ]]; then
        check=OK
    else
        check=MISMATCH
        FAILED=1
    fi
    WH_ROWS+=("$(printf '%-14s %5s %11s %11s %11s %9s %10s %10s %9s %9s %9s %8s  %s' \
        warehouse-drain "$WH_CONNS" "$(jnum events_per_s "$out")" "$ev_per_s" "$rows_per_s" "$secs" \
        "$acked" "$in_wh" - - - "$keel_hwm" "$check")")
    WH_NOTES+=("warehouse-drain: $backlog events waited in wh_jobs (warehouse unreachable during the load), then loaded by a restarted keel with nothing else to do")
    log "  warehouse-drain done: $backlog events loaded in $secs s ($ev_per_s events/s, $rows_per_s rows/s)"
    keel_status=0
    stop_keel || keel_status=$?
    if [[ "$keel_status" != 0 ]]; then
        log "keel exited with status $keel_status"
        FAILED=1
    fi
    drop_db
fi
# === phase 5: object storage, raw backup, ClickHouse (BENCH_ONLY=backup|objectstore|clickhouse)
# backup: keel with its processor on and no destinations (with the backup on, the processor
#   commits the consumed requests' lines, gzipped, to backup_jobs), batch-100x8 ingest for
#   WARMUP+DURATION,
#   alternating backup off / on (a file:// store under $TMP, uploads every second),
#   BENCH_BACKUP_ROUNDS times (4; odd rounds off first, even rounds on first, so a drift of
#   the machine's speed weighs on both alike; a CHECKPOINT before each run, so each starts
#   with the same WAL behind it); reports each run's events/s, what waited in
#   backup_jobs when the load stopped and the seconds until it was written, keel's and
#   Postgres' CPU seconds during the load, and on/off of the means.
# objectstore: one keel with an S3 and an S3_DATALAKE destination pointing at a closed port
#   takes a mixed load (every event waits in wh_jobs); then keel restarts with the S3
#   destination on moto (tests/storage/setup.sh installs it) and the backlog is timed until
#   its wh_jobs are gone; then the same for the data lake. Rate = events / time.
# clickhouse: the same with one CLICKHOUSE destination and a private clickhouse-server.
STORAGE_ROWS=()
# cpu_ticks PID: user+system clock ticks of one process; pg_ticks: of every postgres process.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() {
    local sum=0 p
    for p in $(pgrep -x postgres); do sum=$((sum + $(cpu_ticks "$p"))); done
    echo "$sum"
}
storage_drain() { # storage_drain DEST: seconds until wh_jobs of DEST is empty (at most DRAIN_SECS)
    local t0 t1
    t0=$(date +%s%3N)
    for _ in $(seq 1 $((DRAIN_SECS * 4))); do
        [[ "$(psql_db -c "SELECT count(*) FROM wh_jobs WHERE destination_id = '$1'")" == 0 ]] && break
        sleep 0.25
    done
    t1=$(date +%s%3N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1000 }'
}
if [[ "$ONLY" == backup ]]; then
    printf '%s\n' "{\"sources\":[{\"id\":\"src1\",\"name\":\"bench\",\"writeKey\":\"$WRITE_KEY\",\"enabled\":true,\"destinations\":[]}]}" >"$TMP/workspace-bk.json"
    declare -A BK_SUM=([off]=0 [on]=0)
    BK_ROUNDS="${BENCH_BACKUP_ROUNDS:-4}"
    for round in $(seq 1 "$BK_ROUNDS"); do
        modes=(off on)
        ((round % 2)) || modes=(on off)
        for mode in "${modes[@]}"; do
            new_db
            psql_db -c 'CHECKPOINT' >/dev/null
            extra=(KEEL_PROCESSOR__ENABLED=true)
            [[ "$mode" != off ]] && extra+=(KEEL_BACKUP__ENABLED=true "KEEL_BACKUP__URL=file://$TMP/backup-$mode-$round" KEEL_BACKUP__UPLOAD_INTERVAL_SECS=1)
            start_keel "$TMP/workspace-bk.json" "keel-bk-$mode-$round" "${extra[@]}"
            out="$TMP/bk-$mode-$round.json"
            log "scenario backup-$mode (round $round): batch-100x8, ${WARMUP} s warm-up + ${DURATION} s"
            k0=$(cpu_ticks "$KEEL_PID"); p0=$(pg_ticks); w0=$(psql_db -c 'SELECT wal_bytes FROM pg_stat_wal')
            run_loadgen "$out" batch 100 8 || FAILED=1
            k1=$(cpu_ticks "$KEEL_PID"); p1=$(pg_ticks); w1=$(psql_db -c 'SELECT wal_bytes FROM pg_stat_wal')
            evs="$(jnum events_per_s "$out")"
            pending="$(psql_db -c 'SELECT count(*) FROM backup_jobs')"
            # Catching up once the load stops: seconds until backup_jobs is empty (at most 120).
            drained="-"
            if [[ "$mode" != off ]]; then
                t0=$(date +%s%3N)
                for _ in $(seq 1 480); do
                    [[ "$(psql_db -c 'SELECT count(*) FROM backup_jobs')" == 0 ]] && break
                    sleep 0.25
                done
                drained="$(awk -v a="$t0" -v b="$(date +%s%3N)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')"
                [[ "$(psql_db -c 'SELECT count(*) FROM backup_jobs')" == 0 ]] || drained="${drained}+"
            fi
            # No folder at all with the backup off (find fails; pipefail would end the run).
            objects="$({ find "$TMP/backup-$mode-$round" -name '*.json.gz' 2>/dev/null || true; } | wc -l)"
            tck=$(getconf CLK_TCK)
            STORAGE_ROWS+=("$(printf '%-22s %12s %14s %10s %10s %10s %10s %10s' "backup-$mode-$round" "$evs" "$pending" "$drained" "$objects" \
                "$(awk -v a="$k0" -v b="$k1" -v t="$tck" 'BEGIN { printf "%.1f", (b - a) / t }')" \
                "$(awk -v a="$p0" -v b="$p1" -v t="$tck" 'BEGIN { printf "%.1f", (b - a) / t }')" \
                "$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.0f", (b - a) / 1048576 }')")")
            BK_SUM[$mode]=$(awk -v a="${BK_SUM[$mode]}" -v b="$evs" 'BEGIN { print a + b }')
            stop_keel || FAILED=1
            drop_db
        done
    done
    for mode in on; do
        ratio=$(awk -v on="${BK_SUM[$mode]}" -v off="${BK_SUM[off]}" 'BEGIN { if (off > 0) printf "%.3f", on / off; else print "n/a" }')
        STORAGE_ROWS+=("backup $mode / off (mean of $BK_ROUNDS runs each): $ratio (on $(awk -v s="${BK_SUM[$mode]}" -v n="$BK_ROUNDS" 'BEGIN{printf "%.0f", s/n}') vs off $(awk -v s="${BK_SUM[off]}" -v n="$BK_ROUNDS" 'BEGIN{printf "%.0f", s/n}') events/s)")
    done
fi
if [[ "$ONLY" == objectstore || "$ONLY" == clickhouse ]]; then
    bash tests/storage/setup.sh
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    if [[ "$ONLY" == objectstore ]]; then
        MOTO_PORT="$(free_port)"
        .cache/storage/venv/bin/moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$TMP/moto.log" 2>&1 &
        STORAGE_PIDS+=($!)
        for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$MOTO_PORT/" && break; sleep 0.2; done
        curl -s -X PUT "http://127.0.0.1:$MOTO_PORT/bench" >/dev/null
        dests() { # dests S3_PORT LAKE_PORT
            printf '[{"id":"s3","name":"s3","enabled":true,"config":{"bucketName":"bench","prefix":"jsonl","endPoint":"http://127.0.0.1:%s","accessKeyID":"test","accessKey":"test","uploadInterval":1,"maxBatchRows":20000},"destinationDefinition":{"name":"S3"}},{"id":"lake","name":"lake","enabled":true,"config":{"bucketName":"bench","prefix":"lake","endPoint":"http://127.0.0.1:%s","accessKeyID":"test","accessKey":"test","uploadInterval":1,"maxBatchRows":20000},"destinationDefinition":{"name":"S3_DATALAKE"}}]' "$1" "$2"
        }
        KINDS_TO_TIME=("s3:$MOTO_PORT:1" "lake:1:$MOTO_PORT")
        mkws() { printf '%s\n' "{\"sources\":[{\"id\":\"src1\",\"name\":\"bench\",\"writeKey\":\"$WRITE_KEY\",\"enabled\":true,\"destinations\":$(dests "$1" "$2")}]}"; }
    else
        CH_DIR="$TMP/clickhouse"
        mkdir -p "$CH_DIR"
        CH_HTTP="$(free_port)"
        CH_TCP="$(free_port)"
        printf '%s\n' '<?xml version="1.0"?>' \
            "<yandex><logger><level>warning</level><console>true</console></logger>" \
            "<http_port>$CH_HTTP</http_port><tcp_port>$CH_TCP</tcp_port><listen_host>127.0.0.1</listen_host>" \
            "<path>$CH_DIR/data/</path><tmp_path>$CH_DIR/tmp/</tmp_path><user_files_path>$CH_DIR/uf/</user_files_path>" \
            "<format_schema_path>$CH_DIR/fs/</format_schema_path><users_config>$CH_DIR/users.xml</users_config>" \
            "<default_profile>default</default_profile><default_database>default</default_database>" \
            "<timezone>UTC</timezone><mark_cache_size>268435456</mark_cache_size></yandex>" >"$CH_DIR/config.xml"
        printf '%s\n' '<?xml version="1.0"?>' \
            '<yandex><profiles><default></default></profiles><users><default><password></password>' \
            '<networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>' \
            '<quotas><default></default></quotas></yandex>' >"$CH_DIR/users.xml"
        (cd "$CH_DIR" && exec clickhouse-server --config-file="$CH_DIR/config.xml" >"$CH_DIR/log" 2>&1) &
        STORAGE_PIDS+=($!)
        for _ in $(seq 1 150); do curl -s -o /dev/null "http://127.0.0.1:$CH_HTTP/ping" && break; sleep 0.2; done
        KINDS_TO_TIME=("ch:$CH_HTTP:")
        mkws() { printf '%s\n' "{\"sources\":[{\"id\":\"src1\",\"name\":\"bench\",\"writeKey\":\"$WRITE_KEY\",\"enabled\":true,\"destinations\":[{\"id\":\"ch\",\"name\":\"ch\",\"enabled\":true,\"config\":{\"host\":\"127.0.0.1\",\"port\":\"$1\",\"database\":\"bench\",\"uploadInterval\":1,\"maxBatchRows\":20000},\"destinationDefinition\":{\"name\":\"CLICKHOUSE\"}}]}]}"; }
    fi
    new_db
    mkws 1 1 >"$TMP/ws-st-down.json"
    start_keel "$TMP/ws-st-down.json" keel-st-down KEEL_PROCESSOR__ENABLED=true
    out="$TMP/st-load.json"
    log "scenario $ONLY backlog: mixed batch-100x8 with the store unreachable, ${WARMUP} s warm-up + ${DURATION} s"
    run_loadgen "$out" batch 100 8 --mix || FAILED=1
    for _ in $(seq 1 "$DRAIN_SECS"); do
        [[ "$(psql_db -c 'SELECT count(*) FROM gw_jobs')" == 0 ]] && break
        sleep 1
    done
    stop_keel || true
    for spec in "${KINDS_TO_TIME[@]}"; do
        IFS=: read -r dest p1 p2 <<<"$spec"
        backlog="$(psql_db -c "SELECT coalesce(sum(event_count),0) FROM wh_jobs WHERE destination_id = '$dest'")"
        mkws "$p1" "$p2" >"$TMP/ws-st-$dest.json"
        start_keel "$TMP/ws-st-$dest.json" "keel-st-$dest" KEEL_PROCESSOR__ENABLED=true
        secs="$(storage_drain "$dest")"
        left="$(psql_db -c "SELECT count(*) FROM wh_jobs WHERE destination_id = '$dest'")"
        m="$(curl -s --max-time 2 "$URL/metrics")"
        rows="$(awk -v d="destination=\"$dest\"" 'index($0, "keel_warehouse_rows_loaded_total{") == 1 && index($0, d) { s += $NF } END { printf "%d", s }' <<<"$m")"
        rate=$(awk -v n="$backlog" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }')
        rrate=$(awk -v n="$rows" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }')
        [[ "$left" == 0 ]] || FAILED=1
        STORAGE_ROWS+=("$(printf '%-22s %12s %14s %10s %10s %10s' "$dest-drain" "$backlog" "$rate" "$rrate" "$secs" "$left")")
        log "  $dest: $backlog events loaded in $secs s ($rate events/s, $rrate rows/s)"
        stop_keel || true
    done
    drop_db
fi
# === phase 4: brokers ===============================================================
BROKER_ROWS=()
BROKER_NOTES=()
BROKER_BATCH=100
BROKER_CONNS="${BENCH_E2E_CONNECTIONS:-8}"
for kind in "${BROKER_KINDS[@]}"; do
    name="keel_bench_${kind}_$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    case "$kind" in
    redis)
        port=6379 def=REDIS
        config="{\"address\":\"127.0.0.1:6379\",\"stream\":\"$name\",\"maxLen\":1000000000}"
        ;;
    rabbitmq)
        port=5672 def=RABBITMQ
        config="{\"url\":\"amqp://guest:guest@127.0.0.1:5672/%2f\",\"exchange\":\"\",\"routingKey\":\"$name\"}"
        ;;
    nats)
        port=4222 def=NATS
        config="{\"url\":\"nats://127.0.0.1:4222\",\"subject\":\"$name.{type}\"}"
        ;;
    esac
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null ||
        die "$kind is not running on 127.0.0.1:$port (start commands: tests/it/brokers.rs)"
    "$BROKERCTL" prepare "$kind" "$name" || die "could not prepare $kind"
    BROKER_CLEANUP="$BROKERCTL cleanup $kind $name"
    new_db
    printf '{"sources":[{"id":"src1","name":"bench","writeKey":"%s","enabled":true,"destinations":[{"id":"%s","name":"%s","enabled":true,"config":%s,"destinationDefinition":{"name":"%s"}}]}]}\n' \
        "$WRITE_KEY" "$kind" "$kind" "$config" "$def" >"$TMP/workspace-$kind.json"
    # shellcheck disable=SC2206 # word splitting of NAME=value pairs is intended
    keel_env=(KEEL_PROCESSOR__ENABLED=true $E2E_ENV)
    start_keel "$TMP/workspace-$kind.json" "keel-$kind" "${keel_env[@]}"
    klog="$TMP/keel-$kind.log"
    scen="$kind-batch-${BROKER_BATCH}x${BROKER_CONNS}"
    log "scenario $scen: keel pid $KEEL_PID on $URL -> $kind ($name), ${WARMUP} s warm-up + ${DURATION} s, then drain"
    polls="$TMP/$kind.polls"
    (while :; do
        c="$("$BROKERCTL" count "$kind" "$name" 2>/dev/null || echo -1)"
        echo "$(date +%s%3N) $c"
        sleep 0.5
    done) >"$polls" &
    POLL_PID=$!
    out="$TMP/$scen.json"
    lg_status=0
    run_loadgen "$out" batch "$BROKER_BATCH" "$BROKER_CONNS" || lg_status=$?
    if ((lg_status != 0)); then
        log "loadgen failed for $scen (exit status $lg_status)"
        FAILED=1
    fi
    acked="$(jnum acked_events_total "$out" || true)"
    acked="${acked:-0}"
    drain_deadline=$(($(date +%s) + DRAIN_SECS))
    last_count=-1
    last_growth=$(date +%s)
    while :; do
        sleep 0.5
        count="$(tail -n 1 "$polls" | cut -d' ' -f2)"
        count="${count:-0}"
        now=$(date +%s)
        ((count >= acked)) && break
        if ((count != last_count)); then
            last_count=$count
            last_growth=$now
        fi
        if ((now - last_growth >= DRAIN_STALL_SECS)); then
            log "  $kind got nothing new for ${DRAIN_STALL_SECS} s; stopping the wait"
            break
        fi
        if ((now >= drain_deadline)); then
            log "  still draining after ${DRAIN_SECS} s; stopping the wait"
            break
        fi
    done
    sleep 1
    kill "$POLL_PID" 2>/dev/null || true
    wait "$POLL_PID" 2>/dev/null || true
    POLL_PID=""
    final="$(tail -n 1 "$polls" | cut -d' ' -f2)"
    final="${final:-0}"
    first_ms="$(awk '$2 > 0 { print $1; exit }' "$polls")"
    last_ms="$(awk -v n="$final" '$2 == n { print $1; exit }' "$polls")"
    rate="$(awk -v n="$final" -v a="${first_ms:-0}" -v b="${last_ms:-0}" \
        'BEGIN { if (b > a) printf "%.0f", n * 1000 / (b - a); else print 0 }')"
    rt_left="$(psql_db -c 'SELECT count(*) FROM rt_jobs')"
    gw_left="$(psql_db -c 'SELECT count(*) FROM gw_jobs')"
    dlq="$(psql_db -c 'SELECT count(*) FROM dlq_jobs')"
    keel_hwm="$(mib "$(vm_kib "$KEEL_PID" VmHWM)")"
    curl -s --max-time 2 "$URL/metrics" >"$TMP/$kind.metrics" || true
    delivered_metric="$(awk '/^keel_router_deliveries_total\{/ && /outcome="delivered"/ { s += $NF }
        END { printf "%d", s }' "$TMP/$kind.metrics")"
    retries="$(awk '/^keel_router_deliveries_total\{/ && /outcome="retry"/ { s += $NF }
        END { printf "%d", s }' "$TMP/$kind.metrics")"
    missing=$((acked - final))
    ((missing < 0)) && missing=0
    if ((missing == 0 && rt_left == 0 && gw_left == 0 && dlq == 0)); then
        check="OK"
    else
        check="LOST"
        FAILED=1
    fi
    BROKER_ROWS+=("$(printf '%-22s %11s %11s %10s %10s %8s %10s %7s %7s %4s %8s  %s' \
        "$scen" "$(jnum events_per_s "$out")" "$rate" "$acked" "$final" "$missing" \
        "$delivered_metric" "$retries" "$rt_left" "$dlq" "$keel_hwm" "$check")")
    BROKER_NOTES+=("$scen: loadgen ack p50/p99 $(jnum p50_ms "$out")/$(jnum p99_ms "$out") ms, errors $(jnum errors "$out"); keel WARN/ERROR log lines $(log_count "$klog")")
    log "  $scen done: ingest $(jnum events_per_s "$out") events/s, delivered $rate events/s, arrived $final of $acked"
    keel_status=0
    stop_keel || keel_status=$?
    if ((keel_status != 0)); then
        log "keel exited with status $keel_status after $scen"
        FAILED=1
    fi
    $BROKER_CLEANUP >/dev/null 2>&1 || log "could not remove $name"
    BROKER_CLEANUP=""
    drop_db
done

# === phase 5: live view ===========================================================
LIVE_ROWS=()
LIVE_NOTES=()
LIVE_TOKEN="bench-admin-token"
LIVE_CLIENTS=5
if [[ "$ONLY" == live ]]; then
    [[ "${BENCH_LIVE_ROUNDS:-2}" =~ ^[1-9][0-9]*$ ]] || die "BENCH_LIVE_ROUNDS must be a whole number >= 1"
    declare -A LIVE_SUM=([0]=0 [$LIVE_CLIENTS]=0)
    declare -A LIVE_N=([0]=0 [$LIVE_CLIENTS]=0)
    for round in $(seq 1 "${BENCH_LIVE_ROUNDS:-2}"); do
        for clients in 0 "$LIVE_CLIENTS"; do
            name="live-${clients}clients-r$round"
            new_db
            "$SINK" --listen 127.0.0.1:0 >"$TMP/sink.out" 2>"$TMP/sink.log" &
            SINK_PID=$!
            sink_port="$(wait_listening "$SINK_PID" "$TMP/sink.log" sink)"
            SINK_URL="http://127.0.0.1:$sink_port"
            wait_health "$SINK_URL/health"
            printf '{"sources":[{"id":"src1","name":"bench","writeKey":"%s","enabled":true,"destinations":[%s]}]}\n' \
                "$WRITE_KEY" "$(e2e_destination plain "$SINK_URL")" >"$TMP/workspace-live.json"
            start_keel "$TMP/workspace-live.json" "keel-$name" KEEL_PROCESSOR__ENABLED=true \
                KEEL_ADMIN__TOKEN="$LIVE_TOKEN"
            klog="$TMP/keel-$name.log"
            LIVE_PIDS=()
            for i in $(seq 1 "$clients"); do
                limit=()
                ((i == clients)) && limit=(--limit-rate 2k) # the slow browser
                curl -sN "${limit[@]}" --max-time $((WARMUP + DURATION + 60)) \
                    -H "Authorization: Bearer $LIVE_TOKEN" "$URL/admin/live" \
                    >"$TMP/$name-client$i.sse" 2>/dev/null &
                LIVE_PIDS+=($!)
            done
            # Every client holds its stream (the feed's first line arrived) before the load.
            for i in $(seq 1 "$clients"); do
                for _ in $(seq 1 100); do
                    grep -q 'keel live feed' "$TMP/$name-client$i.sse" 2>/dev/null && break
                    sleep 0.1
                done
                grep -q 'keel live feed' "$TMP/$name-client$i.sse" || die "live client $i did not connect"
            done
            out="$TMP/$name.json"
            log "scenario $name: batch, 100 events/request, 8 connections, $clients live-view client(s), ${WARMUP} s warm-up + ${DURATION} s"
            lg_status=0
            run_loadgen "$out" batch 100 8 || lg_status=$?
            if [[ "$lg_status" != 0 ]]; then
                log "loadgen failed for $name (exit status $lg_status)"
                FAILED=1
            fi
            kill -0 "$KEEL_PID" 2>/dev/null || {
                tail -n 30 "$klog" >&2 || true
                die "keel died during $name"
            }
            still=0
            for pid in "${LIVE_PIDS[@]}"; do
                kill -0 "$pid" 2>/dev/null && still=$((still + 1))
                kill "$pid" 2>/dev/null || true
                wait "$pid" 2>/dev/null || true
            done
            LIVE_PIDS=()
            frames=""
            dropped=0
            for i in $(seq 1 "$clients"); do
                f="$TMP/$name-client$i.sse"
                frames+="$(grep -c '^event: accepted' "$f" || true)/$(grep -c '^event: answered' "$f" || true) "
                if grep -q '^event: dropped' "$f"; then dropped=$((dropped + 1)); fi
            done
            eps="$(jnum events_per_s "$out" || true)"
            eps="${eps:-0}"
            LIVE_SUM[$clients]="$(awk -v a="${LIVE_SUM[$clients]}" -v b="$eps" 'BEGIN { print a + b }')"
            LIVE_N[$clients]=$((LIVE_N[$clients] + 1))
            LIVE_ROWS+=("$(printf '%-22s %7s %11s %8s %8s %8s %8s  %s' \
                "$name" "$clients" "$eps" "$(jnum p50_ms "$out")" "$(jnum p99_ms "$out")" \
                "$(jnum errors "$out")" "$dropped" "${frames:--}")")
            if ((clients > 0)); then
                LIVE_NOTES+=("$name: clients still connected at the end: $still of $clients; dropped by the server: $dropped")
            fi
            log "  $name done: $eps events/s ingested; live clients dropped: $dropped; accepted/answered frames per client: ${frames:--}"
            keel_status=0
            stop_keel || keel_status=$?
            if [[ "$keel_status" != 0 ]]; then
                log "keel exited with status $keel_status after $name"
                tail -n 20 "$klog" >&2 || true
                FAILED=1
            fi
            stop_sink || true
            drop_db
        done
    done
fi

# --- report -------------------------------------------------------------------------
echo
echo "machine: $(nproc) CPU(s) $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $CALIBRATION"
if [[ -z "$ONLY" || "$ONLY" == ingest ]]; then
    echo
    echo "Keel ingestion benchmark (gateway-only node: processor off): ${DURATION} s measured per scenario after ${WARMUP} s warm-up; $(nproc) CPU(s) shared by keel, loadgen and PostgreSQL"
    printf '%-14s %5s %6s %11s %9s %8s %8s %9s %6s %-18s %9s %11s %11s %10s  %s\n' \
        scenario conns ev/req events/s req/s p50_ms p99_ms max_ms errors status \
        peakRSS_MiB db_events acked_events gw_backlog check
    for row in "${ROWS[@]}"; do
        echo "$row"
    done
    echo "peakRSS = keel's VmHWM read after the scenario: the peak since keel started."
    echo "db_events = SELECT count(*) FROM dedup (one row per committed messageId); acked_events = events answered 2xx so far,"
    echo "  warm-up included (cumulative); gw_backlog = SELECT sum(event_count) FROM gw_jobs (committed, not yet processed)."
    echo "events/s, req/s and latency cover the measured window; latency is of 2xx answers (ack after commit)."
    echo "$INGEST_STOP"
fi
if [[ -z "$ONLY" || "$ONLY" == e2e || "$ONLY" == transform || "$ONLY" == batched ]]; then
    echo
    all_settings="$(for spec in "${E2E_SCENARIOS[@]}"; do IFS='|' read -r _ _ s _ <<<"$spec"; echo "$s"; done | xargs) $E2E_ENV"
    [[ -n "${all_settings// /}" ]] && all_settings="non-default, per scenario below" || all_settings="defaults"
    echo "Keel end-to-end benchmark (keel settings: $all_settings): /v1/batch for ${WARMUP} s warm-up + ${DURATION} s, then drain (at most ${DRAIN_SECS} s); $(nproc) CPU(s) shared by keel, loadgen, the sink and PostgreSQL"
    printf '%-22s %5s %6s %11s %11s %9s %9s %7s %7s %7s %10s %10s %5s %5s %8s %8s %8s %7s %7s %4s %7s %8s  %s\n' \
        scenario conns ev/req ingest_ev/s delivered/s d/s_load d/s_drain p50_ms p99_ms max_ms acked delivered lost dups \
        keelHWM keelRSS sinkHWM gw_left rt_left dlq drain_s fail/log check
    for row in "${E2E_ROWS[@]}"; do
        echo "$row"
    done
    for note in "${E2E_NOTES[@]}"; do
        echo "$note"
    done
    echo "ingest_ev/s = loadgen's acknowledged events/s in the measured window; delivered/s = distinct messageIds at the sink"
    echo "  / (last delivery - first delivery), warm-up and drain included; d/s_load = delivered/s from the first delivery"
    echo "  to the end of the load (delivery shares the CPUs with ingest), d/s_drain = delivered/s after it (delivery alone);"
    echo "  p50/p99/max = ingest-to-delivery latency in ms (sink clock - receivedAt) over every delivered event;"
    echo "  acked = events answered 2xx (warm-up included);"
    echo "  delivered = distinct messageIds at the sink; lost = acked - delivered (must be 0); dups = repeated deliveries."
    echo "keelHWM/keelRSS/sinkHWM in MiB after the drain; gw_left/rt_left/dlq = rows left in gw_jobs/rt_jobs/dlq_jobs;"
    echo "  drain_s = wait after the load; fail/log = non-delivered outcomes in keel_router_deliveries_total / WARN+ERROR log lines."
fi
if [[ -z "$ONLY" || "$ONLY" == warehouse ]]; then
    echo
    echo "Keel warehouse benchmark: mixed stream on /v1/batch (100 events/request) for ${WARMUP} s warm-up + ${DURATION} s into one POSTGRES warehouse on the same server; $(nproc) CPU(s) shared by keel, loadgen and PostgreSQL"
    printf '%-14s %5s %11s %11s %11s %9s %10s %10s %9s %9s %9s %8s  %s\n' \
        scenario conns ingest_ev/s loaded_ev/s rows/s load_s acked in_wh lag_s after_s discards keelHWM check
    for row in "${WH_ROWS[@]}"; do
        echo "$row"
    done
    for note in "${WH_NOTES[@]}"; do
        echo "$note"
    done
    echo "loaded_ev/s and rows/s = events and warehouse rows loaded / load_s, the span from the first load to the moment"
    echo "  every acked event was loaded; a track writes two rows (tracks + its event table), an identify two (identifies + users);"
    echo "  lag_s = largest keel_warehouse_lag_seconds seen while the load ran (age of the oldest waiting event, sampled every 5 s);"
    echo "  after_s = seconds from the end of the load until every acked event was loaded; in_wh = distinct events in the"
    echo "  warehouse tables (must equal acked). warehouse-drain: the load ran with the warehouse unreachable; loaded_ev/s is"
    echo "  the backlog loaded by a restarted keel doing nothing else (the uploader's own capacity)."
fi
if ((${#BROKER_KINDS[@]} > 0)); then
    echo
    echo "Keel broker benchmark (keel defaults${E2E_ENV:+ + $E2E_ENV}): /v1/batch for ${WARMUP} s warm-up + ${DURATION} s, then drain; $(nproc) CPU(s) shared by keel, loadgen, the broker and PostgreSQL"
    printf '%-22s %11s %11s %10s %10s %8s %10s %7s %7s %4s %8s  %s\n' \
        scenario ingest_ev/s delivered/s acked arrived missing delivered retries rt_left dlq keelHWM check
    for row in "${BROKER_ROWS[@]}"; do
        echo "$row"
    done
    for note in "${BROKER_NOTES[@]}"; do
        echo "$note"
    done
    echo "delivered/s = arrived / (first poll showing the final count - first poll showing any), polls every 0.5 s;"
    echo "  arrived = XLEN / queue depth / stream messages (JetStream drops Nats-Msg-Id repeats; Redis and RabbitMQ may keep repeats);"
    echo "  missing = acked - arrived (0 when nothing was lost); delivered/retries = keel_router_deliveries_total by outcome."
fi
if [[ "$ONLY" == live ]]; then
    echo
    echo "Keel live-view benchmark: end to end into one webhook, /v1/batch 100 events/request on 8 connections for ${WARMUP} s warm-up + ${DURATION} s, without and with $LIVE_CLIENTS clients on GET /admin/live; $(nproc) CPU(s) shared by keel, loadgen, the sink, the clients and PostgreSQL"
    printf '%-22s %7s %11s %8s %8s %8s %8s  %s\n' scenario clients ingest_ev/s p50_ms p99_ms errors dropped frames_per_client
    for row in "${LIVE_ROWS[@]}"; do
        echo "$row"
    done
    for note in "${LIVE_NOTES[@]}"; do
        echo "$note"
    done
    without="$(awk -v s="${LIVE_SUM[0]}" -v n="${LIVE_N[0]}" 'BEGIN { printf "%.0f", s / n }')"
    with="$(awk -v s="${LIVE_SUM[$LIVE_CLIENTS]}" -v n="${LIVE_N[$LIVE_CLIENTS]}" 'BEGIN { printf "%.0f", s / n }')"
    ratio="$(awk -v a="$with" -v b="$without" 'BEGIN { if (b > 0) printf "%.1f", 100 * a / b; else print 0 }')"
    echo "mean ingest: ${without} events/s without live clients, ${with} events/s with $LIVE_CLIENTS: ${ratio} % (target >= 95 %)"
    echo "frames_per_client = accepted/answered frames each client received (at most max_rate, 200/s by default, per client);"
    echo "  dropped = clients the server disconnected with 'event: dropped' (the last client reads at 2 KB/s; within a"
    echo "  short run the kernel's socket buffers may still hold what it has not read)."
fi
if [[ "$ONLY" == backup || "$ONLY" == objectstore || "$ONLY" == clickhouse ]]; then
    echo
    if [[ "$ONLY" == backup ]]; then
        echo "Keel raw-backup benchmark: /v1/batch 100 events/request, 8 connections, ${WARMUP} s warm-up + ${DURATION} s per run, processor on, no destinations; backup to a file:// store; $(nproc) CPU(s) shared"
        printf '%-22s %12s %14s %10s %10s %10s %10s %10s\n' run ingest_ev/s backup_pending drained_s objects keel_cpu_s pg_cpu_s wal_mib
    else
        echo "Keel $ONLY benchmark: a mixed backlog (loaded while the store was unreachable) drained by a restarted keel doing nothing else; $(nproc) CPU(s) shared by keel, PostgreSQL and the store"
        printf '%-22s %12s %14s %10s %10s %10s\n' destination backlog_events events/s rows/s secs left
    fi
    for row in "${STORAGE_ROWS[@]}"; do
        echo "$row"
    done
fi
exit "$FAILED"
