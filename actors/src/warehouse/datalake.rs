//! The `S3_DATALAKE` destination: the warehouse tables (tracks, one table per event,
//! identifies, users, pages, screens, groups, aliases) as Parquet files in object storage,
//! one file per table, hour and batch:
//! `<prefix>/<namespace>/<table>/<yyyy>/<mm>/<dd>/<hh>/<first>-<last>.parquet`. Rows,
//! column names and type inference are the Postgres warehouse's ([`super::flatten`],
//! [`super::schema`]). A table's columns and their types are kept in
//! `<prefix>/<namespace>/_keel_schema/<table>.json`, written before any file that uses a new
//! column: a new key becomes a new Parquet field (files written before lack it, and readers
//! that union by name see nulls there); a value that does not fit its column's type goes to
//! the `keel_discards` table (one file per hour and batch). `users` rows are merged per user
//! within a batch; across batches the files hold each change (the latest `uuid_ts` wins).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::ObjectStore;
use serde_json::Value;

use super::config::batching;
use super::flatten::{Row, TableKind};
use super::loader::merge_by_id;
use super::objects::{hour_path, put_object, s3_settings, StoreConfig};
use super::schema::{self, coerce, infer, parse_timestamp, Cell, ColType, DISCARDS_TABLE};
use super::{JobBatch, LoadStats, Sink, SinkError, UploadSpec, UploaderConfig, WarehouseKind};
use crate::destinations::settings::Settings;
use crate::destinations::ConfigError;
use crate::workspace;

/// Kind name in `destinationDefinition.name`.
pub const KIND: &str = "S3_DATALAKE";

/// Folder (below the namespace) of the table schemas.
pub const SCHEMA_FOLDER: &str = "_keel_schema";

/// An `S3_DATALAKE` destination.
#[derive(Debug, Clone)]
pub struct DataLake {
    /// Destination id.
    pub id: String,
    /// Where files go.
    pub store: StoreConfig,
    /// One namespace for every source; `None`: `keel_<source name>` per source.
    pub namespace: Option<String>,
    /// How often waiting events are uploaded.
    pub upload_interval: Duration,
    /// Events per batch at most.
    pub max_batch_rows: i64,
}

impl DataLake {
    /// Reads and checks the destination's settings.
    pub fn new(
        dest: &workspace::Destination,
        http: &crate::destinations::HttpConfig,
    ) -> Result<Self, ConfigError> {
        let c = Settings::new(dest);
        let store = s3_settings(dest, KIND, http)?;
        let namespace = c.string("namespace");
        let (upload_interval, max_batch_rows) = batching(&c, 30.0);
        Ok(Self {
            id: dest.id.clone(),
            store,
            namespace,
            upload_interval,
            max_batch_rows,
        })
    }
}

crate::stored_event_mapping!(DataLake, |_k| KIND);

impl WarehouseKind for DataLake {
    fn spec(&self) -> UploadSpec {
        UploadSpec::warehouse(&self.id, self.upload_interval, self.max_batch_rows)
    }

    fn sink(&self, sources: &HashMap<String, String>, config: &UploaderConfig) -> Box<dyn Sink> {
        let namespaces = sources
            .iter()
            .map(|(id, name)| {
                let ns = self
                    .namespace
                    .clone()
                    .unwrap_or_else(|| schema::default_schema(name));
                (id.clone(), ns)
            })
            .collect();
        Box::new(ParquetSink {
            lake: self.clone(),
            namespaces,
            max_columns: config.max_columns,
            store: None,
            tables: HashMap::new(),
        })
    }
}

/// A table's columns in file order.
type Columns = Vec<(String, ColType)>;

/// Writes batches as Parquet files (see the module comment).
pub struct ParquetSink {
    lake: DataLake,
    namespaces: HashMap<String, String>,
    max_columns: usize,
    store: Option<Arc<dyn ObjectStore>>,
    /// (namespace, table) → its columns in file order, and whether its schema file exists.
    tables: HashMap<(String, String), (Columns, bool)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SchemaFile {
    columns: Vec<(String, String)>,
}

/// A value that did not fit its column.
struct Discard {
    table: String,
    column: String,
    value: String,
    reason: String,
    row_id: String,
    received_at: Option<DateTime<Utc>>,
}

impl ParquetSink {
    fn store(&mut self) -> Result<Arc<dyn ObjectStore>, SinkError> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        let s = self.lake.store.open()?;
        self.store = Some(s.clone());
        Ok(s)
    }

