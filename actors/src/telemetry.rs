//! Every metric name Keel exports, in one place (`keel_<component>_<what>_<unit>`;
//! counters end in `_total`, durations are histograms in seconds). Labels are `source`,
//! `destination`, `outcome`, `endpoint`, `actor`, and `script`, `reason`, `isolate` for the
//! JavaScript pool; never user data.

/// Gateway HTTP requests, labelled `endpoint` and `outcome` (the HTTP status code).
pub const GATEWAY_REQUESTS_TOTAL: &str = "keel_gateway_requests_total";
/// Events committed to `gw_jobs`, labelled `source`.
pub const GATEWAY_EVENTS_ACCEPTED_TOTAL: &str = "keel_gateway_events_accepted_total";
/// Wall time of HTTP ingest requests from first byte to answer, labelled `endpoint`.
pub const GATEWAY_REQUEST_DURATION_SECONDS: &str = "keel_gateway_request_duration_seconds";
/// Time from flush start to commit of one GatewayWriter group commit.
pub const GATEWAY_COMMIT_DURATION_SECONDS: &str = "keel_gateway_commit_duration_seconds";
/// Requests per GatewayWriter flush.
pub const GATEWAY_FLUSH_REQUESTS: &str = "keel_gateway_flush_requests";
/// Events per GatewayWriter flush.
pub const GATEWAY_FLUSH_EVENTS: &str = "keel_gateway_flush_events";
/// Failed GatewayWriter flushes (Postgres unreachable or erroring).
pub const GATEWAY_FLUSH_FAILURES_TOTAL: &str = "keel_gateway_flush_failures_total";
/// GatewayWriter flushes redone with the duplicate-aware statement (a messageId of theirs was
/// already in the dedup window).
pub const GATEWAY_FLUSH_DUPLICATES_TOTAL: &str = "keel_gateway_flush_duplicates_total";
/// Requests waiting for the GatewayWriter (accepted, not yet committed).
pub const GATEWAY_QUEUE_DEPTH: &str = "keel_gateway_queue_depth";
/// Bytes of request payload waiting for the GatewayWriter.
pub const GATEWAY_QUEUE_BYTES: &str = "keel_gateway_queue_bytes";
/// Ingest requests refused because their source exceeded its rate limit, labelled `source`.
pub const GATEWAY_RATE_LIMITED_TOTAL: &str = "keel_gateway_rate_limited_total";
/// Dedup rows pruned because they left the messageId window.
pub const GATEWAY_DEDUP_PRUNED_TOTAL: &str = "keel_gateway_dedup_pruned_total";

/// Actor restarts by a supervisor, labelled `actor`.
pub const SUPERVISOR_RESTARTS_TOTAL: &str = "keel_supervisor_restarts_total";
/// Heartbeats a child did not answer in time, labelled `actor`.
pub const SUPERVISOR_HEARTBEAT_MISSES_TOTAL: &str = "keel_supervisor_heartbeat_misses_total";

/// Partition leases this node holds.
pub const CLUSTER_PARTITIONS_OWNED: &str = "keel_cluster_partitions_owned";
/// Lease changes on this node, labelled `change` (`acquired`, `released`, `lost`,
/// `expired`, `adopted`).
pub const CLUSTER_LEASE_CHANGES_TOTAL: &str = "keel_cluster_lease_changes_total";
/// Worker nodes heard from within the lease TTL, this one included.
pub const CLUSTER_LIVE_NODES: &str = "keel_cluster_live_nodes";
/// Cluster heartbeats (announce, renew, acquire) that failed.
pub const CLUSTER_HEARTBEAT_FAILURES_TOTAL: &str = "keel_cluster_heartbeat_failures_total";

