//! Keel's actor system: the typed messages between actors, the GatewayWriter that
//! group-commits accepted requests, the processor, the per-destination routers and
//! warehouse uploaders, the supervision tree, the Postgres `Store` that owns every query of
//! Keel's own database, and the metric names. The HTTP layer lives in the `keel` binary;
//! this crate never parses HTTP and never answers clients directly.

pub mod backup;
pub mod cluster;
pub mod destinations;
pub mod gateway;
pub mod live;
pub mod messages;
pub mod outbound;
pub mod partition;
pub mod processor;
pub mod redact;
pub mod router;
pub mod routing;
pub mod sampler;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod transform;
pub mod warehouse;
pub mod workspace;

/// The object-store crate the storage kinds are built on (tests and the CLI read backups
/// through it).
pub use object_store;
