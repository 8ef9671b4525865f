//! Loads flattened rows into a Postgres warehouse over its own connection (tokio-postgres,
//! optionally TLS): creates schemas, tables and columns as needed (`ADD COLUMN IF NOT
//! EXISTS`, types inferred from the first value), coerces values to their column's type
//! (misfits go to `keel_discards`), and writes each table in one transaction with one
//! `INSERT … SELECT FROM unnest(…)` plus the table's load checkpoint, so a batch loaded twice
//! (after a crash) changes nothing. `users` rows are upserted, latest values winning.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::config::ConnConfig;
use super::flatten::{Row, TableKind};
use super::schema::{
    coerce, infer, parse_timestamp, quote, Cell, ColType, DISCARDS_TABLE, LOADS_TABLE,
};
pub use super::sink::{LoadError, LoadStats};
use crate::store::QueuedJob;

/// Rows of one batch for one table, each with the `wh_jobs` id it came from (ascending).
pub struct TableBatch {
    /// Warehouse schema.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Table kind (fixes the system columns).
    pub kind: TableKind,
    /// `(job id, row)` in job order.
    pub rows: Vec<(i64, Row)>,
}

/// A table's kind and its rows with their job ids.
type TableRows = (TableKind, Vec<(i64, Row)>);

/// The rows of `jobs` grouped by (schema, table), in job order within each table;
/// `schema_of` names the schema (namespace, database) of a source id.
pub fn group_jobs(jobs: &[QueuedJob], schema_of: impl Fn(&str) -> String) -> Vec<TableBatch> {
    let mut groups: BTreeMap<(String, String), TableRows> = BTreeMap::new();
    for job in jobs {
        let schema = schema_of(&job.source_id);
        let events: Vec<serde_json::Map<String, Value>> = serde_json::from_str(&job.payload).unwrap_or_else(|e| {
            // Only the processor writes wh_jobs, so this is a corrupted row; never panic.
            tracing::error!(job = job.id, error = %e, "wh_jobs payload is not an event array; skipped");
            Vec::new()
        });
        for event in &events {
            for row in super::flatten::rows_for_event(event) {
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

/// One batch: every table it touches and the last job id it covers.
pub struct Batch {
    /// Keel database instance id (keys the checkpoints).
    pub instance: uuid::Uuid,
    /// Destination id.
    pub destination: String,
    /// Highest `wh_jobs` id in the batch.
    pub last_job_id: i64,
    /// Tables, in a stable order.
    pub tables: Vec<TableBatch>,
}

type Columns = HashMap<String, ColType>;

/// Connections a loader uses at once (tables of a batch load in parallel).
pub const LOAD_CONNECTIONS: usize = 3;

/// A warehouse connection and what it knows of the warehouse's tables.
pub struct Loader {
    conn: Arc<ConnConfig>,
    max_columns: usize,
    client: Option<Client>,
    /// Extra connections for loading tables in parallel with `client`.
    workers: Vec<Option<Client>>,
    schemas: HashSet<String>,
    tables: HashMap<(String, String), Columns>,
}

fn is_schema_conflict(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        [
            SqlState::UNDEFINED_COLUMN,
            SqlState::UNDEFINED_TABLE,
            SqlState::INVALID_SCHEMA_NAME,
            SqlState::DATATYPE_MISMATCH,
            SqlState::DUPLICATE_COLUMN,
            SqlState::DUPLICATE_TABLE,
            SqlState::UNIQUE_VIOLATION,
        ]
        .contains(c)
    })
}

impl Loader {
    /// A loader that connects on first use.
    pub fn new(conn: Arc<ConnConfig>, max_columns: usize) -> Self {
        Self {
            conn,
            max_columns,
            client: None,
            workers: (1..LOAD_CONNECTIONS).map(|_| None).collect(),
            schemas: HashSet::new(),
            tables: HashMap::new(),
        }
    }

    /// Drops the connection (after an error) so the next load reconnects.
    pub fn reset(&mut self) {
        self.client = None;
        for w in &mut self.workers {
            *w = None;
        }
    }

    async fn client(&mut self) -> Result<&mut Client, LoadError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(self.conn.connect().await?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| LoadError::Connect("no connection".into()))
    }

    /// Loads every table of `batch`. A table already loaded up to the batch (its checkpoint
    /// says so) is skipped row by row, so retrying a half-loaded batch is safe.
    pub async fn load(&mut self, batch: &Batch) -> Result<LoadStats, LoadError> {
        match self.load_once(batch).await {
            Err(LoadError::Query(e)) if is_schema_conflict(&e) => {
                // Someone changed a table under us (or our cache is stale): re-read the
                // catalog and try once more; tables already loaded skip by checkpoint.
                tracing::info!(error = %e, "warehouse schema changed; refreshing and retrying");
                self.schemas.clear();
                self.tables.clear();
                self.load_once(batch).await
            }
            other => other,
        }
    }

    /// Schema changes first, one statement at a time on the main connection; then the
    /// tables' load transactions, spread over [`LOAD_CONNECTIONS`] connections so Postgres
    /// inserts one table while Keel builds the next.
    async fn load_once(&mut self, batch: &Batch) -> Result<LoadStats, LoadError> {
        let mut stats = LoadStats::default();
        let mut prepared = Vec::with_capacity(batch.tables.len());
        for t in &batch.tables {
            let (cols, added) = self.ensure_columns(t).await?;
            stats.columns_added += added;
            prepared.push((t, cols));
        }
        self.client().await?;
        for w in &mut self.workers {
            if w.as_ref().is_none_or(Client::is_closed) {
                *w = Some(self.conn.connect().await?);
            }
        }
        let max_columns = self.max_columns;
        let mut lanes: Vec<&mut Client> = Vec::new();
        if let Some(c) = self.client.as_mut() {
            lanes.push(c);
        }
        lanes.extend(self.workers.iter_mut().flatten());
        let n = lanes.len().max(1);
        let prepared = &prepared;
        let runs = lanes
            .into_iter()
            .enumerate()
            .map(|(lane, client)| async move {
                let mut s = LoadStats::default();
                for (t, cols) in prepared.iter().skip(lane).step_by(n) {
                    let r = load_table(client, batch, t, cols, max_columns).await?;
                    s.rows += r.rows;
                    s.skipped += r.skipped;
                    s.discards += r.discards;
                }
                Ok::<_, LoadError>(s)
            });
        for s in futures::future::try_join_all(runs).await? {
            stats.rows += s.rows;
            stats.skipped += s.skipped;
            stats.discards += s.discards;
        }
        Ok(stats)
    }

    async fn ensure_schema(&mut self, schema: &str) -> Result<(), LoadError> {
        if self.schemas.contains(schema) {
            return Ok(());
        }
        let q = quote(schema);
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {q}; \
             CREATE TABLE IF NOT EXISTS {q}.{d} (table_name text NOT NULL, column_name text NOT NULL, \
               column_value text, reason text NOT NULL, row_id text NOT NULL, \
               received_at timestamptz, uuid_ts timestamptz NOT NULL); \
             CREATE TABLE IF NOT EXISTS {q}.{l} (keel_instance uuid NOT NULL, destination_id text NOT NULL, \
               table_name text NOT NULL, position bigint NOT NULL, loaded_at timestamptz NOT NULL, \
               PRIMARY KEY (keel_instance, destination_id, table_name));",
            d = quote(DISCARDS_TABLE),
            l = quote(LOADS_TABLE),
        );
        if let Err(e) = self.client().await?.batch_execute(&sql).await {
            // Two loaders creating the same schema at once race on the catalog; once more
            // finds it made.
            if !is_schema_conflict(&e) {
                return Err(e.into());
            }
            self.client().await?.batch_execute(&sql).await?;
        }
        self.schemas.insert(schema.to_owned());
        Ok(())
    }

    async fn read_columns(&mut self, schema: &str, table: &str) -> Result<Columns, LoadError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&schema, &table],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    ColType::from_sql(r.get::<_, &str>(1)),
                )
            })
            .collect())
    }

    /// Makes sure the table exists with every column the rows need; returns its columns
    /// and how many were added. Columns beyond the cap are left out (their values discard).
    async fn ensure_columns(&mut self, t: &TableBatch) -> Result<(Columns, u64), LoadError> {
        self.ensure_schema(&t.schema).await?;
        let key = (t.schema.clone(), t.table.clone());
        let target = format!("{}.{}", quote(&t.schema), quote(&t.table));
        if !self.tables.contains_key(&key) {
            let mut cols = self.read_columns(&t.schema, &t.table).await?;
            if cols.is_empty() {
                let defs: Vec<String> = t
                    .kind
                    .system_columns()
                    .iter()
                    .map(|(c, ty)| {
                        let pk = if *c == "id" { " PRIMARY KEY" } else { "" };
                        format!("{} {}{pk}", quote(c), ty.sql())
                    })
                    .collect();
                self.client()
                    .await?
                    .batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {target} ({})",
                        defs.join(", ")
                    ))
                    .await?;
                cols = self.read_columns(&t.schema, &t.table).await?;
            }
            self.tables.insert(key.clone(), cols);
        }
        let known = &self.tables[&key];
        let mut new: BTreeMap<&str, ColType> = BTreeMap::new();
        let mut order = Vec::new();
        for (_, row) in &t.rows {
            for (c, v) in &row.values {
                if known.contains_key(c) || new.contains_key(c.as_str()) {
                    continue;
                }
                if known.len() + new.len() >= self.max_columns {
                    continue;
                }
                if let Some(ty) = infer(v) {
                    new.insert(c, ty);
                    order.push(c.as_str());
                }
            }
        }
        if new.is_empty() {
            return Ok((known.clone(), 0));
        }
        let adds: Vec<String> = order
            .iter()
            .map(|c| format!("ADD COLUMN IF NOT EXISTS {} {}", quote(c), new[c].sql()))
            .collect();
        self.client()
            .await?
            .batch_execute(&format!("ALTER TABLE {target} {}", adds.join(", ")))
            .await?;
        // Read back: a column someone else added first keeps its type.
        let cols = self.read_columns(&t.schema, &t.table).await?;
        let added = new.len() as u64;
        self.tables.insert(key, cols.clone());
        Ok((cols, added))
    }
}

