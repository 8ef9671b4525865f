//! Raw backup: every stored request (`gw_jobs` row), as stored, also written to object
//! storage, off the ack path. One line per request: `{"id", "sourceId", "receivedAt",
//! "partition", "events": [...]}`, the events spliced in as stored, byte for byte.
//!
//! With `[backup]` enabled the processor, which holds each request's stored text anyway,
//! builds the lines of the requests it consumed, gzips them per hour ([`pack`]) and inserts
//! these packs into `backup_jobs` in the same commit that deletes the requests from
//! `gw_jobs`, so a payload crosses Postgres once more as a small gzip member rather than
//! as a copy of the request. The backup writer (a
//! [`WarehouseUploader`](crate::warehouse::WarehouseUploader) with the [`BackupSink`])
//! concatenates the packs of a batch per hour, in id order, into one object:
//! `<prefix>/<yyyy>/<mm>/<dd>/<hh>/<first_id>-<last_id>.json.gz` (a gzip file of several
//! members, which gzip readers read as one stream). Rows are deleted only after the store
//! confirmed the object; a store outage leaves them waiting (a backlog gauge and a failure
//! counter say so) and never slows ingest.
//!
//! Also here: where a backup lives ([`location`]: `s3://bucket/prefix`, `gs://…`,
//! `az://container/prefix`, `file:///path`) and how `keel replay` reads one back
//! ([`list_objects`], [`read_object`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use futures::future::BoxFuture;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use serde_json::value::RawValue;

use crate::store::{BackupPack, GwJob, JobQueue, QueuedJob};
use crate::warehouse::objects::{gzip_lines, hour_path, put_object, Provider, StoreConfig};
use crate::warehouse::{JobBatch, LoadStats, Sink, SinkError, UploadMetrics, UploadSpec};

/// Registry key of the backup writer among the uploaders (never a destination id: it is
/// not in the workspace, and reloads leave it alone).
pub const BACKUP_ID: &str = "keel:backup";

/// A backup location that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {problem}")]
pub struct LocationError {
    /// The URL as given.
    pub url: String,
    /// What is wrong.
    pub problem: String,
}

