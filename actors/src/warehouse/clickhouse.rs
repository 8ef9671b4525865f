//! The `CLICKHOUSE` warehouse: RudderStack's warehouse tables in a ClickHouse database,
//! over ClickHouse's HTTP interface (reqwest; plain statements, `INSERT … FORMAT
//! JSONEachRow`), using only what ClickHouse 18.16 (Debian's package) already has. Tables
//! are `ReplacingMergeTree(uuid_ts) ORDER BY id`: rows with the same id (messageId; the
//! userId in `users`) collapse to the latest at merge time, so a batch loaded twice after a
//! crash leaves one row per event for `SELECT … FINAL`. Schema evolution adds `Nullable`
//! columns (`ALTER TABLE … ADD COLUMN`, types inferred as for Postgres: `Int64`,
//! `Float64`, `UInt8` for booleans, `DateTime('UTC')` (seconds), `String` for text and
//! arrays); misfits go to `keel_discards`. Per-table load positions live in `_keel_loads`
//! in the same database: rows of jobs at or below a table's position are skipped. `users`
//! rows are merged with the stored row before insert (the latest non-null value of each
//! trait wins, as in Postgres).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::config::batching;
use super::flatten::{Row, TableKind};
use super::loader::{merge_by_id, TableBatch};
use super::schema::{coerce, infer, parse_timestamp, Cell, ColType, DISCARDS_TABLE, LOADS_TABLE};
use super::{JobBatch, LoadStats, Sink, SinkError, UploadSpec, UploaderConfig, WarehouseKind};
use crate::destinations::settings::Settings;
use crate::workspace;

/// Kind name in `destinationDefinition.name`.
pub const KIND: &str = "CLICKHOUSE";

/// A `CLICKHOUSE` destination.
#[derive(Debug, Clone)]
pub struct ClickHouse {
    /// Destination id.
    pub id: String,
    /// `http(s)://host:port/`.
    pub url: String,
    /// Database every source loads into.
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
    /// Request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// How often waiting events are loaded.
    pub upload_interval: Duration,
    /// Events per load at most.
    pub max_batch_rows: i64,
}

impl ClickHouse {
    /// Reads the destination's settings, which the CLICKHOUSE schema accepted (the
    /// database name included: letters, digits and `_`, at most 63).
    pub fn new(dest: &workspace::Destination, http: &crate::destinations::HttpConfig) -> Self {
        let c = Settings::new(dest);
        let scheme = if c.flag("secure").unwrap_or(false) {
            "https"
        } else {
            "http"
        };
        let port = c.whole("port").unwrap_or(8123);
        let (upload_interval, max_batch_rows) = batching(&c, 30.0);
        Self {
            id: dest.id.clone(),
            url: format!("{scheme}://{}:{port}/", c.required("host")),
            database: c.required("database"),
            user: c.string("user").unwrap_or_else(|| "default".into()),
            password: c.string("password").unwrap_or_default(),
            timeout: http.timeout,
            connect_timeout: http.connect_timeout,
            upload_interval,
            max_batch_rows,
        }
    }
}

crate::stored_event_mapping!(ClickHouse, |_k| KIND);

impl WarehouseKind for ClickHouse {
    fn spec(&self) -> UploadSpec {
        UploadSpec::warehouse(&self.id, self.upload_interval, self.max_batch_rows)
    }

    fn sink(&self, _sources: &HashMap<String, String>, config: &UploaderConfig) -> Box<dyn Sink> {
        Box::new(ClickHouseSink {
            ch: self.clone(),
            max_columns: config.max_columns,
            client: None,
            ready: false,
            tables: HashMap::new(),
        })
    }
}

/// Loads batches into ClickHouse (see the module comment).
pub struct ClickHouseSink {
    ch: ClickHouse,
    max_columns: usize,
    client: Option<reqwest::Client>,
    /// Database, `_keel_loads` and `keel_discards` exist.
    ready: bool,
    /// Table → its columns.
    tables: HashMap<String, HashMap<String, ColType>>,
}

