//! Per-key ordered queues: the ordering core of a router. Jobs of one ordering key form a
//! FIFO; only a key's head may be dispatched, and only when no other job of that key is in
//! flight, so a later job of a key never overtakes an earlier one. Keys whose head is due
//! wait in `ready` ordered by head id (oldest first across keys); heads waiting for a retry
//! time wait in `delayed`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// What the queues need to know about a job.
pub trait QueuedJob {
    /// Row id: delivery order within a key.
    fn id(&self) -> i64;
    /// Earliest time it may be tried.
    fn due(&self) -> Instant;
    /// Moves the earliest try time.
    fn set_due(&mut self, due: Instant);
}

/// How a dispatched head ended.
pub enum Finish {
    /// Delivered or dead-lettered: remove it, the next job of the key may go.
    Done,
    /// Failed, retry no earlier than this.
    RetryAt(Instant),
}

/// The queues (see the module comment).
pub struct KeyQueues<J> {
    queues: HashMap<Arc<str>, VecDeque<J>>,
    ready: BTreeMap<i64, Arc<str>>,
    delayed: BinaryHeap<Reverse<(Instant, i64, Arc<str>)>>,
    busy: HashSet<Arc<str>>,
    len: usize,
}

impl<J> Default for KeyQueues<J> {
    fn default() -> Self {
        Self {
            queues: HashMap::new(),
            ready: BTreeMap::new(),
            delayed: BinaryHeap::new(),
            busy: HashSet::new(),
            len: 0,
        }
    }
}

impl<J: QueuedJob + Clone> KeyQueues<J> {
    /// Jobs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no job is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a job; jobs must be pushed in id order.
    pub fn push(&mut self, key: Arc<str>, job: J, now: Instant) {
        self.len += 1;
        let queue = self.queues.entry(key.clone()).or_default();
        queue.push_back(job);
        if queue.len() == 1 {
            self.place(key, now);
        }
    }

    fn place(&mut self, key: Arc<str>, now: Instant) {
        let Some(head) = self.queues.get(&key).and_then(|q| q.front()) else {
            return;
        };
        if head.due() <= now {
            self.ready.insert(head.id(), key);
        } else {
            self.delayed.push(Reverse((head.due(), head.id(), key)));
        }
    }

    /// Moves heads whose retry time has come to `ready`.
    pub fn promote(&mut self, now: Instant) {
        while let Some(Reverse((due, id, _))) = self.delayed.peek() {
            if *due > now {
                break;
            }
            let (due, id) = (*due, *id);
            let Some(Reverse((_, _, key))) = self.delayed.pop() else {
                break;
            };
            let current = self.queues.get(&key).and_then(|q| q.front());
            if current.is_some_and(|h| h.id() == id && h.due() == due) && !self.busy.contains(&key)
            {
                self.ready.insert(id, key);
            }
        }
    }

    /// Earliest retry time among waiting heads.
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Whether some head could be dispatched now.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Keys whose head could be dispatched now.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// The head [`Self::take`] would take next.
    pub fn peek(&self) -> Option<&J> {
        let (_, key) = self.ready.first_key_value()?;
        self.queues.get(key)?.front()
    }

    /// Takes the oldest dispatchable head; its key stays blocked until [`Self::finish`].
    pub fn take(&mut self) -> Option<(Arc<str>, J)> {
        let (_, key) = self.ready.pop_first()?;
        let head = self.queues.get(&key)?.front()?.clone();
        self.busy.insert(key.clone());
        Some((key, head))
    }

    /// Ends the dispatch of `key`'s head.
    pub fn finish(&mut self, key: &Arc<str>, how: Finish, now: Instant) {
        self.busy.remove(key);
        let Some(queue) = self.queues.get_mut(key) else {
            return;
        };
        match how {
            Finish::Done => {
                queue.pop_front();
                self.len -= 1;
                if queue.is_empty() {
                    self.queues.remove(key);
                    return;
                }
            }
            Finish::RetryAt(due) => {
                if let Some(head) = queue.front_mut() {
                    head.set_due(due);
                }
            }
        }
        self.place(key.clone(), now);
    }

    /// Changes the head of `key` in place (attempt counters after a failure).
    pub fn update_head(&mut self, key: &Arc<str>, f: impl FnOnce(&mut J)) {
        if let Some(head) = self.queues.get_mut(key).and_then(|q| q.front_mut()) {
            f(head);
        }
    }

