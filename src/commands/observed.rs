//! The run events of the commands that change tenants in a transaction (or steps) of their
//! own rather than through the fleet runner: `tenant label`, `tenant rename`, `tenant move`
//! (and `rebalance`, one move at a time). They go to `--events` and the metrics only; these
//! commands' text is their own summary, not a progress bar. The same events as a fleet
//! run's (run started, tenant started, finished or failed, run finished), so a stream's
//! reader rebuilds their counts the same way.

use std::time::Instant;

use crate::control::{RunCommand, RunCounts, RunState};
use crate::engine::apply::Applied;
use crate::engine::events::{Event, Events};
use crate::engine::failure::{Failure, FailureKind};
use crate::tenant::Tenant;

use super::Ctx;

/// One observed change: started, then [`OneShot::succeeded`] or [`OneShot::failed`].
pub(super) struct OneShot {
    events: Option<Events>,
    started: Instant,
}

impl OneShot {
    /// The run starts on `cluster` (its ledger run `run_id`, 0 while it has none yet: a
    /// move records its run at the cutover); every tenant in `todo` starts.
    pub fn start(
        ctx: &Ctx,
        cluster: &str,
        (command, run_id, target): (RunCommand, i64, Option<i32>),
        total: usize,
        todo: &[Tenant],
    ) -> OneShot {
        let events = ctx.reporters.observers(cluster);
        if let Some(events) = &events {
            let scope = crate::engine::run::scope_of(Some(todo));
            events.emit(&Event::RunStarted {
                command,
                run_id,
                total,
                todo: todo.len(),
                refused: 0,
                jobs: 1,
                target,
                scope: &scope,
            });
            for tenant in todo {
                events.emit(&Event::SchemaStarted { tenant });
            }
        }
        OneShot {
            events,
            started: Instant::now(),
        }
    }

    /// Every tenant in `done` finished (`versions`: before and after); the run `run_id`
    /// succeeded with `counts` (the ledger's).
    pub fn succeeded(
        &self,
        run_id: i64,
        done: &[Tenant],
        versions: (Option<i32>, Option<i32>),
        counts: &RunCounts,
    ) {
        let Some(events) = &self.events else { return };
        let elapsed = self.started.elapsed();
        let applied = Applied {
            before: versions.0,
            after: versions.1,
            count: 1,
            archived_as: None,
            from_pool: false,
            rows: None,
        };
        for tenant in done {
            events.emit(&Event::SchemaSucceeded {
                tenant,
                applied: &applied,
                elapsed,
                attempts: 1,
            });
        }
        events.emit(&Event::RunEnded {
            run_id,
            state: RunState::Succeeded,
            counts,
            exit_code: crate::exit::SUCCESS,
            elapsed,
        });
    }

    /// A change of one tenant that is done and recorded as run `run_id`: its whole run at once.
    pub fn done(
        ctx: &Ctx,
        cluster: &str,
        (command, run_id, version): (RunCommand, i64, Option<i32>),
        tenant: &Tenant,
    ) {
        let one = std::slice::from_ref(tenant);
        let what = (command, run_id, version);
        OneShot::start(ctx, cluster, what, 1, one).succeeded(
            run_id,
            one,
            (version, version),
            &OneShot::one_done(),
        );
    }

    /// The ledger's counts of a run that did its one tenant.
    pub fn one_done() -> RunCounts {
        RunCounts {
            done: 1,
            ..RunCounts::default()
        }
    }

    /// What to say when a signal stops the process during the change: called from the
    /// signal's handler, just before the process exits.
    pub fn interrupted(
        &self,
        tenant: &Tenant,
        version: Option<i32>,
    ) -> impl FnOnce(&'static str) + Send + 'static {
        let (events, tenant, started) = (self.events.clone(), tenant.clone(), self.started);
        move |signal| {
            let Some(events) = events else { return };
            events.emit(&Event::Interrupting {
                signal,
                grace: std::time::Duration::ZERO,
            });
            let message = format!(
                "{signal} received: stopped where it was; run the same command again to carry on"
            );
            let failure = Failure::new(FailureKind::Interrupted, message, version);
            let elapsed = started.elapsed();
            events.emit(&Event::SchemaFailed {
                tenant: &tenant,
                failure: &failure,
                elapsed,
            });
            let counts = RunCounts {
                failed: 1,
                ..RunCounts::default()
            };
            events.emit(&Event::RunEnded {
                run_id: 0,
                state: RunState::Interrupted,
                counts: &counts,
                exit_code: crate::exit::INTERRUPTED,
                elapsed,
            });
        }
    }

    /// The change failed for `tenants` (nothing of it committed: no ledger run).
    pub fn failed(&self, tenants: &[Tenant], error: &anyhow::Error, version: Option<i32>) {
        let code = crate::exit::Kind::of(error).code();
        self.failed_with(tenants, &Failure::from_error(error, version), code);
    }

    /// [`OneShot::failed`] with the failure as the caller worded it, and the exit code.
    pub fn failed_with(&self, tenants: &[Tenant], failure: &Failure, exit_code: i32) {
        let Some(events) = &self.events else { return };
        let elapsed = self.started.elapsed();
        for tenant in tenants {
            events.emit(&Event::SchemaFailed {
                tenant,
                failure,
                elapsed,
            });
        }
        let counts = RunCounts {
            failed: tenants.len() as i64,
            ..RunCounts::default()
        };
        events.emit(&Event::RunEnded {
            run_id: 0,
            state: RunState::Failed,
            counts: &counts,
            exit_code,
            elapsed,
        });
    }
}