    fn namespace_of(&self, source_id: &str) -> String {
        self.namespaces.get(source_id).cloned().unwrap_or_else(|| {
            self.lake
                .namespace
                .clone()
                .unwrap_or_else(|| schema::default_schema(source_id))
        })
    }

    fn schema_path(&self, ns: &str, table: &str) -> Path {
        self.lake
            .store
            .path(&format!("{ns}/{SCHEMA_FOLDER}/{table}.json"))
    }

    /// The table's columns, read from its schema file once (system columns for a new one).
    async fn columns(
        &mut self,
        store: &dyn ObjectStore,
        ns: &str,
        table: &str,
        kind: TableKind,
    ) -> Result<(Vec<(String, ColType)>, bool), SinkError> {
        let key = (ns.to_owned(), table.to_owned());
        if let Some(c) = self.tables.get(&key) {
            return Ok(c.clone());
        }
        let found = match store.get(&self.schema_path(ns, table)).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                let f: SchemaFile = serde_json::from_slice(&bytes)
                    .map_err(|e| SinkError::Encode(format!("{ns}/{table} schema file: {e}")))?;
                let cols = f
                    .columns
                    .into_iter()
                    .map(|(n, t)| (n, ColType::from_sql(&t)))
                    .collect();
                (cols, true)
            }
            Err(object_store::Error::NotFound { .. }) => {
                let cols = kind
                    .system_columns()
                    .into_iter()
                    .map(|(c, t)| (c.to_owned(), t))
                    .collect();
                (cols, false)
            }
            Err(e) => return Err(e.into()),
        };
        self.tables.insert(key, found.clone());
        Ok(found)
    }

    /// Adds the columns `rows` need (typed by their first value, within the column cap) and
    /// writes the schema file when any was added; returns the columns and how many were new.
    async fn evolve(
        &mut self,
        store: &dyn ObjectStore,
        ns: &str,
        table: &str,
        kind: TableKind,
        rows: &[Row],
    ) -> Result<(Vec<(String, ColType)>, u64), SinkError> {
        let (mut cols, persisted) = self.columns(store, ns, table, kind).await?;
        let mut known: std::collections::HashSet<String> =
            cols.iter().map(|(c, _)| c.clone()).collect();
        let mut added = 0u64;
        for row in rows {
            for (c, v) in &row.values {
                if known.contains(c) {
                    continue;
                }
                if cols.len() >= self.max_columns {
                    continue;
                }
                if let Some(ty) = infer(v) {
                    known.insert(c.clone());
                    cols.push((c.clone(), ty));
                    added += 1;
                }
            }
        }
        if added > 0 || !persisted {
            let file = SchemaFile {
                columns: cols
                    .iter()
                    .map(|(c, t)| (c.clone(), t.sql().to_owned()))
                    .collect(),
            };
            let bytes =
                serde_json::to_vec_pretty(&file).map_err(|e| SinkError::Encode(e.to_string()))?;
            put_object(store, &self.schema_path(ns, table), bytes).await?;
        }
        self.tables
            .insert((ns.to_owned(), table.to_owned()), (cols.clone(), true));
        Ok((cols, added))
    }
}

enum ColBuilder {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
    Text(StringBuilder),
}

