//! Batch uploads: the warehouse destination kinds and the raw backup share one actor, the
//! [`WarehouseUploader`], over a small [`Sink`] trait. Every `upload_interval` (or as soon
//! as a full batch waits) the uploader claims the next batch of its queue (`wh_jobs` of its
//! destination, or `backup_jobs`) — the batch's job id range is recorded before the upload,
//! so a retry uploads exactly the same range and names derived from it are overwritten,
//! never doubled — hands it to the sink, and deletes the jobs only after the sink confirmed.
//! A failure leaves the jobs in place and retries with capped exponential backoff; other
//! destinations never wait for it.
//!
//! A backlog sample (every `backlog_interval`) that finds a full batch waiting starts an
//! upload at once, so a batch goes out after `uploadInterval` or `maxBatchRows`, whichever
//! comes first.
//!
//! Sinks: [`postgres::PostgresSink`] (`POSTGRES`, the loader in [`loader`]), gzip JSON lines
//! in object storage ([`objects`]: `S3`, `MINIO`, `GCS`, `AZURE_BLOB`), Parquet files
//! ([`datalake`]: `S3_DATALAKE`), ClickHouse over HTTP ([`clickhouse`]: `CLICKHOUSE`), and
//! the raw backup (`crate::backup`). How events become rows is shared ([`flatten`],
//! [`schema`]).

pub mod clickhouse;
pub mod config;
pub mod datalake;
pub mod flatten;
pub mod loader;
pub mod objects;
pub mod postgres;
pub mod schema;

use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::messages::{Drain, DrainReport};
use crate::store::{Store, StoreError};
use crate::telemetry as t;
pub use config::PostgresWarehouse;
pub mod sink;

pub use sink::{
    JobBatch, LoadError, LoadStats, Sink, SinkError, UploadMetrics, UploadSpec, UploaderConfig,
    WarehouseKind,
};

/// The uploader of one warehouse destination, or of the raw backup (see the module
/// comment).
pub struct WarehouseUploader {
    spec: UploadSpec,
    store: Store,
    config: UploaderConfig,
    sink: Option<Box<dyn Sink>>,
    busy: bool,
    failures: u32,
    retry_at: Option<Instant>,
    draining: bool,
    drain_waiters: Vec<tokio::sync::oneshot::Sender<DrainReport>>,
    retired: bool,
}

impl WarehouseUploader {
    /// An uploader of `spec`'s queue into `sink`.
    pub fn new(
        spec: UploadSpec,
        sink: Box<dyn Sink>,
        store: Store,
        config: UploaderConfig,
    ) -> Self {
        Self {
            spec,
            store,
            config,
            sink: Some(sink),
            busy: false,
            failures: 0,
            retry_at: None,
            draining: false,
            drain_waiters: Vec::new(),
            retired: false,
        }
    }

