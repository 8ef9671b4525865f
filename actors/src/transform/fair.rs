//! Fair hand-out of calls to the isolate threads. Each script (a destination's, or a user
//! transformation) has its own bounded queue; isolates take from the queues round robin,
//! and while more than one script has work, no script holds more than `isolates - 1`
//! isolates (at least one), so a script that loops or hogs memory until its budget
//! stops it slows only its own calls. A script alone may use every isolate.
//!
//! Senders wait (asynchronously) when their own script's queue is full: back-pressure
//! lands on the caller of that script, never on the others.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{CallError, Script};

/// One call for an isolate thread.
pub(super) struct Job {
    pub script: Arc<Script>,
    /// JSON array of `{e, m}` items.
    pub input: String,
    pub destination: Option<String>,
    /// A destination script's export to call instead of `process` (`batch`,
    /// `batchResponse`, `describe`); its input is a JSON array of arguments.
    pub entry: Option<&'static str>,
    /// The answer text (decoded by the caller, off the isolate thread).
    pub reply: tokio::sync::oneshot::Sender<Result<String, CallError>>,
}

/// How recently a script must have had work to count as competing for isolates.
const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

struct Lane {
    queue: VecDeque<(Job, OwnedSemaphorePermit)>,
    slots: Arc<Semaphore>,
    busy: usize,
    last_work: Instant,
}

struct State {
    lanes: HashMap<u64, Lane>,
    /// Lane keys in round-robin order.
    order: VecDeque<u64>,
    closed: bool,
}

/// The queues (see the module comment).
pub(super) struct FairQueue {
    state: Mutex<State>,
    ready: Condvar,
    isolates: usize,
    per_script: usize,
}

/// An isolate's hold on a call; dropping it frees the script's share.
pub(super) struct Taken<'a> {
    queue: &'a FairQueue,
    key: u64,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let mut st = self.queue.lock();
        if let Some(l) = st.lanes.get_mut(&self.key) {
            l.busy = l.busy.saturating_sub(1);
        }
        drop(st);
        self.queue.ready.notify_all();
    }
}

impl FairQueue {
    /// Queues for `isolates` threads, each script holding at most `per_script` waiting
    /// calls.
    pub(super) fn new(isolates: usize, per_script: usize) -> Self {
        Self {
            state: Mutex::new(State {
                lanes: HashMap::new(),
                order: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            isolates: isolates.max(1),
            per_script: per_script.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` behind its script's earlier calls, waiting while that queue is full.
    pub(super) async fn send(&self, key: u64, job: Job) -> Result<(), Job> {
        let slots = {
            let mut st = self.lock();
            if st.closed {
                return Err(job);
            }
            let per_script = self.per_script;
            if !st.lanes.contains_key(&key) {
                st.order.push_back(key);
            }
            st.lanes
                .entry(key)
                .or_insert_with(|| Lane {
                    queue: VecDeque::new(),
                    slots: Arc::new(Semaphore::new(per_script)),
                    busy: 0,
                    last_work: Instant::now(),
                })
                .slots
                .clone()
        };
        let Ok(permit) = slots.acquire_owned().await else {
            return Err(job);
        };
        let mut st = self.lock();
        if st.closed {
            return Err(job);
        }
        match st.lanes.get_mut(&key) {
            Some(lane) => {
                lane.last_work = Instant::now();
                lane.queue.push_back((job, permit));
            }
            None => return Err(job),
        }
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// The next call for an isolate thread (blocking), or `None` once closed and empty.
    pub(super) fn take(&self) -> Option<(Job, Taken<'_>)> {
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            let competing = st
                .lanes
                .values()
                .filter(|l| !l.queue.is_empty() || now.duration_since(l.last_work) < ACTIVE_WINDOW)
                .count();
            let cap = if competing > 1 {
                (self.isolates - 1).max(1)
            } else {
                self.isolates
            };
            let n = st.order.len();
            let mut picked = None;
            for _ in 0..n {
                let Some(key) = st.order.pop_front() else {
                    break;
                };
                st.order.push_back(key);
                if let Some(l) = st.lanes.get(&key) {
                    if !l.queue.is_empty() && l.busy < cap {
                        picked = Some(key);
                        break;
                    }
                }
            }
            if let Some(key) = picked {
                let lane = st.lanes.get_mut(&key)?;
                let (job, permit) = lane.queue.pop_front()?;
                lane.busy += 1;
                lane.last_work = now;
                drop(permit);
                return Some((job, Taken { queue: self, key }));
            }
            if st.closed && st.lanes.values().all(|l| l.queue.is_empty()) {
                return None;
            }
            // Forget scripts with nothing queued, running or recent (reloads replace them).
            st.lanes.retain(|_, l| {
                !l.queue.is_empty()
                    || l.busy > 0
                    || now.duration_since(l.last_work) < ACTIVE_WINDOW * 60
            });
            let State { lanes, order, .. } = &mut *st;
            order.retain(|k| lanes.contains_key(k));
            // Wake up now and then: a competitor going quiet may lift the cap.
            st = self
                .ready
                .wait_timeout(st, ACTIVE_WINDOW)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Stops taking new calls; isolates finish what is queued, then `take` answers `None`.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(
        n: u64,
    ) -> (
        Job,
        tokio::sync::oneshot::Receiver<Result<String, super::super::CallError>>,
    ) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let script = Arc::new(super::super::Script::new(
            &format!("s{n}"),
            std::path::Path::new("x.js"),
            String::new(),
            super::super::ScriptKind::Transformation,
            Arc::default(),
        ));
        (
            Job {
                script,
                input: String::new(),
                destination: None,
                entry: None,
                reply,
            },
            rx,
        )
    }

    #[tokio::test]
    async fn a_busy_script_leaves_an_isolate_to_the_others() {
        let q = FairQueue::new(2, 8);
        for _ in 0..4 {
            q.send(1, job(1).0).await.ok().expect("queued");
        }
        // Script 1 alone may take both isolates.
        let (_, a) = q.take().expect("first");
        let (_, b) = q.take().expect("second");
        drop(b);
        // Script 2 arrives: script 1 already holds one isolate, so it gets no second.
        q.send(2, job(2).0).await.ok().expect("queued");
        let (j, _c) = q.take().expect("third");
        assert_eq!(j.script.name, "s2");
        drop(a);
    }

    #[tokio::test]
    async fn scripts_are_served_round_robin() {
        let q = FairQueue::new(4, 8);
        for _ in 0..3 {
            q.send(1, job(1).0).await.ok().expect("queued");
        }
        q.send(2, job(2).0).await.ok().expect("queued");
        let first: Vec<String> = (0..2)
            .map(|_| {
                let (j, t) = q.take().expect("job");
                drop(t);
                j.script.name.clone()
            })
            .collect();
        assert!(first.contains(&"s2".to_owned()), "{first:?}");
    }
}
