//! Hand-written SQL that PostgreSQL parses once per connection.
//!
//! diesel treats every `sql_query` as unsafe to cache, so diesel-async prepares it anew
//! on each call: a round trip to parse and describe it, another to run it, and a close
//! afterwards. The job path runs a handful of fixed statements thousands of times a
//! second (the claim, the completion, the heartbeat), so [`prepared`] marks such a
//! statement safe to cache: diesel-async then keeps it prepared on the connection under
//! its SQL text and bind types, and each later call is one round trip with no parsing.
//! Measured on the drain bench: parsing and describing those statements was about a
//! tenth of PostgreSQL's CPU per job.
//!
//! Only for statements whose SQL text is fixed (binds carry every value), or the
//! per-connection cache would keep one entry per text.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// A query whose fixed SQL text may stay prepared on the connection.
#[derive(Debug, Clone)]
pub(crate) struct Prepared<Q>(Q);

/// Keeps `query` prepared on the connection after its first run (see the module docs).
pub(crate) fn prepared<Q>(query: Q) -> Prepared<Q> {
    Prepared(query)
}

impl<Q> QueryId for Prepared<Q> {
    // No static id: the statement cache keys it by its SQL text and bind types.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}