/// Loads one table in one transaction with its checkpoint (see the module comment).
async fn load_table(
    client: &mut Client,
    batch: &Batch,
    t: &TableBatch,
    cols: &Columns,
    max_columns: usize,
) -> Result<LoadStats, LoadError> {
    let tx = client.transaction().await?;
    let loads = format!("{}.{}", quote(&t.schema), quote(LOADS_TABLE));
    let position: i64 = tx
        .query_opt(
            &format!(
                "SELECT position FROM {loads} WHERE keel_instance = $1 AND destination_id = $2 \
                     AND table_name = $3 FOR UPDATE"
            ),
            &[&batch.instance, &batch.destination, &t.table],
        )
        .await?
        .map_or(0, |r| r.get(0));
    let fresh: Vec<&Row> = t
        .rows
        .iter()
        .filter(|(job, _)| *job > position)
        .map(|(_, r)| r)
        .collect();
    let mut stats = LoadStats {
        skipped: (t.rows.len() - fresh.len()) as u64,
        ..LoadStats::default()
    };
    let now = Utc::now();
    let rows = if t.kind.upserts() {
        merge_by_id(&fresh)
    } else {
        fresh.into_iter().cloned().collect()
    };
    let built = build_columns(&rows, cols, t.kind, now, max_columns);
    if !rows.is_empty() {
        let names: Vec<String> = built.columns.iter().map(|c| quote(&c.name)).collect();
        let unnest: Vec<String> = built
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}[]", i + 1, c.array_type()))
            .collect();
        let select: Vec<String> = built
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("u.c{i}::{}", c.ty.sql()))
            .collect();
        let aliases: Vec<String> = (0..built.columns.len()).map(|i| format!("c{i}")).collect();
        let conflict = if t.kind.upserts() {
            let sets: Vec<String> = built
                .columns
                .iter()
                .filter(|c| c.name != "id")
                .map(|c| {
                    let q = quote(&c.name);
                    format!("{q} = COALESCE(EXCLUDED.{q}, t.{q})")
                })
                .collect();
            format!("DO UPDATE SET {}", sets.join(", "))
        } else {
            "DO NOTHING".to_owned()
        };
        let sql = format!(
                "INSERT INTO {}.{} AS t ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT (id) {conflict}",
                quote(&t.schema),
                quote(&t.table),
                names.join(", "),
                select.join(", "),
                unnest.join(", "),
                aliases.join(", "),
            );
        let params: Vec<&(dyn ToSql + Sync)> =
            built.columns.iter().map(|c| c.values.as_param()).collect();
        tx.execute(sql.as_str(), &params).await?;
        stats.rows = rows.len() as u64;
    }
    if !built.discards.is_empty() {
        let d = &built.discards;
        let tn: Vec<&str> = d.iter().map(|_| t.table.as_str()).collect();
        let cn: Vec<&str> = d.iter().map(|x| x.column.as_str()).collect();
        let cv: Vec<&str> = d.iter().map(|x| x.value.as_str()).collect();
        let rs: Vec<&str> = d.iter().map(|x| x.reason.as_str()).collect();
        let ri: Vec<&str> = d.iter().map(|x| x.row_id.as_str()).collect();
        let ra: Vec<Option<DateTime<Utc>>> = d.iter().map(|x| x.received_at).collect();
        let ut: Vec<DateTime<Utc>> = d.iter().map(|_| now).collect();
        tx.execute(
                &format!(
                    "INSERT INTO {}.{} (table_name, column_name, column_value, reason, row_id, received_at, uuid_ts) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[])",
                    quote(&t.schema),
                    quote(DISCARDS_TABLE)
                ),
                &[&tn, &cn, &cv, &rs, &ri, &ra, &ut],
            )
            .await?;
        stats.discards = d.len() as u64;
    }
    tx.execute(
            &format!(
                "INSERT INTO {loads} (keel_instance, destination_id, table_name, position, loaded_at) \
                 VALUES ($1, $2, $3, $4, now()) ON CONFLICT (keel_instance, destination_id, table_name) \
                 DO UPDATE SET position = greatest({loads}.position, excluded.position), loaded_at = now()"
            ),
            &[&batch.instance, &batch.destination, &t.table, &batch.last_job_id],
        )
        .await?;
    tx.commit().await?;
    Ok(stats)
}