    /// Drops everything (a router restart reloads from Postgres).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Clone)]
    struct J(i64, Instant);
    impl QueuedJob for J {
        fn id(&self) -> i64 {
            self.0
        }
        fn due(&self) -> Instant {
            self.1
        }
        fn set_due(&mut self, due: Instant) {
            self.1 = due;
        }
    }

    #[test]
    fn a_failing_head_blocks_only_its_own_key() {
        let now = Instant::now();
        let mut q = KeyQueues::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        q.push(a.clone(), J(1, now), now);
        q.push(b.clone(), J(2, now), now);
        q.push(a.clone(), J(3, now), now);
        let (k1, j1) = q.take().expect("head of a");
        assert_eq!((&*k1, j1.0), ("a", 1));
        let (k2, j2) = q.take().expect("head of b");
        assert_eq!((&*k2, j2.0), ("b", 2));
        assert!(q.take().is_none(), "job 3 waits for job 1 of the same key");
        let later = now + Duration::from_secs(5);
        q.finish(&a, Finish::RetryAt(later), now);
        q.finish(&b, Finish::Done, now);
        q.promote(now);
        assert!(q.take().is_none(), "a's head waits for its retry time");
        assert_eq!(q.next_due(), Some(later));
        q.promote(later);
        let (_, j) = q.take().expect("retried head");
        assert_eq!(j.0, 1, "the failed job goes again before job 3");
        q.finish(&a, Finish::Done, later);
        assert_eq!(q.take().expect("next").1 .0, 3);
        q.finish(&a, Finish::Done, later);
        assert!(q.is_empty());
    }

    /// A router's dispatch loop over the queues, on a paused tokio clock: 40 users × 25
    /// jobs, 8 deliveries in flight, each taking 1–40 ms of virtual time, one in five
    /// failing and retried after 10–200 ms. Every user's jobs are delivered in id order,
    /// never two of a user at once, and nothing is lost or repeated.
    #[tokio::test(start_paused = true)]
    async fn per_user_order_holds_through_failures_and_retries_on_a_paused_clock() {
        use tokio::sync::mpsc;
        // A small deterministic generator (no rand dependency in this crate's tests).
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let now = || tokio::time::Instant::now().into_std();
        let mut q = KeyQueues::default();
        let users: Vec<Arc<str>> = (0..40).map(|u| Arc::from(format!("u{u}"))).collect();
        let mut id = 0;
        for round in 0..25 {
            for u in &users {
                id += 1;
                let _ = round;
                q.push(u.clone(), J(id, now()), now());
            }
        }
        let total = id as usize;
        let (tx, mut rx) = mpsc::unbounded_channel::<(Arc<str>, J, bool)>();
        let mut in_flight: HashSet<Arc<str>> = HashSet::new();
        let mut delivered: HashMap<Arc<str>, Vec<i64>> = HashMap::new();
        let mut done = 0;
        let started = tokio::time::Instant::now();
        while done < total {
            q.promote(now());
            while in_flight.len() < 8 {
                let Some((key, job)) = q.take() else { break };
                assert!(in_flight.insert(key.clone()), "two jobs of {key} in flight");
                let (latency, fails) = (1 + next(40), next(5) == 0);
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                    let _ = tx.send((key, job, fails));
                });
            }
            let answer = match q.next_due() {
                Some(due) if in_flight.is_empty() => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                    continue;
                }
                Some(due) => tokio::select! {
                    a = rx.recv() => a,
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => continue,
                },
                None => rx.recv().await,
            };
            let (key, job, fails) = answer.expect("a delivery answers");
            in_flight.remove(&key);
            if fails {
                let retry = now() + Duration::from_millis(10 + next(190));
                q.finish(&key, Finish::RetryAt(retry), now());
            } else {
                delivered.entry(key.clone()).or_default().push(job.0);
                q.finish(&key, Finish::Done, now());
                done += 1;
            }
        }
        assert!(q.is_empty());
        for (key, ids) in &delivered {
            assert_eq!(ids.len(), 25, "{key}: every job once");
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "{key} out of order: {ids:?}"
            );
        }
        assert_eq!(delivered.len(), 40);
        // Virtual time only: the paused clock jumps over every sleep.
        assert!(started.elapsed() > Duration::from_millis(100));
    }
}
