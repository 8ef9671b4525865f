//! GatewayWriter: buffers accepted requests and stores them with group commit — one
//! statement per flush, many requests per flush, one `gw_jobs` row per source and
//! partition the flush's events fall in — and
//! answers each request only after its flush committed. Up to `max_flushes` flushes run at
//! once (each one statement, committed on its own), so Postgres' group commit merges them;
//! ids of concurrent flushes (and of other nodes') may commit out of order, so the
//! processor reads every row not yet consumed rather than "every id after my checkpoint".
//! It never answers a client before commit and never drops a request
//! silently: a failed flush answers every request in it with [`IngestError::Unavailable`].

use std::collections::hash_map::{Entry, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::messages::{FlushNow, Ingest, IngestError, IngestPart};
use crate::store::{GwJobInsert, Store};
use crate::telemetry as t;

/// Messages the writer's mailbox holds before `try_send` reports it full (answered 429).
pub const MAILBOX_CAPACITY: usize = 65_536;

/// GatewayWriter tuning.
#[derive(Debug, Clone)]
pub struct GatewayWriterConfig {
    /// Flush as soon as this many requests are waiting.
    pub max_batch: usize,
    /// Flushes running at once at most.
    pub max_flushes: usize,
    /// Events that must be waiting before a flush starts beside a running one: small
    /// requests (single events) gain more from one larger group than from a second
    /// statement.
    pub concurrent_flush_min_events: usize,
    /// Flush at most this long after the first request arrived in an idle writer.
    pub max_wait: Duration,
    /// messageId dedup window; older dedup rows are pruned.
    pub dedup_window: Duration,
    /// How often to prune the dedup window.
    pub dedup_prune_interval: Duration,
}

impl Default for GatewayWriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 128,
            max_flushes: 2,
            concurrent_flush_min_events: 200,
            max_wait: Duration::ZERO,
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_prune_interval: Duration::from_secs(60),
        }
    }
}

/// The group-commit writer actor (see the module comment).
pub struct GatewayWriter {
    store: Store,
    config: GatewayWriterConfig,
    buffer: Vec<Ingest>,
    /// Flushes running.
    flushing: usize,
    /// Events in `buffer`.
    buffered_events: usize,
    timer: Option<SpawnHandle>,
    pruning: bool,
}

