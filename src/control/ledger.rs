//! The run ledger: `runs` (one row per command that changes something) and `run_schemas`
//! (one row per schema a run works on). It is what makes a run resumable, reportable and
//! audited.

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::locks::LOCK_RUN;
use super::registry::int_or_null;
use super::{
    failed, states, stored_list, Control, Param, RunCommand, RunState, SchemaResult, SchemaState,
    TenantState, TS,
};
use crate::labels::Labels;
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

/// How a run's schemas ended, counted by the ledger (see [`SchemaResult`]): `done`,
/// `unchanged` (in scope, nothing to do), `failed`, `not_started`, `dropped_meanwhile`. The
/// run's own summary, `status` and `audit` all count with the same SQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunCounts {
    pub done: i64,
    pub unchanged: i64,
    pub failed: i64,
    pub not_started: i64,
    pub dropped_meanwhile: i64,
}

impl RunCounts {
    /// Each count with its result.
    pub fn by_result(&self) -> [(SchemaResult, i64); 5] {
        [
            (SchemaResult::Done, self.done),
            (SchemaResult::Failed, self.failed),
            (SchemaResult::Unchanged, self.unchanged),
            (SchemaResult::NotStarted, self.not_started),
            (SchemaResult::DroppedMeanwhile, self.dropped_meanwhile),
        ]
    }

    /// Counts the results of a run's tenants (when the ledger could not be read back).
    pub fn tally<'a>(results: impl IntoIterator<Item = &'a SchemaResult>) -> RunCounts {
        let mut c = RunCounts::default();
        for r in results {
            *match r {
                SchemaResult::Done => &mut c.done,
                SchemaResult::Unchanged => &mut c.unchanged,
                SchemaResult::Failed => &mut c.failed,
                SchemaResult::NotStarted => &mut c.not_started,
                SchemaResult::DroppedMeanwhile => &mut c.dropped_meanwhile,
            } += 1;
        }
        c
    }
}

/// One wave of a staged rollout, as the ledger counts it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WaveRow {
    pub wave: i32,
    /// This wave's tenants in scope.
    pub tenants: i64,
    /// Done or with nothing to do.
    pub succeeded: i64,
    pub failed: i64,
    pub not_started: i64,
    /// `done`, `halted`, `not_started`, `running`, `interrupted`.
    pub state: &'static str,
}

/// Why a staged rollout halted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Halted {
    pub wave: i32,
    pub reason: String,
}

/// A run as `status`, `audit` and the busy message show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    #[serde(rename = "run_id")]
    pub id: i64,
    pub command: RunCommand,
    /// The command line, secrets redacted.
    pub command_line: String,
    pub target_version: Option<i32>,
    pub state: RunState,
    pub actor: String,
    pub host: String,
    pub pid: i32,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Tenants in scope.
    pub total: i32,
    pub counts: RunCounts,
    /// A staged rollout's waves (empty for a run in one wave).
    pub waves: Vec<WaveRow>,
    pub halted: Option<Halted>,
    /// `tenant create`: the seed run in each new tenant (path and fingerprint), if any.
    pub seed: Option<String>,
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

/// Why a schema did not commit, as the ledger holds it (and `--json` prints it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailureRow {
    /// `migration`, `lock_timeout`, `connection`, … (see docs/json.md).
    pub kind: String,
    /// PostgreSQL's SQLSTATE, when the server raised the error.
    pub sqlstate: Option<String>,
    /// `V7__add_invoices`, when a migration is to blame.
    pub migration: Option<String>,
    /// The line in that file; null only when PostgreSQL gave no position.
    pub line: Option<i32>,
    /// PostgreSQL's own message, or what was wrong.
    pub message: String,
    /// The whole line as printed: what, where, what was left behind, what to do.
    pub error: String,
    /// The version the tenant is still at.
    pub version: Option<i32>,
}

/// One tenant of a run: what became of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SchemaRow {
    pub id: String,
    pub schema: String,
    pub labels: Labels,
    pub result: SchemaResult,
    /// Its wave in a staged rollout (null otherwise).
    pub wave: Option<i32>,
    pub version_before: Option<i32>,
    /// Where it is now.
    pub version: Option<i32>,
    /// Migrations applied (or reverted, or checksums repaired) in its transaction.
    pub applied: Option<i32>,
    pub attempts: i32,
    /// `tenant drop --archive`: the schema its data was renamed to.
    pub archived_as: Option<String>,
    /// `tenant create`: whether its schema came from the pool (null for other commands).
    pub from_pool: Option<bool>,
    pub failure: Option<FailureRow>,
}

