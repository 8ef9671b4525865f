//! One incoming event as the gateway normalises and stores it, without building a JSON tree
//! of it: its top-level fields keep the client's JSON text (checked: valid strings, nesting
//! depth measured), and only the fields normalisation reads or sets are parsed or replaced.
//! An object the gateway adds keys to (`context`, `integrations`) is opened one level the
//! same way. Written out, top-level keys (and those of an opened object) come in sorted
//! order, as a `serde_json::Map` would give them; deeper levels keep the client's text.
//!
//! Parsing every event into a `serde_json::Value` (a map node and a string per field, all
//! freed after the commit) was a fifth of the gateway's CPU per event.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The fields of an event, or of an object inside it that the gateway opened.
pub type Fields<'a> = BTreeMap<Cow<'a, str>, Field<'a>>;

/// One field's value.
#[derive(Debug)]
pub enum Field<'a> {
    /// The client's JSON text, with the nesting depth it holds (a scalar is 0, `{}` is 1).
    /// In an opened object every member carries the object's depth − 1: a bound for each,
    /// and exactly the deepest member's depth, which is all [`fields_depth`] reads.
    Raw(&'a RawValue, usize),
    /// A value the gateway set or rewrote.
    Value(Value),
    /// An object whose own keys the gateway changed, opened one level.
    Object(Fields<'a>),
}

/// What a field holds, as far as merging into it cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No such field.
    Absent,
    /// JSON `null`.
    Null,
    /// A JSON object.
    Object,
    /// Anything else.
    Other,
}

/// One event: its top-level fields.
#[derive(Debug, Default)]
pub struct Event<'a> {
    fields: Fields<'a>,
}

impl<'a> Event<'a> {
    /// Reads one JSON object from `text`: its fields stay text, each checked (strings valid,
    /// depth measured). Anything but an object, or invalid JSON, is an error.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = de.deserialize_map(FieldsVisitor { depth: None })?;
        de.end()?;
        Ok(Event { fields })
    }

    /// The value of `key`, parsed (for the small fields normalisation reads).
    pub fn get(&self, key: &str) -> Option<Value> {
        self.fields.get(key).map(Field::to_value)
    }

    /// What `key` holds.
    pub fn shape(&self, key: &str) -> Shape {
        match self.fields.get(key) {
            None => Shape::Absent,
            Some(f) => f.shape(),
        }
    }

    /// Sets `key` to `value`, replacing what was there.
    pub fn insert(&mut self, key: &'static str, value: Value) {
        self.fields.insert(Cow::Borrowed(key), Field::Value(value));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) {
        self.fields.remove(key);
    }

    /// The fields of the object at `key`, opened for changes; `None` when `key` does not
    /// hold an object.
    pub fn object_mut(&mut self, key: &str) -> Option<&mut Fields<'a>> {
        let field = self.fields.get_mut(key)?;
        field.open();
        match field {
            Field::Object(f) => Some(f),
            _ => None,
        }
    }

    /// Deepest nesting of the event (the event object itself counts 1).
    pub fn depth(&self) -> usize {
        fields_depth(&self.fields)
    }

    /// The event as a JSON object (for tests and the console, which want a tree).
    pub fn to_map(&self) -> Map<String, Value> {
        fields_to_map(&self.fields)
    }
}

impl Serialize for Event<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fields(&self.fields, s)
    }
}

/// Nesting depth of an object made of `fields` (`{}` is 1).
fn fields_depth(fields: &Fields<'_>) -> usize {
    1 + fields.values().map(Field::depth).max().unwrap_or(0)
}

/// An object made of `fields`, as a tree.
fn fields_to_map(fields: &Fields<'_>) -> Map<String, Value> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_value()))
        .collect()
}

fn serialize_fields<S: Serializer>(fields: &Fields<'_>, s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(fields.len()))?;
    for (k, v) in fields {
        map.serialize_entry(k.as_ref(), v)?;
    }
    map.end()
}

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Raw(raw, _) => raw.serialize(s),
            Field::Value(v) => v.serialize(s),
            Field::Object(f) => serialize_fields(f, s),
        }
    }
}

impl<'a> Field<'a> {
    /// The value as a tree. Raw text was checked when read, so it always parses; `null`
    /// stands in should it ever not.
    pub fn to_value(&self) -> Value {
        match self {
            Field::Raw(raw, _) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            Field::Value(v) => v.clone(),
            Field::Object(f) => Value::Object(fields_to_map(f)),
        }
    }

    fn shape(&self) -> Shape {
        match self {
            Field::Raw(raw, _) => match raw.get().as_bytes().first() {
                Some(b'{') => Shape::Object,
                Some(b'n') => Shape::Null,
                _ => Shape::Other,
            },
            Field::Value(Value::Object(_)) | Field::Object(_) => Shape::Object,
            Field::Value(Value::Null) => Shape::Null,
            Field::Value(_) => Shape::Other,
        }
    }

