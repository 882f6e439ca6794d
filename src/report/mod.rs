//! Reporters draw the engine's events: an indicatif bar on a terminal, plain lines in CI
//! logs (no escape codes), nothing with `--quiet`. Progress goes to stderr; results and
//! `--json` go to stdout (see [`summary`]). This module depends on the engine's events; the
//! engine never depends on it.

pub mod fleet_metrics;
pub mod json;
pub mod metrics;
pub mod plain;
pub mod progress;
pub mod rows;
pub mod stream;
pub mod summary;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use crate::control::{RunCommand, SchemaResult};
use crate::engine::apply::Applied;
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
    /// `--events`: every cluster's events into one NDJSON stream.
    stream: Option<Arc<stream::Stream>>,
    /// `--metrics-file`, `--pushgateway`: the run's metrics, gathered as it goes.
    metrics: Option<Arc<metrics::Metrics>>,
}

impl Reporters {
    pub fn new(quiet: bool, labeled: bool) -> Reporters {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Reporters {
            quiet,
            labeled,
            bars: (tty && !quiet).then(indicatif::MultiProgress::new),
            stream: None,
            metrics: None,
        }
    }

    /// Also into an event stream and a metrics collector.
    pub fn observed(
        mut self,
        stream: Option<Arc<stream::Stream>>,
        metrics: Option<Arc<metrics::Metrics>>,
    ) -> Reporters {
        self.stream = stream;
        self.metrics = metrics;
        self
    }

    /// `--quiet`: nothing but results and errors.
    pub fn is_quiet(&self) -> bool {
        self.quiet
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
        match self.observers(cluster) {
            None => Events::new(move |e| reporter.event(e)),
            Some(observers) => Events::new(move |e| {
                reporter.event(e);
                observers.emit(e);
            }),
        }
    }

    /// Where one cluster's events go when nobody watches them but `--events` and the
    /// metrics: the run events of the commands whose text is a summary of their own (tenant
    /// label, rename, move). None when neither was asked for.
    pub fn observers(&self, cluster: &str) -> Option<Events> {
        let stream = self.stream.as_ref().map(|s| s.for_cluster(cluster));
        let metrics = self.metrics.as_ref().map(|m| m.for_cluster(cluster));
        if stream.is_none() && metrics.is_none() {
            return None;
        }
        Some(Events::new(move |e| {
            if let Some(s) = &stream {
                s.event(e);
            }
            if let Some(m) = &metrics {
                m.event(e);
            }
        }))
    }
}

/// A table being copied, as both reporters show it.
pub fn copy_line(table: &str, rows: u64, bytes: u64) -> String {
    format!(
        "copying {table}: {rows} row(s), {:.1} MB",
        bytes as f64 / 1_048_576.0
    )
}

/// The lines every reporter prints the same way (run start, signals, waits, warnings);
/// None for per-schema events and the run's end, which each reporter draws its own way.
pub fn notice(event: &Event<'_>) -> Option<String> {
    match event {
        Event::Copying { .. } | Event::Rows { .. } => None,
        // Not recorded (query, exec --dry-run): no run to name.
        Event::RunStarted {
            command,
            run_id: 0,
            total,
            todo,
            jobs,
            ..
        } => Some(format!(
            "{command}: {total} tenant(s), {todo} to do; {jobs} at a time"
        )),
        Event::RunStarted {
            command,
            run_id,
            total,
            todo,
            refused,
            jobs,
            ..
        } => Some(format!(
            "{command}: run {run_id}: {total} {}, {todo} to do, {} with nothing to do{}; {jobs} at a time",
            match command {
                RunCommand::PoolFill | RunCommand::PoolDrain => "pooled schema(s)",
                _ => "tenant(s)",
            },
            total - todo - refused,
            if *refused > 0 {
                format!(", {refused} refused (see below)")
            } else {
                String::new()
            }
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
            run.counts.done + run.counts.unchanged,
            run.total
        )),
        Event::Warning { message } => Some(format!("warning: {message}")),
        Event::Info { message } => Some(message.to_string()),
        Event::WaveStarted {
            wave,
            waves,
            tenants,
        } => Some(format!(
            "wave {wave} of {}{}: {tenants} tenant(s) to do here",
            waves - 1,
            if *wave == 0 { " (canary)" } else { "" }
        )),
        Event::Pausing { next_wave, left } => Some(format!(
            "pausing before wave {next_wave}: {} left (SIGINT stops here cleanly; the same command resumes)",
            humantime::format_duration(Duration::from_secs(left.as_millis().div_ceil(1000) as u64))
        )),
        Event::Slow {
            tenant,
            from,
            to,
            elapsed,
            waiting,
        } => Some(format!(
            "slow: {tenant}: {}still running after {}, {}",
            match to {
                Some(_) if from != to => format!(
                    "{} -> {} ",
                    crate::migrations::version_label(*from),
                    crate::migrations::version_label(*to)
                ),
                _ => String::new(),
            },
            humantime::format_duration(*elapsed),
            waiting.unwrap_or("what it waits for could not be read from pg_stat_activity")
        )),
        Event::SchemaStarted { .. }
        | Event::SchemaSucceeded { .. }
        | Event::SchemaFailed { .. }
        | Event::SchemaDropped { .. }
        | Event::Retrying { .. }
        | Event::WaveGate { .. }
        | Event::RunFinished
        | Event::RunEnded { .. } => None,
    }
}