/// A rollout's waves from its sizes (JSON array, or null for a run in one wave) and the
/// ledger's per-wave counts (`[[wave, done, failed, pending], …]`).
fn wave_rows(
    sizes: Option<String>,
    counts: String,
    halted: Option<i32>,
    state: RunState,
) -> anyhow::Result<Vec<WaveRow>> {
    let Some(sizes) = sizes else {
        return Ok(Vec::new());
    };
    let bad =
        |e: serde_json::Error| anyhow::anyhow!("reading a rollout's waves from the ledger: {e}");
    let sizes: Vec<i64> = serde_json::from_str(&sizes).map_err(bad)?;
    let counts: Vec<[Option<i64>; 4]> = serde_json::from_str(&counts).map_err(bad)?;
    Ok(sizes
        .iter()
        .enumerate()
        .map(|(i, tenants)| {
            let wave = i as i32;
            let [_, done, failed, pending] = counts
                .iter()
                .find(|c| c[0] == Some(wave as i64))
                .copied()
                .unwrap_or([None, Some(0), Some(0), Some(0)]);
            let (done, failed, pending) =
                (done.unwrap_or(0), failed.unwrap_or(0), pending.unwrap_or(0));
            let state = match halted {
                Some(h) if h == wave => "halted",
                _ if pending == 0 => "done",
                Some(h) if h < wave => "not_started",
                _ if done + failed == 0 && state != RunState::Running => "not_started",
                _ if state == RunState::Running => "running",
                _ => "interrupted",
            };
            WaveRow {
                wave,
                tenants: *tenants,
                succeeded: tenants - failed - pending,
                failed,
                not_started: pending,
                state,
            }
        })
        .collect())
}

fn command_of(r: &Row, i: usize) -> anyhow::Result<RunCommand> {
    let text: String = r.get(i);
    RunCommand::parse(&text).ok_or_else(|| states::unknown("the run command", &text))
}

fn state_of(r: &Row, i: usize) -> anyhow::Result<RunState> {
    let text: String = r.get(i);
    RunState::parse(&text).ok_or_else(|| states::unknown("the run state", &text))
}

fn schema_state_of(r: &Row, i: usize) -> anyhow::Result<SchemaState> {
    let text: String = r.get(i);
    SchemaState::parse(&text).ok_or_else(|| states::unknown("the schema state", &text))
}

/// SQL: a column of ledger row `s` added in control schema v6, read so that a control schema
/// not yet upgraded (read-only commands do not upgrade it) reads as NULL instead of failing.
/// `s.j` is the row as JSON, made once per row (`SELECT s.*, to_jsonb(s) AS j ... OFFSET 0`:
/// the OFFSET keeps the planner from inlining it back into every use; a 10,000-row read-back
/// took 240 ms with one `to_jsonb` per column, 80 ms with one per row).
macro_rules! v6 {
    ($col:literal) => {
        concat!("(s.j ->> '", $col, "')")
    };
}