impl ColBuilder {
    fn new(ty: &ColType) -> Self {
        match ty {
            ColType::BigInt => ColBuilder::Int(Int64Builder::new()),
            ColType::Double => ColBuilder::Float(Float64Builder::new()),
            ColType::Boolean => ColBuilder::Bool(BooleanBuilder::new()),
            ColType::Timestamp => {
                ColBuilder::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            ColType::Text | ColType::Jsonb | ColType::Other(_) => {
                ColBuilder::Text(StringBuilder::new())
            }
        }
    }

    fn data_type(ty: &ColType) -> DataType {
        match ty {
            ColType::BigInt => DataType::Int64,
            ColType::Double => DataType::Float64,
            ColType::Boolean => DataType::Boolean,
            ColType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColType::Text | ColType::Jsonb | ColType::Other(_) => DataType::Utf8,
        }
    }

    fn push(&mut self, cell: Option<Cell>) {
        match (self, cell) {
            (ColBuilder::Int(b), Some(Cell::Int(x))) => b.append_value(x),
            (ColBuilder::Float(b), Some(Cell::Float(x))) => b.append_value(x),
            (ColBuilder::Bool(b), Some(Cell::Bool(x))) => b.append_value(x),
            (ColBuilder::Time(b), Some(Cell::Time(x))) => b.append_value(x.timestamp_micros()),
            (ColBuilder::Text(b), Some(Cell::Text(x))) => b.append_value(x),
            (ColBuilder::Text(b), Some(Cell::Json(x))) => b.append_value(x.to_string()),
            (ColBuilder::Int(b), _) => b.append_null(),
            (ColBuilder::Float(b), _) => b.append_null(),
            (ColBuilder::Bool(b), _) => b.append_null(),
            (ColBuilder::Time(b), _) => b.append_null(),
            (ColBuilder::Text(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            ColBuilder::Int(mut b) => Arc::new(b.finish()),
            ColBuilder::Float(mut b) => Arc::new(b.finish()),
            ColBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColBuilder::Time(mut b) => Arc::new(b.finish()),
            ColBuilder::Text(mut b) => Arc::new(b.finish()),
        }
    }
}

fn received_at(row: &Row) -> Option<DateTime<Utc>> {
    row.values
        .iter()
        .find(|(c, _)| c == "received_at")
        .and_then(|(_, v)| v.as_str())
        .and_then(parse_timestamp)
}

/// One table's rows of one hour as a record batch, with the values that did not fit.
fn record_batch(
    table: &str,
    cols: &[(String, ColType)],
    rows: &[&Row],
    now: DateTime<Utc>,
    max_columns: usize,
    discards: &mut Vec<Discard>,
) -> Result<RecordBatch, SinkError> {
    let mut builders: Vec<ColBuilder> = cols.iter().map(|(_, t)| ColBuilder::new(t)).collect();
    let index: HashMap<&str, usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (c, _))| (c.as_str(), i))
        .collect();
    for row in rows {
        let mut cells: Vec<Option<Cell>> = vec![None; cols.len()];
        if let Some(&i) = index.get("id") {
            cells[i] = Some(Cell::Text(row.id.clone()));
        }
        if let Some(&i) = index.get("uuid_ts") {
            cells[i] = Some(Cell::Time(now));
        }
        let at = received_at(row);
        let mut discard = |column: &str, value: &Value, reason: String| {
            discards.push(Discard {
                table: table.to_owned(),
                column: column.to_owned(),
                value: match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                reason,
                row_id: row.id.clone(),
                received_at: at,
            });
        };
        for (name, value) in &row.values {
            let Some(&i) = index.get(name.as_str()) else {
                discard(
                    name,
                    value,
                    format!("table has reached the limit of {max_columns} columns"),
                );
                continue;
            };
            match coerce(value, &cols[i].1) {
                Ok(cell) => cells[i] = Some(cell),
                Err(reason) => discard(name, value, reason),
            }
        }
        for (name, value) in &row.collisions {
            discard(
                name,
                value,
                "another key of this event maps to the same column".into(),
            );
        }
        for (b, cell) in builders.iter_mut().zip(cells) {
            b.push(cell);
        }
    }
    let fields: Vec<Field> = cols
        .iter()
        .map(|(c, t)| Field::new(c, ColBuilder::data_type(t), true))
        .collect();
    let arrays: Vec<ArrayRef> = builders.into_iter().map(ColBuilder::finish).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| SinkError::Encode(format!("{table}: {e}")))
}

