//! Where an event belongs: its ordering key (the user it is kept in order for) and the
//! partition that key falls in. Pure functions with no state, shared by the gateway (which
//! stores each request's events per partition), the processor (which gives each delivery
//! job its key) and `keel replay`; the lease keeper (`cluster.rs`) decides which node holds
//! which partition.

use serde_json::{Map, Value};

/// Read access to an event's top-level members: a whole event (`Map`) or the few members
/// the processor reads before it parses the rest (`processor::event::Head`).
pub trait Members {
    /// The member `key`, if present.
    fn member(&self, key: &str) -> Option<&Value>;
}

impl Members for Map<String, Value> {
    fn member(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

/// The ordering key of an event: its `userId`, else its `anonymousId` (strings, or numbers
/// as their JSON text); empty when it has neither.
pub fn ordering_key(event: &impl Members) -> String {
    for k in ["userId", "anonymousId"] {
        match event.member(k) {
            Some(Value::String(s)) if !s.is_empty() => return s.clone(),
            Some(Value::Number(n)) => return n.to_string(),
            _ => {}
        }
    }
    String::new()
}

/// The partition of an ordering key: xxh3-64 of its UTF-8 bytes modulo `partitions`.
/// Every node and every version must agree on it, so it never changes.
pub fn partition_of(key: &str, partitions: u32) -> i32 {
    let p = u64::from(partitions.max(1));
    // The remainder is below `partitions` (a u32), so it fits an i32 for any sane count.
    i32::try_from(xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % p).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `partition_of` of "user-1", "user-2", "anon-3", "42" and "" for 16 partitions.
    const PINNED: [i32; 5] = [9, 4, 13, 1, 2];

    #[test]
    fn partition_of_is_stable_and_in_range() {
        // Pinned values: changing the function would move keys between partitions of a
        // running cluster, so these must never change.
        let pinned: Vec<i32> = ["user-1", "user-2", "anon-3", "42", ""]
            .iter()
            .map(|k| partition_of(k, 16))
            .collect();
        assert_eq!(pinned, PINNED);
        for p in [1u32, 2, 16, 1024] {
            for i in 0..1000 {
                let k = format!("u{i}");
                let got = partition_of(&k, p);
                assert!((0..p as i32).contains(&got));
            }
        }
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn partitions_spread_keys_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[partition_of(&format!("user-{i}"), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn ordering_key_prefers_user_id() {
        let e: Map<String, Value> =
            serde_json::from_str(r#"{"userId":"u","anonymousId":"a"}"#).unwrap();
        assert_eq!(ordering_key(&e), "u");
        let e: Map<String, Value> =
            serde_json::from_str(r#"{"userId":"","anonymousId":"a"}"#).unwrap();
        assert_eq!(ordering_key(&e), "a");
        let e: Map<String, Value> = serde_json::from_str(r#"{"userId":42}"#).unwrap();
        assert_eq!(ordering_key(&e), "42");
    }
}
