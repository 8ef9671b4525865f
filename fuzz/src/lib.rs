//! The code under fuzzing, compiled from Keel's own source files (not copies): the gateway's
//! body reader, error type, event reader, normaliser and request parser as `http::*`, and the warehouse naming rules and
//! flattener as `warehouse::*`, each in the module tree its `super::` paths expect. Only the
//! files named here are built, so a change that makes one of them depend on more of Keel shows
//! up as a fuzz build failure, not as silently stale fuzzing.

#![allow(dead_code)]

/// `src/http/{body,error,event,normalize,parse}.rs`.
#[path = "../../src/http"]
pub mod http {
    pub mod body;
    pub mod error;
    pub mod event;
    pub mod normalize;
    pub mod parse;
}

/// `actors/src/warehouse/{flatten,schema}.rs`.
#[path = "../../actors/src/warehouse"]
pub mod warehouse {
    pub mod flatten;
    pub mod schema;
}