/// Calls into the JavaScript pool, labelled `script`.
pub const TRANSFORM_CALLS_TOTAL: &str = "keel_transform_calls_total";
/// Events passed into scripts, labelled `script`.
pub const TRANSFORM_EVENTS_IN_TOTAL: &str = "keel_transform_events_in_total";
/// Events scripts returned (after splits), labelled `script`.
pub const TRANSFORM_EVENTS_OUT_TOTAL: &str = "keel_transform_events_out_total";
/// Events that left a script as nothing, labelled `script` and `reason` (`filtered`: the
/// script returned null/undefined/[]; `error`: dead-lettered).
pub const TRANSFORM_EVENTS_DROPPED_TOTAL: &str = "keel_transform_events_dropped_total";
/// Failed script calls or events, labelled `script` and `reason` (`exception`, `timeout`,
/// `heap`, `load`, `invalid_output`, `unavailable`).
pub const TRANSFORM_ERRORS_TOTAL: &str = "keel_transform_errors_total";
/// Duration of one script call (a batch), labelled `script`.
pub const TRANSFORM_CALL_DURATION_SECONDS: &str = "keel_transform_call_duration_seconds";
/// Isolates recreated after a call was stopped, labelled `reason` (`timeout`, `heap`).
pub const TRANSFORM_ISOLATE_RESTARTS_TOTAL: &str = "keel_transform_isolate_restarts_total";
/// V8 heap in use after the last call, labelled `isolate`.
pub const TRANSFORM_HEAP_USED_BYTES: &str = "keel_transform_heap_used_bytes";
/// Requests scripts made with `fetch`/`fetchV2`.
pub const TRANSFORM_FETCHES_TOTAL: &str = "keel_transform_fetches_total";

/// Every name in this file, for the dashboard contract test and for `describe_all`.
pub const ALL: &[&str] = &[
    GATEWAY_REQUESTS_TOTAL,
    GATEWAY_EVENTS_ACCEPTED_TOTAL,
    GATEWAY_REQUEST_DURATION_SECONDS,
    GATEWAY_COMMIT_DURATION_SECONDS,
    GATEWAY_FLUSH_REQUESTS,
    GATEWAY_FLUSH_EVENTS,
    GATEWAY_FLUSH_FAILURES_TOTAL,
    GATEWAY_FLUSH_DUPLICATES_TOTAL,
    GATEWAY_QUEUE_DEPTH,
    GATEWAY_QUEUE_BYTES,
    GATEWAY_DEDUP_PRUNED_TOTAL,
    GATEWAY_RATE_LIMITED_TOTAL,
    SUPERVISOR_RESTARTS_TOTAL,
    SUPERVISOR_HEARTBEAT_MISSES_TOTAL,
    CLUSTER_PARTITIONS_OWNED,
    CLUSTER_LEASE_CHANGES_TOTAL,
    CLUSTER_LIVE_NODES,
    CLUSTER_HEARTBEAT_FAILURES_TOTAL,
    PROCESSOR_EVENTS_TOTAL,
    PROCESSOR_JOBS_WRITTEN_TOTAL,
    PROCESSOR_FILTERED_TOTAL,
    PROCESSOR_BATCH_DURATION_SECONDS,
    PROCESSOR_FAILURES_TOTAL,
    PROCESSOR_DEAD_LETTERED_TOTAL,
    ROUTER_DELIVERIES_TOTAL,
    ROUTER_DELIVERY_DURATION_SECONDS,
    ROUTER_BATCH_EVENTS,
    ROUTER_IN_FLIGHT,
    ROUTER_LOADED_JOBS,
    ROUTER_CIRCUIT_OPEN,
    ROUTER_THROTTLED_TOTAL,
    ROUTER_STATUS_FLUSH_DURATION_SECONDS,
    ROUTER_STORE_FAILURES_TOTAL,
    WAREHOUSE_BATCHES_TOTAL,
    WAREHOUSE_ROWS_LOADED_TOTAL,
    WAREHOUSE_EVENTS_LOADED_TOTAL,
    WAREHOUSE_DISCARDS_TOTAL,
    WAREHOUSE_COLUMNS_ADDED_TOTAL,
    WAREHOUSE_LOAD_DURATION_SECONDS,
    WAREHOUSE_LAG_SECONDS,
    WAREHOUSE_PENDING_EVENTS,
    BACKUP_ROWS_TOTAL,
    BACKUP_EVENTS_TOTAL,
    BACKUP_OBJECTS_TOTAL,
    BACKUP_FAILURES_TOTAL,
    BACKUP_PENDING_ROWS,
    BACKUP_PENDING_EVENTS,
    BACKUP_LAG_SECONDS,
    PROCESSOR_LAG_SECONDS,
    ROUTER_PENDING_JOBS,
    ROUTER_LAG_SECONDS,
    ROUTER_DLQ_JOBS,
    STORE_POOL_MAX_CONNECTIONS,
    STORE_POOL_OPEN_CONNECTIONS,
    STORE_POOL_IN_USE_CONNECTIONS,
    STORE_POOL_WAITING_TASKS,
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_CPU_SECONDS_TOTAL,
    PROCESS_OPEN_FDS,
    PROCESS_THREADS,
    TELEMETRY_SAMPLES_TOTAL,
    TELEMETRY_SAMPLE_DURATION_SECONDS,
    TRANSFORM_CALLS_TOTAL,
    TRANSFORM_EVENTS_IN_TOTAL,
    TRANSFORM_EVENTS_OUT_TOTAL,
    TRANSFORM_EVENTS_DROPPED_TOTAL,
    TRANSFORM_ERRORS_TOTAL,
    TRANSFORM_CALL_DURATION_SECONDS,
    TRANSFORM_ISOLATE_RESTARTS_TOTAL,
    TRANSFORM_HEAP_USED_BYTES,
    TRANSFORM_FETCHES_TOTAL,
];

