//! What the message-broker kinds (`REDIS`, `RABBITMQ`, `NATS`) share: the event body with an optional `fields` subset, routing
//! templates (`{type}`, `{event}`), the lazily created connection each kind instance shares
//! across deliveries (re-created after a failure), and bounding every broker call with the
//! router timeout. It never speaks a wire protocol: each kind uses its broker's client crate.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};

use super::{DeliveryOutcome, Failure};

/// The body a broker kind sends: the normalised event (the webhook body), or only `fields`
/// (dotted paths; absent ones are left out) when that list is not empty.
pub fn body(event: &Map<String, Value>, fields: &[String]) -> Value {
    if fields.is_empty() {
        return Value::Object(event.clone());
    }
    let mut out = Map::new();
    for path in fields {
        let mut parts = path.split('.');
        let Some(first) = parts.next() else { continue };
        let mut value = event.get(first);
        let rest: Vec<&str> = parts.collect();
        for p in &rest {
            value = value.and_then(|v| v.get(*p));
        }
        let Some(value) = value else { continue };
        // Rebuild the nesting so `context.ip` arrives as {"context": {"ip": …}}.
        insert_path(&mut out, first, &rest, value.clone());
    }
    Value::Object(out)
}

fn insert_path(map: &mut Map<String, Value>, key: &str, rest: &[&str], value: Value) {
    match rest.split_first() {
        None => {
            map.insert(key.to_owned(), value);
        }
        Some((next, tail)) => {
            let entry = map
                .entry(key.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                insert_path(inner, next, tail, value);
            }
        }
    }
}

/// The event's name for `{event}`: a track's `event`, a page's or screen's `name`, else
/// the event type.
pub fn event_name(event: &Map<String, Value>) -> &str {
    let ty = event_type(event);
    let named = match ty {
        "track" => event.get("event"),
        "page" | "screen" => event.get("name"),
        _ => None,
    };
    named
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(ty)
}

/// The event's `type` (`track`, `identify`…).
pub fn event_type(event: &Map<String, Value>) -> &str {
    event.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The event's messageId (empty if absent, which normalisation prevents).
pub fn message_id(event: &Map<String, Value>) -> &str {
    event.get("messageId").and_then(Value::as_str).unwrap_or("")
}

/// A routing template: literal text with `{type}` and `{event}` placeholders.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Type,
    Event,
}

impl Template {
    /// Parses `text`; an unknown or unclosed placeholder is an error (for `field`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(format!("{text:?}: unclosed '{{'"));
            };
            match &after[..close] {
                "type" => parts.push(Part::Type),
                "event" => parts.push(Part::Event),
                other => {
                    return Err(format!(
                        "{text:?}: unknown placeholder {{{other}}} (known: {{type}}, {{event}})"
                    ))
                }
            }
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The text for `event`; each substituted value goes through `clean`.
    pub fn render(&self, event: &Map<String, Value>, clean: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Type => out.push_str(&clean(event_type(event))),
                Part::Event => out.push_str(&clean(event_name(event))),
            }
        }
        out
    }
}

/// A connection created on first use, shared by every delivery of one kind instance, and
/// dropped after a failure so the next delivery connects afresh. Only one delivery
/// connects at a time; the others wait for it.
pub struct SharedConnection<T: Clone> {
    slot: tokio::sync::Mutex<Option<(u64, T)>>,
    generation: AtomicU64,
}

impl<T: Clone> Default for SharedConnection<T> {
    fn default() -> Self {
        Self {
            slot: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }
}

impl<T: Clone> SharedConnection<T> {
    /// The current connection (with its generation), connecting with `connect` if there is
    /// none or `usable` says the held one is broken. Waiting for another delivery's connect
    /// and connecting together take at most `limit` (then: retry).
    pub async fn get<F, Fut>(
        &self,
        limit: Duration,
        usable: impl Fn(&T) -> bool,
        connect: F,
    ) -> Result<(u64, T), DeliveryOutcome>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, DeliveryOutcome>>,
    {
        let attempt = async {
            let mut slot = self.slot.lock().await;
            if let Some((generation, conn)) = slot.as_ref() {
                if usable(conn) {
                    return Ok((*generation, conn.clone()));
                }
            }
            *slot = None;
            let conn = connect().await?;
            let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
            *slot = Some((generation, conn.clone()));
            Ok((generation, conn))
        };
        match bounded(limit, "waiting for the broker connection", attempt).await {
            Ok(result) => result,
            Err(timeout) => Err(retry(timeout)),
        }
    }

    /// Drops the connection of `generation` (if it is still the current one) after a
    /// failure on it.
    pub async fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }
}

/// Runs `fut` for at most `limit`; on expiry, an error saying what timed out.
pub async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("{what} timed out after {} ms", limit.as_millis()))
}

/// A retryable failure with this text.
pub fn retry(error: impl Into<String>) -> DeliveryOutcome {
    DeliveryOutcome::Retry(Failure {
        error: error.into(),
        ..Failure::default()
    })
}

/// A permanent refusal with this text (the job goes to the DLQ with it as the reason).
pub fn abort(error: impl Into<String>) -> DeliveryOutcome {
    DeliveryOutcome::Abort(Failure {
        error: error.into(),
        ..Failure::default()
    })
}

/// A string field of a stored payload, or an abort naming it.
pub fn payload_str<'a>(payload: &'a Value, key: &str) -> Result<&'a str, DeliveryOutcome> {
    payload
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| abort(format!("stored payload has no string {key:?}")))
}

/// What a stored broker payload addresses: its target (`stream`, `routingKey` or
/// `subject`, named by `target`), its messageId, and its body as JSON text.
pub fn addressed<'a>(
    payload: &'a Value,
    target: &str,
) -> Result<(&'a str, &'a str, String), DeliveryOutcome> {
    let to = payload_str(payload, target)?;
    let id = payload_str(payload, "messageId")?;
    let body = payload
        .get("body")
        .map(Value::to_string)
        .unwrap_or_default();
    Ok((to, id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn selects_a_subset_of_fields_by_dotted_path() {
        let e = obj(
            json!({"type": "track", "event": "Buy", "context": {"ip": "1.2.3.4", "x": 1},
                           "properties": {"a": 1}}),
        );
        assert_eq!(body(&e, &[]), Value::Object(e.clone()));
        let fields = vec!["event".to_string(), "context.ip".into(), "missing.x".into()];
        assert_eq!(
            body(&e, &fields),
            json!({"event": "Buy", "context": {"ip": "1.2.3.4"}})
        );
    }

    #[test]
    fn renders_type_and_event_placeholders() {
        let t = Template::parse("events.{type}.{event}").expect("valid");
        let track = obj(json!({"type": "track", "event": "Order Completed"}));
        let clean = |s: &str| s.replace(' ', "_");
        assert_eq!(t.render(&track, clean), "events.track.Order_Completed");
        let identify = obj(json!({"type": "identify"}));
        assert_eq!(t.render(&identify, clean), "events.identify.identify");
        let page = obj(json!({"type": "page", "name": "Home"}));
        assert_eq!(t.render(&page, |s| s.to_owned()), "events.page.Home");
        assert!(Template::parse("x.{user}")
            .unwrap_err()
            .contains("unknown placeholder {user}"));
        assert!(Template::parse("x.{type").unwrap_err().contains("unclosed"));
    }
}
