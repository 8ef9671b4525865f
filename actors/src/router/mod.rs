//! RouterActor: one per enabled destination, serving the partitions this node holds (the
//! supervisor replaces it when they change). Loads its destination's `rt_jobs` of those
//! partitions in id order
//! into per-key queues (bounded window), delivers up to `concurrency` at once but never two
//! jobs of one ordering key, throttles (GCRA), retries with backoff honouring `Retry-After` (a rate-limit hint
//! pauses the whole destination until it passes, as it covers the API key, not one user),
//! dead-letters refused or exhausted jobs, opens a circuit breaker after sustained failure,
//! and records outcomes in batched transactions. After a restart it flushes what it holds
//! and reloads from Postgres, so nothing depends on memory surviving.
//!
//! A kind that batches ([`Delivery::batching`]) gets up to its limit of ready heads per
//! delivery — one job per ordering key, so batching never reorders a user's events —
//! and answers one outcome per job. A partial batch waits up to the kind's `max_wait` only
//! while more jobs are being loaded; otherwise it goes at once. The breaker and throttle
//! count a batch as one delivery.

pub mod keys;
pub mod policy;
pub mod rows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::cluster::LeaseGuard;
use crate::destinations::batch::BatchLimits;
use crate::destinations::{Delivery, DeliveryOutcome, Failure};
use crate::messages::{Drain, DrainReport, GetRouterStatus, RouterStatus, Wake};
use crate::store::{DeadLetter, JobRef, JobState, RetryUpdate, RtBundle, StatusBatch, Store};
use crate::telemetry as t;
use keys::{Finish, KeyQueues, QueuedJob};
use policy::{Breaker, RetryPolicy, Throttle};
use rows::{Outcome, Rows};

/// How long a router may hold a delivered job's mark in memory while the job's row still
/// waits for other jobs (see `rows.rs`): rows usually finish sooner and are deleted whole.
const MARK_DELAY: Duration = Duration::from_secs(1);

/// Router tuning (defaults from `[router]`; throttle from the destination's config).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Deliveries in flight at most.
    pub concurrency: usize,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Jobs held in memory at most.
    pub window: usize,
    /// How often to look for new jobs without a wake-up.
    pub poll_interval: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// Probe interval while the breaker is open.
    pub breaker_probe_interval: Duration,
    /// Throttle: deliveries per window (0 = none).
    pub throttle_limit: u32,
    /// Throttle window.
    pub throttle_window: Duration,
    /// Consecutive store failures after which the router stops (its supervisor restarts it).
    pub store_failure_limit: u32,
    /// First restart delay; doubles per restart up to `restart_backoff_max`.
    pub restart_backoff: Duration,
    /// Largest restart delay.
    pub restart_backoff_max: Duration,
    /// Outcomes not yet written to Postgres beyond which no new delivery starts: after a
    /// crash, at most this many plus `concurrency` deliveries are repeated. For a batching
    /// destination, up to half of it may be delivered jobs whose marks wait for their row
    /// to finish (see `rows.rs`).
    pub max_unrecorded: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            retry: RetryPolicy::default(),
            window: 10_000,
            poll_interval: Duration::from_millis(200),
            breaker_threshold: 50,
            breaker_probe_interval: Duration::from_secs(5),
            throttle_limit: 0,
            throttle_window: Duration::from_secs(1),
            store_failure_limit: 5,
            restart_backoff: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(30),
            max_unrecorded: 4096,
        }
    }
}

/// The router's metric handles, registered once: a delivery then updates them without
/// building label strings or looking series up in the registry.
struct RouterMetrics {
    delivered: metrics::Counter,
    dead: metrics::Counter,
    retry: metrics::Counter,
    throttled: metrics::Counter,
    store_failures: metrics::Counter,
    delivery_duration: metrics::Histogram,
    batch_events: metrics::Histogram,
    in_flight: metrics::Gauge,
    loaded: metrics::Gauge,
    circuit_open: metrics::Gauge,
}

