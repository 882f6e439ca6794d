//! Many schemas at once: a stream of schema jobs driven through `buffer_unordered(jobs)` over a
//! pool of `jobs` connections, so concurrency is bounded by construction and no task is
//! spawned per tenant. A failed schema never stops the others unless `fail_fast`; an
//! interrupt stops scheduling and lets in-flight transactions finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool, PoolError};
use futures::{stream, StreamExt};

use crate::db::describe;
use crate::engine::apply::{apply_schema, Applied, ApplyCtx, Failure, FailureKind, Mode};
use crate::report::{Event, Reporter};
use crate::tenant::Tenant;

/// One schema to work on, with the version the registry has for it.
#[derive(Debug, Clone)]
pub struct SchemaJob {
    pub tenant: Tenant,
    pub version: Option<i32>,
}

/// Set by the signal handler: stop scheduling new schemas.
#[derive(Debug, Default, Clone)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a fleet run went.
#[derive(Debug, Default)]
pub struct FleetOutcome {
    pub succeeded: Vec<(Tenant, Applied)>,
    pub failed: Vec<(Tenant, Failure)>,
    /// Never started: `--fail-fast` tripped or the run was interrupted.
    pub not_started: Vec<Tenant>,
    pub interrupted: bool,
    pub elapsed: Duration,
}

pub struct FleetOpts {
    pub mode: Mode,
    pub jobs: usize,
    pub fail_fast: bool,
}

/// Gets a worker connection, with a failure that names the cause.
async fn checkout(pool: &Pool, still_at: Option<i32>) -> Result<Object, Failure> {
    pool.get().await.map_err(|e| {
        let message = match &e {
            PoolError::Backend(pg) => describe(pg),
            other => crate::redact::scrub(&other.to_string()),
        };
        Failure {
            kind: FailureKind::Connection,
            migration: None,
            line: None,
            message: format!("could not get a database connection: {message}"),
            still_at,
            broken_connection: true,
        }
    })
}

async fn one_schema(
    pool: &Pool,
    ctx: &ApplyCtx<'_>,
    mode: Mode,
    job: &SchemaJob,
) -> Result<Applied, Failure> {
    let conn = checkout(pool, job.version).await?;
    let result = apply_schema(&conn, ctx, &job.tenant, mode, job.version).await;
    if let Err(f) = &result {
        if f.broken_connection {
            // Never hand a connection in an unknown state to the next schema.
            drop(Object::take(conn));
        }
    }
    result
}

/// Runs `jobs` through the pool, at most `opts.jobs` at once, reporting as it goes.
pub async fn run_fleet(
    pool: &Pool,
    ctx: &ApplyCtx<'_>,
    jobs: Vec<SchemaJob>,
    opts: &FleetOpts,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> FleetOutcome {
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let mut outcome = FleetOutcome::default();
    let mut scheduled = vec![false; jobs.len()];
    {
        let stop = &stop;
        let scheduled_ref = &mut scheduled;
        let mut results = stream::iter(jobs.iter().enumerate())
            .take_while(|_| {
                futures::future::ready(!stop.load(Ordering::SeqCst) && !cancel.is_cancelled())
            })
            .map(|(i, job)| {
                scheduled_ref[i] = true;
                async move {
                    reporter.event(&Event::SchemaStarted {
                        tenant: &job.tenant,
                    });
                    let t0 = Instant::now();
                    let r = one_schema(pool, ctx, opts.mode, job).await;
                    (job, r, t0.elapsed())
                }
            })
            .buffer_unordered(opts.jobs.max(1));
        while let Some((job, result, elapsed)) = results.next().await {
            match result {
                Ok(applied) => {
                    reporter.event(&Event::SchemaSucceeded {
                        tenant: &job.tenant,
                        applied: &applied,
                        elapsed,
                    });
                    outcome.succeeded.push((job.tenant.clone(), applied));
                }
                Err(failure) => {
                    reporter.event(&Event::SchemaFailed {
                        tenant: &job.tenant,
                        failure: &failure,
                    });
                    outcome.failed.push((job.tenant.clone(), failure));
                    if opts.fail_fast {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    }
    outcome.not_started = jobs
        .iter()
        .zip(&scheduled)
        .filter(|(_, s)| !**s)
        .map(|(j, _)| j.tenant.clone())
        .collect();
    outcome.interrupted = cancel.is_cancelled() && !outcome.not_started.is_empty();
    outcome.elapsed = started.elapsed();
    outcome
}
