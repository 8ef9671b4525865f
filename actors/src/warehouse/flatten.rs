//! Turns one normalised event into warehouse rows, RudderStack's warehouse schema: `tracks`
//! plus one table per event name, `identifies` plus an upserted `users` row, `pages`,
//! `screens`, `groups`, `aliases`. Nested objects flatten into `parent_child` columns
//! (`context_library_name`); arrays stay whole (jsonb); user keys that would collide with a
//! system column get a `_` prefix; two keys normalising to one name keep the first.

use serde_json::{Map, Value};

use super::schema::{column_name, event_table_name, ColType};

/// Objects nested deeper than this are stored whole (jsonb) instead of flattened further.
const MAX_DEPTH: usize = 10;

/// What a table holds, which fixes its system columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// `tracks`
    Tracks,
    /// One table per track event name.
    Event,
    /// `identifies`
    Identifies,
    /// `users` (one row per userId, upserted).
    Users,
    /// `pages`
    Pages,
    /// `screens`
    Screens,
    /// `groups`
    Groups,
    /// `aliases`
    Aliases,
}

const COMMON: &[(&str, ColType)] = &[
    ("id", ColType::Text),
    ("anonymous_id", ColType::Text),
    ("user_id", ColType::Text),
    ("received_at", ColType::Timestamp),
    ("sent_at", ColType::Timestamp),
    ("timestamp", ColType::Timestamp),
    ("original_timestamp", ColType::Timestamp),
    ("uuid_ts", ColType::Timestamp),
    ("channel", ColType::Text),
];

impl TableKind {
    /// The columns every table of this kind has, with their fixed types (`id` first).
    pub fn system_columns(self) -> Vec<(&'static str, ColType)> {
        let extra: &[(&str, ColType)] = match self {
            TableKind::Users => {
                return vec![
                    ("id", ColType::Text),
                    ("received_at", ColType::Timestamp),
                    ("uuid_ts", ColType::Timestamp),
                ]
            }
            TableKind::Tracks | TableKind::Event => {
                &[("event", ColType::Text), ("event_text", ColType::Text)]
            }
            TableKind::Pages | TableKind::Screens => &[("name", ColType::Text)],
            TableKind::Groups => &[("group_id", ColType::Text)],
            TableKind::Aliases => &[("previous_id", ColType::Text)],
            TableKind::Identifies => &[],
        };
        COMMON.iter().chain(extra).cloned().collect()
    }

    /// Whether rows are upserted (latest non-null value per column wins) rather than
    /// inserted once.
    pub fn upserts(self) -> bool {
        self == TableKind::Users
    }
}

/// One row for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Target table.
    pub table: String,
    /// Its kind.
    pub kind: TableKind,
    /// The primary key (`id`): the messageId, or the userId for `users`.
    pub id: String,
    /// Column → value, non-null, in first-seen order, `id` not included.
    pub values: Vec<(String, Value)>,
    /// Values whose column name was already taken in this row (sent to discards).
    pub collisions: Vec<(String, Value)>,
}

impl Row {
    fn new(table: String, kind: TableKind, id: String) -> Self {
        Self {
            table,
            kind,
            id,
            values: Vec::new(),
            collisions: Vec::new(),
        }
    }

    fn set(&mut self, column: String, value: Value) {
        if value.is_null() {
            return;
        }
        if column == "id" || self.values.iter().any(|(c, _)| *c == column) {
            self.collisions.push((column, value));
        } else {
            self.values.push((column, value));
        }
    }

    /// Adds user data (`properties`, `traits`) at the top level, `_`-prefixing names that
    /// are system columns of this table.
    fn set_user(&mut self, column: String, value: Value) {
        let system = self.kind.system_columns();
        let column = if system.iter().any(|(c, _)| *c == column) {
            format!("_{column}")
        } else {
            column
        };
        self.set(column, value);
    }

    fn flatten_user(&mut self, obj: &Map<String, Value>) {
        let mut cols = Vec::new();
        flatten(&mut Vec::new(), obj, &mut cols, 0);
        for (c, v) in cols {
            self.set_user(c, v);
        }
    }