impl GatewayWriter {
    /// Creates a writer over `store`.
    pub fn new(store: Store, config: GatewayWriterConfig) -> Self {
        Self {
            store,
            config,
            buffer: Vec::new(),
            flushing: 0,
            buffered_events: 0,
            timer: None,
            pruning: false,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        let Some(take) = next_group(
            &self.config,
            self.flushing,
            self.buffer.len(),
            self.buffered_events,
        ) else {
            return;
        };
        let batch: Vec<Ingest> = self.buffer.drain(..take).collect();
        metrics::gauge!(t::GATEWAY_QUEUE_DEPTH).set(self.buffer.len() as f64);
        let mut rows = Rows::default();
        let mut replies = Vec::with_capacity(batch.len());
        let mut events = 0u64;
        for msg in batch {
            let count = msg.event_count();
            events += count as u64;
            self.buffered_events = self.buffered_events.saturating_sub(count);
            replies.push((msg.reply, msg.source_id.clone(), count));
            for part in msg.parts {
                rows.add(&msg.source_id, msg.received_at, part);
            }
        }
        let rows = rows.rows;
        metrics::histogram!(t::GATEWAY_FLUSH_REQUESTS).record(replies.len() as f64);
        metrics::histogram!(t::GATEWAY_FLUSH_EVENTS).record(events as f64);
        self.flushing += 1;
        let store = self.store.clone();
        let started = Instant::now();
        let fut = async move { store.insert_gw_jobs(rows).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.flushing = act.flushing.saturating_sub(1);
            match result {
                Ok(()) => {
                    metrics::histogram!(t::GATEWAY_COMMIT_DURATION_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    for (reply, source, count) in replies {
                        metrics::counter!(t::GATEWAY_EVENTS_ACCEPTED_TOTAL, "source" => source.to_string())
                            .increment(count as u64);
                        // The client may have gone away; the data is committed either way.
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(e) => {
                    metrics::counter!(t::GATEWAY_FLUSH_FAILURES_TOTAL).increment(1);
                    tracing::warn!(error = %e, requests = replies.len(), "gateway flush failed");
                    let err = IngestError::Unavailable(e.to_string());
                    for (reply, _, _) in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
            if !act.buffer.is_empty() {
                act.flush(ctx);
            }
        }));
    }

    fn prune(&mut self, ctx: &mut Context<Self>) {
        if self.pruning {
            return;
        }
        self.pruning = true;
        let store = self.store.clone();
        let window = self.config.dedup_window.as_secs_f64();
        let fut = async move {
            let mut total = 0usize;
            loop {
                match store.prune_dedup(window, 10_000).await {
                    Ok(n) => {
                        total += n;
                        if n < 10_000 {
                            break Ok(total);
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, _| {
            act.pruning = false;
            match result {
                Ok(n) => {
                    metrics::counter!(t::GATEWAY_DEDUP_PRUNED_TOTAL).increment(n as u64);
                }
                Err(e) => tracing::warn!(error = %e, "dedup pruning failed"),
            }
        }));
    }
}

/// The `gw_jobs` rows of one flush: the parts of its requests merged per source and
/// partition, in request order (a row's events are its requests' events one request after
/// the other), so a partition's share of many small parts costs one row, not one each.
#[derive(Default)]
struct Rows {
    rows: Vec<GwJobInsert>,
    /// Index in `rows` of each (source, partition)'s row.
    by_key: HashMap<(Arc<str>, i32), usize>,
}

impl Rows {
    /// Adds one request's part: a row of its own, or appended to its source and partition's.
    fn add(&mut self, source: &Arc<str>, received_at: DateTime<Utc>, part: IngestPart) {
        match self.by_key.entry((source.clone(), part.partition)) {
            Entry::Occupied(e) => {
                let row = &mut self.rows[*e.get()];
                append_array(&mut row.payload, &part.payload);
                row.event_count += part.event_count;
                row.message_ids.extend(part.message_ids);
            }
            Entry::Vacant(e) => {
                e.insert(self.rows.len());
                self.rows.push(GwJobInsert {
                    source_id: source.to_string(),
                    partition: part.partition,
                    // The row's first request is its earliest: the buffer is in arrival order.
                    received_at,
                    event_count: part.event_count,
                    payload: part.payload,
                    message_ids: part.message_ids,
                });
            }
        }
    }
}

/// Appends the elements of the JSON array text `more` to the JSON array text `array`
/// (both as the gateway encodes them: `[` … `]`, no surrounding whitespace).
fn append_array(array: &mut String, more: &str) {
    let inner = more
        .strip_prefix('[')
        .and_then(|m| m.strip_suffix(']'))
        .unwrap_or(more);
    if inner.is_empty() {
        return;
    }
    if array.len() <= 2 {
        *array = more.to_owned();
        return;
    }
    array.pop();
    array.reserve(inner.len() + 2);
    array.push(',');
    array.push_str(inner);
    array.push(']');
}

/// How many of the `waiting` requests (`events` events) the next group commit takes now,
/// with `flushing` commits running: none while `max_flushes` run or nothing waits, nor
/// beside a running commit while fewer than `concurrent_flush_min_events` events wait (that
/// commit's completion takes them); else the oldest, at most `max_batch`.
fn next_group(
    config: &GatewayWriterConfig,
    flushing: usize,
    waiting: usize,
    events: usize,
) -> Option<usize> {
    if flushing >= config.max_flushes.max(1) || waiting == 0 {
        return None;
    }
    if flushing > 0 && events < config.concurrent_flush_min_events {
        return None;
    }
    Some(waiting.min(config.max_batch))
}

impl Actor for GatewayWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The HTTP layer bounds what waits here by bytes (its queue budget); the mailbox
        // bound only has to be above that so a full mailbox means a real overload.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(self.config.dedup_prune_interval, |act, ctx| act.prune(ctx));
        // After a supervisor restart, requests buffered before the stop are still here.
        if !self.buffer.is_empty() {
            self.flush(ctx);
        }
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if !self.buffer.is_empty() || self.flushing > 0 {
            tracing::info!(
                pending = self.buffer.len(),
                "gateway writer stopping with work in hand"
            );
        }
        Running::Stop
    }
}

impl Supervised for GatewayWriter {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "gateway_writer").increment(1);
        tracing::warn!("gateway writer restarting");
        self.flushing = 0;
        self.timer = None;
        self.pruning = false;
    }
}

impl Handler<Ingest> for GatewayWriter {
    type Result = ();

    fn handle(&mut self, msg: Ingest, ctx: &mut Self::Context) {
        self.buffered_events += msg.event_count();
        self.buffer.push(msg);
        metrics::gauge!(t::GATEWAY_QUEUE_DEPTH).set(self.buffer.len() as f64);
        if self.flushing > 0 {
            // A running flush picks these up as soon as it commits, unless enough waits
            // for another one beside it (`flush` decides).
            self.flush(ctx);
            return;
        }
        if self.buffer.len() >= self.config.max_batch || self.config.max_wait.is_zero() {
            self.flush(ctx);
        } else if self.timer.is_none() {
            self.timer = Some(ctx.run_later(self.config.max_wait, |act, ctx| {
                act.timer = None;
                act.flush(ctx);
            }));
        }
    }
}

impl Handler<FlushNow> for GatewayWriter {
    type Result = ();

    fn handle(&mut self, _msg: FlushNow, ctx: &mut Self::Context) {
        self.flush(ctx);
    }
}

crate::child_handlers!(GatewayWriter, |w| ("gateway_writer", w.buffer.len()));

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// The writer's group commit on a paused clock: 2,000 requests of 1–100 events arrive
    /// 0–2 ms apart, a commit takes 3–12 ms. Groups never exceed `max_batch`, never more
    /// than `max_flushes` commits run, a second one starts only with enough events waiting,
    /// every request is answered exactly once after its commit, in arrival order per
    /// commit, and nothing waits once arrivals stop.
    #[tokio::test(start_paused = true)]
    async fn group_commit_bounds_groups_and_concurrency_and_answers_every_request() {
        let config = GatewayWriterConfig::default();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(u64, usize)>>();
        let mut waiting: VecDeque<(u64, usize)> = VecDeque::new();
        let (mut events, mut flushing, mut max_seen) = (0usize, 0usize, 0usize);
        let mut answered: Vec<u64> = Vec::new();
        let mut arrivals = (0..2000u64)
            .map(|i| (i, 1 + next(100) as usize, next(3)))
            .collect::<VecDeque<_>>();
        let mut next_arrival = tokio::time::Instant::now();
        while !(arrivals.is_empty() && waiting.is_empty() && flushing == 0) {
            // Start every group the policy allows.
            while let Some(take) = next_group(&config, flushing, waiting.len(), events) {
                assert!(take <= config.max_batch);
                if flushing > 0 {
                    assert!(events >= config.concurrent_flush_min_events);
                }
                let group: Vec<(u64, usize)> = waiting.drain(..take).collect();
                events -= group.iter().map(|g| g.1).sum::<usize>();
                flushing += 1;
                max_seen = max_seen.max(flushing);
                assert!(flushing <= config.max_flushes);
                let tx = done_tx.clone();
                let commit = Duration::from_millis(3 + next(10));
                tokio::spawn(async move {
                    tokio::time::sleep(commit).await;
                    let _ = tx.send(group);
                });
            }
            tokio::select! {
                group = done_rx.recv() => {
                    let group = group.expect("a commit answers");
                    flushing -= 1;
                    answered.extend(group.iter().map(|g| g.0));
                }
                _ = tokio::time::sleep_until(next_arrival), if !arrivals.is_empty() => {
                    let (id, n, gap) = arrivals.pop_front().expect("an arrival");
                    waiting.push_back((id, n));
                    events += n;
                    next_arrival += Duration::from_millis(gap);
                }
            }
        }
        let mut sorted = answered.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..2000).collect::<Vec<_>>(),
            "each request answered once"
        );
        assert_eq!(
            max_seen, config.max_flushes,
            "the second commit slot was used"
        );
        assert_eq!(events, 0);
    }

