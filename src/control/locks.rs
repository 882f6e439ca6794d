//! Advisory locks. Liveness without a human: every run's coordinator holds a session lock
//! keyed by the run id for its whole life, so a `running` row whose lock nobody holds belongs
//! to a process that died, and is marked `interrupted`. Fleet commands (migrate, rollback)
//! also hold one fleet lock per control schema, so two of them never run at once. Each
//! schema's transaction takes a transaction lock keyed by the schema (two-part key: never one
//! database-wide lock that serialises everything).

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{failed, Control, RunState};
use crate::tenant::{quote_literal, Tenant};

/// First half of the per-schema advisory lock key ("tnt" in ASCII); the second half is the
/// schema's `hashtext`. Also the key of the bootstrap lock (second half 0).
pub const LOCK_NAMESPACE: i32 = 0x0074_6e74;
/// Fleet lock: one migrate/rollback at a time per control schema.
pub(super) const LOCK_FLEET: i32 = LOCK_NAMESPACE + 1;
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

/// Takes (`lock`) or releases `schema`'s lock at session level: held across the segments of
/// a schema whose migrations include no-transaction scripts. The same key as
/// [`schema_lock_sql`], so each segment's transaction lock is granted to the holder at once.
pub fn session_lock_sql(schema: &str, lock: bool) -> String {
    format!(
        "SELECT pg_advisory_{}({LOCK_NAMESPACE}, hashtext({}))",
        if lock { "lock" } else { "unlock" },
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
    /// Each takeover bumps the run's epoch (fencing): the row is locked FOR UPDATE first,
    /// which waits for every schema transaction of the dead run's process that is still in
    /// flight (they hold it FOR KEY SHARE), and makes every later one of them fail its fence.
    /// So once this returns, the old process can commit nothing more.
    pub async fn reap_dead_runs(&self, client: &Client) -> anyhow::Result<()> {
        let sql = format!(
            "WITH dead AS (SELECT id FROM {runs} r WHERE r.state = {running} AND NOT {held} FOR UPDATE) \
             UPDATE {runs} r SET state = {interrupted}, epoch = r.epoch + 1, \
                 finished_at = coalesce(finished_at, clock_timestamp()) \
             FROM dead WHERE r.id = dead.id AND r.state = {running}",
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

    /// Takes run `run_id`'s lock again after the coordinator's connection was lost, and
    /// proves the run is still this process's: the lock is free (nobody else is running it),
    /// the run is still running, and its epoch is the one this process holds. False: the
    /// run is someone else's now (or its lock is held by the old connection still).
    pub async fn reclaim_run(
        &self,
        client: &Client,
        run_id: i64,
        epoch: i64,
    ) -> anyhow::Result<bool> {
        let sql = format!(
            "SELECT pg_try_advisory_lock({LOCK_RUN}, $1::int8::int4) \
                 AND EXISTS (SELECT 1 FROM {runs} WHERE id = $1 AND epoch = $2 AND state = {running})",
            runs = self.table("runs"),
            running = RunState::Running.literal(),
        );
        let row = client
            .query_typed_one(&sql, &[(&run_id, Type::INT8), (&epoch, Type::INT8)])
            .await
            .map_err(|e| failed("taking the run's lock again", &e))?;
        Ok(row.get(0))
    }

    /// The run's epoch as the control schema has it now (None when the run is gone).
    pub async fn run_epoch(&self, client: &Client, run_id: i64) -> anyhow::Result<Option<i64>> {
        let row = client
            .query_typed_opt(
                &format!("SELECT epoch FROM {} WHERE id = $1", self.table("runs")),
                &[(&run_id, Type::INT8)],
            )
            .await
            .map_err(|e| failed("reading the run's epoch", &e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Hot path: the fence at the start of a schema's transaction (see the control schema's
    /// `fence` function), with the tenant's registry row checked too when it must exist.
    pub fn fence_sql(&self, run_id: i64, epoch: i64, tenant: Option<&Tenant>) -> String {
        format!(
            "SELECT {}.fence({run_id}, {epoch}, {})",
            self.q,
            tenant.map_or("NULL".into(), |t| quote_literal(t.id()))
        )
    }

    /// Takes the fleet lock without waiting. False: another fleet run holds it.
    pub async fn try_fleet_lock(&self, client: &Client) -> anyhow::Result<bool> {
        self.try_fleet_lock_as(client, "pg_try_advisory_lock").await
    }

    /// Takes the fleet lock without waiting, until the current transaction ends (the same
    /// key as [`Control::try_fleet_lock`]: each excludes the other). Needs no session of
    /// its own, so it holds through a pooler in transaction mode.
    pub async fn try_fleet_xact_lock(&self, client: &Client) -> anyhow::Result<bool> {
        self.try_fleet_lock_as(client, "pg_try_advisory_xact_lock")
            .await
    }

    async fn try_fleet_lock_as(&self, client: &Client, function: &str) -> anyhow::Result<bool> {
        let row = client
            .query_typed_one(
                &format!("SELECT {function}({LOCK_FLEET}, hashtext($1))"),
                &[(&self.name, Type::TEXT)],
            )
            .await
            .map_err(|e| failed("taking the fleet lock", &e))?;
        Ok(row.get(0))
    }
}
