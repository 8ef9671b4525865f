//! Row bookkeeping of a router. An `rt_jobs` row holds several jobs (a bundle: one
//! processor commit's jobs of a destination and partition) and goes only when every one of
//! them is delivered or dead-lettered. [`Rows`] counts, per loaded row, its jobs still
//! held, and turns the outcomes of jobs since the last status write into what that write
//! does per row ([`StatusBatch`]): delete whole rows, copy dead letters, or merge marks
//! into the `state` of rows that still wait.
//!
//! Marks that only say "delivered" for a row this router still holds are deferred: a row
//! usually finishes within a few writes and is then deleted whole, so its marks would be
//! written only to be deleted (the marks UPDATE was the largest delivery-side statement).
//! Deferred marks are written with the row's next retry or dead letter, once they are
//! `mark_delay` old, when more than `max_deferred` jobs wait in them, and all of them
//! before the router lets its rows go (a restart or a drain). Only a crash loses them, and
//! then those jobs are delivered again, as the deliveries of unwritten outcomes are. The
//! router defers only for batching destinations, up to what its requests in flight carry.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::store::{DeadLetter, JobRef, RetryUpdate, StatusBatch};

/// What became of one job.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The destination has it.
    Delivered(JobRef),
    /// It failed and waits for another attempt.
    Retry(RetryUpdate),
    /// Refused for good, or retries spent: to the DLQ.
    Dead(DeadLetter),
}

/// Per loaded row, its jobs not yet delivered or dead-lettered (see the module comment).
#[derive(Debug)]
pub struct Rows {
    left: HashMap<i64, usize>,
    /// Loaded rows whose every job was done already (a write that marked them but did not
    /// delete them): deleted by the next write.
    empty: Vec<i64>,
    /// Delivered marks of held rows not written yet, with when the first was deferred.
    deferred: HashMap<i64, Deferred>,
    /// Jobs in `deferred`.
    deferred_jobs: usize,
    /// Every deferred mark goes with the next write (the rows are about to be let go).
    write_all: bool,
    /// How long a mark may stay deferred.
    mark_delay: Duration,
    /// Jobs that may wait in deferred marks; beyond it the oldest rows' marks are written.
    max_deferred: usize,
}

/// A row's deferred marks.
#[derive(Debug)]
struct Deferred {
    since: Instant,
    marks: Map<String, Value>,
}

impl Default for Rows {
    fn default() -> Self {
        Self::new(Duration::ZERO, 0)
    }
}

/// One row's outcomes within a write.
#[derive(Default)]
struct RowOutcomes {
    marks: Map<String, Value>,
    dead: bool,
    /// A job of the row waits for a retry.
    retry: bool,
}

impl Rows {
    /// Bookkeeping that defers delivered marks up to `mark_delay` and `max_deferred` jobs
    /// (zero: never).
    pub fn new(mark_delay: Duration, max_deferred: usize) -> Self {
        Self {
            left: HashMap::new(),
            empty: Vec::new(),
            deferred: HashMap::new(),
            deferred_jobs: 0,
            write_all: false,
            mark_delay,
            max_deferred,
        }
    }

    /// Changes how many jobs may wait in deferred marks (0: none from now on).
    pub fn set_max_deferred(&mut self, jobs: usize) {
        self.max_deferred = jobs;
    }

    /// A row was loaded with `jobs` jobs still to deliver.
    pub fn loaded(&mut self, row: i64, jobs: usize) {
        if jobs == 0 {
            self.empty.push(row);
        } else {
            self.left.insert(row, jobs);
        }
    }

    /// Rows with nothing left waiting to be deleted.
    pub fn has_empty(&self) -> bool {
        !self.empty.is_empty()
    }

    /// Something the next write must do by `now`: delete rows with nothing left, or write
    /// deferred marks that are due.
    pub fn write_due(&self, now: Instant) -> bool {
        self.has_empty()
            || !self.deferred.is_empty() && self.deferred.values().any(|d| self.due(d.since, now))
    }

    /// Whether marks deferred `since` go with a write at `now`.
    fn due(&self, since: Instant, now: Instant) -> bool {
        self.write_all || now.duration_since(since) >= self.mark_delay
    }

    /// Jobs whose delivered marks are deferred (outcomes a crash would lose).
    pub fn deferred_jobs(&self) -> usize {
        self.deferred_jobs
    }

    /// Has every deferred mark go with the next write (before a drain answers).
    pub fn write_all(&mut self) {
        self.write_all = true;
    }

    /// Forgets every row (the router reloads them): outcomes settled afterwards only mark
    /// their rows, and a reload finds rows whose jobs are all marked and deletes them.
    /// Deferred marks go with the next write, which the reload waits for.
    pub fn clear(&mut self) {
        self.left.clear();
        self.write_all = true;
    }

