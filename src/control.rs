//! The control schema: tenantctl's own bookkeeping inside the database. `tenants` is the
//! registry (with each tenant's current version, kept in the same transaction as its
//! migrations, so fleet status is one query); `runs` and `run_schemas` are the run ledger.
//!
//! Liveness without a human: every run's coordinator holds a session advisory lock keyed by
//! the run id for its whole life, so a `running` row whose lock nobody holds belongs to a
//! process that died, and is marked `interrupted`. Fleet commands (migrate, rollback) also
//! hold one fleet lock per control schema, so two of them never run at once.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::db::describe;
use crate::tenant::{quote_ident, quote_literal, Tenant};

/// First half of the per-schema advisory lock key ("tnt" in ASCII); the second half is the
/// schema's `hashtext`. Also the key of the bootstrap lock (second half 0).
pub const LOCK_NAMESPACE: i32 = 0x0074_6e74;
/// Fleet lock: one migrate/rollback at a time per control schema.
const LOCK_FLEET: i32 = LOCK_NAMESPACE + 1;
/// Run lock: held by a run's coordinator for the run's life; key = run id.
const LOCK_RUN: i32 = LOCK_NAMESPACE + 2;

/// Bumped whenever the DDL below changes; stored as the control schema's comment.
const CONTROL_VERSION: &str = "tenantctl control schema v4";

/// The control schema, with its name validated and quoted once.
#[derive(Debug, Clone)]
pub struct Control {
    name: String,
    q: String,
}

/// One registered tenant as the registry sees it.
#[derive(Debug, Clone)]
pub struct TenantRow {
    pub tenant: Tenant,
    pub state: String,
    pub version: Option<i32>,
    pub created_at: String,
    /// Why the last run refused to touch this schema (see drift detection), if it did.
    pub drift: Option<String>,
}

/// What a run row records.
#[derive(Debug, Clone)]
pub struct RunInfo<'a> {
    pub command: &'a str,
    pub target: Option<i32>,
    pub digest: &'a str,
    /// `all`, or a fingerprint of the tenant list, so only the same request resumes a run.
    pub scope: &'a str,
    pub total: usize,
    /// Who: --actor, $TENANTCTL_ACTOR, or the OS user.
    pub actor: &'a str,
    /// The command line, secrets redacted.
    pub argv: &'a str,
}

/// How the shared migrations' step went, for [`Control::record_shared`].
pub struct SharedOutcome<'a> {
    pub before: Option<i32>,
    pub after: Option<i32>,
    pub migration: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// One failed schema, as the ledger records it.
pub struct FailureRecord<'a> {
    pub id: &'a str,
    pub migration: Option<&'a str>,
    pub error: String,
    pub attempts: i32,
    /// Set for drift: the registry keeps it until the schema migrates cleanly again.
    pub drift: Option<&'a str>,
}

/// A run as `status` and the busy message show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub id: i64,
    pub command: String,
    pub target_version: Option<i32>,
    pub state: String,
    pub actor: String,
    pub host: String,
    pub pid: i32,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub total: i32,
    pub succeeded: i64,
    pub failed: i64,
    pub pending: i64,
    pub skipped: i64,
}

impl RunRow {
    pub fn describe(&self) -> String {
        // Only commands with a version to reach name one (a drop has none).
        let target = match self.target_version {
            Some(v) => format!(" to V{v}"),
            None if self.command.starts_with("tenant drop") => String::new(),
            None => " to latest".into(),
        };
        format!(
            "run {} ({}{target}) started by {} on {} (pid {}) at {}",
            self.id, self.command, self.actor, self.host, self.pid, self.started_at
        )
    }
}

/// One entry of the audit trail.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub run: i64,
    pub command: String,
    pub command_line: String,
    pub actor: String,
    pub host: String,
    pub pid: i32,
    pub outcome: String,
    pub target_version: Option<i32>,
    pub tenants: i32,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub succeeded: i64,
    pub failed: i64,
}

/// One failed schema of a run, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedRow {
    pub id: String,
    pub schema: String,
    pub migration: Option<String>,
    pub error: Option<String>,
}

fn run_error(what: &str, e: &tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", describe(e))
}

fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

const TS: &str = "'YYYY-MM-DD HH24:MI:SS \"UTC\"'";

