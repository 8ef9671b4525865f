//! `NATS`: publishes each event to NATS JetStream with `async-nats` and waits for the
//! stream's `PublishAck`, so a delivery counts only once JetStream stored it. The
//! `Nats-Msg-Id` header carries the event's messageId, so JetStream's own duplicate window
//! drops a redelivery (after a retry whose ack was lost, or a crash). Config: `url`
//! (required, `nats://[user:pass@]host:4222`, several comma-separated), `subject` (template
//! with `{type}` and `{event}`, default `events.{type}`; substituted values have spaces,
//! dots and wildcards replaced by `_` so they stay one subject token), `fields`.
//!
//! A stream must already capture the subjects (Keel does not create streams); a publish no
//! stream captures fails with "no responders" and is retried, then dead-lettered with that
//! reason. One client per destination, opened on first delivery; while it is not connected
//! (connection lost), the next delivery drops it and connects afresh. Connection errors and timeouts
//! retry; an authorization violation (bad credentials) aborts with the server's text.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectErrorKind, ConnectOptions, HeaderMap};
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::broker::{self, SharedConnection, Template};
use super::settings::Settings;
use super::{ConfigError, Delivery, DeliveryOutcome, HttpConfig, Mapping, TransformError};
use crate::workspace;

/// Kind name in the workspace.
pub const KIND: &str = "NATS";

/// `NATS` settings.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Subject template.
    pub subject: Template,
    /// Subset of the event to send (empty = all of it).
    pub fields: Vec<String>,
}

impl NatsConfig {
    /// Reads `dest.config` (accepted by the NATS schema); only a server address the
    /// client cannot parse is reported.
    pub fn parse(dest: &workspace::Destination) -> Result<Self, ConfigError> {
        let r = Settings::new(dest);
        let url = r.required("url");
        for server in url.split(',') {
            server
                .trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| r.error("url", format!("{server:?} is not a NATS URL: {e}")))?;
        }
        let subject = r
            .string("subject")
            .unwrap_or_else(|| "events.{type}".into());
        let template = Template::parse(&subject).map_err(|e| r.error("subject", e))?;
        Ok(Self {
            url,
            subject: template,
            fields: r.fields()?,
        })
    }
}

/// Keeps a substituted value one subject token.
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_whitespace() || matches!(c, '.' | '*' | '>') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// A configured NATS JetStream destination.
pub struct Nats {
    config: NatsConfig,
    client: SharedConnection<(async_nats::Client, jetstream::Context)>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Nats {
    /// Parses and checks `dest.config`; connects on first delivery.
    pub fn new(dest: &workspace::Destination, settings: &HttpConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            config: NatsConfig::parse(dest)?,
            client: SharedConnection::default(),
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
        })
    }

    async fn connect(&self) -> Result<(async_nats::Client, jetstream::Context), DeliveryOutcome> {
        let servers: Vec<&str> = self.config.url.split(',').map(str::trim).collect();
        let options = ConnectOptions::new()
            .name("keel")
            .connection_timeout(self.connect_timeout.max(Duration::from_millis(100)))
            .request_timeout(Some(self.timeout));
        let connect = options.connect(servers.as_slice());
        let limit = self.connect_timeout.max(Duration::from_millis(100)) + self.timeout;
        match broker::bounded(limit, "connecting to NATS", connect).await {
            Ok(Ok(client)) => {
                let mut js = jetstream::new(client.clone());
                js.set_timeout(self.timeout);
                Ok((client, js))
            }
            Ok(Err(e)) => {
                let text = format!("connecting to NATS: {e}");
                Err(match e.kind() {
                    ConnectErrorKind::AuthorizationViolation
                    | ConnectErrorKind::Authentication
                    | ConnectErrorKind::ServerParse
                    | ConnectErrorKind::Tls => broker::abort(text),
                    _ => broker::retry(text),
                })
            }
            Err(timeout) => Err(broker::retry(timeout)),
        }
    }

    async fn publish(&self, subject: &str, message_id: &str, body: Vec<u8>) -> DeliveryOutcome {
        let usable = |(c, _): &(async_nats::Client, jetstream::Context)| {
            c.connection_state() == async_nats::connection::State::Connected
        };
        let (generation, (_, js)) = match self
            .client
            .get(self.connect_timeout + self.timeout, usable, || {
                self.connect()
            })
            .await
        {
            Ok(c) => c,
            Err(outcome) => return outcome,
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        let send = async {
            let ack = js
                .publish_with_headers(subject.to_owned(), headers, body.into())
                .await?;
            ack.await
        };
        match broker::bounded(self.timeout, "NATS JetStream publish and ack", send).await {
            Ok(Ok(_ack)) => DeliveryOutcome::Delivered,
            Ok(Err(e)) => {
                let text = format!("NATS JetStream publish to {subject:?}: {e}");
                match e.kind() {
                    jetstream::context::PublishErrorKind::MaxPayloadExceeded => broker::abort(text),
                    jetstream::context::PublishErrorKind::BrokenPipe => {
                        self.client.invalidate(generation).await;
                        broker::retry(text)
                    }
                    _ => broker::retry(text),
                }
            }
            Err(timeout) => broker::retry(timeout),
        }
    }
}

impl Mapping for Nats {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn transform(&self, event: &Map<String, Value>) -> Result<Vec<Value>, TransformError> {
        Ok(vec![json!({
            "subject": self.config.subject.render(event, token),
            "messageId": broker::message_id(event),
            "body": broker::body(event, &self.config.fields),
        })])
    }
}

impl Delivery for Nats {
    fn deliver<'a>(&'a self, payload: &'a Value) -> BoxFuture<'a, DeliveryOutcome> {
        Box::pin(async move {
            match broker::addressed(payload, "subject") {
                Ok((subject, message_id, body)) => {
                    self.publish(subject, message_id, body.into_bytes()).await
                }
                Err(outcome) => outcome,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(config: Value) -> workspace::Destination {
        crate::destinations::test_destination("n", KIND, config)
    }

    #[test]
    fn rejects_bad_settings_naming_the_field() {
        let err = |c: Value| {
            crate::destinations::settings_problems(KIND, c)
                .first()
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(err(json!({})), "url");
        assert_eq!(
            err(json!({"url": "nats://h:4222", "subject": "a b"})),
            "subject"
        );
        assert_eq!(
            err(json!({"url": "nats://h:4222", "subject": "a.{x}"})),
            "subject"
        );
        assert_eq!(err(json!({"url": "nats://h:4222", "fields": 3})), "fields");
    }

    #[test]
    fn keeps_substituted_values_one_token() {
        let n = Nats::new(
            &dest(json!({"url": "nats://127.0.0.1:4222", "subject": "keel.{type}.{event}"})),
            &HttpConfig::default(),
        )
        .expect("valid");
        let e = json!({"type": "track", "event": "Order Completed v1.2", "messageId": "m"});
        let out = n.transform(e.as_object().expect("object")).expect("ok");
        assert_eq!(out[0]["subject"], "keel.track.Order_Completed_v1_2");
    }
}