    /// The write for `outcomes` (in the order they happened): rows whose last jobs are done
    /// go whole (`delivered`, or `finished` when a job of theirs is dead-lettered in this
    /// write); other rows get marks (done, or retry state), and dead jobs are copied.
    pub fn settle(&mut self, outcomes: Vec<Outcome>, now: Instant) -> StatusBatch {
        let mut batch = StatusBatch {
            delivered: std::mem::take(&mut self.empty),
            ..StatusBatch::default()
        };
        let mut rows: BTreeMap<i64, RowOutcomes> = BTreeMap::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Delivered(job) => {
                    self.done(job.row);
                    mark(&mut rows, job, json!(1));
                }
                Outcome::Dead(d) => {
                    self.done(d.job.row);
                    mark(&mut rows, d.job, json!(1));
                    rows.entry(d.job.row).or_default().dead = true;
                    batch.dead.push(d);
                }
                Outcome::Retry(r) => {
                    let state = json!({
                        "a": r.attempts,
                        "n": r.next_attempt_at.timestamp_millis(),
                        "f": r.first_failed_at.timestamp_millis(),
                        "e": r.error,
                    });
                    mark(&mut rows, r.job, state);
                    rows.entry(r.job.row).or_default().retry = true;
                }
            }
        }
        for (row, out) in rows {
            if self.left.get(&row) == Some(&0) {
                self.left.remove(&row);
                self.take_deferred(row);
                if out.dead {
                    batch.finished.push(row);
                } else {
                    batch.delivered.push(row);
                }
            } else if !out.dead
                && !out.retry
                && !self.write_all
                && self.max_deferred > 0
                && self.left.contains_key(&row)
            {
                let d = self.deferred.entry(row).or_insert_with(|| Deferred {
                    since: now,
                    marks: Map::new(),
                });
                let before = d.marks.len();
                d.marks.extend(out.marks);
                self.deferred_jobs += d.marks.len() - before;
            } else {
                let mut marks = self.take_deferred(row).unwrap_or_default();
                // Later outcomes win: a retry after a deferred mark cannot happen (a
                // delivered job is not sent again), but keep the order anyway.
                marks.extend(out.marks);
                batch.marks.push((row, marks));
            }
        }
        self.write_deferred(&mut batch, now);
        batch
    }

    /// Moves the deferred marks that are due into `batch`: all of them after
    /// [`Rows::write_all`], else those older than `mark_delay`, then the oldest rows' while
    /// more than `max_deferred` jobs wait.
    fn write_deferred(&mut self, batch: &mut StatusBatch, now: Instant) {
        if self.deferred.is_empty() {
            self.write_all = false;
            return;
        }
        let mut due: Vec<(Instant, i64)> = self
            .deferred
            .iter()
            .map(|(row, d)| (d.since, *row))
            .collect();
        due.sort_unstable();
        for (since, row) in due {
            if !(self.deferred_jobs > self.max_deferred || self.due(since, now)) {
                break;
            }
            if let Some(marks) = self.take_deferred(row) {
                batch.marks.push((row, marks));
            }
        }
        self.write_all = false;
    }

    /// Removes a row's deferred marks.
    fn take_deferred(&mut self, row: i64) -> Option<Map<String, Value>> {
        let d = self.deferred.remove(&row)?;
        self.deferred_jobs -= d.marks.len();
        Some(d.marks)
    }

    fn done(&mut self, row: i64) {
        if let Some(left) = self.left.get_mut(&row) {
            *left = left.saturating_sub(1);
        }
    }
}