/// `users` rows of one batch merged per user, later non-null values winning (one upsert
/// statement cannot touch a row twice).
pub(crate) fn merge_by_id(rows: &[&Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for r in rows {
        match index.get(r.id.as_str()) {
            Some(&i) => {
                let merged = &mut out[i];
                for (c, v) in &r.values {
                    match merged.values.iter_mut().find(|(mc, _)| mc == c) {
                        Some(slot) => slot.1 = v.clone(),
                        None => merged.values.push((c.clone(), v.clone())),
                    }
                }
                merged.collisions.extend(r.collisions.iter().cloned());
            }
            None => {
                index.insert(r.id.as_str(), out.len());
                out.push((*r).clone());
            }
        }
    }
    out
}

/// A typed column array for `unnest`.
enum Values {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Text(Vec<Option<String>>),
    Json(Vec<Option<Value>>),
}

impl Values {
    fn for_type(ty: &ColType, n: usize) -> Self {
        match ty {
            ColType::BigInt => Values::Int(vec![None; n]),
            ColType::Double => Values::Float(vec![None; n]),
            ColType::Boolean => Values::Bool(vec![None; n]),
            ColType::Timestamp => Values::Time(vec![None; n]),
            ColType::Text | ColType::Other(_) => Values::Text(vec![None; n]),
            ColType::Jsonb => Values::Json(vec![None; n]),
        }
    }

    fn set(&mut self, i: usize, cell: Cell) {
        match (self, cell) {
            (Values::Int(v), Cell::Int(x)) => v[i] = Some(x),
            (Values::Float(v), Cell::Float(x)) => v[i] = Some(x),
            (Values::Bool(v), Cell::Bool(x)) => v[i] = Some(x),
            (Values::Time(v), Cell::Time(x)) => v[i] = Some(x),
            (Values::Text(v), Cell::Text(x)) => v[i] = Some(x),
            (Values::Json(v), Cell::Json(x)) => v[i] = Some(x),
            // `coerce` returns the cell kind of the column type, so nothing else occurs.
            _ => {}
        }
    }

    fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Values::Int(v) => v,
            Values::Float(v) => v,
            Values::Bool(v) => v,
            Values::Time(v) => v,
            Values::Text(v) => v,
            Values::Json(v) => v,
        }
    }
}

