//! Scale-out tests: several `keel serve` processes on one database, load spread round robin
//! across their gateways, a real local sink. They check what the users and the sink saw
//! (the history checker: nothing acked lost, per-user order kept), and from `leases` /
//! `lease_history` that every partition had one holder at a time and moved in time when a
//! node died, joined or left.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::history::{Load, LoadSpec, Report, Target};
use crate::common::sink::{Sink, SinkMode};
use crate::common::*;

/// Lease TTL the tests run with (seconds): short, so a dead node's partitions move soon.
const TTL: u64 = 4;
const PARTITIONS: usize = 16;

fn node(db: &TestDb, id: &str, sink: &Sink) -> KeelOptions {
    let mut opts = fast_router(KeelOptions::new(db));
    opts.workspace = workspace_with_webhooks(&[("hook", &sink.url, json!({}))]);
    opts.env("KEEL_CLUSTER__NODE_ID", id)
        .env("KEEL_CLUSTER__LEASE_TTL_SECS", &TTL.to_string())
        .env("KEEL_CLUSTER__HEARTBEAT_MS", "500")
}

/// Starts one node per id, in order.
async fn start_nodes(db: &TestDb, sink: &Sink, ids: &[&str]) -> Vec<Keel> {
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(Keel::start(node(db, id, sink)).await);
    }
    nodes
}

/// Stops the users, waits until the sink has everything acked, prints the report and
/// asserts the history checker's guarantees (nothing lost, per-user order, nothing unknown).
async fn finish(load: Load, sink: &Sink, db: &TestDb, what: &str) -> Report {
    let history = load.stop().await;
    let report = history
        .settle(sink, &db.url, "hook", Duration::from_secs(60))
        .await;
    println!("{report}");
    report.assert_guarantees(what);
    report
}

