//! Canned answers for the `fetch`/`fetchV2` requests of scripts, for tests: a pool whose
//! [`TransformConfig::fetch_mocks`](super::TransformConfig::fetch_mocks) is set answers
//! every request from its list of [`MockExchange`]s and never reaches the network. The
//! first entry whose method and URL match (and body and headers, when the entry gives
//! them) answers; an entry answers any number of times unless it says `once`. A request
//! no entry matches fails at once (the script's `fetch` throws, naming the method and the
//! URL) and is recorded, so a test can report it even when the script caught the error.
//! Without mocks (production) `fetch` is unchanged: one `Option` check.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::outbound::FetchResponse;

/// One request a script is expected to make and the answer it gets.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MockExchange {
    /// What the request must be.
    pub request: MockRequest,
    /// What it is answered.
    pub response: MockResponse,
    /// Answer one request only (later matching requests go to the next matching entry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub once: bool,
}

/// The request side of a [`MockExchange`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MockRequest {
    /// HTTP method (case-insensitive).
    pub method: String,
    /// Full URL. Scheme, host, port and path must be equal; the query must hold the same
    /// (decoded) name/value pairs, in any order.
    pub url: String,
    /// The body, when it matters: a JSON string is compared with the request's text as is;
    /// any other JSON value with the request's body parsed as JSON (numbers by value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Headers the request must carry (names case-insensitive, values as text); others
    /// are allowed.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
}

/// The response side of a [`MockExchange`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MockResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
    /// The body: a JSON string is sent as that text, any other value as its JSON text,
    /// `null` (or absent) as an empty body.
    #[serde(default)]
    pub body: Value,
}

/// A list of [`MockExchange`]s and what has been asked of it (thread-safe: isolate threads
/// share one).
#[derive(Debug, Default)]
pub struct FetchMocks {
    entries: Vec<MockExchange>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Requests answered per entry.
    used: Vec<usize>,
    /// Requests no entry matched.
    unmatched: Vec<String>,
}

