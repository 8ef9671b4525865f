//! A real HTTP/1.1 server on 127.0.0.1 that tests start as a destination: it records every
//! request (time, headers, JSON body) and answers according to a mode the test can change —
//! 200, a fixed status, random failures (500 / 429 with Retry-After), never answering, slow
//! answers, connection resets, bytes that are not HTTP, a 200 with a garbage body, or a random
//! mix of these (fault injection for the reliability tests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How the sink answers.
#[derive(Debug, Clone)]
pub enum SinkMode {
    /// 200 to everything.
    Ok,
    /// This status to everything.
    Status(u16),
    /// Randomly: `p500` → 500, `p429` → 429 with `Retry-After: retry_after`, else 200.
    Flaky {
        p500: f64,
        p429: f64,
        retry_after: u32,
    },
    /// Reads the request and never answers.
    Hang,
    /// 400 for events of this userId, 200 for the rest.
    RejectUser(String),
    /// Accepts (recorded with `status` on arrival) but answers only after `delay`.
    Slow {
        /// How long before the answer is written.
        delay: Duration,
        /// The status then.
        status: u16,
    },
    /// 429 with this `Retry-After` (seconds) to everything.
    RetryAfter(u32),
    /// Reads the request and resets the connection (RST) without answering.
    Reset,
    /// Reads the request and answers bytes that are not HTTP, then closes.
    Garbage,
    /// 200 with a body that is neither JSON nor text (counts as delivered).
    GarbageBody,
    /// Each request picks one mode with its probability; the rest get 200.
    Chaos(Vec<(f64, SinkMode)>),
    /// The answer a function gives for (request target, JSON body): status, extra header
    /// lines (`Name: value\r\n`…) and body — a vendor API's own answers.
    Answer(Responder),
}

/// (request target, JSON body) → (status, extra header lines, body).
pub type AnswerFn = dyn Fn(&str, &Value) -> (u16, String, String) + Send + Sync;

/// A function answering requests for [`SinkMode::Answer`].
#[derive(Clone)]
pub struct Responder(pub Arc<AnswerFn>);

impl Responder {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&str, &Value) -> (u16, String, String) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

impl SinkMode {
    /// Resolves random modes (`Chaos`) to the concrete mode for one request.
    fn pick(self) -> SinkMode {
        match self {
            SinkMode::Chaos(modes) => {
                let mut x: f64 = rand::random();
                for (p, m) in modes {
                    if x < p {
                        return m.pick();
                    }
                    x -= p;
                }
                SinkMode::Ok
            }
            other => other,
        }
    }
}

/// One request the sink got.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// Lower-cased header names.
    pub headers: HashMap<String, String>,
    /// The body as JSON (Null if not JSON).
    pub body: Value,
    /// The status the sink answered (0 = none).
    pub status: u16,
    /// Method and request target (`POST /mp/collect?measurement_id=…`).
    pub target: String,
}

/// A running sink.
#[derive(Clone)]
pub struct Sink {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    mode: Arc<Mutex<SinkMode>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    /// Starts a sink.
    pub async fn start(mode: SinkMode) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let sink = Sink {
            url,
            mode: Arc::new(Mutex::new(mode)),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move { s.serve(stream).await });
            }
        });
        sink
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, mode: SinkMode) {
        *self.mode.lock().expect("mode") = mode;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received").clone()
    }

    /// Bodies of requests answered 2xx.
    pub fn delivered(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.body)
            .collect()
    }

    /// Waits until `n` requests were answered 2xx, or `timeout`.
    pub async fn wait_delivered(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self
                .received
                .lock()
                .expect("received")
                .iter()
                .filter(|r| (200..300).contains(&r.status))
                .count();
            if got >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn serve(&self, stream: tokio::net::TcpStream) {
        let (r, mut w) = stream.into_split();
        let mut reader = BufReader::new(r);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let target = line.trim_end().trim_end_matches(" HTTP/1.1").to_owned();
            let mut headers = HashMap::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mode = self.mode.lock().expect("mode").clone().pick();
            let mut delay = Duration::ZERO;
            let mut custom_body: Option<String> = None;
            let mut raw_answer: Option<&[u8]> = None;
            let mut reset = false;
            let (status, extra) = match mode {
                SinkMode::Ok | SinkMode::Chaos(_) => (200, String::new()),
                SinkMode::Slow { delay: d, status } => {
                    delay = d;
                    (status, String::new())
                }
                SinkMode::RetryAfter(secs) => (429, format!("Retry-After: {secs}\r\n")),
                SinkMode::Reset => {
                    reset = true;
                    (0, String::new())
                }
                SinkMode::Garbage => {
                    raw_answer = Some(b"\x00\x17garbage, not HTTP at all\r\n\r\n\xff");
                    (0, String::new())
                }
                SinkMode::GarbageBody => {
                    raw_answer = Some(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 7\r\n\r\n\x00\xff{]\x01\x02\x03",
                    );
                    (200, String::new())
                }
                SinkMode::Status(s) => (s, String::new()),
                SinkMode::Answer(f) => {
                    let (status, extra, text) = (f.0)(&target, &body);
                    custom_body = Some(text);
                    (status, extra)
                }
                SinkMode::Hang => (0, String::new()),
                SinkMode::RejectUser(u) => {
                    if body["userId"] == Value::String(u) {
                        (400, String::new())
                    } else {
                        (200, String::new())
                    }
                }
                SinkMode::Flaky {
                    p500,
                    p429,
                    retry_after,
                } => {
                    let x: f64 = rand::random();
                    if x < p500 {
                        (500, String::new())
                    } else if x < p500 + p429 {
                        (429, format!("Retry-After: {retry_after}\r\n"))
                    } else {
                        (200, String::new())
                    }
                }
            };
            self.received.lock().expect("received").push(Received {
                at: Instant::now(),
                headers,
                body,
                status,
                target,
            });
            if reset {
                if let Ok(stream) = reader.into_inner().reunite(w) {
                    let _ = stream.set_zero_linger();
                }
                return;
            }
            if let Some(bytes) = raw_answer {
                let _ = w.write_all(bytes).await;
                if status == 0 {
                    return;
                }
                continue;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if status == 0 {
                // Never answer; keep the connection open until the client gives up.
                let mut sink = [0u8; 1024];
                while reader.read(&mut sink).await.unwrap_or(0) > 0 {}
                return;
            }
            let text = custom_body.unwrap_or_else(|| {
                if status < 300 {
                    "{\"ok\":true}".into()
                } else {
                    "{\"error\":\"sink says no\"}".into()
                }
            });
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{text}",
                text.len()
            );
            if w.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}
