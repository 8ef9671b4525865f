//! Scaling out: the `LeaseKeeper` actor.
//!
//! Work is split into `partitions` by a hash of each event's ordering key
//! ([`crate::partition`]). A partition's
//! processing and routing run on the node holding its lease. On every heartbeat the keeper
//! announces its node, renews its leases, and moves towards an even share
//! (`ceil(partitions / live nodes)`): it acquires free or expired leases when it holds fewer
//! (`FOR UPDATE SKIP LOCKED`), and gives up the excess when it holds more — first switching
//! its actors away from them (routers finish their in-flight deliveries), then releasing the
//! rows, so a partition never runs on two nodes at once. Renewals never wait for a switch.
//! The [`LeaseGuard`] the keeper writes and routers read before every dispatch expires at
//! `valid_until` (renewal start + TTL − margin): a node that cannot renew, or whose keeper
//! is stuck, stops delivering before its leases can pass to another node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::messages::{AssignPartitions, LeaveCluster};
use crate::store::{HeldLease, Store, StoreError};
use crate::telemetry as t;

/// Lease keeper settings (from `[cluster]`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of partitions.
    pub partitions: u32,
    /// Lease lifetime without renewal.
    pub lease_ttl: Duration,
    /// Heartbeat (renewal) interval.
    pub heartbeat: Duration,
    /// Address the node's HTTP server listens on (shown by `keel status`).
    pub addr: String,
    /// False on a gateway-only node: it announces itself but takes no leases.
    pub worker: bool,
}

impl ClusterConfig {
    /// How long before a lease's expiry this node stops its partitions' work when it could
    /// not renew: a fifth of the TTL, at least one heartbeat's worth of slack.
    fn safety_margin(&self) -> Duration {
        (self.lease_ttl / 5).max(Duration::from_millis(500))
    }
}

/// The partitions this node may work on right now, and until when: written by the lease
/// keeper directly (not through any mailbox), read by routers before every dispatch. It
/// expires by itself at `valid_until`, so a node whose keeper cannot renew, is stuck or
/// died stops delivering before its leases can pass to another node.
#[derive(Debug, Default)]
pub struct LeaseGuard {
    state: std::sync::RwLock<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    partitions: std::collections::BTreeSet<i32>,
    valid_until: Option<Instant>,
}

impl LeaseGuard {
    /// A guard that allows nothing yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// True while every one of `partitions` is held and the leases are surely valid.
    pub fn allows_all(&self, partitions: &[i32]) -> bool {
        let Ok(s) = self.state.read() else {
            return false;
        };
        s.valid_until.is_some_and(|u| Instant::now() < u)
            && partitions.iter().all(|p| s.partitions.contains(p))
    }

    fn set(&self, partitions: impl IntoIterator<Item = i32>, valid_until: Option<Instant>) {
        if let Ok(mut s) = self.state.write() {
            s.partitions = partitions.into_iter().collect();
            s.valid_until = valid_until;
        }
    }

    fn revoke(&self) {
        self.set(std::iter::empty(), None);
    }
}

/// What one heartbeat found and decided.
struct Tick {
    live: i64,
    renewed: Vec<HeldLease>,
    acquired: Vec<HeldLease>,
    release: Vec<i32>,
}

/// The lease keeper actor (see the module comment).
pub struct LeaseKeeper {
    store: Store,
    config: ClusterConfig,
    assign: Recipient<AssignPartitions>,
    guard: Arc<LeaseGuard>,
    started_at: DateTime<Utc>,
    /// Partition → epoch of every lease held (and not being given up).
    held: BTreeMap<i32, i64>,
    /// Leases being given up: out of `held` and the guard, released once the actors
    /// stopped their work.
    releasing: std::collections::BTreeSet<i32>,
    /// The partitions the actors were last told to run.
    assigned: Arc<[i32]>,
    /// Until when the held leases are surely valid (renewal start + TTL − margin).
    valid_until: Option<Instant>,
    expiry_check: Option<SpawnHandle>,
    /// Held while a heartbeat's statements run: a tick finding it taken skips, and leaving
    /// waits for it (a heartbeat finishing after the leave would re-announce the node, and
    /// could take leases, and the others would wait for this node's row to age out).
    in_heartbeat: Arc<tokio::sync::Mutex<()>>,
    /// A partition switch (and the release after it) is running; heartbeats go on renewing
    /// meanwhile but decide no moves.
    assigning: bool,
    left: bool,
}

