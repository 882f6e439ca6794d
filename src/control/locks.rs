//! Advisory locks. Liveness without a human: every run's coordinator holds a session lock
//! keyed by the run id for its whole life, so a `running` row whose lock nobody holds belongs
//! to a process that died, and is marked `interrupted`. Fleet commands (migrate, rollback)
//! also hold one fleet lock per control schema, so two of them never run at once. Each
//! schema's transaction takes a transaction lock keyed by the schema (two-part key: never one
//! database-wide lock that serialises everything).

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{failed, Control, RunState};
use crate::tenant::quote_literal;

/// First half of the per-schema advisory lock key ("tnt" in ASCII); the second half is the
/// schema's `hashtext`. Also the key of the bootstrap lock (second half 0).
pub const LOCK_NAMESPACE: i32 = 0x0074_6e74;
/// Fleet lock: one migrate/rollback at a time per control schema.
const LOCK_FLEET: i32 = LOCK_NAMESPACE + 1;
/// Run lock: held by a run's coordinator for the run's life; key = run id.
pub(super) const LOCK_RUN: i32 = LOCK_NAMESPACE + 2;

/// The statement that takes `schema`'s lock for the current transaction, for the hot-path
/// batch of a schema's transaction (`schema` is a validated identifier).
pub fn schema_lock_sql(schema: &str) -> String {
    format!(
        "SELECT pg_advisory_xact_lock({LOCK_NAMESPACE}, hashtext({}))",
        quote_literal(schema)
    )
}

/// `EXISTS (a granted run lock for the run id in column/expression `run`)`.
fn run_lock_held(run: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = {LOCK_RUN}::oid AND l.objid = ({run})::oid AND l.objsubid = 2)"
    )
}

impl Control {
    /// Marks runs whose coordinator is gone (nobody holds their run lock) as interrupted.
    pub async fn reap_dead_runs(&self, client: &Client) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE {runs} r SET state = {interrupted}, finished_at = coalesce(finished_at, clock_timestamp()) \
             WHERE r.state = {running} AND NOT {held}",
            runs = self.table("runs"),
            interrupted = RunState::Interrupted.literal(),
            running = RunState::Running.literal(),
            held = run_lock_held("r.id"),
        );
        client
            .execute_typed(&sql, &[])
            .await
            .map_err(|e| failed("checking for runs whose process died", &e))?;
        Ok(())
    }

    /// Whether a run's coordinator is alive (holds the run's lock).
    pub async fn run_is_live(&self, client: &Client, run_id: i64) -> anyhow::Result<bool> {
        let sql = format!("SELECT {}", run_lock_held("$1::int8"));
        let row = client
            .query_typed_one(&sql, &[(&run_id, Type::INT8)])
            .await
            .map_err(|e| failed("checking whether a run is alive", &e))?;
        Ok(row.get(0))
    }

    /// Takes the fleet lock without waiting. False: another fleet run holds it.
    pub async fn try_fleet_lock(&self, client: &Client) -> anyhow::Result<bool> {
        let row = client
            .query_typed_one(
                &format!("SELECT pg_try_advisory_lock({LOCK_FLEET}, hashtext($1))"),
                &[(&self.name, Type::TEXT)],
            )
            .await
            .map_err(|e| failed("taking the fleet lock", &e))?;
        Ok(row.get(0))
    }
}
