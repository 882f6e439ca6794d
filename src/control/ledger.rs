//! Reading the run ledger: `runs` (one row per command that changes something) and
//! `run_schemas` (one row per schema a run works on), counted by one rule for every command
//! that reports a run (its own summary, `status`, `audit`). Writing it is [`super::runs`].

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::RunInfo;
use super::{
    failed, states, stored_list, Control, Param, RunCommand, RunState, SchemaResult, SchemaState,
    TenantState, TS,
};
use crate::labels::Labels;

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
    /// `exec`: the rows its SQL affected (null for other commands).
    pub rows: Option<i64>,
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

impl Control {
    /// Runs matching `filter` (SQL over `r`, with `params`), newest first, at most `limit`,
    /// each with its counts, read from the run's own ledger rows (`key`: the run's id as SQL,
    /// `r.id`, or a parameter when the caller knows it).
    ///
    /// The counts are a lateral aggregate per run, not a join over the whole ledger: the
    /// ledger grows with every run, and a command's summary must not. Given the id as a
    /// parameter, the planner sees the value (a small run among big ones reads its few rows
    /// by index); with `r.id` it estimates from the number of runs.
    pub(super) async fn runs(
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
        // A current control schema has every column: no row made JSON (at 50,000 rows that
        // is most of a status' time); an older one is read through the JSON (see `v6!`).
        let current = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let (changed, rows) = match current {
            true => (
                "coalesce(s.applied > 0, s.version_after IS DISTINCT FROM s.version_before)"
                    .to_string(),
                format!("{} s WHERE s.run_id = {key}", self.table("run_schemas")),
            ),
            false => (
                CHANGED.to_string(),
                format!(
                    "(SELECT s.*, to_jsonb(s) AS j FROM {} s WHERE s.run_id = {key} OFFSET 0) s",
                    self.table("run_schemas")
                ),
            ),
        };
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
                 SELECT count(*) FILTER (WHERE s.state = {succeeded} AND (r.command NOT IN ({fleet}) OR {changed})) AS done, \
                        count(*) AS recorded, \
                        count(*) FILTER (WHERE s.state = {succeeded} AND r.command IN ({fleet}) AND NOT {changed}) AS unchanged, \
                        count(*) FILTER (WHERE s.state = {failed}) AS failed, \
                        count(*) FILTER (WHERE s.state = {pending}) AS pending, \
                        count(*) FILTER (WHERE s.state = {skipped}) AS skipped \
                 FROM {rows}) c \
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

    /// The run that ended last (a run still going, or killed, by when it started), of any
    /// command but `tenant label` (labels change no schema; `audit` shows them): a resumed
    /// run that finished after a newer one is the last run.
    pub async fn last_run(&self, client: &Client) -> anyhow::Result<Option<RunRow>> {
        let filter = format!("r.command <> {}", RunCommand::TenantLabel.literal());
        self.ended_last(client, &filter).await
    }

    /// The run that ended last among those that worked on any schema (changed it, or failed
    /// to): what a no-op deploy since must not hide.
    pub async fn last_change(&self, client: &Client) -> anyhow::Result<Option<RunRow>> {
        let filter = format!(
            "r.command <> {} AND EXISTS (SELECT 1 FROM {} s WHERE s.run_id = r.id)",
            RunCommand::TenantLabel.literal(),
            self.table("run_schemas")
        );
        self.ended_last(client, &filter).await
    }

    /// The run matching `filter` that ended last, with its counts: one query (the newest by
    /// end, or by start for a run without one, picked inside the same statement).
    async fn ended_last(&self, client: &Client, filter: &str) -> anyhow::Result<Option<RunRow>> {
        let last = format!(
            "r.id = (SELECT r.id FROM {} r WHERE {filter} \
                     ORDER BY coalesce(r.finished_at, r.started_at) DESC, r.id DESC LIMIT 1)",
            self.table("runs")
        );
        Ok(self
            .runs(client, &last, "r.id", &[], 1)
            .await?
            .into_iter()
            .next())
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
                    CASE WHEN $4 THEN coalesce((s.j ->> 'from_pool')::boolean, false) END, \
                    CASE WHEN $5 THEN coalesce((s.j ->> 'rows')::int8, 0) END \
             FROM (SELECT s.*, to_jsonb(s) AS j FROM {rs} s WHERE s.run_id = $1 AND {which} OFFSET 0) s \
             LEFT JOIN LATERAL (SELECT t.archived_as, to_jsonb(t) -> 'labels' AS labels FROM {tenants} t \
                                WHERE t.id = s.tenant_id OFFSET 0) t ON true \
             ORDER BY s.tenant_id",
            rs = self.table("run_schemas"),
            tenants = self.table("tenants"),
            // Spelled out (not `NOT $2 OR …`) so that the failures' index serves it.
            which = match failed_only {
                true => format!("s.state = {} AND $2", SchemaState::Failed.literal()),
                false => "$2 IS NOT NULL".to_string(),
            },
            applied = v6!("applied"),
            kind = v6!("kind"),
            sqlstate = v6!("sqlstate"),
            line = v6!("line"),
            message = v6!("message"),
        );
        let archived = command == RunCommand::TenantDropArchive;
        let creates = command == RunCommand::TenantCreate;
        let execs = command == RunCommand::Exec;
        let rows = client
            .query_typed(
                &sql,
                &[
                    (&run_id, Type::INT8),
                    (&failed_only, Type::BOOL),
                    (&archived, Type::BOOL),
                    (&creates, Type::BOOL),
                    (&execs, Type::BOOL),
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
                    rows: r.get(18),
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

    /// SQL: the ids of the active tenants whose last change failed: the newest ledger row of
    /// each (runs of `tenant label` aside, which change no schema) is `failed`. One pass over
    /// the ledger.
    pub(super) fn failed_last_sql(&self) -> String {
        format!(
            "SELECT l.tenant_id FROM (SELECT DISTINCT ON (s.tenant_id) s.tenant_id, s.state \
                 FROM {rs} s JOIN {runs} r ON r.id = s.run_id WHERE r.command <> {label} \
                 ORDER BY s.tenant_id, s.run_id DESC) l \
             JOIN {tenants} t ON t.id = l.tenant_id AND t.state = {active} \
             WHERE l.state = {failed}",
            rs = self.table("run_schemas"),
            runs = self.table("runs"),
            tenants = self.table("tenants"),
            label = RunCommand::TenantLabel.literal(),
            active = TenantState::Active.literal(),
            failed = SchemaState::Failed.literal(),
        )
    }

    /// Active tenants whose last change failed (see [`Control::failed_last_sql`]).
    pub async fn failed_last(
        &self,
        client: &Client,
    ) -> anyhow::Result<std::collections::HashSet<String>> {
        let rows = client
            .query_typed(&self.failed_last_sql(), &[])
            .await
            .map_err(|e| failed("reading the tenants whose last change failed", &e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
