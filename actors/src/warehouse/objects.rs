//! Object-storage destinations (`S3`, `MINIO`, `GCS`, `AZURE_BLOB`): their settings under
//! RudderStack's key names, the store they describe (the `object_store` crate: one API for
//! S3 and S3-compatible servers, Google Cloud Storage and Azure Blob Storage), the one way
//! Keel writes an object ([`put_object`]: a single PUT, or a multipart upload aborted on any
//! failure, so an object is complete or absent), and the [`JsonlSink`]: a batch's events as
//! gzip JSON lines, one object per source and hour under
//! `<prefix>/<source id>/<yyyy>/<mm>/<dd>/<hh>/<first>-<last>.json.gz`, where
//! `<first>-<last>` is the batch's recorded `wh_jobs` range, so a retried upload overwrites
//! its object instead of adding a second one.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use serde_json::value::RawValue;

use super::config::batching;
use super::{JobBatch, LoadStats, Sink, SinkError, UploadSpec, UploaderConfig, WarehouseKind};
use crate::destinations::settings::Settings;
use crate::destinations::ConfigError;
use crate::workspace;

/// Kind names served by [`ObjectStorage`].
pub const KINDS: &[&str] = &["S3", "MINIO", "GCS", "AZURE_BLOB"];

/// Objects up to this size are written with one PUT; larger ones in parts of this size.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Which service a store talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// Amazon S3 or an S3-compatible server (MinIO, Ceph, moto…).
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
    /// A local folder (`file://`; the raw backup and `keel replay`).
    Local,
}

/// Where objects go: a bucket (container, folder) and a key prefix, with credentials.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Service.
    pub provider: Provider,
    /// Bucket (S3, GCS), container (Azure) or folder (local).
    pub bucket: String,
    /// Key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// S3 region.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server (or an Azure emulator); path-style requests.
    pub endpoint: Option<String>,
    /// S3 access key id / Azure account name.
    pub access_key_id: Option<String>,
    /// S3 secret access key / Azure account key.
    pub secret_access_key: Option<String>,
    /// GCS service-account key (JSON text).
    pub credentials: Option<String>,
    /// Azure SAS token (query string).
    pub sas_token: Option<String>,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl StoreConfig {
    /// Opens the store (no request is made).
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let options = ClientOptions::new()
            .with_timeout(self.timeout)
            .with_connect_timeout(self.connect_timeout)
            .with_allow_http(true);
        // The uploader retries failed batches with its own backoff: the client gives up
        // quickly so an outage shows as a failure (and a metric) rather than a hang.
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(15),
            ..RetryConfig::default()
        };
        Ok(match self.provider {
            Provider::S3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&self.bucket)
                    .with_client_options(options)
                    .with_retry(retry)
                    .with_region(self.region.clone().unwrap_or_else(|| "us-east-1".into()));
                if let Some(e) = &self.endpoint {
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                if let (Some(k), Some(s)) = (&self.access_key_id, &self.secret_access_key) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                Arc::new(b.build()?)
            }
            Provider::Gcs => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&self.bucket)
                    .with_client_options(options)
                    .with_retry(retry);
                if let Some(c) = &self.credentials {
                    b = b.with_service_account_key(c);
                }
                Arc::new(b.build()?)
            }
            Provider::Azure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(&self.bucket)
                    .with_client_options(options)
                    .with_retry(retry);
                if let Some(a) = &self.access_key_id {
                    b = b.with_account(a);
                }
                if let Some(k) = &self.secret_access_key {
                    b = b.with_access_key(k);
                }
                if let Some(s) = &self.sas_token {
                    let pairs: Vec<(String, String)> = form_pairs(s.trim_start_matches('?'));
                    b = b.with_sas_authorization(pairs);
                }
                if let Some(e) = &self.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                Arc::new(b.build()?)
            }
            Provider::Local => {
                std::fs::create_dir_all(&self.bucket).map_err(|e| {
                    object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    }
                })?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
                    &self.bucket,
                )?)
            }
        })
    }

    /// `<prefix>/<rest>` as an object path.
    pub fn path(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }
}

fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