/// What a command did to one schema, in the words of a per-schema line.
pub fn schema_done(command: RunCommand, target: Option<i32>, a: &Applied) -> String {
    use crate::migrations::version_label as v;
    match command {
        RunCommand::TenantCreate if a.from_pool => {
            format!("a pooled schema at {} taken", v(a.after))
        }
        RunCommand::TenantCreate => {
            format!("created at {} ({} migration(s))", v(a.after), a.count)
        }
        RunCommand::TenantImport => format!("imported at {}", v(a.after)),
        RunCommand::TenantClone => format!("cloned at {}", v(a.after)),
        RunCommand::TenantExport => format!("exported at {}", v(a.after)),
        RunCommand::TenantRename => "renamed".into(),
        RunCommand::TenantMove => format!("copied in at {}", v(a.after)),
        RunCommand::TenantMoveAbort => "move undone".into(),
        RunCommand::TenantMoveCleanup => "old copy dropped".into(),
        RunCommand::Rebalance => "planned".into(),
        RunCommand::TenantTiers => "role brought to its tier".into(),
        RunCommand::Exec => format!("{} row(s)", a.rows.unwrap_or(0)),
        RunCommand::Query => format!("{} row(s)", a.rows.unwrap_or(0)),
        RunCommand::TenantAdopt => format!(
            "adopted at {} ({} migration(s) recorded as applied)",
            v(a.after),
            a.count
        ),
        RunCommand::Rollback => format!("{} -> {} ({} reverted)", v(a.before), v(a.after), a.count),
        RunCommand::Repair if a.count > 0 => format!("{} checksum recorded", v(target)),
        RunCommand::Repair => format!("{} already recorded as it is now", v(target)),
        RunCommand::TenantDrop => "dropped".into(),
        RunCommand::TenantDropArchive => {
            format!("archived as {}", a.archived_as.as_deref().unwrap_or("?"))
        }
        RunCommand::PoolDrain => "drained".into(),
        RunCommand::Migrate
        | RunCommand::PoolFill
        | RunCommand::MigrateShared
        | RunCommand::TenantCreateShared
        | RunCommand::TenantLabel => format!(
            "{} -> {} ({} migration(s))",
            v(a.before),
            v(a.after),
            a.count
        ),
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
    DroppedMeanwhile,
    Registered,
    UpToDate,
    NotAtLatest,
    Drifted,
    Active,
    Dropped,
    /// `tenant list`: rows of tenants in a move (moving or moved away from this cluster,
    /// incoming to it).
    InMoves,
    /// `tenant pool status`: schemas in the pool, and those of them at the latest version.
    Pooled,
    Ready,
}

impl Tally {
    /// The tally of one result of `command`.
    pub fn of(command: RunCommand, result: SchemaResult) -> Tally {
        match result {
            SchemaResult::Done => Tally::Done(command),
            SchemaResult::Unchanged => Tally::Unchanged(command),
            SchemaResult::Failed => Tally::Failed,
            SchemaResult::NotStarted => Tally::NotStarted,
            SchemaResult::DroppedMeanwhile => Tally::DroppedMeanwhile,
        }
    }

    /// The key of the count in a JSON document's `counts`.
    pub fn key(self) -> &'static str {
        match self {
            Tally::Done(_) => "done",
            Tally::Unchanged(_) => "unchanged",
            Tally::Failed => "failed",
            Tally::NotStarted => "not_started",
            Tally::DroppedMeanwhile => "dropped_meanwhile",
            Tally::Registered => "registered",
            Tally::UpToDate => "up_to_date",
            Tally::NotAtLatest => "not_at_latest",
            Tally::Drifted => "drifted",
            Tally::Active => "active",
            Tally::Dropped => "dropped",
            Tally::InMoves => "in_moves",
            Tally::Pooled => "pooled",
            Tally::Ready => "ready",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tally::Done(c) => verbs(c).0,
            Tally::Unchanged(c) => verbs(c).1,
            Tally::Failed => "failed",
            Tally::NotStarted => "not started",
            Tally::DroppedMeanwhile => "dropped meanwhile",
            Tally::Registered => "registered",
            Tally::UpToDate => "up to date",
            Tally::NotAtLatest => "not at latest",
            Tally::Drifted => "drifted",
            Tally::Active => "active",
            Tally::Dropped => "dropped",
            Tally::InMoves => "in moves",
            Tally::Pooled => "pooled",
            Tally::Ready => "ready",
        }
    }
}