    #[test]
    fn a_flush_merges_parts_per_source_and_partition_in_request_order() {
        let part = |partition, ids: &[&str]| IngestPart {
            partition,
            event_count: ids.len() as i32,
            payload: format!(
                "[{}]",
                ids.iter()
                    .map(|m| format!(r#"{{"messageId":"{m}"}}"#))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            message_ids: ids.iter().map(|m| m.to_string()).collect(),
        };
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::milliseconds(5);
        let mut rows = Rows::default();
        rows.add(&a, t0, part(3, &["1", "2"]));
        rows.add(&a, t0, part(5, &["3"]));
        rows.add(&b, t1, part(3, &["4"]));
        rows.add(&a, t1, part(3, &["5", "6"]));
        let got: Vec<_> = rows
            .rows
            .iter()
            .map(|r| (&*r.source_id, r.partition, r.event_count, r.received_at))
            .collect();
        assert_eq!(got, vec![("a", 3, 4, t0), ("a", 5, 1, t0), ("b", 3, 1, t1)]);
        let first = &rows.rows[0];
        assert_eq!(first.message_ids, ["1", "2", "5", "6"]);
        let events: Vec<serde_json::Value> =
            serde_json::from_str(&first.payload).expect("one JSON array");
        let ids: Vec<&str> = events
            .iter()
            .filter_map(|e| e["messageId"].as_str())
            .collect();
        assert_eq!(ids, ["1", "2", "5", "6"]);
    }

    #[test]
    fn no_second_commit_for_a_few_events() {
        let config = GatewayWriterConfig::default();
        assert_eq!(next_group(&config, 0, 3, 3), Some(3));
        assert_eq!(next_group(&config, 1, 3, 3), None);
        assert_eq!(next_group(&config, 1, 300, 300), Some(128));
        assert_eq!(next_group(&config, 2, 300, 30_000), None);
        assert_eq!(next_group(&config, 0, 0, 0), None);
    }
}
