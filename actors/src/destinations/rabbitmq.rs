//! `RABBITMQ`: publishes each event to an AMQP 0-9-1 exchange with `lapin` (on the router's
//! tokio runtime), publisher confirms on: a delivery counts only once the broker has
//! acknowledged it; a nack retries. Config: `url` (required, `amqp://user:pass@host:port/vhost`),
//! `exchange` (default `""`, the default exchange, where the routing key names a queue),
//! `routingKey` (template with `{type}` and `{event}`, default `{type}`), `fields`. Messages
//! are persistent (`delivery_mode` 2), `content_type` `application/json`, and carry the
//! event's messageId as `message_id`.
//!
//! One connection and one confirm-mode channel per destination, opened on first delivery
//! and re-opened after any error on them. Connection errors and timeouts retry; the broker's
//! refusals (`ACCESS_REFUSED` for bad credentials, `NOT_FOUND` for a missing exchange,
//! `NOT_ALLOWED` for a forbidden vhost…) abort with its error text.

use std::time::Duration;

use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::{json, Map, Value};

use super::broker::{self, SharedConnection, Template};
use super::settings::Settings;
use super::{ConfigError, Delivery, DeliveryOutcome, HttpConfig, Mapping, TransformError};
use crate::workspace;

/// Kind name in the workspace.
pub const KIND: &str = "RABBITMQ";

/// `RABBITMQ` settings.
#[derive(Debug, Clone)]
pub struct RabbitMqConfig {
    /// The broker's AMQP URI.
    pub url: AMQPUri,
    /// Exchange to publish to (`""` = the default exchange).
    pub exchange: String,
    /// Routing key template.
    pub routing_key: Template,
    /// Subset of the event to send (empty = all of it).
    pub fields: Vec<String>,
}

impl RabbitMqConfig {
    /// Reads `dest.config` (accepted by the RABBITMQ schema, which takes `amqp://` URLs
    /// only: this build has no TLS for AMQP, and lapin would send credentials in clear
    /// text rather than fail); only a URI lapin cannot parse is reported.
    pub fn parse(dest: &workspace::Destination) -> Result<Self, ConfigError> {
        let r = Settings::new(dest);
        let raw = r.required("url");
        let url: AMQPUri = raw.parse().map_err(|e| {
            r.error(
                "url",
                format!(
                    "{:?} is not an AMQP URI (amqp://user:pass@host:5672/vhost): {e}",
                    redact(&raw)
                ),
            )
        })?;
        let routing_key = r.string("routingKey").unwrap_or_else(|| "{type}".into());
        let routing_key = Template::parse(&routing_key).map_err(|e| r.error("routingKey", e))?;
        Ok(Self {
            url,
            exchange: r.string("exchange").unwrap_or_default(),
            routing_key,
            fields: r.fields()?,
        })
    }
}

/// A URL with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The connection and its confirm-mode channel.
#[derive(Clone)]
struct Link {
    connection: std::sync::Arc<Connection>,
    channel: Channel,
}

/// A configured RabbitMQ destination.
pub struct RabbitMq {
    config: RabbitMqConfig,
    link: SharedConnection<Link>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl RabbitMq {
    /// Parses and checks `dest.config`; connects on first delivery.
    pub fn new(dest: &workspace::Destination, settings: &HttpConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            config: RabbitMqConfig::parse(dest)?,
            link: SharedConnection::default(),
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
        })
    }

    async fn connect(&self) -> Result<Link, DeliveryOutcome> {
        let open = async {
            let connection =
                Connection::connect_uri(self.config.url.clone(), ConnectionProperties::default())
                    .await
                    .map_err(|e| classify(&e, "connecting to RabbitMQ"))?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| classify(&e, "opening a RabbitMQ channel"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| classify(&e, "enabling publisher confirms"))?;
            Ok(Link {
                connection: std::sync::Arc::new(connection),
                channel,
            })
        };
        let limit = self.connect_timeout.max(Duration::from_millis(100)) + self.timeout;
        match broker::bounded(limit, "connecting to RabbitMQ", open).await {
            Ok(r) => r,
            Err(timeout) => Err(broker::retry(timeout)),
        }
    }

    async fn publish(&self, routing_key: &str, message_id: &str, body: &[u8]) -> DeliveryOutcome {
        let usable = |l: &Link| l.connection.status().connected() && l.channel.status().connected();
        let (generation, link) = match self
            .link
            .get(self.connect_timeout + self.timeout, usable, || {
                self.connect()
            })
            .await
        {
            Ok(l) => l,
            Err(outcome) => return outcome,
        };
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.into());
        let send = async {
            let confirm = link
                .channel
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await?;
            confirm.await
        };
        match broker::bounded(self.timeout, "RabbitMQ publish and confirm", send).await {
            Ok(Ok(Confirmation::Ack(_))) => DeliveryOutcome::Delivered,
            Ok(Ok(Confirmation::Nack(_))) => {
                broker::retry("RabbitMQ nacked the message (it could not route or store it)")
            }
            Ok(Ok(Confirmation::NotRequested)) => {
                self.link.invalidate(generation).await;
                broker::retry("RabbitMQ channel is not in confirm mode; reopening it")
            }
            Ok(Err(e)) => {
                self.link.invalidate(generation).await;
                classify(&e, "RabbitMQ publish")
            }
            Err(timeout) => {
                self.link.invalidate(generation).await;
                broker::retry(timeout)
            }
        }
    }
}

