//! `GET /admin/live`: the console's live view as Server-Sent Events (read with `fetch`, so
//! the admin token travels as a Bearer header). Events as the gateway stores them
//! (`event: accepted`) and each destination's answer (`event: answered`), filtered by
//! source, destination, type, event name and userId; at most `max_rate` messages a second
//! per watcher (the rest are counted and reported in `event: stats` each second); write
//! keys never appear. A watcher that falls behind the feed, or whose connection does not
//! take what it is sent, is dropped with `event: dropped`: a slow browser never slows
//! ingestion.
//!
//! Each watcher gathers its messages every [`TICK`] and writes them as one chunk: woken per
//! message, five watchers of a busy node cost a quarter of ingest throughput in thread
//! wake-ups and one write per frame (measured with `scripts/bench.sh`, `BENCH_ONLY=live`);
//! a watcher that is not waiting on the feed is never woken by it. Everything per event
//! happens here, in the watcher's task, never on the request or delivery path: answers are
//! matched to the events a filter let through by messageId (kept per watcher, bounded).

use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use keel_actors::live::{LiveMessage, Watcher};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::mpsc;

use super::admin::authorize;
use super::error::ApiError;
use super::state::AppState;

/// Messages a watcher may be sent per second unless it asks for fewer.
const DEFAULT_RATE: u32 = 200;
/// The most a watcher may ask for.
const MAX_RATE: u32 = 2000;
/// Chunks (one per tick with something to send) queued for one connection before it counts
/// as not keeping up: about three seconds.
const CONNECTION_QUEUE: usize = 64;
/// How often a watcher takes what the feed has for it (the live view's added latency).
const TICK: Duration = Duration::from_millis(50);
/// Why a watcher whose connection does not take what it is sent is dropped.
const SLOW: &str = "the connection does not keep up; reconnect or narrow the filter";

