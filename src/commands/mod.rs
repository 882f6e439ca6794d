//! Thin glue between the command line and the engine. [`run_schemas`] is the shared shape of
//! every fleet command: open a run in the ledger, drive the fleet, record the outcome,
//! print the summary, pick the exit code.

pub mod migrate;
pub mod status;
pub mod tenant;

use std::collections::BTreeSet;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_postgres::Client;

use crate::config::Settings;
use crate::control::{Control, RunInfo};
use crate::db;
use crate::engine::apply::{ApplyCtx, Failure, Mode};
use crate::engine::fleet::{run_fleet, Cancel, FleetOpts, SchemaJob};
use crate::exit::{self, UsageError};
use crate::migrations::MigrationSet;
use crate::report::{self, summary, Event, Reporter};
use crate::tenant::Tenant;

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
}

/// Validates ids (all of them, reporting every bad one) and refuses duplicates.
pub fn parse_ids(settings: &Settings, ids: &[String]) -> anyhow::Result<Vec<Tenant>> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let mut tenants = Vec::with_capacity(ids.len());
    for id in ids {
        match Tenant::parse(id, &settings.schema_prefix, &settings.control_schema) {
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

/// Loads the migration set, failing with exit code 2 before any database work.
pub fn load_migrations(settings: &Settings) -> anyhow::Result<MigrationSet> {
    Ok(MigrationSet::load(&settings.migrations_dir)?)
}

/// Installs SIGINT/SIGTERM handling for a run: the first signal cancels scheduling, the
/// second exits at once (PostgreSQL rolls back the open transactions).
fn watch_signals(cancel: Cancel, reporter: Arc<dyn Reporter>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
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
            if count == 1 {
                cancel.cancel();
                reporter.event(&Event::Interrupting { signal: name });
            } else {
                eprintln!(
                    "{name} again: stopping now; open transactions are rolled back by PostgreSQL"
                );
                std::process::exit(exit::INTERRUPTED);
            }
        }
    })
}

/// What a fleet command asks for.
pub struct RunRequest<'a> {
    pub command: &'a str,
    pub mode: Mode,
    pub migrations: &'a MigrationSet,
    pub target: Option<i32>,
    /// Everything in scope: (tenant, registry version, needs work).
    pub scope: Vec<(Tenant, Option<i32>, bool)>,
    /// Tenants refused before any work (e.g. already exist), reported as failed.
    pub refused: Vec<(Tenant, Failure)>,
    pub jobs: usize,
    pub fail_fast: bool,
    pub json: bool,
    pub quiet: bool,
}

/// Runs a fleet command end to end and returns its exit code.
pub async fn run_schemas(session: &Session<'_>, req: RunRequest<'_>) -> anyhow::Result<i32> {
    let control = &session.control;
    let total = req.scope.len() + req.refused.len();
    let run_id = control
        .start_run(
            &session.client,
            &RunInfo {
                command: req.command,
                target: req.target,
                digest: req.migrations.digest(),
                total,
            },
        )
        .await?;
    let ledger_rows: Vec<(&Tenant, Option<i32>, &str)> = req
        .scope
        .iter()
        .map(|(t, v, todo)| (t, *v, if *todo { "pending" } else { "skipped" }))
        .collect();
    control
        .add_run_schemas(&session.client, run_id, &ledger_rows)
        .await?;

    let jobs: Vec<SchemaJob> = req
        .scope
        .iter()
        .filter(|(_, _, todo)| *todo)
        .map(|(t, v, _)| SchemaJob {
            tenant: t.clone(),
            version: *v,
        })
        .collect();
    let skipped = req.scope.len() - jobs.len();
    let workers = req.jobs.min(jobs.len()).max(1);
    let pool = session.pool(workers)?;
    let reporter: Arc<dyn Reporter> = report::for_stderr(req.quiet);
    let cancel = Cancel::default();
    let signals = watch_signals(cancel.clone(), reporter.clone());

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
        control,
        run_id,
        target: req.target,
        lock_timeout: session.settings.lock_timeout,
        statement_timeout: session.settings.statement_timeout,
    };
    let opts = FleetOpts {
        mode: req.mode,
        jobs: workers,
        fail_fast: req.fail_fast,
    };
    let mut outcome = run_fleet(&pool, &ctx, jobs, &opts, reporter.as_ref(), &cancel).await;
    reporter.event(&Event::RunFinished);
    signals.abort();
    pool.close();
    outcome.failed.splice(0..0, req.refused);

    let failures: Vec<(&str, Option<String>, String)> = outcome
        .failed
        .iter()
        .map(|(t, f)| (t.id(), f.migration.clone(), f.to_string()))
        .collect();
    control
        .record_failures(&session.client, run_id, &failures)
        .await?;
    let state = if outcome.interrupted {
        "interrupted"
    } else if outcome.failed.is_empty() && outcome.not_started.is_empty() {
        "succeeded"
    } else {
        "failed"
    };
    control.finish_run(&session.client, run_id, state).await?;

    let result = summary::RunSummary {
        command: req.command,
        run_id,
        state,
        target: req.target,
        skipped,
        outcome: &outcome,
    };
    if req.json {
        println!("{}", redact_json(&result.to_json()));
    } else {
        print!("{}", crate::redact::scrub(&result.to_text()));
    }
    Ok(if outcome.interrupted {
        exit::INTERRUPTED
    } else if state == "succeeded" {
        exit::SUCCESS
    } else {
        exit::FAILED
    })
}

/// Serialises JSON with every registered secret scrubbed.
pub fn redact_json(value: &serde_json::Value) -> String {
    crate::redact::scrub(&value.to_string())
}
