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
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The fields of an event, or of an object inside it that the gateway opened: one vector
/// kept sorted by key (an event has a dozen or two; a `BTreeMap` cost three nodes to build
/// and free per event).
#[derive(Debug, Default)]
pub struct Fields<'a> {
    sorted: Vec<(Cow<'a, str>, Field<'a>)>,
}

impl<'a> Fields<'a> {
    /// Fields read in text order: sorted, and of a repeated key only the last kept (as in
    /// serde_json's own maps).
    fn from_read(mut read: Vec<(Cow<'a, str>, Field<'a>)>) -> Self {
        // Stable: repeated keys stay in text order, and the last of each run is kept.
        read.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sorted: Vec<(Cow<'a, str>, Field<'a>)> = Vec::with_capacity(read.len());
        for entry in read {
            match sorted.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => sorted.push(entry),
            }
        }
        Self { sorted }
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.sorted.binary_search_by(|(k, _)| k.as_ref().cmp(key))
    }

    /// The field `key`.
    pub fn get(&self, key: &str) -> Option<&Field<'a>> {
        self.find(key).ok().map(|i| &self.sorted[i].1)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Field<'a>> {
        self.find(key).ok().map(|i| &mut self.sorted[i].1)
    }

    /// Sets `key` to `field`, replacing what was there.
    pub fn insert(&mut self, key: Cow<'a, str>, field: Field<'a>) {
        match self.find(&key) {
            Ok(i) => self.sorted[i].1 = field,
            Err(i) => self.sorted.insert(i, (key, field)),
        }
    }

    fn remove(&mut self, key: &str) {
        if let Ok(i) = self.find(key) {
            self.sorted.remove(i);
        }
    }

    /// The fields in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Cow<'a, str>, &Field<'a>)> {
        self.sorted.iter().map(|(k, v)| (k, v))
    }

    fn values(&self) -> impl Iterator<Item = &Field<'a>> {
        self.sorted.iter().map(|(_, v)| v)
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

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
    for (k, v) in fields.iter() {
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
            // Sorted again: a `Map` keeps insertion order should serde_json's
            // `preserve_order` ever be enabled in the build.
            Field::Value(Value::Object(m)) => Fields::from_read(
                std::mem::take(m)
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Field::Value(v)))
                    .collect(),
            ),
            _ => return,
        };
        *self = Field::Object(opened);
    }
}

/// Adds `key` to opened fields unless they have it.
pub fn insert_missing(fields: &mut Fields<'_>, key: &str, value: impl FnOnce() -> Value) {
    if let Err(i) = fields.find(key) {
        let entry = (Cow::Owned(key.to_owned()), Field::Value(value()));
        fields.sorted.insert(i, entry);
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
        let mut read = Vec::with_capacity(map.size_hint().unwrap_or(24));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let raw: &'de RawValue = map.next_value()?;
            let depth = match self.depth {
                Some(bound) => bound,
                None => checked_depth(raw).map_err(de::Error::custom)?,
            };
            read.push((key, Field::Raw(raw, depth)));
        }
        Ok(Fields::from_read(read))
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

/// The depth of `raw`, checked to read back: by [`scanned_depth`] when its text allows,
/// else by a real parse that builds nothing ([`Depth`]: every string and escape checked,
/// as when the stored event is read back).
fn checked_depth(raw: &RawValue) -> Result<usize, serde_json::Error> {
    if let Some(depth) = scanned_depth(raw.get()) {
        return Ok(depth);
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Depth.deserialize(&mut de)
}

/// Longest number [`scanned_depth`] vouches for: 300 characters hold at most 300 digits, and
/// any number without an exponent below 10^308 is a finite f64.
const SCANNED_NUMBER_MAX: usize = 300;

/// The nesting depth of `text`, read from its bytes, when that is as strict as a real parse;
/// `None` when the text must be parsed. `text` passed serde_json's syntax check already (it
/// is a `RawValue`: brackets balanced, strings free of control characters, numbers well
/// formed), so the only ways it could still fail to read back are in escapes (a lone
/// surrogate in `\u`) and in numbers (out of f64 range). Text with a backslash, or with a
/// number that has an exponent or more than [`SCANNED_NUMBER_MAX`] characters, is left to
/// the parse; everything else is counted: brackets outside strings.
fn scanned_depth(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' => {
                let rest = &b[i + 1..];
                let end = memchr::memchr2(b'"', b'\\', rest)?;
                if rest[end] == b'\\' {
                    return None;
                }
                i += end + 2;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.') {
                    i += 1;
                }
                if i - start > SCANNED_NUMBER_MAX || matches!(b.get(i), Some(b'e' | b'E')) {
                    return None;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Some(deepest)
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
    fn the_byte_scan_agrees_with_the_parse_or_leaves_it_the_text() {
        let parsed = |t: &str| {
            let mut de = serde_json::Deserializer::from_str(t);
            Depth.deserialize(&mut de).ok()
        };
        for (text, scanned) in [
            (r#"{"a":[1,{"b":"}]{["}],"c":-0.5}"#, Some(3)),
            (r#""escaped \u00e9""#, None),
            (r#""plain é""#, Some(0)),
            (r#""\ud800""#, None),
            (r#"[1e400]"#, None),
            (r#"[1E2]"#, None),
            (r#"[[],{},[[]]]"#, Some(3)),
            (r#"12345"#, Some(0)),
            (r#"true"#, Some(0)),
        ] {
            assert_eq!(scanned_depth(text), scanned, "{text}");
            let raw: &RawValue = serde_json::from_str(text).expect("syntax");
            assert_eq!(checked_depth(raw).ok(), parsed(text), "{text}");
        }
        let long = format!("[{}]", "9".repeat(SCANNED_NUMBER_MAX + 1));
        assert_eq!(scanned_depth(&long), None);
        let fits = format!("[{}]", "9".repeat(SCANNED_NUMBER_MAX));
        assert_eq!(scanned_depth(&fits), parsed(&fits));
        let too_big = format!("[{}]", "9".repeat(400));
        let raw: &RawValue = serde_json::from_str(&too_big).expect("syntax");
        assert!(checked_depth(raw).is_err(), "out of f64 range");
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
