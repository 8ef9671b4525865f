//! `sink`: the webhook receiver of Keel's end-to-end benchmark.
//!
//! A small HTTP/1.1 server (keep-alive) that plays the destination. Every `POST`
//! (to any path other than `/reset`) is taken as one delivered event, or, when its body
//! is a JSON array (a batching webhook), as one event per element: each is parsed for
//! `messageId`, `userId` and `receivedAt` only, the request is answered `200 {}` at
//! once, and the sink records
//!
//! * how many deliveries arrived (`received`), how many distinct messageIds
//!   (`unique`) and how many repeats of an already seen messageId (`duplicates`);
//! * the ingest-to-delivery latency, `now - receivedAt` in milliseconds (Keel
//!   stamps `receivedAt` when it accepts the event), in an HDR histogram;
//! * the wall-clock times of the first and last delivery, so that the delivered
//!   rate is `unique / (last_at_ms - first_at_ms) * 1000`.
//!
//! A GA4 Measurement Protocol body (no top-level `messageId`) is identified by its first
//! event's `params.message_id` / `params.received_at`, which the benchmark's transformation
//! puts there.
//!
//! Bodies that are not JSON objects, or lack a string `messageId`, are still
//! answered 200 (so Keel does not retry them) but counted as `invalid`; a missing
//! or unparsable `receivedAt` is counted as `no_received_at` and adds no latency.
//!
//! Other routes: `GET /stats` answers the figures as one flat JSON object,
//! `POST /reset` clears them, `GET /health` answers 200.
//!
//! Order is not checked here (the integration tests do that). The sink logs
//! `listening addr=IP:PORT` on stderr, like Keel, so `--listen 127.0.0.1:0`
//! can be used; it exits on SIGTERM or Ctrl-C.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashSet;
use serde::Deserialize;
use tokio::net::TcpListener;
use xxhash_rust::xxh3::xxh3_128;

/// Largest request body read, in bytes; larger ones are answered 413.
const MAX_BODY: usize = 4 << 20;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(name = "sink", about = "Webhook sink for Keel's end-to-end benchmark")]
struct Args {
    /// Address to listen on; port 0 lets the kernel pick a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// Tokio worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
}

/// The fields of a delivered event the sink looks at; everything else is skipped.
#[derive(Deserialize)]
struct Event<'a> {
    /// Segment messageId: the key for uniqueness.
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<Cow<'a, str>>,
    /// Segment userId; only checked to be present or absent, not used further.
    #[serde(rename = "userId", borrow, default)]
    #[allow(dead_code)]
    user_id: Option<Cow<'a, str>>,
    /// When Keel accepted the event (RFC 3339).
    #[serde(rename = "receivedAt", borrow, default)]
    received_at: Option<Cow<'a, str>>,
    /// GA4 Measurement Protocol bodies carry no messageId; the benchmark's transformation
    /// copies it (and receivedAt) into event parameters, read from here.
    #[serde(borrow, default)]
    events: Option<Vec<Ga4Event<'a>>>,
}

/// One event of a GA4 Measurement Protocol body.
#[derive(Deserialize)]
struct Ga4Event<'a> {
    #[serde(borrow, default)]
    params: Option<Ga4Params<'a>>,
}

/// The parameters the benchmark's transformation adds.
#[derive(Deserialize)]
struct Ga4Params<'a> {
    #[serde(borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    received_at: Option<Cow<'a, str>>,
}

impl<'a> Event<'a> {
    /// The messageId and receivedAt, top-level or from a GA4 body's first event.
    fn ids(self) -> (Option<Cow<'a, str>>, Option<Cow<'a, str>>) {
        if self.message_id.is_some() {
            return (self.message_id, self.received_at);
        }
        let params = self
            .events
            .and_then(|e| e.into_iter().next())
            .and_then(|e| e.params);
        match params {
            Some(p) => (p.message_id, p.received_at),
            None => (None, None),
        }
    }
}

