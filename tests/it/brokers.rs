//! Message-broker destinations (`REDIS`, `RABBITMQ`, `NATS`) against the real brokers on this
//! machine: events from a real SDK arrive complete and in per-user order; a 10 s outage
//! (a TCP proxy between Keel and the broker: 5 s unresponsive, 5 s refusing, then restored;
//! the shared brokers are never stopped) loses nothing and keeps order; bad credentials dead-letter every job with the
//! broker's error. Each test uses its own keys / queue / stream and removes them. A broker
//! that is not running is started with its Debian package's command, or the test fails
//! naming it.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::proxy::{Mode, Proxy};
use crate::common::*;

const REDIS_ADDR: &str = "127.0.0.1:6379";
const RABBITMQ_ADDR: &str = "127.0.0.1:5672";
const NATS_ADDR: &str = "127.0.0.1:4222";

/// Which broker a test drives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Redis,
    RabbitMq,
    Nats,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "Redis",
            Kind::RabbitMq => "RabbitMQ",
            Kind::Nats => "NATS",
        }
    }

    fn addr(self) -> &'static str {
        match self {
            Kind::Redis => REDIS_ADDR,
            Kind::RabbitMq => RABBITMQ_ADDR,
            Kind::Nats => NATS_ADDR,
        }
    }

    fn start_command(self) -> &'static str {
        match self {
            Kind::Redis => "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
            Kind::RabbitMq => "rabbitmq-server -detached",
            Kind::Nats => "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log",
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{:012x}", rand::random::<u64>() >> 16)
}

/// Makes sure the broker answers on its port: starts it if not, else fails naming it.
async fn ensure_running(kind: Kind) {
    let up = || async {
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(kind.addr()),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    };
    if up().await {
        return;
    }
    let cmd = kind.start_command();
    let out = Command::new("sh").arg("-c").arg(cmd).output();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if up().await {
            // A freshly started RabbitMQ opens its port before it accepts logins.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "{} is not running on {} and `{cmd}` did not start it ({out:?}); install the Debian package or start it",
        kind.name(),
        kind.addr()
    );
}

/// A workspace whose test source routes to the given broker destinations `(id, kind, config)`.
fn workspace_with(dests: &[(&str, &str, Value)]) -> Value {
    let dests: Vec<Value> = dests
        .iter()
        .map(|(id, kind, config)| {
            json!({"id": id, "name": format!("Broker {id}"), "enabled": true, "config": config,
                   "destinationDefinition": {"name": kind}})
        })
        .collect();
    json!({"sources": [{"id": SOURCE_ID, "name": "Test", "writeKey": WRITE_KEY, "enabled": true,
                        "destinations": dests}]})
}

/// Where one test's events land in a broker, and how to read them back.
struct Target {
    kind: Kind,
    /// Unique name: key prefix (Redis), queue and routing-key prefix (RabbitMQ), stream
    /// and subject prefix (NATS).
    name: String,
    rabbit: Option<(lapin::Connection, lapin::Channel)>,
    nats: Option<async_nats::jetstream::Context>,
}