    fn flatten_prefixed(&mut self, prefix: &str, obj: &Map<String, Value>) {
        let mut cols = Vec::new();
        flatten(&mut vec![prefix.to_owned()], obj, &mut cols, 0);
        for (c, v) in cols {
            self.set(c, v);
        }
    }
}

fn flatten(
    path: &mut Vec<String>,
    obj: &Map<String, Value>,
    out: &mut Vec<(String, Value)>,
    depth: usize,
) {
    for (k, v) in obj {
        path.push(k.clone());
        match v {
            Value::Null => {}
            Value::Object(inner) if depth < MAX_DEPTH => {
                if !inner.is_empty() {
                    flatten(path, inner, out, depth + 1);
                }
            }
            other => {
                let parts: Vec<&str> = path.iter().map(String::as_str).collect();
                out.push((column_name(&parts), other.clone()));
            }
        }
        path.pop();
    }
}

fn str_of(event: &Map<String, Value>, key: &str) -> Option<String> {
    match event.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn object<'a>(event: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    event.get(key).and_then(Value::as_object)
}

/// The common columns of every event table: ids, timestamps, channel and `context_*`.
fn base(event: &Map<String, Value>, table: String, kind: TableKind, id: &str) -> Row {
    let mut row = Row::new(table, kind, id.to_owned());
    for (col, key) in [
        ("anonymous_id", "anonymousId"),
        ("user_id", "userId"),
        ("received_at", "receivedAt"),
        ("sent_at", "sentAt"),
        ("timestamp", "timestamp"),
        ("original_timestamp", "originalTimestamp"),
        ("channel", "channel"),
    ] {
        if let Some(v) = event.get(key) {
            row.set(col.to_owned(), v.clone());
        }
    }
    if let Some(ctx) = object(event, "context") {
        row.flatten_prefixed("context", ctx);
    }
    row
}

/// Traits of an identify: `context.traits` (RudderStack SDKs) overlaid by `traits`
/// (Segment SDKs).
fn merged_traits(event: &Map<String, Value>) -> Map<String, Value> {
    let mut traits = object(event, "context")
        .and_then(|c| object(c, "traits"))
        .cloned()
        .unwrap_or_default();
    if let Some(t) = object(event, "traits") {
        for (k, v) in t {
            traits.insert(k.clone(), v.clone());
        }
    }
    traits
}

