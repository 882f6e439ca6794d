//! The lifecycle of a run on one cluster: take the fleet lock (migrate, rollback), open the
//! run in the ledger (or resume an interrupted one), size the pool to what the server allows,
//! drive the schemas through the fleet, record each failure, and close the run with its final
//! state. Every event of the run, its start and its end included, is emitted from here or
//! from the fleet below it. Commands turn their arguments into a [`RunRequest`] and the
//! [`RunResult`] into output.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::control::{
    FailureRecord, Halted, Opening, RunCommand, RunCounts, RunInfo, RunRow, RunState, SchemaResult,
    SchemaRow, SchemaState, WaveRow,
};
use crate::db::Session;
use crate::engine::apply::{ApplyCtx, Mode};
use crate::engine::events::{Event, Events};
use crate::engine::failure::{Failure, FailureKind};
use crate::engine::fleet::{run_fleet, Cancel, FleetOpts, FleetOutcome, SchemaJob, Stop};
use crate::engine::heartbeat::Heartbeat;
use crate::engine::schema_tx::TxSettings;
use crate::engine::waves::{Deciding, Decision, WavePlan};
use crate::exit::{self, BusyError, InterruptedError};
use crate::migrations::MigrationSet;
use crate::signals::{RunGuard, Signals};
use crate::tenant::Tenant;
use crate::whoami::command_line;

/// What a run on one cluster needs besides its request: the configuration, who runs it, where
/// its events go, and the process's signals.
pub struct RunEnv<'a> {
    pub config: &'a Config,
    pub actor: &'a str,
    pub events: Events,
    pub signals: &'a Signals,
}

/// One tenant in a run's scope.
#[derive(Debug, Clone)]
pub struct Planned {
    pub tenant: Tenant,
    /// The registry's version.
    pub version: Option<i32>,
    /// Whether the run works on it (else it is counted as already done).
    pub todo: bool,
}

/// What a fleet command asks of one cluster.
pub struct RunRequest<'a> {
    pub mode: Mode,
    pub migrations: &'a MigrationSet,
    pub target: Option<i32>,
    /// `all`, or a fingerprint of the tenant list (see [`scope_of`]).
    pub scope: String,
    /// Everything in scope.
    pub tenants: Vec<Planned>,
    /// Tenants refused before any work (e.g. already exist), reported as failed.
    pub refused: Vec<(Tenant, Failure)>,
    /// Labels of the tenants a create or adopt registers, by id.
    pub labels: std::collections::HashMap<String, crate::labels::Labels>,
    /// A staged rollout: the wave of every tenant in scope and its rules (None: one wave).
    pub waves: Option<crate::engine::waves::WavePlan>,
    /// Seed data for the tenants a create makes.
    pub seed: Option<&'a crate::seed::Seed>,
    /// Continue an interrupted run of the same command, target, files and scope.
    pub resume: bool,
    pub fail_fast: bool,
}

/// How a run went, as the ledger recorded it.
#[derive(Debug)]
pub struct RunResult {
    pub command: RunCommand,
    pub run_id: i64,
    pub state: RunState,
    pub target: Option<i32>,
    /// How the live run went: why it stopped, how long it took.
    pub outcome: FleetOutcome,
    /// When this run continued an interrupted one: schemas it had done before.
    pub resumed_from: Option<i64>,
    /// Set when the ledger could not be updated (or read back) at the end.
    pub ledger_note: Option<String>,
    /// The run's counts, as the ledger counts them (the same SQL as `status` and `audit`;
    /// from what this process saw only when the ledger could not be read back).
    pub counts: RunCounts,
    /// Every tenant the run worked on (resumed runs: in earlier attempts too), by id.
    pub tenants: Vec<SchemaRow>,
    /// A staged rollout's waves, as the ledger counts them (empty for one wave).
    pub waves: Vec<WaveRow>,
    pub halted: Option<Halted>,
}

impl RunResult {
    pub fn exit_code(&self) -> i32 {
        if self.outcome.fenced().is_some() {
            return exit::FENCED;
        }
        if self.outcome.database_down().is_some() {
            return exit::UNREACHABLE;
        }
        match self.state {
            RunState::Succeeded => exit::SUCCESS,
            RunState::Interrupted => exit::INTERRUPTED,
            RunState::Halted => exit::HALTED,
            RunState::Failed | RunState::Running => exit::FAILED,
        }
    }
}