impl Target {
    /// Prepares the broker side (queue bound to `amq.topic`; JetStream stream).
    async fn create(kind: Kind) -> Target {
        ensure_running(kind).await;
        let name = unique("keel_it_");
        let mut t = Target {
            kind,
            name,
            rabbit: None,
            nats: None,
        };
        match kind {
            Kind::Redis => {}
            Kind::RabbitMq => {
                use lapin::options::{QueueBindOptions, QueueDeclareOptions};
                use lapin::types::FieldTable;
                let conn = lapin::Connection::connect(
                    &format!("amqp://guest:guest@{RABBITMQ_ADDR}/%2f"),
                    lapin::ConnectionProperties::default(),
                )
                .await
                .expect("connect to RabbitMQ as guest");
                let ch = conn.create_channel().await.expect("channel");
                // A queue a failed test leaves behind expires after 10 idle minutes.
                let mut args = FieldTable::default();
                args.insert(
                    "x-expires".into(),
                    lapin::types::AMQPValue::LongInt(600_000),
                );
                ch.queue_declare(t.name.as_str().into(), QueueDeclareOptions::default(), args)
                    .await
                    .expect("declare queue");
                ch.queue_bind(
                    t.name.as_str().into(),
                    "amq.topic".into(),
                    format!("{}.#", t.name).as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind queue");
                t.rabbit = Some((conn, ch));
            }
            Kind::Nats => {
                let client = async_nats::connect(NATS_ADDR).await.expect("connect NATS");
                let js = async_nats::jetstream::new(client);
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: t.name.clone(),
                    subjects: vec![format!("{}.>", t.name)],
                    ..Default::default()
                })
                .await
                .expect("create JetStream stream (is nats-server running with -js?)");
                t.nats = Some(js);
            }
        }
        t
    }

    /// The destination config pointing at `addr` (the broker or a proxy to it).
    fn config(&self, addr: &str) -> Value {
        match self.kind {
            Kind::Redis => json!({"address": addr, "mode": "stream", "keyPrefix": self.name}),
            Kind::RabbitMq => json!({"url": format!("amqp://guest:guest@{addr}/%2f"),
                                     "exchange": "amq.topic",
                                     "routingKey": format!("{}.{{type}}.{{event}}", self.name)}),
            Kind::Nats => json!({"url": format!("nats://{addr}"),
                                 "subject": format!("{}.{{type}}.{{event}}", self.name)}),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Redis => "REDIS",
            Kind::RabbitMq => "RABBITMQ",
            Kind::Nats => "NATS",
        }
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://{REDIS_ADDR}/"))
            .expect("redis client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect Redis")
    }

    /// Every event that arrived so far, in arrival order (Redis: the `track` stream of
    /// this test's prefix, then the other types' streams).
    async fn read(&self, got: &mut Vec<Value>) {
        match self.kind {
            Kind::Redis => {
                let mut conn = self.redis().await;
                got.clear();
                for ty in ["track", "identify", "page", "screen", "group", "alias"] {
                    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                        .arg(format!("{}:{ty}", self.name))
                        .arg("-")
                        .arg("+")
                        .query_async(&mut conn)
                        .await
                        .expect("XRANGE");
                    for entry in reply.ids {
                        let text: String = entry.get("event").expect("event field");
                        let id: String = entry.get("messageId").expect("messageId field");
                        let v: Value = serde_json::from_str(&text).expect("event JSON");
                        assert_eq!(v["messageId"], id.as_str());
                        got.push(v);
                    }
                }
            }
            Kind::RabbitMq => {
                use lapin::options::BasicGetOptions;
                let (_, ch) = self.rabbit.as_ref().expect("channel");
                while let Some(m) = ch
                    .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: true })
                    .await
                    .expect("basic.get")
                {
                    let props = &m.delivery.properties;
                    let v: Value = serde_json::from_slice(&m.delivery.data).expect("JSON body");
                    assert_eq!(
                        props.message_id().as_ref().map(|s| s.as_str()),
                        v["messageId"].as_str()
                    );
                    got.push(v);
                }
            }
            Kind::Nats => {
                let js = self.nats.as_ref().expect("jetstream");
                let mut stream = js.get_stream(&self.name).await.expect("stream");
                let last = stream
                    .info()
                    .await
                    .expect("stream info")
                    .state
                    .last_sequence;
                for seq in (got.len() as u64 + 1)..=last {
                    let m = stream.get_raw_message(seq).await.expect("message");
                    let v: Value = serde_json::from_slice(&m.payload).expect("JSON body");
                    let id = m.headers.get("Nats-Msg-Id").map(|h| h.as_str().to_owned());
                    assert_eq!(id.as_deref(), v["messageId"].as_str());
                    got.push(v);
                }
            }
        }
    }

    /// Reads until `want` distinct messageIds arrived or `limit` passed.
    async fn wait_for(&self, got: &mut Vec<Value>, want: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            self.read(got).await;
            let distinct = distinct_ids(got);
            if distinct >= want || Instant::now() > deadline {
                return distinct;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cleanup(&self) {
        match self.kind {
            Kind::Redis => {
                let mut conn = self.redis().await;
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}:*", self.name))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<i64, _> =
                        redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
            }
            Kind::RabbitMq => {
                if let Some((_, ch)) = &self.rabbit {
                    let _ = ch
                        .queue_delete(self.name.as_str().into(), Default::default())
                        .await;
                }
            }
            Kind::Nats => {
                if let Some(js) = &self.nats {
                    let _ = js.delete_stream(&self.name).await;
                }
            }
        }
    }
}

