//! `keel status`: the cluster as the database sees it — every node with its role, last
//! heartbeat and partitions, and every partition lease with its holder, epoch, age and
//! expiry — as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use keel_actors::store::{LeaseRow, NodeRow, PoolConfig, Store};
use serde_json::json;

/// Reads the cluster state from `url` and renders it (`json`: one JSON document).
/// `ttl_secs` decides which nodes count as live.
pub async fn run(url: &str, ttl_secs: f64, json: bool) -> anyhow::Result<String> {
    let store = Store::connect(url, &PoolConfig::default())?;
    let (nodes, leases) = store
        .cluster_status()
        .await
        .map_err(|e| anyhow::anyhow!("reading the cluster state from the database: {e}"))?;
    Ok(if json {
        render_json(&nodes, &leases, ttl_secs).to_string()
    } else {
        render_text(&nodes, &leases, ttl_secs)
    })
}

fn held_by(leases: &[LeaseRow]) -> BTreeMap<&str, Vec<&LeaseRow>> {
    let mut by: BTreeMap<&str, Vec<&LeaseRow>> = BTreeMap::new();
    for l in leases {
        if let (Some(o), false) = (l.owner.as_deref(), l.expired) {
            by.entry(o).or_default().push(l);
        }
    }
    by
}

fn render_json(nodes: &[NodeRow], leases: &[LeaseRow], ttl_secs: f64) -> serde_json::Value {
    let by = held_by(leases);
    let nodes: Vec<_> = nodes
        .iter()
        .map(|n| {
            let mine = by.get(n.node_id.as_str()).cloned().unwrap_or_default();
            json!({
                "node_id": n.node_id,
                "addr": n.addr,
                "role": n.role,
                "live": n.seen_secs_ago < ttl_secs,
                "started_at": n.started_at,
                "seen_secs_ago": n.seen_secs_ago,
                "partitions": mine.iter().map(|l| l.partition).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "partitions": leases.len(), "nodes": nodes, "leases": leases })
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.1} s"))
}

fn render_text(nodes: &[NodeRow], leases: &[LeaseRow], ttl_secs: f64) -> String {
    let by = held_by(leases);
    let live = nodes.iter().filter(|n| n.seen_secs_ago < ttl_secs).count();
    let mut out = String::new();
    let _ = writeln!(out, "nodes: {} ({live} live)", nodes.len());
    let _ = writeln!(
        out,
        "  {:<24} {:<22} {:<8} {:<6} {:>10}  partitions",
        "node", "address", "role", "live", "last seen"
    );
    for n in nodes {
        let mine = by.get(n.node_id.as_str()).cloned().unwrap_or_default();
        let list: Vec<String> = mine.iter().map(|l| l.partition.to_string()).collect();
        let _ = writeln!(
            out,
            "  {:<24} {:<22} {:<8} {:<6} {:>10}  {} [{}]",
            n.node_id,
            n.addr,
            n.role,
            if n.seen_secs_ago < ttl_secs {
                "yes"
            } else {
                "no"
            },
            format!("{:.1} s ago", n.seen_secs_ago),
            mine.len(),
            list.join(",")
        );
    }
    let held = leases
        .iter()
        .filter(|l| l.owner.is_some() && !l.expired)
        .count();
    let expired = leases.iter().filter(|l| l.expired).count();
    let _ = writeln!(
        out,
        "partitions: {} ({held} held, {expired} expired, {} free)",
        leases.len(),
        leases.len() - held - expired
    );
    let _ = writeln!(
        out,
        "  {:>9}  {:<24} {:>6} {:>10} {:>11}",
        "partition", "holder", "epoch", "held for", "expires in"
    );
    for l in leases {
        let holder = match (&l.owner, l.expired) {
            (Some(o), false) => o.clone(),
            (Some(o), true) => format!("{o} (expired)"),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {:>9}  {:<24} {:>6} {:>10} {:>11}",
            l.partition,
            holder,
            l.epoch,
            secs(l.owner.as_ref().and(l.held_secs)),
            secs(l.expires_in_secs)
        );
    }
    out
}