impl RouterMetrics {
    fn new(destination: &str) -> Self {
        let d = destination.to_owned();
        let outcome = |o: &'static str| metrics::counter!(t::ROUTER_DELIVERIES_TOTAL, "destination" => d.clone(), "outcome" => o);
        Self {
            delivered: outcome("delivered"),
            dead: outcome("dead"),
            retry: outcome("retry"),
            throttled: metrics::counter!(t::ROUTER_THROTTLED_TOTAL, "destination" => d.clone()),
            store_failures: metrics::counter!(t::ROUTER_STORE_FAILURES_TOTAL, "destination" => d.clone()),
            delivery_duration: metrics::histogram!(t::ROUTER_DELIVERY_DURATION_SECONDS, "destination" => d.clone()),
            batch_events: metrics::histogram!(t::ROUTER_BATCH_EVENTS, "destination" => d.clone()),
            in_flight: metrics::gauge!(t::ROUTER_IN_FLIGHT, "destination" => d.clone()),
            loaded: metrics::gauge!(t::ROUTER_LOADED_JOBS, "destination" => d.clone()),
            circuit_open: metrics::gauge!(t::ROUTER_CIRCUIT_OPEN, "destination" => d),
        }
    }
}

#[derive(Clone)]
struct Job {
    /// Load order (delivery order within a key): rows load in id order, a row's jobs in
    /// index order.
    id: i64,
    /// Where it is stored.
    at: JobRef,
    message_id: Arc<str>,
    /// The stored payload (JSON text), handed to the kind as is.
    payload: Arc<str>,
    attempts: i32,
    due: Instant,
    first_failed_at: Option<DateTime<Utc>>,
}

impl QueuedJob for Job {
    fn id(&self) -> i64 {
        self.id
    }
    fn due(&self) -> Instant {
        self.due
    }
    fn set_due(&mut self, due: Instant) {
        self.due = due;
    }
}

/// The router actor (see the module comment).
pub struct RouterActor {
    destination_id: Arc<str>,
    partitions: Arc<[i32]>,
    guard: Arc<LeaseGuard>,
    kind: Arc<dyn Delivery>,
    store: Store,
    config: RouterConfig,
    queues: KeyQueues<Job>,
    in_flight: usize,
    max_loaded_id: i64,
    /// The last [`Job::id`] given.
    loaded_jobs: i64,
    /// Loaded rows and their jobs not yet done.
    rows: Rows,
    loading: bool,
    caught_up: bool,
    /// Outcomes since the last settle, in order.
    pending: Vec<Outcome>,
    /// Settled outcomes not yet written (a failed write's, kept for the next one).
    unwritten: StatusBatch,
    /// Outcomes in `unwritten`.
    unwritten_len: usize,
    flushing: bool,
    flushing_len: usize,
    store_failures: u32,
    breaker: Breaker,
    throttle: Option<Throttle>,
    wakeup: Option<(Instant, SpawnHandle)>,
    restarts: u32,
    paused_until: Option<Instant>,
    /// Until when the destination asked (429/503 with a rate-limit hint) not to be called:
    /// the hint covers the API key, so no job of any user goes out before it.
    rate_limited_until: Option<Instant>,
    generation: u64,
    draining: bool,
    drain_waiters: Vec<tokio::sync::oneshot::Sender<DrainReport>>,
    retired: bool,
    metrics: RouterMetrics,
    /// The kind's batch limits: `None` until the kind answered, then `Some(None)` for one
    /// job per delivery.
    batching: Option<Option<BatchLimits>>,
    /// Since when a partial batch has been held back waiting for more jobs.
    batch_wait: Option<Instant>,
    /// The destination's secrets, kept out of log lines.
    secrets: Arc<crate::redact::Redactor>,
    /// The console's live feed (answers are published while someone watches).
    live: Option<Arc<crate::live::LiveFeed>>,
}