/// Records `state` as the latest of `job` in its row's marks.
fn mark(rows: &mut BTreeMap<i64, RowOutcomes>, job: JobRef, state: Value) {
    rows.entry(job.row)
        .or_default()
        .marks
        .insert(job.index.to_string(), state);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(row: i64, index: i32) -> JobRef {
        JobRef { row, index }
    }

    fn retry(row: i64, index: i32) -> Outcome {
        let t = Utc.timestamp_millis_opt(1_000).unwrap();
        Outcome::Retry(RetryUpdate {
            job: at(row, index),
            attempts: 1,
            next_attempt_at: t,
            first_failed_at: t,
            error: "boom".into(),
        })
    }

    fn dead(row: i64, index: i32) -> Outcome {
        Outcome::Dead(DeadLetter {
            job: at(row, index),
            attempts: 1,
            reason: "refused".into(),
            last_status: Some(400),
            last_response: None,
        })
    }

    #[test]
    fn a_row_goes_whole_once_its_last_job_is_done_and_is_marked_until_then() {
        let mut rows = Rows::default();
        rows.loaded(10, 3);
        rows.loaded(11, 1);
        let b = rows.settle(
            vec![
                Outcome::Delivered(at(10, 0)),
                retry(10, 1),
                Outcome::Delivered(at(11, 0)),
            ],
            Instant::now(),
        );
        assert_eq!(b.delivered, vec![11]);
        assert!(b.finished.is_empty() && b.dead.is_empty());
        assert_eq!(b.marks.len(), 1);
        let marks = Value::Object(b.marks[0].1.clone());
        assert_eq!(b.marks[0].0, 10);
        assert_eq!(marks["0"], json!(1));
        assert_eq!(
            marks["1"],
            json!({"a": 1, "n": 1000, "f": 1000, "e": "boom"})
        );

        // The retried job is delivered, the last one dead-lettered: the row is finished
        // (deleted with the dead letter, under the lease), not marked.
        let b = rows.settle(
            vec![Outcome::Delivered(at(10, 1)), dead(10, 2)],
            Instant::now(),
        );
        assert_eq!(b.finished, vec![10]);
        assert!(b.delivered.is_empty() && b.marks.is_empty());
        assert_eq!(b.dead.len(), 1);
        assert_eq!(b.dead[0].job, at(10, 2));
    }

    #[test]
    fn a_later_outcome_of_a_job_overrides_its_earlier_mark() {
        let mut rows = Rows::default();
        rows.loaded(5, 2);
        let b = rows.settle(
            vec![retry(5, 0), Outcome::Delivered(at(5, 0))],
            Instant::now(),
        );
        let marks = Value::Object(b.marks[0].1.clone());
        assert_eq!(marks, json!({"0": 1}));
    }

    #[test]
    fn rows_not_held_are_only_marked_and_empty_rows_are_deleted() {
        let mut rows = Rows::default();
        rows.loaded(7, 1);
        rows.clear();
        let b = rows.settle(vec![Outcome::Delivered(at(7, 0))], Instant::now());
        assert!(b.delivered.is_empty());
        assert_eq!(b.marks.len(), 1);
        assert_eq!(b.marks[0].0, 7);
        assert_eq!(
            Value::Object(b.marks[0].1.clone()).to_string(),
            r#"{"0":1}"#
        );

        rows.loaded(7, 0);
        assert!(rows.has_empty());
        let b = rows.settle(Vec::new(), Instant::now());
        assert_eq!(b.delivered, vec![7]);
        assert!(!rows.has_empty());
    }

    #[test]
    fn delivered_marks_of_held_rows_wait_and_go_when_due() {
        let t0 = Instant::now();
        let mut rows = Rows::new(Duration::from_secs(1), 3);
        rows.loaded(1, 3);
        rows.loaded(2, 2);
        // Only deliveries of held rows: nothing written yet.
        let b = rows.settle(
            vec![Outcome::Delivered(at(1, 0)), Outcome::Delivered(at(2, 0))],
            t0,
        );
        assert!(b.is_empty(), "{b:?}");
        assert_eq!(rows.deferred_jobs(), 2);
        assert!(!rows.write_due(t0));

        // Row 2 finishes: deleted whole, its deferred mark forgotten. A retry in row 1
        // writes its deferred mark with it.
        let b = rows.settle(vec![Outcome::Delivered(at(2, 1)), retry(1, 1)], t0);
        assert_eq!(b.delivered, vec![2]);
        assert_eq!(b.marks.len(), 1);
        assert_eq!(
            Value::Object(b.marks[0].1.clone()),
            json!({"0": 1, "1": {"a": 1, "n": 1000, "f": 1000, "e": "boom"}})
        );
        assert_eq!(rows.deferred_jobs(), 0);

        // Deferred marks go once they are a second old.
        rows.loaded(3, 4);
        let b = rows.settle(vec![Outcome::Delivered(at(3, 0))], t0);
        assert!(b.marks.is_empty());
        let later = t0 + Duration::from_secs(1);
        assert!(rows.write_due(later));
        let b = rows.settle(Vec::new(), later);
        assert_eq!(b.marks.len(), 1);
        assert_eq!(b.marks[0].0, 3);
        assert!(!rows.write_due(later));

        // More than `max_deferred` (3) jobs waiting: the oldest rows' marks are written.
        rows.loaded(4, 5);
        rows.settle(
            vec![Outcome::Delivered(at(3, 1)), Outcome::Delivered(at(3, 2))],
            later,
        );
        let b = rows.settle(
            vec![Outcome::Delivered(at(4, 0)), Outcome::Delivered(at(4, 1))],
            later + Duration::from_millis(1),
        );
        assert_eq!(b.marks.iter().map(|m| m.0).collect::<Vec<_>>(), vec![3]);
        assert_eq!(rows.deferred_jobs(), 2);

        // Before the rows are let go, every deferred mark is written.
        rows.clear();
        assert!(rows.write_due(later));
        let b = rows.settle(Vec::new(), later);
        assert_eq!(b.marks.iter().map(|m| m.0).collect::<Vec<_>>(), vec![4]);
        assert_eq!(rows.deferred_jobs(), 0);
    }
}