/// The scope of a run over an explicit tenant list: a fingerprint of the sorted ids.
pub fn scope_of(tenants: Option<&[Tenant]>) -> String {
    match tenants {
        None => "all".into(),
        Some(list) => {
            let mut ids: Vec<&str> = list.iter().map(Tenant::id).collect();
            ids.sort_unstable();
            format!(
                "tenants:{}:{}",
                ids.len(),
                crate::digest::fnv1a_hex(ids.join(",").into_bytes())
            )
        }
    }
}

/// Takes the fleet lock (one migrate/rollback per control schema at a time), then takes over
/// from any run whose process lost its locks (reaping it bumps its epoch, after waiting for
/// its schemas still in flight), so that what the caller reads next (the registry, to plan)
/// cannot change under it any more. Without `wait`, or when it runs out, fails with exit
/// code 3 naming the run in progress.
pub async fn lock_fleet(
    session: &Session<'_>,
    env: &RunEnv<'_>,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    session.require_session().await?;
    let deadline = wait.map(|w| Instant::now() + w);
    // A holder with no running run in the ledger is a process between taking the lock and
    // opening its run, or one that has just finished (its backend releases the lock as it
    // exits, a few milliseconds after the process): both pass in moments, so they are given
    // a short grace before the lock counts as busy.
    let unseen_grace = Instant::now() + Duration::from_secs(3);
    let mut announced = false;
    loop {
        if let Some(signal) = env.signals.received() {
            return Err(InterruptedError(format!(
                "{signal} received while waiting for the fleet lock; nothing was started here"
            ))
            .into());
        }
        if session.control.try_fleet_lock(&session.client).await? {
            return session.control.reap_dead_runs(&session.client).await;
        }
        let holder = session.control.running_fleet_run(&session.client).await?;
        if holder.is_none() && Instant::now() < unseen_grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let who = holder.map_or_else(
            || "another tenantctl migrate/rollback (its run is not visible yet)".to_string(),
            |r| r.describe(),
        );
        match deadline {
            Some(d) if Instant::now() < d => {
                if !announced {
                    env.events.emit(&Event::Waiting { what: &who });
                    announced = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Some(_) => {
                return Err(BusyError(format!(
                    "gave up waiting: {who} is still in progress; nothing was changed"
                ))
                .into())
            }
            None => {
                return Err(BusyError(format!(
                    "{who} is in progress on this database; nothing was changed. Wait for it with --wait 10m, or re-run when it has finished"
                ))
                .into())
            }
        }
    }
}

/// What a fleet command's first look read: the registry and the pool, as they stand while
/// the transaction that read them holds the fleet lock.
pub struct Probe {
    pub tenants: Vec<crate::control::TenantRow>,
    pub pool: Vec<(Tenant, Option<i32>)>,
}

/// A fleet command's first look, on a connected session that has sent nothing yet: one
/// round trip, in a transaction that takes the fleet lock for itself (a transaction lock:
/// it needs no session, so no session check and no second connection). Some: the control
/// schema is current, the lock was free, no run is running or waits to be resumed, no file
/// is out of order; the transaction stays open, holding the lock, for
/// [`record_nothing_to_do`] when nothing is to be done. None: anything else, the
/// transaction is over and the caller goes the full way ([`settle_fleet`]), which deals
/// with what was found.
pub async fn probe(
    session: &Session<'_>,
    command: RunCommand,
    migrations: &MigrationSet,
    ids: Option<&[String]>,
    with_pool: bool,
) -> anyhow::Result<Option<Probe>> {
    let (c, control) = (&session.client, &session.control);
    let files = migrations.checksums();
    let begin = begin_with_keepalives();
    let (begun, locked, current, quiet, tenants, late, pool) = futures::join!(
        c.batch_execute(&begin),
        control.try_fleet_xact_lock(c),
        control.is_current(c),
        control.is_quiet(c, command),
        control.tenants(c, ids),
        control.file_check(c, &files),
        async {
            match with_pool {
                true => control.pool_rows(c).await,
                false => Ok(Vec::new()),
            }
        }
    );
    let found = begun.is_ok()
        && matches!(locked, Ok(true))
        && matches!(current, Ok(true))
        && matches!(quiet, Ok(true))
        && matches!(&late, Ok(l) if l.is_clean());
    match (found, tenants, pool) {
        (true, Ok(tenants), Ok(pool)) => Ok(Some(Probe { tenants, pool })),
        // Whatever failed (no control schema yet, say) is met again, and reported, on the
        // full way.
        _ => {
            end_probe(session).await?;
            Ok(None)
        }
    }
}

/// Ends the probe's transaction (and with it its fleet lock).
async fn end_probe(session: &Session<'_>) -> anyhow::Result<()> {
    session
        .client
        .batch_execute("ROLLBACK")
        .await
        .map_err(|e| anyhow::anyhow!("ending the first look: {}", crate::pgerror::describe(&e)))
}

/// The full way into a fleet run after a [`probe`] that found work (or did not get a clear
/// look; `probe_open`: its transaction is still open): the session check (its connection
/// opened while the probe's transaction ends), the
/// control schema, and the fleet lock, as [`crate::db::Session::open`] and [`lock_fleet`].
pub async fn settle_fleet(
    session: &Session<'_>,
    env: &RunEnv<'_>,
    wait: Option<Duration>,
    probe_open: bool,
) -> anyhow::Result<()> {
    let (ended, spare) = futures::join!(
        async {
            match probe_open {
                true => end_probe(session).await,
                false => Ok(()),
            }
        },
        session.open_spare()
    );
    ended?;
    spare?;
    session.settle(true).await?;
    lock_fleet(session, env, wait).await
}

/// Records a run with nothing to do in the transaction [`probe`] left open (holding the
/// fleet lock) and commits it: one round trip. The run is never seen running, so it takes
/// no run lock; it is the same ledger row, read back the same way, as a run that found
/// nothing to do the full way.
pub async fn record_nothing_to_do(
    session: &Session<'_>,
    env: &RunEnv<'_>,
    req: RunRequest<'_>,
) -> anyhow::Result<RunResult> {
    let command = req.mode.command();
    let argv = command_line();
    let total = req.tenants.len();
    let info = idle_info(
        env,
        (command, req.target),
        req.migrations,
        &req.scope,
        &argv,
        total,
    );
    let versions = req.migrations.checksums();
    let (c, control) = (&session.client, &session.control);
    let (opened, read, committed) = futures::join!(
        control.open_run(c, &info, None, &[], &versions, None, Opening::Finished),
        control.run_just_opened(c),
        c.batch_execute("COMMIT")
    );
    let (run_id, _) =
        opened?.ok_or_else(|| anyhow::anyhow!("recording the run: the ledger returned no row"))?;
    let run = read?;
    committed
        .map_err(|e| anyhow::anyhow!("recording run {run_id}: {}", crate::pgerror::describe(&e)))?;
    Ok(nothing_done(env, command, req.target, run_id, total, run))
}

/// A run with nothing to do that [`record_if_idle`] found and recorded, as read back.
pub struct Recorded {
    pub run_id: i64,
    pub run: RunRow,
}

/// A fleet command's first look over the whole fleet (every active tenant and the pool),
/// on a connected session that has sent nothing yet, when the run is to be recorded with
/// nothing to do: one round trip in all. The server decides, in the insert of the run's row
/// ([`crate::control::Control::idle_when`]): the fleet lock free, the control schema
/// current, no run running or to resume, no file out of order, and `work(version, drifted)`
/// (SQL) true for no tenant. The row is read back and committed in the same message. None:
/// nothing was recorded and the transaction is over; the caller goes the full way
/// ([`settle_fleet`]), which meets again, and reports, whatever stood in the way.
pub async fn record_if_idle(
    session: &Session<'_>,
    env: &RunEnv<'_>,
    (command, target): (RunCommand, Option<i32>),
    migrations: &MigrationSet,
    work: impl Fn(&str, &str) -> String,
) -> anyhow::Result<Option<Recorded>> {
    let argv = command_line();
    let scope = scope_of(None);
    // The total is the server's count (see `idle_when`).
    let info = idle_info(env, (command, target), migrations, &scope, &argv, 0);
    let versions = migrations.checksums();
    let (c, control) = (&session.client, &session.control);
    let (when, total) = control.idle_when(info.command, work);
    let begin = begin_with_keepalives();
    let (begun, opened, read, committed) = futures::join!(
        c.batch_execute(&begin),
        control.open_run(
            c,
            &info,
            None,
            &[],
            &versions,
            None,
            Opening::FinishedIf {
                when: &when,
                total: &total
            }
        ),
        control.run_just_opened(c),
        c.batch_execute("COMMIT")
    );
    // Anything that failed aborted the transaction, and the COMMIT rolled it back.
    let (Ok(()), Ok(Some((run_id, _))), Ok(Some(run))) = (begun, opened, read) else {
        return Ok(None);
    };
    committed
        .map_err(|e| anyhow::anyhow!("recording run {run_id}: {}", crate::pgerror::describe(&e)))?;
    Ok(Some(Recorded { run_id, run }))
}

/// `BEGIN` and the keepalives as the transaction's own (a vanished client must not keep the
/// fleet lock the transaction takes).
fn begin_with_keepalives() -> String {
    format!(
        "BEGIN; {}",
        crate::db::KEEPALIVES.replace("SET ", "SET LOCAL ")
    )
}

/// The run row of a run with nothing to do.
fn idle_info<'a>(
    env: &RunEnv<'a>,
    (command, target): (RunCommand, Option<i32>),
    migrations: &'a MigrationSet,
    scope: &'a str,
    argv: &'a str,
    total: usize,
) -> RunInfo<'a> {
    RunInfo {
        command,
        target,
        digest: migrations.digest(),
        scope,
        total,
        actor: env.actor,
        argv,
        seed: None,
    }
}