impl RouterActor {
    /// A router for one destination's jobs of `partitions`; it dispatches only while
    /// `guard` says this node surely holds them.
    pub fn new(
        destination_id: &str,
        partitions: Arc<[i32]>,
        guard: Arc<LeaseGuard>,
        kind: Arc<dyn Delivery>,
        store: Store,
        config: RouterConfig,
    ) -> Self {
        let breaker = Breaker::new(config.breaker_threshold, config.breaker_probe_interval);
        let throttle = Throttle::new(config.throttle_limit, config.throttle_window);
        // Marks are deferred only once the destination is known to batch (below).
        let rows = Rows::new(MARK_DELAY, 0);
        Self {
            metrics: RouterMetrics::new(destination_id),
            destination_id: Arc::from(destination_id),
            partitions,
            guard,
            kind,
            store,
            config,
            queues: KeyQueues::default(),
            in_flight: 0,
            max_loaded_id: 0,
            loaded_jobs: 0,
            rows,
            loading: false,
            caught_up: false,
            pending: Vec::new(),
            unwritten: StatusBatch::default(),
            unwritten_len: 0,
            flushing: false,
            flushing_len: 0,
            store_failures: 0,
            breaker,
            throttle,
            wakeup: None,
            restarts: 0,
            paused_until: None,
            rate_limited_until: None,
            generation: 0,
            draining: false,
            drain_waiters: Vec::new(),
            retired: false,
            batching: None,
            batch_wait: None,
            secrets: Arc::default(),
            live: None,
        }
    }

    /// The destination's secrets, replaced in what the router logs.
    pub fn with_secrets(mut self, secrets: Arc<crate::redact::Redactor>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Publishes this router's answers to the console's live feed.
    pub fn with_live(mut self, live: Arc<crate::live::LiveFeed>) -> Self {
        self.live = Some(live);
        self
    }

    /// Tells the live feed (if watched) what became of `job`.
    fn publish(
        &self,
        key: &Arc<str>,
        job: &Job,
        outcome: &'static str,
        attempts: i32,
        f: Option<&Failure>,
    ) {
        let Some(live) = self.live.as_ref() else {
            return;
        };
        if let Some(f) = f {
            live.note_failure(
                &self.destination_id,
                crate::live::LastFailure {
                    error: self.secrets.text(&f.error).into_owned(),
                    status: f.status,
                    at: Utc::now(),
                },
            );
        }
        if !live.watched() {
            return;
        }
        live.answered(crate::live::Answered {
            destination_id: self.destination_id.clone(),
            message_id: job.message_id.clone(),
            key: key.clone(),
            outcome,
            status: f.and_then(|f| f.status),
            error: f
                .map(|f| self.secrets.text(&f.error).into_owned())
                .unwrap_or_default(),
            attempts,
            at: Utc::now(),
        });
    }

    fn dest_label(&self) -> String {
        self.destination_id.to_string()
    }

    fn store_failed(&mut self, ctx: &mut Context<Self>, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.store_failures.increment(1);
        self.store_failures += 1;
        tracing::warn!(destination = %self.destination_id, error = %e, failures = self.store_failures, "router {what} failed");
        // A stop drops the context's futures: a status write under way (its outcomes live
        // only in its future) and deliveries under way (the destination may have them
        // already), and every one of those jobs is delivered again after the restart. So
        // stop only when neither runs; both end within their timeouts and their failures
        // come back here.
        if self.store_failures >= self.config.store_failure_limit
            && !self.flushing
            && self.in_flight == 0
        {
            tracing::error!(destination = %self.destination_id, "router stopping after repeated store failures; supervisor restarts it");
            ctx.stop();
        }
    }

    /// Answers drain requests once nothing is in flight and every outcome is written.
    fn check_drained(&mut self) {
        if self.draining
            && self.in_flight == 0
            && !self.flushing
            && !self.unrecorded()
            && !self.drain_waiters.is_empty()
        {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(DrainReport { abandoned: 0 });
            }
        }
    }