/// Registers help text for every metric so `/metrics` documents itself.
pub fn describe_all() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        GATEWAY_REQUESTS_TOTAL,
        "Gateway HTTP requests by endpoint and status"
    );
    describe_counter!(
        GATEWAY_EVENTS_ACCEPTED_TOTAL,
        "Events committed to gw_jobs by source"
    );
    describe_histogram!(
        GATEWAY_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Ingest request duration, first byte to answer"
    );
    describe_histogram!(
        GATEWAY_COMMIT_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one group commit into gw_jobs"
    );
    describe_histogram!(GATEWAY_FLUSH_REQUESTS, "Requests per group commit");
    describe_histogram!(GATEWAY_FLUSH_EVENTS, "Events per group commit");
    describe_histogram!(
        ROUTER_BATCH_EVENTS,
        "Events per batched delivery, by destination"
    );
    describe_counter!(GATEWAY_FLUSH_FAILURES_TOTAL, "Group commits that failed");
    describe_counter!(
        GATEWAY_FLUSH_DUPLICATES_TOTAL,
        "Group commits redone because a messageId was already in the dedup window"
    );
    describe_gauge!(GATEWAY_QUEUE_DEPTH, "Requests waiting for commit");
    describe_gauge!(
        GATEWAY_QUEUE_BYTES,
        Unit::Bytes,
        "Payload bytes waiting for commit"
    );
    describe_counter!(
        GATEWAY_DEDUP_PRUNED_TOTAL,
        "Dedup rows pruned out of the window"
    );
    describe_counter!(SUPERVISOR_RESTARTS_TOTAL, "Actor restarts by actor");
    describe_gauge!(CLUSTER_PARTITIONS_OWNED, "Partition leases this node holds");
    describe_counter!(
        CLUSTER_LEASE_CHANGES_TOTAL,
        "Lease changes on this node by change (acquired, released, lost, expired, adopted)"
    );
    describe_gauge!(
        CLUSTER_LIVE_NODES,
        "Worker nodes heard from within the lease TTL, this one included"
    );
    describe_counter!(
        CLUSTER_HEARTBEAT_FAILURES_TOTAL,
        "Cluster heartbeats (announce, renew, acquire) that failed"
    );
    describe_counter!(
        SUPERVISOR_HEARTBEAT_MISSES_TOTAL,
        "Heartbeats not answered in time"
    );
    describe_backlog_and_process();
}