/// SQL: whether ledger row `s` changed its schema (by the migrations it applied, else by its
/// version), for [`SchemaResult::of`]'s rule.
const CHANGED: &str = concat!(
    "coalesce(",
    v6!("applied"),
    "::int > 0, s.version_after IS DISTINCT FROM s.version_before)"
);

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
    /// Runs matching `filter` (SQL over `r`, with `params`), newest first, at most `limit`,
    /// each with its counts, read from the run's own ledger rows (`key`: the run's id as SQL,
    /// `r.id`, or a parameter when the caller knows it).
    ///
    /// The counts are a lateral aggregate per run, not a join over the whole ledger: the
    /// ledger grows with every run, and a command's summary must not. Given the id as a
    /// parameter, the planner sees the value (a small run among big ones reads its few rows
    /// by index); with `r.id` it estimates from the number of runs.
    async fn runs(
        &self,
        client: &Client,
        filter: &str,
        key: &str,
        params: &[Param<'_>],
        limit: i64,
    ) -> anyhow::Result<Vec<RunRow>> {
        let fleet = stored_list(
            RunCommand::ALL
                .iter()
                .filter(|c| c.counts_rechecks())
                .map(|c| c.as_str()),
        );
        let sql = format!(
            "SELECT r.id, r.command, r.argv, r.target_version, r.state, r.actor, r.host, r.pid, \
                    to_char(r.started_at AT TIME ZONE 'UTC', {TS}), to_char(r.finished_at AT TIME ZONE 'UTC', {TS}), r.total, \
                    c.done, greatest(0, r.total - c.recorded) + c.unchanged, c.failed, c.pending, c.skipped, \
                    r.digest, r.scope, r.w_sizes, r.h_wave, r.h_reason, \
                    (SELECT coalesce(json_agg(json_build_array(w.wave, w.done, w.failed, w.pending) ORDER BY w.wave), '[]')::text \
                     FROM (SELECT (to_jsonb(s2) ->> 'wave')::int AS wave, \
                                  count(*) FILTER (WHERE s2.state = {succeeded}) AS done, \
                                  count(*) FILTER (WHERE s2.state = {failed}) AS failed, \
                                  count(*) FILTER (WHERE s2.state = {pending}) AS pending \
                           FROM {rs} s2 WHERE s2.run_id = {key} AND r.w_sizes IS NOT NULL GROUP BY 1) w), \
                    r.seed_desc \
             FROM (SELECT r.*, nullif((to_jsonb(r) -> 'waves')::text, 'null') AS w_sizes, (to_jsonb(r) ->> 'halted_wave')::int AS h_wave, \
                          to_jsonb(r) ->> 'halted' AS h_reason, to_jsonb(r) ->> 'seed' AS seed_desc \
                   FROM {runs} r WHERE {filter} ORDER BY id DESC LIMIT {limit}) r \
             CROSS JOIN LATERAL ( \
                 SELECT count(*) FILTER (WHERE s.state = {succeeded} AND (r.command NOT IN ({fleet}) OR {CHANGED})) AS done, \
                        count(*) AS recorded, \
                        count(*) FILTER (WHERE s.state = {succeeded} AND r.command IN ({fleet}) AND NOT {CHANGED}) AS unchanged, \
                        count(*) FILTER (WHERE s.state = {failed}) AS failed, \
                        count(*) FILTER (WHERE s.state = {pending}) AS pending, \
                        count(*) FILTER (WHERE s.state = {skipped}) AS skipped \
                 FROM (SELECT s.*, to_jsonb(s) AS j FROM {rs} s WHERE s.run_id = {key} OFFSET 0) s) c \
             ORDER BY r.id DESC",
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
        rows.iter()
            .map(|r| {
                let state = state_of(r, 4)?;
                let halted: Option<i32> = r.get(19);
                let waves = wave_rows(r.get(18), r.get(21), halted, state)?;
                Ok(RunRow {
                    id: r.get(0),
                    command: command_of(r, 1)?,
                    command_line: r.get(2),
                    target_version: r.get(3),
                    state,
                    actor: r.get(5),
                    host: r.get(6),
                    pid: r.get(7),
                    started_at: r.get(8),
                    finished_at: r.get(9),
                    total: r.get(10),
                    counts: RunCounts {
                        done: r.get(11),
                        unchanged: r.get(12),
                        failed: r.get(13),
                        not_started: r.get(14),
                        dropped_meanwhile: r.get(15),
                    },
                    digest: r.get(16),
                    scope: r.get(17),
                    waves,
                    halted: halted.map(|wave| Halted {
                        wave,
                        reason: r.get::<_, Option<String>>(20).unwrap_or_default(),
                    }),
                    seed: r.get(22),
                })
            })
            .collect()
    }

    async fn newest_run(
        &self,
        client: &Client,
        filter: &str,
        params: &[Param<'_>],
    ) -> anyhow::Result<Option<RunRow>> {
        Ok(self
            .runs(client, filter, "r.id", params, 1)
            .await?
            .into_iter()
            .next())
    }

    /// One run, by id.
    pub async fn run(&self, client: &Client, id: i64) -> anyhow::Result<Option<RunRow>> {
        Ok(self
            .runs(client, "r.id = $1", "$1", &[(&id, Type::INT8)], 1)
            .await?
            .into_iter()
            .next())
    }

    /// Sends the read-back of a run that does not exist, without waiting for the answer: the
    /// coordinator's backend plans it (loading the ledger's catalog entries) while the
    /// workers run, not after them. The connection drops the answer.
    pub fn warm_read_back(&self, client: &Client) {
        use futures::FutureExt;
        let _ = self.run(client, 0).now_or_never();
    }

    /// The newest run of any command but `tenant label` (labels change no schema; `audit`
    /// shows them).
    pub async fn last_run(&self, client: &Client) -> anyhow::Result<Option<RunRow>> {
        let filter = format!("r.command <> {}", RunCommand::TenantLabel.literal());
        self.newest_run(client, &filter, &[]).await
    }

    /// The newest run that worked on any schema (changed it, or failed to): what a no-op
    /// deploy since must not hide.
    pub async fn last_change(&self, client: &Client) -> anyhow::Result<Option<RunRow>> {
        let filter = format!(
            "r.command <> {} AND EXISTS (SELECT 1 FROM {} s WHERE s.run_id = r.id)",
            RunCommand::TenantLabel.literal(),
            self.table("run_schemas")
        );
        self.newest_run(client, &filter, &[]).await
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
            matches!(r.state, RunState::Interrupted | RunState::Halted)
                && r.target_version == info.target
                && r.digest == info.digest
                && r.scope == info.scope
        }))
    }

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
             AND NOT EXISTS ({late}) \
             AND NOT EXISTS (SELECT 1 FROM {tenants} t WHERE t.state = {active} AND ({tenant_work})) \
             AND NOT EXISTS (SELECT 1 FROM {pool} p WHERE {pool_work})",
            lock = super::locks::LOCK_FLEET,
            name = quote_literal(&self.name),
            version = quote_literal(super::CONTROL_VERSION),
            quiet = self.quiet_sql(command),
            late = self.out_of_order_sql("$14", "$15"),
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

    /// The audit trail: runs started since `since` (seconds ago; all when None), the newest
    /// `limit` of them, oldest first.
    pub async fn audit(
        &self,
        client: &Client,
        since_secs: Option<f64>,
        limit: i64,
    ) -> anyhow::Result<Vec<RunRow>> {
        let mut runs = self
            .runs(
                client,
                "$1::float8 IS NULL OR r.started_at >= now() - make_interval(secs => $1::float8)",
                "r.id",
                &[(&since_secs, Type::FLOAT8)],
                limit,
            )
            .await?;
        runs.reverse();
        Ok(runs)
    }

    /// A run's tenants as the ledger holds them (only the failed ones with `failed_only`),
    /// ordered by id. Tenants in scope with nothing to do have no row.
    pub async fn run_schemas(
        &self,
        client: &Client,
        (run_id, command): (i64, RunCommand),
        failed_only: bool,
    ) -> anyhow::Result<Vec<SchemaRow>> {
        // Each row's tenant is looked up by its key (a lateral subquery the OFFSET keeps
        // apart): a hash join over the registry reads every tenant for a one-tenant run
        // whenever statistics are missing or stale, as they are right after a big run.
        let sql = format!(
            "SELECT s.tenant_id, s.schema_name, s.state, {CHANGED}, s.version_before, s.version_after, \
                    coalesce({applied}::int, 0), s.attempts, coalesce({kind}, 'other'), {sqlstate}, s.failed_migration, \
                    {line}::int, coalesce({message}, s.error, ''), coalesce(s.error, ''), \
                    CASE WHEN $3 THEN t.archived_as END, (s.j ->> 'wave')::int, \
                    coalesce(t.labels, '{{}}')::text, \
                    CASE WHEN $4 THEN coalesce((s.j ->> 'from_pool')::boolean, false) END \
             FROM (SELECT s.*, to_jsonb(s) AS j FROM {rs} s WHERE s.run_id = $1 AND (NOT $2 OR s.state = {failed}) OFFSET 0) s \
             LEFT JOIN LATERAL (SELECT t.archived_as, to_jsonb(t) -> 'labels' AS labels FROM {tenants} t \
                                WHERE t.id = s.tenant_id OFFSET 0) t ON true \
             ORDER BY s.tenant_id",
            rs = self.table("run_schemas"),
            tenants = self.table("tenants"),
            failed = SchemaState::Failed.literal(),
            applied = v6!("applied"),
            kind = v6!("kind"),
            sqlstate = v6!("sqlstate"),
            line = v6!("line"),
            message = v6!("message"),
        );
        let archived = command == RunCommand::TenantDropArchive;
        let creates = command == RunCommand::TenantCreate;
        let rows = client
            .query_typed(
                &sql,
                &[
                    (&run_id, Type::INT8),
                    (&failed_only, Type::BOOL),
                    (&archived, Type::BOOL),
                    (&creates, Type::BOOL),
                ],
            )
            .await
            .map_err(|e| failed("reading the run's schemas from the ledger", &e))?;
        rows.iter()
            .map(|r| {
                let state = schema_state_of(r, 2)?;
                let result = SchemaResult::of(command, state, r.get(3));
                let (before, after): (Option<i32>, Option<i32>) = (r.get(4), r.get(5));
                // A schema recorded segment by segment may have got part of the way.
                let version = match state {
                    SchemaState::Succeeded => after,
                    _ => after.or(before),
                };
                let failure = (state == SchemaState::Failed).then(|| FailureRow {
                    kind: r.get(8),
                    sqlstate: r.get(9),
                    migration: r.get(10),
                    line: r.get(11),
                    message: r.get(12),
                    error: r.get(13),
                    version,
                });
                Ok(SchemaRow {
                    id: r.get(0),
                    schema: r.get(1),
                    labels: super::registry::labels_of(r.get(16))?,
                    result,
                    wave: r.get(15),
                    version_before: before,
                    version,
                    applied: r.get(6),
                    attempts: r.get(7),
                    archived_as: r.get(14),
                    from_pool: r.get(17),
                    failure,
                })
            })
            .collect()
    }

    /// For each migration version: how many active tenants are at it or past it (have it
    /// applied), for the advice on a failed migration.
    pub async fn at_or_past(
        &self,
        client: &Client,
        versions: &[i32],
    ) -> anyhow::Result<Vec<(i32, i64)>> {
        let sql = format!(
            "SELECT v, count(t.id) FROM unnest($1::int4[]) AS v \
             LEFT JOIN {tenants} t ON t.state = {active} AND t.version >= v GROUP BY v",
            tenants = self.table("tenants"),
            active = TenantState::Active.literal(),
        );
        let rows = client
            .query_typed(&sql, &[(&versions, Type::INT4_ARRAY)])
            .await
            .map_err(|e| failed("counting the tenants past a failed migration", &e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
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
        files: &[(i32, String)],
        wave_sizes: Option<&[i32]>,
        opening: Opening<'_>,
    ) -> anyhow::Result<Option<(i64, i64)>> {
        let file_versions: Vec<i32> = files.iter().map(|f| f.0).collect();
        let file_names: Vec<&str> = files.iter().map(|f| f.1.as_str()).collect();
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
        let params: [Param<'_>; 18] = [
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

    /// Migration files that are out of order: never part of any earlier run's set, yet below
    /// the highest version a tenant is at, so refinery would never apply them (it applies in
    /// version order) and they would be skipped silently. Empty until a first run has
    /// recorded a set (an upgraded control schema starts from what it sees).
    ///
    /// The fleet's highest version (a scan of the registry) is only read when a file is new:
    /// the usual case, every file known, costs two index probes whatever the fleet's size.
    pub async fn out_of_order(
        &self,
        client: &Client,
        files: &[(i32, String)],
    ) -> anyhow::Result<Vec<(i32, String)>> {
        let versions: Vec<i32> = files.iter().map(|f| f.0).collect();
        let names: Vec<&str> = files.iter().map(|f| f.1.as_str()).collect();
        let sql = format!("{} ORDER BY 1", self.out_of_order_sql("$1", "$2"));
        let rows = client
            .query_typed(
                &sql,
                &[(&versions, Type::INT4_ARRAY), (&names, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(|e| failed("comparing the migration files with the runs so far", &e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// [`Control::out_of_order`] as a query, over the files' versions and names in the
    /// array parameters `versions` and `names`.
    fn out_of_order_sql(&self, versions: &str, names: &str) -> String {
        format!(
            "WITH unknown AS MATERIALIZED ( \
                 SELECT f.v, f.n FROM unnest({versions}::int4[], {names}::text[]) AS f(v, n) \
                 WHERE EXISTS (SELECT 1 FROM {known}) \
                   AND NOT EXISTS (SELECT 1 FROM {known} k WHERE k.version = f.v)) \
             SELECT v, n FROM unknown \
             WHERE v < (SELECT max(version) FROM {tenants} WHERE state = {active})",
            known = self.table("versions"),
            tenants = self.table("tenants"),
            active = TenantState::Active.literal(),
        )
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
             SELECT id, {shared_row}, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, 1, now(), clock_timestamp() FROM r",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
            shared_row = quote_literal(SHARED_ROW),
        );
        let (host, pid) = (hostname(), std::process::id() as i32);
        let error = f.map(|f| f.error.as_str());
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
                    &format!("recording the shared migrations in {}.runs", self.name),
                    &e,
                )
            })?;
        Ok(())
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
            "WITH u AS (UPDATE {} SET state = $2, finished_at = clock_timestamp(), halted_wave = $4, halted = $5 \
                        WHERE id = $1 AND epoch = $3 RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM u), pg_advisory_unlock({LOCK_RUN}, $1::int8::int4)",
            self.table("runs"),
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
