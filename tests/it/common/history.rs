//! The history checker every fault test uses: simulated users send events through real HTTP
//! (`/v1/batch`, one request at a time per user, each event carrying the user's sequence
//! number), retry a refused request with the same messageIds until it is acknowledged, and
//! record every event sent, whether and when it was acknowledged, and every HTTP answer. Then
//! the checker compares that history with what a local sink received:
//!
//! - **lost**: acknowledged, but neither delivered nor dead-lettered (must be 0);
//! - **order violations**: per user, a first delivery whose sequence number is lower than one
//!   delivered before it (must be 0);
//! - **duplicates**: deliveries beyond the first of a messageId (allowed, counted);
//! - **unknown**: deliveries of events never sent (must be 0).
//!
//! It never decides what Keel should have done from Keel's own tables: acknowledgements come
//! from the HTTP answers, deliveries from the sink.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::sink::{Received, Sink};
use super::{basic, pg, WRITE_KEY};

/// `KEEL_FAULT_LONG=1`: fault tests run their long version (minutes, not seconds).
pub fn long_run() -> bool {
    std::env::var("KEEL_FAULT_LONG").is_ok_and(|v| v == "1")
}

/// The base URLs the users send to, taken in turn (round robin, as a load balancer does);
/// a test points it at a restarted Keel, or at the nodes still alive.
#[derive(Clone)]
pub struct Target(Arc<RwLock<Vec<String>>>, Arc<AtomicUsize>);

impl Target {
    /// A target at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Self {
        Self::round_robin(&[base])
    }

    /// Requests go to `bases` in turn.
    pub fn round_robin(bases: &[&str]) -> Self {
        let bases = bases.iter().map(|b| (*b).to_owned()).collect();
        Self(Arc::new(RwLock::new(bases)), Arc::new(AtomicUsize::new(0)))
    }

    /// Points the users at `base` from their next request on.
    pub fn set(&self, base: &str) {
        self.set_all(&[base]);
    }

    /// Points the users at `bases`, in turn, from their next request on.
    pub fn set_all(&self, bases: &[&str]) {
        *self.0.write().expect("target") = bases.iter().map(|b| (*b).to_owned()).collect();
    }

    fn get(&self) -> String {
        let bases = self.0.read().expect("target");
        let i = self.1.fetch_add(1, Ordering::Relaxed);
        bases[i % bases.len()].clone()
    }
}

/// Shape of the load.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Concurrent users, each one request at a time.
    pub users: usize,
    /// Events per request.
    pub batch: usize,
    /// Pause after each acknowledged request.
    pub pause: Duration,
}

impl fmt::Display for LoadSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} users × /v1/batch of {}, {} ms pause",
            self.users,
            self.batch,
            self.pause.as_millis()
        )
    }
}

/// One event sent.
#[derive(Debug, Clone)]
pub struct SentEvent {
    /// userId.
    pub user: String,
    /// The user's sequence number (also `properties.seq`).
    pub seq: u64,
    /// messageId.
    pub message_id: String,
    /// When the answer 200 arrived; `None` if the event was never acknowledged.
    pub acked_at: Option<Instant>,
}

/// One HTTP answer (or transport failure) a user got.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When it arrived.
    pub at: Instant,
    /// HTTP status; 0 = no answer (connection refused, reset, timeout).
    pub status: u16,
    /// Its `Retry-After` header.
    pub retry_after: Option<String>,
    /// Its body (for error codes).
    pub body: String,
}

/// Load running in the background.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    answers: Arc<Mutex<Vec<Answer>>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<SentEvent>>>,
    /// What was asked for.
    pub spec: LoadSpec,
    /// Prefix of every messageId and userId of this run.
    pub run: String,
}

impl Load {
    /// Starts `spec.users` users sending to `target`.
    pub fn start(target: &Target, spec: LoadSpec) -> Load {
        let run = format!("r{:08x}", rand::random::<u32>());
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(spec.users)
            .build()
            .expect("client");
        let tasks = (0..spec.users)
            .map(|u| {
                let user = format!("{run}-u{u}");
                let (target, stop, acked, answers, client) = (
                    target.clone(),
                    stop.clone(),
                    acked.clone(),
                    answers.clone(),
                    client.clone(),
                );
                tokio::spawn(async move {
                    run_user(user, spec, target, client, stop, acked, answers).await
                })
            })
            .collect();
        Load {
            stop,
            acked,
            answers,
            tasks,
            spec,
            run,
        }
    }

    /// Events acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Every answer so far, in arrival order.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().expect("answers").clone()
    }

    /// Waits until at least `n` more events are acknowledged (or `timeout`).
    pub async fn wait_acked(&self, more: usize, timeout: Duration) -> bool {
        let target = self.acked() + more;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.acked() >= target {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Stops the users (a request in flight finishes; one still refused is given up) and
    /// returns the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        let mut events = Vec::new();
        for t in self.tasks {
            events.extend(t.await.expect("user task"));
        }
        History {
            events,
            answers: self.answers.lock().expect("answers").clone(),
            run: self.run,
        }
    }
}

