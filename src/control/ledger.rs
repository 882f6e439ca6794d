//! The run ledger: `runs` (one row per command that changes something) and `run_schemas`
//! (one row per schema a run works on). It is what makes a run resumable, reportable and
//! audited.

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::locks::LOCK_RUN;
use super::registry::int_or_null;
use super::{failed, states, Control, Param, RunCommand, RunState, SchemaState, TenantState, TS};
use crate::tenant::{quote_literal, Tenant};
use crate::whoami::hostname;

/// What a run row records.
#[derive(Debug, Clone)]
pub struct RunInfo<'a> {
    pub command: RunCommand,
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

/// One schema that did not commit, as the ledger records it: failed, or skipped (its
/// tenant was dropped while the run was going on).
pub struct FailureRecord<'a> {
    pub skipped: bool,
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
    pub command: RunCommand,
    pub target_version: Option<i32>,
    pub state: RunState,
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
    /// The migration set's digest and the tenant scope: what a resumed run must match.
    #[serde(skip)]
    digest: String,
    #[serde(skip)]
    scope: String,
}

impl RunRow {
    pub fn describe(&self) -> String {
        let target = match (self.target_version, self.command.has_target()) {
            (Some(v), _) => format!(" to V{v}"),
            (None, true) => " to latest".into(),
            (None, false) => String::new(),
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
    pub command: RunCommand,
    pub command_line: String,
    pub actor: String,
    pub host: String,
    pub pid: i32,
    pub outcome: RunState,
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

fn command_of(r: &Row, i: usize) -> anyhow::Result<RunCommand> {
    let text: String = r.get(i);
    RunCommand::parse(&text).ok_or_else(|| states::unknown("the run command", &text))
}

fn state_of(r: &Row, i: usize) -> anyhow::Result<RunState> {
    let text: String = r.get(i);
    RunState::parse(&text).ok_or_else(|| states::unknown("the run state", &text))
}

impl Control {
    /// The newest run matching `filter` (SQL over `r`, with `params`), with its counts.
    async fn newest_run(
        &self,
        client: &Client,
        filter: &str,
        params: &[Param<'_>],
    ) -> anyhow::Result<Option<RunRow>> {
        let sql = format!(
            "SELECT r.id, r.command, r.target_version, r.state, r.actor, r.host, r.pid, \
                    to_char(r.started_at AT TIME ZONE 'UTC', {TS}), to_char(r.finished_at AT TIME ZONE 'UTC', {TS}), r.total, \
                    count(*) FILTER (WHERE s.state = {succeeded}), count(*) FILTER (WHERE s.state = {failed}), \
                    count(*) FILTER (WHERE s.state = {pending}), \
                    r.total - count(s.run_id) + count(*) FILTER (WHERE s.state = {skipped}), r.digest, r.scope \
             FROM (SELECT * FROM {runs} r WHERE {filter} ORDER BY id DESC LIMIT 1) r \
             LEFT JOIN {rs} s ON s.run_id = r.id GROUP BY 1,2,3,4,5,6,7,8,9,10,15,16",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
            succeeded = SchemaState::Succeeded.literal(),
            failed = SchemaState::Failed.literal(),
            pending = SchemaState::Pending.literal(),
            skipped = SchemaState::Skipped.literal(),
        );
        let rows = client
            .query_typed(&sql, params)
            .await
            .map_err(|e| failed("reading the run ledger", &e))?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(RunRow {
            id: r.get(0),
            command: command_of(r, 1)?,
            target_version: r.get(2),
            state: state_of(r, 3)?,
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
            digest: r.get(14),
            scope: r.get(15),
        }))
    }

    /// The newest run of any command.
    pub async fn last_run(&self, client: &Client) -> anyhow::Result<Option<RunRow>> {
        self.newest_run(client, "true", &[]).await
    }

    /// The run currently holding the fleet lock, if it can be seen.
    pub async fn running_fleet_run(&self, client: &Client) -> anyhow::Result<Option<RunRow>> {
        let fleet: Vec<&str> = RunCommand::ALL
            .iter()
            .filter(|c| c.is_fleet_command())
            .map(|c| c.as_str())
            .collect();
        let filter = format!(
            "r.state = {} AND r.command = ANY($1)",
            RunState::Running.literal()
        );
        self.newest_run(client, &filter, &[(&fleet, Type::TEXT_ARRAY)])
            .await
    }

    /// The newest run of `info.command`, if it was interrupted and asked for the same thing
    /// (target, migration set, tenants).
    pub async fn resumable_run(
        &self,
        client: &Client,
        info: &RunInfo<'_>,
    ) -> anyhow::Result<Option<RunRow>> {
        let run = self
            .newest_run(
                client,
                "r.command = $1",
                &[(&info.command.as_str(), Type::TEXT)],
            )
            .await?;
        Ok(run.filter(|r| {
            r.state == RunState::Interrupted
                && r.target_version == info.target
                && r.digest == info.digest
                && r.scope == info.scope
        }))
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
                    (SELECT count(*) FROM {rs} s WHERE s.run_id = r.id AND s.state = {succeeded}), \
                    (SELECT count(*) FROM {rs} s WHERE s.run_id = r.id AND s.state = {failed}) \
             FROM (SELECT * FROM {runs} WHERE $1::float8 IS NULL OR started_at >= now() - make_interval(secs => $1::float8) \
                   ORDER BY id DESC LIMIT $2) r ORDER BY r.id",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
            succeeded = SchemaState::Succeeded.literal(),
            failed = SchemaState::Failed.literal(),
        );
        let rows = client
            .query_typed(&sql, &[(&since_secs, Type::FLOAT8), (&limit, Type::INT8)])
            .await
            .map_err(|e| failed("reading the audit trail", &e))?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    run: r.get(0),
                    command: command_of(r, 1)?,
                    command_line: r.get(2),
                    actor: r.get(3),
                    host: r.get(4),
                    pid: r.get(5),
                    outcome: state_of(r, 6)?,
                    target_version: r.get(7),
                    tenants: r.get(8),
                    started_at: r.get(9),
                    finished_at: r.get(10),
                    succeeded: r.get(11),
                    failed: r.get(12),
                })
            })
            .collect()
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
             WHERE run_id = $1 AND state = {} ORDER BY tenant_id LIMIT $2",
            self.table("run_schemas"),
            SchemaState::Failed.literal(),
        );
        let rows = client
            .query_typed(&sql, &[(&run_id, Type::INT8), (&limit, Type::INT8)])
            .await
            .map_err(|e| failed("reading the run's failures", &e))?;
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

    /// Opens a run (or takes over the interrupted run `resume`) with a pending ledger row per
    /// schema it will work on, in one statement (one round trip, one commit): the run lock
    /// is taken before anyone can see the row. On a resumed run, rows already succeeded are
    /// kept as they are, and the epoch moves on (after waiting, FOR UPDATE, for any schema
    /// transaction of the run's earlier process still in flight). Returns (run id, epoch).
    pub async fn open_run(
        &self,
        client: &Client,
        info: &RunInfo<'_>,
        resume: Option<i64>,
        schemas: &[(&Tenant, Option<i32>)],
        files: &[(i32, String)],
    ) -> anyhow::Result<(i64, i64)> {
        let file_versions: Vec<i32> = files.iter().map(|f| f.0).collect();
        let file_names: Vec<&str> = files.iter().map(|f| f.1.as_str()).collect();
        let ids: Vec<&str> = schemas.iter().map(|r| r.0.id()).collect();
        let names: Vec<&str> = schemas.iter().map(|r| r.0.schema()).collect();
        let versions: Vec<Option<i32>> = schemas.iter().map(|r| r.1).collect();
        let run = match resume {
            Some(_) => format!(
                "locked AS (SELECT id FROM {runs} WHERE id = $1 FOR UPDATE), \
                 r AS (UPDATE {runs} u SET state = {running}, finished_at = NULL, attempts = u.attempts + 1, \
                     epoch = u.epoch + 1, actor = $2, argv = $3, host = $4, pid = $5, \
                     backend_pid = pg_backend_pid(), total = $6 \
                 FROM locked WHERE u.id = locked.id RETURNING u.id, u.epoch)",
                runs = self.table("runs"),
                running = RunState::Running.literal(),
            ),
            None => format!(
                "r AS (INSERT INTO {runs} (command, target_version, digest, scope, state, actor, argv, host, pid, total) \
                 VALUES ($7, $8, $9, $10, {running}, $2, $3, $4, $5, $6) RETURNING id, epoch)",
                runs = self.table("runs"),
                running = RunState::Running.literal(),
            ),
        };
        let sql = format!(
            "WITH {run}, \
                  s AS (INSERT INTO {rs} AS rs (run_id, tenant_id, schema_name, version_before, state) \
                        SELECT r.id, t.id, t.schema_name, t.v, {pending} \
                        FROM r, unnest($11::text[], $12::text[], $13::int4[]) AS t(id, schema_name, v) \
                        ON CONFLICT (run_id, tenant_id) DO UPDATE SET state = EXCLUDED.state, \
                            version_before = EXCLUDED.version_before, version_after = NULL \
                        WHERE rs.state <> {succeeded}), \
                  k AS (INSERT INTO {known} (version, name, first_run) \
                        SELECT f.v, f.n, r.id FROM r, unnest($14::int4[], $15::text[]) AS f(v, n) \
                        ON CONFLICT (version) DO NOTHING) \
             SELECT id, epoch, pg_advisory_lock({LOCK_RUN}, id::int) FROM r",
            known = self.table("versions"),
            rs = self.table("run_schemas"),
            pending = SchemaState::Pending.literal(),
            succeeded = SchemaState::Succeeded.literal(),
        );
        let (host, pid, total) = (
            hostname(),
            std::process::id() as i32,
            i32::try_from(info.total).unwrap_or(i32::MAX),
        );
        let params: [Param<'_>; 15] = [
            (&resume, Type::INT8),
            (&info.actor, Type::TEXT),
            (&info.argv, Type::TEXT),
            (&host, Type::TEXT),
            (&pid, Type::INT4),
            (&total, Type::INT4),
            (&info.command.as_str(), Type::TEXT),
            (&info.target, Type::INT4),
            (&info.digest, Type::TEXT),
            (&info.scope, Type::TEXT),
            (&ids, Type::TEXT_ARRAY),
            (&names, Type::TEXT_ARRAY),
            (&versions, Type::INT4_ARRAY),
            (&file_versions, Type::INT4_ARRAY),
            (&file_names, Type::TEXT_ARRAY),
        ];
        let rows = client
            .query_typed(&sql, &params)
            .await
            .map_err(|e| failed(&format!("recording the run in {}.runs", self.name), &e))?;
        rows.first().map(|r| (r.get(0), r.get(1))).ok_or_else(|| {
            anyhow::anyhow!(
                "recording the run in {}.runs: run {} to resume is gone; re-run with --fresh",
                self.name,
                resume.unwrap_or_default()
            )
        })
    }

    /// Migration files that are out of order: never part of any earlier run's set, yet below
    /// the highest version a tenant is at, so refinery would never apply them (it applies in
    /// version order) and they would be skipped silently. Empty until a first run has
    /// recorded a set (an upgraded control schema starts from what it sees).
    pub async fn out_of_order(
        &self,
        client: &Client,
        files: &[(i32, String)],
    ) -> anyhow::Result<Vec<(i32, String)>> {
        let versions: Vec<i32> = files.iter().map(|f| f.0).collect();
        let names: Vec<&str> = files.iter().map(|f| f.1.as_str()).collect();
        let sql = format!(
            "SELECT f.v, f.n FROM unnest($1::int4[], $2::text[]) AS f(v, n) \
             WHERE EXISTS (SELECT 1 FROM {known}) \
               AND NOT EXISTS (SELECT 1 FROM {known} k WHERE k.version = f.v) \
               AND f.v < (SELECT max(version) FROM {tenants} WHERE state = {active}) \
             ORDER BY 1",
            known = self.table("versions"),
            tenants = self.table("tenants"),
            active = TenantState::Active.literal(),
        );
        let rows = client
            .query_typed(
                &sql,
                &[(&versions, Type::INT4_ARRAY), (&names, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(|e| failed("comparing the migration files with the runs so far", &e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Hot path, inside a schema's transaction: its registry version and its ledger row
    /// `succeeded`, so that what the ledger says commits with what happened.
    pub fn schema_done_sql(&self, run_id: i64, tenant: &Tenant, after: Option<i32>) -> String {
        format!(
            "{version}; UPDATE {rs} SET state = {succeeded}, version_after = {after}, attempts = attempts + 1, \
                 started_at = now(), finished_at = clock_timestamp(), error = NULL, failed_migration = NULL \
             WHERE run_id = {run_id} AND tenant_id = {id}",
            version = self.set_version_sql(tenant, after),
            rs = self.table("run_schemas"),
            succeeded = SchemaState::Succeeded.literal(),
            after = int_or_null(after),
            id = quote_literal(tenant.id()),
        )
    }

    /// Records failed schemas (their transactions rolled back) in one statement, and marks
    /// drifted tenants in the registry so that `status` shows them.
    pub async fn record_failures(
        &self,
        client: &Client,
        run_id: i64,
        epoch: i64,
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
        let states: Vec<&str> = failures
            .iter()
            .map(|f| match f.skipped {
                true => SchemaState::Skipped.as_str(),
                false => SchemaState::Failed.as_str(),
            })
            .collect();
        let sql = format!(
            "WITH owner AS (SELECT 1 FROM {runs} WHERE id = $1 AND epoch = $7), \
                  f AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::int4[], $6::text[], $8::text[]) AS f(id, m, e, a, d, s) \
                        WHERE EXISTS (SELECT 1 FROM owner)), \
                  marked AS (UPDATE {tenants} t SET drift = f.d FROM f WHERE t.id = f.id AND f.d IS NOT NULL) \
             UPDATE {rs} rs SET state = f.s, failed_migration = f.m, error = f.e, \
                 attempts = rs.attempts + f.a, finished_at = clock_timestamp() \
             FROM f WHERE rs.run_id = $1 AND rs.tenant_id = f.id AND rs.state <> {succeeded}",
            runs = self.table("runs"),
            tenants = self.table("tenants"),
            rs = self.table("run_schemas"),
            succeeded = SchemaState::Succeeded.literal(),
        );
        client
            .execute_typed(
                &sql,
                &[
                    (&run_id, Type::INT8),
                    (&ids, Type::TEXT_ARRAY),
                    (&migrations, Type::TEXT_ARRAY),
                    (&errors, Type::TEXT_ARRAY),
                    (&attempts, Type::INT4_ARRAY),
                    (&drift, Type::TEXT_ARRAY),
                    (&epoch, Type::INT8),
                    (&states, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map_err(|e| failed("recording failed schemas", &e))?;
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
        let (state, schema_state) = match outcome.error {
            Some(_) => (RunState::Failed, SchemaState::Failed),
            None => (RunState::Succeeded, SchemaState::Succeeded),
        };
        let sql = format!(
            "WITH r AS ( \
               INSERT INTO {runs} (command, target_version, digest, scope, state, actor, argv, host, pid, total, finished_at) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, clock_timestamp()) RETURNING id) \
             INSERT INTO {rs} (run_id, tenant_id, schema_name, state, version_before, version_after, failed_migration, error, attempts, started_at, finished_at) \
             SELECT id, '(shared)', $10, $11, $12, $13, $14, $15, 1, now(), clock_timestamp() FROM r",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
        );
        let (host, pid) = (hostname(), std::process::id() as i32);
        client
            .execute_typed(
                &sql,
                &[
                    (&info.command.as_str(), Type::TEXT),
                    (&info.target, Type::INT4),
                    (&info.digest, Type::TEXT),
                    (&info.scope, Type::TEXT),
                    (&state.as_str(), Type::TEXT),
                    (&info.actor, Type::TEXT),
                    (&info.argv, Type::TEXT),
                    (&host, Type::TEXT),
                    (&pid, Type::INT4),
                    (&schema, Type::TEXT),
                    (&schema_state.as_str(), Type::TEXT),
                    (&outcome.before, Type::INT4),
                    (&outcome.after, Type::INT4),
                    (&outcome.migration, Type::TEXT),
                    (&outcome.error, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| {
                failed(
                    &format!("recording the shared migrations in {}.runs", self.name),
                    &e,
                )
            })?;
        Ok(())
    }

    /// Closes a run with its final state and releases its run lock.
    /// Closes a run with its final state and releases its run lock, if the run is still
    /// this process's (its epoch unchanged). False: another runner took it over, and its
    /// state is theirs to write.
    pub async fn finish_run(
        &self,
        client: &Client,
        run_id: i64,
        epoch: i64,
        state: RunState,
    ) -> anyhow::Result<bool> {
        let sql = format!(
            "WITH u AS (UPDATE {} SET state = $2, finished_at = clock_timestamp() WHERE id = $1 AND epoch = $3 RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM u), pg_advisory_unlock({LOCK_RUN}, $1::int8::int4)",
            self.table("runs"),
        );
        let row = client
            .query_typed_one(
                &sql,
                &[
                    (&run_id, Type::INT8),
                    (&state.as_str(), Type::TEXT),
                    (&epoch, Type::INT8),
                ],
            )
            .await
            .map_err(|e| failed(&format!("closing run {run_id}"), &e))?;
        Ok(row.get(0))
    }
}
