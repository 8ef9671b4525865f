//! Keel's integration tests: one test binary (V8 makes each binary large), modules per
//! area. Every test gets its own Postgres database and runs the real `keel` binary.

mod bad_input;
mod brokers;
mod cli;
mod cluster;
mod common;
mod delivery;
mod faults;
mod gateway;
mod lifecycle;
mod openapi;
mod ops;
mod reload;
mod sdk;
mod security;
mod transform;
mod warehouse;
