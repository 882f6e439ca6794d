//! A run with nothing to do: found so, and recorded, in one transaction (the no-op deploy that
//! must stay at tens of milliseconds at 50,000 tenants), with the ledger's row for it.

use std::time::Duration;

use super::outcome::seen_report;
use super::run::{lock_fleet, scope_of, RunEnv, RunRequest, RunResult};
use crate::control::{Opening, RunCommand, RunInfo, RunRow, RunState};
use crate::db::Session;
use crate::engine::events::Event;
use crate::engine::fleet::FleetOutcome;
use crate::migrations::MigrationSet;
use crate::tenant::Tenant;
use crate::whoami::command_line;

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
pub(super) async fn end_probe(session: &Session<'_>) -> anyhow::Result<()> {
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
    Ok(nothing_done(
        env,
        command,
        (req.target, &req.scope),
        run_id,
        total,
        run,
    ))
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
pub(super) fn begin_with_keepalives() -> String {
    format!(
        "BEGIN; {}",
        crate::db::KEEPALIVES.replace("SET ", "SET LOCAL ")
    )
}

/// The run row of a run with nothing to do.
pub(super) fn idle_info<'a>(
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
    (target, scope): (Option<i32>, &str),
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
        scope,
    });
    env.events.emit(&Event::RunFinished);
    let outcome = FleetOutcome::default();
    let (counts, waves, halted) = match run {
        Some(run) => (run.counts, run.waves, run.halted),
        None => (seen_report(command, &outcome, total).0, Vec::new(), None),
    };
    let result = RunResult {
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
    };
    result.emit_end(&env.events);
    result
}
