//! Thin glue between the command line and the engine. [`run_schemas`] is the shared shape of
//! every fleet command: open (or resume) a run in the ledger, drive the fleet, record the
//! outcome, print the summary, pick the exit code.

pub mod audit;
pub mod clusters;
pub mod migrate;
pub mod rollback;
pub mod status;
pub mod tenant;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_postgres::Client;

use crate::config::Settings;
use crate::control::{Control, FailureRecord, RunInfo, SharedOutcome};
use crate::db;
use crate::engine::apply::{apply_shared, Applied, ApplyCtx, Failure, FailureKind, Mode};
use crate::engine::fleet::{run_fleet, Cancel, FleetOpts, SchemaJob};
use crate::exit::{self, BusyError, InterruptedError, UsageError};
use crate::migrations::MigrationSet;
use crate::report::{summary, Event, Reporter};
use crate::tenant::Tenant;
pub use clusters::{Ctx, Done, Output};

/// A coordinator connection, the control schema, and the settings.
pub struct Session<'a> {
    pub settings: &'a Settings,
    pub client: Client,
    pub control: Control,
    pub pg: tokio_postgres::Config,
}

impl<'a> Session<'a> {
    /// Connects the coordinator; with `bootstrap`, creates the control schema if needed.
    pub async fn open(settings: &'a Settings, bootstrap: bool) -> anyhow::Result<Session<'a>> {
        let pg = db::pg_config(settings)?;
        let client = db::connect(&pg, &settings.display_url).await?;
        let control = Control::new(&settings.control_schema);
        if bootstrap {
            control.bootstrap(&client).await?;
        }
        Ok(Session {
            settings,
            client,
            control,
            pg,
        })
    }

    fn pool(&self, jobs: usize) -> anyhow::Result<Pool> {
        db::pool(self.pg.clone(), jobs)
    }

    /// After the coordinator's connection broke (a server restart, say): connect again,
    /// retrying with backoff for up to ~15 s.
    async fn reconnect(&mut self) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(250);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match db::connect(&self.pg, &self.settings.display_url).await {
                Ok(c) => {
                    self.client = c;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(4));
                }
            }
        }
    }

    /// Takes the fleet lock (one migrate/rollback per control schema at a time). Without
    /// `wait`, or when it runs out, fails with exit code 3 naming the run in progress.
    pub async fn fleet_lock(
        &self,
        wait: Option<Duration>,
        reporter: &dyn Reporter,
        signals: &Signals,
    ) -> anyhow::Result<()> {
        let deadline = wait.map(|w| Instant::now() + w);
        let mut announced = false;
        loop {
            if let Some(signal) = signals.received() {
                return Err(InterruptedError(format!(
                    "{signal} received while waiting for the fleet lock; nothing was started here"
                ))
                .into());
            }
            if self.control.try_fleet_lock(&self.client).await? {
                return Ok(());
            }
            let holder = self.control.running_fleet_run(&self.client).await?;
            let who = holder.map_or_else(
                || "another tenantctl migrate/rollback (its run is not visible yet)".to_string(),
                |r| r.describe(),
            );
            match deadline {
                Some(d) if Instant::now() < d => {
                    if !announced {
                        reporter.event(&Event::Waiting { what: &who });
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

    /// How many more connections the server accepts now (for ordinary roles).
    async fn free_slots(&self) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one(
                "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int \
                        - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!("reading the server's connection limits: {}", db::describe(&e)))?;
        Ok(row.get::<_, i64>(0).max(0))
    }
}

/// Validates ids (all of them, reporting every bad one) and refuses duplicates.
pub fn parse_ids(settings: &Settings, ids: &[String]) -> anyhow::Result<Vec<Tenant>> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let mut tenants = Vec::with_capacity(ids.len());
    for id in ids {
        match Tenant::parse(id, &settings.schema_prefix, &settings.control_schema) {
            Ok(t)
                if settings
                    .role_for(&t)
                    .is_some_and(|r| r.len() > crate::tenant::MAX_IDENT_BYTES) =>
            {
                errors.push(format!(
                    "tenant id {id:?} is too long for its role name {:?} (at most 63 bytes; see [tenants] role)",
                    settings.role_for(&t).unwrap_or_default()
                ));
            }
            Ok(t) => {
                if !seen.insert(t.id().to_string()) {
                    errors.push(format!("tenant id {id:?} is given more than once"));
                } else {
                    tenants.push(t);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        return Ok(tenants);
    }
    let shown: Vec<String> = errors.iter().take(20).map(|e| format!("  {e}")).collect();
    let more = if errors.len() > 20 {
        format!("\n  … and {} more", errors.len() - 20)
    } else {
        String::new()
    };
    Err(UsageError(format!(
        "{} invalid tenant id(s); nothing was changed:\n{}{more}",
        errors.len(),
        shown.join("\n")
    ))
    .into())
}

/// Refuses (exit 2) ids that no cluster holds as active tenants, naming every one; when some
/// clusters could not be asked, says so instead (exit 1). `holds(outcome, id)` tells whether
/// one cluster's lookup found the id.
pub fn require_registered<T>(
    wanted: &[String],
    clusters: &[Settings],
    outcomes: &[anyhow::Result<T>],
    holds: impl Fn(&T, &str) -> bool,
) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|id| !outcomes.iter().flatten().any(|o| holds(o, id)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let unreachable = clusters::failed_names(clusters, outcomes);
    if !unreachable.is_empty() {
        return Err(anyhow::anyhow!(
            "not found on the clusters that answered: {}; nothing was changed, because these could not be asked: {}. Re-run once they are back, or narrow the command with --cluster",
            missing.join(", "),
            unreachable.join("; ")
        ));
    }
    Err(UsageError(format!(
        "not registered (or dropped): {}; nothing was changed (see `tenantctl tenant list`, or create them with `tenantctl tenant create`)",
        missing.join(", ")
    ))
    .into())
}

/// Loads the tenant migration set, failing with exit code 2 before any database work.
pub fn load_migrations(settings: &Settings) -> anyhow::Result<MigrationSet> {
    Ok(MigrationSet::load_skipping(
        &settings.migrations_dir,
        Some(&settings.shared_dir),
    )?)
}

/// Loads the shared migration set: None when there is none (the default folder is absent or
/// holds no migrations); a configured `shared_dir` must exist.
pub fn load_shared(settings: &Settings) -> anyhow::Result<Option<MigrationSet>> {
    if !settings.shared_dir.exists() && !settings.shared_dir_configured {
        return Ok(None);
    }
    let set = MigrationSet::load(&settings.shared_dir).map_err(|e| {
        crate::migrations::MigrationSetError(format!(
            "shared migrations ([migrations] shared_dir): {}",
            e.0
        ))
    })?;
    Ok((!set.files().is_empty()).then_some(set))
}

/// Applies the pending shared migrations on the session's cluster and, when anything was
/// applied or it failed, records that in the cluster's ledger as a run of its own (`command`,
/// e.g. `migrate (shared)`). The result is the shared transaction's, whatever the ledger
/// write after it does.
pub async fn apply_shared_recorded(
    session: &Session<'_>,
    set: &MigrationSet,
    command: &str,
) -> Result<Applied, Failure> {
    let s = session.settings;
    let result = apply_shared(
        &session.client,
        set,
        &s.shared_schema,
        s.lock_timeout,
        s.statement_timeout,
    )
    .await;
    let (before, after, migration, error) = match &result {
        Ok(a) if a.count == 0 => return result,
        Ok(a) => (a.before, a.after, None, None),
        Err(f) if f.broken_connection => return result,
        Err(f) => (
            f.still_at,
            f.still_at,
            f.migration.as_deref(),
            Some(f.to_string()),
        ),
    };
    let argv = command_line();
    let info = RunInfo {
        command,
        target: set.latest(),
        digest: set.digest(),
        scope: &format!("shared:{}", s.shared_schema),
        total: 1,
        actor: &s.actor,
        argv: &argv,
    };
    let outcome = SharedOutcome {
        before,
        after,
        migration,
        error: error.as_deref(),
    };
    // The shared transaction has committed (or rolled back) already: a ledger write that
    // fails here cannot change what happened, so it does not change the result either.
    let _ = session
        .control
        .record_shared(&session.client, &info, &s.shared_schema, &outcome)
        .await;
    result
}

/// SIGINT/SIGTERM for the whole process, shared by every cluster's run (so a signal reaches
/// runs that start after it, too). The first signal stops scheduling in every run and, after
/// the grace period, cancels in-flight statements (they roll back); with no run in flight it
/// stops the process at once. The second signal exits at once (PostgreSQL rolls back the
/// open transactions).
#[derive(Clone)]
pub struct Signals {
    rx: tokio::sync::watch::Receiver<Option<&'static str>>,
    active: Arc<std::sync::atomic::AtomicUsize>,
}

impl Signals {
    /// Starts listening; call inside the runtime, before any database work.
    pub fn install() -> Signals {
        use std::sync::atomic::Ordering;
        let (tx, rx) = tokio::sync::watch::channel(None);
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let in_flight = active.clone();
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                #[cfg(unix)]
                let name = tokio::select! {
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => "SIGTERM",
                };
                #[cfg(not(unix))]
                let name = {
                    let _ = tokio::signal::ctrl_c().await;
                    "Ctrl-C"
                };
                count += 1;
                if count == 1 && in_flight.load(Ordering::SeqCst) == 0 {
                    eprintln!(
                        "{name} received with no schema in flight: stopping; finished work is kept"
                    );
                    std::process::exit(exit::INTERRUPTED);
                }
                if count > 1 {
                    eprintln!(
                        "{name} again: stopping now; open transactions are rolled back by PostgreSQL"
                    );
                    std::process::exit(exit::INTERRUPTED);
                }
                let _ = tx.send(Some(name));
            }
        });
        Signals { rx, active }
    }

    /// The signal received so far, if any.
    pub fn received(&self) -> Option<&'static str> {
        *self.rx.borrow()
    }

    /// Ties one run to the signals: on the first one (even if it came before this run
    /// started), `cancel` stops scheduling and, after `grace`, aborts in-flight statements.
    /// Dropping the guard ends the tie.
    fn watch_run(&self, cancel: Cancel, reporter: Arc<dyn Reporter>, grace: Duration) -> RunGuard {
        use std::sync::atomic::Ordering;
        self.active.fetch_add(1, Ordering::SeqCst);
        let mut rx = self.rx.clone();
        let task = tokio::spawn(async move {
            let signal = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.unwrap_or("signal"),
                Err(_) => return,
            };
            cancel.cancel();
            reporter.event(&Event::Interrupting { signal, grace });
            tokio::time::sleep(grace).await;
            cancel.abort_in_flight().await;
        });
        RunGuard {
            task,
            active: self.active.clone(),
        }
    }
}

/// One run's tie to [`Signals`].
struct RunGuard {
    task: tokio::task::JoinHandle<()>,
    active: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.task.abort();
        self.active
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a fleet command asks for.
pub struct RunRequest<'a> {
    pub command: &'a str,
    pub mode: Mode,
    pub migrations: &'a MigrationSet,
    pub target: Option<i32>,
    /// `all`, or a fingerprint of the tenant list (see [`scope_of`]).
    pub scope: String,
    /// Everything in scope: (tenant, registry version, needs work).
    pub tenants: Vec<(Tenant, Option<i32>, bool)>,
    /// Tenants refused before any work (e.g. already exist), reported as failed.
    pub refused: Vec<(Tenant, Failure)>,
    /// Continue an interrupted run of the same command, target, files and scope.
    pub resume: bool,
    pub fail_fast: bool,
    pub json: bool,
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

/// Runs a fleet command end to end on one cluster and returns its result.
pub async fn run_schemas(
    session: &mut Session<'_>,
    req: RunRequest<'_>,
    reporter: Arc<dyn Reporter>,
    signals: &Signals,
) -> anyhow::Result<Done> {
    let total = req.tenants.len() + req.refused.len();
    let argv = command_line();
    let info = RunInfo {
        command: req.command,
        target: req.target,
        digest: req.migrations.digest(),
        scope: &req.scope,
        total,
        actor: &session.settings.actor,
        argv: &argv,
    };
    session.control.reap_dead_runs(&session.client).await?;
    let resumed = if req.resume {
        session
            .control
            .resumable_run(&session.client, &info)
            .await?
    } else {
        None
    };
    // Ledger rows only for schemas this run works on (and those it refused, which are
    // recorded as failed below): a no-op deploy over 10,000 current tenants writes one run
    // row, not 10,000 "skipped" rows (runs.total keeps the count).
    let ledger_rows: Vec<(&Tenant, Option<i32>, &str)> = req
        .tenants
        .iter()
        .filter(|(_, _, todo)| *todo)
        .map(|(t, v, _)| (t, *v, "pending"))
        .chain(req.refused.iter().map(|(t, f)| (t, f.still_at, "pending")))
        .collect();
    let run_id = session
        .control
        .open_run(
            &session.client,
            &info,
            resumed.as_ref().map(|r| r.id),
            &ledger_rows,
        )
        .await?;
    if let Some(run) = &resumed {
        reporter.event(&Event::Resuming { run });
    }

    let jobs: Vec<SchemaJob> = req
        .tenants
        .iter()
        .filter(|(_, _, todo)| *todo)
        .map(|(t, v, _)| SchemaJob {
            tenant: t.clone(),
            version: *v,
        })
        .collect();
    let skipped = req.tenants.len() - jobs.len();
    let mut workers = session.settings.jobs.min(jobs.len()).max(1);
    if !jobs.is_empty() {
        let free = session.free_slots().await?;
        if free < 1 {
            session
                .control
                .finish_run(&session.client, run_id, "failed")
                .await?;
            anyhow::bail!(
                "the server has no free connection slots (max_connections is used up); nothing was changed. Free some connections or raise max_connections, then re-run"
            );
        }
        if (free as usize) < workers {
            reporter.event(&Event::Warning {
                message: &format!(
                    "the server has only {free} free connection slot(s): running {free} at a time instead of {workers}"
                ),
            });
            workers = free as usize;
        }
    }
    let pool = session.pool(workers)?;
    let cancel = Cancel::default();
    let signal_guard = signals.watch_run(
        cancel.clone(),
        reporter.clone(),
        session.settings.grace_period,
    );

    reporter.event(&Event::RunStarted {
        command: req.command,
        run_id,
        total,
        todo: jobs.len(),
        jobs: workers,
    });
    for (tenant, failure) in &req.refused {
        reporter.event(&Event::SchemaFailed { tenant, failure });
    }
    let ctx = ApplyCtx {
        migrations: req.migrations,
        control: &session.control,
        run_id,
        target: req.target,
        lock_timeout: session.settings.lock_timeout,
        statement_timeout: session.settings.statement_timeout,
        role_template: session.settings.role_template.as_deref(),
    };
    let opts = FleetOpts {
        mode: req.mode,
        jobs: workers,
        fail_fast: req.fail_fast,
        retries: session.settings.retries,
        retry_delay: session.settings.retry_delay,
    };
    let mut outcome = run_fleet(&pool, &ctx, jobs, &opts, reporter.as_ref(), &cancel).await;
    reporter.event(&Event::RunFinished);
    drop(signal_guard);
    pool.close();
    outcome.failed.splice(0..0, req.refused);

    let state = if outcome.interrupted {
        "interrupted"
    } else if outcome.failed.is_empty() && outcome.not_started.is_empty() {
        "succeeded"
    } else {
        "failed"
    };
    let ledger_note = record_outcome(session, run_id, &outcome.failed, state).await;

    let result = summary::RunSummary {
        command: req.command,
        run_id,
        state,
        target: req.target,
        skipped,
        outcome: &outcome,
        resumed_from: resumed.as_ref().map(|r| r.succeeded as usize),
        ledger_note: ledger_note.as_deref(),
    };
    let code = if outcome.interrupted {
        exit::INTERRUPTED
    } else if state == "succeeded" {
        exit::SUCCESS
    } else {
        exit::FAILED
    };
    let out = if req.json {
        Output::Json(result.to_json())
    } else {
        Output::Text(result.to_text())
    };
    let mut done = Done::new(code, out).counts(result.counts());
    done.down = outcome.database_down.is_some();
    Ok(done)
}

/// Writes failures and the run's final state. If the coordinator's connection died (the
/// server restarted), reconnects once; if that fails too, says what is missing instead of
/// failing the command: every succeeded schema is already recorded in its own transaction.
async fn record_outcome(
    session: &mut Session<'_>,
    run_id: i64,
    failed: &[(Tenant, Failure)],
    state: &str,
) -> Option<String> {
    let rows: Vec<FailureRecord<'_>> = failed
        .iter()
        .map(|(t, f)| FailureRecord {
            id: t.id(),
            migration: f.migration.as_deref(),
            error: f.to_string(),
            attempts: f.attempts as i32,
            drift: (f.kind == FailureKind::Drift).then_some(f.message.as_str()),
        })
        .collect();
    let mut last_err = None;
    for round in 0..2 {
        if round == 1 {
            if let Err(e) = session.reconnect().await {
                last_err = Some(e);
                break;
            }
        }
        let write = async {
            session
                .control
                .record_failures(&session.client, run_id, &rows)
                .await?;
            session
                .control
                .finish_run(&session.client, run_id, state)
                .await
        };
        match write.await {
            Ok(()) => return None,
            Err(e) => last_err = Some(e),
        }
    }
    last_err.map(|e| {
        format!(
            "could not record the end of run {run_id} in the ledger ({e:#}); succeeded schemas are recorded, and the next run will see this one as interrupted"
        )
    })
}

/// This process's command line for the audit trail: shell-quoted where needed, passwords
/// scrubbed (the URL's password was registered when the settings were resolved).
pub fn command_line() -> String {
    let words: Vec<String> = std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 { "tenantctl".to_string() } else { a };
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect();
    crate::redact::scrub(&words.join(" "))
}