fn distinct_ids(got: &[Value]) -> usize {
    got.iter()
        .filter_map(|v| v["messageId"].as_str())
        .collect::<HashSet<_>>()
        .len()
}

/// Asserts that per user, first arrivals follow `sent` (messageIds per user, send order).
fn assert_user_order(got: &[Value], sent: &HashMap<String, Vec<String>>) {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut first = HashSet::new();
    for v in got {
        let id = v["messageId"].as_str().expect("messageId").to_owned();
        if first.insert(id.clone()) {
            seen.entry(v["userId"].as_str().unwrap_or("").to_owned())
                .or_default()
                .push(id);
        }
    }
    for (user, ids) in sent {
        let arrived: Vec<&String> = seen
            .get(user)
            .map(|v| v.iter().filter(|id| ids.contains(id)).collect())
            .unwrap_or_default();
        assert_eq!(
            arrived,
            ids.iter().collect::<Vec<_>>(),
            "order (and completeness) for user {user}"
        );
    }
}

async fn dlq(keel: &Keel, destination: &str) -> Value {
    keel.admin_get(&format!("/admin/dlq?destination={destination}&limit=100"))
        .await
        .1
}

async fn rt_jobs_left(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM rt_jobs").await
}

fn per_user(sent: &[Value], only_type: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for s in sent {
        if only_type.is_some_and(|t| s["type"] != t) {
            continue;
        }
        out.entry(s["userId"].as_str().expect("userId").to_owned())
            .or_default()
            .push(s["messageId"].as_str().expect("messageId").to_owned());
    }
    out
}

const SDK_BURST: usize = 500;