/// What a command did to a schema, and what it says of one it had nothing to do for.
fn verbs(command: RunCommand) -> (&'static str, &'static str) {
    match command {
        RunCommand::TenantCreate => ("created", "already registered (--if-not-exists)"),
        RunCommand::TenantAdopt => ("adopted", "already registered"),
        RunCommand::Migrate => ("migrated", "already current"),
        RunCommand::Rollback => ("rolled back", "already at or below the target"),
        RunCommand::TenantDrop | RunCommand::TenantDropArchive => ("dropped", "skipped"),
        RunCommand::MigrateShared | RunCommand::TenantCreateShared => {
            ("applied", "already current")
        }
        RunCommand::Repair => ("repaired", "already accepted"),
        RunCommand::TenantLabel => ("labelled", "unchanged"),
        RunCommand::TenantTiers => ("changed", "unchanged"),
        RunCommand::PoolFill => ("pooled", "already pooled"),
        RunCommand::PoolDrain => ("drained", "skipped"),
        RunCommand::TenantImport => ("imported", "already registered"),
        RunCommand::TenantClone => ("cloned", "already registered"),
        RunCommand::TenantExport => ("exported", "skipped"),
        RunCommand::TenantRename => ("renamed", "skipped"),
        RunCommand::TenantMove => ("moved", "skipped"),
        RunCommand::TenantMoveAbort => ("undone", "skipped"),
        RunCommand::TenantMoveCleanup => ("cleaned up", "skipped"),
        RunCommand::Rebalance => ("planned", "skipped"),
        RunCommand::Exec => ("ran", "already ran this SQL"),
        RunCommand::Query => ("queried", "skipped"),
    }
}

pub use crate::lists::and_more;

/// What went wrong, independent of the tenant: `error` with the tenant's schema name taken
/// out (where it stands as a whole name), so that tenants that failed the same way group.
pub fn cause_of(error: &str, schema: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let mut out = String::with_capacity(error.len());
    let mut rest = error;
    while let Some(at) = rest.find(schema) {
        let (before, after) = (&rest[..at], &rest[at + schema.len()..]);
        let bounded = !before.ends_with(is_word) && !after.starts_with(is_word);
        out.push_str(before);
        out.push_str(if bounded { "<schema>" } else { schema });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Live failure lines per cause: the first few are printed as they happen, then one line
/// says the rest are counted (the summary groups them, `--json` lists them all).
#[derive(Default)]
pub struct CauseCap(std::sync::Mutex<std::collections::HashMap<String, (usize, String)>>);

/// Live lines printed per cause.
const LIVE_PER_CAUSE: usize = 3;

impl CauseCap {
    /// The line to print for this failure (`FAIL …`), or the note that the rest of its
    /// cause is not printed (naming the first tenant printed with it), or nothing.
    pub fn line(&self, tenant: &Tenant, failure: &Failure) -> Option<String> {
        let live = failure.live();
        let cause = cause_of(&live, tenant.schema());
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (n, first) = seen
            .entry(cause)
            .or_insert_with(|| (0, tenant.id().to_string()));
        *n += 1;
        match *n {
            n if n <= LIVE_PER_CAUSE => Some(format!("FAIL {tenant}: {live}")),
            n if n == LIVE_PER_CAUSE + 1 => Some(format!(
                "… more tenants fail the same way as {first}; they are counted, not printed (the summary groups them, --json lists every one)"
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cause_of;

    #[test]
    fn the_schema_is_taken_out_only_where_it_is_a_whole_name() {
        assert_eq!(
            cause_of(
                "relation \"tenant_a.t\" does not exist in tenant_a",
                "tenant_a"
            ),
            "relation \"<schema>.t\" does not exist in <schema>"
        );
        assert_eq!(
            cause_of("tenant_ab and xtenant_a", "tenant_a"),
            "tenant_ab and xtenant_a"
        );
    }
}
