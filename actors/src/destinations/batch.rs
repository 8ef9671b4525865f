//! Batched delivery settings: how many stored payloads a router may hand a kind at once
//! (`maxBatchSize`), how many bytes of them (`maxBatchBytes`), and how long a partial batch
//! may wait for more (`maxBatchWaitMs`). Kinds that batch (a webhook with `batch: true`, a
//! destination script exporting `batch`) read these keys from their destination's config;
//! the router only enforces the limits it is given.

use std::time::Duration;

use serde_json::{Map, Value};

/// What a router may put in one batched delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Payloads per batch at most.
    pub max_events: usize,
    /// Stored payload bytes per batch at most (a single larger payload still goes alone).
    pub max_bytes: usize,
    /// How long a partial batch may wait for more ready jobs while more are being loaded.
    pub max_wait: Duration,
}

/// Payloads per batch unless the destination or its script says otherwise.
pub const DEFAULT_MAX_EVENTS: usize = 100;
/// Stored bytes per batch unless the destination or its script says otherwise.
pub const DEFAULT_MAX_BYTES: usize = 4 << 20;
/// Wait for a fuller batch unless the destination says otherwise.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(50);
/// Largest `maxBatchSize` accepted.
pub const LIMIT_MAX_EVENTS: usize = 10_000;

/// The batch keys a destination's config sets (`None` where it sets none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchConfig {
    /// `maxBatchSize`.
    pub max_events: Option<usize>,
    /// `maxBatchBytes`.
    pub max_bytes: Option<usize>,
    /// `maxBatchWaitMs`.
    pub max_wait: Option<Duration>,
}

impl BatchConfig {
    /// Reads `maxBatchSize`, `maxBatchBytes` and `maxBatchWaitMs` (numbers, or numeric
    /// strings as RudderStack's UI stores them) from a destination's config, which its
    /// schema accepted (ranges included).
    pub fn from_config(config: &Map<String, Value>) -> Self {
        let whole = |key: &str| super::settings::number(config, key).map(|n| n.max(0.0) as u64);
        Self {
            max_events: whole("maxBatchSize").map(|n| n as usize),
            max_bytes: whole("maxBatchBytes").map(|n| n as usize),
            max_wait: whole("maxBatchWaitMs").map(Duration::from_millis),
        }
    }

    /// The limits with these settings over a kind's own defaults; `None` when the batch
    /// size is 1 (nothing to batch).
    pub fn limits(&self, max_events: usize, max_bytes: usize) -> Option<BatchLimits> {
        let limits = BatchLimits {
            max_events: self.max_events.unwrap_or(max_events).max(1),
            max_bytes: self.max_bytes.unwrap_or(max_bytes).max(1),
            max_wait: self.max_wait.unwrap_or(DEFAULT_MAX_WAIT),
        };
        (limits.max_events > 1).then_some(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(config: Value) -> BatchConfig {
        let Value::Object(m) = config else {
            unreachable!()
        };
        BatchConfig::from_config(&m)
    }

    #[test]
    fn reads_numbers_and_numeric_strings() {
        let s = settings(json!({"maxBatchSize": "75", "maxBatchWaitMs": 20}));
        assert_eq!(s.max_events, Some(75));
        assert_eq!(s.max_wait, Some(Duration::from_millis(20)));
        assert_eq!(s.max_bytes, None);
        assert_eq!(
            settings(json!({"maxBatchSize": ""})),
            BatchConfig::default()
        );
    }

    #[test]
    fn every_kind_s_schema_judges_the_batch_keys_numeric_strings_included() {
        for kind in ["WEBHOOK", "AM", "BRAZE"] {
            let first = |c: Value| {
                crate::destinations::settings_problems(kind, c)
                    .into_iter()
                    .find(|f| f.starts_with("maxBatch"))
                    .unwrap_or_default()
            };
            assert_eq!(first(json!({"maxBatchSize": 0})), "maxBatchSize", "{kind}");
            assert_eq!(
                first(json!({"maxBatchSize": "20000"})),
                "maxBatchSize",
                "{kind}"
            );
            assert_eq!(
                first(json!({"maxBatchWaitMs": "soon"})),
                "maxBatchWaitMs",
                "{kind}"
            );
            assert_eq!(
                first(json!({"maxBatchBytes": 10})),
                "maxBatchBytes",
                "{kind}"
            );
        }
    }

    #[test]
    fn a_batch_size_of_one_turns_batching_off() {
        let s = settings(json!({"maxBatchSize": 1}));
        assert_eq!(s.limits(100, DEFAULT_MAX_BYTES), None);
        let d = BatchConfig::default().limits(75, 1000).expect("limits");
        assert_eq!(
            (d.max_events, d.max_bytes, d.max_wait),
            (75, 1000, DEFAULT_MAX_WAIT)
        );
    }
}
