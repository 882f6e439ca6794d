//! The control schema: tenantctl's own bookkeeping inside each cluster's database, and the one
//! place that holds SQL on it. `tenants` is the registry (with each tenant's current version,
//! kept in the same transaction as its migrations, so fleet status is one query); `runs` and
//! `run_schemas` are the run ledger.
//!
//! SQL policy: statements run once per command bind their values as `$n` parameters through
//! `query_typed` (unnamed statements: one round trip each, and nothing prepared that a
//! transaction pooler could lose). Only the per-schema hot path builds SQL text, so that a
//! schema's bookkeeping rides in the batch it already sends; that text is made from validated
//! identifiers and integers only (see [`crate::tenant::quote_literal`]).

mod files;
mod ledger;
mod locks;
mod moves;
mod registry;
mod runs;
mod states;
mod stats;
mod summary;

pub use files::{Changed, FileCheck, HISTORY_TABLE};
pub use ledger::{FailureRow, Halted, RunCounts, RunRow, SchemaRow, WaveRow};
pub use locks::{schema_lock_sql, session_lock_sql, LOCK_NAMESPACE};
pub use moves::{MoveRow, OldCopy};
pub use registry::TenantRow;
pub use runs::{FailureRecord, Opening, RunInfo, SharedOutcome, SHARED_ROW, SQLSTATE_EXEC_DONE};
pub use states::{MovePhase, RunCommand, RunState, SchemaResult, SchemaState, TenantState};
pub use stats::TenantStats;
pub use summary::{Summary, Summing};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::pgerror::describe;
use crate::tenant::{quote_ident, quote_literal};

/// Bumped whenever the DDL below changes; stored as the control schema's comment.
const CONTROL_VERSION: &str = "tenantctl control schema v11";

/// SQLSTATE raised inside a schema's transaction when its run was taken over (fencing).
pub const SQLSTATE_FENCED: &str = "TNF01";
/// SQLSTATE raised inside a schema's transaction when its tenant was dropped meanwhile.
pub const SQLSTATE_DROPPED: &str = "TNF02";

/// A statement parameter with its PostgreSQL type, for `query_typed`.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// RFC 3339 in UTC (`2026-11-26T15:47:50Z`): the one format of every time tenantctl prints,
/// in text and in `--json`.
const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";

/// The control schema, with its name validated and quoted once.
#[derive(Debug, Clone)]
pub struct Control {
    name: String,
    q: String,
    /// Seen to be this version's (it is never downgraded): not asked again.
    current: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn failed(what: &str, e: &tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", describe(e))
}

/// `'a', 'b'` for a CHECK constraint listing every stored value of a state enum.
fn stored_list(values: impl IntoIterator<Item = &'static str>) -> String {
    values
        .into_iter()
        .map(quote_literal)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Control {
    /// The control schema `name` (validated by config).
    pub fn new(name: &str) -> Control {
        Control {
            name: name.to_string(),
            q: quote_ident(name),
            current: Default::default(),
        }
    }

    /// `"tenantctl".table`.
    fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.q)
    }

    /// Sends, without waiting for the answer, a statement that makes a fresh worker backend
    /// load what a schema's transaction touches first (the registry, the pool, the ledger,
    /// PL/pgSQL): it runs on the server while the coordinator is still opening the run, not
    /// at the start of the first tenant. It changes nothing, and whatever it meets (a control
    /// schema not there yet, a lock held longer than 100 ms) ends it quietly; the
    /// connection's next statement queues behind it.
    pub fn warm_worker(&self, client: &Client) {
        use futures::FutureExt;
        let sql = format!(
            "DO $tenantctl_warm$ BEGIN SET LOCAL lock_timeout = 100; \
               PERFORM 1 FROM {tenants} WHERE id = ''; PERFORM 1 FROM {pool} WHERE schema_name = ''; \
               PERFORM 1 FROM {runs} WHERE id = 0; PERFORM 1 FROM {rs} WHERE run_id = 0 AND tenant_id = ''; \
             EXCEPTION WHEN OTHERS THEN NULL; END $tenantctl_warm$",
            tenants = self.table("tenants"),
            pool = self.table("pool"),
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
        );
        // The first poll sends it; the connection drops the answer nobody waits for.
        let _ = client.batch_execute(&sql).now_or_never();
    }

