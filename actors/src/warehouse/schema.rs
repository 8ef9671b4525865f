//! Warehouse naming and typing rules: identifiers in RudderStack's style (snake_case,
//! `[a-z0-9_]`, at most 63 bytes, `_`-prefixed when they would start with a digit or clash
//! with a reserved word or a Keel table), the column types Keel creates, type inference for
//! new columns, and coercion of a value into an existing column's type.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Postgres' identifier length limit in bytes.
pub const MAX_IDENT: usize = 63;

/// Tables every warehouse schema may hold; an event named like one gets a `_` prefix.
pub const STANDARD_TABLES: &[&str] = &[
    "tracks",
    "identifies",
    "users",
    "pages",
    "screens",
    "groups",
    "aliases",
    DISCARDS_TABLE,
    LOADS_TABLE,
];

/// Values that did not fit their column, with the reason.
pub const DISCARDS_TABLE: &str = "keel_discards";
/// Keel's per-table load checkpoints inside the warehouse schema.
pub const LOADS_TABLE: &str = "_keel_loads";

/// SQL reserved words (Postgres and the SQL standard) that make awkward table names.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "primary",
    "references",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
];

/// A column type Keel creates (other types found in a warehouse are kept as [`ColType::Other`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColType {
    /// `bigint`
    BigInt,
    /// `double precision`
    Double,
    /// `boolean`
    Boolean,
    /// `timestamp with time zone`
    Timestamp,
    /// `text`
    Text,
    /// `jsonb`
    Jsonb,
    /// A type someone else gave the column (its `format_type` name); values are sent as text
    /// and cast by Postgres.
    Other(String),
}

impl ColType {
    /// The SQL type name (as `format_type` prints it).
    pub fn sql(&self) -> &str {
        match self {
            ColType::BigInt => "bigint",
            ColType::Double => "double precision",
            ColType::Boolean => "boolean",
            ColType::Timestamp => "timestamp with time zone",
            ColType::Text => "text",
            ColType::Jsonb => "jsonb",
            ColType::Other(s) => s,
        }
    }

    /// Parses a `format_type` name.
    pub fn from_sql(name: &str) -> Self {
        match name {
            "bigint" | "integer" | "smallint" => ColType::BigInt,
            "double precision" | "real" => ColType::Double,
            "boolean" => ColType::Boolean,
            "timestamp with time zone" => ColType::Timestamp,
            "text" | "character varying" => ColType::Text,
            "jsonb" => ColType::Jsonb,
            other => ColType::Other(other.to_owned()),
        }
    }
}

/// The type a new column gets from the first value seen for it (`None` for null).
pub fn infer(v: &Value) -> Option<ColType> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(_) => ColType::Boolean,
        Value::Number(n) if n.is_i64() => ColType::BigInt,
        Value::Number(_) => ColType::Double,
        Value::String(s) if parse_timestamp(s).is_some() => ColType::Timestamp,
        Value::String(_) => ColType::Text,
        Value::Array(_) | Value::Object(_) => ColType::Jsonb,
    })
}

/// An ISO-8601 / RFC 3339 date-time with a time zone.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if s.len() < 20
        || !s
            .as_bytes()
            .get(10)
            .is_some_and(|b| *b == b'T' || *b == b' ')
    {
        return None;
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A value ready to bind for a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// For `bigint`.
    Int(i64),
    /// For `double precision`.
    Float(f64),
    /// For `boolean`.
    Bool(bool),
    /// For `timestamptz`.
    Time(DateTime<Utc>),
    /// For `text` and other types (cast by Postgres).
    Text(String),
    /// For `jsonb`.
    Json(Value),
}

/// Converts `v` for a column of type `ty`, or says why it does not fit.
pub fn coerce(v: &Value, ty: &ColType) -> Result<Cell, String> {
    let mismatch = || {
        format!(
            "incompatible type: column is {}, value is {}",
            ty.sql(),
            kind_name(v)
        )
    };
    match ty {
        ColType::Text | ColType::Other(_) => Ok(Cell::Text(match v {
            Value::String(s) => text_without_nul(s.clone()),
            other => text_without_nul(other.to_string()),
        })),
        ColType::BigInt => match v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                })
                .map(Cell::Int)
                .ok_or_else(mismatch),
            _ => Err(mismatch()),
        },
        ColType::Double => match v {
            Value::Number(n) => n.as_f64().map(Cell::Float).ok_or_else(mismatch),
            _ => Err(mismatch()),
        },
        ColType::Boolean => match v {
            Value::Bool(b) => Ok(Cell::Bool(*b)),
            _ => Err(mismatch()),
        },
        ColType::Timestamp => match v {
            Value::String(s) => parse_timestamp(s).map(Cell::Time).ok_or_else(mismatch),
            _ => Err(mismatch()),
        },
        ColType::Jsonb => Ok(Cell::Json(without_nul(v.clone()))),
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "float",
        Value::String(s) if parse_timestamp(s).is_some() => "timestamp",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `s` without NUL characters, which Postgres text cannot hold. Warehouse cells, and the
/// store's texts that quote what a destination or a script said (errors, answers), pass
/// through here before they are written, so one such text cannot fail a commit again and
/// again.
pub fn text_without_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s
    }
}

/// `v` with every NUL character removed from its strings and keys: jsonb cannot hold
/// `\u0000` (see [`text_without_nul`]). Strings are mended in place; an object is rebuilt
/// only when one of its keys holds a NUL.
pub fn without_nul(mut v: Value) -> Value {
    remove_nul(&mut v);
    v
}

