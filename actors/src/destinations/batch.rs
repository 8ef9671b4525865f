//! Batched delivery settings: how many stored payloads a router may hand a kind at once
//! (`maxBatchSize`), how many bytes of them (`maxBatchBytes`), and how long a partial batch
//! may wait for more (`maxBatchWaitMs`). Kinds that batch (a webhook with `batch: true`, a
//! destination script exporting `batch`) read these keys from their destination's config;
//! the router only enforces the limits it is given.

use std::time::Duration;

use serde_json::{Map, Value};

use super::ConfigError;

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
    /// strings as RudderStack's UI stores them) from a destination's config.
    pub fn from_config(
        destination: &str,
        config: &Map<String, Value>,
    ) -> Result<Self, ConfigError> {
        let number = |field: &str, min: u64, max: u64| -> Result<Option<u64>, ConfigError> {
            let bad = |problem: String| ConfigError {
                destination: destination.to_owned(),
                field: field.to_owned(),
                problem,
            };
            let n = match config.get(field) {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                Some(_) => None,
            };
            match n {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(bad(format!(
                    "must be a whole number from {min} to {max}, got {}",
                    config.get(field).map_or_else(String::new, Value::to_string)
                ))),
            }
        };
        Ok(Self {
            max_events: number("maxBatchSize", 1, LIMIT_MAX_EVENTS as u64)?.map(|n| n as usize),
            max_bytes: number("maxBatchBytes", 1024, 64 << 20)?.map(|n| n as usize),
            max_wait: number("maxBatchWaitMs", 0, 60_000)?.map(Duration::from_millis),
        })
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

    fn settings(config: Value) -> Result<BatchConfig, ConfigError> {
        let Value::Object(m) = config else {
            unreachable!()
        };
        BatchConfig::from_config("d1", &m)
    }

    #[test]
    fn reads_numbers_and_numeric_strings_and_names_bad_fields() {
        let s = settings(json!({"maxBatchSize": "75", "maxBatchWaitMs": 20})).expect("valid");
        assert_eq!(s.max_events, Some(75));
        assert_eq!(s.max_wait, Some(Duration::from_millis(20)));
        assert_eq!(s.max_bytes, None);
        let e = settings(json!({"maxBatchSize": 0})).expect_err("zero");
        assert_eq!(e.path(), "config.maxBatchSize");
        assert!(settings(json!({"maxBatchWaitMs": "soon"})).is_err());
        assert_eq!(
            settings(json!({"maxBatchSize": ""})).expect("empty"),
            BatchConfig::default()
        );
    }

    #[test]
    fn a_batch_size_of_one_turns_batching_off() {
        let s = settings(json!({"maxBatchSize": 1})).expect("valid");
        assert_eq!(s.limits(100, DEFAULT_MAX_BYTES), None);
        let d = BatchConfig::default().limits(75, 1000).expect("limits");
        assert_eq!(
            (d.max_events, d.max_bytes, d.max_wait),
            (75, 1000, DEFAULT_MAX_WAIT)
        );
    }
}
