//! Keeps secrets out of what Keel shows: destination settings whose key names a secret
//! (`apiKey`, `restApiKey`, `token`, `apiSecret`, `password`, `credentials`…), and the
//! workspace's write keys. A [`Redactor`] replaces every occurrence of such a value (and of
//! its base64 forms, as HTTP Basic headers carry them) with `[redacted]` in text, and in
//! JSON also replaces the values of members whose name names a secret (`Authorization`,
//! `api_key`…). The admin API (dead letters, explain) and log lines that may quote a
//! destination's answer pass through it. Stored payloads keep their secrets: a replay
//! must send them.

use std::borrow::Cow;

use aho_corasick::AhoCorasick;
use base64::Engine;
use serde_json::{Map, Value};

use crate::workspace::Workspace;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are never treated as secrets (flags, region codes).
const MIN_SECRET_LEN: usize = 6;

/// True when a setting or member named `name` holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    const PARTS: &[&str] = &[
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "credential",
        "authorization",
        "auth",
        "signature",
        "private",
    ];
    PARTS.iter().any(|p| n.contains(p))
        // Names that contain a part but hold no secret.
        && !matches!(
            n.as_str(),
            "keyname" | "eventkey" | "tokenurl" | "authurl" | "authmode" | "authtype"
                | "ordering_key" | "orderingkey" | "idempotency-key" | "idempotency_key"
                | "primarykey" | "partitionkey" | "keyfield" | "keys" | "monkey"
        )
}

/// Replaces known secret values (see the module comment).
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
}

impl Redactor {
    /// Secrets of one destination's settings: members named as secrets, and the top-level
    /// settings its kind's schema marks `writeOnly` (`secret_settings`, such as a webhook
    /// URL that carries a token).
    pub fn for_config(config: &Map<String, Value>, secret_settings: &[String]) -> Self {
        let mut values = Vec::new();
        collect_settings(config, secret_settings, &mut values);
        Self::from_values(values)
    }

    /// Every destination's secrets (`secret_settings` gives each one's `writeOnly`
    /// settings) and every source's write key.
    pub fn for_workspace(
        ws: &Workspace,
        secret_settings: &dyn Fn(&crate::workspace::Destination) -> Vec<String>,
    ) -> Self {
        let mut values = Vec::new();
        for s in &ws.sources {
            values.push(s.write_key.clone());
            for d in &s.destinations {
                collect_settings(&d.config, &secret_settings(d), &mut values);
            }
        }
        Self::from_values(values)
    }

    fn from_values(values: Vec<String>) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let b64 = base64::engine::general_purpose::STANDARD;
        for v in values {
            let v = v.trim().to_owned();
            if v.len() < MIN_SECRET_LEN {
                continue;
            }
            patterns.push(b64.encode(format!("{v}:")));
            patterns.push(b64.encode(format!(":{v}")));
            patterns.push(b64.encode(&v));
            patterns.push(v);
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns.dedup();
        let matcher = (!patterns.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .ok()
            })
            .flatten();
        Self { matcher }
    }

    /// `text` with every secret replaced.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.matcher {
            Some(m) if m.is_match(text) => {
                Cow::Owned(m.replace_all(text, &vec![REDACTED; m.patterns_len()]))
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// Redacts the secrets in every string of `value`, in place.
    pub fn value(&self, value: &mut Value) {
        self.walk(value, false);
    }

    /// Redacts a stored payload (a request Keel would send), in place: secrets in every
    /// string, and the whole value of members whose name names a secret (`Authorization`,
    /// `api_key`), since a request may carry credentials derived from the settings.
    pub fn payload(&self, value: &mut Value) {
        self.walk(value, true);
    }

    fn walk(&self, value: &mut Value, by_name: bool) {
        match value {
            Value::String(s) => {
                if let Cow::Owned(r) = self.text(s) {
                    *s = r;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| self.walk(v, by_name)),
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if by_name
                        && is_secret_name(k)
                        && matches!(v, Value::String(_) | Value::Number(_))
                    {
                        *v = Value::String(REDACTED.into());
                    } else {
                        self.walk(v, by_name);
                    }
                }
            }
            _ => {}
        }
    }
}

fn collect_settings(
    config: &Map<String, Value>,
    secret_settings: &[String],
    out: &mut Vec<String>,
) {
    for (k, v) in config {
        collect(v, is_secret_name(k) || secret_settings.contains(k), out);
    }
}

/// Collects secret values: strings under secret-named members (`secret` is true below one),
/// including inside JSON text such as a service account's credentials.
fn collect(v: &Value, secret: bool, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            if secret {
                out.push(s.clone());
            }
            if let Ok(inner @ Value::Object(_)) = serde_json::from_str::<Value>(s) {
                collect(&inner, secret, out);
            }
        }
        Value::Number(n) if secret => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| collect(x, secret, out)),
        Value::Object(m) => {
            for (k, x) in m {
                collect(x, secret || is_secret_name(k), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor(config: Value) -> Redactor {
        Redactor::for_config(config.as_object().expect("object"), &["hookUrl".to_owned()])
    }

    #[test]
    fn secret_settings_are_replaced_in_text_and_basic_headers() {
        let r = redactor(json!({"restApiKey": "rk-12345678", "dataCenter": "US-03",
            "hookUrl": "https://hooks.test/T0/B0/abcdef",
            "credentials": "{\"private_key\": \"-----BEGIN KEY-----abc\"}"}));
        assert_eq!(r.text("auth rk-12345678 failed"), "auth [redacted] failed");
        assert_eq!(r.text("US-03 stays"), "US-03 stays");
        assert_eq!(
            r.text("POST https://hooks.test/T0/B0/abcdef failed"),
            "POST [redacted] failed"
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("rk-12345678:");
        assert_eq!(r.text(&format!("Basic {basic}")), "Basic [redacted]");
        assert_eq!(r.text("key -----BEGIN KEY-----abc"), "key [redacted]");
    }

    #[test]
    fn secret_members_of_payloads_are_replaced_whatever_their_value() {
        let r = Redactor::default();
        let mut v = json!({"headers": {"Authorization": "Bearer x", "Content-Type": "application/json"},
            "params": {"api_key": "k", "measurement_id": "G-1"}});
        r.payload(&mut v);
        assert_eq!(v["headers"]["Authorization"], REDACTED);
        assert_eq!(v["headers"]["Content-Type"], "application/json");
        assert_eq!(v["params"]["api_key"], REDACTED);
        assert_eq!(v["params"]["measurement_id"], "G-1");
    }
}