fn remove_nul(v: &mut Value) {
    match v {
        Value::String(s) => {
            if s.contains('\0') {
                s.retain(|c| c != '\0');
            }
        }
        Value::Array(a) => a.iter_mut().for_each(remove_nul),
        Value::Object(m) => {
            if m.keys().any(|k| k.contains('\0')) {
                *m = std::mem::take(m)
                    .into_iter()
                    .map(|(k, v)| (text_without_nul(k), v))
                    .collect();
            }
            m.values_mut().for_each(remove_nul);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `productId` → `product_id`, `Order Completed` → `order_completed`, `$ref` → `ref`.
pub fn snake_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && i > 0 {
                let prev = chars[i - 1];
                let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
                if prev.is_ascii_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_ascii_uppercase() && next_lower)
                {
                    out.push('_');
                }
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push('_');
        }
    }
    let mut collapsed = String::with_capacity(out.len());
    for c in out.chars() {
        if c == '_' && (collapsed.is_empty() || collapsed.ends_with('_')) {
            continue;
        }
        collapsed.push(c);
    }
    while collapsed.ends_with('_') {
        collapsed.pop();
    }
    collapsed
}

fn fit(mut name: String) -> String {
    if name.is_empty() {
        name.push('_');
    }
    if name.as_bytes()[0].is_ascii_digit() {
        name.insert(0, '_');
    }
    name.truncate(MAX_IDENT);
    name
}

/// Column name for a flattened key path (`["context", "library", "name"]`).
pub fn column_name(path: &[&str]) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|p| snake_case(p))
        .filter(|p| !p.is_empty())
        .collect();
    fit(parts.join("_"))
}

/// Table name for a track event name.
pub fn event_table_name(event: &str) -> String {
    let mut name = snake_case(event);
    if name.is_empty() {
        name = "_".into();
    }
    if STANDARD_TABLES.contains(&name.as_str()) || RESERVED.contains(&name.as_str()) {
        name.insert(0, '_');
    }
    fit(name)
}

/// Schema name for a source when the destination names none: `keel_<source name>`.
pub fn default_schema(source_name: &str) -> String {
    let s = snake_case(source_name);
    let mut name = if s.is_empty() {
        "keel".to_owned()
    } else {
        format!("keel_{s}")
    };
    name.truncate(MAX_IDENT);
    name
}

/// `name` quoted as a Postgres identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_goes_from_strings_keys_and_cells() {
        let v = json!({"a\u{0}b": ["x\u{0}", {"k": "\u{0}y"}], "n": 1, "t": true});
        assert_eq!(
            without_nul(v.clone()),
            json!({"ab": ["x", {"k": "y"}], "n": 1, "t": true})
        );
        assert_eq!(text_without_nul("p\u{0}q".into()), "pq");
        assert_eq!(
            coerce(&v, &ColType::Jsonb),
            Ok(Cell::Json(
                json!({"ab": ["x", {"k": "y"}], "n": 1, "t": true})
            ))
        );
        assert_eq!(
            coerce(&json!("a\u{0}"), &ColType::Text),
            Ok(Cell::Text("a".into()))
        );
    }

    #[test]
    fn names_follow_rudderstack_style() {
        assert_eq!(snake_case("productId"), "product_id");
        assert_eq!(snake_case("Order Completed"), "order_completed");
        assert_eq!(snake_case("userAgent"), "user_agent");
        assert_eq!(snake_case("HTMLParser"), "html_parser");
        assert_eq!(snake_case("$revenue"), "revenue");
        assert_eq!(snake_case("a--b"), "a_b");
        assert_eq!(
            column_name(&["context", "library", "name"]),
            "context_library_name"
        );
        assert_eq!(column_name(&["9lives"]), "_9lives");
        assert_eq!(column_name(&["€"]), "_");
        assert_eq!(column_name(&["x".repeat(100).as_str()]).len(), 63);
        assert_eq!(event_table_name("Order Completed"), "order_completed");
        assert_eq!(event_table_name("users"), "_users");
        assert_eq!(event_table_name("select"), "_select");
        assert_eq!(event_table_name("1st Purchase"), "_1st_purchase");
        assert_eq!(default_schema("My App (Web)"), "keel_my_app_web");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn inference_and_coercion() {
        assert_eq!(infer(&json!(1)), Some(ColType::BigInt));
        assert_eq!(infer(&json!(1.5)), Some(ColType::Double));
        assert_eq!(infer(&json!(true)), Some(ColType::Boolean));
        assert_eq!(
            infer(&json!("2026-01-01T10:00:00.000Z")),
            Some(ColType::Timestamp)
        );
        assert_eq!(infer(&json!("2026-01-01")), Some(ColType::Text));
        assert_eq!(infer(&json!([1, 2])), Some(ColType::Jsonb));
        assert_eq!(infer(&json!(null)), None);
        assert_eq!(coerce(&json!(3), &ColType::Double), Ok(Cell::Float(3.0)));
        assert_eq!(coerce(&json!(3.0), &ColType::BigInt), Ok(Cell::Int(3)));
        assert!(coerce(&json!("abc"), &ColType::BigInt)
            .unwrap_err()
            .contains("column is bigint, value is string"));
        assert!(coerce(&json!(1.5), &ColType::BigInt).is_err());
        assert_eq!(
            coerce(&json!(12), &ColType::Text),
            Ok(Cell::Text("12".into()))
        );
        assert_eq!(
            coerce(&json!("a\u{0}b"), &ColType::Text),
            Ok(Cell::Text("ab".into()))
        );
        assert!(coerce(&json!("soon"), &ColType::Timestamp).is_err());
        assert_eq!(ColType::from_sql("integer"), ColType::BigInt);
        assert_eq!(
            ColType::from_sql("numeric(10,2)"),
            ColType::Other("numeric(10,2)".into())
        );
    }
}