/// Events the processor handled, labelled `outcome` (`routed`, `duplicate`, `no_route`).
pub const PROCESSOR_EVENTS_TOTAL: &str = "keel_processor_events_total";
/// Jobs written to `rt_jobs`, labelled `destination`.
pub const PROCESSOR_JOBS_WRITTEN_TOTAL: &str = "keel_processor_jobs_written_total";
/// Events not routed to a destination, labelled `destination` and `outcome` (the reason).
pub const PROCESSOR_FILTERED_TOTAL: &str = "keel_processor_filtered_total";
/// Events (per destination) dead-lettered by the processor: a transformation or the
/// destination mapping failed for them.
pub const PROCESSOR_DEAD_LETTERED_TOTAL: &str = "keel_processor_dead_lettered_total";
/// Duration of one processor batch (read, route, commit).
pub const PROCESSOR_BATCH_DURATION_SECONDS: &str = "keel_processor_batch_duration_seconds";
/// Failed processor batches.
pub const PROCESSOR_FAILURES_TOTAL: &str = "keel_processor_failures_total";

/// Delivery attempts, labelled `destination` and `outcome` (`delivered`, `retry`, `dead`).
pub const ROUTER_DELIVERIES_TOTAL: &str = "keel_router_deliveries_total";
/// Duration of one delivery attempt, labelled `destination`.
pub const ROUTER_DELIVERY_DURATION_SECONDS: &str = "keel_router_delivery_duration_seconds";
/// Events per batched delivery (destinations that batch), labelled `destination`.
pub const ROUTER_BATCH_EVENTS: &str = "keel_router_batch_events";
/// Deliveries under way, labelled `destination`.
pub const ROUTER_IN_FLIGHT: &str = "keel_router_in_flight";
/// Jobs a router holds in memory, labelled `destination`.
pub const ROUTER_LOADED_JOBS: &str = "keel_router_loaded_jobs";
/// 1 while the destination's circuit breaker is open, labelled `destination`.
pub const ROUTER_CIRCUIT_OPEN: &str = "keel_router_circuit_open";
/// Deliveries delayed by the destination's throttle, labelled `destination`.
pub const ROUTER_THROTTLED_TOTAL: &str = "keel_router_throttled_total";
/// Duration of one batched status write.
pub const ROUTER_STATUS_FLUSH_DURATION_SECONDS: &str = "keel_router_status_flush_duration_seconds";
/// Failed status writes or job loads, labelled `destination`.
pub const ROUTER_STORE_FAILURES_TOTAL: &str = "keel_router_store_failures_total";

