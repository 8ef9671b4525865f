//! Warehouse loading: the `POSTGRES` destination kind ([`config`]), how events become rows
//! ([`flatten`]), naming and typing rules ([`schema`]), the loader that writes a batch into
//! the warehouse ([`loader`]), and the [`WarehouseUploader`] actor, one per enabled
//! warehouse destination. Every `upload_interval` the uploader reads its destination's
//! `wh_jobs` in id order (at most `maxBatchRows` events at a time), groups the rows by
//! table, loads each table in one warehouse transaction together with that table's
//! checkpoint, then deletes the loaded jobs. A failure leaves the jobs in place and retries
//! with capped exponential backoff; other destinations never wait for it.

pub mod config;
pub mod flatten;
pub mod loader;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{Map, Value};

use crate::messages::{Drain, DrainReport, Heartbeat, HeartbeatReply, InjectPanic, Retire};
use crate::store::{Store, StoreError, WhJob};
use crate::telemetry as t;
pub use config::PostgresWarehouse;
use flatten::TableKind;
use loader::{Batch, LoadError, Loader, TableBatch};

/// Uploader tuning shared by every warehouse destination.
#[derive(Debug, Clone)]
pub struct UploaderConfig {
    /// First retry delay after a failed load.
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_max_backoff: Duration,
    /// Columns a warehouse table may get at most; values for more are discarded.
    pub max_columns: usize,
    /// How often the backlog gauges are refreshed.
    pub backlog_interval: Duration,
}

impl Default for UploaderConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(1),
            retry_max_backoff: Duration::from_secs(60),
            max_columns: 1000,
            backlog_interval: Duration::from_secs(5),
        }
    }
}

/// Why an upload round failed.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// The uploader of one warehouse destination (see the module comment).
pub struct WarehouseUploader {
    spec: Arc<PostgresWarehouse>,
    /// Source id → warehouse schema.
    schemas: Arc<HashMap<String, String>>,
    store: Store,
    config: UploaderConfig,
    loader: Option<Loader>,
    busy: bool,
    failures: u32,
    retry_at: Option<Instant>,
    draining: bool,
    drain_waiters: Vec<tokio::sync::oneshot::Sender<DrainReport>>,
    retired: bool,
}

impl WarehouseUploader {
    /// An uploader for `spec`; `sources` maps the ids of the sources feeding it to their
    /// names (for the default `keel_<source name>` schema).
    pub fn new(
        spec: Arc<PostgresWarehouse>,
        sources: &HashMap<String, String>,
        store: Store,
        config: UploaderConfig,
    ) -> Self {
        let schemas = sources
            .iter()
            .map(|(id, name)| {
                let schema = spec
                    .schema
                    .clone()
                    .unwrap_or_else(|| schema::default_schema(name));
                (id.clone(), schema)
            })
            .collect();
        Self {
            loader: Some(Loader::new(spec.conn.clone(), config.max_columns)),
            spec,
            schemas: Arc::new(schemas),
            store,
            config,
            busy: false,
            failures: 0,
            retry_at: None,
            draining: false,
            drain_waiters: Vec::new(),
            retired: false,
        }
    }

    fn cycle(&mut self, ctx: &mut Context<Self>) {
        if self.draining || self.busy || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let Some(mut loader) = self.loader.take() else {
            return;
        };
        self.busy = true;
        let (store, spec, schemas) = (self.store.clone(), self.spec.clone(), self.schemas.clone());
        let fut = async move {
            let result = upload_all(&store, &spec, &schemas, &mut loader).await;
            if result.is_err() {
                loader.reset();
            }
            (loader, result)
        };
        ctx.spawn(fut.into_actor(self).map(|(loader, result), act, _ctx| {
            act.loader = Some(loader);
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
                    metrics::counter!(t::WAREHOUSE_BATCHES_TOTAL, "destination" => dest.clone(), "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(destination = %dest, error = %e, failures = act.failures,
                        retry_in = ?(backoff + jitter), "warehouse upload failed; events wait in wh_jobs");
                }
            }
        }));
    }

    fn sample_backlog(&mut self, ctx: &mut Context<Self>) {
        let (store, dest) = (self.store.clone(), self.spec.id.clone());
        ctx.spawn(
            async move {
                match store.wh_backlog(&dest).await {
                    Ok(b) => {
                        metrics::gauge!(t::WAREHOUSE_PENDING_EVENTS, "destination" => dest.clone())
                            .set(b.events as f64);
                        metrics::gauge!(t::WAREHOUSE_LAG_SECONDS, "destination" => dest)
                            .set(b.oldest_age_secs.unwrap_or(0.0).max(0.0));
                    }
                    Err(e) => tracing::debug!(error = %e, "warehouse backlog query failed"),
                }
            }
            .into_actor(self),
        );
    }
}