/// The result of a run with nothing to do, recorded as `run_id` (`run`: its row as read
/// back), with its start and end emitted.
pub fn nothing_done(
    env: &RunEnv<'_>,
    command: RunCommand,
    target: Option<i32>,
    run_id: i64,
    total: usize,
    run: Option<RunRow>,
) -> RunResult {
    env.events.emit(&Event::RunStarted {
        command,
        run_id,
        total,
        todo: 0,
        refused: 0,
        jobs: 1,
        target,
    });
    env.events.emit(&Event::RunFinished);
    let outcome = FleetOutcome::default();
    let (counts, waves, halted) = match run {
        Some(run) => (run.counts, run.waves, run.halted),
        None => (seen_report(command, &outcome, total).0, Vec::new(), None),
    };
    RunResult {
        command,
        run_id,
        state: RunState::Succeeded,
        target,
        outcome,
        resumed_from: None,
        ledger_note: None,
        counts,
        tenants: Vec::new(),
        waves,
        halted,
    }
}

/// Runs a fleet command end to end on one cluster.
pub async fn run(
    session: &mut Session<'_>,
    env: &RunEnv<'_>,
    req: RunRequest<'_>,
) -> anyhow::Result<RunResult> {
    let command = req.mode.command();
    let total = req.tenants.len() + req.refused.len();
    let jobs: Vec<SchemaJob> = req
        .tenants
        .iter()
        .filter(|p| p.todo)
        .map(|p| SchemaJob {
            tenant: p.tenant.clone(),
            version: p.version,
        })
        .collect();
    // The server's free connection slots are asked in the same round trip as the ledger;
    // not at all when one worker does and the session check's connection is open for it.
    let one_spare = session.target.jobs.min(jobs.len()) <= 1 && session.has_spare();
    let (opened, free) = futures::join!(open(session, env, &req, &jobs), async {
        match jobs.is_empty() || one_spare {
            true => Ok(0),
            false => session.free_slots().await,
        }
    });
    let (run_id, epoch, resumed) = opened?;
    let skipped = req.tenants.len() - jobs.len();
    // A resumed rollout retries the tenants that failed first, in their wave.
    let failed_before: HashSet<String> = match (&req.waves, &resumed) {
        (Some(_), Some(run)) => session
            .control
            .run_schemas(&session.client, (run.id, run.command), true)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect(),
        _ => HashSet::new(),
    };
    let workers = match free.and_then(|free| workers_allowed(session, env, jobs.len(), free)) {
        Ok(w) => w,
        Err(e) => {
            session
                .control
                .finish_run(&session.client, run_id, epoch, RunState::Failed, None)
                .await?;
            return Err(e);
        }
    };
    let pool = session.pool(workers)?;
    let cancel = Cancel::new(session.tls().clone());
    let signal_guard = tie_to_signals(env, &cancel);

    env.events.emit(&Event::RunStarted {
        command,
        run_id,
        total,
        todo: jobs.len(),
        refused: req.refused.len(),
        jobs: workers,
        target: req.target,
    });
    let run = &env.config.run;
    let ctx = ApplyCtx {
        migrations: req.migrations,
        control: &session.control,
        run_id,
        epoch,
        target: req.target,
        tx: TxSettings {
            lock_timeout: run.lock_timeout,
            statement_timeout: run.statement_timeout,
            step_statement_timeout: run.step_statement_timeout,
            also_on_path: env.config.migrations.extensions_schema.as_deref(),
            run_id: Some(run_id),
            check_client: session.server_major >= 14,
        },
        role_template: env.config.tenants.role_template.as_deref(),
        events: &env.events,
        labels: &req.labels,
        seed: req.seed,
    };
    let opts = FleetOpts {
        mode: req.mode,
        jobs: workers,
        fail_fast: req.fail_fast,
        retries: run.retries,
        retry_delay: run.retry_delay,
        recycle_after: run.worker_recycle,
    };
    let session_target = session.target.name.clone();
    session.control.warm_read_back(&session.client);
    let (done, watching) = tokio::sync::watch::channel(false);
    let heartbeat = Heartbeat {
        session,
        run_id,
        epoch,
        fleet_lock: command.is_fleet_command(),
        events: env.events.clone(),
        cancel: cancel.clone(),
    };
    let fleet = async {
        let outcome = match &req.waves {
            None => run_fleet(&pool, &ctx, jobs, &opts, &env.events, &cancel).await,
            Some(plan) => {
                let staged = Staged {
                    plan,
                    failed_before: &failed_before,
                    cluster: &session_target,
                    run_id,
                };
                staged.run(&pool, &ctx, jobs, &opts, env, &cancel).await
            }
        };
        let _ = done.send(true);
        outcome
    };
    let (mut outcome, reconnected) = futures::join!(fleet, heartbeat.run(watching));
    // After a reconnect (a failover), the ledger on the server now answering is the truth:
    // what is not finished there is done again, in this run.
    let mut reconcile_note = None;
    if let Some(client) = reconnected {
        session.client = client;
        reconcile_note = super::reconcile::after_reconnect(
            session,
            command,
            (&pool, &ctx, &opts),
            &env.events,
            &cancel,
            &mut outcome,
        )
        .await;
    }
    drop(signal_guard);
    pool.close();
    outcome.failed.splice(0..0, req.refused);
    outcome.failed.sort_by(|a, b| a.0.id().cmp(b.0.id()));
    let state = outcome.state();
    env.events.emit(&Event::RunFinished);
    if outcome.fenced().is_none() {
        advise_on_failures(session, req.migrations, &mut outcome.failed).await;
    }
    let mut ledger_note = match outcome.fenced() {
        // The ledger is the new owner's to write now.
        Some(_) => None,
        None => record_outcome(session, run_id, epoch, &outcome, state).await,
    };
    // What the ledger says is what this command reports, so the two always agree; what
    // this process saw, when the ledger is not (or no longer) this run's to read.
    let read_back = match (&ledger_note, outcome.fenced()) {
        (None, None) => match read_report(session, run_id, command).await {
            Ok(report) => report,
            Err(e) => {
                ledger_note = Some(format!(
                    "could not read run {run_id} back from the ledger ({e:#}); the counts are what this process saw"
                ));
                None
            }
        },
        _ => None,
    };
    // The ledger never calls a run succeeded with schemas in scope unfinished (see
    // Control::finish_run): when it disagrees, the run is not done, and says why.
    let mut state = state;
    if let Some((run, _)) = &read_back {
        if state == RunState::Succeeded && run.state != RunState::Succeeded {
            state = run.state;
            outcome.stopped = Some(Stop::DatabaseDown(format!(
                "{} schema(s) in scope are not finished on the server now answering (a failover lost commits?); the same command resumes run {run_id}",
                run.counts.not_started
            )));
        }
    }
    if let Some(note) = reconcile_note {
        ledger_note = Some(match ledger_note {
            Some(n) => format!("{n}; {note}"),
            None => note,
        });
    }
    let (counts, tenants, waves, halted) = match read_back {
        Some((run, tenants)) => (run.counts, tenants, run.waves, run.halted),
        None => {
            let (counts, tenants) = seen_report(command, &outcome, skipped);
            let halted = outcome.halted().map(|(wave, reason)| Halted {
                wave: wave as i32,
                reason: reason.to_string(),
            });
            (counts, tenants, Vec::new(), halted)
        }
    };
    Ok(RunResult {
        command,
        run_id,
        state,
        target: req.target,
        outcome,
        resumed_from: resumed.map(|r| r.counts.done),
        ledger_note,
        counts,
        tenants,
        waves,
        halted,
    })
}

