//! Every metric name Keel exports, in one place (`keel_<component>_<what>_<unit>`;
//! counters end in `_total`, durations are histograms in seconds). Labels are `source`,
//! `destination`, `outcome`, `endpoint` and `actor`; never user data.

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

/// Every name above, for the dashboard contract test and for `describe_all`.
pub const ALL: &[&str] = &[
    GATEWAY_REQUESTS_TOTAL,
    GATEWAY_EVENTS_ACCEPTED_TOTAL,
    GATEWAY_REQUEST_DURATION_SECONDS,
    GATEWAY_COMMIT_DURATION_SECONDS,
    GATEWAY_FLUSH_REQUESTS,
    GATEWAY_FLUSH_EVENTS,
    GATEWAY_FLUSH_FAILURES_TOTAL,
    GATEWAY_QUEUE_DEPTH,
    GATEWAY_QUEUE_BYTES,
    GATEWAY_DEDUP_PRUNED_TOTAL,
    GATEWAY_RATE_LIMITED_TOTAL,
    SUPERVISOR_RESTARTS_TOTAL,
    SUPERVISOR_HEARTBEAT_MISSES_TOTAL,
    PROCESSOR_EVENTS_TOTAL,
    PROCESSOR_JOBS_WRITTEN_TOTAL,
    PROCESSOR_FILTERED_TOTAL,
    PROCESSOR_BATCH_DURATION_SECONDS,
    PROCESSOR_FAILURES_TOTAL,
    ROUTER_DELIVERIES_TOTAL,
    ROUTER_DELIVERY_DURATION_SECONDS,
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
    describe_counter!(GATEWAY_FLUSH_FAILURES_TOTAL, "Group commits that failed");
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
    describe_counter!(
        SUPERVISOR_HEARTBEAT_MISSES_TOTAL,
        "Heartbeats not answered in time"
    );
}

/// Events the processor handled, labelled `outcome` (`routed`, `duplicate`, `no_route`).
pub const PROCESSOR_EVENTS_TOTAL: &str = "keel_processor_events_total";
/// Jobs written to `rt_jobs`, labelled `destination`.
pub const PROCESSOR_JOBS_WRITTEN_TOTAL: &str = "keel_processor_jobs_written_total";
/// Events not routed to a destination, labelled `destination` and `outcome` (the reason).
pub const PROCESSOR_FILTERED_TOTAL: &str = "keel_processor_filtered_total";
/// Duration of one processor batch (read, route, commit).
pub const PROCESSOR_BATCH_DURATION_SECONDS: &str = "keel_processor_batch_duration_seconds";
/// Failed processor batches.
pub const PROCESSOR_FAILURES_TOTAL: &str = "keel_processor_failures_total";

/// Delivery attempts, labelled `destination` and `outcome` (`delivered`, `retry`, `dead`).
pub const ROUTER_DELIVERIES_TOTAL: &str = "keel_router_deliveries_total";
/// Duration of one delivery attempt, labelled `destination`.
pub const ROUTER_DELIVERY_DURATION_SECONDS: &str = "keel_router_delivery_duration_seconds";
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