impl LeaseKeeper {
    /// A keeper for this node (the store carries the node id); it keeps `guard` current.
    pub fn new(
        store: Store,
        config: ClusterConfig,
        assign: Recipient<AssignPartitions>,
        guard: Arc<LeaseGuard>,
    ) -> Self {
        Self {
            store,
            config,
            assign,
            guard,
            started_at: Utc::now(),
            held: BTreeMap::new(),
            releasing: std::collections::BTreeSet::new(),
            assigned: Arc::from(Vec::new()),
            valid_until: None,
            expiry_check: None,
            in_heartbeat: Arc::new(tokio::sync::Mutex::new(())),
            assigning: false,
            left: false,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.left {
            return;
        }
        let Ok(running) = self.in_heartbeat.clone().try_lock_owned() else {
            return;
        };
        let store = self.store.clone();
        let config = self.config.clone();
        let started_at = self.started_at;
        let ttl = config.lease_ttl.as_secs_f64();
        let began = Instant::now();
        let rebalance = !self.assigning && self.releasing.is_empty();
        let releasing = self.releasing.clone();
        let fut = async move {
            let _running = running;
            let role = if config.worker { "worker" } else { "gateway" };
            let live = store
                .node_heartbeat(&config.addr, role, started_at, ttl)
                .await?;
            if !config.worker {
                return Ok::<_, StoreError>(Tick {
                    live,
                    renewed: Vec::new(),
                    acquired: Vec::new(),
                    release: Vec::new(),
                });
            }
            let mut renewed = store.renew_leases(ttl).await?;
            // Leases being given up are still this node's in the table until released.
            renewed.retain(|l| !releasing.contains(&l.partition));
            let live_u = u64::try_from(live.max(1)).unwrap_or(1);
            let target = usize::try_from(u64::from(config.partitions).div_ceil(live_u))
                .unwrap_or(usize::MAX);
            let mut release = Vec::new();
            let mut acquired = Vec::new();
            if rebalance && renewed.len() > target {
                // Give up the highest-numbered ones; the rest stay where they are.
                let mut parts: Vec<i32> = renewed.iter().map(|l| l.partition).collect();
                parts.sort_unstable();
                release = parts.split_off(target);
            } else if rebalance && renewed.len() < target {
                let want = i32::try_from(target - renewed.len()).unwrap_or(i32::MAX);
                acquired = store.acquire_leases(ttl, want).await?;
            }
            Ok(Tick {
                live,
                renewed,
                acquired,
                release,
            })
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            if act.left {
                // Left while this heartbeat ran: the leave waited for it and released
                // whatever it renewed or took.
                return;
            }
            let tick = match result {
                Ok(tick) => tick,
                Err(e) => {
                    metrics::counter!(t::CLUSTER_HEARTBEAT_FAILURES_TOTAL).increment(1);
                    tracing::warn!(error = %e, "cluster heartbeat failed; this node stops its partitions' work before their leases could expire");
                    return;
                }
            };
            metrics::gauge!(t::CLUSTER_LIVE_NODES).set(tick.live as f64);
            if !act.config.worker {
                return;
            }
            let valid_until = began + act.config.lease_ttl - act.config.safety_margin();
            if Instant::now() >= valid_until {
                // Too slow to be sure of anything it renewed or took: let them expire.
                metrics::counter!(t::CLUSTER_HEARTBEAT_FAILURES_TOTAL).increment(1);
                tracing::warn!("cluster heartbeat took longer than the lease allows; not using it");
                return;
            }
            act.valid_until = Some(valid_until);
            act.apply(tick.renewed, tick.acquired, &tick.release);
            act.guard
                .set(act.held.keys().copied(), Some(valid_until));
            act.schedule_expiry_check(ctx);
            act.releasing.extend(tick.release.iter().copied());
            if !act.assigning {
                act.start_assignment(ctx, tick.release);
            }
        }));
    }

    /// Updates the held set from a heartbeat: lost ones (taken over) go, acquired ones come,
    /// ones to release go.
    fn apply(&mut self, renewed: Vec<HeldLease>, acquired: Vec<HeldLease>, release: &[i32]) {
        let renewed: BTreeMap<i32, i64> = renewed
            .into_iter()
            .map(|l| (l.partition, l.epoch))
            .collect();
        let lost: Vec<i32> = self
            .held
            .keys()
            .filter(|p| !renewed.contains_key(p))
            .copied()
            .collect();
        if !lost.is_empty() {
            metrics::counter!(t::CLUSTER_LEASE_CHANGES_TOTAL, "change" => "lost")
                .increment(lost.len() as u64);
            tracing::warn!(partitions = ?lost, "leases lost to another node");
        }
        let adopted = renewed
            .keys()
            .filter(|p| !self.held.contains_key(p))
            .count();
        if adopted > 0 {
            // Held by this node id before (a restart, or after an expiry nobody used).
            metrics::counter!(t::CLUSTER_LEASE_CHANGES_TOTAL, "change" => "adopted")
                .increment(adopted as u64);
        }
        self.held = renewed;
        if !acquired.is_empty() {
            metrics::counter!(t::CLUSTER_LEASE_CHANGES_TOTAL, "change" => "acquired")
                .increment(acquired.len() as u64);
            tracing::info!(partitions = ?acquired.iter().map(|l| l.partition).collect::<Vec<_>>(), "leases acquired");
        }
        for l in acquired {
            self.held.insert(l.partition, l.epoch);
        }
        for p in release {
            self.held.remove(p);
        }
        metrics::gauge!(t::CLUSTER_PARTITIONS_OWNED).set(self.held.len() as f64);
    }

    /// Tells the actors the held set if it changed and then releases `release` (after the
    /// switch is done, so their work stopped here before another node can take them).
    /// Heartbeats keep renewing meanwhile; when the held set changed again by the end,
    /// another switch follows.
    fn start_assignment(&mut self, ctx: &mut Context<Self>, release: Vec<i32>) {
        let partitions: Arc<[i32]> = self.held.keys().copied().collect::<Vec<_>>().into();
        let changed = partitions != self.assigned;
        if !changed && release.is_empty() {
            return;
        }
        self.assigning = true;
        self.assigned = partitions.clone();
        let assign = self.assign.clone();
        let store = self.store.clone();
        let drain_deadline = self.config.lease_ttl / 2;
        let fut = async move {
            if changed {
                tracing::info!(partitions = ?partitions, "running partitions");
                if let Err(e) = assign
                    .send(AssignPartitions {
                        partitions,
                        drain_deadline,
                    })
                    .await
                {
                    // The old routers may still run: keep the leases (they are renewed)
                    // rather than hand over partitions that may still be worked on here.
                    tracing::error!(error = %e, "supervisor did not take the partition set; keeping the leases");
                    return Err(());
                }
            }
            if !release.is_empty() {
                match store.release_leases(Some(release.clone())).await {
                    Ok(gone) => {
                        metrics::counter!(t::CLUSTER_LEASE_CHANGES_TOTAL, "change" => "released")
                            .increment(gone.len() as u64);
                        tracing::info!(partitions = ?release, "leases released for rebalancing");
                    }
                    // Renewed again as this node's ("adopted") and given up at a later turn.
                    Err(e) => tracing::warn!(error = %e, "releasing leases failed"),
                }
            }
            Ok(())
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.assigning = false;
            act.releasing.clear();
            if result.is_err() {
                act.assigned = Arc::from(Vec::new());
            }
            if !act.left {
                act.start_assignment(ctx, Vec::new());
            }
        }));
    }

    fn schedule_expiry_check(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.expiry_check.take() {
            ctx.cancel_future(h);
        }
        let Some(until) = self.valid_until else {
            return;
        };
        let delay = until.saturating_duration_since(Instant::now());
        self.expiry_check = Some(ctx.run_later(delay, |act, ctx| {
            act.expiry_check = None;
            if act.valid_until.is_some_and(|u| Instant::now() >= u) && !act.held.is_empty() {
                // The guard already stopped the routers' dispatching; this replaces them.
                tracing::error!(
                    partitions = act.held.len(),
                    "could not renew leases in time: this node's partitions are stopped before they expire"
                );
                metrics::counter!(t::CLUSTER_LEASE_CHANGES_TOTAL, "change" => "expired")
                    .increment(act.held.len() as u64);
                act.held.clear();
                act.guard.revoke();
                metrics::gauge!(t::CLUSTER_PARTITIONS_OWNED).set(0.0);
                if !act.assigning {
                    act.start_assignment(ctx, Vec::new());
                }
            }
        }));
    }
}