/// The rows one event becomes. Events without a messageId, or of a type the warehouse
/// schema has no table for, become none.
pub fn rows_for_event(event: &Map<String, Value>) -> Vec<Row> {
    let Some(id) = str_of(event, "messageId") else {
        return Vec::new();
    };
    let ty = event.get("type").and_then(Value::as_str).unwrap_or("");
    let mut rows = Vec::new();
    match ty {
        "track" => {
            let name = str_of(event, "event").unwrap_or_default();
            let table = event_table_name(&name);
            let mut tracks = base(event, "tracks".into(), TableKind::Tracks, &id);
            tracks.set("event".into(), Value::String(table.clone()));
            tracks.set("event_text".into(), Value::String(name.clone()));
            let mut per_event = tracks.clone();
            per_event.table = table;
            per_event.kind = TableKind::Event;
            if let Some(props) = object(event, "properties") {
                per_event.flatten_user(props);
            }
            rows.push(tracks);
            rows.push(per_event);
        }
        "identify" => {
            let traits = merged_traits(event);
            let mut identifies = base(event, "identifies".into(), TableKind::Identifies, &id);
            identifies.flatten_user(&traits);
            rows.push(identifies);
            if let Some(user_id) = str_of(event, "userId") {
                let mut user = Row::new("users".into(), TableKind::Users, user_id);
                if let Some(v) = event.get("receivedAt") {
                    user.set("received_at".into(), v.clone());
                }
                user.flatten_user(&traits);
                rows.push(user);
            }
        }
        "page" | "screen" => {
            let (table, kind) = if ty == "page" {
                ("pages", TableKind::Pages)
            } else {
                ("screens", TableKind::Screens)
            };
            let mut row = base(event, table.into(), kind, &id);
            if let Some(name) = event.get("name") {
                row.set("name".into(), name.clone());
            }
            if let Some(props) = object(event, "properties") {
                row.flatten_user(props);
            }
            rows.push(row);
        }
        "group" => {
            let mut row = base(event, "groups".into(), TableKind::Groups, &id);
            if let Some(g) = event.get("groupId") {
                row.set("group_id".into(), g.clone());
            }
            if let Some(traits) = object(event, "traits") {
                row.flatten_user(traits);
            }
            rows.push(row);
        }
        "alias" => {
            let mut row = base(event, "aliases".into(), TableKind::Aliases, &id);
            if let Some(p) = event.get("previousId") {
                row.set("previous_id".into(), p.clone());
            }
            rows.push(row);
        }
        _ => {}
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    fn get<'a>(row: &'a Row, col: &str) -> Option<&'a Value> {
        row.values.iter().find(|(c, _)| c == col).map(|(_, v)| v)
    }

    #[test]
    fn track_becomes_tracks_and_event_table_rows() {
        let rows = rows_for_event(&obj(json!({
            "type": "track", "messageId": "m1", "userId": "u1", "event": "Order Completed",
            "receivedAt": "2026-01-01T00:00:00.000Z",
            "properties": {"revenue": 4.5, "productId": "p", "event": "clash", "tags": ["a"],
                           "nested": {"deepKey": 1}},
            "context": {"library": {"name": "analytics-python"}, "ip": "1.2.3.4"}
        })));
        assert_eq!(rows.len(), 2);
        let (tracks, ev) = (&rows[0], &rows[1]);
        assert_eq!(tracks.table, "tracks");
        assert_eq!(tracks.id, "m1");
        assert_eq!(get(tracks, "event"), Some(&json!("order_completed")));
        assert_eq!(get(tracks, "event_text"), Some(&json!("Order Completed")));
        assert_eq!(
            get(tracks, "context_library_name"),
            Some(&json!("analytics-python"))
        );
        assert_eq!(get(tracks, "revenue"), None, "tracks holds no properties");
        assert_eq!(ev.table, "order_completed");
        assert_eq!(get(ev, "revenue"), Some(&json!(4.5)));
        assert_eq!(get(ev, "product_id"), Some(&json!("p")));
        assert_eq!(get(ev, "_event"), Some(&json!("clash")));
        assert_eq!(get(ev, "tags"), Some(&json!(["a"])));
        assert_eq!(get(ev, "nested_deep_key"), Some(&json!(1)));
        assert_eq!(get(ev, "context_ip"), Some(&json!("1.2.3.4")));
    }

    #[test]
    fn identify_fills_identifies_and_users() {
        let rows = rows_for_event(&obj(json!({
            "type": "identify", "messageId": "m2", "userId": "u1",
            "receivedAt": "2026-01-01T00:00:00.000Z",
            "context": {"traits": {"plan": "free", "email": "a@b"}},
            "traits": {"plan": "pro"}
        })));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].table, "identifies");
        assert_eq!(get(&rows[0], "plan"), Some(&json!("pro")));
        assert_eq!(get(&rows[0], "context_traits_plan"), Some(&json!("free")));
        assert_eq!(rows[1].table, "users");
        assert_eq!(rows[1].id, "u1");
        assert_eq!(get(&rows[1], "email"), Some(&json!("a@b")));
        assert_eq!(get(&rows[1], "plan"), Some(&json!("pro")));
    }

    #[test]
    fn other_types_and_collisions() {
        let rows = rows_for_event(&obj(json!({
            "type": "alias", "messageId": "m3", "userId": "u", "previousId": "old"})));
        assert_eq!(rows[0].table, "aliases");
        assert_eq!(get(&rows[0], "previous_id"), Some(&json!("old")));
        let rows = rows_for_event(&obj(json!({
            "type": "page", "messageId": "m4", "name": "Home",
            "properties": {"productId": 1, "product_id": 2}})));
        assert_eq!(get(&rows[0], "name"), Some(&json!("Home")));
        assert_eq!(get(&rows[0], "product_id"), Some(&json!(1)));
        assert_eq!(rows[0].collisions, vec![("product_id".into(), json!(2))]);
        assert!(rows_for_event(&obj(json!({"type": "track", "event": "x"}))).is_empty());
        assert!(rows_for_event(&obj(json!({"type": "weird", "messageId": "m"}))).is_empty());
    }
}
