//! `REDIS`: writes events into Redis with the `redis` crate. Two modes:
//! - `stream` (default): `XADD <stream> MAXLEN ~ <maxLen> * messageId <id> event <json>`,
//!   where `<stream>` is the fixed `stream` setting, else `<keyPrefix>:<type>` (`<type>`
//!   without a prefix). The entry's `event` field is the event JSON (the webhook body, or its
//!   `fields` subset).
//! - `hash`: RudderStack's Redis shape: an identify's traits (`traits`, else
//!   `context.traits`, nested objects flattened to `a.b`) go into the hash
//!   `<keyPrefix>:user:<userId>` (`user:<userId>` without a prefix) with `HSET`. Other event
//!   types, identifies without a userId and identifies without traits produce nothing (the
//!   processor records them as filtered).
//!
//! Config: `address` (`host:port` or a `redis://` URL, required), `password`, `database`
//! (index, default 0), `mode`, `keyPrefix`, `stream`, `maxLen`
//! (default 100000), `fields`. One multiplexed connection per destination, opened on first
//! delivery and re-opened after a connection error. Connection errors and timeouts retry;
//! authentication and permission errors and other refusals abort with Redis's error text.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};
use serde_json::{json, Map, Value};

use super::broker::{self, SharedConnection};
use super::settings::Settings;
use super::{ConfigError, Delivery, DeliveryOutcome, HttpConfig, Mapping, TransformError};
use crate::workspace;

/// Kind name in the workspace.
pub const KIND: &str = "REDIS";

/// Default `maxLen`: entries kept per stream (approximately, `MAXLEN ~`).
pub const DEFAULT_MAX_LEN: u64 = 100_000;

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// `XADD` every event to a stream.
    Stream,
    /// Identify traits into a hash per user.
    Hash,
}

/// `REDIS` settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `host:port` or `redis://…`.
    pub address: String,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// Database index.
    pub database: i64,
    /// Stream or hash.
    pub mode: RedisMode,
    /// Prefix of every key (joined with `:`).
    pub key_prefix: String,
    /// One fixed stream instead of one per event type.
    pub stream: Option<String>,
    /// Approximate cap on each stream's length.
    pub max_len: u64,
    /// Subset of the event to send (empty = all of it).
    pub fields: Vec<String>,
}

impl RedisConfig {
    /// Reads `dest.config` (accepted by the REDIS schema); only an address the client
    /// cannot use is reported.
    pub fn parse(dest: &workspace::Destination) -> Result<Self, ConfigError> {
        let r = Settings::new(dest);
        let config = Self {
            address: r.required("address"),
            password: r.string("password"),
            database: r.whole("database").unwrap_or(0) as i64,
            mode: match r.string("mode").as_deref() {
                Some("hash") => RedisMode::Hash,
                _ => RedisMode::Stream,
            },
            key_prefix: r.string("keyPrefix").unwrap_or_default(),
            stream: r.string("stream"),
            max_len: r.whole("maxLen").unwrap_or(DEFAULT_MAX_LEN),
            fields: r.fields()?,
        };
        config
            .connection_info()
            .map_err(|e| r.error("address", format!("{:?}: {e}", config.address)))?;
        Ok(config)
    }

    fn connection_info(&self) -> Result<redis::ConnectionInfo, String> {
        let info = if self.address.contains("://") {
            self.address
                .as_str()
                .into_connection_info()
                .map_err(|e| e.to_string())?
        } else {
            let (host, port) = self
                .address
                .rsplit_once(':')
                .ok_or("expected host:port or a redis:// URL")?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{port:?} is not a port number"))?;
            if host.is_empty() {
                return Err("the host is empty".into());
            }
            let host = host.trim_start_matches('[').trim_end_matches(']');
            redis::ConnectionAddr::Tcp(host.to_owned(), port)
                .into_connection_info()
                .map_err(|e| e.to_string())?
        };
        // `password` and `database` are sent by `Redis::connect` itself (AUTH, SELECT), so a
        // refusal carries the server's own text (the crate replaces it with its own).
        Ok(info)
    }

