//! Reading a destination's `config` after its kind's schema accepted it: conversion only.
//!
//! Every setting is checked once, by the kind's settings schema in
//! [`catalogue::build`](super::catalogue::build) (types, required keys, ranges, enums,
//! patterns; numeric strings as RudderStack's UI stores them are read as numbers there
//! first). The constructors then read their settings through [`Settings`], which converts
//! and never judges: a missing optional key is `None`, a numeric string is a number, a
//! `"true"` string is a boolean. What a schema cannot say (a URL the URL parser refuses, a
//! script that does not load) is the only thing a constructor still reports.

use serde_json::{Map, Value};

use super::ConfigError;
use crate::workspace;

/// A destination's accepted settings, read as Rust values.
pub struct Settings<'a> {
    dest: &'a workspace::Destination,
}

impl<'a> Settings<'a> {
    /// A reader over `dest.config`.
    pub fn new(dest: &'a workspace::Destination) -> Self {
        Self { dest }
    }

    /// A [`ConfigError`] for `field` (for what only a constructor can find).
    pub fn error(&self, field: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            destination: self.dest.id.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// A string setting; absent, null or empty is `None`.
    pub fn string(&self, key: &str) -> Option<String> {
        match self.dest.config.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    /// A string setting the schema requires (empty when, against the schema, it is not).
    pub fn required(&self, key: &str) -> String {
        self.string(key).unwrap_or_default()
    }

    /// A number, or a numeric string; `None` when absent, null or blank.
    pub fn number(&self, key: &str) -> Option<f64> {
        number(&self.dest.config, key)
    }

    /// A whole number (see [`Settings::number`]); `8123.0` is `8123`, as the schema's
    /// `integer` takes it.
    pub fn whole(&self, key: &str) -> Option<u64> {
        let exact = match self.dest.config.get(key) {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().trim_start_matches('+').parse().ok(),
            _ => None,
        };
        exact.or_else(|| {
            self.number(key)
                .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= u64::MAX as f64)
                .map(|n| n as u64)
        })
    }

    /// A boolean, or the strings `"true"`/`"false"` as RudderStack's UI stores them.
    pub fn flag(&self, key: &str) -> Option<bool> {
        match self.dest.config.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) => match s.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// The optional `fields` list of the broker kinds: strings (dotted paths such as
    /// `context.ip`), or objects `{"field": path}` as RudderStack's UI stores lists. An
    /// entry that is no field name (empty, or an empty path segment) is the one problem
    /// reported, since a schema cannot say it of both shapes at once.
    pub fn fields(&self) -> Result<Vec<String>, ConfigError> {
        let key = "fields";
        let Some(Value::Array(items)) = self.dest.config.get(key) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let name = match item {
                Value::String(s) => s.as_str(),
                Value::Object(o) => o.get("field").and_then(Value::as_str).unwrap_or(""),
                _ => "",
            };
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(self.error(
                    &format!("{key}[{i}]"),
                    format!("{item} is not a field name (e.g. \"event\" or \"context.ip\")"),
                ));
            }
            out.push(name.to_owned());
        }
        Ok(out)
    }
}

/// A number, or a numeric string, of `config`; `None` when absent, null, blank or not a
/// number.
pub fn number(config: &Map<String, Value>, key: &str) -> Option<f64> {
    match config.get(key) {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `config` as the schema judges it: every numeric string of a key whose schema type is
/// `integer` or `number` read as that number (a blank one as absent), so that the
/// schema's `minimum`/`maximum` apply to `"75000"` as they do to `75000`. Strings that are
/// not numbers stay strings, for the schema's pattern to report.
pub fn numbers_read(
    config: &Map<String, Value>,
    properties: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = config.clone();
    for (key, value) in config {
        let Value::String(s) = value else { continue };
        let numeric = properties
            .get(key)
            .and_then(|p| p.get("type"))
            .is_some_and(|t| match t {
                Value::String(t) => t == "integer" || t == "number",
                Value::Array(ts) => ts.iter().any(|t| t == "integer" || t == "number"),
                _ => false,
            });
        if !numeric {
            continue;
        }
        let t = s.trim();
        if t.is_empty() {
            out.remove(key);
        } else if let Ok(n) = t.trim_start_matches('+').parse::<u64>() {
            out.insert(key.clone(), Value::from(n));
        } else if let Ok(n) = t.parse::<i64>() {
            out.insert(key.clone(), Value::from(n));
        } else if let Some(n) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            out.insert(key.clone(), Value::Number(n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_numbers_come_from_numbers_integral_floats_and_numeric_strings() {
        let dest = crate::destinations::test_destination(
            "d",
            "REDIS",
            json!({"a": 8123, "b": 8123.0, "c": " +42 ", "d": "7.0", "e": 1.5, "f": "x"}),
        );
        let s = Settings::new(&dest);
        let got: Vec<Option<u64>> = ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .map(|k| s.whole(k))
            .collect();
        assert_eq!(
            got,
            [Some(8123), Some(8123), Some(42), Some(7), None, None, None]
        );
    }

    #[test]
    fn numeric_strings_of_numeric_keys_become_numbers_for_the_schema() {
        let props = json!({"port": {"type": ["integer", "string"]}, "name": {"type": "string"},
                           "rate": {"type": "number"}});
        let config = json!({"port": " 8123 ", "name": "42", "rate": "0.5", "max": "7"});
        let read = numbers_read(
            config.as_object().expect("object"),
            props.as_object().expect("object"),
        );
        assert_eq!(
            Value::Object(read),
            json!({"port": 8123, "name": "42", "rate": 0.5, "max": "7"})
        );
        let blank = numbers_read(
            json!({"port": "  "}).as_object().expect("object"),
            props.as_object().expect("object"),
        );
        assert!(blank.is_empty());
    }
}