    fn load(&mut self, ctx: &mut Context<Self>) {
        // After a restart, outcomes still held must be written before jobs are re-read,
        // including those of a status write under way (taken out of `pending`).
        if self.draining
            || self.loading
            || self.partitions.is_empty()
            || self.max_loaded_id == 0 && (self.flushing || self.unrecorded())
        {
            return;
        }
        let room = self
            .config
            .window
            .saturating_sub(self.queues.len() + self.in_flight);
        if room < self.config.window / 4 {
            return;
        }
        self.loading = true;
        let store = self.store.clone();
        let dest = self.destination_id.clone();
        let after = self.max_loaded_id;
        let generation = self.generation;
        let partitions = self.partitions.clone();
        let fut = async move {
            store
                .load_rt_bundles(&dest, &partitions, after, room as i64)
                .await
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.loading = false;
            if generation != act.generation {
                return;
            }
            match result {
                Ok(bundles) => {
                    act.store_failures = 0;
                    let now = Instant::now();
                    let now_utc = Utc::now();
                    let mut jobs = 0;
                    for b in bundles {
                        act.max_loaded_id = act.max_loaded_id.max(b.id);
                        jobs += b.message_ids.len();
                        act.add_bundle(b, now, now_utc);
                    }
                    act.caught_up = jobs < room;
                    act.metrics.loaded.set(act.queues.len() as f64);
                    if act.rows.has_empty() {
                        act.flush(ctx);
                    }
                    act.pump(ctx);
                }
                Err(e) => act.store_failed(ctx, "load", &e),
            }
        }));
    }

    /// Queues a row's jobs that are not done yet, each under its ordering key.
    fn add_bundle(&mut self, b: RtBundle, now: Instant, now_utc: DateTime<Utc>) {
        let states = b.job_states();
        let mut live = 0;
        let jobs = b
            .ordering_keys
            .into_iter()
            .zip(b.message_ids)
            .zip(b.payloads);
        for (index, ((key, message_id), payload)) in jobs.enumerate() {
            let (attempts, due, first_failed_at) = match states.get(&index) {
                Some(JobState::Done(_)) => continue,
                Some(JobState::Retry {
                    attempts,
                    next_attempt_ms,
                    first_failed_ms,
                }) => {
                    let wait = u64::try_from(next_attempt_ms - now_utc.timestamp_millis())
                        .map(Duration::from_millis)
                        .unwrap_or(Duration::ZERO);
                    let first = first_failed_ms.and_then(DateTime::<Utc>::from_timestamp_millis);
                    (*attempts, now + wait, first)
                }
                None => (0, now, None),
            };
            live += 1;
            self.loaded_jobs += 1;
            let job = Job {
                id: self.loaded_jobs,
                at: JobRef {
                    row: b.id,
                    index: index as i32,
                },
                message_id: Arc::from(message_id),
                payload: Arc::from(payload),
                attempts,
                due,
                first_failed_at,
            };
            self.queues.push(Arc::from(key), job, now);
        }
        self.rows.loaded(b.id, live);
    }

    /// Outcomes not yet written, settled or not.
    fn unrecorded(&self) -> bool {
        !self.pending.is_empty()
            || !self.unwritten.is_empty()
            || self.rows.write_due(Instant::now())
    }

    /// Starts every delivery that may start now, and arranges to be called again.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.draining || self.paused_until.is_some_and(|p| Instant::now() < p) {
            return;
        }
        if !self.guard.allows_all(&self.partitions) {
            // Leases being given up, expired or not renewed: dispatch nothing; the
            // supervisor replaces this router (or the renewal comes back).
            if !self.partitions.is_empty() {
                self.schedule(ctx, Instant::now() + Duration::from_millis(100));
            }
            return;
        }
        let Some(batching) = self.batching else {
            // Pumped again once the kind said whether it batches.
            return;
        };
        let now = Instant::now();
        if let Some(until) = self.rate_limited_until {
            if now < until {
                self.metrics.throttled.increment(1);
                self.schedule(ctx, until);
                return;
            }
            self.rate_limited_until = None;
        }
        self.queues.promote(now);
        while self.in_flight < self.config.concurrency && self.queues.has_ready() {
            if self.pending.len()
                + self.unwritten_len
                + self.flushing_len
                + self.rows.deferred_jobs()
                >= self.config.max_unrecorded
            {
                // Resumed when the running status write completes.
                break;
            }
            if let Some(limits) = batching {
                if self.queues.ready_len() < limits.max_events && !self.caught_up {
                    // More jobs are on their way: wait a little for a fuller batch.
                    let since = *self.batch_wait.get_or_insert(now);
                    if now < since + limits.max_wait {
                        self.schedule(ctx, since + limits.max_wait);
                        break;
                    }
                }
            }
            if !self.breaker.allow(now) {
                break;
            }
            if let Some(throttle) = &self.throttle {
                if let Err(wait) = throttle.check() {
                    self.metrics.throttled.increment(1);
                    if self.breaker.is_open() {
                        // Give the probe slot back; it was claimed above.
                        self.breaker.failure(now);
                    }
                    self.schedule(ctx, now + wait);
                    return;
                }
            }
            if let Some(limits) = batching {
                self.batch_wait = None;
                let batch = self.take_batch(limits);
                if batch.is_empty() {
                    break;
                }
                self.dispatch_batch(ctx, batch);
                continue;
            }
            let Some((key, job)) = self.queues.take() else {
                break;
            };
            self.dispatch(ctx, key, job);
        }
        self.metrics.in_flight.set(self.in_flight as f64);
        let next = [self.queues.next_due(), self.breaker.next_probe()]
            .into_iter()
            .flatten()
            .min();
        if let Some(at) = next {
            self.schedule(ctx, at);
        }
        if !self.caught_up {
            self.load(ctx);
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, at: Instant) {
        if let Some((when, handle)) = self.wakeup {
            if when <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = at.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, |act, ctx| {
            act.wakeup = None;
            act.pump(ctx);
        });
        self.wakeup = Some((at, handle));
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>, key: Arc<str>, job: Job) {
        self.in_flight += 1;
        let kind = self.kind.clone();
        let payload = job.payload.clone();
        let started = Instant::now();
        let generation = self.generation;
        let fut = async move { kind.deliver_text(&payload).await };
        ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| {
            if generation != act.generation {
                return;
            }
            act.in_flight -= 1;
            act.metrics
                .delivery_duration
                .record(started.elapsed().as_secs_f64());
            act.complete(ctx, key, job, outcome);
            act.flush(ctx);
            act.pump(ctx);
            act.check_drained();
        }));
    }

    /// The oldest ready heads (one per key) within `limits`: at most `max_events`, and no
    /// more stored bytes than `max_bytes` (a single larger job still goes, alone).
    fn take_batch(&mut self, limits: BatchLimits) -> Vec<(Arc<str>, Job)> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < limits.max_events {
            let Some(next) = self.queues.peek() else {
                break;
            };
            let len = next.payload.len();
            if !batch.is_empty() && bytes + len > limits.max_bytes {
                break;
            }
            let Some(taken) = self.queues.take() else {
                break;
            };
            bytes += len;
            batch.push(taken);
        }
        batch
    }

    fn dispatch_batch(&mut self, ctx: &mut Context<Self>, batch: Vec<(Arc<str>, Job)>) {
        self.in_flight += 1;
        self.metrics.batch_events.record(batch.len() as f64);
        let kind = self.kind.clone();
        let payloads: Vec<Arc<str>> = batch.iter().map(|(_, j)| j.payload.clone()).collect();
        let started = Instant::now();
        let generation = self.generation;
        let fut = async move { kind.deliver_batch(&payloads).await };
        ctx.spawn(fut.into_actor(self).map(move |outcomes, act, ctx| {
            if generation != act.generation {
                return;
            }
            act.in_flight -= 1;
            act.metrics
                .delivery_duration
                .record(started.elapsed().as_secs_f64());
            // The destination answered for the batch as a whole: one breaker step.
            let failed = !outcomes.is_empty()
                && outcomes
                    .iter()
                    .all(|o| matches!(o, DeliveryOutcome::Retry(_)));
            act.breaker_step(!failed, Instant::now());
            let mut outcomes = outcomes.into_iter();
            for (key, job) in batch {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    DeliveryOutcome::Retry(Failure {
                        error: "the destination kind answered fewer outcomes than events".into(),
                        ..Failure::default()
                    })
                });
                act.record(key, job, outcome);
            }
            act.flush(ctx);
            act.pump(ctx);
            act.check_drained();
        }));
    }

    /// The breaker's view of one delivery: healthy (delivered, or refused — the
    /// destination is up) or failed.
    fn breaker_step(&mut self, healthy: bool, now: Instant) {
        if healthy {
            if self.breaker.success() {
                tracing::info!(destination = %self.destination_id, "circuit breaker closed: destination recovered");
                self.metrics.circuit_open.set(0.0);
            }
        } else if self.breaker.failure(now) {
            tracing::warn!(destination = %self.destination_id, "circuit breaker open: pausing deliveries, probing");
            self.metrics.circuit_open.set(1.0);
        }
    }

    fn complete(
        &mut self,
        _ctx: &mut Context<Self>,
        key: Arc<str>,
        job: Job,
        outcome: DeliveryOutcome,
    ) {
        let healthy = !matches!(outcome, DeliveryOutcome::Retry(_));
        self.breaker_step(healthy, Instant::now());
        self.record(key, job, outcome);
    }

    /// Books one job's outcome: delivered, dead-lettered, or retried later (the breaker
    /// was told already).
    fn record(&mut self, key: Arc<str>, job: Job, outcome: DeliveryOutcome) {
        let now = Instant::now();
        match outcome {
            DeliveryOutcome::Delivered => {
                self.publish(&key, &job, "delivered", job.attempts + 1, None);
                self.metrics.delivered.increment(1);
                self.pending.push(Outcome::Delivered(job.at));
                self.queues.finish(&key, Finish::Done, now);
            }
            DeliveryOutcome::Abort(f) => {
                self.publish(&key, &job, "dead_lettered", job.attempts + 1, Some(&f));
                self.metrics.dead.increment(1);
                let reason = format!("refused: {}", f.error);
                self.dead_letter(&job, job.attempts + 1, reason, f);
                self.queues.finish(&key, Finish::Done, now);
            }
            DeliveryOutcome::Retry(f) => {
                let attempts = job.attempts + 1;
                let first_failed = job.first_failed_at.unwrap_or_else(Utc::now);
                let failing_for = (Utc::now() - first_failed)
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                let policy = &self.config.retry;
                if attempts >= policy.max_attempts || failing_for >= policy.max_duration {
                    self.publish(&key, &job, "dead_lettered", attempts, Some(&f));
                    self.metrics.dead.increment(1);
                    let reason =
                        format!("retries exhausted after {attempts} attempts: {}", f.error);
                    self.dead_letter(&job, attempts, reason, f);
                    self.queues.finish(&key, Finish::Done, now);
                } else {
                    self.publish(&key, &job, "retrying", attempts, Some(&f));
                    self.metrics.retry.increment(1);
                    let delay = policy.delay(job.attempts, f.retry_after);
                    if f.retry_after.is_some() {
                        let until = now + delay;
                        self.rate_limited_until =
                            Some(self.rate_limited_until.map_or(until, |u| u.max(until)));
                    }
                    let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    let error = match f.status {
                        Some(s) => format!("{} (status {s}): {}", f.error, f.body),
                        None => f.error.clone(),
                    };
                    self.pending.push(Outcome::Retry(RetryUpdate {
                        job: job.at,
                        attempts,
                        next_attempt_at: next,
                        first_failed_at: first_failed,
                        error,
                    }));
                    self.queues.update_head(&key, |h| {
                        h.attempts = attempts;
                        h.first_failed_at = Some(first_failed);
                    });
                    self.queues.finish(&key, Finish::RetryAt(now + delay), now);
                }
            }
        }
    }

    fn dead_letter(&mut self, job: &Job, attempts: i32, reason: String, f: Failure) {
        tracing::info!(destination = %self.destination_id, message_id = %job.message_id, reason = %self.secrets.text(&reason), "job dead-lettered");
        self.pending.push(Outcome::Dead(DeadLetter {
            job: job.at,
            attempts,
            reason,
            last_status: f.status.map(i32::from),
            last_response: Some(f.body),
        }));
    }

    /// Writes held outcomes in one transaction; one write at a time, the next one takes
    /// whatever accumulated meanwhile.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || !self.unrecorded() {
            return;
        }
        let outcomes = std::mem::take(&mut self.pending);
        self.unwritten_len += outcomes.len();
        if self.draining {
            self.rows.write_all();
        }
        let mut batch = self.rows.settle(outcomes, Instant::now());
        batch.merge_front(std::mem::take(&mut self.unwritten));
        if batch.is_empty() {
            self.unwritten_len = 0;
            return;
        }
        self.flushing = true;
        self.flushing_len = std::mem::take(&mut self.unwritten_len);
        let store = self.store.clone();
        let started = Instant::now();
        let fut = async move {
            let r = store.apply_status_ref(&batch).await;
            (r, batch)
        };
        ctx.spawn(fut.into_actor(self).map(move |(result, batch), act, ctx| {
            act.flushing = false;
            let written = std::mem::take(&mut act.flushing_len);
            match result {
                Ok(()) => {
                    act.store_failures = 0;
                    metrics::histogram!(t::ROUTER_STATUS_FLUSH_DURATION_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    if act.max_loaded_id == 0 {
                        act.load(ctx);
                    }
                    act.flush(ctx);
                    act.pump(ctx);
                    act.check_drained();
                }
                Err(e) => {
                    act.unwritten.merge_front(batch);
                    act.unwritten_len += written;
                    act.store_failed(ctx, "status write", &e);
                    ctx.run_later(Duration::from_millis(200), |act, ctx| act.flush(ctx));
                }
            }
        }));
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.retired {
            ctx.stop();
            return;
        }
        ctx.set_mailbox_capacity(1024);
        let delay = if self.restarts == 0 {
            Duration::ZERO
        } else {
            let exp = self
                .config
                .restart_backoff
                .saturating_mul(1u32 << self.restarts.min(16));
            exp.min(self.config.restart_backoff_max)
        };
        if !delay.is_zero() {
            tracing::info!(destination = %self.destination_id, ?delay, restarts = self.restarts, "router restarting after backoff");
            self.paused_until = Some(Instant::now() + delay);
        }
        ctx.run_later(delay, |act, ctx| {
            act.paused_until = None;
            act.flush(ctx);
            act.load(ctx);
        });
        if self.batching.is_none() {
            let kind = self.kind.clone();
            ctx.spawn(
                async move { kind.batching().await }
                    .into_actor(self)
                    .map(|limits, act, ctx| {
                        if let Some(l) = limits {
                            tracing::info!(destination = %act.destination_id, max_events = l.max_events, max_bytes = l.max_bytes, max_wait = ?l.max_wait, "batched delivery");
                        }
                        // A batching destination already repeats up to `concurrency`
                        // requests of `max_events` after a crash: deferred marks may hold
                        // as many (and count against `max_unrecorded`, at most half of it).
                        // Per-event delivery writes every mark at once.
                        let deferred = limits.map_or(0, |l| {
                            (act.config.concurrency * l.max_events)
                                .min(act.config.max_unrecorded / 2)
                        });
                        act.rows.set_max_deferred(deferred);
                        act.batching = Some(limits);
                        act.pump(ctx);
                    }),
            );
        }
        ctx.run_interval(self.config.poll_interval, |act, ctx| {
            if act.paused_until.is_none() {
                act.caught_up = false;
                act.pump(ctx);
                act.flush(ctx);
            }
        });
    }
}

