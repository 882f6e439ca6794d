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
    Halted, Opening, RunCommand, RunCounts, RunInfo, RunRow, RunState, SchemaRow, WaveRow,
};
use crate::db::Session;
use crate::engine::apply::{ApplyCtx, Mode};
use crate::engine::events::{Event, Events};
use crate::engine::failure::Failure;
use crate::engine::fleet::{run_fleet, Cancel, FleetOpts, FleetOutcome, SchemaJob, Stop};
use crate::engine::heartbeat::Heartbeat;
use crate::engine::schema_tx::TxSettings;
use crate::engine::waves::WavePlan;
use crate::exit::{self, BusyError, InterruptedError};
use crate::migrations::MigrationSet;
use crate::signals::{RunGuard, Signals};
use crate::tenant::Tenant;
use crate::whoami::command_line;

pub use super::idle::*;
pub use super::outcome::read_report;
use super::outcome::{advise_on_failures, record_outcome, seen_report};
use super::staged::Staged;

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
    /// `tenant import`/`clone` (mode `Import`): the rows each new schema is loaded with.
    pub load: Option<&'a dyn crate::engine::apply::Load>,
    /// `exec`: the SQL each tenant runs (the run's digest is its).
    pub sql: Option<&'a crate::engine::fleet_sql::FleetSql>,
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
    /// Says the run is closed ([`Event::RunEnded`]), with the ledger's counts.
    pub fn emit_end(&self, events: &Events) {
        events.emit(&Event::RunEnded {
            run_id: self.run_id,
            state: self.state,
            counts: &self.counts,
            exit_code: self.exit_code(),
            elapsed: self.outcome.elapsed,
        });
    }

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
        scope: &req.scope,
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
        tiers: &env.config.tiers,
        events: &env.events,
        labels: &req.labels,
        seed: req.seed,
        load: req.load,
        sql: req.sql,
        cancel: Some(&cancel),
    };
    let opts = FleetOpts {
        mode: req.mode,
        jobs: workers,
        fail_fast: req.fail_fast,
        retries: run.retries,
        retry_delay: run.retry_delay,
        recycle_after: run.worker_recycle,
        slow_after: run.slow_after,
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
    let result = RunResult {
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
    };
    result.emit_end(&env.events);
    Ok(result)
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
        digest: req
            .sql
            .map_or(req.migrations.digest(), |s| s.digest.as_str()),
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
    // An exec's run applies no migration file.
    let versions = match req.sql {
        Some(_) => Vec::new(),
        None => req.migrations.checksums(),
    };
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
pub(super) fn tie_to_signals(env: &RunEnv<'_>, cancel: &Cancel) -> RunGuard {
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
pub(super) fn workers_allowed(
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