/// Everything the sink has counted since start or the last reset.
struct Stats {
    /// Event deliveries (POSTs) answered, repeats and invalid bodies included.
    received: u64,
    /// Distinct messageIds seen, by their 128-bit XXH3 hash: no allocation per event, and
    /// two ids of a run sharing one (a false duplicate) is ~n²/2¹²⁹, nil at any run's size.
    seen: FxHashSet<u128>,
    /// Deliveries whose messageId had been seen before.
    duplicates: u64,
    /// Deliveries whose body was not a JSON object with a string messageId.
    invalid: u64,
    /// Valid deliveries without a parsable `receivedAt`.
    no_received_at: u64,
    /// Ingest-to-delivery latency in milliseconds.
    latency_ms: Histogram<u64>,
    /// Unix milliseconds of the first delivery, 0 if none.
    first_at_ms: i64,
    /// Unix milliseconds of the latest delivery, 0 if none.
    last_at_ms: i64,
}

impl Stats {
    fn new() -> Self {
        Stats {
            received: 0,
            seen: FxHashSet::default(),
            duplicates: 0,
            invalid: 0,
            no_received_at: 0,
            // 1 ms .. 1 day, 3 significant digits.
            latency_ms: Histogram::new_with_bounds(1, 86_400_000, 3)
                .expect("valid histogram bounds"),
            first_at_ms: 0,
            last_at_ms: 0,
        }
    }

    /// Records one delivery whose body is `body` (one event, or a JSON array of them),
    /// received at `now_ms`.
    fn record(&mut self, body: &[u8], now_ms: i64) {
        if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            // One pass over the array; an element that is not an event object makes it
            // fail, and the slower path below counts which ones were invalid.
            if let Ok(events) = serde_json::from_slice::<Vec<Event<'_>>>(body) {
                for e in events {
                    self.record_parsed(Some(e), now_ms);
                }
                return;
            }
            match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body) {
                Ok(events) => {
                    for e in events {
                        self.record_event(e.get().as_bytes(), now_ms);
                    }
                }
                Err(_) => {
                    self.received += 1;
                    self.invalid += 1;
                }
            }
            return;
        }
        self.record_event(body, now_ms);
    }

    /// Records one delivered event.
    fn record_event(&mut self, body: &[u8], now_ms: i64) {
        let event = serde_json::from_slice::<Event<'_>>(body).ok();
        self.record_parsed(event, now_ms);
    }

    /// Records one delivered event, read (`None`: its body was not an event object).
    fn record_parsed(&mut self, event: Option<Event<'_>>, now_ms: i64) {
        self.received += 1;
        if self.first_at_ms == 0 {
            self.first_at_ms = now_ms;
        }
        self.last_at_ms = now_ms;

        let Some(event) = event else {
            self.invalid += 1;
            return;
        };
        let (message_id, received_at) = event.ids();
        let Some(id) = message_id else {
            self.invalid += 1;
            return;
        };
        if !self.seen.insert(xxh3_128(id.as_bytes())) {
            self.duplicates += 1;
        }
        match received_at.and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok()) {
            Some(at) => {
                let ms = (now_ms - at.timestamp_millis()).max(0);
                self.latency_ms
                    .saturating_record(u64::try_from(ms).unwrap_or(0));
            }
            None => self.no_received_at += 1,
        }
    }

    /// The figures as one flat JSON object.
    fn to_json(&self) -> String {
        let h = &self.latency_ms;
        let q = |quantile: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(quantile)
            }
        };
        let unique = self.seen.len() as u64;
        let span_ms = self.last_at_ms - self.first_at_ms;
        let events_per_s = if span_ms > 0 {
            unique as f64 * 1000.0 / span_ms as f64
        } else {
            0.0
        };
        serde_json::json!({
            "received": self.received,
            "unique": unique,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "no_received_at": self.no_received_at,
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "max_ms": if h.is_empty() { 0 } else { h.max() },
            "mean_ms": if h.is_empty() { 0.0 } else { (h.mean() * 10.0).round() / 10.0 },
            "first_at_ms": self.first_at_ms,
            "last_at_ms": self.last_at_ms,
            "events_per_s": events_per_s.round(),
        })
        .to_string()
    }
}

/// Shared, lock-protected statistics. Critical sections are short (a hash
/// lookup and a histogram increment), so a plain mutex is enough.
#[derive(Clone)]
struct State(Arc<Mutex<Stats>>);