/// Writes `bytes` to `path`: one PUT up to [`PART_SIZE`], else a multipart upload in
/// [`PART_SIZE`] parts that is aborted on any failure. Either way the object is complete or
/// absent; writing the same path again replaces it.
pub async fn put_object(
    store: &dyn ObjectStore,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<(), object_store::Error> {
    if bytes.len() <= PART_SIZE {
        store.put(path, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let mut upload = store.put_multipart(path).await?;
    let bytes = bytes::Bytes::from(bytes);
    let mut result = Ok(());
    let mut parts = Vec::new();
    for chunk in (0..bytes.len()).step_by(PART_SIZE) {
        let end = (chunk + PART_SIZE).min(bytes.len());
        parts.push(upload.put_part(PutPayload::from(bytes.slice(chunk..end))));
    }
    for p in futures::future::join_all(parts).await {
        if let Err(e) = p {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = upload.complete().await.map(|_| ());
    }
    if let Err(e) = result {
        if let Err(abort) = upload.abort().await {
            tracing::debug!(error = %abort, %path, "multipart abort failed (the store expires it)");
        }
        return Err(e);
    }
    Ok(())
}

/// `yyyy/mm/dd/hh` of `t`.
pub fn hour_path(t: DateTime<Utc>) -> String {
    format!(
        "{:04}/{:02}/{:02}/{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour()
    )
}

/// The hour an event belongs to: its `receivedAt`, else `fallback`.
pub fn event_hour(event: &RawValue, fallback: DateTime<Utc>) -> DateTime<Utc> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "receivedAt", borrow)]
        received_at: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Head<'_>>(event.get())
        .ok()
        .and_then(|h| h.received_at)
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map_or(fallback, |t| t.with_timezone(&Utc))
}

/// gzip of `lines`, one per line (newline-terminated), at `level` (flate2's 0–9).
pub fn gzip_lines(
    lines: impl IntoIterator<Item = impl AsRef<str>>,
    level: flate2::Compression,
) -> Result<Vec<u8>, SinkError> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
    for l in lines {
        gz.write_all(l.as_ref().as_bytes())
            .and_then(|_| gz.write_all(b"\n"))
            .map_err(|e| SinkError::Encode(e.to_string()))?;
    }
    gz.finish().map_err(|e| SinkError::Encode(e.to_string()))
}

/// An object-storage destination (see the module comment).
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    /// Destination id.
    pub id: String,
    /// Kind name (`S3`, `MINIO`, `GCS`, `AZURE_BLOB`).
    pub kind: &'static str,
    /// Where objects go.
    pub store: StoreConfig,
    /// How often waiting events are uploaded.
    pub upload_interval: Duration,
    /// Events per object batch at most.
    pub max_batch_rows: i64,
}

/// The store settings of an S3-like destination config (`S3`, `MINIO`, `S3_DATALAKE`),
/// which the kind's schema accepted; only an `endPoint` no URL can be made of is reported.
pub(crate) fn s3_settings(
    dest: &workspace::Destination,
    kind: &str,
    http: &crate::destinations::HttpConfig,
) -> Result<StoreConfig, ConfigError> {
    let c = Settings::new(dest);
    let mut endpoint = c.string("endPoint");
    if let Some(e) = endpoint.clone() {
        if !e.contains("://") {
            // RudderStack's MINIO endPoint is host:port; useSSL picks the scheme.
            let scheme = if c.flag("useSSL").unwrap_or(kind != "MINIO") {
                "https"
            } else {
                "http"
            };
            endpoint = Some(format!("{scheme}://{e}"));
        }
        if url_host(endpoint.as_deref().unwrap_or_default()).is_none() {
            return Err(c.error("endPoint", format!("{e:?} is not a host:port or URL")));
        }
    }
    Ok(StoreConfig {
        provider: Provider::S3,
        bucket: c.required("bucketName"),
        prefix: prefix(&c),
        region: c.string("region"),
        endpoint,
        access_key_id: c.string("accessKeyID"),
        secret_access_key: c
            .string("accessKey")
            .or_else(|| c.string("secretAccessKey")),
        credentials: None,
        sas_token: None,
        timeout: http.timeout,
        connect_timeout: http.connect_timeout,
    })
}

/// The `prefix` setting without leading or trailing slashes.
fn prefix(c: &Settings<'_>) -> String {
    c.string("prefix")
        .unwrap_or_default()
        .trim_matches('/')
        .to_owned()
}

fn url_host(u: &str) -> Option<String> {
    let rest = u.split_once("://")?.1;
    let host = rest.split(['/', '?']).next()?;
    (!host.is_empty()).then(|| host.to_owned())
}

impl ObjectStorage {
    /// Reads the destination's settings, which its kind's schema accepted.
    pub fn new(
        dest: &workspace::Destination,
        http: &crate::destinations::HttpConfig,
    ) -> Result<Self, ConfigError> {
        let c = Settings::new(dest);
        let kind = KINDS
            .iter()
            .copied()
            .find(|k| *k == dest.destination_definition.name)
            .unwrap_or("S3");
        let store = match kind {
            "GCS" => StoreConfig {
                provider: Provider::Gcs,
                bucket: c.required("bucketName"),
                prefix: prefix(&c),
                region: None,
                endpoint: None,
                access_key_id: None,
                secret_access_key: None,
                credentials: c.string("credentials"),
                sas_token: None,
                timeout: http.timeout,
                connect_timeout: http.connect_timeout,
            },
            "AZURE_BLOB" => StoreConfig {
                provider: Provider::Azure,
                bucket: c.required("containerName"),
                prefix: prefix(&c),
                region: None,
                endpoint: c.string("endPoint"),
                access_key_id: Some(c.required("accountName")),
                secret_access_key: c.string("accountKey"),
                credentials: None,
                sas_token: c.string("sasToken"),
                timeout: http.timeout,
                connect_timeout: http.connect_timeout,
            },
            _ => s3_settings(dest, kind, http)?,
        };
        let (upload_interval, max_batch_rows) = batching(&c, 30.0);
        Ok(Self {
            id: dest.id.clone(),
            kind,
            store,
            upload_interval,
            max_batch_rows,
        })
    }
}