/// The broker's refusals abort; connection trouble and transient broker states retry.
fn classify(e: &lapin::Error, what: &str) -> DeliveryOutcome {
    let text = format!("{what}: {e}");
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(
                AMQPSoftError::ACCESSREFUSED
                | AMQPSoftError::NOTFOUND
                | AMQPSoftError::PRECONDITIONFAILED
                | AMQPSoftError::CONTENTTOOLARGE,
            )
            | AMQPErrorKind::Hard(
                AMQPHardError::NOTALLOWED
                | AMQPHardError::INVALIDPATH
                | AMQPHardError::SYNTAXERROR
                | AMQPHardError::COMMANDINVALID
                | AMQPHardError::NOTIMPLEMENTED,
            ) => broker::abort(text),
            _ => broker::retry(text),
        },
        lapin::ErrorKind::AuthProviderError(_) | lapin::ErrorKind::InvalidProtocolVersion(_) => {
            broker::abort(text)
        }
        _ => broker::retry(text),
    }
}

impl Mapping for RabbitMq {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn transform(&self, event: &Map<String, Value>) -> Result<Vec<Value>, TransformError> {
        let routing_key = self.config.routing_key.render(event, str::to_owned);
        if routing_key.len() > 255 {
            return Err(TransformError::Failed(format!(
                "routing key {routing_key:?} is longer than AMQP's 255 bytes"
            )));
        }
        Ok(vec![json!({
            "routingKey": routing_key,
            "messageId": broker::message_id(event),
            "body": broker::body(event, &self.config.fields),
        })])
    }
}

impl Delivery for RabbitMq {
    fn deliver<'a>(&'a self, payload: &'a Value) -> BoxFuture<'a, DeliveryOutcome> {
        Box::pin(async move {
            match broker::addressed(payload, "routingKey") {
                Ok((routing_key, message_id, body)) => {
                    self.publish(routing_key, message_id, body.as_bytes()).await
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
        crate::destinations::test_destination("q", KIND, config)
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
        assert_eq!(err(json!({"url": "http://x"})), "url");
        assert_eq!(err(json!({"url": "amqps://u:p@127.0.0.1:5671/%2f"})), "url");
        assert_eq!(
            err(json!({"url": "amqp://127.0.0.1", "routingKey": "{user}"})),
            "routingKey"
        );
        assert_eq!(
            err(json!({"url": "amqp://127.0.0.1", "exchange": 3})),
            "exchange"
        );
    }

    #[test]
    fn renders_the_routing_key_and_hides_passwords() {
        let q = RabbitMq::new(
            &dest(json!({"url": "amqp://guest:guest@127.0.0.1:5672/%2f", "routingKey": "ev.{type}.{event}"})),
            &HttpConfig::default(),
        )
        .expect("valid");
        let e = json!({"type": "track", "event": "Buy", "messageId": "m1"});
        let out = q.transform(e.as_object().expect("object")).expect("ok");
        assert_eq!(out[0]["routingKey"], "ev.track.Buy");
        assert_eq!(out[0]["messageId"], "m1");
        assert_eq!(redact("amqp://u:secret@h:5672/v"), "amqp://u:***@h:5672/v");
    }
}