/// Warehouse load batches, labelled `destination` and `outcome` (`loaded`, `failed`).
pub const WAREHOUSE_BATCHES_TOTAL: &str = "keel_warehouse_batches_total";
/// Rows written into warehouse tables (one event may write several), labelled `destination`.
pub const WAREHOUSE_ROWS_LOADED_TOTAL: &str = "keel_warehouse_rows_loaded_total";
/// Events loaded into the warehouse, labelled `destination`.
pub const WAREHOUSE_EVENTS_LOADED_TOTAL: &str = "keel_warehouse_events_loaded_total";
/// Values that did not fit their column and went to `keel_discards`, labelled `destination`.
pub const WAREHOUSE_DISCARDS_TOTAL: &str = "keel_warehouse_discards_total";
/// Columns added to warehouse tables by schema evolution, labelled `destination`.
pub const WAREHOUSE_COLUMNS_ADDED_TOTAL: &str = "keel_warehouse_columns_added_total";
/// Duration of one warehouse batch load, labelled `destination`.
pub const WAREHOUSE_LOAD_DURATION_SECONDS: &str = "keel_warehouse_load_duration_seconds";
/// Age of the oldest event waiting in `wh_jobs`, labelled `destination` (0 when none waits).
pub const WAREHOUSE_LAG_SECONDS: &str = "keel_warehouse_lag_seconds";
/// Events waiting in `wh_jobs`, labelled `destination`.
pub const WAREHOUSE_PENDING_EVENTS: &str = "keel_warehouse_pending_events";
/// `backup_jobs` rows written to the raw backup (packs: the requests one processor commit
/// consumed, per hour; requests stored before packs: one each).
pub const BACKUP_ROWS_TOTAL: &str = "keel_backup_rows_total";
/// Events written to the raw backup.
pub const BACKUP_EVENTS_TOTAL: &str = "keel_backup_events_total";
/// Objects written to the raw backup's store.
pub const BACKUP_OBJECTS_TOTAL: &str = "keel_backup_objects_total";
/// Backup uploads that failed (the rows wait in `backup_jobs` and are retried).
pub const BACKUP_FAILURES_TOTAL: &str = "keel_backup_failures_total";
/// `backup_jobs` rows waiting for the backup writer.
pub const BACKUP_PENDING_ROWS: &str = "keel_backup_pending_rows";
/// Events waiting in `backup_jobs` for the backup writer.
pub const BACKUP_PENDING_EVENTS: &str = "keel_backup_pending_events";
/// Age in seconds of the oldest request waiting for the backup (0 when none waits).
pub const BACKUP_LAG_SECONDS: &str = "keel_backup_lag_seconds";
/// Age in seconds of the oldest `gw_jobs` row the processor has not consumed (0 = caught up).
pub const PROCESSOR_LAG_SECONDS: &str = "keel_processor_lag_seconds";
/// Jobs waiting in `rt_jobs` for delivery (due or waiting to retry), labelled `destination`.
pub const ROUTER_PENDING_JOBS: &str = "keel_router_pending_jobs";
/// Age in seconds of the destination's oldest waiting job (0 = none waits), labelled `destination`.
pub const ROUTER_LAG_SECONDS: &str = "keel_router_lag_seconds";
/// Dead-lettered jobs in `dlq_jobs`, labelled `destination`.
pub const ROUTER_DLQ_JOBS: &str = "keel_router_dlq_jobs";
/// Connections the Postgres pool may open at most.
pub const STORE_POOL_MAX_CONNECTIONS: &str = "keel_store_pool_max_connections";
/// Connections the Postgres pool holds open (in use or idle).
pub const STORE_POOL_OPEN_CONNECTIONS: &str = "keel_store_pool_open_connections";
/// Pool connections checked out by a task.
pub const STORE_POOL_IN_USE_CONNECTIONS: &str = "keel_store_pool_in_use_connections";
/// Tasks waiting for a pool connection.
pub const STORE_POOL_WAITING_TASKS: &str = "keel_store_pool_waiting_tasks";
/// Resident set size of the Keel process.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "keel_process_resident_memory_bytes";
/// CPU time (user + system) the Keel process used since it started.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "keel_process_cpu_seconds_total";
/// File descriptors the Keel process holds open.
pub const PROCESS_OPEN_FDS: &str = "keel_process_open_fds";
/// Threads of the Keel process.
pub const PROCESS_THREADS: &str = "keel_process_threads";
/// Backlog samples taken by the telemetry sampler, labelled `outcome` (`ok`, `failed`).
pub const TELEMETRY_SAMPLES_TOTAL: &str = "keel_telemetry_samples_total";
/// Duration of one backlog sample (its SQL probes).
pub const TELEMETRY_SAMPLE_DURATION_SECONDS: &str = "keel_telemetry_sample_duration_seconds";

/// Actors whose restarts and heartbeat misses are counted (the `actor` label's values).
pub const SUPERVISED_ACTORS: &[&str] = &[
    "gateway_writer",
    "processor",
    "router",
    "warehouse_uploader",
    "lease_keeper",
    "telemetry_sampler",
    "backup_writer",
];