/// Loads batches until fewer than a full batch is waiting.
async fn upload_all(
    store: &Store,
    spec: &PostgresWarehouse,
    schemas: &HashMap<String, String>,
    loader: &mut Loader,
) -> Result<(), UploadError> {
    let instance = store.instance_id().await?;
    loop {
        let jobs = store.fetch_wh_jobs(&spec.id, spec.max_batch_rows).await?;
        let Some(last) = jobs.last() else {
            return Ok(());
        };
        let last_job_id = last.id;
        let events: i64 = jobs.iter().map(|j| i64::from(j.event_count)).sum();
        let started = Instant::now();
        let batch = Batch {
            instance,
            destination: spec.id.clone(),
            last_job_id,
            tables: group_rows(&jobs, spec, schemas),
        };
        let stats = loader.load(&batch).await?;
        store.delete_wh_jobs(&spec.id, last_job_id).await?;
        let dest = spec.id.clone();
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
        tracing::debug!(destination = %dest, events, rows = stats.rows, skipped = stats.skipped,
            discards = stats.discards, "warehouse batch loaded");
        if events < spec.max_batch_rows {
            return Ok(());
        }
    }
}

/// A table's kind and its rows with their job ids.
type TableRows = (TableKind, Vec<(i64, flatten::Row)>);

/// Rows of `jobs` grouped by (schema, table), in job order within each table.
fn group_rows(
    jobs: &[WhJob],
    spec: &PostgresWarehouse,
    schemas: &HashMap<String, String>,
) -> Vec<TableBatch> {
    let mut groups: BTreeMap<(String, String), TableRows> = BTreeMap::new();
    for job in jobs {
        // The map already applies the destination's `schema`; a source missing from it
        // (removed from the workspace since) gets the same rule by its id.
        let schema = schemas.get(&job.source_id).cloned().unwrap_or_else(|| {
            spec.schema
                .clone()
                .unwrap_or_else(|| schema::default_schema(&job.source_id))
        });
        let events: Vec<Map<String, Value>> = serde_json::from_str(&job.payload).unwrap_or_else(|e| {
            // Only the processor writes wh_jobs, so this is a corrupted row; never panic.
            tracing::error!(job = job.id, error = %e, "wh_jobs payload is not an event array; skipped");
            Vec::new()
        });
        for event in &events {
            for row in flatten::rows_for_event(event) {
                let entry = groups
                    .entry((schema.clone(), row.table.clone()))
                    .or_insert_with(|| (row.kind, Vec::new()));
                entry.1.push((job.id, row));
            }
        }
    }
    groups
        .into_iter()
        .map(|((schema, table), (kind, rows))| TableBatch {
            schema,
            table,
            kind,
            rows,
        })
        .collect()
}

impl Actor for WarehouseUploader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.retired {
            ctx.stop();
            return;
        }
        let dest = self.spec.id.clone();
        for outcome in ["loaded", "failed"] {
            metrics::counter!(t::WAREHOUSE_BATCHES_TOTAL, "destination" => dest.clone(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!(t::WAREHOUSE_ROWS_LOADED_TOTAL, "destination" => dest.clone())
            .increment(0);
        metrics::counter!(t::WAREHOUSE_EVENTS_LOADED_TOTAL, "destination" => dest.clone())
            .increment(0);
        metrics::counter!(t::WAREHOUSE_DISCARDS_TOTAL, "destination" => dest.clone()).increment(0);
        metrics::counter!(t::WAREHOUSE_COLUMNS_ADDED_TOTAL, "destination" => dest).increment(0);
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
        metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "warehouse_uploader")
            .increment(1);
        self.busy = false;
        self.loader = Some(Loader::new(self.spec.conn.clone(), self.config.max_columns));
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

impl Handler<Retire> for WarehouseUploader {
    type Result = ();

    fn handle(&mut self, _msg: Retire, ctx: &mut Self::Context) {
        self.retired = true;
        ctx.stop();
    }
}

impl Handler<InjectPanic> for WarehouseUploader {
    type Result = ();

    fn handle(&mut self, _msg: InjectPanic, _ctx: &mut Self::Context) {
        panic!("injected panic (test hook)");
    }
}

impl Handler<Heartbeat> for WarehouseUploader {
    type Result = HeartbeatReply;

    fn handle(&mut self, _msg: Heartbeat, _ctx: &mut Self::Context) -> HeartbeatReply {
        HeartbeatReply {
            actor: "warehouse_uploader",
            pending: usize::from(self.busy),
        }
    }
}
