//! Fuzzes the warehouse flattener with arbitrary JSON objects as events: never a panic;
//! every table and column name is a valid warehouse identifier (`[a-z0-9_]`, at most 63
//! bytes, not starting with a digit); no row names a column twice; every value that has a
//! column type can be coerced into the type inferred from it.

#![no_main]

use keel_fuzz::warehouse::flatten::rows_for_event;
use keel_fuzz::warehouse::schema::{coerce, infer, MAX_IDENT};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IDENT
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for row in rows_for_event(&event) {
        assert!(valid_ident(&row.table), "table {:?}", row.table);
        let mut seen = std::collections::HashSet::new();
        for (col, v) in &row.values {
            assert!(valid_ident(col), "column {col:?} of {}", row.table);
            assert!(
                seen.insert(col.as_str()),
                "column {col} twice in {}",
                row.table
            );
            if let Some(ty) = infer(v) {
                coerce(v, &ty).unwrap_or_else(|e| panic!("{col}: {v} does not fit {ty:?}: {e}"));
            }
        }
    }
});
