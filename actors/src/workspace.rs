//! The workspace model (RudderStack's workspace JSON shape: sources with write keys and
//! their destinations) and the per-destination routing rules the processor applies:
//! enabled flags, the event's `integrations` object, supported message types, and event
//! filtering. Unknown fields are ignored so an exported RudderStack workspace loads as is.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::partition::Members;

/// A workspace: every source.
#[derive(Debug, Clone, Deserialize)]
pub struct Workspace {
    /// Every source.
    pub sources: Vec<Source>,
}

/// One source (an app sending events).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Stable id, stored with each request.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Secret the SDK sends.
    pub write_key: String,
    /// Disabled sources are refused with 401.
    pub enabled: bool,
    /// Where this source's events go.
    #[serde(default)]
    pub destinations: Vec<Destination>,
}

/// One destination of a source.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Stable id.
    pub id: String,
    /// Human name (also matched by an event's `integrations`).
    pub name: String,
    /// Disabled destinations receive nothing.
    pub enabled: bool,
    /// Kind-specific settings.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// The kind, e.g. `WEBHOOK`.
    pub destination_definition: DestinationDefinition,
    /// User transformations run, in order, on the events this destination takes, after
    /// the event filters and before the destination mapping.
    #[serde(default)]
    pub transformations: Vec<TransformationRef>,
}

/// A user transformation attached to a destination.
#[derive(Debug, Clone, Deserialize)]
pub struct TransformationRef {
    /// Name shown in metrics, logs and dead letters.
    pub name: String,
    /// The script: absolute, or relative to the workspace file's folder.
    pub file: String,
}

/// A destination's kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationDefinition {
    /// Kind name, e.g. `WEBHOOK`.
    pub name: String,
    /// Display name, also matched by `integrations`.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Kind-level settings; Keel reads `supportedMessageTypes`.
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// Why an event is not routed to a destination (shown by the explain endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterReason {
    /// The destination is disabled.
    Disabled,
    /// The event's `integrations` excluded it.
    Integrations,
    /// The destination does not take this event type.
    UnsupportedType,
    /// Event filtering (allow or deny list) dropped it.
    EventFilter,
}

impl FilterReason {
    /// Stable name.
    /// Every reason, for registering their series.
    pub const ALL: [FilterReason; 4] = [
        FilterReason::Disabled,
        FilterReason::Integrations,
        FilterReason::UnsupportedType,
        FilterReason::EventFilter,
    ];

    /// The reason as the explain API and metrics say it.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterReason::Disabled => "destination disabled",
            FilterReason::Integrations => "excluded by the event's integrations",
            FilterReason::UnsupportedType => "event type not supported by the destination",
            FilterReason::EventFilter => "dropped by event filtering",
        }
    }
}

impl Destination {
    /// Whether `event` goes to this destination, and if not, why.
    pub fn accepts(&self, event: &impl Members) -> Result<(), FilterReason> {
        if !self.enabled {
            return Err(FilterReason::Disabled);
        }
        if !self.integrations_allow(event.member("integrations")) {
            return Err(FilterReason::Integrations);
        }
        let ty = event.member("type").and_then(Value::as_str).unwrap_or("");
        if let Some(Value::Array(types)) = self
            .destination_definition
            .config
            .get("supportedMessageTypes")
        {
            if !types
                .iter()
                .any(|t| t.as_str().is_some_and(|t| t.eq_ignore_ascii_case(ty)))
            {
                return Err(FilterReason::UnsupportedType);
            }
        }
        if ty == "track"
            && !self
                .event_filter_allows(event.member("event").and_then(Value::as_str).unwrap_or(""))
        {
            return Err(FilterReason::EventFilter);
        }
        Ok(())
    }