    fn actor_name(&self) -> &'static str {
        match self.spec.metrics {
            UploadMetrics::Warehouse => "warehouse_uploader",
            UploadMetrics::Backup => "backup_writer",
        }
    }

    fn cycle(&mut self, ctx: &mut Context<Self>) {
        if self.draining || self.busy || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let Some(mut sink) = self.sink.take() else {
            return;
        };
        self.busy = true;
        let (store, spec) = (self.store.clone(), self.spec.clone());
        let fut = async move {
            let result = upload_all(&store, &spec, sink.as_mut()).await;
            if result.is_err() {
                sink.reset();
            }
            (sink, result)
        };
        ctx.spawn(fut.into_actor(self).map(|(sink, result), act, _ctx| {
            act.sink = Some(sink);
            act.busy = false;
            if act.draining {
                for w in act.drain_waiters.drain(..) {
                    let _ = w.send(DrainReport { abandoned: 0 });
                }
            }
            let dest = act.spec.id.clone();
            match result {
                Ok(()) => {
                    act.failures = 0;
                    act.retry_at = None;
                }
                Err(e) => {
                    act.failures = act.failures.saturating_add(1);
                    let exp = act.failures.saturating_sub(1).min(16);
                    let backoff = act
                        .config
                        .retry_base
                        .saturating_mul(1u32 << exp)
                        .min(act.config.retry_max_backoff);
                    let jitter = backoff.mul_f64(rand::random::<f64>() * 0.2);
                    act.retry_at = Some(Instant::now() + backoff + jitter);
                    match act.spec.metrics {
                        UploadMetrics::Warehouse => {
                            metrics::counter!(t::WAREHOUSE_BATCHES_TOTAL, "destination" => dest.clone(), "outcome" => "failed")
                                .increment(1);
                            tracing::warn!(destination = %dest, error = %e, failures = act.failures,
                                retry_in = ?(backoff + jitter), "warehouse upload failed; events wait in wh_jobs");
                        }
                        UploadMetrics::Backup => {
                            metrics::counter!(t::BACKUP_FAILURES_TOTAL).increment(1);
                            tracing::warn!(error = %e, failures = act.failures,
                                retry_in = ?(backoff + jitter), "backup upload failed; requests wait in backup_jobs");
                        }
                    }
                }
            }
        }));
    }

    fn sample_backlog(&mut self, ctx: &mut Context<Self>) {
        let (store, spec) = (self.store.clone(), self.spec.clone());
        ctx.spawn(
            async move {
                match store.queue_backlog(&spec.queue).await {
                    Ok(b) => {
                        let waiting = b.events;
                        let age = b.oldest_age_secs.unwrap_or(0.0).max(0.0);
                        match spec.metrics {
                            UploadMetrics::Warehouse => {
                                metrics::gauge!(t::WAREHOUSE_PENDING_EVENTS, "destination" => spec.id.clone())
                                    .set(b.events as f64);
                                metrics::gauge!(t::WAREHOUSE_LAG_SECONDS, "destination" => spec.id)
                                    .set(age);
                            }
                            UploadMetrics::Backup => {
                                metrics::gauge!(t::BACKUP_PENDING_ROWS).set(b.rows as f64);
                                metrics::gauge!(t::BACKUP_PENDING_EVENTS).set(b.events as f64);
                                metrics::gauge!(t::BACKUP_LAG_SECONDS).set(age);
                            }
                        }
                        Some(waiting)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "upload backlog query failed");
                        None
                    }
                }
            }
            .into_actor(self)
            .map(|waiting, act, ctx| {
                // A full batch waits: upload now rather than at the next interval.
                if waiting.is_some_and(|w| w >= act.spec.max_batch_rows) && !act.busy {
                    act.cycle(ctx);
                }
            }),
        );
    }
}

/// Uploads batches until fewer than a full batch is waiting.
async fn upload_all(
    store: &Store,
    spec: &UploadSpec,
    sink: &mut dyn Sink,
) -> Result<(), SinkError> {
    let instance = store.instance_id().await.map_err(store_error)?;
    loop {
        let Some(claimed) = store
            .claim_batch(&spec.queue, spec.max_batch_rows)
            .await
            .map_err(store_error)?
        else {
            return Ok(());
        };
        let events: i64 = claimed.jobs.iter().map(|j| i64::from(j.event_count)).sum();
        let started = Instant::now();
        let batch = JobBatch {
            instance,
            destination: spec.id.clone(),
            first_id: claimed.first_id,
            last_id: claimed.last_id,
            jobs: claimed.jobs,
        };
        let stats = sink.load(&batch).await?;
        store
            .confirm_batch(
                &spec.queue,
                &batch.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
            )
            .await
            .map_err(store_error)?;
        let dest = spec.id.clone();
        match spec.metrics {
            UploadMetrics::Warehouse => {
                metrics::histogram!(t::WAREHOUSE_LOAD_DURATION_SECONDS, "destination" => dest.clone())
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(t::WAREHOUSE_BATCHES_TOTAL, "destination" => dest.clone(), "outcome" => "loaded")
                    .increment(1);
                metrics::counter!(t::WAREHOUSE_ROWS_LOADED_TOTAL, "destination" => dest.clone())
                    .increment(stats.rows);
                metrics::counter!(t::WAREHOUSE_EVENTS_LOADED_TOTAL, "destination" => dest.clone())
                    .increment(u64::try_from(events).unwrap_or(0));
                metrics::counter!(t::WAREHOUSE_DISCARDS_TOTAL, "destination" => dest.clone())
                    .increment(stats.discards);
                metrics::counter!(t::WAREHOUSE_COLUMNS_ADDED_TOTAL, "destination" => dest.clone())
                    .increment(stats.columns_added);
            }
            UploadMetrics::Backup => {
                metrics::counter!(t::BACKUP_ROWS_TOTAL).increment(batch.jobs.len() as u64);
                metrics::counter!(t::BACKUP_EVENTS_TOTAL)
                    .increment(u64::try_from(events).unwrap_or(0));
                metrics::counter!(t::BACKUP_OBJECTS_TOTAL).increment(stats.objects);
            }
        }
        tracing::debug!(destination = %dest, events, rows = stats.rows, skipped = stats.skipped,
            discards = stats.discards, objects = stats.objects, "batch uploaded");
        if events < spec.max_batch_rows {
            return Ok(());
        }
    }
}

