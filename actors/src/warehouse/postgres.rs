//! The `POSTGRES` warehouse as a [`Sink`]: a batch's events become rows grouped by schema
//! and table ([`super::loader::group_jobs`]) and are loaded by the [`Loader`], each table
//! in one warehouse transaction with its checkpoint.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::config::PostgresWarehouse;
use super::loader::{Batch, LoadStats, Loader};
use super::{schema, JobBatch, Sink, SinkError, UploadSpec, UploaderConfig, WarehouseKind};

/// Loads batches into one Postgres warehouse.
pub struct PostgresSink {
    spec: Arc<PostgresWarehouse>,
    /// Source id → warehouse schema.
    schemas: HashMap<String, String>,
    loader: Loader,
}

impl PostgresSink {
    /// A sink for `spec`; `sources` maps source ids to names (for `keel_<source name>`).
    pub fn new(
        spec: Arc<PostgresWarehouse>,
        sources: &HashMap<String, String>,
        max_columns: usize,
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
            loader: Loader::new(spec.conn.clone(), max_columns),
            spec,
            schemas,
        }
    }

    /// The schema of a source: the map applies the destination's `schema`; a source missing
    /// from it (removed from the workspace since) gets the same rule by its id.
    fn schema_of(&self, source_id: &str) -> String {
        self.schemas.get(source_id).cloned().unwrap_or_else(|| {
            self.spec
                .schema
                .clone()
                .unwrap_or_else(|| schema::default_schema(source_id))
        })
    }
}

impl Sink for PostgresSink {
    fn load<'a>(&'a mut self, batch: &'a JobBatch) -> BoxFuture<'a, Result<LoadStats, SinkError>> {
        Box::pin(async move {
            let tables = super::loader::group_jobs(&batch.jobs, |s| self.schema_of(s));
            let b = Batch {
                instance: batch.instance,
                destination: batch.destination.clone(),
                last_job_id: batch.last_id,
                tables,
            };
            Ok(self.loader.load(&b).await?)
        })
    }

    fn reset(&mut self) {
        self.loader.reset();
    }
}

impl WarehouseKind for PostgresWarehouse {
    fn spec(&self) -> UploadSpec {
        UploadSpec::warehouse(&self.id, self.upload_interval, self.max_batch_rows)
    }

    fn sink(&self, sources: &HashMap<String, String>, config: &UploaderConfig) -> Box<dyn Sink> {
        Box::new(PostgresSink::new(
            Arc::new(self.clone()),
            sources,
            config.max_columns,
        ))
    }
}