async fn sdk_events_arrive_complete_and_in_order(kind: Kind, sdk: &str) {
    let target = Target::create(kind).await;
    let db = TestDb::create().await;
    let mut dests = vec![("broker", target.kind_name(), target.config(kind.addr()))];
    if kind == Kind::Redis {
        // Hash mode beside stream mode: identify traits into <prefix>:user:<userId>.
        dests.push((
            "traits",
            "REDIS",
            json!({"address": REDIS_ADDR, "mode": "hash", "keyPrefix": target.name}),
        ));
    }
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with(&dests);
    let keel = Keel::start(opts).await;
    let run_id = unique("r");
    let report = crate::sdk::send_with_sdk(&keel, "python", sdk, &run_id, SDK_BURST).await;
    let sent = report["sent"].as_array().expect("sent list").clone();
    assert_eq!(sent.len(), SDK_BURST + 6);

    let mut got = Vec::new();
    let n = target
        .wait_for(&mut got, sent.len(), Duration::from_secs(30))
        .await;
    assert_eq!(
        n,
        sent.len(),
        "every SDK message arrived; keel log:\n{}",
        keel.log_text()
    );
    let by_id: HashMap<&str, &Value> = got
        .iter()
        .map(|v| (v["messageId"].as_str().expect("id"), v))
        .collect();
    for s in &sent {
        let id = s["messageId"].as_str().expect("id");
        let e = by_id[id];
        assert_eq!(e["type"], s["type"], "{id}");
        assert_eq!(e["userId"], s["userId"], "{id}");
        assert!(e["receivedAt"].is_string(), "normalised event: {e}");
        assert!(
            e["context"]["library"]["name"].is_string(),
            "complete event: {e}"
        );
    }
    let burst = by_id[format!("{run_id}-{sdk}-burst-7").as_str()];
    assert_eq!(burst["properties"]["i"], 7);
    // Redis streams are per type: order is checked within the track stream.
    let only = (kind == Kind::Redis).then_some("track");
    let got_order: Vec<Value> = got
        .iter()
        .filter(|v| only.is_none_or(|t| v["type"] == t))
        .cloned()
        .collect();
    assert_user_order(&got_order, &per_user(&sent, only));
    if kind == Kind::Redis {
        let mut conn = target.redis().await;
        let key = format!("{}:user:{run_id}-u1", target.name);
        let deadline = Instant::now() + Duration::from_secs(10);
        let hash: HashMap<String, String> = loop {
            let h: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("HGETALL");
            if !h.is_empty() || Instant::now() > deadline {
                break h;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            hash.get("email").map(String::as_str),
            Some(format!("{run_id}@example.com").as_str()),
            "{key}: {hash:?}"
        );
        assert_eq!(hash.get("plan").map(String::as_str), Some("pro"));
        // Hash mode sends only identifies: a track is explained as filtered there.
        let (_, doc) = keel
            .admin_get(&format!("/admin/events/{run_id}-{sdk}-burst-7"))
            .await;
        assert_eq!(
            doc["destinations"]["broker"]["status"], "delivered",
            "{doc}"
        );
        assert_eq!(doc["destinations"]["traits"]["status"], "filtered", "{doc}");
    }
    target.cleanup().await;
}

fn track(user: &str, i: usize, id: &str) -> Value {
    json!({"type": "track", "userId": user, "event": "Step", "messageId": id, "properties": {"i": i}})
}

async fn outage_loses_nothing_and_keeps_order(kind: Kind) {
    let target = Target::create(kind).await;
    let proxy = Proxy::start(kind.addr()).await;
    let db = TestDb::create().await;
    // Enough attempts to outlast the outage with test backoffs (20-200 ms), and a short
    // breaker probe interval so delivery resumes promptly afterwards.
    let mut opts = fast_router(KeelOptions::new(&db))
        .env("KEEL_ROUTER__MAX_ATTEMPTS", "1000")
        .env("KEEL_ROUTER__BREAKER_PROBE_INTERVAL_MS", "300");
    opts.workspace = workspace_with(&[("broker", target.kind_name(), target.config(&proxy.addr))]);
    let keel = Keel::start(opts).await;
    let users = 10;
    let events: Vec<Value> = (0..300)
        .map(|i| {
            track(
                &format!("u{}", i % users),
                i,
                &format!("{}-m{i}", target.name),
            )
        })
        .collect();
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for e in &events {
        sent.entry(e["userId"].as_str().expect("user").to_owned())
            .or_default()
            .push(e["messageId"].as_str().expect("id").to_owned());
    }
    let mut got = Vec::new();
    send_batches(&keel, &events[..100], 20).await;
    assert_eq!(
        target
            .wait_for(&mut got, 100, Duration::from_secs(20))
            .await,
        100,
        "before the outage; keel log:\n{}",
        keel.log_text()
    );

    // 10 s outage: first 5 s unresponsive (connections stay open, nothing passes: every
    // broker call must time out), then 5 s refused (connections dropped, connects fail).
    proxy.set(Mode::Hang);
    let cut = Instant::now();
    send_batches(&keel, &events[100..200], 20).await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed())).await;
    proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed())).await;
    target.read(&mut got).await;
    assert_eq!(
        distinct_ids(&got),
        100,
        "nothing can arrive while the broker is cut off"
    );
    proxy.set(Mode::Pass);
    send_batches(&keel, &events[200..], 20).await;

    let n = target
        .wait_for(&mut got, 300, Duration::from_secs(30))
        .await;
    assert_eq!(n, 300, "nothing lost; keel log:\n{}", keel.log_text());
    assert_user_order(&got, &sent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt_jobs_left(&db).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rt_jobs_left(&db).await, 0, "caught up");
    assert_eq!(
        dlq(&keel, "broker").await["count"],
        0,
        "nothing dead-lettered"
    );
    let retries = keel
        .metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("keel_router_deliveries_total{") && l.contains("outcome=\"retry\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(retries > 0.0, "the outage caused retries");
    if kind == Kind::Nats {
        assert_eq!(
            got.len(),
            300,
            "JetStream dropped redeliveries (Nats-Msg-Id)"
        );
    }
    target.cleanup().await;
}

/// Starts a private nats-server requiring a password on a free port (the shared one has
/// no authentication, so it accepts any credentials).
struct PrivateNats {
    child: std::process::Child,
    port: u16,
}