    fn key(&self, rest: &str) -> String {
        if self.key_prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}:{rest}", self.key_prefix)
        }
    }
}

/// A configured Redis destination.
pub struct Redis {
    config: RedisConfig,
    client: redis::Client,
    connection: SharedConnection<MultiplexedConnection>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Redis {
    /// Parses and checks `dest.config`; connects on first delivery.
    pub fn new(dest: &workspace::Destination, settings: &HttpConfig) -> Result<Self, ConfigError> {
        let config = RedisConfig::parse(dest)?;
        let info = config
            .connection_info()
            .map_err(|e| Settings::new(dest).error("address", e))?;
        let client = redis::Client::open(info).map_err(|e| {
            Settings::new(dest).error("address", format!("{:?}: {e}", config.address))
        })?;
        Ok(Self {
            config,
            client,
            connection: SharedConnection::default(),
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
        })
    }

    async fn send(&self, cmd: redis::Cmd) -> DeliveryOutcome {
        let connect = || async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.timeout));
            let open = async {
                let mut conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| classify(&e, "connecting to Redis"))?;
                if let Some(password) = &self.config.password {
                    redis::cmd("AUTH")
                        .arg(password)
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(|e| classify(&e, "Redis AUTH"))?;
                }
                if self.config.database != 0 {
                    redis::cmd("SELECT")
                        .arg(self.config.database)
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(|e| classify(&e, "Redis SELECT"))?;
                }
                Ok(conn)
            };
            match broker::bounded(self.timeout, "connecting to Redis", open).await {
                Ok(result) => result,
                Err(timeout) => Err(broker::retry(timeout)),
            }
        };
        let (generation, mut conn) = match self
            .connection
            .get(self.connect_timeout + self.timeout, |_| true, connect)
            .await
        {
            Ok(c) => c,
            Err(outcome) => return outcome,
        };
        match broker::bounded(
            self.timeout,
            "Redis command",
            cmd.query_async::<redis::Value>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => DeliveryOutcome::Delivered,
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    self.connection.invalidate(generation).await;
                }
                classify(&e, "Redis")
            }
            Err(timeout) => {
                self.connection.invalidate(generation).await;
                broker::retry(timeout)
            }
        }
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Connection trouble and transient server states retry; authentication, permission and
/// other refusals abort with Redis's text.
fn classify(e: &RedisError, what: &str) -> DeliveryOutcome {
    let text = format!("{what}: {e}");
    if is_connection_error(e) {
        return broker::retry(text);
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => broker::abort(text),
        ErrorKind::Server(kind) => match kind {
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly => broker::retry(text),
            _ if e.code() == Some("OOM") => broker::retry(text),
            _ => broker::abort(text),
        },
        ErrorKind::Extension if e.code() == Some("OOM") => broker::retry(text),
        ErrorKind::Extension => broker::abort(text),
        _ => broker::retry(text),
    }
}

/// Flattens nested objects into `a.b` keys; other values are strings (JSON for non-strings).
fn flatten(prefix: &str, map: &Map<String, Value>, out: &mut Map<String, Value>) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(inner) => flatten(&key, inner, out),
            Value::String(s) => {
                out.insert(key, Value::String(s.clone()));
            }
            Value::Null => {}
            other => {
                out.insert(key, Value::String(other.to_string()));
            }
        }
    }
}