impl State {
    fn lock(&self) -> MutexGuard<'_, Stats> {
        // A panic while holding the lock cannot leave the counters unusable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Current time in Unix milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A response with a JSON body.
fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Routes one request.
async fn handle(
    request: Request<Incoming>,
    state: State,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let response = match (method, request.uri().path()) {
        (Method::GET, "/stats") => json(StatusCode::OK, state.lock().to_json()),
        (Method::GET, "/health") => json(StatusCode::OK, "{}"),
        (Method::POST, "/reset") => {
            *state.lock() = Stats::new();
            json(StatusCode::OK, "{}")
        }
        (Method::POST, _) => match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => {
                let body = body.to_bytes();
                state.lock().record(&body, now_ms());
                json(StatusCode::OK, "{}")
            }
            Err(_) => json(
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"error":"body too large or unreadable"}"#,
            ),
        },
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
    };
    Ok(response)
}

/// Accepts connections until SIGTERM or Ctrl-C.
async fn serve(listener: TcpListener, state: State) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sink: cannot listen for SIGTERM: {e}");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. too many open files: back off briefly rather than spin.
                    eprintln!("sink: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, state.clone()));
            // Errors here are peers closing mid-request; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sink: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sink: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        match listener.local_addr() {
            Ok(addr) => eprintln!("sink: listening addr={addr}"),
            Err(e) => {
                eprintln!("sink: no local address: {e}");
                return ExitCode::FAILURE;
            }
        }
        serve(listener, State(Arc::new(Mutex::new(Stats::new())))).await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ids_from_ga4_bodies() {
        let mut s = Stats::new();
        let at = "2024-01-01T00:00:00.000Z";
        let base = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp_millis();
        let body = format!(
            r#"{{"client_id":"c","events":[{{"name":"purchase","params":{{"message_id":"m1","received_at":"{at}","value":3}}}}]}}"#
        );
        s.record(body.as_bytes(), base + 20);
        s.record(
            br#"{"client_id":"c","events":[{"name":"x","params":{}}]}"#,
            base + 30,
        );
        assert_eq!(s.seen.len(), 1);
        assert!(s.seen.contains(&xxh3_128(b"m1")));
        assert_eq!(s.invalid, 1);
        assert_eq!(s.latency_ms.max(), 20);
    }

    #[test]
    fn counts_unique_duplicates_and_latency() {
        let mut s = Stats::new();
        let at = "2024-01-01T00:00:00.000Z";
        let base = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp_millis();
        let a = format!(r#"{{"messageId":"a","userId":"u","receivedAt":"{at}","x":{{"y":[1]}}}}"#);
        let b = format!(r#"{{"messageId":"b\u0041","userId":"u","receivedAt":"{at}"}}"#);
        s.record(a.as_bytes(), base + 10);
        s.record(b.as_bytes(), base + 30);
        s.record(a.as_bytes(), base + 50);
        s.record(b"not json", base + 60);
        s.record(br#"{"messageId":"c"}"#, base + 70);
        assert_eq!(s.received, 5);
        assert_eq!(s.seen.len(), 3);
        assert!(s.seen.contains(&xxh3_128(b"bA")), "the escape is read");
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.invalid, 1);
        assert_eq!(s.no_received_at, 1);
        assert_eq!(s.latency_ms.len(), 3);
        assert_eq!(s.latency_ms.max(), 50);
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["unique"], 3);
        assert_eq!(v["first_at_ms"], base + 10);
        assert_eq!(v["last_at_ms"], base + 70);
    }

    #[test]
    fn an_array_is_counted_per_event_even_with_an_invalid_one() {
        let mut s = Stats::new();
        let at = "2024-01-01T00:00:00.000Z";
        let ms = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp_millis();
        let ok = format!(r#"[{{"messageId":"a","receivedAt":"{at}"}},{{"messageId":"b"}}]"#);
        s.record(ok.as_bytes(), ms + 5);
        assert_eq!((s.received, s.seen.len(), s.invalid), (2, 2, 0));
        let mixed = format!(r#"[{{"messageId":"c","receivedAt":"{at}"}},7,{{"messageId":"a"}}]"#);
        s.record(mixed.as_bytes(), ms + 9);
        assert_eq!((s.received, s.seen.len(), s.invalid), (5, 3, 1));
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.latency_ms.len(), 2);
    }
}
