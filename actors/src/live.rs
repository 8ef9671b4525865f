//! The live view's feed: what the gateway accepted and what each destination answered, as
//! it happens, for the console's live events page. Publishing costs one atomic load while
//! nobody watches; with watchers, the gateway hands over the events it just committed
//! (moved, never copied) and routers a small outcome record, and that is all the request
//! and delivery paths pay: filtering, matching answers to their events and rendering
//! happen in each watcher's own task (`src/http/live.rs`). The channel is bounded: a watcher
//! that falls behind is told so and dropped, never waited for, so a slow browser cannot
//! slow ingestion or delivery. A destination's answer names its messageId and ordering key.
//! The feed also keeps a few recently accepted events (at most ten a second) to try
//! scripts on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

/// Messages the channel holds for the slowest watcher before it is dropped.
const CAPACITY: usize = 4096;
/// How often an accepted event is kept as a sample.
const SAMPLE_EVERY_MS: i64 = 100;

/// Events one request put in `gw_jobs`.
#[derive(Debug)]
pub struct Accepted {
    /// The source's id.
    pub source_id: Arc<str>,
    /// When the gateway received them.
    pub received_at: DateTime<Utc>,
    /// The normalised events, as stored (JSON text; a watcher reads only those it shows or
    /// filters on).
    pub events: Vec<Box<RawValue>>,
}

/// What a destination did with one event.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The destination's id.
    pub destination_id: Arc<str>,
    /// The event's messageId.
    pub message_id: Arc<str>,
    /// Its ordering key (userId, else anonymousId).
    pub key: Arc<str>,
    /// `delivered`, `retrying` or `dead_lettered`.
    pub outcome: &'static str,
    /// The HTTP status (or none for brokers and errors before an answer).
    pub status: Option<u16>,
    /// The error, already redacted (empty when delivered).
    pub error: String,
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// One message of the feed.
#[derive(Debug, Clone)]
pub enum LiveMessage {
    /// A request's events were stored.
    Accepted(Arc<Accepted>),
    /// A destination answered.
    Answered(Arc<Answered>),
}

/// The feed (cheap to clone behind an `Arc`).
#[derive(Debug)]
pub struct LiveFeed {
    tx: broadcast::Sender<LiveMessage>,
    watchers: Arc<AtomicUsize>,
    /// Each destination's latest failure on this node (kept whether watched or not).
    last_failures: Mutex<HashMap<Arc<str>, LastFailure>>,
    /// The newest accepted events (all while watched, else one a second), to try a
    /// transformation on.
    samples: Mutex<std::collections::VecDeque<Sample>>,
    /// Unix second of the last unwatched sample.
    sampled_at: std::sync::atomic::AtomicI64,
}

/// Accepted events kept to try scripts on.
const SAMPLES: usize = 50;

/// One recently accepted event.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// The source's id.
    pub source: String,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The stored event (without `writeKey`).
    pub event: Map<String, Value>,
}

/// A destination's latest failed attempt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastFailure {
    /// What went wrong (redacted), with the status when there was one.
    pub error: String,
    /// The HTTP status, if any.
    pub status: Option<u16>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A subscription; dropping it stops the feed's work when it was the last one.
pub struct Watcher {
    /// The messages, oldest first; `Lagged` means this watcher fell behind.
    pub rx: broadcast::Receiver<LiveMessage>,
    watchers: Arc<AtomicUsize>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveFeed {
    /// A feed nobody watches yet.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self {
            tx,
            watchers: Arc::new(AtomicUsize::new(0)),
            last_failures: Mutex::new(HashMap::new()),
            samples: Mutex::new(std::collections::VecDeque::with_capacity(SAMPLES)),
            sampled_at: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// True at most ten times a second: the caller may keep one event with
    /// [`LiveFeed::sample`].
    pub fn sample_due(&self, now: DateTime<Utc>) -> bool {
        let second = now.timestamp_millis() / SAMPLE_EVERY_MS;
        let last = self.sampled_at.load(Ordering::Relaxed);
        last != second
            && self
                .sampled_at
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Keeps `event` among the recent samples.
    pub fn sample(
        &self,
        source: &Arc<str>,
        received_at: DateTime<Utc>,
        event: &Map<String, Value>,
    ) {
        if let Ok(mut q) = self.samples.lock() {
            if q.len() >= SAMPLES {
                q.pop_front();
            }
            let mut event = event.clone();
            event.remove("writeKey");
            q.push_back(Sample {
                source: source.to_string(),
                received_at,
                event,
            });
        }
    }

    /// The recent samples, newest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|q| q.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Remembers a destination's failed attempt (routers call it for every failure).
    pub fn note_failure(&self, destination_id: &Arc<str>, failure: LastFailure) {
        if let Ok(mut m) = self.last_failures.lock() {
            m.insert(destination_id.clone(), failure);
        }
    }

    /// Every destination's latest failure on this node.
    pub fn last_failures(&self) -> HashMap<String, LastFailure> {
        self.last_failures
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// True while someone watches (publishing is skipped otherwise).
    pub fn watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Starts watching.
    pub fn watch(&self) -> Watcher {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watcher {
            rx: self.tx.subscribe(),
            watchers: self.watchers.clone(),
        }
    }

    /// Publishes stored events (call only when [`LiveFeed::watched`]).
    pub fn accepted(&self, accepted: Accepted) {
        let _ = self.tx.send(LiveMessage::Accepted(Arc::new(accepted)));
    }

    /// Publishes a destination's answer (call only when [`LiveFeed::watched`]).
    pub fn answered(&self, answered: Answered) {
        let _ = self.tx.send(LiveMessage::Answered(Arc::new(answered)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn messages_reach_watchers_and_watchers_are_counted() {
        let feed = LiveFeed::new();
        assert!(!feed.watched());
        let mut w = feed.watch();
        assert!(feed.watched());
        let ev = json!({"messageId": "m1", "type": "track", "event": "Buy", "userId": "u1"});
        feed.accepted(Accepted {
            source_id: Arc::from("s1"),
            received_at: Utc::now(),
            events: vec![serde_json::value::to_raw_value(&ev).expect("json")],
        });
        feed.answered(Answered {
            destination_id: Arc::from("d1"),
            message_id: Arc::from("m1"),
            key: Arc::from("u1"),
            outcome: "delivered",
            status: Some(200),
            error: String::new(),
            attempts: 1,
            at: Utc::now(),
        });
        assert!(matches!(w.rx.recv().await, Ok(LiveMessage::Accepted(_))));
        match w.rx.recv().await {
            Ok(LiveMessage::Answered(a)) => assert_eq!(&*a.key, "u1"),
            other => panic!("{other:?}"),
        }
        drop(w);
        assert!(!feed.watched());
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_so() {
        let feed = LiveFeed::new();
        let mut w = feed.watch();
        for i in 0..(CAPACITY + 10) {
            feed.answered(Answered {
                destination_id: Arc::from("d1"),
                message_id: Arc::from(format!("m{i}").as_str()),
                key: Arc::from("u"),
                outcome: "delivered",
                status: None,
                error: String::new(),
                attempts: 1,
                at: Utc::now(),
            });
        }
        assert!(matches!(
            w.rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
