//! Keel's service crate: configuration, start-up, the embedded database default and the
//! HTTP surface. The `keel` binary (`main.rs`) is a thin CLI over this library; the actor
//! system lives in the `keel-actors` crate.

pub mod boot;
pub mod config;
pub mod destination_cases;
pub mod embedded_pg;
pub mod http;
pub mod process_stats;
pub mod reload;
pub mod replay;
pub mod status;
pub mod transform_cli;
pub mod workspace;
