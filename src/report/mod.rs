//! Reporters draw the engine's events: an indicatif bar on a terminal, plain lines in CI
//! logs (no escape codes), nothing with `--quiet`. Progress goes to stderr; results and
//! `--json` go to stdout (see [`summary`]). This module depends on the engine's events; the
//! engine never depends on it.

pub mod plain;
pub mod progress;
pub mod summary;

use std::io::IsTerminal;
use std::sync::Arc;

use crate::control::RunCommand;
use crate::engine::events::{Event, Events};
use crate::engine::failure::Failure;
use crate::tenant::Tenant;

/// Draws events.
pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// Draws nothing.
struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event<'_>) {}
}

/// Hands out reporters: one per cluster, drawn together (one bar each under a shared
/// `MultiProgress` on a terminal, plain lines prefixed with the cluster's name otherwise).
pub struct Reporters {
    quiet: bool,
    /// Prefix output with the cluster's name (the config names clusters).
    labeled: bool,
    bars: Option<indicatif::MultiProgress>,
}

impl Reporters {
    pub fn new(quiet: bool, labeled: bool) -> Reporters {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Reporters {
            quiet,
            labeled,
            bars: (tty && !quiet).then(indicatif::MultiProgress::new),
        }
    }

    /// Where one cluster's events go.
    pub fn for_cluster(&self, cluster: &str) -> Events {
        let label = if self.labeled {
            format!("[{cluster}] ")
        } else {
            String::new()
        };
        let reporter: Arc<dyn Reporter> = match &self.bars {
            _ if self.quiet => Arc::new(Silent),
            Some(multi) => Arc::new(progress::Bar::new(label, multi)),
            None => Arc::new(plain::Plain::new(label)),
        };
        Events::new(move |e| reporter.event(e))
    }
}

/// The lines every reporter prints the same way (run start, signals, waits, warnings);
/// None for per-schema events and the run's end, which each reporter draws its own way.
pub fn notice(event: &Event<'_>) -> Option<String> {
    match event {
        Event::RunStarted {
            command,
            run_id,
            total,
            todo,
            jobs,
        } => Some(format!(
            "{command}: run {run_id}: {total} tenant(s), {todo} to do, {} with nothing to do; {jobs} at a time",
            total - todo
        )),
        Event::Interrupting { signal, grace } => Some(format!(
            "{signal} received: starting no new schemas; in-flight ones get {} to finish, then are cancelled and rolled back. Send it again to stop at once",
            humantime::format_duration(*grace)
        )),
        Event::Waiting { what } => Some(format!("waiting for {what} to finish")),
        Event::Resuming { run } => Some(format!(
            "resuming run {} ({}): {} of {} schemas done",
            run.id,
            run.state,
            run.succeeded + run.skipped,
            run.total
        )),
        Event::Warning { message } => Some(format!("warning: {message}")),
        Event::SchemaSucceeded { .. }
        | Event::SchemaFailed { .. }
        | Event::SchemaDropped { .. }
        | Event::RunFinished => None,
    }
}

/// What a count on the overall line means: the outcome labels of every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Schemas the command did its work on (created, migrated, …).
    Done(RunCommand),
    /// Schemas it had nothing to do for.
    Unchanged(RunCommand),
    Failed,
    NotStarted,
    Registered,
    UpToDate,
    NotAtLatest,
    Drifted,
    Active,
    Dropped,
}

impl Tally {
    pub fn as_str(self) -> &'static str {
        match self {
            Tally::Done(c) => verbs(c).0,
            Tally::Unchanged(c) => verbs(c).1,
            Tally::Failed => "failed",
            Tally::NotStarted => "not started",
            Tally::Registered => "registered",
            Tally::UpToDate => "up to date",
            Tally::NotAtLatest => "not at latest",
            Tally::Drifted => "drifted",
            Tally::Active => "active",
            Tally::Dropped => "dropped",
        }
    }
}

/// What a command did to a schema, and what it says of one it had nothing to do for.
fn verbs(command: RunCommand) -> (&'static str, &'static str) {
    match command {
        RunCommand::TenantCreate => ("created", "already existed"),
        RunCommand::TenantAdopt => ("adopted", "already registered"),
        RunCommand::Migrate => ("migrated", "already current"),
        RunCommand::Rollback => ("rolled back", "already at or below the target"),
        RunCommand::TenantDrop | RunCommand::TenantDropArchive => ("dropped", "skipped"),
        RunCommand::MigrateShared | RunCommand::TenantCreateShared => {
            ("applied", "already current")
        }
    }
}

/// `, … and N more (--json lists all)` after a shortened list; empty when nothing was left out.
pub fn and_more(more: usize) -> String {
    if more > 0 {
        format!(", … and {more} more (--json lists all)")
    } else {
        String::new()
    }
}

/// One line for a failed schema, as shown live and in summaries.
pub fn failure_line(tenant: &Tenant, failure: &Failure) -> String {
    crate::redact::scrub(&format!("{tenant}: {failure}"))
}
