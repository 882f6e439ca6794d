//! What happens during a run, as plain data. The engine emits every event of a run, its start
//! and its end included, through [`Events`]; reporters (see `report/`) turn them into a
//! progress bar, log lines or nothing. The engine never prints and knows no reporter.

use std::sync::Arc;
use std::time::Duration;

use crate::control::{RunCommand, RunRow};
use crate::engine::apply::Applied;
use crate::engine::failure::Failure;
use crate::tenant::Tenant;

/// One thing that happened.
#[derive(Debug)]
pub enum Event<'a> {
    /// Another fleet run holds the database; waiting for it (--wait).
    Waiting {
        what: &'a str,
    },
    /// Continuing an interrupted run.
    Resuming {
        run: &'a RunRow,
    },
    /// The run is open in the ledger and its schemas are about to start.
    RunStarted {
        command: RunCommand,
        run_id: i64,
        /// Schemas in scope.
        total: usize,
        /// Schemas that need work.
        todo: usize,
        /// Refused before any work (e.g. `tenant create` of an existing id): reported as failed.
        refused: usize,
        jobs: usize,
        /// The version the run brings its schemas to (repair: the version it accepts).
        target: Option<i32>,
        /// `all`, or a fingerprint of the tenant list.
        scope: &'a str,
    },
    /// A schema's first attempt starts.
    SchemaStarted {
        tenant: &'a Tenant,
    },
    SchemaSucceeded {
        tenant: &'a Tenant,
        applied: &'a Applied,
        elapsed: Duration,
        attempts: u32,
    },
    SchemaFailed {
        tenant: &'a Tenant,
        failure: &'a Failure,
        elapsed: Duration,
    },
    /// A transient failure (lock timeout, lost connection): attempt `attempt + 1` follows
    /// after `pause`.
    Retrying {
        tenant: &'a Tenant,
        failure: &'a Failure,
        attempt: u32,
        pause: Duration,
    },
    /// A schema still running past `--slow-after`, once, with what it is waiting for.
    Slow {
        tenant: &'a Tenant,
        /// Its version when it started, and the run's target (None: the command has none).
        from: Option<i32>,
        to: Option<i32>,
        elapsed: Duration,
        /// What `pg_stat_activity` says of its session and what blocks it (None: not found).
        waiting: Option<&'a str>,
    },
    /// The tenant was dropped while the run was going on: not touched, not a failure.
    SchemaDropped {
        tenant: &'a Tenant,
    },
    /// A signal arrived: no new schemas start, in-flight ones get `grace` to finish.
    Interrupting {
        signal: &'a str,
        grace: Duration,
    },
    Warning {
        message: &'a str,
    },
    /// Something worth a line of its own (not a problem).
    Info {
        message: &'a str,
    },
    /// A staged rollout starts a wave here (`tenants`: this cluster's tenants in it with work).
    WaveStarted {
        wave: usize,
        waves: usize,
        tenants: usize,
    },
    /// After a wave: the gate's decision, with this cluster's counts in the wave.
    WaveGate {
        wave: usize,
        done: usize,
        failed: usize,
        /// `go`, `halt` or `interrupted`.
        decision: &'a str,
        reason: Option<&'a str>,
    },
    /// Between waves: the next one starts in `left` (emitted about every second).
    Pausing {
        next_wave: usize,
        left: Duration,
    },
    /// A table's rows being copied (export, import, clone): so far, in this table.
    Copying {
        table: &'a str,
        rows: u64,
        bytes: u64,
    },
    /// `query`: a tenant's rows (its transaction committed). Data only: the row sink in
    /// `report/` writes them; nothing keeps them after.
    Rows {
        tenant: &'a Tenant,
        rows: &'a crate::engine::fleet_sql::Rows,
    },
    /// Every schema of the run has finished (or was left unstarted); the ledger is closed next.
    RunFinished,
    /// The run is closed: its state and counts as the ledger has them, and this cluster's
    /// exit code.
    RunEnded {
        run_id: i64,
        state: crate::control::RunState,
        counts: &'a crate::control::RunCounts,
        exit_code: i32,
        elapsed: Duration,
    },
}

/// Where the engine sends its events: a callback shared by every task of a run.
#[derive(Clone)]
pub struct Events(Arc<dyn Fn(&Event<'_>) + Send + Sync>);

impl Events {
    pub fn new(f: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Events {
        Events(Arc::new(f))
    }

    pub fn emit(&self, event: &Event<'_>) {
        (self.0)(event)
    }
}
