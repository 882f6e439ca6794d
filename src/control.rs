//! The control schema: tenantctl's own bookkeeping inside the database. `tenants` is the
//! registry (with each tenant's current version, kept in the same transaction as its
//! migrations, so fleet status is one query); `runs` and `run_schemas` are the run ledger.

use anyhow::Context as _;
use tokio_postgres::Client;

use crate::db::describe;
use crate::tenant::{quote_ident, quote_literal, Tenant};

/// First half of every advisory-lock key tenantctl takes ("tnt" in ASCII); the second
/// half identifies the object (a schema's `hashtext`, or 0 for the control schema itself).
pub const LOCK_NAMESPACE: i32 = 0x0074_6e74;

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
}

/// What a run row records about who started it.
#[derive(Debug, Clone)]
pub struct RunInfo<'a> {
    pub command: &'a str,
    pub target: Option<i32>,
    pub digest: &'a str,
    pub total: usize,
}

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
        format!(
            r#"
CREATE SCHEMA IF NOT EXISTS {q};
CREATE TABLE IF NOT EXISTS {q}.tenants (
    id          text PRIMARY KEY,
    schema_name text NOT NULL UNIQUE,
    state       text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'dropped')),
    version     integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {q}.runs (
    id             bigserial PRIMARY KEY,
    command        text NOT NULL,
    target_version integer,
    digest         text NOT NULL,
    state          text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted')),
    actor          text NOT NULL,
    host           text NOT NULL,
    pid            integer NOT NULL,
    backend_pid    integer NOT NULL DEFAULT pg_backend_pid(),
    total          integer NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at    timestamptz
);
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
"#
        )
    }

    /// Whether the control schema has been created (read-only commands do not create it).
    pub async fn exists(&self, client: &Client) -> anyhow::Result<bool> {
        let probe = format!(
            "SELECT to_regclass({})::text",
            quote_literal(&format!("{}.run_schemas", self.q))
        );
        Ok(client
            .simple_query(&probe)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "checking the control schema {}: {}",
                    self.name,
                    describe(&e)
                )
            })?
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0).is_some())))
    }

    /// Creates the control schema on first use. Concurrent first runs serialise on an
    /// advisory lock, so two of them never race on `CREATE SCHEMA`.
    pub async fn bootstrap(&self, client: &Client) -> anyhow::Result<()> {
        if self.exists(client).await? {
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

    /// Registered tenants (all, or those with the given ids), ordered by id.
    pub async fn tenants(
        &self,
        client: &Client,
        ids: Option<&[String]>,
    ) -> anyhow::Result<Vec<TenantRow>> {
        let sql = format!(
            "SELECT id, schema_name, state, version, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM {} WHERE ($1::text[] IS NULL OR id = ANY($1)) ORDER BY id",
            self.table("tenants")
        );
        let ids: Option<Vec<String>> = ids.map(<[String]>::to_vec);
        let rows = client
            .query(&sql, &[&ids])
            .await
            .map_err(|e| anyhow::anyhow!("reading the tenant registry: {}", describe(&e)))?;
        Ok(rows
            .into_iter()
            .map(|r| TenantRow {
                tenant: Tenant::from_registry(r.get(0), r.get(1)),
                state: r.get(2),
                version: r.get(3),
                created_at: r.get(4),
            })
            .collect())
    }

    /// Opens a run in the ledger and returns its id.
    pub async fn start_run(&self, client: &Client, info: &RunInfo<'_>) -> anyhow::Result<i64> {
        let sql = format!(
            "INSERT INTO {} (command, target_version, digest, state, actor, host, pid, total) \
             VALUES ($1, $2, $3, 'running', $4, $5, $6, $7) RETURNING id",
            self.table("runs")
        );
        let row = client
            .query_one(
                &sql,
                &[
                    &info.command,
                    &info.target,
                    &info.digest,
                    &actor(),
                    &hostname(),
                    &(std::process::id() as i32),
                    &(info.total as i32),
                ],
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!("recording the run in {}.runs: {}", self.name, describe(&e))
            })?;
        Ok(row.get(0))
    }

    /// Adds one ledger row per schema of a run, in one statement.
    pub async fn add_run_schemas(
        &self,
        client: &Client,
        run_id: i64,
        rows: &[(&Tenant, Option<i32>, &str)],
    ) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.0.id()).collect();
        let schemas: Vec<&str> = rows.iter().map(|r| r.0.schema()).collect();
        let versions: Vec<Option<i32>> = rows.iter().map(|r| r.1).collect();
        let states: Vec<&str> = rows.iter().map(|r| r.2).collect();
        let sql = format!(
            "INSERT INTO {} (run_id, tenant_id, schema_name, version_before, version_after, state) \
             SELECT $1, t.id, t.schema_name, t.v, CASE WHEN t.state = 'skipped' THEN t.v END, t.state \
             FROM unnest($2::text[], $3::text[], $4::int4[], $5::text[]) AS t(id, schema_name, v, state)",
            self.table("run_schemas")
        );
        client
            .execute(&sql, &[&run_id, &ids, &schemas, &versions, &states])
            .await
            .map_err(|e| anyhow::anyhow!("recording the run's schemas: {}", describe(&e)))?;
        Ok(())
    }

    /// Records failed schemas (their transactions rolled back) in one statement.
    pub async fn record_failures(
        &self,
        client: &Client,
        run_id: i64,
        failures: &[(&str, Option<String>, String)],
    ) -> anyhow::Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = failures.iter().map(|f| f.0).collect();
        let migrations: Vec<Option<&str>> = failures.iter().map(|f| f.1.as_deref()).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.2.as_str()).collect();
        let sql = format!(
            "UPDATE {} rs SET state = 'failed', failed_migration = f.m, error = f.e, \
                 attempts = rs.attempts + 1, finished_at = clock_timestamp() \
             FROM unnest($2::text[], $3::text[], $4::text[]) AS f(id, m, e) \
             WHERE rs.run_id = $1 AND rs.tenant_id = f.id AND rs.state <> 'succeeded'",
            self.table("run_schemas")
        );
        client
            .execute(&sql, &[&run_id, &ids, &migrations, &errors])
            .await
            .map_err(|e| anyhow::anyhow!("recording failed schemas: {}", describe(&e)))?;
        Ok(())
    }

    /// Closes a run with its final state.
    pub async fn finish_run(
        &self,
        client: &Client,
        run_id: i64,
        state: &str,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE {} SET state = $2, finished_at = clock_timestamp() WHERE id = $1",
            self.table("runs")
        );
        client
            .execute(&sql, &[&run_id, &state])
            .await
            .map_err(|e| anyhow::anyhow!("closing run {run_id}: {}", describe(&e)))
            .context("the run's schemas are recorded; only its final state is missing")?;
        Ok(())
    }
}

/// Who is running tenantctl: `TENANTCTL_ACTOR`, else the OS user.
pub fn actor() -> String {
    ["TENANTCTL_ACTOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
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
