//! Row bookkeeping of a router. An `rt_jobs` row holds several jobs (a bundle: one
//! processor commit's jobs of a destination and partition) and goes only when every one of
//! them is delivered or dead-lettered. [`Rows`] counts, per loaded row, its jobs still
//! held, and turns the outcomes of jobs since the last status write into what that write
//! does per row ([`StatusBatch`]): delete whole rows, copy dead letters, or merge marks
//! into the `state` of rows that still wait.

use std::collections::{BTreeMap, HashMap};

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
#[derive(Debug, Default)]
pub struct Rows {
    left: HashMap<i64, usize>,
    /// Loaded rows whose every job was done already (a write that marked them but did not
    /// delete them): deleted by the next write.
    empty: Vec<i64>,
}

/// One row's outcomes within a write.
#[derive(Default)]
struct RowOutcomes {
    marks: Map<String, Value>,
    dead: bool,
}

impl Rows {
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
    /// their rows, and a reload finds rows whose jobs are all marked and deletes them.
    pub fn clear(&mut self) {
        self.left.clear();
    }

    /// The write for `outcomes` (in the order they happened): rows whose last jobs are done
    /// go whole (`delivered`, or `finished` when a job of theirs is dead-lettered in this
    /// write); other rows get marks (done, or retry state), and dead jobs are copied.
    pub fn settle(&mut self, outcomes: Vec<Outcome>) -> StatusBatch {
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
                }
            }
        }
        for (row, out) in rows {
            if self.left.get(&row) == Some(&0) {
                self.left.remove(&row);
                if out.dead {
                    batch.finished.push(row);
                } else {
                    batch.delivered.push(row);
                }
            } else {
                batch.marks.push((row, out.marks));
            }
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
        let b = rows.settle(vec![
            Outcome::Delivered(at(10, 0)),
            retry(10, 1),
            Outcome::Delivered(at(11, 0)),
        ]);
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
        let b = rows.settle(vec![Outcome::Delivered(at(10, 1)), dead(10, 2)]);
        assert_eq!(b.finished, vec![10]);
        assert!(b.delivered.is_empty() && b.marks.is_empty());
        assert_eq!(b.dead.len(), 1);
        assert_eq!(b.dead[0].job, at(10, 2));
    }

    #[test]
    fn a_later_outcome_of_a_job_overrides_its_earlier_mark() {
        let mut rows = Rows::default();
        rows.loaded(5, 2);
        let b = rows.settle(vec![retry(5, 0), Outcome::Delivered(at(5, 0))]);
        let marks = Value::Object(b.marks[0].1.clone());
        assert_eq!(marks, json!({"0": 1}));
    }

    #[test]
    fn rows_not_held_are_only_marked_and_empty_rows_are_deleted() {
        let mut rows = Rows::default();
        rows.loaded(7, 1);
        rows.clear();
        let b = rows.settle(vec![Outcome::Delivered(at(7, 0))]);
        assert!(b.delivered.is_empty());
        assert_eq!(b.marks.len(), 1);
        assert_eq!(b.marks[0].0, 7);
        assert_eq!(
            Value::Object(b.marks[0].1.clone()).to_string(),
            r#"{"0":1}"#
        );

        rows.loaded(7, 0);
        assert!(rows.has_empty());
        let b = rows.settle(Vec::new());
        assert_eq!(b.delivered, vec![7]);
        assert!(!rows.has_empty());
    }
}
