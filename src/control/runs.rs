//! Writing the run ledger: a run opened (or resumed, or recorded finished when there is
//! nothing to do), each schema's row committed with its work (the hot-path SQL), failures,
//! the shared step, and the run closed. What makes a run resumable and audited.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::ledger::RunRow;
use super::locks::LOCK_RUN;
use super::registry::int_or_null;
use super::{failed, stored_list, Control, Param, RunCommand, RunState, SchemaState, TenantState};
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
    /// `tenant create` with a seed: which seed, and its fingerprint.
    pub seed: Option<&'a str>,
}

/// SQLSTATE raised in an `exec` tenant's transaction when its run already did it.
pub const SQLSTATE_EXEC_DONE: &str = "TNX01";

/// The tenant id of the ledger row of a shared migrations' step.
pub const SHARED_ROW: &str = "(shared)";

/// How the shared migrations' step went, for [`Control::record_shared`].
pub struct SharedOutcome<'a> {
    pub before: Option<i32>,
    pub after: Option<i32>,
    pub applied: i32,
    /// Set when it failed.
    pub failure: Option<FailureRecord<'a>>,
}

/// One schema that did not commit, as the ledger records it: failed, or skipped (its
/// tenant was dropped while the run was going on).
pub struct FailureRecord<'a> {
    pub skipped: bool,
    pub id: &'a str,
    /// The failure's kind (`FailureKind::as_str`).
    pub kind: &'a str,
    pub sqlstate: Option<&'a str>,
    pub migration: Option<&'a str>,
    pub line: Option<i32>,
    /// PostgreSQL's own message, or what was wrong.
    pub message: &'a str,
    /// The whole line as shown: what, where, what was left behind, what to do.
    pub error: String,
    pub attempts: i32,
    /// Set for drift: the registry keeps it until the schema migrates cleanly again.
    pub drift: Option<&'a str>,
}

/// How [`Control::open_run`] records a new run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening<'a> {
    /// Running, its run lock held by this session until it finishes.
    Running,
    /// Already succeeded: a run with nothing to do, recorded inside the transaction that
    /// found so (it is never seen running, so it needs no run lock).
    Finished,
    /// Finished, if `when` (SQL, evaluated by the insert itself) holds, with `total` (SQL)
    /// tenants in scope; no row otherwise. See [`Control::idle_when`].
    FinishedIf { when: &'a str, total: &'a str },
}

/// The transaction-local setting in which [`Control::open_run`] leaves the id of a finished
/// run it recorded, for [`Control::run_just_opened`] (a setting, not `currval`: that is the
/// server session's, and through a pooler in transaction mode the session is shared).
const OPENED_RUN: &str = "tenantctl.opened_run";

impl Control {
    /// Whether the ledger has nothing for a new run of `command` to take over: no run is
    /// running (alive, or dead and waiting to be marked), and the newest run of `command`
    /// did not stop midway (there would be one to resume).
    pub async fn is_quiet(&self, client: &Client, command: RunCommand) -> anyhow::Result<bool> {
        let row = client
            .query_typed_one(&format!("SELECT {}", self.quiet_sql(command)), &[])
            .await
            .map_err(|e| failed("reading the run ledger", &e))?;
        Ok(row.get(0))
    }

    /// [`Control::is_quiet`] as a SQL condition.
    fn quiet_sql(&self, command: RunCommand) -> String {
        format!(
            "(NOT EXISTS (SELECT 1 FROM {runs} WHERE state = {running}) \
              AND coalesce((SELECT state FROM {runs} WHERE command = {command} ORDER BY id DESC LIMIT 1) \
                           NOT IN ({midway}), true))",
            runs = self.table("runs"),
            running = RunState::Running.literal(),
            command = command.literal(),
            midway = stored_list([RunState::Interrupted, RunState::Halted].iter().map(|s| s.as_str())),
        )
    }