/// `name` quoted as a ClickHouse identifier.
fn q(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// `s` as a ClickHouse string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The ClickHouse type of a Keel column type (non-key columns are `Nullable`).
fn ch_type(ty: &ColType) -> &'static str {
    match ty {
        ColType::BigInt => "Int64",
        ColType::Double => "Float64",
        ColType::Boolean => "UInt8",
        ColType::Timestamp => "DateTime('UTC')",
        ColType::Text | ColType::Jsonb | ColType::Other(_) => "String",
    }
}

/// A ClickHouse column type as Keel reads it.
fn from_ch(ty: &str) -> ColType {
    let inner = ty
        .strip_prefix("Nullable(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(ty);
    match inner {
        "Int64" | "Int32" | "Int16" | "Int8" | "UInt32" | "UInt16" => ColType::BigInt,
        "Float64" | "Float32" => ColType::Double,
        "UInt8" => ColType::Boolean,
        "String" => ColType::Text,
        t if t.starts_with("DateTime") => ColType::Timestamp,
        other => ColType::Other(other.to_owned()),
    }
}

fn ch_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A cell as a JSONEachRow value.
fn json_cell(cell: Cell) -> Value {
    match cell {
        Cell::Int(x) => Value::from(x),
        Cell::Float(x) => Value::from(x),
        Cell::Bool(x) => Value::from(u8::from(x)),
        Cell::Time(t) => Value::String(ch_time(t)),
        Cell::Text(s) => Value::String(s),
        Cell::Json(v) => Value::String(v.to_string()),
    }
}

/// A stored value read back (JSONEachRow, 64-bit integers unquoted) as the event value it
/// came from, so it merges and coerces like a new one.
fn from_stored(v: &Value, ty: &ColType) -> Value {
    match (ty, v) {
        (ColType::Boolean, Value::Number(n)) => Value::Bool(n.as_u64() == Some(1)),
        (ColType::Timestamp, Value::String(s)) => {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
                .map(|t| {
                    Value::String(
                        t.and_utc()
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    )
                })
                .unwrap_or(Value::Null)
        }
        _ => v.clone(),
    }
}

impl ClickHouseSink {
    fn client(&mut self) -> Result<reqwest::Client, SinkError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = reqwest::Client::builder()
            .timeout(self.ch.timeout)
            .connect_timeout(self.ch.connect_timeout)
            .build()
            .map_err(|e| SinkError::ClickHouse(e.to_string()))?;
        self.client = Some(c.clone());
        Ok(c)
    }

    /// Runs `query` with `body` (the statement itself when `query` is empty); answers the
    /// response text or ClickHouse's error.
    async fn run(&mut self, query: &str, body: String) -> Result<String, SinkError> {
        let client = self.client()?;
        let mut params = vec![("output_format_json_quote_64bit_integers", "0")];
        if !query.is_empty() {
            params.push(("query", query));
        }
        let resp = client
            .post(&self.ch.url)
            .query(&params)
            .basic_auth(&self.ch.user, Some(&self.ch.password))
            .body(body)
            .send()
            .await
            .map_err(|e| SinkError::ClickHouse(format!("{}: {e}", self.ch.url)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| SinkError::ClickHouse(e.to_string()))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(SinkError::ClickHouse(format!(
                "HTTP {status}: {}",
                text.trim()
            )))
        }
    }

    async fn rows(&mut self, sql: String) -> Result<Vec<Map<String, Value>>, SinkError> {
        let text = self.run("", format!("{sql} FORMAT JSONEachRow")).await?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| SinkError::ClickHouse(format!("bad answer {l:?}: {e}")))
            })
            .collect()
    }

    async fn ensure_database(&mut self) -> Result<(), SinkError> {
        if self.ready {
            return Ok(());
        }
        let db = q(&self.ch.database);
        self.run("", format!("CREATE DATABASE IF NOT EXISTS {db}"))
            .await?;
        self.run(
            "",
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.{} (keel_instance String, destination_id String, \
                 table_name String, position Int64, loaded_at DateTime('UTC')) \
                 ENGINE = ReplacingMergeTree(position) ORDER BY (keel_instance, destination_id, table_name)",
                q(LOADS_TABLE)
            ),
        )
        .await?;
        self.run(
            "",
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.{} (table_name String, column_name String, \
                 column_value String, reason String, row_id String, \
                 received_at Nullable(DateTime('UTC')), uuid_ts DateTime('UTC')) \
                 ENGINE = ReplacingMergeTree(uuid_ts) ORDER BY (table_name, row_id, column_name)",
                q(DISCARDS_TABLE)
            ),
        )
        .await?;
        self.ready = true;
        Ok(())
    }

    async fn read_columns(&mut self, table: &str) -> Result<HashMap<String, ColType>, SinkError> {
        let rows = self
            .rows(format!(
                "SELECT name, type FROM system.columns WHERE database = {} AND table = {}",
                lit(&self.ch.database),
                lit(table)
            ))
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.get("name")?.as_str()?.to_owned(),
                    from_ch(r.get("type")?.as_str()?),
                ))
            })
            .collect())
    }

    /// The table with every column `rows` need; answers its columns and how many were added.
    async fn ensure_columns(
        &mut self,
        table: &str,
        kind: TableKind,
        rows: &[&Row],
    ) -> Result<(HashMap<String, ColType>, u64), SinkError> {
        let target = format!("{}.{}", q(&self.ch.database), q(table));
        if !self.tables.contains_key(table) {
            let mut cols = self.read_columns(table).await?;
            if cols.is_empty() {
                let defs: Vec<String> = kind
                    .system_columns()
                    .iter()
                    .map(|(c, ty)| {
                        if *c == "id" {
                            "`id` String".to_owned()
                        } else if *c == "uuid_ts" {
                            "`uuid_ts` DateTime('UTC')".to_owned()
                        } else {
                            format!("{} Nullable({})", q(c), ch_type(ty))
                        }
                    })
                    .collect();
                self.run(
                    "",
                    format!(
                        "CREATE TABLE IF NOT EXISTS {target} ({}) ENGINE = ReplacingMergeTree(uuid_ts) ORDER BY id",
                        defs.join(", ")
                    ),
                )
                .await?;
                cols = self.read_columns(table).await?;
            }
            self.tables.insert(table.to_owned(), cols);
        }
        let known = self.tables.get(table).cloned().unwrap_or_default();
        let mut new: Vec<(String, ColType)> = Vec::new();
        for row in rows {
            for (c, v) in &row.values {
                if known.contains_key(c) || new.iter().any(|(n, _)| n == c) {
                    continue;
                }
                if known.len() + new.len() >= self.max_columns {
                    continue;
                }
                if let Some(ty) = infer(v) {
                    new.push((c.clone(), ty));
                }
            }
        }
        if new.is_empty() {
            return Ok((known, 0));
        }
        for (c, ty) in &new {
            // One column per statement: 18.16 has no `ADD COLUMN IF NOT EXISTS`, and one
            // another writer added first (code 44) must not fail the rest.
            let r = self
                .run(
                    "",
                    format!(
                        "ALTER TABLE {target} ADD COLUMN {} Nullable({})",
                        q(c),
                        ch_type(ty)
                    ),
                )
                .await;
            if let Err(SinkError::ClickHouse(e)) = &r {
                if e.contains("Code: 44") || e.contains("already exists") {
                    continue;
                }
            }
            r?;
        }
        // Read back: a column someone else added first keeps its type.
        let cols = self.read_columns(table).await?;
        self.tables.insert(table.to_owned(), cols.clone());
        Ok((cols, new.len() as u64))
    }

    /// Stored `users` rows of `ids`, as rows to merge under the new ones.
    async fn stored_users(
        &mut self,
        ids: &[&str],
        cols: &HashMap<String, ColType>,
    ) -> Result<HashMap<String, (Row, Option<DateTime<Utc>>)>, SinkError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let list: Vec<String> = ids.iter().map(|i| lit(i)).collect();
        let rows = self
            .rows(format!(
                "SELECT * FROM {}.{} FINAL WHERE id IN ({})",
                q(&self.ch.database),
                q("users"),
                list.join(", ")
            ))
            .await?;
        let mut out = HashMap::new();
        for r in rows {
            let Some(id) = r.get("id").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let mut row = Row {
                table: "users".into(),
                kind: TableKind::Users,
                id: id.clone(),
                values: Vec::new(),
                collisions: Vec::new(),
            };
            let version = r
                .get("uuid_ts")
                .and_then(Value::as_str)
                .and_then(|s| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok())
                .map(|t| t.and_utc());
            for (c, v) in &r {
                if c == "id" || c == "uuid_ts" || v.is_null() {
                    continue;
                }
                let ty = cols.get(c).cloned().unwrap_or(ColType::Text);
                let v = from_stored(v, &ty);
                if !v.is_null() {
                    row.values.push((c.clone(), v));
                }
            }
            out.insert(id, (row, version));
        }
        Ok(out)
    }

    async fn positions(&mut self, batch: &JobBatch) -> Result<HashMap<String, i64>, SinkError> {
        let rows = self
            .rows(format!(
                "SELECT table_name, max(position) AS position FROM {}.{} \
                 WHERE keel_instance = {} AND destination_id = {} GROUP BY table_name",
                q(&self.ch.database),
                q(LOADS_TABLE),
                lit(&batch.instance.to_string()),
                lit(&batch.destination)
            ))
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.get("table_name")?.as_str()?.to_owned(),
                    r.get("position")?.as_i64()?,
                ))
            })
            .collect())
    }

    async fn insert(&mut self, table: &str, lines: Vec<String>) -> Result<(), SinkError> {
        if lines.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {}.{} FORMAT JSONEachRow",
            q(&self.ch.database),
            q(table)
        );
        let mut body = lines.join("\n");
        body.push('\n');
        self.run(&sql, body).await.map(|_| ())
    }

    async fn load_table(
        &mut self,
        batch: &JobBatch,
        t: &TableBatch,
        position: i64,
        now: DateTime<Utc>,
    ) -> Result<LoadStats, SinkError> {
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
        let (cols, added) = self.ensure_columns(&t.table, t.kind, &fresh).await?;
        stats.columns_added = added;
        let mut rows: Vec<Row> = if t.kind.upserts() {
            merge_by_id(&fresh)
        } else {
            fresh.into_iter().cloned().collect()
        };
        // A merged `users` row must outrank the stored one: `uuid_ts` is the
        // ReplacingMergeTree version and has whole seconds, so a second load within the
        // same second gets the stored version plus one second (equal versions would leave
        // FINAL free to keep either row).
        let mut versions: HashMap<String, DateTime<Utc>> = HashMap::new();
        if t.kind.upserts() {
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let mut stored = self.stored_users(&ids, &cols).await?;
            for r in &mut rows {
                if let Some((mut base, version)) = stored.remove(&r.id) {
                    if let Some(v) = version {
                        versions.insert(r.id.clone(), (v + chrono::Duration::seconds(1)).max(now));
                    }
                    for (c, v) in r.values.drain(..) {
                        match base.values.iter_mut().find(|(bc, _)| *bc == c) {
                            Some(slot) => slot.1 = v,
                            None => base.values.push((c, v)),
                        }
                    }
                    r.values = base.values;
                }
            }
        }
        let mut lines = Vec::with_capacity(rows.len());
        let mut discards = Vec::new();
        for row in &rows {
            let mut obj = Map::new();
            obj.insert("id".into(), Value::String(row.id.clone()));
            let version = versions.get(&row.id).copied().unwrap_or(now);
            obj.insert("uuid_ts".into(), Value::String(ch_time(version)));
            let received_at = row
                .values
                .iter()
                .find(|(c, _)| c == "received_at")
                .and_then(|(_, v)| v.as_str())
                .and_then(parse_timestamp);
            let mut discard = |column: &str, value: &Value, reason: String| {
                let mut d = Map::new();
                d.insert("table_name".into(), Value::String(t.table.clone()));
                d.insert("column_name".into(), Value::String(column.to_owned()));
                d.insert(
                    "column_value".into(),
                    Value::String(match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }),
                );
                d.insert("reason".into(), Value::String(reason));
                d.insert("row_id".into(), Value::String(row.id.clone()));
                d.insert(
                    "received_at".into(),
                    received_at.map_or(Value::Null, |t| Value::String(ch_time(t))),
                );
                d.insert("uuid_ts".into(), Value::String(ch_time(now)));
                discards.push(Value::Object(d).to_string());
            };
            for (name, value) in &row.values {
                let Some(ty) = cols.get(name) else {
                    discard(
                        name,
                        value,
                        format!(
                            "table has reached the limit of {} columns",
                            self.max_columns
                        ),
                    );
                    continue;
                };
                match coerce(value, ty) {
                    Ok(cell) => {
                        obj.insert(name.clone(), json_cell(cell));
                    }
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
            lines.push(Value::Object(obj).to_string());
        }
        stats.rows = lines.len() as u64;
        stats.discards = discards.len() as u64;
        self.insert(&t.table, lines).await?;
        self.insert(DISCARDS_TABLE, discards).await?;
        let mut cp = Map::new();
        cp.insert(
            "keel_instance".into(),
            Value::String(batch.instance.to_string()),
        );
        cp.insert(
            "destination_id".into(),
            Value::String(batch.destination.clone()),
        );
        cp.insert("table_name".into(), Value::String(t.table.clone()));
        cp.insert("position".into(), Value::from(batch.last_id));
        cp.insert("loaded_at".into(), Value::String(ch_time(now)));
        self.insert(LOADS_TABLE, vec![Value::Object(cp).to_string()])
            .await?;
        Ok(stats)
    }
}

