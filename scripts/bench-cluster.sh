#!/usr/bin/env bash
# Scale-out benchmark: 1, 2 and 3 Keel nodes on one PostgreSQL database, on this machine.
#
#   bash scripts/bench-cluster.sh                 # ~4 min
#   BENCH_DURATION=5 bash scripts/bench-cluster.sh  # smoke run
#
# For each node count N it prints:
#   - ingest: N gateway-only nodes, one loadgen per node (/v1/batch of 100, 16 connections
#     split across the nodes), acked events/s summed, worst p99;
#   - end to end: N worker nodes and a local webhook sink, the same load, then a drain:
#     delivered events/s at the sink, lost and duplicate counts, peak RSS of the nodes;
# and then the recovery time: three nodes under load, one killed with SIGKILL, seconds until
# every partition it held has a live holder again (lease TTL BENCH_TTL, default 10 s).
# Every node, loadgen, the sink and PostgreSQL share this machine's cores: more nodes add
# availability here, not throughput. Only loopback traffic; every step is bounded in time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION="${BENCH_DURATION:-15}"
WARMUP="${BENCH_WARMUP:-2}"
TTL="${BENCH_TTL:-10}"
CONNS="${BENCH_CONNECTIONS:-16}"
PG_URL="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
WRITE_KEY="bench-key"
TMP="$(mktemp -d)"
DB="keel_bench_cluster_$$"
PIDS=()