/// A staged rollout on one cluster: its jobs wave by wave, meeting the other clusters at the
/// gate after each.
struct Staged<'a> {
    plan: &'a WavePlan,
    failed_before: &'a HashSet<String>,
    cluster: &'a str,
    run_id: i64,
}

impl Staged<'_> {
    async fn run(
        &self,
        pool: &deadpool_postgres::Pool,
        ctx: &ApplyCtx<'_>,
        jobs: Vec<SchemaJob>,
        opts: &FleetOpts,
        env: &RunEnv<'_>,
        cancel: &Cancel,
    ) -> FleetOutcome {
        let started = Instant::now();
        let waves = self.plan.waves.len();
        let mut by_wave: Vec<Vec<SchemaJob>> = (0..waves).map(|_| Vec::new()).collect();
        for job in jobs {
            let w = self
                .plan
                .wave_of
                .get(job.tenant.id())
                .copied()
                .unwrap_or(waves - 1);
            by_wave[w].push(job);
        }
        let seat = &self.plan.seat;
        let mut total = FleetOutcome::default();
        let how = Deciding {
            events: &env.events,
            signals: env.signals,
        };
        for (wave, mut wave_jobs) in by_wave.into_iter().enumerate() {
            if total.stopped.is_some() || cancel.stopping() {
                total
                    .not_started
                    .extend(wave_jobs.into_iter().map(|j| j.tenant));
                continue;
            }
            // Failed last time: first this time.
            wave_jobs.sort_by_key(|j| !self.failed_before.contains(j.tenant.id()));
            let worked = !wave_jobs.is_empty();
            if worked {
                env.events.emit(&Event::WaveStarted {
                    wave,
                    waves,
                    tenants: wave_jobs.len(),
                });
            }
            let outcome = run_fleet(pool, ctx, wave_jobs, opts, &env.events, cancel).await;
            let failed: Vec<String> = outcome
                .failed
                .iter()
                .map(|(t, _)| t.id().to_string())
                .collect();
            total.absorb(outcome);
            if total.stopped.is_some() {
                seat.leave();
                continue;
            }
            let run = (self.cluster.to_string(), self.run_id);
            match seat.arrive(wave, failed, worked, run, &how).await {
                Decision::Go => {}
                Decision::Halt(reason) => total.stopped = Some(Stop::Halted { wave, reason }),
                Decision::Interrupted => {
                    cancel.cancel();
                    total.stopped = Some(Stop::Interrupted);
                    total.interrupted = true;
                }
            }
        }
        total.elapsed = started.elapsed();
        total
    }
}