impl PrivateNats {
    async fn start() -> PrivateNats {
        ensure_running(Kind::Nats).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--user", "keel", "--pass", "right-password"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start /usr/sbin/nats-server (Debian package nats-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "private nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PrivateNats { child, port }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn bad_credentials_dead_letter(kind: Kind, expect_in_reason: &[&str]) {
    ensure_running(kind).await;
    let name = unique("keel_it_");
    let mut _nats = None;
    let config = match kind {
        Kind::Redis => {
            json!({"address": REDIS_ADDR, "password": "wrong-password", "keyPrefix": name})
        }
        Kind::RabbitMq => json!({"url": format!("amqp://guest:wrong-password@{RABBITMQ_ADDR}/%2f"),
                                 "exchange": "amq.topic", "routingKey": format!("{name}.{{type}}")}),
        Kind::Nats => {
            let server = PrivateNats::start().await;
            let url = format!("nats://keel:wrong-password@127.0.0.1:{}", server.port);
            _nats = Some(server);
            json!({"url": url, "subject": format!("{name}.{{type}}")})
        }
    };
    let kind_name = match kind {
        Kind::Redis => "REDIS",
        Kind::RabbitMq => "RABBITMQ",
        Kind::Nats => "NATS",
    };
    let db = TestDb::create().await;
    let mut opts = fast_router(KeelOptions::new(&db));
    opts.workspace = workspace_with(&[("broker", kind_name, config)]);
    let keel = Keel::start(opts).await;
    let events: Vec<Value> = (0..5)
        .map(|i| track(&format!("u{}", i % 2), i, &format!("{name}-m{i}")))
        .collect();
    send_batches(&keel, &events, 5).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let doc = loop {
        let doc = dlq(&keel, "broker").await;
        if doc["count"] == 5 || Instant::now() > deadline {
            break doc;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(doc["count"], 5, "{doc}\nkeel log:\n{}", keel.log_text());
    for job in doc["jobs"].as_array().expect("jobs") {
        let reason = job["reason"].as_str().expect("reason");
        assert!(
            expect_in_reason.iter().any(|s| reason.contains(s)),
            "reason should carry the broker's error ({expect_in_reason:?}): {reason}"
        );
        assert_eq!(job["attempts"], 1, "a refusal is not retried: {job}");
    }
    assert_eq!(rt_jobs_left(&db).await, 0);
}

#[tokio::test]
async fn brokers_redis_sdk_events_arrive_complete_and_in_user_order() {
    sdk_events_arrive_complete_and_in_order(Kind::Redis, "rudder").await;
}

#[tokio::test]
async fn brokers_rabbitmq_sdk_events_arrive_complete_and_in_user_order() {
    sdk_events_arrive_complete_and_in_order(Kind::RabbitMq, "segment").await;
}

#[tokio::test]
async fn brokers_nats_sdk_events_arrive_complete_and_in_user_order() {
    sdk_events_arrive_complete_and_in_order(Kind::Nats, "rudder").await;
}

#[tokio::test]
async fn brokers_redis_outage_of_10_s_loses_nothing_and_keeps_order() {
    outage_loses_nothing_and_keeps_order(Kind::Redis).await;
}

#[tokio::test]
async fn brokers_rabbitmq_outage_of_10_s_loses_nothing_and_keeps_order() {
    outage_loses_nothing_and_keeps_order(Kind::RabbitMq).await;
}

#[tokio::test]
async fn brokers_nats_outage_of_10_s_loses_nothing_and_keeps_order() {
    outage_loses_nothing_and_keeps_order(Kind::Nats).await;
}

#[tokio::test]
async fn brokers_redis_bad_password_dead_letters_with_the_servers_error() {
    bad_credentials_dead_letter(
        Kind::Redis,
        &["called without any password configured", "WRONGPASS"],
    )
    .await;
}

#[tokio::test]
async fn brokers_rabbitmq_bad_credentials_dead_letter_with_the_brokers_error() {
    bad_credentials_dead_letter(Kind::RabbitMq, &["ACCESS_REFUSED - Login was refused"]).await;
}

#[tokio::test]
async fn brokers_nats_bad_credentials_dead_letter_with_the_servers_error() {
    bad_credentials_dead_letter(Kind::Nats, &["authorization violation"]).await;
}
