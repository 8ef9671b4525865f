//! Every message exchanged between actors, with its result type. No actor sends anything
//! that is not declared here.

use std::sync::Arc;

use actix::Message;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

/// Why the GatewayWriter could not commit a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// Postgres refused or could not be reached; the client should retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// One accepted HTTP request, normalised, to be stored as one `gw_jobs` row per partition
/// its events fall in.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ingest {
    /// Workspace id of the source whose write key authenticated the request.
    pub source_id: Arc<str>,
    /// When the gateway received the request.
    pub received_at: DateTime<Utc>,
    /// The request's events grouped by partition, in request order within each.
    pub parts: Vec<IngestPart>,
    /// Answered after the flush holding this request commits (or fails).
    pub reply: oneshot::Sender<Result<(), IngestError>>,
}

impl Ingest {
    /// Events in the request, over all its parts.
    pub fn event_count(&self) -> usize {
        self.parts
            .iter()
            .map(|p| usize::try_from(p.event_count).unwrap_or(0))
            .sum()
    }
}

/// The events of one request that fall in one partition.
#[derive(Debug, Clone)]
pub struct IngestPart {
    /// Partition (hash of the ordering key).
    pub partition: i32,
    /// Number of events in `payload`.
    pub event_count: i32,
    /// The normalised events as one JSON array.
    pub payload: String,
    /// The messageId of every event, in payload order, for the dedup table.
    pub message_ids: Vec<String>,
}

/// Liveness probe a supervisor sends to a child; the child answers with its state.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "HeartbeatReply")]
pub struct Heartbeat;

/// A child's answer to [`Heartbeat`].
#[derive(Debug, Clone, actix::MessageResponse)]
pub struct HeartbeatReply {
    /// The child's actor name, as used in metric labels.
    pub actor: &'static str,
    /// Work items the child holds that are not yet done.
    pub pending: usize,
}

/// Asks the GatewayWriter to flush whatever it holds now (used at shutdown).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct FlushNow;

/// Tells a router that new jobs for its destination were committed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Wake;

/// Asks a router for its state (admin API, tests).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "RouterStatus")]
pub struct GetRouterStatus;

/// A router's state.
#[derive(Debug, Clone, actix::MessageResponse, serde::Serialize)]
pub struct RouterStatus {
    /// Destination id.
    pub destination: String,
    /// Jobs held in memory.
    pub loaded: usize,
    /// Deliveries under way.
    pub in_flight: usize,
    /// Whether the circuit breaker is open.
    pub circuit_open: bool,
}

/// Asks a router or warehouse uploader to start no new work and answer once what is under
/// way finished and its outcomes are written, or when `deadline` passed (whatever is still
/// running then is abandoned; it is redone from Postgres later).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "DrainReport")]
pub struct Drain {
    /// Longest wait.
    pub deadline: std::time::Duration,
}

/// Answer to [`Drain`].
#[derive(Debug, Clone, Copy, Default, actix::MessageResponse, serde::Serialize)]
pub struct DrainReport {
    /// Deliveries or loads still running at the deadline (0 = drained cleanly).
    pub abandoned: usize,
}

/// Stops a drained router or uploader for good (sent by the supervisor, which then drops
/// the actor's address so it is not restarted).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Retire;

/// Gives the processor a new routing table (config reload); answered once no batch that
/// started with the old table is still running. Generic over the table so this module
/// depends on nothing above it: the processor handles `UpdateRouting<RoutingTable>`
/// (`crate::routing`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateRouting<T: 'static>(pub Arc<T>);

/// Test hook, reachable only when Keel runs with `KEEL_TEST_HOOKS=1`: the receiving actor
/// panics, to prove that supervision revives it and nothing is lost.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// Replays processor-stage dead letters (stage `transform`: a transformation or destination
/// script failed) through the destination's current transformations and mapping; selectors
/// combine like the DLQ replay's (neither = all). Answers how many were replayed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<i64, String>")]
pub struct ReplayTransformed {
    /// Only this destination's.
    pub destination: Option<String>,
    /// Only these ids.
    pub ids: Option<Vec<i64>>,
}

/// The partitions this node now holds (sent by the lease keeper to the root supervisor):
/// the processor switches to them and the routers are replaced by routers of these
/// partitions, after the old ones finished their in-flight deliveries (or `drain_deadline`
/// passed). Answered once the switch is done, so leases given up can be released safely.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct AssignPartitions {
    /// Partitions held, sorted.
    pub partitions: std::sync::Arc<[i32]>,
    /// Longest wait for the old routers' in-flight deliveries.
    pub drain_deadline: std::time::Duration,
}

/// Tells the processor which partitions' requests to read (and fence its commits on).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SetPartitions(pub std::sync::Arc<[i32]>);

/// Asks the lease keeper to release every lease and leave the cluster (graceful shutdown,
/// after the routers drained). Answered once done or failed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct LeaveCluster;

/// The handlers every supervised child shares: [`Heartbeat`], answered with what
/// `|actor| (name, pending)` makes of the child (its name in heartbeats and metrics, and
/// the work it holds), and the [`InjectPanic`] test hook.
#[macro_export]
macro_rules! child_handlers {
    ($actor:ty, |$a:ident| $reply:expr) => {
        impl actix::Handler<$crate::messages::Heartbeat> for $actor {
            type Result = $crate::messages::HeartbeatReply;

            fn handle(
                &mut self,
                _msg: $crate::messages::Heartbeat,
                _ctx: &mut Self::Context,
            ) -> Self::Result {
                let $a = &*self;
                let (actor, pending) = $reply;
                $crate::messages::HeartbeatReply { actor, pending }
            }
        }

        impl actix::Handler<$crate::messages::InjectPanic> for $actor {
            type Result = ();

            fn handle(&mut self, _msg: $crate::messages::InjectPanic, _ctx: &mut Self::Context) {
                panic!("injected panic (test hook)");
            }
        }
    };
}

/// The [`Retire`] handler of an actor the supervisor drains and replaces (routers and
/// uploaders): it marks itself retired (so `Supervised::restarting` does not bring it
/// back) and stops.
#[macro_export]
macro_rules! retire_handler {
    ($actor:ty) => {
        impl actix::Handler<$crate::messages::Retire> for $actor {
            type Result = ();

            fn handle(&mut self, _msg: $crate::messages::Retire, ctx: &mut Self::Context) {
                self.retired = true;
                actix::ActorContext::stop(ctx);
            }
        }
    };
}
