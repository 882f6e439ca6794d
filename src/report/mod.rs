//! Reporters draw the engine's events: an indicatif bar on a terminal, plain lines in CI
//! logs (no escape codes), nothing with `--quiet`. Progress goes to stderr; results and
//! `--json` go to stdout (see [`summary`]).

pub mod plain;
pub mod progress;
pub mod summary;

use std::io::IsTerminal;
use std::time::Duration;

use crate::engine::apply::{Applied, Failure};
use crate::tenant::Tenant;

/// What the engine tells the reporter.
pub enum Event<'a> {
    RunStarted {
        command: &'a str,
        run_id: i64,
        /// Schemas in scope.
        total: usize,
        /// Schemas that need work.
        todo: usize,
        jobs: usize,
    },
    SchemaStarted {
        tenant: &'a Tenant,
    },
    SchemaSucceeded {
        tenant: &'a Tenant,
        applied: &'a Applied,
        elapsed: Duration,
    },
    SchemaFailed {
        tenant: &'a Tenant,
        failure: &'a Failure,
    },
    /// A signal arrived: no new schemas start, in-flight ones get `grace` to finish.
    Interrupting {
        signal: &'a str,
        grace: Duration,
    },
    /// Another fleet run holds the database; waiting for it (--wait).
    Waiting {
        what: &'a str,
    },
    /// Continuing an interrupted run.
    Resuming {
        run: &'a crate::control::RunRow,
    },
    Warning {
        message: &'a str,
    },
    RunFinished,
}

pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// Draws nothing.
pub struct Silent;

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

    /// The reporter for one cluster's work.
    pub fn for_cluster(&self, cluster: &str) -> std::sync::Arc<dyn Reporter> {
        let label = if self.labeled {
            format!("[{cluster}] ")
        } else {
            String::new()
        };
        match &self.bars {
            _ if self.quiet => std::sync::Arc::new(Silent),
            Some(multi) => std::sync::Arc::new(progress::Bar::new(label, multi)),
            None => std::sync::Arc::new(plain::Plain::new(label)),
        }
    }
}

/// The lines every reporter prints the same way (run start, signals, waits, warnings);
/// None for per-schema events, which each reporter draws its own way.
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
        _ => None,
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
