//! Row bookkeeping of a router. An `rt_jobs` row holds several jobs (a bundle: one
//! processor commit's jobs of a destination and partition) and goes only when every one of
//! them is delivered or dead-lettered. [`Rows`] counts, per loaded row, its jobs still
//! held, and turns the outcomes of jobs since the last status write into what that write
//! does per row ([`StatusBatch`]): delete whole rows, copy dead letters, or merge marks
//! into the `state` of rows that still wait.
//!
//! A delivery batch often ends inside a row, and the next one finishes it: marking the
//! delivered jobs of such a row would update it only for the delete to follow. So marks
//! that only say "delivered" are carried to the next write, while fewer than a limit of
//! jobs are carried (they count as unrecorded outcomes: after a crash they are delivered
//! again) and for at most [`CARRY_FOR`]; a retry or a dead letter writes its row's marks at
//! once.

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

/// How long "delivered" marks are carried at most before they are written.
pub const CARRY_FOR: Duration = Duration::from_secs(1);

/// Per loaded row, its jobs not yet delivered or dead-lettered (see the module comment).
#[derive(Debug, Default)]
pub struct Rows {
    left: HashMap<i64, usize>,
    /// Loaded rows whose every job was done already (a write that marked them but did not
    /// delete them): deleted by the next write.
    empty: Vec<i64>,
    /// "Delivered" marks not written yet, per row.
    carried: BTreeMap<i64, Map<String, Value>>,
    /// Jobs in `carried`.
    carried_jobs: usize,
    /// When the oldest carried mark was first carried.
    carried_since: Option<Instant>,
    /// Jobs that may be carried at most (0: none).
    carry_limit: usize,
    /// Write the carried marks with the next write (a restart or a drain is coming).
    write_carried: bool,
}

/// One row's outcomes within a write.
#[derive(Default)]
struct RowOutcomes {
    marks: Map<String, Value>,
    dead: bool,
    retry: bool,
}

impl Rows {
    /// Bookkeeping that carries up to `carry_limit` jobs' "delivered" marks.
    pub fn new(carry_limit: usize) -> Self {
        Self {
            carry_limit,
            ..Self::default()
        }
    }

    /// Jobs whose "delivered" marks are carried, not written.
    pub fn carried_jobs(&self) -> usize {
        self.carried_jobs
    }

    /// The next write must hold every carried mark (before a drain).
    pub fn write_carried(&mut self) {
        self.write_carried = true;
    }

