//! Process and pool gauges read at scrape time: resident memory, threads and open file
//! descriptors from `/proc/self`, CPU time from `getrusage`, and the Postgres pool's
//! counters. Reading them costs microseconds (procfs is in memory), so `/metrics` refreshes
//! them just before rendering and they are exact at every scrape. Never fails a scrape: a
//! value that cannot be read (not Linux, procfs hidden) is left as it was.

use keel_actors::store::Store;
use keel_actors::telemetry as t;

/// Resident set size in bytes and thread count, from `/proc/self/status`.
fn status_fields() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}

/// User + system CPU time of the process, in seconds.
fn cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let secs = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    Some(secs(usage.user_time()) + secs(usage.system_time()))
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// Sets the process and pool gauges to their current values.
pub fn record(store: &Store) {
    if let Some((rss, threads)) = status_fields() {
        metrics::gauge!(t::PROCESS_RESIDENT_MEMORY_BYTES).set(rss as f64);
        metrics::gauge!(t::PROCESS_THREADS).set(threads as f64);
    }
    if let Some(cpu) = cpu_seconds() {
        // The metrics crate's counters are integers: whole seconds, so a rate over a
        // window of W seconds is exact to within 1/W of a core.
        metrics::counter!(t::PROCESS_CPU_SECONDS_TOTAL).absolute(cpu as u64);
    }
    if let Some(fds) = open_fds() {
        metrics::gauge!(t::PROCESS_OPEN_FDS).set(fds as f64);
    }
    let pool = store.pool_usage();
    metrics::gauge!(t::STORE_POOL_MAX_CONNECTIONS).set(pool.max as f64);
    metrics::gauge!(t::STORE_POOL_OPEN_CONNECTIONS).set(pool.open as f64);
    metrics::gauge!(t::STORE_POOL_IN_USE_CONNECTIONS)
        .set(pool.open.saturating_sub(pool.idle) as f64);
    metrics::gauge!(t::STORE_POOL_WAITING_TASKS).set(pool.waiting as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_stats_from_procfs() {
        let (rss, threads) = status_fields().expect("/proc/self/status");
        assert!(rss > 1024 * 1024, "rss {rss}");
        assert!(threads >= 1);
        let burn: u64 = (0..5_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(burn > 0);
        assert!(cpu_seconds().expect("getrusage") > 0.0);
        assert!(open_fds().expect("/proc/self/fd") >= 3);
    }
}
