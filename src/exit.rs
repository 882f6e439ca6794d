//! Named exit codes, so CI can tell what happened.

/// Everything requested succeeded.
pub const SUCCESS: i32 = 0;
/// One or more tenants failed (the others are done), or the database could not be reached.
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

/// Maps an error to its exit code: input problems are 2, busy is 3, everything else is 1.
pub fn code_for(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<BusyError>()) {
        return BUSY;
    }
    if err.chain().any(|e| e.is::<InterruptedError>()) {
        return INTERRUPTED;
    }
    let usage = err.chain().any(|e| {
        e.is::<UsageError>()
            || e.is::<crate::config::ConfigError>()
            || e.is::<crate::migrations::MigrationSetError>()
    });
    if usage {
        USAGE
    } else {
        FAILED
    }
}