fn describe_backlog_and_process() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        PROCESSOR_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest gw_jobs row the processor has not consumed"
    );
    describe_gauge!(
        ROUTER_PENDING_JOBS,
        "Jobs waiting in rt_jobs per destination"
    );
    describe_gauge!(
        ROUTER_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest waiting rt_jobs row per destination"
    );
    describe_gauge!(ROUTER_DLQ_JOBS, "dlq_jobs rows per destination");
    describe_counter!(
        BACKUP_ROWS_TOTAL,
        "backup_jobs rows (packs of requests) written to the raw backup"
    );
    describe_counter!(BACKUP_EVENTS_TOTAL, "Events written to the raw backup");
    describe_counter!(BACKUP_OBJECTS_TOTAL, "Objects written to the raw backup");
    describe_counter!(BACKUP_FAILURES_TOTAL, "Raw backup uploads that failed");
    describe_gauge!(
        BACKUP_PENDING_ROWS,
        "backup_jobs rows (packs of requests) waiting for the raw backup"
    );
    describe_gauge!(BACKUP_PENDING_EVENTS, "Events waiting for the raw backup");
    describe_gauge!(
        BACKUP_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest request waiting for the raw backup"
    );
    describe_gauge!(STORE_POOL_MAX_CONNECTIONS, "Postgres pool size limit");
    describe_gauge!(
        STORE_POOL_OPEN_CONNECTIONS,
        "Postgres pool connections open"
    );
    describe_gauge!(
        STORE_POOL_IN_USE_CONNECTIONS,
        "Postgres pool connections in use"
    );
    describe_gauge!(
        STORE_POOL_WAITING_TASKS,
        "Tasks waiting for a pool connection"
    );
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        Unit::Bytes,
        "Resident set size of the process"
    );
    describe_counter!(
        PROCESS_CPU_SECONDS_TOTAL,
        Unit::Seconds,
        "User and system CPU time of the process"
    );
    describe_gauge!(PROCESS_OPEN_FDS, "Open file descriptors of the process");
    describe_gauge!(PROCESS_THREADS, "Threads of the process");
    describe_counter!(TELEMETRY_SAMPLES_TOTAL, "Backlog samples by outcome");
    describe_histogram!(
        TELEMETRY_SAMPLE_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one backlog sample"
    );
    describe_transform();
}

fn describe_transform() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(TRANSFORM_CALLS_TOTAL, "Script calls (batches) by script");
    describe_counter!(TRANSFORM_EVENTS_IN_TOTAL, "Events passed into scripts");
    describe_counter!(TRANSFORM_EVENTS_OUT_TOTAL, "Events scripts returned");
    describe_counter!(
        TRANSFORM_EVENTS_DROPPED_TOTAL,
        "Events a script turned into nothing, by reason (filtered, error)"
    );
    describe_counter!(
        TRANSFORM_ERRORS_TOTAL,
        "Failed script calls or events by reason"
    );
    describe_histogram!(
        TRANSFORM_CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one script call"
    );
    describe_counter!(
        TRANSFORM_ISOLATE_RESTARTS_TOTAL,
        "Isolates recreated after a stopped call, by reason"
    );
    describe_gauge!(
        TRANSFORM_HEAP_USED_BYTES,
        Unit::Bytes,
        "V8 heap in use per isolate after its last call"
    );
    describe_counter!(TRANSFORM_FETCHES_TOTAL, "HTTP requests made by scripts");
    describe_counter!(
        PROCESSOR_DEAD_LETTERED_TOTAL,
        "Events dead-lettered by the processor (a transformation or mapping failed)"
    );
}

