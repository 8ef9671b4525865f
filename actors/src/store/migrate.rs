//! Schema migrations: the timestamped SQL files in `migrations/`, embedded at build time and
//! applied under a Postgres advisory lock so two nodes starting at once never race.

use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::StoreError;

/// Every migration in `migrations/`, embedded in the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Advisory lock key that serialises migration runs across nodes ("keel" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6b65_656c;

/// Applies every pending migration to the database at `url`, holding the advisory lock for
/// the whole run. Returns the versions applied (empty when the schema was current).
pub async fn run_migrations(url: &str) -> Result<Vec<String>, StoreError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Vec<String>, StoreError> {
        use diesel::RunQueryDsl;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .execute(&mut conn)?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(|v| v.to_string()).collect())
            .map_err(|e| StoreError::Migration(e.to_string()));
        diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
            .execute(&mut conn)?;
        applied
    })
    .await
    .map_err(|e| StoreError::Migration(format!("migration task failed: {e}")))?
}