impl Sink for ClickHouseSink {
    fn load<'a>(&'a mut self, batch: &'a JobBatch) -> BoxFuture<'a, Result<LoadStats, SinkError>> {
        Box::pin(async move {
            self.ensure_database().await?;
            let db = self.ch.database.clone();
            let tables = super::loader::group_jobs(&batch.jobs, |_| db.clone());
            let positions = self.positions(batch).await?;
            let now = Utc::now();
            let mut stats = LoadStats::default();
            let by_name: BTreeMap<&str, &TableBatch> =
                tables.iter().map(|t| (t.table.as_str(), t)).collect();
            for (name, t) in by_name {
                let position = positions.get(name).copied().unwrap_or(0);
                let s = self.load_table(batch, t, position, now).await?;
                stats.rows += s.rows;
                stats.skipped += s.skipped;
                stats.discards += s.discards;
                stats.columns_added += s.columns_added;
            }
            Ok(stats)
        })
    }

    fn reset(&mut self) {
        self.client = None;
        self.ready = false;
        self.tables.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_round_trip_and_stored_values_read_back() {
        for ty in [
            ColType::BigInt,
            ColType::Double,
            ColType::Boolean,
            ColType::Timestamp,
            ColType::Text,
        ] {
            assert_eq!(from_ch(&format!("Nullable({})", ch_type(&ty))), ty);
        }
        assert_eq!(from_stored(&json!(1), &ColType::Boolean), json!(true));
        assert_eq!(
            from_stored(&json!("2026-01-02 03:04:05"), &ColType::Timestamp),
            json!("2026-01-02T03:04:05.000Z")
        );
        assert_eq!(q("a`b"), "`a\\`b`");
        assert_eq!(lit("it's"), "'it\\'s'");
    }
}