    /// When a new run of `command` has nothing to do, as one SQL condition for
    /// [`Opening::FinishedIf`], and the count of tenants in its scope (every active tenant
    /// and the pool's schemas): the fleet lock is free (taken until the transaction ends),
    /// the control schema is this version's, the ledger is quiet ([`Control::is_quiet`]), no
    /// file is out of order ([`Control::out_of_order`], over the run's files), and no active
    /// tenant or pooled schema has work, `work(version, drifted)` being that test in SQL over
    /// a row's version and drift mark.
    pub fn idle_when(
        &self,
        command: RunCommand,
        work: impl Fn(&str, &str) -> String,
    ) -> (String, String) {
        let (tenants, pool) = (self.table("tenants"), self.table("pool"));
        let active = TenantState::Active.literal();
        let when = format!(
            "pg_try_advisory_xact_lock({lock}, hashtext({name})) \
             AND (SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = {name}) = {version} \
             AND {quiet} \
             AND NOT EXISTS ({late}) AND {faithful} \
             AND NOT EXISTS (SELECT 1 FROM {tenants} t WHERE t.state = {active} AND ({tenant_work})) \
             AND NOT EXISTS (SELECT 1 FROM {pool} p WHERE {pool_work})",
            lock = super::locks::LOCK_FLEET,
            name = quote_literal(&self.name),
            version = quote_literal(super::CONTROL_VERSION),
            quiet = self.quiet_sql(command),
            late = self.out_of_order_sql("$14", "$15"),
            faithful = self.files_faithful_sql("$14", "$19"),
            tenant_work = work("t.version", "t.drift IS NOT NULL"),
            pool_work = work("p.version", "false"),
        );
        let total = format!(
            "(SELECT count(*) FROM {tenants} WHERE state = {active}) + (SELECT count(*) FROM {pool})"
        );
        (when, total)
    }

    /// The run this session opened last (in this transaction: see [`Control::open_run`]
    /// with `finished`), read like any other; None when it recorded none.
    pub async fn run_just_opened(&self, client: &Client) -> anyhow::Result<Option<RunRow>> {
        let filter = format!(
            "r.id = nullif(current_setting({}, true), '')::int8",
            quote_literal(OPENED_RUN)
        );
        Ok(self
            .runs(client, &filter, "r.id", &[], 1)
            .await?
            .into_iter()
            .next())
    }