impl Supervised for RouterActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        if self.retired {
            // Stopped on purpose (reload, partition switch): not a restart.
            return;
        }
        metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "router").increment(1);
        self.restarts += 1;
        self.generation += 1;
        // Deliveries under way were cancelled with the old context: reload from Postgres.
        self.queues.clear();
        self.rows.clear();
        self.in_flight = 0;
        self.max_loaded_id = 0;
        self.loading = false;
        self.flushing = false;
        self.flushing_len = 0;
        self.caught_up = false;
        self.store_failures = 0;
        self.wakeup = None;
    }
}

impl Handler<Wake> for RouterActor {
    type Result = ();

    fn handle(&mut self, _msg: Wake, ctx: &mut Self::Context) {
        self.caught_up = false;
        self.pump(ctx);
    }
}

impl Handler<Drain> for RouterActor {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        self.draining = true;
        self.rows.write_all();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drain_waiters.push(tx);
        self.flush(ctx);
        self.check_drained();
        ctx.run_later(msg.deadline, |act, _ctx| {
            let abandoned = act.in_flight;
            for w in act.drain_waiters.drain(..) {
                let _ = w.send(DrainReport { abandoned });
            }
        });
        let dest = self.destination_id.clone();
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                tracing::debug!(destination = %dest, "router stopped while draining");
                DrainReport::default()
            })
        })
    }
}

impl Handler<GetRouterStatus> for RouterActor {
    type Result = RouterStatus;

    fn handle(&mut self, _msg: GetRouterStatus, _ctx: &mut Self::Context) -> RouterStatus {
        RouterStatus {
            destination: self.dest_label(),
            loaded: self.queues.len(),
            in_flight: self.in_flight,
            circuit_open: self.breaker.is_open(),
        }
    }
}

crate::child_handlers!(RouterActor, |r| ("router", r.queues.len()));
crate::retire_handler!(RouterActor);