impl Actor for LeaseKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.tick(ctx);
        ctx.run_interval(self.config.heartbeat, |act, ctx| act.tick(ctx));
    }
}

impl Supervised for LeaseKeeper {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        metrics::counter!(t::SUPERVISOR_RESTARTS_TOTAL, "actor" => "lease_keeper").increment(1);
        // The guard expires by itself; heartbeats resume and switch the actors again.
        self.assigning = false;
        self.releasing.clear();
        self.assigned = Arc::from(Vec::new());
        self.expiry_check = None;
    }
}

impl Handler<LeaveCluster> for LeaseKeeper {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: LeaveCluster, _ctx: &mut Self::Context) -> Self::Result {
        self.left = true;
        self.guard.revoke();
        let store = self.store.clone();
        let held = self.held.len();
        self.held.clear();
        metrics::gauge!(t::CLUSTER_PARTITIONS_OWNED).set(0.0);
        let in_heartbeat = self.in_heartbeat.clone();
        Box::pin(
            async move {
                // No heartbeat starts after `left`; wait for one still running.
                let _heartbeat_done = in_heartbeat.lock().await;
                match store.leave_cluster().await {
                    Ok(gone) => {
                        metrics::counter!(t::CLUSTER_LEASE_CHANGES_TOTAL, "change" => "released")
                            .increment(gone.len() as u64);
                        tracing::info!(released = gone.len(), held, "left the cluster: leases released");
                    }
                    Err(e) => tracing::warn!(error = %e, "could not leave the cluster at shutdown; the leases expire by themselves"),
                }
            }
            .into_actor(self),
        )
    }
}

crate::child_handlers!(LeaseKeeper, |k| ("lease_keeper", k.releasing.len()));