/// Registers the series that exist whatever the traffic (unlabelled gateway and processor
/// series, restarts per actor), so `/metrics` shows them at 0 from start-up and dashboards
/// and alerts see zero rather than no data. Registering (a handle that is dropped unused)
/// never changes a value.
pub fn register_static_series() {
    let _ = metrics::counter!(GATEWAY_FLUSH_FAILURES_TOTAL);
    let _ = metrics::counter!(GATEWAY_FLUSH_DUPLICATES_TOTAL);
    let _ = metrics::counter!(GATEWAY_DEDUP_PRUNED_TOTAL);
    let _ = metrics::gauge!(GATEWAY_QUEUE_DEPTH);
    let _ = metrics::gauge!(GATEWAY_QUEUE_BYTES);
    let _ = metrics::histogram!(GATEWAY_COMMIT_DURATION_SECONDS);
    let _ = metrics::histogram!(GATEWAY_FLUSH_REQUESTS);
    let _ = metrics::histogram!(GATEWAY_FLUSH_EVENTS);
    let _ = metrics::counter!(PROCESSOR_FAILURES_TOTAL);
    let _ = metrics::counter!(PROCESSOR_DEAD_LETTERED_TOTAL);
    let _ = metrics::histogram!(PROCESSOR_BATCH_DURATION_SECONDS);
    for outcome in ["routed", "duplicate", "no_route"] {
        let _ = metrics::counter!(PROCESSOR_EVENTS_TOTAL, "outcome" => outcome);
    }
    let _ = metrics::histogram!(ROUTER_STATUS_FLUSH_DURATION_SECONDS);
    let _ = metrics::counter!(TRANSFORM_FETCHES_TOTAL);
    for reason in ["timeout", "heap"] {
        let _ = metrics::counter!(TRANSFORM_ISOLATE_RESTARTS_TOTAL, "reason" => reason);
    }
    for actor in SUPERVISED_ACTORS {
        let _ = metrics::counter!(SUPERVISOR_RESTARTS_TOTAL, "actor" => *actor);
        let _ = metrics::counter!(SUPERVISOR_HEARTBEAT_MISSES_TOTAL, "actor" => *actor);
    }
    let _ = metrics::gauge!(PROCESSOR_LAG_SECONDS);
    let _ = metrics::gauge!(CLUSTER_PARTITIONS_OWNED);
    let _ = metrics::gauge!(CLUSTER_LIVE_NODES);
    for change in ["acquired", "adopted", "lost", "released", "expired"] {
        let _ = metrics::counter!(CLUSTER_LEASE_CHANGES_TOTAL, "change" => change);
    }
    for outcome in ["ok", "failed"] {
        let _ = metrics::counter!(TELEMETRY_SAMPLES_TOTAL, "outcome" => outcome);
    }
    let _ = metrics::histogram!(TELEMETRY_SAMPLE_DURATION_SECONDS);
}

/// The ingest endpoints' metric labels.
pub const INGEST_ENDPOINTS: &[&str] = &[
    "identify", "track", "page", "screen", "group", "alias", "batch", "import",
];

/// Registers a source's gateway series (events accepted, successful requests per
/// endpoint) and the per-endpoint latency, without changing any value.
pub fn register_source_series(source: &str) {
    let _ = metrics::counter!(GATEWAY_EVENTS_ACCEPTED_TOTAL, "source" => source.to_owned());
    for endpoint in INGEST_ENDPOINTS {
        let _ = metrics::counter!(GATEWAY_REQUESTS_TOTAL, "endpoint" => *endpoint, "outcome" => "200", "source" => source.to_owned());
        let _ = metrics::histogram!(GATEWAY_REQUEST_DURATION_SECONDS, "endpoint" => *endpoint);
    }
}