/// A failed migration that other tenants already have: the advice is not to edit it (see
/// [`Failure::aftermath`]). One query for the run; without it the advice is the plain one.
async fn advise_on_failures(
    session: &Session<'_>,
    migrations: &MigrationSet,
    failed: &mut [(Tenant, Failure)],
) {
    // A statement that cannot succeed on any tenant with rows, whatever their data.
    for (_, f) in failed.iter_mut() {
        let file = f.migration_version.and_then(|v| migrations.get(v));
        if let (Some(file), Some(line), FailureKind::Migration) = (file, f.line, f.kind) {
            let rules = crate::migrations::risks::rules_at(file.sql(), line as usize);
            f.fails_on_rows = rules.contains(&"add-column-not-null-without-default");
        }
    }
    let mut versions: Vec<i32> = failed
        .iter()
        .filter(|(_, f)| f.kind == FailureKind::Migration)
        .filter_map(|(_, f)| f.migration_version)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    if versions.is_empty() {
        return;
    }
    let Ok(counts) = session.control.at_or_past(&session.client, &versions).await else {
        return;
    };
    for (_, f) in failed.iter_mut() {
        if let Some(v) = f.migration_version {
            f.applied_elsewhere = counts
                .iter()
                .find(|(at, _)| *at == v)
                .map(|c| u32::try_from(c.1).unwrap_or(u32::MAX));
        }
    }
}