crate::stored_event_mapping!(ObjectStorage, |k| k.kind);

impl WarehouseKind for ObjectStorage {
    fn spec(&self) -> UploadSpec {
        UploadSpec::warehouse(&self.id, self.upload_interval, self.max_batch_rows)
    }

    fn sink(&self, _sources: &HashMap<String, String>, _config: &UploaderConfig) -> Box<dyn Sink> {
        Box::new(JsonlSink {
            settings: self.store.clone(),
            store: None,
        })
    }
}

/// Writes each batch as gzip JSON lines (see the module comment).
pub struct JsonlSink {
    settings: StoreConfig,
    store: Option<Arc<dyn ObjectStore>>,
}

impl JsonlSink {
    fn store(&mut self) -> Result<Arc<dyn ObjectStore>, SinkError> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        let s = self.settings.open()?;
        self.store = Some(s.clone());
        Ok(s)
    }
}

impl Sink for JsonlSink {
    fn load<'a>(&'a mut self, batch: &'a JobBatch) -> BoxFuture<'a, Result<LoadStats, SinkError>> {
        Box::pin(async move {
            let store = self.store()?;
            // (source, hour) → events as stored, in job order.
            let mut groups: BTreeMap<(&str, String), Vec<&str>> = BTreeMap::new();
            let parsed: Vec<(&str, Vec<&RawValue>, DateTime<Utc>)> = batch
                .jobs
                .iter()
                .map(|j| {
                    let events: Vec<&RawValue> = serde_json::from_str(&j.payload).unwrap_or_else(|e| {
                        tracing::error!(job = j.id, error = %e, "wh_jobs payload is not an event array; skipped");
                        Vec::new()
                    });
                    (j.source_id.as_str(), events, j.at)
                })
                .collect();
            let mut rows = 0u64;
            for (source, events, at) in &parsed {
                for e in events {
                    let hour = hour_path(event_hour(e, *at));
                    groups.entry((source, hour)).or_default().push(e.get());
                    rows += 1;
                }
            }
            let mut stats = LoadStats {
                rows,
                ..LoadStats::default()
            };
            let uploads = groups.into_iter().map(|((source, hour), lines)| {
                let store = store.clone();
                let path = self.settings.path(&format!(
                    "{source}/{hour}/{}-{}.json.gz",
                    batch.first_id, batch.last_id
                ));
                async move {
                    let bytes = gzip_lines(lines, flate2::Compression::default())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minio_endpoint_takes_its_scheme_from_use_ssl() {
        let d = crate::destinations::test_destination(
            "m",
            "MINIO",
            json!({"bucketName": "b", "endPoint": "127.0.0.1:9000", "useSSL": false,
                   "accessKeyID": "k", "secretAccessKey": "s", "prefix": "/logs/"}),
        );
        let o = ObjectStorage::new(&d, &Default::default()).expect("valid");
        assert_eq!(o.store.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(o.store.prefix, "logs");
        assert_eq!(o.store.secret_access_key.as_deref(), Some("s"));
        assert_eq!(
            crate::destinations::settings_problems("MINIO", json!({"bucketName": "b"})),
            ["endPoint"]
        );
    }

    #[tokio::test]
    async fn large_objects_go_up_in_parts_and_come_back_whole() {
        let store = object_store::memory::InMemory::new();
        let path = Path::from("a/b.bin");
        let bytes: Vec<u8> = (0..PART_SIZE * 2 + 123).map(|i| (i % 251) as u8).collect();
        put_object(&store, &path, bytes.clone()).await.expect("put");
        let back = store
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(back.as_ref(), bytes.as_slice());
        // Written again (a retry): replaced, not added.
        put_object(&store, &path, vec![1, 2, 3]).await.expect("put");
        let back = store
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(back.as_ref(), &[1, 2, 3]);
    }

    #[test]
    fn hour_comes_from_received_at() {
        let raw: Box<RawValue> =
            serde_json::from_str(r#"{"receivedAt":"2026-03-04T05:06:07.000Z","x":1}"#).unwrap();
        assert_eq!(hour_path(event_hour(&raw, Utc::now())), "2026/03/04/05");
    }
}