impl Control {
    pub fn new(name: &str) -> Control {
        Control {
            name: name.to_string(),
            q: quote_ident(name),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"tenantctl".table`.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.q)
    }

    fn ddl(&self) -> String {
        let q = &self.q;
        let comment = quote_literal(CONTROL_VERSION);
        format!(
            r#"
CREATE SCHEMA IF NOT EXISTS {q};
CREATE TABLE IF NOT EXISTS {q}.tenants (
    id          text PRIMARY KEY,
    schema_name text NOT NULL UNIQUE,
    state       text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'dropped')),
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
    state          text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted')),
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
CREATE INDEX IF NOT EXISTS runs_running_idx ON {q}.runs (id) WHERE state = 'running';
CREATE TABLE IF NOT EXISTS {q}.run_schemas (
    run_id           bigint NOT NULL REFERENCES {q}.runs (id) ON DELETE CASCADE,
    tenant_id        text NOT NULL,
    schema_name      text NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed', 'skipped')),
    version_before   integer,
    version_after    integer,
    failed_migration text,
    error            text,
    attempts         integer NOT NULL DEFAULT 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (run_id, tenant_id)
);
COMMENT ON SCHEMA {q} IS {comment};
"#
        )
    }

    /// Whether the control schema has been created (read-only commands do not create it).
    pub async fn exists(&self, client: &Client) -> anyhow::Result<bool> {
        Ok(self.installed_version(client).await?.is_some())
    }

    async fn installed_version(&self, client: &Client) -> anyhow::Result<Option<String>> {
        let probe = format!(
            "SELECT coalesce(obj_description(oid, 'pg_namespace'), '') FROM pg_namespace WHERE nspname = {}",
            quote_literal(&self.name)
        );
        let messages = client
            .simple_query(&probe)
            .await
            .map_err(|e| run_error(&format!("checking the control schema {}", self.name), &e))?;
        Ok(first_value(&messages))
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
        Ok(())
    }

    /// How many active tenants this cluster holds (placement of new tenants).
    pub async fn active_count(&self, client: &Client) -> anyhow::Result<i64> {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.tenants WHERE state = 'active'",
                    self.q
                ),
                &[],
            )
            .await
            .map_err(|e| run_error("counting tenants", &e))?;
        Ok(row.get(0))
    }

    /// Registered tenants (all, or those with the given ids), ordered by id.
    pub async fn tenants(
        &self,
        client: &Client,
        ids: Option<&[String]>,
    ) -> anyhow::Result<Vec<TenantRow>> {
        let sql = format!(
            "SELECT id, schema_name, state, version, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), drift \
             FROM {} WHERE ($1::text[] IS NULL OR id = ANY($1)) ORDER BY id",
            self.table("tenants")
        );
        let ids: Option<Vec<String>> = ids.map(<[String]>::to_vec);
        let rows = client
            .query(&sql, &[&ids])
            .await
            .map_err(|e| run_error("reading the tenant registry", &e))?;
        Ok(rows
            .into_iter()
            .map(|r| TenantRow {
                tenant: Tenant::from_registry(r.get(0), r.get(1)),
                state: r.get(2),
                version: r.get(3),
                created_at: r.get(4),
                drift: r.get(5),
            })
            .collect())
    }

    /// Marks runs whose coordinator is gone (nobody holds their run lock) as interrupted.
    pub async fn reap_dead_runs(&self, client: &Client) -> anyhow::Result<u64> {
        let sql = format!(
            "UPDATE {runs} r SET state = 'interrupted', finished_at = coalesce(finished_at, clock_timestamp()) \
             WHERE r.state = 'running' AND NOT EXISTS ( \
                 SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND l.classid = {LOCK_RUN}::oid AND l.objid = r.id::oid AND l.objsubid = 2)",
            runs = self.table("runs")
        );
        client
            .execute(&sql, &[])
            .await
            .map_err(|e| run_error("checking for runs whose process died", &e))
    }

    /// Whether a run's coordinator is alive (holds the run's lock).
    pub async fn run_is_live(&self, client: &Client, run_id: i64) -> anyhow::Result<bool> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = {LOCK_RUN}::oid AND l.objid = {run_id}::oid AND l.objsubid = 2)::text"
        );
        let messages = client
            .simple_query(&sql)
            .await
            .map_err(|e| run_error("checking whether a run is alive", &e))?;
        Ok(first_value(&messages).as_deref() == Some("true"))
    }

    /// Takes the fleet lock without waiting. False: another fleet run holds it.
    pub async fn try_fleet_lock(&self, client: &Client) -> anyhow::Result<bool> {
        let sql = format!(
            "SELECT pg_try_advisory_lock({LOCK_FLEET}, hashtext({}))::text",
            quote_literal(&self.name)
        );
        let messages = client
            .simple_query(&sql)
            .await
            .map_err(|e| run_error("taking the fleet lock", &e))?;
        Ok(first_value(&messages).as_deref() == Some("true"))
    }

    /// The run currently holding the fleet lock, if it can be seen.
    pub async fn running_fleet_run(&self, client: &Client) -> anyhow::Result<Option<RunRow>> {
        Ok(self
            .runs_where(
                client,
                "r.state = 'running' AND r.command IN ('migrate', 'rollback')",
            )
            .await?
            .into_iter()
            .next())
    }

    /// The newest run of any command.
    pub async fn last_run(&self, client: &Client) -> anyhow::Result<Option<RunRow>> {
        Ok(self.runs_where(client, "true").await?.into_iter().next())
    }

    /// The newest run of `command`, if it is unfinished and asked for the same thing.
    pub async fn resumable_run(
        &self,
        client: &Client,
        info: &RunInfo<'_>,
    ) -> anyhow::Result<Option<RunRow>> {
        let latest = self
            .runs_where(
                client,
                &format!("r.command = {}", quote_literal(info.command)),
            )
            .await?
            .into_iter()
            .next();
        let Some(run) = latest else { return Ok(None) };
        if run.state != "interrupted" || run.target_version != info.target {
            return Ok(None);
        }
        let sql = format!(
            "SELECT digest, scope FROM {} WHERE id = $1",
            self.table("runs")
        );
        let row = client
            .query_one(&sql, &[&run.id])
            .await
            .map_err(|e| run_error("reading the last run", &e))?;
        let (digest, scope): (String, String) = (row.get(0), row.get(1));
        Ok((digest == info.digest && scope == info.scope).then_some(run))
    }

    async fn runs_where(&self, client: &Client, filter: &str) -> anyhow::Result<Vec<RunRow>> {
        let sql = format!(
            "SELECT r.id, r.command, r.target_version, r.state, r.actor, r.host, r.pid, \
                    to_char(r.started_at AT TIME ZONE 'UTC', {TS}), to_char(r.finished_at AT TIME ZONE 'UTC', {TS}), r.total, \
                    count(*) FILTER (WHERE s.state = 'succeeded'), count(*) FILTER (WHERE s.state = 'failed'), \
                    count(*) FILTER (WHERE s.state = 'pending'), \
                    r.total - count(s.run_id) + count(*) FILTER (WHERE s.state = 'skipped') \
             FROM (SELECT * FROM {runs} r WHERE {filter} ORDER BY id DESC LIMIT 1) r \
             LEFT JOIN {rs} s ON s.run_id = r.id GROUP BY 1,2,3,4,5,6,7,8,9,10 ORDER BY r.id DESC",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| run_error("reading the run ledger", &e))?;
        Ok(rows
            .into_iter()
            .map(|r| RunRow {
                id: r.get(0),
                command: r.get(1),
                target_version: r.get(2),
                state: r.get(3),
                actor: r.get(4),
                host: r.get(5),
                pid: r.get(6),
                started_at: r.get(7),
                finished_at: r.get(8),
                total: r.get(9),
                succeeded: r.get(10),
                failed: r.get(11),
                pending: r.get(12),
                skipped: r.get(13),
            })
            .collect())
    }

    /// The audit trail: runs started since `since` (seconds ago; all when None), oldest first.
    pub async fn audit(
        &self,
        client: &Client,
        since_secs: Option<f64>,
        limit: i64,
    ) -> anyhow::Result<Vec<AuditRow>> {
        let sql = format!(
            "SELECT r.id, r.command, r.argv, r.actor, r.host, r.pid, r.state, r.target_version, r.total, \
                    to_char(r.started_at AT TIME ZONE 'UTC', {TS}), to_char(r.finished_at AT TIME ZONE 'UTC', {TS}), \
                    (SELECT count(*) FROM {rs} s WHERE s.run_id = r.id AND s.state = 'succeeded'), \
                    (SELECT count(*) FROM {rs} s WHERE s.run_id = r.id AND s.state = 'failed') \
             FROM (SELECT * FROM {runs} WHERE $1::float8 IS NULL OR started_at >= now() - make_interval(secs => $1::float8) \
                   ORDER BY id DESC LIMIT $2) r ORDER BY r.id",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
        );
        let rows = client
            .query(&sql, &[&since_secs, &limit])
            .await
            .map_err(|e| run_error("reading the audit trail", &e))?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRow {
                run: r.get(0),
                command: r.get(1),
                command_line: r.get(2),
                actor: r.get(3),
                host: r.get(4),
                pid: r.get(5),
                outcome: r.get(6),
                target_version: r.get(7),
                tenants: r.get(8),
                started_at: r.get(9),
                finished_at: r.get(10),
                succeeded: r.get(11),
                failed: r.get(12),
            })
            .collect())
    }

    /// Failed schemas of a run (at most `limit`).
    pub async fn failed_schemas(
        &self,
        client: &Client,
        run_id: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<FailedRow>> {
        let sql = format!(
            "SELECT tenant_id, schema_name, failed_migration, error FROM {} \
             WHERE run_id = $1 AND state = 'failed' ORDER BY tenant_id LIMIT $2",
            self.table("run_schemas")
        );
        let rows = client
            .query(&sql, &[&run_id, &limit])
            .await
            .map_err(|e| run_error("reading the run's failures", &e))?;
        Ok(rows
            .into_iter()
            .map(|r| FailedRow {
                id: r.get(0),
                schema: r.get(1),
                migration: r.get(2),
                error: r.get(3),
            })
            .collect())
    }

    /// Opens a run (or takes over the interrupted run `resume`) and records the schemas it
    /// will work on, in one transaction: the run lock is taken before anyone can see the
    /// row, and a single commit covers the run and its rows.
    pub async fn open_run(
        &self,
        client: &Client,
        info: &RunInfo<'_>,
        resume: Option<i64>,
        rows: &[(&Tenant, Option<i32>, &str)],
    ) -> anyhow::Result<i64> {
        let first = match resume {
            Some(run_id) => format!(
                "BEGIN; SELECT pg_advisory_lock({LOCK_RUN}, {run_id}::int); \
                 UPDATE {} SET state = 'running', finished_at = NULL, attempts = attempts + 1, \
                     actor = {}, argv = {}, host = {}, pid = {}, backend_pid = pg_backend_pid(), total = {} \
                 WHERE id = {run_id} RETURNING id",
                self.table("runs"),
                quote_literal(info.actor),
                quote_literal(info.argv),
                quote_literal(&hostname()),
                std::process::id() as i32,
                info.total,
            ),
            None => format!(
                "BEGIN; WITH r AS ( \
                   INSERT INTO {} (command, target_version, digest, scope, state, actor, argv, host, pid, total) \
                   VALUES ({}, {}, {}, {}, 'running', {}, {}, {}, {}, {}) RETURNING id) \
                 SELECT id, pg_advisory_lock({LOCK_RUN}, id::int) FROM r",
                self.table("runs"),
                quote_literal(info.command),
                info.target.map_or("NULL".into(), |v| v.to_string()),
                quote_literal(info.digest),
                quote_literal(info.scope),
                quote_literal(info.actor),
                quote_literal(info.argv),
                quote_literal(&hostname()),
                std::process::id() as i32,
                info.total,
            ),
        };
        let result = async {
            let messages = client.simple_query(&first).await?;
            let id: i64 = messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                    _ => None,
                })
                .next()
                .unwrap_or_default();
            self.add_run_schemas(client, id, rows).await?;
            client.batch_execute("COMMIT").await?;
            Ok::<i64, tokio_postgres::Error>(id)
        }
        .await;
        match result {
            Ok(id) => Ok(id),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(run_error(
                    &format!("recording the run in {}.runs", self.name),
                    &e,
                ))
            }
        }
    }

    /// Adds one ledger row per schema of a run, in one statement. On a resumed run, rows
    /// already succeeded are kept as they are.
    async fn add_run_schemas(
        &self,
        client: &Client,
        run_id: i64,
        rows: &[(&Tenant, Option<i32>, &str)],
    ) -> Result<(), tokio_postgres::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.0.id()).collect();
        let schemas: Vec<&str> = rows.iter().map(|r| r.0.schema()).collect();
        let versions: Vec<Option<i32>> = rows.iter().map(|r| r.1).collect();
        let states: Vec<&str> = rows.iter().map(|r| r.2).collect();
        let sql = format!(
            "INSERT INTO {t} AS rs (run_id, tenant_id, schema_name, version_before, version_after, state) \
             SELECT $1, t.id, t.schema_name, t.v, CASE WHEN t.state = 'skipped' THEN t.v END, t.state \
             FROM unnest($2::text[], $3::text[], $4::int4[], $5::text[]) AS t(id, schema_name, v, state) \
             ON CONFLICT (run_id, tenant_id) DO UPDATE SET state = EXCLUDED.state, \
                 version_before = EXCLUDED.version_before, version_after = EXCLUDED.version_after \
             WHERE rs.state <> 'succeeded'",
            t = self.table("run_schemas")
        );
        client
            .execute(&sql, &[&run_id, &ids, &schemas, &versions, &states])
            .await
            .map(|_| ())
    }

    /// Records failed schemas (their transactions rolled back) in one statement, and marks
    /// drifted tenants in the registry so that `status` shows them.
    pub async fn record_failures(
        &self,
        client: &Client,
        run_id: i64,
        failures: &[FailureRecord<'_>],
    ) -> anyhow::Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = failures.iter().map(|f| f.id).collect();
        let migrations: Vec<Option<&str>> = failures.iter().map(|f| f.migration).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let attempts: Vec<i32> = failures.iter().map(|f| f.attempts).collect();
        let drift: Vec<Option<&str>> = failures.iter().map(|f| f.drift).collect();
        let sql = format!(
            "WITH f AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::int4[], $6::text[]) AS f(id, m, e, a, d)), \
                  marked AS (UPDATE {tenants} t SET drift = f.d FROM f WHERE t.id = f.id AND f.d IS NOT NULL) \
             UPDATE {rs} rs SET state = 'failed', failed_migration = f.m, error = f.e, \
                 attempts = rs.attempts + f.a, finished_at = clock_timestamp() \
             FROM f WHERE rs.run_id = $1 AND rs.tenant_id = f.id AND rs.state <> 'succeeded'",
            tenants = self.table("tenants"),
            rs = self.table("run_schemas")
        );
        client
            .execute(
                &sql,
                &[&run_id, &ids, &migrations, &errors, &attempts, &drift],
            )
            .await
            .map_err(|e| run_error("recording failed schemas", &e))?;
        Ok(())
    }

    /// Records the shared migrations' step of a cluster as a finished run of its own with one
    /// ledger row, `(shared)` for the shared schema, so the audit trail shows who changed
    /// the shared tables, when, and how it went.
    pub async fn record_shared(
        &self,
        client: &Client,
        info: &RunInfo<'_>,
        schema: &str,
        outcome: &SharedOutcome<'_>,
    ) -> anyhow::Result<()> {
        let opt = |v: Option<i32>| v.map_or("NULL".to_string(), |v| v.to_string());
        let text = |v: Option<&str>| v.map_or("NULL".to_string(), quote_literal);
        let state = if outcome.error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        let sql = format!(
            "WITH r AS ( \
               INSERT INTO {runs} (command, target_version, digest, scope, state, actor, argv, host, pid, total, finished_at) \
               VALUES ({cmd}, {target}, {digest}, {scope}, {state_lit}, {actor}, {argv}, {host}, {pid}, 1, clock_timestamp()) RETURNING id) \
             INSERT INTO {rs} (run_id, tenant_id, schema_name, state, version_before, version_after, failed_migration, error, attempts, started_at, finished_at) \
             SELECT id, '(shared)', {schema}, {state_lit}, {before}, {after}, {migration}, {error}, 1, now(), clock_timestamp() FROM r",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
            cmd = quote_literal(info.command),
            target = opt(info.target),
            digest = quote_literal(info.digest),
            scope = quote_literal(info.scope),
            state_lit = quote_literal(state),
            actor = quote_literal(info.actor),
            argv = quote_literal(info.argv),
            host = quote_literal(&hostname()),
            pid = std::process::id() as i32,
            schema = quote_literal(schema),
            before = opt(outcome.before),
            after = opt(outcome.after),
            migration = text(outcome.migration),
            error = text(outcome.error),
        );
        client.batch_execute(&sql).await.map_err(|e| {
            run_error(
                &format!("recording the shared migrations in {}.runs", self.name),
                &e,
            )
        })
    }

    /// Closes a run with its final state and releases its run lock.
    pub async fn finish_run(
        &self,
        client: &Client,
        run_id: i64,
        state: &str,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE {} SET state = {}, finished_at = clock_timestamp() WHERE id = {run_id}; \
             SELECT pg_advisory_unlock({LOCK_RUN}, {run_id}::int)",
            self.table("runs"),
            quote_literal(state)
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| run_error(&format!("closing run {run_id}"), &e))
    }
}

/// Who is running tenantctl: `--actor`, else `TENANTCTL_ACTOR`, else the OS user.
pub fn actor(flag: Option<&str>) -> String {
    if let Some(a) = flag.filter(|a| !a.is_empty()) {
        return a.to_string();
    }
    ["TENANTCTL_ACTOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .or_else(os_user)
        .unwrap_or_else(|| "unknown".into())
}

/// The login name of this process's uid, from /proc and /etc/passwd (no environment needed).
fn os_user() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

/// Where tenantctl runs.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
