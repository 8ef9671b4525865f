//! `loadgen`: a closed-loop HTTP load generator for Keel's Segment-compatible
//! ingestion endpoints (`POST /v1/batch` and `POST /v1/track`).
//!
//! Every worker task owns one keep-alive HTTP/1.1 connection and sends one
//! request at a time, back to back, until the deadline. A first `--warmup`
//! period is sent but not counted; the following `--duration` seconds are
//! measured. Each answered request is tallied by status code, and the latency
//! of every 2xx answer (the acknowledgement latency: Keel answers only after
//! the events are committed) goes into an HDR histogram.
//!
//! Non-2xx answers are counted and do not stop the run; on 429/503 a worker
//! waits for `Retry-After` (capped at one second) before its next request.
//! Transport failures and timeouts are counted as `errors` and the worker
//! reconnects. The run always ends by itself: every step of a worker is bounded
//! by `--timeout`, and the whole run by warm-up + duration + timeout + a grace.
//!
//! Output is a human-readable summary on stderr and, with `--json`, one JSON
//! line on stdout, for scripts such as `scripts/bench.sh`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Closed-loop HTTP load generator for Keel's /v1/batch and /v1/track"
)]
pub struct Args {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080` (plain HTTP only).
    #[arg(long)]
    pub url: String,

    /// Source write key, sent as the HTTP Basic user with an empty password.
    #[arg(long)]
    pub write_key: String,

    /// Which ingestion endpoint to load.
    #[arg(long, value_enum, default_value_t = Endpoint::Batch)]
    pub endpoint: Endpoint,

    /// Events per `/v1/batch` request (ignored for `track`, which sends one).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Concurrent workers, each with its own keep-alive connection.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Measured period in seconds, after the warm-up.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub duration: u64,

    /// Warm-up period in seconds: sent but not counted in the figures.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup: u64,

    /// Number of distinct userIds to spread the events over.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: u64,

    /// Per-request timeout in seconds (connect, send and read the whole answer).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,

    /// Prefix of every messageId; defaults to one derived from the clock and pid.
    #[arg(long)]
    pub message_prefix: Option<String>,

    /// Also print one JSON line with the figures on stdout.
    #[arg(long)]
    pub json: bool,

    /// Target events/s over all connections (0: as fast as answers come back). Each
    /// worker sends on a fixed schedule (its share of the rate) and, when an answer comes
    /// back late, sends the requests it owes at once until it is on schedule again; so the
    /// offered load stays at the rate while the server keeps up, and the figures show it
    /// when it does not.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,

    /// Send a mixed stream (per 100 events: 70 tracks of three event names, 10 identify,
    /// 10 page, 5 screen, 3 group, 2 alias) instead of tracks only.
    #[arg(long)]
    pub mix: bool,
}

/// The ingestion endpoint under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Endpoint {
    /// `POST /v1/batch` with `--batch-size` events per request.
    Batch,
    /// `POST /v1/track` with a single event per request.
    Track,
}

impl Endpoint {
    /// Request path of the endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Batch => "/v1/batch",
            Endpoint::Track => "/v1/track",
        }
    }

    /// Name used in the output.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Batch => "batch",
            Endpoint::Track => "track",
        }
    }
}

/// Settings shared (read-only) by every worker.
struct Plan {
    addr: String,
    host: HeaderValue,
    auth: HeaderValue,
    endpoint: Endpoint,
    events_per_request: u64,
    users: u64,
    prefix: String,
    mix: bool,
    warmup_end: Instant,
    deadline: Instant,
    timeout: Duration,
    /// Workers, one connection each.
    connections: u32,
    /// Time between two requests of one worker, when `--rate` is set.
    interval: Option<Duration>,
}

/// What one worker observed; merged into the run's totals at the end.
struct Tally {
    /// Latency in microseconds of 2xx answers in the measured window.
    latency_us: Histogram<u64>,
    /// Answers per status code in the measured window.
    status: BTreeMap<u16, u64>,
    /// Answers of any status in the measured window.
    requests: u64,
    /// Events in 2xx answers in the measured window.
    events: u64,
    /// Transport errors and timeouts in the measured window.
    errors: u64,
    /// Requests answered during the warm-up.
    warmup_requests: u64,
    /// Events in 2xx answers over the whole run, warm-up included.
    acked_events_total: u64,
    /// Events in requests whose outcome is unknown (sent, then an error or a
    /// timeout): the server may or may not have stored them.
    unknown_events_total: u64,
    /// Transport errors and timeouts over the whole run.
    errors_total: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            // 1 µs .. 10 min, 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds"),
            status: BTreeMap::new(),
            requests: 0,
            events: 0,
            errors: 0,
            warmup_requests: 0,
            acked_events_total: 0,
            unknown_events_total: 0,
            errors_total: 0,
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
        for (code, n) in &other.status {
            *self.status.entry(*code).or_default() += n;
        }
        self.requests += other.requests;
        self.events += other.events;
        self.errors += other.errors;
        self.warmup_requests += other.warmup_requests;
        self.acked_events_total += other.acked_events_total;
        self.unknown_events_total += other.unknown_events_total;
        self.errors_total += other.errors_total;
    }
}

/// Small xorshift generator: enough to spread userIds, no dependency needed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Appends one event as JSON to `buf`: a track, or with `--mix` the type `seq` selects.
fn push_event(buf: &mut String, plan: &Plan, worker: u32, seq: u64, rng: &mut XorShift, ts: &str) {
    let user = rng.next() % plan.users;
    let cents = rng.next() % 100_000;
    let sku = rng.next() % 500;
    let prefix = &plan.prefix;
    let common = format!(
        r#""userId":"user-{user}","messageId":"{prefix}-{worker}-{seq}","context":{{"library":{{"name":"loadgen","version":"0.1"}}}},"originalTimestamp":"{ts}","sentAt":"{ts}""#
    );
    // Every string written here is known to need no JSON escaping, except the
    // prefix, which `main` checks.
    let kind = if plan.mix { seq % 100 } else { 0 };
    let _ = match kind {
        0..=69 => {
            let event = ["Order Completed", "Product Viewed", "Cart Updated"][(seq % 3) as usize];
            write!(
                buf,
                r#"{{"type":"track","event":"{event}",{common},"properties":{{"revenue":{units}.{frac:02},"currency":"EUR","sku":"sku-{sku}","quantity":{q}}}}}"#,
                units = cents / 100,
                frac = cents % 100,
                q = sku % 7 + 1,
            )
        }
        70..=79 => write!(
            buf,
            r#"{{"type":"identify",{common},"traits":{{"email":"user-{user}@example.com","plan":"plan-{p}","logins":{sku}}}}}"#,
            p = sku % 4,
        ),
        80..=89 => write!(
            buf,
            r#"{{"type":"page",{common},"name":"Pricing","properties":{{"url":"https://example.com/p/{sku}","referrer":"https://search.example"}}}}"#
        ),
        90..=94 => write!(
            buf,
            r#"{{"type":"screen",{common},"name":"Home","properties":{{"tab":"t{sku}"}}}}"#
        ),
        95..=97 => write!(
            buf,
            r#"{{"type":"group",{common},"groupId":"g-{g}","traits":{{"name":"Group {g}","seats":{sku}}}}}"#,
            g = sku % 50,
        ),
        _ => write!(
            buf,
            r#"{{"type":"alias",{common},"previousId":"anon-{user}"}}"#
        ),
    };
}

/// Builds the body of the next request, advancing the worker's message counter.
fn build_body(plan: &Plan, worker: u32, seq: &mut u64, rng: &mut XorShift) -> String {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut buf = String::with_capacity(64 + 420 * plan.events_per_request as usize);
    match plan.endpoint {
        Endpoint::Track => {
            push_event(&mut buf, plan, worker, *seq, rng, &ts);
            *seq += 1;
        }
        Endpoint::Batch => {
            buf.push_str(r#"{"batch":["#);
            for i in 0..plan.events_per_request {
                if i > 0 {
                    buf.push(',');
                }
                push_event(&mut buf, plan, worker, *seq, rng, &ts);
                *seq += 1;
            }
            let _ = write!(buf, r#"],"sentAt":"{ts}"}}"#);
        }
    }
    buf
}

/// Opens one keep-alive HTTP/1.1 connection; its driver runs on its own task
/// and ends when the `SendRequest` half is dropped or the peer closes.
async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Parses a `Retry-After` given in seconds; HTTP dates are treated as 1 s.
fn retry_after(value: Option<&HeaderValue>) -> Duration {
    value
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().parse::<f64>().unwrap_or(1.0))
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(1.0)))
        .unwrap_or(Duration::from_millis(100))
}

/// One worker: a single connection, one request in flight, until the deadline.
async fn worker(plan: std::sync::Arc<Plan>, id: u32) -> Tally {
    let mut tally = Tally::new();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut seq: u64 = 0;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (u64::from(id) + 1).wrapping_mul(0x2545_F491));
    let mut first_error_reported = false;
    // With a rate, worker `id` sends its requests at start + (k + id/connections) · interval.
    let mut next_send = plan
        .interval
        .map(|i| Instant::now() + i.mul_f64(f64::from(id) / f64::from(plan.connections)));

    while Instant::now() < plan.deadline {
        if let (Some(at), Some(interval)) = (next_send.as_mut(), plan.interval) {
            if *at >= plan.deadline {
                break;
            }
            tokio::time::sleep_until((*at).into()).await;
            *at += interval;
        }
        let measured = Instant::now() >= plan.warmup_end;

        // (Re)connect when there is no usable connection.
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match tokio::time::timeout(plan.timeout, connect(&plan.addr)).await {
                Ok(Ok(s)) => sender = Some(s),
                outcome => {
                    let msg = match outcome {
                        Ok(Err(e)) => e,
                        _ => "connect timed out".to_string(),
                    };
                    if !first_error_reported && id == 0 {
                        eprintln!("loadgen: worker 0: {msg}");
                        first_error_reported = true;
                    }
                    tally.errors_total += 1;
                    if measured {
                        tally.errors += 1;
                    }
                    sleep_until_at_most(Duration::from_millis(50), plan.deadline).await;
                    continue;
                }
            }
        }
        let Some(conn) = sender.as_mut() else {
            continue;
        };

        let body = build_body(&plan, id, &mut seq, &mut rng);
        let request = Request::builder()
            .method(Method::POST)
            .uri(plan.endpoint.path())
            .header(HOST, plan.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, plan.auth.clone())
            .body(Full::new(Bytes::from(body)))
            .expect("request parts are valid");

        let started = Instant::now();
        let measured = started >= plan.warmup_end;
        let outcome = tokio::time::timeout(plan.timeout, async {
            conn.ready().await.map_err(|e| e.to_string())?;
            let response = conn
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let wait = retry_after(response.headers().get(RETRY_AFTER));
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((status, wait))
        })
        .await;
        let elapsed = started.elapsed();

        match outcome {
            Ok(Ok((status, wait))) => {
                let ok = status.is_success();
                if ok {
                    tally.acked_events_total += plan.events_per_request;
                }
                if measured {
                    tally.requests += 1;
                    *tally.status.entry(status.as_u16()).or_default() += 1;
                    if ok {
                        tally.events += plan.events_per_request;
                        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                        tally.latency_us.saturating_record(us.max(1));
                    }
                } else {
                    tally.warmup_requests += 1;
                }
                if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE
                {
                    sleep_until_at_most(wait, plan.deadline).await;
                }
            }
            failed => {
                if !first_error_reported && id == 0 {
                    let msg = match failed {
                        Ok(Err(e)) => e,
                        _ => format!("request timed out after {:?}", plan.timeout),
                    };
                    eprintln!("loadgen: worker 0: {msg}");
                    first_error_reported = true;
                }
                tally.unknown_events_total += plan.events_per_request;
                tally.errors_total += 1;
                if measured {
                    tally.errors += 1;
                }
                // The connection is in an unknown state: start afresh.
                sender = None;
            }
        }
    }
    tally
}

/// Sleeps for `wait`, but not past `deadline`.
async fn sleep_until_at_most(wait: Duration, deadline: Instant) {
    let until = (Instant::now() + wait).min(deadline);
    tokio::time::sleep_until(until.into()).await;
}

/// Milliseconds with microsecond resolution, for a histogram value in µs.
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();

    let uri: Uri = match args.url.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("loadgen: bad --url {:?}: {e}", args.url);
            return ExitCode::from(2);
        }
    };
    if uri.scheme_str() != Some("http") {
        eprintln!("loadgen: --url must be plain http://HOST:PORT");
        return ExitCode::from(2);
    }
    let Some(authority) = uri.authority().cloned() else {
        eprintln!("loadgen: --url has no host");
        return ExitCode::from(2);
    };
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );

    let prefix = args.message_prefix.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("lg{:x}{:x}", nanos, std::process::id())
    });
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        eprintln!("loadgen: --message-prefix may hold only [A-Za-z0-9._-]");
        return ExitCode::from(2);
    }

    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", args.write_key));
    let Ok(auth) = HeaderValue::from_str(&format!("Basic {credentials}")) else {
        eprintln!("loadgen: write key cannot go in a header");
        return ExitCode::from(2);
    };
    let host = HeaderValue::from_str(authority.as_str()).expect("authority is a valid header");

    let events_per_request = match args.endpoint {
        Endpoint::Batch => u64::from(args.batch_size),
        Endpoint::Track => 1,
    };
    let timeout = Duration::from_secs(args.timeout);
    let interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(
            (events_per_request * u64::from(args.connections)) as f64 / args.rate as f64,
        )
    });
    let start = Instant::now();
    let warmup_end = start + Duration::from_secs(args.warmup);
    let deadline = warmup_end + Duration::from_secs(args.duration);
    let plan = std::sync::Arc::new(Plan {
        addr,
        host,
        auth,
        endpoint: args.endpoint,
        events_per_request,
        users: args.users,
        prefix,
        mix: args.mix,
        warmup_end,
        deadline,
        timeout,
        connections: args.connections,
        interval,
    });

    eprintln!(
        "loadgen: {} {}{} | {} connections | {} events/request | {} | warm-up {} s + {} s measured",
        plan.endpoint.name(),
        args.url.trim_end_matches('/'),
        plan.endpoint.path(),
        args.connections,
        events_per_request,
        if args.rate > 0 {
            format!("{} events/s offered", args.rate)
        } else {
            "closed loop".to_string()
        },
        args.warmup,
        args.duration,
    );

    let handles: Vec<_> = (0..args.connections)
        .map(|id| tokio::spawn(worker(plan.clone(), id)))
        .collect();

    // Every worker step is bounded by `timeout`; this is a last safety net.
    let hard_stop = deadline + timeout * 2 + Duration::from_secs(5);
    let mut total = Tally::new();
    let mut lost_workers = 0u64;
    for handle in handles {
        let abort = handle.abort_handle();
        match tokio::time::timeout_at(hard_stop.into(), handle).await {
            Ok(Ok(t)) => total.merge(&t),
            Ok(Err(_)) => lost_workers += 1,
            Err(_) => {
                abort.abort();
                lost_workers += 1;
            }
        }
    }
    let finished = Instant::now();
    if lost_workers > 0 {
        eprintln!(
            "loadgen: {lost_workers} worker(s) did not finish cleanly; their figures are lost"
        );
        total.errors += lost_workers;
        total.errors_total += lost_workers;
    }

    // The measured window runs from the end of the warm-up until the last
    // in-flight request came back.
    let window = finished
        .saturating_duration_since(warmup_end)
        .as_secs_f64()
        .max(1e-9);
    let requests_per_s = total.requests as f64 / window;
    let events_per_s = total.events as f64 / window;
    let hist = &total.latency_us;
    let (p50, p99, max) = if hist.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            ms(hist.value_at_quantile(0.50)),
            ms(hist.value_at_quantile(0.99)),
            ms(hist.max()),
        )
    };

    let status_line = total
        .status
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!("loadgen: measured {window:.2} s");
    eprintln!(
        "  requests   {:>12} ({requests_per_s:.1}/s)   status {{{status_line}}}   errors {}",
        total.requests, total.errors
    );
    eprintln!("  events ok  {:>12} ({events_per_s:.1}/s)", total.events);
    eprintln!("  ack latency p50 {p50:.2} ms   p99 {p99:.2} ms   max {max:.2} ms");
    eprintln!(
        "  whole run: {} events acked (warm-up included), {} events of unknown outcome, {} errors",
        total.acked_events_total, total.unknown_events_total, total.errors_total
    );

    if args.json {
        let status: serde_json::Map<String, serde_json::Value> = total
            .status
            .iter()
            .map(|(code, n)| (code.to_string(), serde_json::Value::from(*n)))
            .collect();
        let line = serde_json::json!({
            "endpoint": plan.endpoint.name(),
            "connections": args.connections,
            "batch_size": events_per_request,
            "rate": args.rate,
            "duration_s": (window * 1000.0).round() / 1000.0,
            "requests": total.requests,
            "events": total.events,
            "requests_per_s": (requests_per_s * 10.0).round() / 10.0,
            "events_per_s": (events_per_s * 10.0).round() / 10.0,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": max,
            "status": status,
            "errors": total.errors,
            "warmup_requests": total.warmup_requests,
            "acked_events_total": total.acked_events_total,
            "unknown_events_total": total.unknown_events_total,
            "errors_total": total.errors_total,
        });
        println!("{line}");
    }
    ExitCode::SUCCESS
}