/// Filters of `GET /admin/live` (all optional; an empty value is no filter).
#[derive(Debug, Default, Deserialize)]
pub struct LiveQuery {
    source: Option<String>,
    destination: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    event: Option<String>,
    #[serde(rename = "userId")]
    user_id: Option<String>,
    max_rate: Option<u32>,
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl LiveQuery {
    fn matches(
        &self,
        source: Option<&str>,
        destination: Option<&str>,
        ty: Option<&str>,
        name: Option<&str>,
        user: Option<&str>,
    ) -> bool {
        let ok = |want: Option<&str>, got: Option<&str>| match want {
            None => true,
            Some(w) => got.is_some_and(|g| g.eq_ignore_ascii_case(w)),
        };
        ok(set(&self.source), source)
            && ok(set(&self.destination), destination)
            && ok(set(&self.event_type), ty)
            && ok(set(&self.event), name)
            && ok(set(&self.user_id), user)
    }
}

/// MessageIds of accepted events that passed a watcher's source/type/event filter, so
/// their destinations' answers pass too (answers name only messageId and ordering key).
/// Two generations, so it stays bounded.
#[derive(Default)]
struct Matched {
    current: std::collections::HashSet<std::sync::Arc<str>>,
    previous: std::collections::HashSet<std::sync::Arc<str>>,
}

/// Matching events remembered per generation.
const MATCHED: usize = 20_000;

impl Matched {
    fn insert(&mut self, id: &str) {
        if self.current.len() >= MATCHED {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(std::sync::Arc::from(id));
    }

    fn contains(&self, id: &str) -> bool {
        self.current.contains(id) || self.previous.contains(id)
    }
}

impl LiveQuery {
    /// True when answers can only be matched through the events they answer.
    fn filters_events(&self) -> bool {
        set(&self.source).is_some() || set(&self.event_type).is_some() || set(&self.event).is_some()
    }
}

fn frame(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// The frames one feed message yields for this watcher, at most `budget` of them (what is
/// left of its rate this second); answers how many matching messages the budget left out.
/// Only frames that will be sent are built: a frame costs a copy of the event and its
/// serialisation, and a watcher over its rate must cost the feed next to nothing (a batch
/// of 100 events is 100 frames, and several watchers each filter every batch).
fn render(
    msg: &LiveMessage,
    q: &LiveQuery,
    budget: usize,
    matched: &mut Matched,
    out: &mut Vec<Bytes>,
) -> u64 {
    let mut skipped = 0;
    match msg {
        LiveMessage::Accepted(a) => {
            let source_ok = set(&q.source).is_none_or(|w| w.eq_ignore_ascii_case(&a.source_id));
            // An accepted event belongs to no destination yet.
            if set(&q.destination).is_some() || !source_ok {
                return 0;
            }
            // Without a filter on the events' own fields, every event of the request matches:
            // what the budget leaves out is counted without looking into them.
            let per_event = set(&q.event_type).is_some()
                || set(&q.event).is_some()
                || set(&q.user_id).is_some();
            for (i, e) in a.events.iter().enumerate() {
                if !per_event && out.len() >= budget {
                    skipped += (a.events.len() - i) as u64;
                    break;
                }
                // The gateway stored it, so it reads back as an object.
                let Ok(e) = serde_json::from_str::<Map<String, Value>>(e.get()) else {
                    continue;
                };
                let text = |k: &str| e.get(k).and_then(Value::as_str);
                let name = text("event").or_else(|| text("name"));
                if !q.matches(Some(&a.source_id), None, text("type"), name, text("userId")) {
                    continue;
                }
                if q.filters_events() {
                    if let Some(id) = text("messageId") {
                        matched.insert(id);
                    }
                }
                if out.len() >= budget {
                    skipped += 1;
                    continue;
                }
                let mut event = e.clone();
                event.remove("writeKey");
                out.push(frame(
                    "accepted",
                    &json!({
                        "source": &*a.source_id,
                        "messageId": text("messageId"),
                        "type": text("type"),
                        "name": name,
                        "userId": text("userId"),
                        "anonymousId": text("anonymousId"),
                        "receivedAt": a.received_at,
                        "event": event,
                    }),
                ));
            }
        }
        LiveMessage::Answered(a) => {
            let destination_ok =
                set(&q.destination).is_none_or(|w| w.eq_ignore_ascii_case(&a.destination_id));
            let user_ok = set(&q.user_id).is_none_or(|w| *w == *a.key);
            if !destination_ok || !user_ok {
                return 0;
            }
            if q.filters_events() && !matched.contains(&a.message_id) {
                return 0;
            }
            if out.len() >= budget {
                return 1;
            }
            // The console fills in source, type and name from the accepted event it saw.
            out.push(frame(
                "answered",
                &json!({
                    "destination": &*a.destination_id,
                    "messageId": &*a.message_id,
                    "key": &*a.key,
                    "outcome": a.outcome,
                    "status": a.status,
                    "error": a.error,
                    "attempts": a.attempts,
                    "at": a.at,
                }),
            ));
        }
    }
    skipped
}

/// Moves the feed into one connection's queue until either side stops: every [`TICK`],
/// the messages that arrived meanwhile (rendered within this second's budget) and, once a
/// second, the stats, as one chunk.
async fn pump(mut watcher: Watcher, q: LiveQuery, tx: mpsc::Sender<Bytes>) {
    let rate = q.max_rate.unwrap_or(DEFAULT_RATE).clamp(1, MAX_RATE);
    let (mut shown, mut skipped, mut sent_this_second) = (0u64, 0u64, 0u32);
    let mut second = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frames = Vec::new();
    let mut chunk = Vec::new();
    let mut matched = Matched::default();
    // The last free slot of the queue is kept for `dropped`, so the browser learns why its
    // stream ends.
    let drop_with = |reason: &str| {
        let _ = tx.try_send(frame("dropped", &json!({"reason": reason})));
    };
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let stats_due = second.elapsed() >= Duration::from_secs(1);
        if stats_due {
            second = Instant::now();
            sent_this_second = 0;
        }
        chunk.clear();
        loop {
            match watcher.rx.try_recv() {
                Ok(m) => {
                    frames.clear();
                    let budget = rate.saturating_sub(sent_this_second) as usize;
                    skipped += render(&m, &q, budget, &mut matched, &mut frames);
                    for f in frames.drain(..) {
                        chunk.extend_from_slice(&f);
                        sent_this_second += 1;
                        shown += 1;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => {
                    drop_with(&format!(
                        "fell {n} messages behind the feed; reconnect or narrow the filter"
                    ));
                    return;
                }
                Err(TryRecvError::Closed) => return,
            }
        }
        if stats_due {
            let stats = json!({"shown": shown, "skipped": skipped, "max_rate": rate});
            chunk.extend_from_slice(&frame("stats", &stats));
        }
        if chunk.is_empty() {
            continue;
        }
        if tx.capacity() <= 1 {
            drop_with(SLOW);
            return;
        }
        if tx.try_send(Bytes::copy_from_slice(&chunk)).is_err() {
            return;
        }
    }
}

/// `GET /admin/live?source=&destination=&type=&event=&userId=&max_rate=`.
pub async fn live(
    req: HttpRequest,
    query: web::Query<LiveQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let watcher = state.children.live.watch();
    let (tx, rx) = mpsc::channel::<Bytes>(CONNECTION_QUEUE);
    let _ = tx.try_send(Bytes::from_static(b": keel live feed\n\n"));
    tokio::spawn(pump(watcher, query.into_inner(), tx));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keel_actors::live::Accepted;

    use super::*;

    fn accepted(n: usize) -> LiveMessage {
        let events = (0..n)
            .map(|i| {
                let name = if i.is_multiple_of(2) { "Buy" } else { "View" };
                serde_json::value::to_raw_value(&json!({"messageId": format!("m{i}"),
                    "type": "track", "event": name, "userId": "u1", "writeKey": "secret-key"}))
                .expect("json")
            })
            .collect();
        LiveMessage::Accepted(Arc::new(Accepted {
            source_id: Arc::from("s1"),
            received_at: chrono::Utc::now(),
            events,
        }))
    }

    #[test]
    fn frames_are_built_within_the_budget_and_the_rest_counted_as_skipped() {
        let mut out = Vec::new();
        let all = LiveQuery::default();
        assert_eq!(
            render(&accepted(10), &all, 3, &mut Matched::default(), &mut out),
            7
        );
        assert_eq!(out.len(), 3);
        let text = String::from_utf8_lossy(&out[0]);
        assert!(text.starts_with("event: accepted\ndata: {") && text.contains("\"m0\""));
        assert!(!text.contains("secret-key"), "no write key: {text}");
        // Events the filter leaves out are neither shown nor counted as skipped.
        let buys = LiveQuery {
            event: Some("buy".into()),
            ..LiveQuery::default()
        };
        out.clear();
        assert_eq!(
            render(&accepted(10), &buys, 2, &mut Matched::default(), &mut out),
            3
        );
        assert_eq!(out.len(), 2);
        out.clear();
        assert_eq!(
            render(&accepted(10), &buys, 0, &mut Matched::default(), &mut out),
            5
        );
        assert!(out.is_empty());
        // Another source's events are not this watcher's at all.
        let other = LiveQuery {
            source: Some("s2".into()),
            ..LiveQuery::default()
        };
        assert_eq!(
            render(&accepted(10), &other, 5, &mut Matched::default(), &mut out),
            0
        );
        assert!(out.is_empty());
        let same = LiveQuery {
            source: Some("S1".into()),
            ..LiveQuery::default()
        };
        assert_eq!(
            render(&accepted(10), &same, 0, &mut Matched::default(), &mut out),
            10
        );
    }

    #[test]
    fn answers_pass_a_filter_through_the_events_it_let_through() {
        let buys = LiveQuery {
            event: Some("Buy".into()),
            ..LiveQuery::default()
        };
        let mut matched = Matched::default();
        let mut out = Vec::new();
        render(&accepted(4), &buys, 10, &mut matched, &mut out);
        let answer = |id: &str| {
            LiveMessage::Answered(Arc::new(keel_actors::live::Answered {
                destination_id: Arc::from("d1"),
                message_id: Arc::from(id),
                key: Arc::from("u1"),
                outcome: "delivered",
                status: Some(200),
                error: String::new(),
                attempts: 1,
                at: chrono::Utc::now(),
            }))
        };
        out.clear();
        render(&answer("m0"), &buys, 10, &mut matched, &mut out);
        assert_eq!(out.len(), 1, "m0 is a Buy");
        render(&answer("m1"), &buys, 10, &mut matched, &mut out);
        assert_eq!(out.len(), 1, "m1 is a View");
        let other_user = LiveQuery {
            user_id: Some("u2".into()),
            ..LiveQuery::default()
        };
        render(&answer("m0"), &other_user, 10, &mut matched, &mut out);
        assert_eq!(out.len(), 1, "the answer's key is u1");
    }
}