impl Mapping for Redis {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn transform(&self, event: &Map<String, Value>) -> Result<Vec<Value>, TransformError> {
        let c = &self.config;
        match c.mode {
            RedisMode::Stream => {
                let stream = match &c.stream {
                    Some(s) => s.clone(),
                    None => c.key(broker::event_type(event)),
                };
                Ok(vec![json!({
                    "op": "xadd",
                    "stream": stream,
                    "messageId": broker::message_id(event),
                    "body": broker::body(event, &c.fields),
                })])
            }
            RedisMode::Hash => {
                if broker::event_type(event) != "identify" {
                    return Ok(Vec::new());
                }
                let user_id = match event.get("userId") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    _ => return Ok(Vec::new()),
                };
                let traits = event
                    .get("traits")
                    .and_then(Value::as_object)
                    .filter(|t| !t.is_empty())
                    .or_else(|| {
                        event
                            .get("context")
                            .and_then(|c| c.get("traits"))
                            .and_then(Value::as_object)
                    });
                let Some(traits) = traits else {
                    return Ok(Vec::new());
                };
                let traits = match broker::body(traits, &c.fields) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                let mut fields = Map::new();
                flatten("", &traits, &mut fields);
                if fields.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![json!({
                    "op": "hset",
                    "key": c.key(&format!("user:{user_id}")),
                    "fields": fields,
                })])
            }
        }
    }
}

impl Delivery for Redis {
    fn deliver<'a>(&'a self, payload: &'a Value) -> BoxFuture<'a, DeliveryOutcome> {
        Box::pin(async move {
            let op = match broker::payload_str(payload, "op") {
                Ok(op) => op,
                Err(outcome) => return outcome,
            };
            let cmd = match op {
                "xadd" => {
                    let (stream, id, body) = match broker::addressed(payload, "stream") {
                        Ok(a) => a,
                        Err(o) => return o,
                    };
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(self.config.max_len)
                        .arg("*")
                        .arg("messageId")
                        .arg(id)
                        .arg("event")
                        .arg(body);
                    cmd
                }
                "hset" => {
                    let key = match broker::payload_str(payload, "key") {
                        Ok(k) => k,
                        Err(o) => return o,
                    };
                    let Some(fields) = payload.get("fields").and_then(Value::as_object) else {
                        return broker::abort("stored payload has no \"fields\" object");
                    };
                    let mut cmd = redis::cmd("HSET");
                    cmd.arg(key);
                    for (k, v) in fields {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        cmd.arg(k).arg(v);
                    }
                    cmd
                }
                other => return broker::abort(format!("stored payload has unknown op {other:?}")),
            };
            self.send(cmd).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(config: Value) -> workspace::Destination {
        crate::destinations::test_destination("r", KIND, config)
    }

    #[test]
    fn rejects_bad_settings_naming_the_field() {
        let err = |c: Value| {
            crate::destinations::settings_problems(KIND, c)
                .first()
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(err(json!({})), "address");
        assert_eq!(err(json!({"address": "nohostport"})), "address");
        assert_eq!(err(json!({"address": "h:6379", "mode": "list"})), "mode");
        assert_eq!(err(json!({"address": "h:6379", "maxLen": 0})), "maxLen");
        assert_eq!(
            err(json!({"address": "h:6379", "database": "x"})),
            "database"
        );
        assert_eq!(
            err(json!({"address": "h:6379", "fields": [""]})),
            "fields[0]"
        );
        assert!(crate::destinations::settings_problems(
            KIND,
            json!({"address": "h:6379", "maxLen": "50"})
        )
        .is_empty());
        assert_eq!(err(json!({"address": "h:6379", "maxLen": "0"})), "maxLen");
    }

    #[test]
    fn hash_mode_keeps_identify_traits_only() {
        let r = Redis::new(
            &dest(json!({"address": "127.0.0.1:6379", "mode": "hash", "keyPrefix": "k"})),
            &HttpConfig::default(),
        )
        .expect("valid");
        let identify = json!({"type": "identify", "userId": "u1",
                              "traits": {"email": "a@b", "n": 3, "address": {"city": "Oslo"}}});
        let out = r
            .transform(identify.as_object().expect("object"))
            .expect("transform");
        assert_eq!(
            out,
            vec![
                json!({"op": "hset", "key": "k:user:u1", "fields": {"email": "a@b", "n": "3", "address.city": "Oslo"}})
            ]
        );
        let track = json!({"type": "track", "userId": "u1", "event": "x"});
        assert!(r
            .transform(track.as_object().expect("object"))
            .expect("ok")
            .is_empty());
    }
}