/// The run (with its counts and waves) and its tenants as the ledger holds them; None if
/// the run is gone.
pub async fn read_report(
    session: &Session<'_>,
    run_id: i64,
    command: RunCommand,
) -> anyhow::Result<Option<(RunRow, Vec<SchemaRow>)>> {
    // One round trip: the run and its rows are asked for together.
    let (run, tenants) = futures::join!(
        session.control.run(&session.client, run_id),
        session
            .control
            .run_schemas(&session.client, (run_id, command), false)
    );
    let (run, tenants) = (run?, tenants?);
    Ok(run.map(|run| (run, tenants)))
}

/// The run's counts and tenants from what this process saw, by the ledger's rules.
fn seen_report(
    command: RunCommand,
    outcome: &FleetOutcome,
    skipped: usize,
) -> (RunCounts, Vec<SchemaRow>) {
    let row = |t: &Tenant, result, before, version| SchemaRow {
        id: t.id().into(),
        schema: t.schema().into(),
        result,
        version_before: before,
        version,
        applied: Some(0),
        attempts: 1,
        archived_as: None,
        from_pool: None,
        failure: None,
        wave: None,
        labels: crate::labels::Labels::new(),
    };
    let mut tenants: Vec<SchemaRow> = Vec::new();
    for (t, a) in &outcome.succeeded {
        let result = SchemaResult::of(command, SchemaState::Succeeded, a.count > 0);
        tenants.push(SchemaRow {
            applied: Some(a.count as i32),
            archived_as: a.archived_as.clone(),
            from_pool: (command == RunCommand::TenantCreate).then_some(a.from_pool),
            ..row(t, result, a.before, a.after)
        });
    }
    for (t, f) in &outcome.failed {
        tenants.push(SchemaRow {
            attempts: f.attempts as i32,
            failure: Some(f.row()),
            ..row(t, SchemaResult::Failed, f.still_at, f.still_at)
        });
    }
    for t in &outcome.dropped {
        tenants.push(row(t, SchemaResult::DroppedMeanwhile, None, None));
    }
    for t in &outcome.not_started {
        tenants.push(row(t, SchemaResult::NotStarted, None, None));
    }
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    let mut counts = RunCounts::tally(tenants.iter().map(|t| &t.result));
    counts.unchanged += skipped as i64;
    (counts, tenants)
}