    /// Opens a run (or takes over the interrupted run `resume`) with a pending ledger row per
    /// schema it will work on, in one statement (one round trip, one commit): the run lock
    /// is taken before anyone can see the row. On a resumed run, rows already succeeded are
    /// kept as they are, and the epoch moves on (after waiting, FOR UPDATE, for any schema
    /// transaction of the run's earlier process still in flight). Returns (run id, epoch).
    /// With [`Opening::Finished`] (and no `resume`), records a finished run instead.
    #[allow(clippy::too_many_arguments)]
    pub async fn open_run(
        &self,
        client: &Client,
        info: &RunInfo<'_>,
        resume: Option<i64>,
        schemas: &[(&Tenant, Option<i32>, Option<i32>)],
        files: &[(i32, String, String)],
        wave_sizes: Option<&[i32]>,
        opening: Opening<'_>,
    ) -> anyhow::Result<Option<(i64, i64)>> {
        let file_versions: Vec<i32> = files.iter().map(|f| f.0).collect();
        let file_names: Vec<&str> = files.iter().map(|f| f.1.as_str()).collect();
        let file_sums: Vec<&str> = files.iter().map(|f| f.2.as_str()).collect();
        let ids: Vec<&str> = schemas.iter().map(|r| r.0.id()).collect();
        let names: Vec<&str> = schemas.iter().map(|r| r.0.schema()).collect();
        let versions: Vec<Option<i32>> = schemas.iter().map(|r| r.1).collect();
        let waves: Vec<Option<i32>> = schemas.iter().map(|r| r.2).collect();
        let run = match resume {
            Some(_) => format!(
                "locked AS (SELECT id FROM {runs} WHERE id = $1 FOR UPDATE), \
                 r AS (UPDATE {runs} u SET state = {running}, finished_at = NULL, attempts = u.attempts + 1, \
                     epoch = u.epoch + 1, actor = $2, argv = $3, host = $4, pid = $5, \
                     backend_pid = pg_backend_pid(), total = $6, waves = $17, halted = NULL, halted_wave = NULL \
                 FROM locked WHERE u.id = locked.id RETURNING u.id, u.epoch)",
                runs = self.table("runs"),
                running = RunState::Running.literal(),
            ),
            None => {
                let (state, finished_at, total, when) = match opening {
                    Opening::Running => (RunState::Running, "NULL", "$6", "true"),
                    Opening::Finished => (RunState::Succeeded, "clock_timestamp()", "$6", "true"),
                    Opening::FinishedIf { when, total } => {
                        (RunState::Succeeded, "clock_timestamp()", total, when)
                    }
                };
                format!(
                    "r AS (INSERT INTO {runs} (command, target_version, digest, scope, state, actor, argv, host, pid, total, waves, seed, finished_at) \
                     SELECT $7, $8, $9, $10, {state}, $2, $3, $4, $5, {total}, $17, $18, {finished_at} WHERE {when} RETURNING id, epoch)",
                    runs = self.table("runs"),
                    state = state.literal(),
                )
            }
        };
        let lock = match opening {
            Opening::Running => format!(", pg_advisory_lock({LOCK_RUN}, id::int)"),
            Opening::Finished | Opening::FinishedIf { .. } => format!(
                ", set_config({}, id::text, true)",
                quote_literal(OPENED_RUN)
            ),
        };
        let sql = format!(
            "WITH {run}, \
                  s AS (INSERT INTO {rs} AS rs (run_id, tenant_id, schema_name, version_before, state, wave) \
                        SELECT r.id, t.id, t.schema_name, t.v, {pending}, t.w \
                        FROM r, unnest($11::text[], $12::text[], $13::int4[], $16::int4[]) AS t(id, schema_name, v, w) \
                        ON CONFLICT (run_id, tenant_id) DO UPDATE SET state = EXCLUDED.state, \
                            version_before = EXCLUDED.version_before, version_after = NULL, wave = EXCLUDED.wave \
                        WHERE rs.state <> {succeeded}), \
                  k AS (INSERT INTO {known} (version, name, first_run) \
                        SELECT f.v, f.n, r.id FROM r, unnest($14::int4[], $15::text[]) AS f(v, n) \
                        ON CONFLICT (version) DO NOTHING) \
             SELECT id, epoch{lock} FROM r",
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
        let params: [Param<'_>; 19] = [
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
            (&waves, Type::INT4_ARRAY),
            (&wave_sizes, Type::INT4_ARRAY),
            (&info.seed, Type::TEXT),
            (&file_sums, Type::TEXT_ARRAY),
        ];
        let rows = client
            .query_typed(&sql, &params)
            .await
            .map_err(|e| failed(&format!("recording the run in {}.runs", self.name), &e))?;
        match (rows.first(), resume) {
            (Some(r), _) => Ok(Some((r.get(0), r.get(1)))),
            (None, Some(id)) => Err(anyhow::anyhow!(
                "recording the run in {}.runs: run {id} to resume is gone; re-run with --fresh",
                self.name,
            )),
            (None, None) => Ok(None),
        }
    }

    /// Hot path, inside a schema's transaction: its registry version and its ledger row
    /// `succeeded` (with how many migrations it applied, and whether `tenant create` took its
    /// schema from the pool), so that what the ledger says commits with what happened.
    pub fn schema_done_sql(
        &self,
        run_id: i64,
        tenant: &Tenant,
        after: Option<i32>,
        applied: usize,
        from_pool: bool,
    ) -> String {
        self.schema_row_sql(
            run_id,
            tenant,
            after,
            &format!(
                "state = {succeeded}, version_after = {v}, applied = {applied}, \
                 attempts = attempts + 1, started_at = now(), finished_at = clock_timestamp(), error = NULL, \
                 failed_migration = NULL, kind = NULL, sqlstate = NULL, line = NULL, message = NULL{pooled}",
                succeeded = SchemaState::Succeeded.literal(),
                v = int_or_null(after),
                pooled = if from_pool { ", from_pool = true" } else { "" },
            ),
        )
    }

    /// Hot path, when a schema's migrations are recorded segment by segment (no-transaction
    /// scripts): its registry version and its ledger row's progress (still pending).
    pub fn schema_progress_sql(
        &self,
        run_id: i64,
        tenant: &Tenant,
        after: Option<i32>,
        applied: usize,
    ) -> String {
        self.schema_row_sql(
            run_id,
            tenant,
            after,
            &format!(
                "version_after = {}, applied = {applied}",
                int_or_null(after)
            ),
        )
    }

    /// Hot path, `exec`: `rows` more rows on the tenant's ledger row of the run, and with
    /// `done` the row succeeded (its version untouched: exec changes data, not schemas), in
    /// the transaction that affected them.
    pub fn exec_rows_sql(&self, run_id: i64, tenant: &Tenant, rows: u64, done: bool) -> String {
        let finish = match done {
            true => format!(
                ", state = {}, version_after = version_before, applied = 0, attempts = attempts + 1, \
                 started_at = coalesce(started_at, now()), finished_at = clock_timestamp(), error = NULL, \
                 failed_migration = NULL, kind = NULL, sqlstate = NULL, line = NULL, message = NULL",
                SchemaState::Succeeded.literal()
            ),
            false => ", started_at = coalesce(started_at, now())".to_string(),
        };
        format!(
            "UPDATE {rs} SET rows = coalesce(rows, 0) + {rows}{finish} WHERE run_id = {run_id} AND tenant_id = {id}",
            rs = self.table("run_schemas"),
            id = quote_literal(tenant.id()),
        )
    }

    /// Hot path, `exec`: fails (SQLSTATE [`SQLSTATE_EXEC_DONE`]) when the run already has the
    /// tenant done: a retry after a COMMIT whose answer was lost must not run the SQL twice.
    pub fn exec_not_done_sql(&self, run_id: i64, tenant: &Tenant) -> String {
        format!(
            "DO $tenantctl$ BEGIN IF EXISTS (SELECT 1 FROM {rs} WHERE run_id = {run_id} AND tenant_id = {id} AND state = {done}) THEN \
                 RAISE EXCEPTION 'this run already ran the SQL in %', {id} USING ERRCODE = '{SQLSTATE_EXEC_DONE}'; \
             END IF; END $tenantctl$",
            rs = self.table("run_schemas"),
            id = quote_literal(tenant.id()),
            done = SchemaState::Succeeded.literal(),
        )
    }

    /// `exec`: the tenants an earlier run of the same SQL (`digest`) already ran it in.
    pub async fn exec_done(
        &self,
        client: &Client,
        digest: &str,
    ) -> anyhow::Result<std::collections::HashSet<String>> {
        let sql = format!(
            "SELECT DISTINCT s.tenant_id FROM {runs} r JOIN {rs} s ON s.run_id = r.id \
             WHERE r.command = $1 AND r.digest = $2 AND s.state = {done}",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
            done = SchemaState::Succeeded.literal(),
        );
        let rows = client
            .query_typed(
                &sql,
                &[
                    (&RunCommand::Exec.as_str(), Type::TEXT),
                    (&digest, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| failed("reading which tenants ran this SQL before", &e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The registry's version for `tenant`, and `set` on its ledger row of the run.
    fn schema_row_sql(
        &self,
        run_id: i64,
        tenant: &Tenant,
        after: Option<i32>,
        set: &str,
    ) -> String {
        format!(
            "{version}; UPDATE {rs} SET {set} WHERE run_id = {run_id} AND tenant_id = {id}",
            version = self.set_version_sql(tenant, after),
            rs = self.table("run_schemas"),
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
        fn column<'a, T>(
            rows: &'a [FailureRecord<'a>],
            f: impl Fn(&'a FailureRecord<'a>) -> T,
        ) -> Vec<T> {
            rows.iter().map(f).collect()
        }
        let ids = column(failures, |f| f.id);
        let kinds = column(failures, |f| f.kind);
        let sqlstates = column(failures, |f| f.sqlstate);
        let migrations = column(failures, |f| f.migration);
        let messages = column(failures, |f| f.message);
        let errors = column(failures, |f| f.error.as_str());
        let drift = column(failures, |f| f.drift);
        let states = column(failures, |f| match f.skipped {
            true => SchemaState::Skipped.as_str(),
            false => SchemaState::Failed.as_str(),
        });
        let lines: Vec<Option<i32>> = failures.iter().map(|f| f.line).collect();
        let attempts: Vec<i32> = failures.iter().map(|f| f.attempts).collect();
        let sql = format!(
            "WITH owner AS (SELECT 1 FROM {runs} WHERE id = $1 AND epoch = $2), \
                  f AS (SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], \
                                             $8::text[], $9::text[], $10::int4[], $11::text[], $12::text[]) \
                             AS f(id, s, kind, sqlstate, line, m, message, a, e, d) \
                        WHERE EXISTS (SELECT 1 FROM owner)), \
                  marked AS (UPDATE {tenants} t SET drift = f.d FROM f WHERE t.id = f.id AND f.d IS NOT NULL) \
             UPDATE {rs} rs SET state = f.s, kind = f.kind, sqlstate = f.sqlstate, line = f.line, \
                 failed_migration = f.m, message = f.message, error = f.e, \
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
                    (&epoch, Type::INT8),
                    (&ids, Type::TEXT_ARRAY),
                    (&states, Type::TEXT_ARRAY),
                    (&kinds, Type::TEXT_ARRAY),
                    (&sqlstates, Type::TEXT_ARRAY),
                    (&lines, Type::INT4_ARRAY),
                    (&migrations, Type::TEXT_ARRAY),
                    (&messages, Type::TEXT_ARRAY),
                    (&attempts, Type::INT4_ARRAY),
                    (&errors, Type::TEXT_ARRAY),
                    (&drift, Type::TEXT_ARRAY),
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
        self.record_single(client, info, (SHARED_ROW, schema), outcome)
            .await
            .map(drop)
    }

    /// Records a finished run of one ledger row (`id`, `schema`): the shared step, an
    /// export, a rename. In the caller's transaction, if it has one. Returns the run's id.
    pub async fn record_single(
        &self,
        client: &Client,
        info: &RunInfo<'_>,
        (id, schema): (&str, &str),
        outcome: &SharedOutcome<'_>,
    ) -> anyhow::Result<i64> {
        let (state, schema_state) = match outcome.failure {
            Some(_) => (RunState::Failed, SchemaState::Failed),
            None => (RunState::Succeeded, SchemaState::Succeeded),
        };
        let f = outcome.failure.as_ref();
        let sql = format!(
            "WITH r AS ( \
               INSERT INTO {runs} (command, target_version, digest, scope, state, actor, argv, host, pid, total, finished_at) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, clock_timestamp()) RETURNING id) \
             INSERT INTO {rs} (run_id, tenant_id, schema_name, state, version_before, version_after, applied, \
                               failed_migration, error, kind, sqlstate, line, message, attempts, started_at, finished_at) \
             SELECT id, {row}, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, 1, now(), clock_timestamp() FROM r \
             RETURNING run_id",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
            row = quote_literal(id),
        );
        let (host, pid) = (hostname(), std::process::id() as i32);
        let error = f.map(|f| f.error.as_str());
        let row = client
            .query_typed(
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
                    (&outcome.applied, Type::INT4),
                    (&f.and_then(|f| f.migration), Type::TEXT),
                    (&error, Type::TEXT),
                    (&f.map(|f| f.kind), Type::TEXT),
                    (&f.and_then(|f| f.sqlstate), Type::TEXT),
                    (&f.and_then(|f| f.line), Type::INT4),
                    (&f.map(|f| f.message), Type::TEXT),
                ],
            )
            .await
            .map_err(|e| {
                failed(
                    &format!("recording the {} run in {}.runs", info.command, self.name),
                    &e,
                )
            })?;
        row.first().map(|r| r.get(0)).ok_or_else(|| {
            anyhow::anyhow!("recording the {} run: no run id returned", info.command)
        })
    }

    /// Closes a run with its final state and releases its run lock, if the run is still
    /// this process's (its epoch unchanged). False: another runner took it over, and its
    /// state is theirs to write.
    pub async fn finish_run(
        &self,
        client: &Client,
        run_id: i64,
        epoch: i64,
        state: RunState,
        halted: Option<(usize, &str)>,
    ) -> anyhow::Result<bool> {
        let sql = format!(
            "WITH u AS (UPDATE {runs} SET state = CASE WHEN $2 = {succeeded} AND EXISTS \
                            (SELECT 1 FROM {rs} s WHERE s.run_id = $1 AND s.state = {pending}) \
                        THEN {interrupted} ELSE $2 END, \
                        finished_at = clock_timestamp(), halted_wave = $4, halted = $5 \
                        WHERE id = $1 AND epoch = $3 RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM u), pg_advisory_unlock({LOCK_RUN}, $1::int8::int4)",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
            succeeded = RunState::Succeeded.literal(),
            interrupted = RunState::Interrupted.literal(),
            pending = SchemaState::Pending.literal(),
        );
        let (wave, reason) = (halted.map(|h| h.0 as i32), halted.map(|h| h.1));
        let row = client
            .query_typed_one(
                &sql,
                &[
                    (&run_id, Type::INT8),
                    (&state.as_str(), Type::TEXT),
                    (&epoch, Type::INT8),
                    (&wave, Type::INT4),
                    (&reason, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| failed(&format!("closing run {run_id}"), &e))?;
        Ok(row.get(0))
    }
}