fn discards_batch(d: &[&Discard], now: DateTime<Utc>) -> Result<RecordBatch, SinkError> {
    let cols: Vec<(String, ColType)> = [
        ("table_name", ColType::Text),
        ("column_name", ColType::Text),
        ("column_value", ColType::Text),
        ("reason", ColType::Text),
        ("row_id", ColType::Text),
        ("received_at", ColType::Timestamp),
        ("uuid_ts", ColType::Timestamp),
    ]
    .into_iter()
    .map(|(c, t)| (c.to_owned(), t))
    .collect();
    let mut b: Vec<ColBuilder> = cols.iter().map(|(_, t)| ColBuilder::new(t)).collect();
    for x in d {
        b[0].push(Some(Cell::Text(x.table.clone())));
        b[1].push(Some(Cell::Text(x.column.clone())));
        b[2].push(Some(Cell::Text(x.value.clone())));
        b[3].push(Some(Cell::Text(x.reason.clone())));
        b[4].push(Some(Cell::Text(x.row_id.clone())));
        b[5].push(x.received_at.map(Cell::Time));
        b[6].push(Some(Cell::Time(now)));
    }
    let fields: Vec<Field> = cols
        .iter()
        .map(|(c, t)| Field::new(c, ColBuilder::data_type(t), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        b.into_iter().map(ColBuilder::finish).collect(),
    )
    .map_err(|e| SinkError::Encode(e.to_string()))
}

/// A record batch as Parquet bytes (snappy).
pub fn parquet_bytes(batch: &RecordBatch) -> Result<Vec<u8>, SinkError> {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))
        .map_err(|e| SinkError::Encode(e.to_string()))?;
    w.write(batch)
        .map_err(|e| SinkError::Encode(e.to_string()))?;
    w.into_inner().map_err(|e| SinkError::Encode(e.to_string()))
}

impl Sink for ParquetSink {
    fn load<'a>(&'a mut self, batch: &'a JobBatch) -> BoxFuture<'a, Result<LoadStats, SinkError>> {
        Box::pin(async move {
            let store = self.store()?;
            let tables = super::loader::group_jobs(&batch.jobs, |s| self.namespace_of(s));
            let fallback = batch.jobs.first().map_or_else(Utc::now, |j| j.at);
            let now = Utc::now();
            let mut stats = LoadStats::default();
            // (namespace, hour) → discards.
            let mut discards: BTreeMap<(String, String), Vec<Discard>> = BTreeMap::new();
            let mut files: Vec<(Path, Vec<u8>)> = Vec::new();
            for t in &tables {
                let rows: Vec<Row> = if t.kind.upserts() {
                    let refs: Vec<&Row> = t.rows.iter().map(|(_, r)| r).collect();
                    merge_by_id(&refs)
                } else {
                    t.rows.iter().map(|(_, r)| r.clone()).collect()
                };
                let (cols, added) = self
                    .evolve(store.as_ref(), &t.schema, &t.table, t.kind, &rows)
                    .await?;
                stats.columns_added += added;
                let mut by_hour: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
                for r in &rows {
                    by_hour
                        .entry(hour_path(received_at(r).unwrap_or(fallback)))
                        .or_default()
                        .push(r);
                }
                for (hour, rows) in by_hour {
                    let d = discards
                        .entry((t.schema.clone(), hour.clone()))
                        .or_default();
                    let before = d.len();
                    let rb = record_batch(&t.table, &cols, &rows, now, self.max_columns, d)?;
                    stats.discards += (d.len() - before) as u64;
                    stats.rows += rows.len() as u64;
                    let path = self.lake.store.path(&format!(
                        "{}/{}/{hour}/{}-{}.parquet",
                        t.schema, t.table, batch.first_id, batch.last_id
                    ));
                    files.push((path, parquet_bytes(&rb)?));
                }
            }
            for ((ns, hour), d) in &discards {
                if d.is_empty() {
                    continue;
                }
                let refs: Vec<&Discard> = d.iter().collect();
                let path = self.lake.store.path(&format!(
                    "{ns}/{DISCARDS_TABLE}/{hour}/{}-{}.parquet",
                    batch.first_id, batch.last_id
                ));
                files.push((path, parquet_bytes(&discards_batch(&refs, now)?)?));
            }
            let uploads = files.into_iter().map(|(path, bytes)| {
                let store = store.clone();
                async move {
                    let n = bytes.len() as u64;
                    put_object(store.as_ref(), &path, bytes).await?;
                    Ok::<u64, SinkError>(n)
                }
            });
            for n in futures::future::try_join_all(uploads).await? {
                stats.objects += 1;
                stats.bytes += n;
            }
            Ok(stats)
        })
    }

    fn reset(&mut self) {
        self.store = None;
        // Schema files are re-read: another writer (a restarted Keel) may have added columns.
        self.tables.clear();
    }
}