    fn ddl(&self) -> String {
        let q = &self.q;
        let comment = quote_literal(CONTROL_VERSION);
        let tenant_states = stored_list(TenantState::ALL.iter().map(|s| s.as_str()));
        let run_states = stored_list(RunState::ALL.iter().map(|s| s.as_str()));
        let schema_states = stored_list(SchemaState::ALL.iter().map(|s| s.as_str()));
        let move_phases = stored_list(MovePhase::ALL.iter().map(|s| s.as_str()));
        let (fenced, dropped) = (SQLSTATE_FENCED, SQLSTATE_DROPPED);
        let active = TenantState::Active.literal();
        let applied = self.applied_ddl();
        format!(
            r#"
CREATE SCHEMA IF NOT EXISTS {q};
CREATE TABLE IF NOT EXISTS {q}.tenants (
    id          text PRIMARY KEY,
    schema_name text NOT NULL UNIQUE,
    state       text NOT NULL DEFAULT 'active' CHECK (state IN ({tenant_states})),
    version     integer,
    drift       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {q}.runs (
    id             bigserial PRIMARY KEY,
    command        text NOT NULL,
    target_version integer,
    digest         text NOT NULL,
    scope          text NOT NULL DEFAULT 'all',
    state          text NOT NULL CHECK (state IN ({run_states})),
    actor          text NOT NULL,
    host           text NOT NULL,
    pid            integer NOT NULL,
    backend_pid    integer NOT NULL DEFAULT pg_backend_pid(),
    total          integer NOT NULL,
    attempts       integer NOT NULL DEFAULT 1,
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at    timestamptz
);
ALTER TABLE {q}.tenants ADD COLUMN IF NOT EXISTS drift text;
ALTER TABLE {q}.tenants ADD COLUMN IF NOT EXISTS role text;
ALTER TABLE {q}.tenants ADD COLUMN IF NOT EXISTS archived_as text;
ALTER TABLE {q}.runs ADD COLUMN IF NOT EXISTS argv text NOT NULL DEFAULT '';
REVOKE ALL ON SCHEMA {q} FROM PUBLIC;
ALTER TABLE {q}.runs ADD COLUMN IF NOT EXISTS scope text NOT NULL DEFAULT 'all';
ALTER TABLE {q}.runs ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 1;
ALTER TABLE {q}.runs ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 1;
CREATE TABLE IF NOT EXISTS {q}.versions (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    first_run  bigint,
    first_seen timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION {q}.fence(p_run bigint, p_epoch bigint, p_tenant text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $fence$
BEGIN
    -- The run's row, share-locked until this transaction ends: a takeover locks it FOR
    -- UPDATE before it bumps the epoch, so it waits for this transaction, and every later
    -- one sees the new epoch and stops here.
    PERFORM 1 FROM {q}.runs WHERE id = p_run AND epoch = p_epoch FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % was taken over by another tenantctl (its epoch moved past %)', p_run, p_epoch
            USING ERRCODE = '{fenced}';
    END IF;
    -- A pooled schema (its name holds '__', which no tenant id can): its pool row, locked
    -- until this transaction ends, so that `tenant create` (FOR UPDATE SKIP LOCKED) never
    -- takes a schema a run is working on, and a run never works on one that was taken.
    IF strpos(p_tenant, '__') > 0 THEN
        PERFORM 1 FROM {q}.pool WHERE schema_name = p_tenant FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pooled schema % left the pool (taken by tenant create, or drained) while this run was going on', p_tenant
                USING ERRCODE = '{dropped}';
        END IF;
    ELSIF p_tenant IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM {q}.tenants WHERE id = p_tenant AND state = {active}) THEN
        RAISE EXCEPTION 'tenant % was dropped while this run was going on', p_tenant
            USING ERRCODE = '{dropped}';
    END IF;
END $fence$;
REVOKE ALL ON FUNCTION {q}.fence(bigint, bigint, text) FROM PUBLIC;
CREATE INDEX IF NOT EXISTS runs_running_idx ON {q}.runs (id) WHERE state = 'running';
CREATE TABLE IF NOT EXISTS {q}.run_schemas (
    run_id           bigint NOT NULL REFERENCES {q}.runs (id) ON DELETE CASCADE,
    tenant_id        text NOT NULL,
    schema_name      text NOT NULL,
    state            text NOT NULL CHECK (state IN ({schema_states})),
    version_before   integer,
    version_after    integer,
    failed_migration text,
    error            text,
    attempts         integer NOT NULL DEFAULT 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (run_id, tenant_id)
);
ALTER TABLE {q}.run_schemas ADD COLUMN IF NOT EXISTS applied integer;
ALTER TABLE {q}.run_schemas ADD COLUMN IF NOT EXISTS kind text;
ALTER TABLE {q}.run_schemas ADD COLUMN IF NOT EXISTS sqlstate text;
ALTER TABLE {q}.run_schemas ADD COLUMN IF NOT EXISTS line integer;
ALTER TABLE {q}.run_schemas ADD COLUMN IF NOT EXISTS message text;
ALTER TABLE {q}.tenants ADD COLUMN IF NOT EXISTS labels jsonb NOT NULL DEFAULT '{{}}';
ALTER TABLE {q}.run_schemas ADD COLUMN IF NOT EXISTS wave integer;
ALTER TABLE {q}.runs ADD COLUMN IF NOT EXISTS waves integer[];
ALTER TABLE {q}.runs ADD COLUMN IF NOT EXISTS halted_wave integer;
ALTER TABLE {q}.runs ADD COLUMN IF NOT EXISTS halted text;
ALTER TABLE {q}.runs DROP CONSTRAINT IF EXISTS runs_state_check;
ALTER TABLE {q}.runs ADD CONSTRAINT runs_state_check CHECK (state IN ({run_states}));
CREATE TABLE IF NOT EXISTS {q}.pool (
    schema_name text PRIMARY KEY,
    version     integer,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE SEQUENCE IF NOT EXISTS {q}.pool_seq;
ALTER TABLE {q}.run_schemas ADD COLUMN IF NOT EXISTS from_pool boolean;
-- status reads the failures of the last run, not its 50,000 successes.
CREATE INDEX IF NOT EXISTS run_schemas_failed_idx ON {q}.run_schemas (run_id) WHERE state = 'failed';
ALTER TABLE {q}.runs ADD COLUMN IF NOT EXISTS seed text;
ALTER TABLE {q}.tenants DROP CONSTRAINT IF EXISTS tenants_state_check;
ALTER TABLE {q}.tenants ADD CONSTRAINT tenants_state_check CHECK (state IN ({tenant_states}));
-- Moves (`tenant move`): one row per move on each side. On the source (`direction` out) it
-- holds the phase, and after the cutover the old copy kept until it is cleaned up; on the
-- target (in) the cluster it came from, so that a flip left half-done is finished.
CREATE TABLE IF NOT EXISTS {q}.moves (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    schema_name text NOT NULL,
    direction   text NOT NULL CHECK (direction IN ('out', 'in')),
    peer        text NOT NULL,
    online      boolean NOT NULL,
    link        text NOT NULL,
    phase       text NOT NULL CHECK (phase IN ({move_phases})),
    actor       text NOT NULL,
    old_schema  text,
    keep_until  timestamptz,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    cut_at      timestamptz,
    finished_at timestamptz,
    cleaned_at  timestamptz
);
CREATE INDEX IF NOT EXISTS tenants_in_motion_idx ON {q}.tenants (id) WHERE state IN ('moving', 'incoming');
CREATE UNIQUE INDEX IF NOT EXISTS moves_open_idx ON {q}.moves (tenant_id, direction) WHERE finished_at IS NULL;
-- `exec`: the rows the SQL affected in the tenant (summed over --until-zero's batches).
ALTER TABLE {q}.run_schemas ADD COLUMN IF NOT EXISTS rows bigint;
{applied}
-- The version is written once `applied` is complete (at once, unless it is new and the
-- schemas that existed before it must be counted first: see fill_applied).
DO $tenantctl$ BEGIN
    IF to_regclass('{q}.applied_fill') IS NULL THEN
        COMMENT ON SCHEMA {q} IS {comment};
    END IF;
END $tenantctl$;
"#
        )
    }

    /// Whether the control schema has been created (read-only commands do not create it).
    pub async fn exists(&self, client: &Client) -> anyhow::Result<bool> {
        Ok(self.installed_version(client).await?.is_some())
    }

    /// Whether the control schema is this version's (read-only commands do not upgrade it,
    /// so tables added since may be missing).
    pub async fn is_current(&self, client: &Client) -> anyhow::Result<bool> {
        Ok(self.installed_version(client).await?.as_deref() == Some(CONTROL_VERSION))
    }

    async fn installed_version(&self, client: &Client) -> anyhow::Result<Option<String>> {
        use std::sync::atomic::Ordering;
        if self.current.load(Ordering::Relaxed) {
            return Ok(Some(CONTROL_VERSION.into()));
        }
        let rows = client
            .query_typed(
                "SELECT coalesce(obj_description(oid, 'pg_namespace'), '') FROM pg_namespace WHERE nspname = $1",
                &[(&self.name, Type::TEXT)],
            )
            .await
            .map_err(|e| failed(&format!("checking the control schema {}", self.name), &e))?;
        let version: Option<String> = rows.first().map(|r| r.get(0));
        if version.as_deref() == Some(CONTROL_VERSION) {
            self.current.store(true, Ordering::Relaxed);
        }
        Ok(version)
    }

    /// Creates (or upgrades) the control schema on first use. Concurrent first runs
    /// serialise on an advisory lock, so two of them never race on `CREATE SCHEMA`.
    pub async fn bootstrap(&self, client: &Client) -> anyhow::Result<()> {
        if self.installed_version(client).await?.as_deref() == Some(CONTROL_VERSION) {
            return Ok(());
        }
        let sql = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({LOCK_NAMESPACE}, 0); SET LOCAL client_min_messages = warning; {} COMMIT;",
            self.ddl()
        );
        if let Err(e) = client.batch_execute(&sql).await {
            let _ = client.batch_execute("ROLLBACK").await;
            anyhow::bail!(
                "cannot create the control schema {}: {}; the connecting role needs CREATE on the database (or create the schema once as an owner)",
                self.name,
                describe(&e)
            );
        }
        // A new `applied` counts the histories of the schemas that were there before it.
        self.fill_applied(client).await?;
        self.current
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