    /// Something must be written by `now`: a row to delete, or carried marks that are
    /// due.
    pub fn due(&self, now: Instant) -> bool {
        !self.empty.is_empty()
            || self.carried_since.is_some_and(|since| {
                self.write_carried || now.saturating_duration_since(since) >= CARRY_FOR
            })
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

    /// Forgets every row (the router reloads them): outcomes settled afterwards only mark
    /// their rows, carried marks are written with the next write, and a reload finds rows
    /// whose jobs are all marked and deletes them.
    pub fn clear(&mut self) {
        self.left.clear();
        self.write_carried = true;
    }

    /// The write for `outcomes` (in the order they happened): rows whose last jobs are done
    /// go whole (`delivered`, or `finished` when a job of theirs is dead-lettered in this
    /// write); other rows get marks (done, or retry state), and dead jobs are copied.
    pub fn settle(&mut self, outcomes: Vec<Outcome>, now: Instant) -> StatusBatch {
        let mut batch = StatusBatch {
            delivered: std::mem::take(&mut self.empty),
            ..StatusBatch::default()
        };
        let mut rows: BTreeMap<i64, RowOutcomes> = std::mem::take(&mut self.carried)
            .into_iter()
            .map(|(row, marks)| {
                let out = RowOutcomes {
                    marks,
                    ..RowOutcomes::default()
                };
                (row, out)
            })
            .collect();
        let carried_since = self.carried_since.take();
        self.carried_jobs = 0;
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
        // Carry "delivered" marks on while the limits allow; otherwise write them all.
        let delivered_only = |out: &RowOutcomes| !out.dead && !out.retry;
        let waiting: usize = rows
            .iter()
            .filter(|(row, out)| self.left.get(row) != Some(&0) && delivered_only(out))
            .map(|(_, out)| out.marks.len())
            .sum();
        let since = carried_since.unwrap_or(now);
        let carry = !self.write_carried
            && waiting > 0
            && waiting <= self.carry_limit
            && now.saturating_duration_since(since) < CARRY_FOR;
        self.write_carried = false;
        for (row, out) in rows {
            if self.left.get(&row) == Some(&0) {
                self.left.remove(&row);
                if out.dead {
                    batch.finished.push(row);
                } else {
                    batch.delivered.push(row);
                }
            } else if carry && delivered_only(&out) {
                self.carried_jobs += out.marks.len();
                self.carried.insert(row, out.marks);
            } else {
                batch
                    .marks
                    .push((row, Value::Object(out.marks).to_string()));
            }
        }
        if carry {
            self.carried_since = Some(since);
        }
        batch
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
    use std::time::Instant;

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
        let marks: Value = serde_json::from_str(&b.marks[0].1).unwrap();
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
        let marks: Value = serde_json::from_str(&b.marks[0].1).unwrap();
        assert_eq!(marks, json!({"0": 1}));
    }

    #[test]
    fn rows_not_held_are_only_marked_and_empty_rows_are_deleted() {
        let mut rows = Rows::default();
        rows.loaded(7, 1);
        rows.clear();
        let b = rows.settle(vec![Outcome::Delivered(at(7, 0))], Instant::now());
        assert!(b.delivered.is_empty());
        assert_eq!(b.marks, vec![(7, r#"{"0":1}"#.to_string())]);

        rows.loaded(7, 0);
        assert!(rows.has_empty());
        let b = rows.settle(Vec::new(), Instant::now());
        assert_eq!(b.delivered, vec![7]);
        assert!(!rows.has_empty());
    }

    #[test]
    fn delivered_marks_are_carried_within_limits_and_written_when_due() {
        let mut rows = Rows::new(2);
        rows.loaded(1, 3);
        rows.loaded(2, 3);
        let t0 = Instant::now();
        // One delivered job in each row: carried, nothing written.
        let b = rows.settle(
            vec![Outcome::Delivered(at(1, 0)), Outcome::Delivered(at(2, 0))],
            t0,
        );
        assert!(b.is_empty(), "{b:?}");
        assert_eq!(rows.carried_jobs(), 2);
        assert!(!rows.due(t0));
        assert!(rows.due(t0 + CARRY_FOR));
        // Row 1 finishes: it goes whole; row 2's carried mark stays carried.
        let b = rows.settle(
            vec![Outcome::Delivered(at(1, 1)), Outcome::Delivered(at(1, 2))],
            t0,
        );
        assert_eq!(b.delivered, [1]);
        assert!(b.marks.is_empty());
        assert_eq!(rows.carried_jobs(), 1);
        // Over the limit: every carried mark is written with the new ones.
        let b = rows.settle(vec![Outcome::Delivered(at(2, 1))], t0);
        assert!(b.marks.is_empty(), "two jobs are within the limit");
        rows.loaded(3, 2);
        let b = rows.settle(vec![Outcome::Delivered(at(3, 0))], t0);
        assert_eq!(
            b.marks,
            [
                (2, r#"{"0":1,"1":1}"#.to_string()),
                (3, r#"{"0":1}"#.to_string())
            ]
        );
        assert_eq!(rows.carried_jobs(), 0);
        // A retry writes its row's marks at once, carried ones included; so does a drain.
        rows.loaded(4, 3);
        assert!(rows
            .settle(vec![Outcome::Delivered(at(4, 0))], t0)
            .is_empty());
        let b = rows.settle(vec![retry(4, 1)], t0);
        assert_eq!(b.marks.len(), 1);
        assert!(b.marks[0].1.contains(r#""0":1"#), "{:?}", b.marks);
        assert!(rows
            .settle(vec![Outcome::Delivered(at(4, 1))], t0)
            .is_empty());
        rows.write_carried();
        assert!(rows.due(t0));
        let b = rows.settle(Vec::new(), t0);
        assert_eq!(b.marks, [(4, r#"{"1":1}"#.to_string())]);
        assert!(!rows.due(t0 + CARRY_FOR));
    }
}