/// Waits until every one of `parts` has a live holder among `to`; returns how long after
/// `since` that was (failing after TTL + 10 s).
async fn wait_moved(db: &TestDb, parts: &[i32], to: &[&str], since: Instant) -> Duration {
    loop {
        let h = holders(db).await;
        if parts
            .iter()
            .all(|p| h[p].as_deref().is_some_and(|o| to.contains(&o)))
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(TTL + 10),
            "partitions {parts:?} did not move to {to:?}: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `keel status` against `db`, with extra arguments.
fn keel_status(db: &TestDb, args: &[&str]) -> std::process::Output {
    keel_command()
        .arg("status")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("keel status")
}

/// Partition → holder with an unexpired lease (`None`: free or expired).
async fn holders(db: &TestDb) -> BTreeMap<i32, Option<String>> {
    db.client()
        .await
        .query(
            "SELECT partition, CASE WHEN expires_at > now() THEN owner END FROM leases ORDER BY partition",
            &[],
        )
        .await
        .expect("leases")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until every partition is held by one of `nodes` and each holds its even share
/// (at most `ceil(P / n)`); returns the holdings.
async fn wait_balanced(
    db: &TestDb,
    nodes: &[&str],
    timeout: Duration,
) -> BTreeMap<String, Vec<i32>> {
    let deadline = Instant::now() + timeout;
    let share = PARTITIONS.div_ceil(nodes.len());
    loop {
        let h = holders(db).await;
        let mut by_node: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (p, owner) in &h {
            if let Some(o) = owner {
                by_node.entry(o.clone()).or_default().push(*p);
            }
        }
        let all_held = h
            .values()
            .all(|o| o.as_deref().is_some_and(|o| nodes.contains(&o)));
        let even = nodes.iter().all(|n| {
            by_node
                .get(*n)
                .is_some_and(|ps| !ps.is_empty() && ps.len() <= share)
        });
        if all_held && even && h.len() == PARTITIONS {
            return by_node;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not balanced over {nodes:?} within {timeout:?}: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks `lease_history`: per partition, each tenure starts only after the previous one
/// ended (released, or its last renewed expiry passed) — never two holders at once.
async fn assert_one_holder_at_a_time(db: &TestDb) -> usize {
    let rows = db
        .client()
        .await
        .query(
            "SELECT partition, epoch, owner, acquired_at, ended_at FROM lease_history ORDER BY partition, epoch",
            &[],
        )
        .await
        .expect("history");
    let mut last: BTreeMap<i32, (i64, String, chrono::DateTime<chrono::Utc>)> = BTreeMap::new();
    for r in &rows {
        let (p, epoch, owner): (i32, i64, String) = (r.get(0), r.get(1), r.get(2));
        let (acquired, ended): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            (r.get(3), r.get(4));
        if let Some((prev_epoch, prev_owner, prev_end)) = last.get(&p) {
            assert!(epoch > *prev_epoch, "partition {p}: epochs must grow");
            assert!(
                acquired >= *prev_end,
                "partition {p}: {owner} acquired it (epoch {epoch}) at {acquired} while {prev_owner} held it until {prev_end}"
            );
        }
        last.insert(p, (epoch, owner, ended));
    }
    rows.len()
}

/// `keel_router_deliveries_total{outcome="delivered"}` summed from a node's `/metrics`.
async fn delivered_by(keel: &Keel) -> f64 {
    keel.metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("keel_router_deliveries_total{") && l.contains("outcome=\"delivered\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn three_nodes_share_the_partitions_and_deliver_everything_in_order() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let ids = ["n1", "n2", "n3"];
    let nodes = start_nodes(&db, &sink, &ids).await;
    let held = wait_balanced(&db, &ids, Duration::from_secs(30)).await;
    println!("holdings: {held:?}");

    let bases: Vec<&str> = nodes.iter().map(|k| k.base.as_str()).collect();
    let target = Target::round_robin(&bases);
    let spec = LoadSpec {
        users: 50,
        batch: 10,
        pause: Duration::ZERO,
    };
    let load = Load::start(&target, spec);
    assert!(
        load.wait_acked(50 * 200, Duration::from_secs(120)).await,
        "10,000 events not acknowledged in time"
    );
    let report = finish(load, &sink, &db, "three nodes").await;
    assert!(report.acked >= 10_000);
    assert_eq!(report.duplicates, 0, "no node changed hands: no duplicate");
    for (id, keel) in ids.iter().zip(&nodes) {
        let n = delivered_by(keel).await;
        println!("{id} delivered {n}");
        assert!(n > 0.0, "{id} delivered nothing: work is not spread");
    }
    let tenures = assert_one_holder_at_a_time(&db).await;
    assert!(tenures >= PARTITIONS);
    // `keel status` shows the three nodes and who holds what.
    let out = keel_status(&db, &["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let listed: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(listed, ids);
    for n in status["nodes"].as_array().expect("nodes") {
        let parts = n["partitions"].as_array().expect("partitions").len();
        assert!((1..=6).contains(&parts), "{n}");
    }
    let text = keel_status(&db, &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("n1") && text.contains("partitions"), "{text}");
}

#[tokio::test]
async fn a_killed_nodes_partitions_move_within_the_lease_ttl_and_nothing_is_lost() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let ids = ["k1", "k2", "k3"];
    let mut nodes = start_nodes(&db, &sink, &ids).await;
    let held = wait_balanced(&db, &ids, Duration::from_secs(30)).await;
    let bases: Vec<String> = nodes.iter().map(|k| k.base.clone()).collect();
    let target = Target::round_robin(&bases.iter().map(String::as_str).collect::<Vec<_>>());
    let load = Load::start(
        &target,
        LoadSpec {
            users: 20,
            batch: 10,
            pause: Duration::from_millis(10),
        },
    );
    assert!(load.wait_acked(2_000, Duration::from_secs(60)).await);
    let victim = held["k3"].clone();
    nodes[2].kill();
    let killed = Instant::now();
    target.set_all(&[&bases[0], &bases[1]]);
    let moved = wait_moved(&db, &victim, &["k1", "k2"], killed).await;
    println!("partitions {victim:?} moved {moved:?} after kill -9 (lease TTL {TTL} s)");
    assert!(
        moved <= Duration::from_secs(TTL + 5),
        "moved after {moved:?}, more than the TTL + 5 s"
    );
    assert!(load.wait_acked(2_000, Duration::from_secs(60)).await);
    finish(load, &sink, &db, "kill -9 of one node of three").await;
    assert_one_holder_at_a_time(&db).await;
    wait_balanced(&db, &ids[..2], Duration::from_secs(10)).await;
}

#[tokio::test]
async fn joining_and_leaving_nodes_rebalance_under_load_without_losing_anything() {
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let a = Keel::start(node(&db, "j1", &sink)).await;
    let b = Keel::start(node(&db, "j2", &sink)).await;
    wait_balanced(&db, &["j1", "j2"], Duration::from_secs(30)).await;
    let target = Target::round_robin(&[&a.base, &b.base]);
    let load = Load::start(
        &target,
        LoadSpec {
            users: 20,
            batch: 10,
            pause: Duration::from_millis(10),
        },
    );
    assert!(load.wait_acked(2_000, Duration::from_secs(60)).await);
    // A third node joins: the others hand partitions over (finishing their in-flight
    // deliveries first) until each holds at most ceil(16 / 3) = 6.
    let c = Keel::start(node(&db, "j3", &sink)).await;
    target.set_all(&[&a.base, &b.base, &c.base]);
    let joined = Instant::now();
    let held = wait_balanced(&db, &["j1", "j2", "j3"], Duration::from_secs(30)).await;
    println!("rebalanced in {:?}: {held:?}", joined.elapsed());
    assert!(load.wait_acked(2_000, Duration::from_secs(60)).await);
    // One leaves gracefully: its leases are released at shutdown, not left to expire.
    target.set_all(&[&b.base, &c.base]);
    let gone = held["j1"].clone();
    let left = Instant::now();
    // `terminate` waits for the exit on a blocking thread: the sink runs on this runtime
    // and must keep answering meanwhile.
    let a_base = a.base.clone();
    let a_log = a.log.clone();
    let exit = tokio::task::spawn_blocking(move || {
        let mut a = a;
        a.terminate()
    });
    let moved = wait_moved(&db, &gone, &["j2", "j3"], left).await;
    println!("partitions {gone:?} of the leaving node moved {moved:?} after SIGTERM");
    assert_eq!(
        exit.await.expect("join"),
        Some(0),
        "SIGTERM exits 0 ({a_base})"
    );
    // The leave released every lease (none was left to expire) and removed the node row.
    let last_tenures = db
        .client()
        .await
        .query(
            "SELECT DISTINCT ON (partition) partition, released FROM lease_history \
             WHERE owner = 'j1' ORDER BY partition, epoch DESC",
            &[],
        )
        .await
        .expect("lease history");
    let expired: Vec<i32> = last_tenures
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    let shutdown_log = || {
        let log = a_log.lock().expect("log");
        let at = log.find("shutting down").unwrap_or(0);
        log[at..].to_owned()
    };
    assert!(
        expired.is_empty(),
        "partitions {expired:?} of the leaving node were not released; its log:\n{}",
        shutdown_log()
    );
    let node_rows = db
        .count("SELECT count(*) FROM nodes WHERE node_id = 'j1'")
        .await;
    assert_eq!(node_rows, 0, "the leaving node's row is gone");
    assert!(
        moved < Duration::from_secs(TTL),
        "a graceful leave hands over before the TTL ({moved:?}); the leaving node's log:\n{}",
        shutdown_log()
    );
    assert!(load.wait_acked(1_000, Duration::from_secs(60)).await);
    let report = finish(load, &sink, &db, "a node joins, another leaves").await;
    // Hand-overs finish in-flight deliveries first: only a delivery abandoned at a drain
    // deadline could repeat, at most a router's concurrency per hand-over.
    assert!(
        report.duplicates <= 16,
        "{} duplicates beyond in-flight deliveries",
        report.duplicates
    );
    assert_one_holder_at_a_time(&db).await;
}

#[tokio::test]
async fn a_node_cut_off_from_the_database_stops_delivering_before_its_leases_expire() {
    use crate::common::proxy::{Mode, Proxy};
    let db = TestDb::create().await;
    let sink = Sink::start(SinkMode::Ok).await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut cut_off = node(&db, "p1", &sink).env("KEEL_DATABASE__TIMEOUT_SECS", "1");
    cut_off.database_url = Some(db.url_via(&proxy.addr));
    let p1 = Keel::start(cut_off).await;
    let p2 = Keel::start(node(&db, "p2", &sink)).await;
    let held = wait_balanced(&db, &["p1", "p2"], Duration::from_secs(30)).await;
    let target = Target::new(&p2.base);
    let load = Load::start(
        &target,
        LoadSpec {
            users: 20,
            batch: 10,
            pause: Duration::from_millis(10),
        },
    );
    assert!(load.wait_acked(2_000, Duration::from_secs(60)).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered_by(&p1).await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "p1 delivered nothing of its partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every byte between p1 and Postgres is held: p1 can neither renew nor record.
    proxy.set(Mode::Hang);
    let cut = Instant::now();
    let mut last = delivered_by(&p1).await;
    let mut last_growth = cut;
    while cut.elapsed() < Duration::from_secs(TTL + 3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = delivered_by(&p1).await;
        if now > last {
            last = now;
            last_growth = Instant::now();
        }
    }
    let stopped_after = last_growth.duration_since(cut);
    println!(
        "p1 delivered its last event {stopped_after:?} after losing the database (TTL {TTL} s)"
    );
    assert!(
        stopped_after < Duration::from_secs(TTL),
        "p1 still delivered {stopped_after:?} after the cut, when its leases may have passed on"
    );
    let h = holders(&db).await;
    assert!(
        held["p1"].iter().all(|p| h[p].as_deref() == Some("p2")),
        "p2 took p1's partitions: {h:?}"
    );
    // p1 comes back: it takes its share again.
    proxy.set(Mode::Pass);
    wait_balanced(&db, &["p1", "p2"], Duration::from_secs(30)).await;
    assert!(load.wait_acked(1_000, Duration::from_secs(60)).await);
    finish(load, &sink, &db, "a node cut off from the database").await;
    assert_one_holder_at_a_time(&db).await;
}
