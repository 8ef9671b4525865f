//! `Cached`: runs a constant raw-SQL statement as a prepared statement kept per connection.
//!
//! diesel marks every `sql_query` as unsafe to cache (its text could be built at run time),
//! so diesel-async prepares it again for each execution: a Parse round trip plus parsing
//! and planning in Postgres, as much as the execution itself for the gateway's flush
//! statement. Keel's statements are constants, so caching them is bounded (one entry per
//! statement text and bind types, per connection).

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// A query whose prepared statement diesel-async keeps (see the module comment). Wrap only
/// statements whose SQL text is a constant.
#[derive(Debug, Clone)]
pub struct Cached<Q>(Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Cached<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

/// `.cached()` on a `sql_query(CONSTANT)` (after its binds).
pub trait CacheExt: Sized {
    /// This statement, prepared once per connection.
    fn cached(self) -> Cached<Self> {
        Cached(self)
    }
}

impl<Q: QueryFragment<Pg>> CacheExt for Q {}