/// Registers a warehouse destination's series (batches by outcome, events, rows, discards,
/// columns added, load duration, backlog) without changing any value.
pub fn register_warehouse_series(destination: &str) {
    let d = destination.to_owned();
    for outcome in ["loaded", "failed"] {
        let _ = metrics::counter!(WAREHOUSE_BATCHES_TOTAL, "destination" => d.clone(), "outcome" => outcome);
    }
    let _ = metrics::counter!(WAREHOUSE_EVENTS_LOADED_TOTAL, "destination" => d.clone());
    let _ = metrics::counter!(WAREHOUSE_ROWS_LOADED_TOTAL, "destination" => d.clone());
    let _ = metrics::counter!(WAREHOUSE_DISCARDS_TOTAL, "destination" => d.clone());
    let _ = metrics::counter!(WAREHOUSE_COLUMNS_ADDED_TOTAL, "destination" => d.clone());
    let _ = metrics::histogram!(WAREHOUSE_LOAD_DURATION_SECONDS, "destination" => d.clone());
    let _ = metrics::gauge!(WAREHOUSE_LAG_SECONDS, "destination" => d.clone());
    let _ = metrics::gauge!(WAREHOUSE_PENDING_EVENTS, "destination" => d);
}

/// Registers every per-destination series of `destination` (deliveries by outcome, latency,
/// in flight, circuit state, throttle waits, store failures, jobs written) without changing
/// any value, so a destination that never failed still shows its retries and circuit at 0.
pub fn register_destination_series(destination: &str) {
    let d = destination.to_owned();
    for outcome in ["delivered", "retry", "dead"] {
        let _ = metrics::counter!(ROUTER_DELIVERIES_TOTAL, "destination" => d.clone(), "outcome" => outcome);
    }
    let _ = metrics::histogram!(ROUTER_DELIVERY_DURATION_SECONDS, "destination" => d.clone());
    let _ = metrics::histogram!(ROUTER_BATCH_EVENTS, "destination" => d.clone());
    let _ = metrics::gauge!(ROUTER_IN_FLIGHT, "destination" => d.clone());
    let _ = metrics::gauge!(ROUTER_LOADED_JOBS, "destination" => d.clone());
    let _ = metrics::gauge!(ROUTER_CIRCUIT_OPEN, "destination" => d.clone());
    let _ = metrics::counter!(ROUTER_THROTTLED_TOTAL, "destination" => d.clone());
    let _ = metrics::counter!(ROUTER_STORE_FAILURES_TOTAL, "destination" => d.clone());
    let _ = metrics::gauge!(ROUTER_PENDING_JOBS, "destination" => d.clone());
    let _ = metrics::gauge!(ROUTER_LAG_SECONDS, "destination" => d.clone());
    let _ = metrics::gauge!(ROUTER_DLQ_JOBS, "destination" => d.clone());
    for reason in crate::workspace::FilterReason::ALL {
        let _ = metrics::counter!(PROCESSOR_FILTERED_TOTAL, "destination" => d.clone(), "outcome" => reason.as_str());
    }
    let _ = metrics::counter!(PROCESSOR_JOBS_WRITTEN_TOTAL, "destination" => d);
}

/// Registers every series of script `script` (calls, events in/out/dropped, errors by
/// reason, call duration) without changing any value, so a script that never failed still
/// shows its errors at 0.
pub fn register_script_series(script: &str) {
    let s = script.to_owned();
    let _ = metrics::counter!(TRANSFORM_CALLS_TOTAL, "script" => s.clone());
    let _ = metrics::counter!(TRANSFORM_EVENTS_IN_TOTAL, "script" => s.clone());
    let _ = metrics::counter!(TRANSFORM_EVENTS_OUT_TOTAL, "script" => s.clone());
    for reason in ["filtered", "error"] {
        let _ = metrics::counter!(TRANSFORM_EVENTS_DROPPED_TOTAL, "script" => s.clone(), "reason" => reason);
    }
    for reason in [
        "exception",
        "timeout",
        "heap",
        "load",
        "invalid_output",
        "unavailable",
    ] {
        let _ =
            metrics::counter!(TRANSFORM_ERRORS_TOTAL, "script" => s.clone(), "reason" => reason);
    }
    let _ = metrics::histogram!(TRANSFORM_CALL_DURATION_SECONDS, "script" => s);
}