    /// Nesting depth of the value (a scalar is 0, `{}` is 1).
    pub fn depth(&self) -> usize {
        match self {
            Field::Raw(_, d) => *d,
            Field::Value(v) => value_depth(v),
            Field::Object(f) => fields_depth(f),
        }
    }

    /// Turns an object (text or tree) into opened fields; anything else stays as it is.
    fn open(&mut self) {
        let opened = match self {
            Field::Raw(raw, depth) if raw.get().starts_with('{') => {
                let mut de = serde_json::Deserializer::from_str(raw.get());
                // The text was read and checked as part of the event, so this cannot fail,
                // and its members need no second check.
                let members = FieldsVisitor {
                    depth: Some(depth.saturating_sub(1)),
                };
                match de.deserialize_map(members) {
                    Ok(f) => f,
                    Err(_) => return,
                }
            }
            Field::Value(Value::Object(m)) => std::mem::take(m)
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), Field::Value(v)))
                .collect(),
            _ => return,
        };
        *self = Field::Object(opened);
    }
}

/// Adds `key` to opened fields unless they have it.
pub fn insert_missing(fields: &mut Fields<'_>, key: &str, value: impl FnOnce() -> Value) {
    if !fields.contains_key(key) {
        fields.insert(Cow::Owned(key.to_owned()), Field::Value(value()));
    }
}

/// Nesting depth of a tree (a scalar is 0, `{}` is 1).
pub fn value_depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(value_depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Reads an object's keys (borrowed unless escaped) and values (as text).
struct FieldsVisitor {
    /// `None`: check each value and measure its depth. `Some(d)`: the object was checked
    /// already; each value gets the bound `d` (see [`Field::Raw`]).
    depth: Option<usize>,
}

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let raw: &'de RawValue = map.next_value()?;
            let depth = match self.depth {
                Some(bound) => bound,
                None => checked_depth(raw).map_err(de::Error::custom)?,
            };
            // A repeated key: the last one wins, as in serde_json's own maps.
            fields.insert(key, Field::Raw(raw, depth));
        }
        Ok(fields)
    }
}

/// A key as `Cow`: borrowed from the text unless it held escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Reads `raw` once more as a real parse (so every string and escape is checked, as it
/// would be when the stored event is read back) building nothing, and returns its depth.
fn checked_depth(raw: &RawValue) -> Result<usize, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Depth.deserialize(&mut de)
}

/// Measures nesting while serde_json parses every part of a value.
struct Depth;

impl<'de> DeserializeSeed<'de> for Depth {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Depth {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_str<E>(self, _: &str) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut deepest = 0;
        while let Some(d) = seq.next_element_seed(Depth)? {
            deepest = deepest.max(d);
        }
        Ok(1 + deepest)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut deepest = 0;
        // Keys are parsed as strings too (`Depth` on a key visits a str).
        while map.next_key_seed(Depth)?.is_some() {
            deepest = deepest.max(map.next_value_seed(Depth)?);
        }
        Ok(1 + deepest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_text_sorts_top_level_keys_and_measures_depth() {
        let e = Event::parse(r#"{"b":{"y":1,"x":[1,{"z":2.50}]},"a":"\u00e9","a":"last"}"#)
            .expect("valid");
        assert_eq!(
            serde_json::to_string(&e).expect("encode"),
            r#"{"a":"last","b":{"y":1,"x":[1,{"z":2.50}]}}"#
        );
        assert_eq!(e.depth(), 4);
        assert_eq!(e.get("a"), Some(Value::String("last".into())));
        assert_eq!(e.shape("b"), Shape::Object);
        assert_eq!(e.shape("c"), Shape::Absent);
    }

    #[test]
    fn refuses_what_would_not_read_back() {
        for bad in [
            r#"{"a":"\ud800"}"#,
            r#"{"a":{"\udc00":1}}"#,
            r#"{"a":1} x"#,
            r#"[1]"#,
            r#"{"a":[1,]}"#,
        ] {
            assert!(Event::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_opened_object_gets_keys_and_keeps_its_own() {
        let mut e =
            Event::parse(r#"{"context":{"ip":"1.1.1.1","library":{"name":"x"}}}"#).expect("valid");
        let ctx = e.object_mut("context").expect("an object");
        insert_missing(ctx, "ip", || Value::String("2.2.2.2".into()));
        insert_missing(ctx, "locale", || Value::String("de".into()));
        assert_eq!(
            serde_json::to_string(&e).expect("encode"),
            r#"{"context":{"ip":"1.1.1.1","library":{"name":"x"},"locale":"de"}}"#
        );
        assert_eq!(e.depth(), 3);
        assert_eq!(e.to_map()["context"]["library"]["name"], "x");
    }
}