async fn run_user(
    user: String,
    spec: LoadSpec,
    target: Target,
    client: reqwest::Client,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    answers: Arc<Mutex<Vec<Answer>>>,
) -> Vec<SentEvent> {
    let mut sent = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let first = sent.len();
        let batch: Vec<Value> = (seq..seq + spec.batch as u64)
            .map(|s| {
                let message_id = format!("{user}-{s}");
                sent.push(SentEvent {
                    user: user.clone(),
                    seq: s,
                    message_id: message_id.clone(),
                    acked_at: None,
                });
                json!({"type": "track", "userId": user, "event": "Seq",
                       "messageId": message_id, "properties": {"seq": s}})
            })
            .collect();
        seq += spec.batch as u64;
        let body = json!({ "batch": batch });
        // The same events (same messageIds) until acknowledged, as an SDK retries; after a
        // stop request, give up at the first refusal.
        loop {
            let res = client
                .post(format!("{}/v1/batch", target.get()))
                .header("Authorization", basic(WRITE_KEY))
                .json(&body)
                .send()
                .await;
            let (status, retry_after, text) = match res {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let ra = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    (status, ra, r.text().await.unwrap_or_default())
                }
                Err(_) => (0, None, String::new()),
            };
            let at = Instant::now();
            answers.lock().expect("answers").push(Answer {
                at,
                status,
                retry_after: retry_after.clone(),
                body: text,
            });
            if status == 200 {
                for e in &mut sent[first..] {
                    e.acked_at = Some(at);
                }
                acked.fetch_add(spec.batch, Ordering::Relaxed);
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return sent;
            }
            let wait = retry_after
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(Duration::from_millis(100), |s| {
                    Duration::from_secs(s).min(Duration::from_secs(1))
                });
            tokio::time::sleep(wait).await;
        }
        if !spec.pause.is_zero() {
            tokio::time::sleep(spec.pause).await;
        }
    }
    sent
}

/// Everything the users sent and heard.
pub struct History {
    /// Every event sent, per user in sequence order.
    pub events: Vec<SentEvent>,
    /// Every answer, in arrival order per user (interleaved across users).
    pub answers: Vec<Answer>,
    /// Prefix of this run's ids.
    pub run: String,
}

/// What the checker found for one destination.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Events sent (distinct).
    pub sent: usize,
    /// Events acknowledged with 200.
    pub acked: usize,
    /// Acknowledged events delivered at least once.
    pub delivered: usize,
    /// Events delivered that were never acknowledged (sent while Keel died or refused).
    pub delivered_unacked: usize,
    /// Acknowledged events in the DLQ and never delivered.
    pub dead_lettered: usize,
    /// Acknowledged, never delivered, not dead-lettered.
    pub lost: usize,
    /// Some lost messageIds, for the failure message.
    pub lost_examples: Vec<String>,
    /// Deliveries beyond the first of a messageId.
    pub duplicates: usize,
    /// First deliveries out of a user's sequence order.
    pub order_violations: usize,
    /// Deliveries of messageIds this run never sent.
    pub unknown: usize,
    /// Largest acknowledgement → first delivery delay.
    pub max_delivery_lag: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} acked {} delivered {} (+{} unacked) dead-lettered {} lost {} duplicates {} order violations {} unknown {} max lag {:.1} s",
            self.sent,
            self.acked,
            self.delivered,
            self.delivered_unacked,
            self.dead_lettered,
            self.lost,
            self.duplicates,
            self.order_violations,
            self.unknown,
            self.max_delivery_lag.as_secs_f64()
        )?;
        if !self.lost_examples.is_empty() {
            write!(f, " (lost e.g. {:?})", self.lost_examples)?;
        }
        Ok(())
    }
}

impl Report {
    /// Asserts the guarantees: nothing acknowledged lost, per-user order kept, nothing
    /// delivered that was not sent.
    pub fn assert_guarantees(&self, what: &str) {
        assert!(self.acked > 0, "{what}: nothing was acknowledged: {self}");
        assert_eq!(self.lost, 0, "{what}: acknowledged events lost: {self}");
        assert_eq!(
            self.order_violations, 0,
            "{what}: per-user order broken: {self}"
        );
        assert_eq!(self.unknown, 0, "{what}: unknown deliveries: {self}");
    }
}

impl History {
    /// Events acknowledged.
    pub fn acked(&self) -> usize {
        self.events.iter().filter(|e| e.acked_at.is_some()).count()
    }