fn store_error(e: StoreError) -> SinkError {
    SinkError::Postgres(LoadError::Keel(e.to_string()))
}

impl Actor for WarehouseUploader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.retired {
            ctx.stop();
            return;
        }
        let dest = self.spec.id.clone();
        match self.spec.metrics {
            UploadMetrics::Warehouse => {
                for outcome in ["loaded", "failed"] {
                    metrics::counter!(t::WAREHOUSE_BATCHES_TOTAL, "destination" => dest.clone(), "outcome" => outcome)
                        .increment(0);
                }
                metrics::counter!(t::WAREHOUSE_ROWS_LOADED_TOTAL, "destination" => dest.clone())
                    .increment(0);
                metrics::counter!(t::WAREHOUSE_EVENTS_LOADED_TOTAL, "destination" => dest.clone())
                    .increment(0);
                metrics::counter!(t::WAREHOUSE_DISCARDS_TOTAL, "destination" => dest.clone())
                    .increment(0);
                metrics::counter!(t::WAREHOUSE_COLUMNS_ADDED_TOTAL, "destination" => dest)
                    .increment(0);
            }
            UploadMetrics::Backup => {
                metrics::counter!(t::BACKUP_ROWS_TOTAL).increment(0);
                metrics::counter!(t::BACKUP_EVENTS_TOTAL).increment(0);
                metrics::counter!(t::BACKUP_OBJECTS_TOTAL).increment(0);
                metrics::counter!(t::BACKUP_FAILURES_TOTAL).increment(0);
            }
        }
        // Poll a little more often than the interval so a retry delay is honoured promptly.
        let tick = self.spec.upload_interval.min(Duration::from_secs(1));
        let interval = self.spec.upload_interval;
        let mut last = Instant::now() - interval;
        ctx.run_interval(tick, move |act, ctx| {
            let due =
                last.elapsed() >= interval || act.retry_at.is_some_and(|t| Instant::now() >= t);
            if due && !act.busy {
                last = Instant::now();
                act.cycle(ctx);
            }
        });
        self.sample_backlog(ctx);
        ctx.run_interval(self.config.backlog_interval, |act, ctx| {
            act.sample_backlog(ctx)
        });
    }
}

impl Supervised for WarehouseUploader {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        if self.retired {
            // Stopped on purpose (reload, partition switch): not a restart.
            return;
        }
        metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => self.actor_name()).increment(1);
        self.busy = false;
        if let Some(s) = self.sink.as_mut() {
            s.reset();
        }
    }
}

impl Handler<Drain> for WarehouseUploader {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.busy {
            self.drain_waiters.push(tx);
            ctx.run_later(msg.deadline, |act, _ctx| {
                for w in act.drain_waiters.drain(..) {
                    let _ = w.send(DrainReport { abandoned: 1 });
                }
            });
        } else {
            let _ = tx.send(DrainReport::default());
        }
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

crate::child_handlers!(WarehouseUploader, |u| (u.actor_name(), usize::from(u.busy)));
crate::retire_handler!(WarehouseUploader);