/// Opens the run in the ledger, or resumes the interrupted run that asked for the same
/// thing, with a pending row for each schema it works on. Returns the run id, its epoch (the
/// fence) and the run resumed, if any.
async fn open(
    session: &Session<'_>,
    env: &RunEnv<'_>,
    req: &RunRequest<'_>,
    jobs: &[SchemaJob],
) -> anyhow::Result<(i64, i64, Option<RunRow>)> {
    let argv = command_line();
    let seed = req.seed.map(crate::seed::Seed::describe);
    let info = RunInfo {
        command: req.mode.command(),
        target: req.target,
        digest: req.migrations.digest(),
        scope: &req.scope,
        total: req.tenants.len() + req.refused.len(),
        actor: env.actor,
        argv: &argv,
        seed: seed.as_deref(),
    };
    // The run lock is a session lock: the coordinator must keep its session.
    session.require_session().await?;
    let mut reaped = Some(session.control.reap_dead_runs(&session.client));
    let resumed = if req.resume {
        if let Some(reap) = reaped.take() {
            reap.await?;
        }
        session
            .control
            .resumable_run(&session.client, &info)
            .await?
    } else {
        None
    };
    // Ledger rows only for schemas this run works on (and those it refused, which are
    // recorded as failed at the end): a no-op deploy over 10,000 current tenants writes one
    // run row, not 10,000 "skipped" rows (runs.total keeps the count).
    let wave_of = |t: &Tenant| {
        req.waves
            .as_ref()
            .and_then(|w| w.wave_of.get(t.id()))
            .map(|w| *w as i32)
    };
    let ledger_rows: Vec<(&Tenant, Option<i32>, Option<i32>)> = jobs
        .iter()
        .map(|j| (&j.tenant, j.version, wave_of(&j.tenant)))
        .chain(req.refused.iter().map(|(t, f)| (t, f.still_at, wave_of(t))))
        .collect();
    let sizes = req.waves.as_ref().map(WavePlan::sizes_here);
    let versions = req.migrations.checksums();
    let opening = session.control.open_run(
        &session.client,
        &info,
        resumed.as_ref().map(|r| r.id),
        &ledger_rows,
        &versions,
        sizes.as_deref(),
        Opening::Running,
    );
    // Without a run to resume, the dead runs are marked and this one opened in one round
    // trip (the server takes them in order).
    let opened = match reaped {
        None => opening.await?,
        Some(reap) => {
            let (reaped, opened) = futures::join!(reap, opening);
            reaped?;
            opened?
        }
    };
    // Unconditional: the insert always makes its row (a resumed run that is gone is an error).
    let (run_id, epoch) =
        opened.ok_or_else(|| anyhow::anyhow!("recording the run: the ledger returned no row"))?;
    if let Some(run) = &resumed {
        env.events.emit(&Event::Resuming { run });
    }
    Ok((run_id, epoch, resumed))
}