log() { echo "[bench-cluster] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
psql_db() { psql "$PG_URL/$DB" -X -q -t -A -v ON_ERROR_STOP=1 "$@"; }
jnum() { grep -o "\"$1\":[-0-9.eE+]*" "$2" | head -1 | cut -d: -f2; }
mib() { awk -v kib="$1" 'BEGIN { printf "%.0f", kib / 1024 }'; }

cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql "$PG_URL/postgres" -X -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

new_db() {
    psql "$PG_URL/postgres" -X -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
    psql "$PG_URL/postgres" -X -q -c "CREATE DATABASE $DB" >/dev/null
}

# wait_port PID LOGFILE: the port a process logged in its "listening" line.
wait_port() {
    for _ in $(seq 1 300); do
        kill -0 "$1" 2>/dev/null || {
            tail -n 20 "$2" >&2
            die "process $1 exited before listening"
        }
        local port
        port="$(grep -o 'listening.*127\.0\.0\.1:[0-9]*' "$2" 2>/dev/null | grep -o '[0-9]*$' | head -1 || true)"
        [[ -n "$port" ]] && {
            echo "$port"
            return 0
        }
        sleep 0.1
    done
    die "no listening line in $2"
}

# start_node ID WORKSPACE [KEEL_X=v ...]: starts a node; appends to NODE_PIDS / NODE_URLS.
start_node() {
    local id="$1" ws="$2"
    shift 2
    env DATABASE_URL="$PG_URL/$DB" KEEL_LOG=warn,keel::boot=info KEEL_ALLOW_PRIVATE_TARGETS=true \
        KEEL_CLUSTER__NODE_ID="$id" KEEL_CLUSTER__LEASE_TTL_SECS="$TTL" "$@" \
        "$KEEL" serve --workspace "$ws" --listen 127.0.0.1:0 --config /dev/null \
        >/dev/null 2>"$TMP/$id.log" &
    local pid=$!
    PIDS+=("$pid")
    NODE_PIDS+=("$pid")
    NODE_URLS+=("http://127.0.0.1:$(wait_port "$pid" "$TMP/$id.log")")
}

# start_sink: starts the webhook sink; sets SINK_PID and SINK_URL.
start_sink() {
    "$SINK" --listen 127.0.0.1:0 >/dev/null 2>"$TMP/sink.log" &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    SINK_URL="http://127.0.0.1:$(wait_port "$SINK_PID" "$TMP/sink.log")"
}

# wait_held N_NODES: until every partition has a live holder and no node holds more than
# its share (bounded).
wait_held() {
    local share=$(((16 + $1 - 1) / $1))
    for _ in $(seq 1 300); do
        local ok
        ok="$(psql_db -c "WITH h AS (SELECT owner FROM leases WHERE owner IS NOT NULL AND expires_at > now())
              SELECT (SELECT count(*) FROM h) = 16 AND (SELECT count(DISTINCT owner) FROM h) = $1
                 AND (SELECT max(n) FROM (SELECT count(*) n FROM h GROUP BY owner) x) <= $share" 2>/dev/null || true)"
        [[ "$ok" == t ]] && return 0
        sleep 0.2
    done
    die "partitions not spread over $1 nodes"
}

# run_load OUTPREFIX: one loadgen per node, CONNS connections split across them; waits.
run_load() {
    local n=${#NODE_URLS[@]} i=0 lg=()
    local per=$(((CONNS + n - 1) / n))
    for url in "${NODE_URLS[@]}"; do
        timeout $((WARMUP + DURATION + 60)) "$LOADGEN" --url "$url" --write-key "$WRITE_KEY" \
            --endpoint batch --batch-size 100 --connections "$per" --duration "$DURATION" \
            --warmup "$WARMUP" --json >"$1-$i.json" &
        lg+=($!)
        i=$((i + 1))
    done
    for p in "${lg[@]}"; do wait "$p" || die "loadgen failed"; done
}

# sum_load OUTPREFIX: "events/s p99" over the loadgens of one run.
sum_load() {
    local eps=0 p99=0 acked=0
    for f in "$1"-*.json; do
        eps=$(awk -v a="$eps" -v b="$(jnum events_per_s "$f")" 'BEGIN { printf "%.0f", a + b }')
        p99=$(awk -v a="$p99" -v b="$(jnum p99_ms "$f")" 'BEGIN { print (b > a ? b : a) }')
        acked=$((acked + $(jnum acked_events_total "$f")))
    done
    echo "$eps $p99 $acked"
}

stop_nodes() {
    for p in "${NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${NODE_PIDS[@]}"; do
        for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    NODE_PIDS=()
    NODE_URLS=()
}

log "building keel, loadgen and sink (release)"
cargo build --release -p keel -p loadgen -p sink >&2
KEEL="$TARGET_DIR/release/keel"
LOADGEN="$TARGET_DIR/release/loadgen"
SINK="$TARGET_DIR/release/sink"

cat >"$TMP/ingest.json" <<EOF
{"sources":[{"id":"src1","name":"bench","writeKey":"$WRITE_KEY","enabled":true,"destinations":[]}]}
EOF
ROWS=()
for n in 1 2 3; do
    # --- ingest alone: gateway-only nodes ---
    new_db
    NODE_PIDS=()
    NODE_URLS=()
    for i in $(seq 1 "$n"); do start_node "g$i" "$TMP/ingest.json" KEEL_PROCESSOR__ENABLED=false; done
    log "$n node(s): ingest, ${WARMUP} s warm-up + ${DURATION} s"
    run_load "$TMP/ingest-$n"
    read -r ingest_eps ingest_p99 ingest_acked <<<"$(sum_load "$TMP/ingest-$n")"
    stored="$(psql_db -c 'SELECT count(*) FROM dedup')"
    stop_nodes

    # --- end to end: worker nodes and a webhook sink ---
    new_db
    start_sink
    cat >"$TMP/e2e.json" <<EOF
{"sources":[{"id":"src1","name":"bench","writeKey":"$WRITE_KEY","enabled":true,"destinations":[
 {"id":"sink","name":"Sink","enabled":true,"config":{"webhookUrl":"$SINK_URL/hook","webhookMethod":"POST"},"destinationDefinition":{"name":"WEBHOOK"}}]}]}
EOF
    for i in $(seq 1 "$n"); do start_node "w$i" "$TMP/e2e.json"; done
    wait_held "$n"
    log "$n node(s): end to end, ${WARMUP} s warm-up + ${DURATION} s, then drain"
    run_load "$TMP/e2e-$n"
    read -r e2e_eps _ e2e_acked <<<"$(sum_load "$TMP/e2e-$n")"
    deadline=$(($(date +%s) + 180))
    while :; do
        curl -s --max-time 2 "$SINK_URL/stats" >"$TMP/stats.json" || true
        unique="$(jnum unique "$TMP/stats.json" || echo 0)"
        ((unique >= e2e_acked)) && break
        (($(date +%s) >= deadline)) && {
            log "  drain incomplete after 180 s"
            break
        }
        sleep 0.5
    done
    sleep 1
    curl -s --max-time 2 "$SINK_URL/stats" >"$TMP/stats.json"
    unique="$(jnum unique "$TMP/stats.json")"
    dups="$(jnum duplicates "$TMP/stats.json")"
    first="$(jnum first_at_ms "$TMP/stats.json")"
    last="$(jnum last_at_ms "$TMP/stats.json")"
    delivered_eps=$(awk -v n="$unique" -v a="$first" -v b="$last" 'BEGIN { if (b > a) printf "%.0f", n * 1000 / (b - a); else print 0 }')
    rss=0
    for p in "${NODE_PIDS[@]}"; do rss=$((rss + $(awk '$1 == "VmHWM:" { print $2 }' "/proc/$p/status"))); done
    ROWS+=("$(printf '%5s %14s %10s %14s %16s %8s %6s %12s' "$n" "$ingest_eps" "$ingest_p99" \
        "$e2e_eps" "$delivered_eps" "$((e2e_acked - unique))" "$dups" "$(mib "$rss")")")
    [[ "$stored" == "$ingest_acked" ]] || log "  ingest check: stored $stored vs acked $ingest_acked"
    stop_nodes
    kill -TERM "$SINK_PID" 2>/dev/null || true
done

# --- recovery after kill -9 ---
new_db
start_sink
sed "s#http://127.0.0.1:[0-9]*/hook#$SINK_URL/hook#" "$TMP/e2e.json" >"$TMP/e2e-r.json"
NODE_PIDS=()
NODE_URLS=()
for i in 1 2 3; do start_node "r$i" "$TMP/e2e-r.json"; done
wait_held 3
victim_parts="$(psql_db -c "SELECT string_agg(partition::text, ',') FROM leases WHERE owner = 'r3'")"
DURATION_SAVED=$DURATION
DURATION=$((TTL + 10))
NODE_URLS=("${NODE_URLS[0]}" "${NODE_URLS[1]}")
run_load "$TMP/rec" &
LOAD=$!
sleep 3
kill -9 "${NODE_PIDS[2]}"
killed=$(date +%s%3N)
moved=""
while (($(date +%s%3N) - killed < (TTL + 30) * 1000)); do
    if [[ "$(psql_db -c "SELECT bool_and(owner IN ('r1','r2') AND expires_at > now()) FROM leases WHERE partition IN ($victim_parts)")" == t ]]; then
        moved=$(awk -v a="$killed" -v b="$(date +%s%3N)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
        break
    fi
    sleep 0.1
done
wait "$LOAD" || true
DURATION=$DURATION_SAVED
read -r _ _ rec_acked <<<"$(sum_load "$TMP/rec")"
deadline=$(($(date +%s) + 120))
while :; do
    curl -s --max-time 2 "$SINK_URL/stats" >"$TMP/stats.json" || true
    unique="$(jnum unique "$TMP/stats.json" || echo 0)"
    ((unique >= rec_acked)) && break
    (($(date +%s) >= deadline)) && break
    sleep 0.5
done
rec_dups="$(jnum duplicates "$TMP/stats.json")"

echo
echo "Keel scale-out on one PostgreSQL (this machine: $(nproc) cores shared by every node, loadgen, the sink and PostgreSQL)"
echo "load: /v1/batch of 100 events, $CONNS connections split across the nodes, ${DURATION} s"
printf '%5s %14s %10s %14s %16s %8s %6s %12s\n' nodes "ingest ev/s" "p99 ms" "e2e acked ev/s" "delivered ev/s" lost dups "peak RSS MiB"
for r in "${ROWS[@]}"; do echo "$r"; done
echo
echo "recovery: node r3 (partitions $victim_parts) killed with SIGKILL under load; its partitions had live holders again after ${moved:-NOT WITHIN THE WAIT} s (lease TTL $TTL s); acked $rec_acked, delivered $unique, lost $((rec_acked - unique)), duplicates $rec_dups"