impl FetchMocks {
    /// Mocks answering from `entries`, in order.
    pub fn new(entries: Vec<MockExchange>) -> Self {
        let used = vec![0; entries.len()];
        Self {
            entries,
            state: Mutex::new(State {
                used,
                unmatched: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to one request: the first matching entry's response, or an error naming
    /// the method and URL (and why the nearest entries did not match) when none matches.
    pub fn answer(
        &self,
        method: &str,
        url: &str,
        headers: &Map<String, Value>,
        body: Option<&str>,
    ) -> Result<FetchResponse, String> {
        let mut state = self.lock();
        let mut near = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            if entry.once && state.used[i] > 0 {
                continue;
            }
            let r = &entry.request;
            if !r.method.eq_ignore_ascii_case(method) || !same_url(&r.url, url) {
                continue;
            }
            if !r.body.as_ref().is_none_or(|want| body_matches(want, body)) {
                near.push(format!("network[{i}] wants another body"));
                continue;
            }
            if let Some(name) = missing_header(&r.headers, headers) {
                near.push(format!("network[{i}] wants header {name:?}"));
                continue;
            }
            state.used[i] += 1;
            let res = &entry.response;
            return Ok(FetchResponse {
                status: res.status,
                headers: res.headers.clone(),
                body: match &res.body {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            });
        }
        let shown = match body {
            Some(b) if !b.is_empty() => format!(
                "{} {url} with body {}",
                method.to_ascii_uppercase(),
                truncate(b, 500)
            ),
            _ => format!("{} {url}", method.to_ascii_uppercase()),
        };
        state.unmatched.push(shown.clone());
        let mut message = format!("no `network` entry answers {shown}");
        if !near.is_empty() {
            message.push_str(&format!(" ({})", near.join("; ")));
        }
        Err(message)
    }

    /// Requests no entry answered, as `METHOD url [with body …]`, in order.
    pub fn unmatched(&self) -> Vec<String> {
        self.lock().unmatched.clone()
    }

    /// Indexes of the entries that answered no request.
    pub fn unused(&self) -> Vec<usize> {
        self.lock()
            .used
            .iter()
            .enumerate()
            .filter(|(_, &n)| n == 0)
            .map(|(i, _)| i)
            .collect()
    }
}

/// Equal URLs, the query compared as a multiset of decoded pairs; text equality when either
/// does not parse.
fn same_url(want: &str, got: &str) -> bool {
    let (Ok(w), Ok(g)) = (reqwest::Url::parse(want), reqwest::Url::parse(got)) else {
        return want == got;
    };
    let pairs = |u: &reqwest::Url| {
        let mut p: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        p.sort();
        p
    };
    w.scheme() == g.scheme()
        && w.host_str() == g.host_str()
        && w.port_or_known_default() == g.port_or_known_default()
        && w.path() == g.path()
        && pairs(&w) == pairs(&g)
}

fn body_matches(want: &Value, got: Option<&str>) -> bool {
    let got = got.unwrap_or("");
    match want {
        Value::String(text) => text == got,
        other => serde_json::from_str::<Value>(got).is_ok_and(|g| same_json(other, &g)),
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// The first header of `want` that `got` lacks or carries with another value.
fn missing_header<'a>(want: &'a Map<String, Value>, got: &Map<String, Value>) -> Option<&'a str> {
    want.iter().find_map(|(name, value)| {
        let found = got
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| text(v));
        (found.as_deref() != Some(text(value).as_str())).then_some(name.as_str())
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mocks(entries: Value) -> FetchMocks {
        FetchMocks::new(serde_json::from_value(entries).expect("entries"))
    }

    fn no_headers() -> Map<String, Value> {
        Map::new()
    }

    #[test]
    fn method_and_url_pick_the_first_matching_entry() {
        let m = mocks(json!([
            {"request": {"method": "POST", "url": "https://api.test/a"},
             "response": {"status": 201, "body": {"n": 1}}},
            {"request": {"method": "get", "url": "https://api.test/a?x=1&y=two%20words"},
             "response": {"status": 200, "headers": {"x-h": "v"}, "body": "plain"}},
            {"request": {"method": "GET", "url": "https://api.test/a?x=1&y=two%20words"},
             "response": {"status": 500}},
        ]));
        // Query order and encoding do not matter; the method's case does not either.
        let r = m
            .answer(
                "GET",
                "https://api.test/a?y=two+words&x=1",
                &no_headers(),
                None,
            )
            .expect("answered");
        assert_eq!((r.status, r.body.as_str()), (200, "plain"));
        assert_eq!(r.headers["x-h"], "v");
        let r = m
            .answer("post", "https://api.test/a", &no_headers(), Some("{}"))
            .expect("answered");
        assert_eq!((r.status, r.body.as_str()), (201, r#"{"n":1}"#));
        assert_eq!(m.unused(), vec![2]);
        assert!(m.unmatched().is_empty());
    }

    #[test]
    fn an_unmatched_request_fails_naming_method_and_url_and_is_recorded() {
        let m = mocks(json!([
            {"request": {"method": "GET", "url": "https://api.test/a?x=1"},
             "response": {"status": 200}},
        ]));
        for (method, url) in [
            ("GET", "https://api.test/a?x=2"),
            ("GET", "https://api.test/a"),
            ("GET", "https://api.test/a/?x=1"),
            ("DELETE", "https://api.test/a?x=1"),
            ("GET", "http://api.test/a?x=1"),
        ] {
            let e = m
                .answer(method, url, &no_headers(), None)
                .expect_err("no entry");
            assert!(e.contains(&format!("{method} {url}")), "{e}");
        }
        assert_eq!(m.unmatched().len(), 5);
        assert_eq!(m.unmatched()[0], "GET https://api.test/a?x=2");
    }

    #[test]
    fn bodies_match_as_json_or_as_text() {
        let m = mocks(json!([
            {"request": {"method": "POST", "url": "https://api.test/s", "body": {"q": [1, "a"]}},
             "response": {"status": 200, "body": "json"}},
            {"request": {"method": "POST", "url": "https://api.test/s", "body": "a=1&b=2"},
             "response": {"status": 200, "body": "text"}},
        ]));
        let h = no_headers();
        let ok = |body: &str| m.answer("POST", "https://api.test/s", &h, Some(body));
        assert_eq!(ok(r#"{ "q": [1.0, "a"] }"#).expect("json").body, "json");
        assert_eq!(ok("a=1&b=2").expect("text").body, "text");
        let e = ok(r#"{"q": [1, "b"]}"#).expect_err("other body");
        assert!(e.contains("network[0] wants another body"), "{e}");
        assert!(ok("b=2&a=1").is_err());
        assert!(m.answer("POST", "https://api.test/s", &h, None).is_err());
    }

    #[test]
    fn headers_are_a_case_insensitive_subset() {
        let m = mocks(json!([
            {"request": {"method": "GET", "url": "https://api.test/h",
                         "headers": {"Authorization": "Bearer k", "X-Version": 2}},
             "response": {"status": 204}},
        ]));
        let mut h = Map::new();
        h.insert("authorization".into(), json!("Bearer k"));
        h.insert("x-version".into(), json!("2"));
        h.insert("accept".into(), json!("*/*"));
        assert_eq!(
            m.answer("GET", "https://api.test/h", &h, None)
                .expect("match")
                .status,
            204
        );
        h.insert("authorization".into(), json!("Bearer other"));
        let e = m
            .answer("GET", "https://api.test/h", &h, None)
            .expect_err("wrong token");
        assert!(e.contains("Authorization"), "{e}");
    }

    #[test]
    fn once_entries_answer_a_single_request() {
        let m = mocks(json!([
            {"request": {"method": "GET", "url": "https://api.test/n"},
             "response": {"status": 200, "body": "first"}, "once": true},
            {"request": {"method": "GET", "url": "https://api.test/n"},
             "response": {"status": 200, "body": "then"}},
        ]));
        let h = no_headers();
        let get = || {
            m.answer("GET", "https://api.test/n", &h, None)
                .expect("answer")
        };
        assert_eq!(get().body, "first");
        assert_eq!(get().body, "then");
        assert_eq!(get().body, "then");
        assert!(m.unused().is_empty());
    }

    #[test]
    fn a_case_file_entry_reads_and_rejects_unknown_fields() {
        let e: Result<MockExchange, _> = serde_json::from_value(json!(
            {"request": {"method": "GET", "url": "u", "params": {}}, "response": {"status": 200}}
        ));
        assert!(e.is_err());
    }
}
