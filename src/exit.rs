//! Named exit codes, so CI can tell what happened, and the kind of an error as `--json`
//! reports it.

/// Everything requested succeeded.
pub const SUCCESS: i32 = 0;
/// One or more tenants failed (the others are done).
pub const FAILED: i32 = 1;
/// Usage, configuration or migration-set error: nothing was touched.
pub const USAGE: i32 = 2;
/// Another migrate/rollback run holds this database (and --wait was not given or ran out).
pub const BUSY: i32 = 3;
/// Partial: with several clusters, one or more could not be reached, were busy or stopped
/// early, while the others finished. Re-run once they are back: done work is kept.
pub const PARTIAL: i32 = 4;
/// Fenced: this run lost its locks (the coordinator's connection died) and could not prove
/// the run was still its own, or another runner took it over; it stopped, committing nothing
/// more. What it committed is whole; the run continues under its new owner, or on re-run.
pub const FENCED: i32 = 5;
/// The database could not be reached (refused, timed out, TLS failed), or went away for good
/// during a run: nothing (more) was done there. Re-run once it is back.
pub const UNREACHABLE: i32 = 6;
/// Halted: a staged rollout (`--waves`) stopped by its own rule (a wave's failures over
/// `--max-failures`, or the `--between-waves` command failed); later waves were not started.
/// The same command resumes it once the cause is fixed.
pub const HALTED: i32 = 7;
/// Interrupted by SIGINT/SIGTERM: in-flight schemas finished or rolled back, the rest not started.
pub const INTERRUPTED: i32 = 130;

/// A problem with what the user asked for (bad id, unknown tenant, unreadable file):
/// exit code 2, nothing touched.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Another fleet run is in progress: exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BusyError(pub String);

/// A signal arrived before this part of the work started: exit code 130.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InterruptedError(pub String);

/// The database could not be reached: exit code 6.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnreachableError(pub String);

/// What went wrong, for `--json`'s `error.kind`, with its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Usage,
    Config,
    Migrations,
    Busy,
    Unreachable,
    Interrupted,
    Failed,
}

impl Kind {
    pub fn of(err: &anyhow::Error) -> Kind {
        let is = |f: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool| err.chain().any(f);
        if is(&|e| e.is::<BusyError>()) {
            Kind::Busy
        } else if is(&|e| e.is::<InterruptedError>()) {
            Kind::Interrupted
        } else if is(&|e| e.is::<crate::config::ConfigError>()) {
            Kind::Config
        } else if is(&|e| e.is::<crate::migrations::MigrationSetError>()) {
            Kind::Migrations
        } else if is(&|e| e.is::<UsageError>()) {
            Kind::Usage
        } else if is(&|e| e.is::<UnreachableError>()) {
            Kind::Unreachable
        } else {
            Kind::Failed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::Config => "config",
            Kind::Migrations => "migrations",
            Kind::Busy => "busy",
            Kind::Unreachable => "unreachable",
            Kind::Interrupted => "interrupted",
            Kind::Failed => "failed",
        }
    }

    pub fn code(self) -> i32 {
        match self {
            Kind::Usage | Kind::Config | Kind::Migrations => USAGE,
            Kind::Busy => BUSY,
            Kind::Unreachable => UNREACHABLE,
            Kind::Interrupted => INTERRUPTED,
            Kind::Failed => FAILED,
        }
    }
}

/// Maps an error to its exit code.
pub fn code_for(err: &anyhow::Error) -> i32 {
    Kind::of(err).code()
}