/// On the first signal: stop scheduling, give in-flight schemas the grace period, then
/// cancel their statements (they roll back). The tie ends when the guard is dropped.
fn tie_to_signals(env: &RunEnv<'_>, cancel: &Cancel) -> RunGuard {
    let grace = env.config.run.grace_period;
    let (cancel, events) = (cancel.clone(), env.events.clone());
    env.signals.on_signal(move |signal| async move {
        cancel.cancel();
        events.emit(&Event::Interrupting { signal, grace });
        tokio::time::sleep(grace).await;
        cancel.abort_in_flight().await;
    })
}

/// How many workers the run may use: its `jobs`, no more than it has schemas, and no more
/// than the server has free connection slots (with a warning when that lowers it).
fn workers_allowed(
    session: &Session<'_>,
    env: &RunEnv<'_>,
    schemas: usize,
    free: i64,
) -> anyhow::Result<usize> {
    let workers = session.target.jobs.min(schemas).max(1);
    if schemas == 0 {
        return Ok(workers);
    }
    // The connection the session check opened is the pool's first: its slot is ours.
    let free = free + i64::from(session.has_spare());
    if free < 1 {
        anyhow::bail!(
            "the server has no free connection slots (max_connections is used up); nothing was changed. Free some connections or raise max_connections, then re-run"
        );
    }
    if (free as usize) < workers {
        env.events.emit(&Event::Warning {
            message: &format!(
                "the server has only {free} free connection slot(s): running {free} at a time instead of {workers}"
            ),
        });
        return Ok(free as usize);
    }
    Ok(workers)
}

/// Writes failures and the run's final state. If the coordinator's connection died (the
/// server restarted), reconnects once; if that fails too, says what is missing instead of
/// failing the command: every succeeded schema is already recorded in its own transaction.
async fn record_outcome(
    session: &mut Session<'_>,
    run_id: i64,
    epoch: i64,
    outcome: &FleetOutcome,
    state: RunState,
) -> Option<String> {
    const DROPPED: &str = "dropped while the run was going on; not touched";
    let dropped = outcome.dropped.iter().map(|t| FailureRecord {
        skipped: true,
        id: t.id(),
        kind: FailureKind::Dropped.as_str(),
        sqlstate: None,
        migration: None,
        line: None,
        message: DROPPED,
        error: DROPPED.into(),
        attempts: 1,
        drift: None,
    });
    let rows: Vec<FailureRecord<'_>> = outcome
        .failed
        .iter()
        .map(|(t, f)| f.record(t.id()))
        .chain(dropped)
        .collect();
    let mut last_err = None;
    for round in 0..2 {
        if round == 1 {
            if let Err(e) = session.reconnect().await {
                last_err = Some(e);
                break;
            }
        }
        // Both writes are conditional on the epoch: a run taken over meanwhile is left to
        // its new owner.
        let write = async {
            session
                .control
                .record_failures(&session.client, run_id, epoch, &rows)
                .await?;
            session
                .control
                .finish_run(&session.client, run_id, epoch, state, outcome.halted())
                .await
        };
        match write.await {
            Ok(true) => return None,
            Ok(false) => {
                return Some(format!(
                    "run {run_id} was taken over by another tenantctl before this one could close it; the schemas this process committed are recorded, the rest is the other run's"
                ))
            }
            Err(e) => last_err = Some(e),
        }
    }
    last_err.map(|e| {
        format!(
            "could not record the end of run {run_id} in the ledger ({e:#}); succeeded schemas are recorded, and the next run will see this one as interrupted"
        )
    })
}