/// Extra settings of a backup location (the TOML keys of `[backup]`; empty = from the
/// environment: `AWS_*`, `GOOGLE_*`, `AZURE_*`).
#[derive(Debug, Clone, Default)]
pub struct LocationOptions {
    /// S3-compatible endpoint URL (path-style requests).
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// S3 access key id / Azure account.
    pub access_key_id: Option<String>,
    /// S3 secret / Azure account key.
    pub secret_access_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

/// Store settings for a backup URL.
pub fn location(url: &str, options: &LocationOptions) -> Result<StoreConfig, LocationError> {
    let bad = |problem: &str| LocationError {
        url: url.to_owned(),
        problem: problem.to_owned(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("not a URL: use s3://bucket/prefix, gs://, az:// or file:///path"))?;
    let provider = match scheme {
        "s3" | "s3a" => Provider::S3,
        "gs" | "gcs" => Provider::Gcs,
        "az" | "azure" | "abfs" => Provider::Azure,
        "file" => Provider::Local,
        other => return Err(bad(&format!("unknown scheme {other:?} (s3, gs, az, file)"))),
    };
    let (bucket, prefix) = if provider == Provider::Local {
        if !rest.starts_with('/') {
            return Err(bad("file URLs need an absolute path: file:///var/backup"));
        }
        (rest.trim_end_matches('/').to_owned(), String::new())
    } else {
        let (b, p) = rest.split_once('/').unwrap_or((rest, ""));
        if b.is_empty() {
            return Err(bad("no bucket"));
        }
        (b.to_owned(), p.trim_matches('/').to_owned())
    };
    Ok(StoreConfig {
        provider,
        bucket,
        prefix,
        region: options.region.clone(),
        endpoint: options.endpoint.clone(),
        access_key_id: options.access_key_id.clone(),
        secret_access_key: options.secret_access_key.clone(),
        credentials: None,
        sas_token: None,
        timeout: options.timeout,
        connect_timeout: options.connect_timeout,
    })
}

/// The raw backup's settings (from `[backup]`).
#[derive(Debug, Clone)]
pub struct Backup {
    /// Where objects go.
    pub store: StoreConfig,
    /// How often waiting requests are uploaded.
    pub upload_interval: Duration,
    /// Events per object batch at most.
    pub max_batch_events: i64,
}

impl Backup {
    /// How the backup writer batches.
    pub fn spec(&self) -> UploadSpec {
        UploadSpec {
            id: BACKUP_ID.to_owned(),
            queue: JobQueue::Backup,
            upload_interval: self.upload_interval,
            max_batch_rows: self.max_batch_events,
            metrics: UploadMetrics::Backup,
        }
    }

    /// A fresh sink.
    pub fn sink(&self) -> Box<dyn Sink> {
        Box::new(BackupSink {
            settings: self.store.clone(),
            store: None,
        })
    }
}

/// Writes batches of stored requests (see the module comment).
pub struct BackupSink {
    settings: StoreConfig,
    store: Option<Arc<dyn ObjectStore>>,
}

/// One backed-up request, as a backup line holds it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BackupRecord {
    /// Its `gw_jobs` id (per-user order is id order).
    pub id: i64,
    /// Source id.
    #[serde(rename = "sourceId")]
    pub source_id: String,
    /// When the gateway received it.
    #[serde(rename = "receivedAt")]
    pub received_at: DateTime<Utc>,
    /// Partition of its events.
    pub partition: i32,
    /// The normalised events, as stored.
    pub events: Vec<Box<RawValue>>,
}

/// One backup line of a stored request (see the module comment).
pub fn line(
    id: i64,
    source_id: &str,
    received_at: DateTime<Utc>,
    partition: i32,
    events: &str,
) -> String {
    format!(
        "{{\"id\":{id},\"sourceId\":{},\"receivedAt\":\"{}\",\"partition\":{partition},\"events\":{events}}}",
        serde_json::Value::String(source_id.to_owned()),
        received_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

/// gzip level of backup lines: the fastest, since the backup shares the cores with ingest
/// (level 6 cost 0.78 of ingest's rate with the backup on, level 1 0.81–0.89, when the
/// writer still compressed requests it had read back from Postgres).
const LEVEL: flate2::Compression = flate2::Compression::fast();

/// The backup packs of requests consumed together: their lines, gzipped per hour of
/// `receivedAt` (one pack per hour, lines in the requests' order).
pub fn pack(requests: &[GwJob]) -> Result<Vec<BackupPack>, SinkError> {
    let mut hours: std::collections::BTreeMap<i64, Vec<&GwJob>> = Default::default();
    for r in requests {
        hours
            .entry(r.received_at.timestamp().div_euclid(3600))
            .or_default()
            .push(r);
    }
    hours
        .into_values()
        .map(|group| {
            let (mut id, mut at, mut events) = (i64::MAX, group[0].received_at, 0i32);
            for r in &group {
                id = id.min(r.id);
                at = at.min(r.received_at);
                events = events.saturating_add(r.event_count);
            }
            let lines = group
                .iter()
                .map(|r| line(r.id, &r.source_id, r.received_at, r.partition, &r.payload));
            Ok(BackupPack {
                id,
                received_at: at,
                event_count: events,
                lines_gz: gzip_lines(lines, LEVEL)?,
            })
        })
        .collect()
}

/// Appends one job's part of a backup object to `object`: a pack as the processor gzipped
/// it, or, for a row written before packs, its line gzipped now.
fn append_member(object: &mut Vec<u8>, j: &QueuedJob) -> Result<(), SinkError> {
    match &j.lines_gz {
        Some(gz) => object.extend_from_slice(gz),
        None => object.extend(gzip_lines(
            [line(j.id, &j.source_id, j.at, j.partition, &j.payload)],
            LEVEL,
        )?),
    }
    Ok(())
}

impl Sink for BackupSink {
    fn load<'a>(&'a mut self, batch: &'a JobBatch) -> BoxFuture<'a, Result<LoadStats, SinkError>> {
        Box::pin(async move {
            let store = match &self.store {
                Some(s) => s.clone(),
                None => {
                    let s = self.settings.open()?;
                    self.store = Some(s.clone());
                    s
                }
            };
            // Per hour, the batch's members in id order, concatenated.
            let mut hours: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
            for j in &batch.jobs {
                append_member(hours.entry(hour_path(j.at)).or_default(), j)?;
            }
            let mut stats = LoadStats {
                rows: batch.jobs.len() as u64,
                ..LoadStats::default()
            };
            let uploads = hours.into_iter().map(|(hour, bytes)| {
                let store = store.clone();
                let path = self.settings.path(&format!(
                    "{hour}/{}-{}.json.gz",
                    batch.first_id, batch.last_id
                ));
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
    }
}

/// One backup object: its path, the hour it holds and its id range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupObject {
    /// Object path.
    pub path: Path,
    /// Start of its hour.
    pub hour: DateTime<Utc>,
    /// First request id of its batch.
    pub first_id: i64,
    /// Last request id of its batch.
    pub last_id: i64,
    /// Size in bytes.
    pub size: u64,
}

/// Parses `…/<yyyy>/<mm>/<dd>/<hh>/<first>-<last>.json.gz` (the tail of a backup key).
pub fn parse_key(path: &Path) -> Option<(DateTime<Utc>, i64, i64)> {
    let parts: Vec<&str> = path.as_ref().rsplit('/').take(5).collect();
    if parts.len() < 5 {
        return None;
    }
    let (file, hh, dd, mm, yyyy) = (parts[0], parts[1], parts[2], parts[3], parts[4]);
    let (a, b) = file.strip_suffix(".json.gz")?.split_once('-')?;
    let date = NaiveDate::from_ymd_opt(yyyy.parse().ok()?, mm.parse().ok()?, dd.parse().ok()?)?;
    let hour = Utc.from_utc_datetime(&date.and_hms_opt(hh.parse().ok()?, 0, 0)?);
    Some((hour, a.parse().ok()?, b.parse().ok()?))
}

/// Every backup object under the location's prefix whose hour overlaps `[since, until)`,
/// in (hour, first id) order.
pub async fn list_objects(
    store: &dyn ObjectStore,
    settings: &StoreConfig,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<BackupObject>, object_store::Error> {
    let prefix = (!settings.prefix.is_empty()).then(|| Path::from(settings.prefix.as_str()));
    let metas: Vec<object_store::ObjectMeta> = store.list(prefix.as_ref()).try_collect().await?;
    let mut out: Vec<BackupObject> = metas
        .into_iter()
        .filter_map(|m| {
            let (hour, first_id, last_id) = parse_key(&m.location)?;
            let overlaps = hour + ChronoDuration::hours(1) > since && hour < until;
            overlaps.then_some(BackupObject {
                path: m.location,
                hour,
                first_id,
                last_id,
                size: m.size,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (a.hour, a.first_id, a.path.as_ref()).cmp(&(b.hour, b.first_id, b.path.as_ref()))
    });
    Ok(out)
}

/// Why a backup object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] object_store::Error),
    /// The object is not gzip JSON lines of backup records.
    #[error("{path}: line {line}: {problem}")]
    Format {
        /// Object path.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

/// The records of one backup object, in file order.
pub async fn read_object(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<Vec<BackupRecord>, ReadError> {
    use std::io::Read;
    let bytes = store.get(path).await?.bytes().await?;
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .map_err(|e| ReadError::Format {
            path: path.to_string(),
            line: 0,
            problem: format!("not gzip text: {e}"),
        })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ReadError::Format {
                path: path.to_string(),
                line: i + 1,
                problem: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_keys_parse() {
        let o = LocationOptions::default();
        let s = location("s3://bkt/keel/raw/", &o).expect("s3");
        assert_eq!(
            (s.provider, s.bucket.as_str(), s.prefix.as_str()),
            (Provider::S3, "bkt", "keel/raw")
        );
        let f = location("file:///var/backup", &o).expect("file");
        assert_eq!(
            (f.provider, f.bucket.as_str()),
            (Provider::Local, "/var/backup")
        );
        assert!(location("ftp://x", &o).is_err());
        assert!(location("file://relative", &o).is_err());
        let (hour, a, b) =
            parse_key(&Path::from("keel/raw/2026/03/04/05/17-42.json.gz")).expect("key");
        assert_eq!(hour.to_rfc3339(), "2026-03-04T05:00:00+00:00");
        assert_eq!((a, b), (17, 42));
        assert!(parse_key(&Path::from("x/2026/03/04/05/_keel_schema.json")).is_none());
    }

    fn request(id: i64, at: &str, payload: &str) -> GwJob {
        GwJob {
            id,
            source_id: "src \"1\"".into(),
            payload: payload.into(),
            received_at: at.parse().expect("time"),
            event_count: 1,
            partition: 3,
            duplicates: None,
            only_destinations: None,
        }
    }

    fn gunzip(bytes: &[u8]) -> String {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_string(&mut s)
            .expect("gzip");
        s
    }

    #[test]
    fn packs_hold_each_hours_lines_in_order_and_concatenate_with_older_rows() {
        let packs = pack(&[
            request(7, "2026-03-04T05:59:59.5Z", r#"[{"a":1}]"#),
            request(9, "2026-03-04T06:00:00Z", r#"[{"b":2}]"#),
            request(8, "2026-03-04T05:10:00Z", r#"[{"c":3}]"#),
        ])
        .expect("pack");
        assert_eq!(packs.len(), 2);
        let (five, six) = (&packs[0], &packs[1]);
        assert_eq!((five.id, five.event_count), (7, 2));
        assert_eq!(five.received_at.to_rfc3339(), "2026-03-04T05:10:00+00:00");
        assert_eq!(
            gunzip(&five.lines_gz),
            "{\"id\":7,\"sourceId\":\"src \\\"1\\\"\",\"receivedAt\":\"2026-03-04T05:59:59.500000Z\",\"partition\":3,\"events\":[{\"a\":1}]}\n\
             {\"id\":8,\"sourceId\":\"src \\\"1\\\"\",\"receivedAt\":\"2026-03-04T05:10:00.000000Z\",\"partition\":3,\"events\":[{\"c\":3}]}\n"
        );
        assert_eq!(six.id, 9);
        // A pack and a row written before packs (its line built by the writer) make one
        // object that reads as one stream of records.
        let older = QueuedJob {
            id: 5,
            source_id: "s".into(),
            event_count: 1,
            payload: r#"[{"d":4}]"#.into(),
            lines_gz: None,
            at: "2026-03-04T05:00:00Z".parse().expect("time"),
            partition: 0,
        };
        let mut object = Vec::new();
        append_member(&mut object, &older).expect("member");
        object.extend_from_slice(&five.lines_gz);
        let records: Vec<BackupRecord> = gunzip(&object)
            .lines()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect();
        let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        assert_eq!(ids, [5, 7, 8]);
        assert_eq!(records[0].events[0].get(), r#"{"d":4}"#);
    }
}