    /// `integrations`: `All` (default true) sets the default; a key equal to this
    /// destination's name, kind or display name overrides it (false excludes; true or an
    /// options object includes).
    fn integrations_allow(&self, integrations: Option<&Value>) -> bool {
        let Some(Value::Object(map)) = integrations else {
            return true;
        };
        let names = [
            Some(self.name.as_str()),
            Some(self.destination_definition.name.as_str()),
            self.destination_definition.display_name.as_deref(),
        ];
        for (k, v) in map {
            if names.iter().flatten().any(|n| n.eq_ignore_ascii_case(k)) {
                return !matches!(v, Value::Bool(false));
            }
        }
        !matches!(map.get("All"), Some(Value::Bool(false)))
    }

    /// RudderStack event filtering: `eventFilteringOption` = `disable` |
    /// `whitelistedEvents` | `blacklistedEvents`, lists of `{ "eventName": … }`.
    fn event_filter_allows(&self, name: &str) -> bool {
        let list = |key: &str| -> Vec<&str> {
            match self.config.get(key) {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|i| i.get("eventName").and_then(Value::as_str))
                    .filter(|n| !n.is_empty())
                    .collect(),
                _ => Vec::new(),
            }
        };
        match self
            .config
            .get("eventFilteringOption")
            .and_then(Value::as_str)
        {
            Some("whitelistedEvents") => list("whitelistedEvents").contains(&name),
            Some("blacklistedEvents") => !list("blacklistedEvents").contains(&name),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dest(config: Value, def_config: Value) -> Destination {
        serde_json::from_value(json!({
            "id": "d1", "name": "My Hook", "enabled": true, "config": config,
            "destinationDefinition": {"name": "WEBHOOK", "displayName": "Webhook", "config": def_config}
        }))
        .expect("destination")
    }

    fn ev(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn integrations_all_and_names() {
        let d = dest(json!({}), json!({}));
        assert_eq!(
            d.accepts(&ev(json!({"type": "track", "event": "E"}))),
            Ok(())
        );
        assert_eq!(
            d.accepts(&ev(
                json!({"type": "track", "integrations": {"All": false}})
            )),
            Err(FilterReason::Integrations)
        );
        assert_eq!(
            d.accepts(&ev(
                json!({"type": "track", "integrations": {"All": false, "Webhook": true}})
            )),
            Ok(())
        );
        assert_eq!(
            d.accepts(&ev(
                json!({"type": "track", "integrations": {"My Hook": false}})
            )),
            Err(FilterReason::Integrations)
        );
        assert_eq!(
            d.accepts(&ev(
                json!({"type": "track", "integrations": {"WEBHOOK": false}})
            )),
            Err(FilterReason::Integrations)
        );
        assert_eq!(
            d.accepts(&ev(
                json!({"type": "track", "integrations": {"All": false, "Webhook": {"opt": 1}}})
            )),
            Ok(())
        );
    }

    #[test]
    fn supported_types_and_event_filtering() {
        let d = dest(
            json!({"eventFilteringOption": "whitelistedEvents", "whitelistedEvents": [{"eventName": "Buy"}, {"eventName": ""}]}),
            json!({"supportedMessageTypes": ["track", "identify"]}),
        );
        assert_eq!(
            d.accepts(&ev(json!({"type": "page"}))),
            Err(FilterReason::UnsupportedType)
        );
        assert_eq!(d.accepts(&ev(json!({"type": "identify"}))), Ok(()));
        assert_eq!(
            d.accepts(&ev(json!({"type": "track", "event": "Buy"}))),
            Ok(())
        );
        assert_eq!(
            d.accepts(&ev(json!({"type": "track", "event": "Browse"}))),
            Err(FilterReason::EventFilter)
        );
        let d = dest(
            json!({"eventFilteringOption": "blacklistedEvents", "blacklistedEvents": [{"eventName": "Browse"}]}),
            json!({}),
        );
        assert_eq!(
            d.accepts(&ev(json!({"type": "track", "event": "Browse"}))),
            Err(FilterReason::EventFilter)
        );
        assert_eq!(
            d.accepts(&ev(json!({"type": "track", "event": "Buy"}))),
            Ok(())
        );
        let mut off = d.clone();
        off.enabled = false;
        assert_eq!(
            off.accepts(&ev(json!({"type": "track", "event": "Buy"}))),
            Err(FilterReason::Disabled)
        );
    }
}