    /// Checks what a sink `received` (arrival order; 2xx answers count as delivered)
    /// against this history; `dead` are messageIds in the DLQ for that destination.
    pub fn check(&self, received: &[Received], dead: &HashSet<String>) -> Report {
        let by_id: HashMap<&str, &SentEvent> = self
            .events
            .iter()
            .map(|e| (e.message_id.as_str(), e))
            .collect();
        let mut r = Report {
            sent: self.events.len(),
            acked: self.acked(),
            ..Report::default()
        };
        let mut first_seen: HashSet<&str> = HashSet::new();
        let mut last_seq: HashMap<&str, u64> = HashMap::new();
        for rec in received.iter().filter(|r| (200..300).contains(&r.status)) {
            let Some(id) = rec.body["messageId"].as_str() else {
                r.unknown += 1;
                continue;
            };
            let Some(e) = by_id.get(id) else {
                if id.starts_with(&self.run) {
                    r.unknown += 1;
                }
                continue;
            };
            if !first_seen.insert(e.message_id.as_str()) {
                r.duplicates += 1;
                continue;
            }
            match e.acked_at {
                Some(acked) => {
                    r.delivered += 1;
                    r.max_delivery_lag = r
                        .max_delivery_lag
                        .max(rec.at.saturating_duration_since(acked));
                }
                None => r.delivered_unacked += 1,
            }
            match last_seq.get_mut(e.user.as_str()) {
                Some(last) if *last > e.seq => r.order_violations += 1,
                Some(last) => *last = e.seq,
                None => {
                    last_seq.insert(e.user.as_str(), e.seq);
                }
            }
        }
        for e in self.events.iter().filter(|e| e.acked_at.is_some()) {
            if first_seen.contains(e.message_id.as_str()) {
                continue;
            }
            if dead.contains(&e.message_id) {
                r.dead_lettered += 1;
            } else {
                r.lost += 1;
                if r.lost_examples.len() < 5 {
                    r.lost_examples.push(e.message_id.clone());
                }
            }
        }
        r
    }

    /// Polls `sink` (and the DLQ of `destination` in `db`) until every acknowledged event
    /// is delivered or dead-lettered, or `timeout`; then waits `settle` for stragglers and
    /// returns the final report.
    pub async fn settle(
        &self,
        sink: &Sink,
        db_url: &str,
        destination: &str,
        timeout: Duration,
    ) -> Report {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.check(&sink.received(), &dead_lettered(db_url, destination).await);
            if r.lost == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.check(&sink.received(), &dead_lettered(db_url, destination).await)
    }
}

/// messageIds in the DLQ of `destination` in Keel's database at `db_url`.
pub async fn dead_lettered(db_url: &str, destination: &str) -> HashSet<String> {
    pg(db_url)
        .await
        .query(
            "SELECT message_id FROM dlq_jobs WHERE destination_id = $1",
            &[&destination],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, status: u16) -> Received {
        Received {
            at: Instant::now(),
            headers: HashMap::new(),
            body: json!({ "messageId": id }),
            status,
            target: "POST /hook".into(),
        }
    }

    fn history() -> History {
        let ev = |seq: u64, acked: bool| SentEvent {
            user: "r-u0".into(),
            seq,
            message_id: format!("r-u0-{seq}"),
            acked_at: acked.then(Instant::now),
        };
        History {
            events: vec![ev(0, true), ev(1, true), ev(2, true), ev(3, false)],
            answers: Vec::new(),
            run: "r".into(),
        }
    }

    #[test]
    fn the_checker_finds_loss_reordering_duplicates_and_strangers() {
        let h = history();
        let clean = h.check(
            &[rec("r-u0-0", 200), rec("r-u0-1", 200), rec("r-u0-2", 200)],
            &HashSet::new(),
        );
        assert_eq!(
            (clean.lost, clean.order_violations, clean.duplicates),
            (0, 0, 0)
        );
        let bad = h.check(
            &[
                rec("r-u0-1", 200),
                rec("r-u0-0", 200),
                rec("r-u0-0", 200),
                rec("r-u0-2", 500),
                rec("r-u0-9", 200),
                rec("r-u0-3", 200),
            ],
            &HashSet::new(),
        );
        assert_eq!(bad.lost, 1, "2 was only refused: {bad}");
        assert_eq!(bad.order_violations, 1, "0 after 1: {bad}");
        assert_eq!(bad.duplicates, 1, "{bad}");
        assert_eq!(bad.unknown, 1, "{bad}");
        assert_eq!(bad.delivered_unacked, 1, "{bad}");
        let dlq = h.check(
            &[rec("r-u0-0", 200), rec("r-u0-1", 200)],
            &HashSet::from(["r-u0-2".to_owned()]),
        );
        assert_eq!((dlq.lost, dlq.dead_lettered), (0, 1));
    }
}
