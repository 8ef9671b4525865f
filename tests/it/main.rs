//! Keel's integration tests: one test binary (V8 makes each binary large), modules per
//! area. Every test gets its own Postgres database and runs the real `keel` binary.

mod bad_input;
mod batching;
mod brokers;
mod browser;
mod cli;
mod clickhouse;
mod cluster;
mod common;
mod console;
mod delivery;
mod destinations;
mod faults;
mod gateway;
mod lifecycle;
mod openapi;
mod ops;
mod reload;
mod sdk;
mod security;
mod storage;
mod structure;
mod transform;
mod warehouse;