struct Column {
    name: String,
    ty: ColType,
    values: Values,
}

impl Column {
    fn array_type(&self) -> &'static str {
        match self.values {
            Values::Int(_) => "int8",
            Values::Float(_) => "float8",
            Values::Bool(_) => "bool",
            Values::Time(_) => "timestamptz",
            Values::Text(_) => "text",
            Values::Json(_) => "jsonb",
        }
    }
}

struct Discard {
    column: String,
    value: String,
    reason: String,
    row_id: String,
    received_at: Option<DateTime<Utc>>,
}

struct Built {
    columns: Vec<Column>,
    discards: Vec<Discard>,
}

/// Column arrays for `rows` against the table's `cols`; values that do not fit, and
/// columns the table could not get, become discards.
fn build_columns(
    rows: &[Row],
    cols: &Columns,
    kind: TableKind,
    now: DateTime<Utc>,
    max_columns: usize,
) -> Built {
    let n = rows.len();
    let mut columns: Vec<Column> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut discards = Vec::new();
    let add = |name: &str, columns: &mut Vec<Column>, index: &mut HashMap<String, usize>| {
        if let Some(&i) = index.get(name) {
            return Some(i);
        }
        let ty = cols.get(name)?.clone();
        index.insert(name.to_owned(), columns.len());
        columns.push(Column {
            name: name.to_owned(),
            values: Values::for_type(&ty, n),
            ty,
        });
        Some(columns.len() - 1)
    };
    let id_col = add("id", &mut columns, &mut index);
    let ts_col = if kind.system_columns().iter().any(|(c, _)| *c == "uuid_ts") {
        add("uuid_ts", &mut columns, &mut index)
    } else {
        None
    };
    for (i, row) in rows.iter().enumerate() {
        if let Some(c) = id_col {
            columns[c].values.set(i, Cell::Text(row.id.clone()));
        }
        if let Some(c) = ts_col {
            columns[c].values.set(i, Cell::Time(now));
        }
        let received_at = row
            .values
            .iter()
            .find(|(c, _)| c == "received_at")
            .and_then(|(_, v)| v.as_str())
            .and_then(parse_timestamp);
        let mut discard = |column: &str, value: &Value, reason: String| {
            discards.push(Discard {
                column: column.to_owned(),
                value: match value {
                    Value::String(s) => s.replace('\0', ""),
                    other => other.to_string().replace("\\u0000", ""),
                },
                reason,
                row_id: row.id.clone(),
                received_at,
            });
        };
        for (name, value) in &row.values {
            let Some(c) = add(name, &mut columns, &mut index) else {
                discard(
                    name,
                    value,
                    format!("table has reached the limit of {max_columns} columns"),
                );
                continue;
            };
            match coerce(value, &columns[c].ty) {
                Ok(cell) => columns[c].values.set(i, cell),
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
    }
    Built { columns, discards }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(id: &str, values: Vec<(&str, Value)>) -> Row {
        Row {
            table: "t".into(),
            kind: TableKind::Users,
            id: id.into(),
            values: values.into_iter().map(|(c, v)| (c.to_owned(), v)).collect(),
            collisions: vec![],
        }
    }

    #[test]
    fn users_merge_keeps_latest_values() {
        let a = row("u1", vec![("plan", json!("free")), ("email", json!("a@b"))]);
        let b = row("u2", vec![("plan", json!("free"))]);
        let c = row("u1", vec![("plan", json!("pro"))]);
        let merged = merge_by_id(&[&a, &b, &c]);
        assert_eq!(merged.len(), 2);
        assert_eq!(
            merged[0].values,
            vec![
                ("plan".into(), json!("pro")),
                ("email".into(), json!("a@b"))
            ]
        );
    }

    #[test]
    fn misfits_become_discards() {
        let cols: Columns = [
            ("id".to_owned(), ColType::Text),
            ("n".to_owned(), ColType::BigInt),
        ]
        .into_iter()
        .collect();
        let rows = vec![
            row("r1", vec![("n", json!(5))]),
            row("r2", vec![("n", json!("five")), ("extra", json!(1))]),
        ];
        let built = build_columns(&rows, &cols, TableKind::Users, Utc::now(), 2);
        assert_eq!(built.columns.len(), 2);
        assert_eq!(built.discards.len(), 2);
        assert_eq!(built.discards[0].column, "n");
        assert_eq!(built.discards[0].value, "five");
        assert!(built.discards[1].reason.contains("limit of 2 columns"));
        match &built.columns[1].values {
            Values::Int(v) => assert_eq!(v, &vec![Some(5), None]),
            _ => panic!("n is bigint"),
        }
    }
}
