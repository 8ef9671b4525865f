//! [`StoredEvent`]: one event of a `gw_jobs` row as the processor reads it. Routing needs six
//! members (`messageId`, `userId`, `anonymousId`, `type`, `event`, `integrations`); those are
//! read in one pass over the event's text that skips the rest, and the whole object is
//! parsed only when a route needs it (a transformation, a kind that maps from the tree, a
//! dead letter). Kinds that send the event as it is (a webhook) write their payload from the
//! text, so the common path builds no JSON tree of the event.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::partition::Members;

/// The members routing reads, parsed straight from the event's text (absent and `null`
/// members are `None`); filters and the ordering key read them through [`Members`].
#[derive(Deserialize)]
pub struct Head {
    #[serde(rename = "messageId", default)]
    message_id: Option<Value>,
    #[serde(rename = "userId", default)]
    user_id: Option<Value>,
    #[serde(rename = "anonymousId", default)]
    anonymous_id: Option<Value>,
    #[serde(rename = "type", default)]
    ty: Option<Value>,
    #[serde(default)]
    event: Option<Value>,
    #[serde(default)]
    integrations: Option<Value>,
}

impl Members for Head {
    fn member(&self, key: &str) -> Option<&Value> {
        match key {
            "messageId" => self.message_id.as_ref(),
            "userId" => self.user_id.as_ref(),
            "anonymousId" => self.anonymous_id.as_ref(),
            "type" => self.ty.as_ref(),
            "event" => self.event.as_ref(),
            "integrations" => self.integrations.as_ref(),
            _ => None,
        }
    }
}

/// One stored event (see the module comment).
pub struct StoredEvent<'a> {
    /// The event's JSON text, borrowed from the row.
    pub raw: &'a RawValue,
    /// The members routing reads.
    pub head: Head,
    full: OnceLock<Map<String, Value>>,
}

impl<'a> StoredEvent<'a> {
    /// Reads `raw`, which must be a JSON object.
    pub fn parse(raw: &'a RawValue) -> Result<Self, serde_json::Error> {
        if !raw.get().trim_start().starts_with('{') {
            // A struct would also accept an array; the gateway stores only objects.
            return Err(serde::de::Error::custom(
                "a stored event is not a JSON object",
            ));
        }
        match serde_json::from_str::<Head>(raw.get()) {
            Ok(head) => Ok(Self {
                raw,
                head,
                full: OnceLock::new(),
            }),
            Err(_) => {
                // A member given twice (the struct refuses it; a map keeps the last one):
                // read the whole object, as it is read everywhere else.
                let full: Map<String, Value> = serde_json::from_str(raw.get())?;
                let get = |k: &str| full.get(k).filter(|v| !v.is_null()).cloned();
                let head = Head {
                    message_id: get("messageId"),
                    user_id: get("userId"),
                    anonymous_id: get("anonymousId"),
                    ty: get("type"),
                    event: get("event"),
                    integrations: get("integrations"),
                };
                let cell = OnceLock::new();
                let _ = cell.set(full);
                Ok(Self {
                    raw,
                    head,
                    full: cell,
                })
            }
        }
    }

    /// The event's `messageId` if it is a string, else "".
    pub fn message_id(&self) -> &str {
        self.head
            .message_id
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The whole event, parsed on first use.
    pub fn event(&self) -> &Map<String, Value> {
        self.full.get_or_init(|| {
            serde_json::from_str(self.raw.get()).unwrap_or_else(|e| {
                // parse() read it as an object already, so this cannot happen.
                tracing::error!(error = %e, "stored event cannot be parsed again");
                Map::new()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The members `h` holds, as a JSON object.
    fn head_map(h: &Head) -> Map<String, Value> {
        [
            "messageId",
            "userId",
            "anonymousId",
            "type",
            "event",
            "integrations",
        ]
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), h.member(k)?.clone())))
        .collect()
    }

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).expect("json")
    }

    #[test]
    fn head_holds_the_routing_members_only() {
        let r = raw(
            r#"{"anonymousId":"a","context":{"x":[1,2,{"y":"z"}]},"event":"Buy","integrations":{"All":false,"Webhook":true},"messageId":"m\"1","properties":{"n":1.5},"type":"track","userId":null}"#,
        );
        let e = StoredEvent::parse(r).expect("parse");
        assert_eq!(e.message_id(), "m\"1");
        assert_eq!(
            Value::Object(head_map(&e.head)),
            serde_json::json!({"anonymousId":"a","event":"Buy","integrations":{"All":false,"Webhook":true},"messageId":"m\"1","type":"track"})
        );
        assert_eq!(e.event()["properties"]["n"], serde_json::json!(1.5));
        assert_eq!(
            e.event(),
            &serde_json::from_str::<Map<String, Value>>(r.get()).expect("map")
        );
    }

    #[test]
    fn a_repeated_member_keeps_the_last_value_as_a_map_does() {
        let e = StoredEvent::parse(raw(r#"{"userId":"u1","type":"track","userId":"u2"}"#))
            .expect("parse");
        assert_eq!(e.head.member("userId"), Some(&Value::from("u2")));
        assert_eq!(e.event()["userId"], "u2");
    }

    #[test]
    fn non_objects_are_refused() {
        assert!(StoredEvent::parse(raw(r#"["m","u"]"#)).is_err());
        assert!(StoredEvent::parse(raw("3")).is_err());
        let e = StoredEvent::parse(raw(r#"{"messageId":7}"#)).expect("parse");
        assert_eq!(e.message_id(), "");
    }
}
