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

/// The members routing reads, as their JSON text.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "messageId", default, borrow)]
    message_id: Option<&'a RawValue>,
    #[serde(rename = "userId", default, borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(rename = "anonymousId", default, borrow)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(rename = "type", default, borrow)]
    ty: Option<&'a RawValue>,
    #[serde(default, borrow)]
    event: Option<&'a RawValue>,
    #[serde(default, borrow)]
    integrations: Option<&'a RawValue>,
}

/// The member names [`Head`] reads.
const HEAD_KEYS: [&str; 6] = [
    "messageId",
    "userId",
    "anonymousId",
    "type",
    "event",
    "integrations",
];

/// One stored event (see the module comment).
pub struct StoredEvent<'a> {
    /// The event's JSON text, borrowed from the row.
    pub raw: &'a RawValue,
    /// The members routing reads (absent and `null` members are left out): a map with the
    /// event's values, so filters and the ordering key read it as they read the event.
    pub head: Map<String, Value>,
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
        match serde_json::from_str::<Head<'_>>(raw.get()) {
            Ok(h) => {
                let mut head = Map::new();
                let members = [
                    h.message_id,
                    h.user_id,
                    h.anonymous_id,
                    h.ty,
                    h.event,
                    h.integrations,
                ];
                for (k, v) in HEAD_KEYS.iter().zip(members) {
                    if let Some(v) = v {
                        head.insert((*k).to_owned(), serde_json::from_str(v.get())?);
                    }
                }
                Ok(Self {
                    raw,
                    head,
                    full: OnceLock::new(),
                })
            }
            Err(_) => {
                // A member given twice (the struct refuses it; a map keeps the last one):
                // read the whole object, as it is read everywhere else.
                let full: Map<String, Value> = serde_json::from_str(raw.get())?;
                let head = HEAD_KEYS
                    .iter()
                    .filter_map(|k| {
                        full.get(*k)
                            .filter(|v| !v.is_null())
                            .map(|v| ((*k).to_owned(), v.clone()))
                    })
                    .collect();
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
            .get("messageId")
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
            Value::Object(e.head.clone()),
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
        assert_eq!(e.head["userId"], "u2");
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
