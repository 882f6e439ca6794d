//! Many schemas at once: a stream of schema jobs driven through `buffer_unordered(jobs)` over a
//! pool of `jobs` connections, so concurrency is bounded by construction and no task is
//! spawned per tenant. A failed schema never stops the others unless `fail_fast`; an
//! interrupt stops scheduling and lets in-flight transactions finish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool, PoolError};
use futures::{stream, StreamExt};
use tokio_postgres::CancelToken;

use crate::control::RunState;
use crate::db::tls::Tls;
use crate::engine::apply::{apply_schema, Applied, ApplyCtx, Mode};
use crate::engine::events::{Event, Events};
use crate::engine::failure::{Failure, FailureKind};
use crate::pgerror::describe;
use crate::tenant::Tenant;

/// One schema to work on, with the version the registry has for it.
#[derive(Debug, Clone)]
pub struct SchemaJob {
    pub tenant: Tenant,
    pub version: Option<i32>,
}

/// Shared between the signal handler and the fleet: `cancel` stops scheduling new schemas;
/// `abort` (after the grace period) cancels the statements of in-flight schemas, which then
/// roll back. Cancel requests go over the workers' TLS settings.
#[derive(Clone)]
pub struct Cancel(Arc<CancelState>);

struct CancelState {
    cancelled: AtomicBool,
    aborted: AtomicBool,
    in_flight: Mutex<HashMap<usize, CancelToken>>,
    tls: Tls,
}

impl Cancel {
    pub fn new(tls: Tls) -> Cancel {
        Cancel(Arc::new(CancelState {
            cancelled: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            tls,
        }))
    }

    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    pub fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::SeqCst)
    }

    /// Cancels the running statement of every in-flight schema; returns how many.
    pub async fn abort_in_flight(&self) -> usize {
        self.0.aborted.store(true, Ordering::SeqCst);
        let tokens: Vec<CancelToken> = self.lock().values().cloned().collect();
        for t in &tokens {
            let _ = t.cancel_query(self.0.tls.clone()).await;
        }
        tokens.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, CancelToken>> {
        self.0.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn track(&self, slot: usize, token: CancelToken) {
        self.lock().insert(slot, token);
    }

    fn untrack(&self, slot: usize) {
        self.lock().remove(&slot);
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
    /// Set when a schema still could not reach the database after its retries: the run
    /// stopped scheduling rather than fail every remaining tenant slowly.
    pub database_down: Option<String>,
    pub elapsed: Duration,
}

impl FleetOutcome {
    /// The state a run with this outcome ends in.
    pub fn state(&self) -> RunState {
        if self.interrupted {
            RunState::Interrupted
        } else if self.failed.is_empty() && self.not_started.is_empty() {
            RunState::Succeeded
        } else {
            RunState::Failed
        }
    }
}

pub struct FleetOpts {
    pub mode: Mode,
    pub jobs: usize,
    pub fail_fast: bool,
    /// Extra attempts for transient failures (lock timeout, lost connection).
    pub retries: u32,
    /// First pause before a retry; doubles each time, at most 30 s.
    pub retry_delay: Duration,
}

/// The pause before attempt `attempt + 1`.
fn backoff(first: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(10))
        .min(Duration::from_secs(30))
}

/// Gets a worker connection, with a failure that names the cause.
async fn checkout(pool: &Pool, still_at: Option<i32>) -> Result<Object, Failure> {
    pool.get().await.map_err(|e| {
        let message = match &e {
            PoolError::Backend(pg) => describe(pg),
            other => crate::redact::scrub(&other.to_string()),
        };
        let mut f = Failure::new(
            FailureKind::Connection,
            format!("could not get a database connection: {message}"),
            still_at,
        );
        f.broken_connection = true;
        f
    })
}

/// One attempt: a connection from the pool, one transaction.
async fn attempt(
    pool: &Pool,
    ctx: &ApplyCtx<'_>,
    mode: Mode,
    job: &SchemaJob,
    slot: usize,
    cancel: &Cancel,
) -> Result<Applied, Failure> {
    let conn = checkout(pool, job.version).await?;
    cancel.track(slot, conn.cancel_token());
    let mut result = apply_schema(&conn, ctx, &job.tenant, mode, job.version).await;
    cancel.untrack(slot);
    if let Err(f) = &mut result {
        if cancel.is_aborted()
            && matches!(f.kind, FailureKind::StatementTimeout | FailureKind::Other)
        {
            f.kind = FailureKind::Interrupted;
        }
        if f.broken_connection {
            // Never hand a connection in an unknown state to the next schema.
            drop(Object::take(conn));
        }
    }
    result
}

/// A schema with retries: lock timeouts and lost connections are tried again after a
/// growing pause (the connection goes back to the pool meanwhile), everything else fails
/// at once. Safe to repeat: each attempt re-reads the schema's history under its lock.
async fn one_schema(
    pool: &Pool,
    ctx: &ApplyCtx<'_>,
    opts: &FleetOpts,
    job: &SchemaJob,
    slot: usize,
    cancel: &Cancel,
) -> Result<Applied, Failure> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt(pool, ctx, opts.mode, job, slot, cancel).await {
            Ok(applied) => return Ok(applied),
            Err(mut f) => {
                if f.kind.is_transient() && tries <= opts.retries && !cancel.is_cancelled() {
                    tokio::time::sleep(backoff(opts.retry_delay, tries)).await;
                    continue;
                }
                f.attempts = tries;
                return Err(f);
            }
        }
    }
}

/// Runs `jobs` through the pool, at most `opts.jobs` at once, reporting as it goes.
pub async fn run_fleet(
    pool: &Pool,
    ctx: &ApplyCtx<'_>,
    jobs: Vec<SchemaJob>,
    opts: &FleetOpts,
    events: &Events,
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
                    let t0 = Instant::now();
                    let r = one_schema(pool, ctx, opts, job, i, cancel).await;
                    (job, r, t0.elapsed())
                }
            })
            .buffer_unordered(opts.jobs.max(1));
        while let Some((job, result, elapsed)) = results.next().await {
            match result {
                Ok(applied) => {
                    events.emit(&Event::SchemaSucceeded {
                        tenant: &job.tenant,
                        applied: &applied,
                        elapsed,
                    });
                    outcome.succeeded.push((job.tenant.clone(), applied));
                }
                Err(failure) => {
                    events.emit(&Event::SchemaFailed {
                        tenant: &job.tenant,
                        failure: &failure,
                    });
                    if failure.kind == FailureKind::Connection && outcome.database_down.is_none() {
                        // Retries are spent: the database is not coming back soon. Stop
                        // rather than fail every remaining tenant one slow attempt at a time.
                        outcome.database_down = Some(failure.message.clone());
                        stop.store(true, Ordering::SeqCst);
                    }
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
    outcome.interrupted = cancel.is_cancelled()
        && (!outcome.not_started.is_empty()
            || outcome
                .failed
                .iter()
                .any(|(_, f)| f.kind == FailureKind::Interrupted));
    outcome.elapsed = started.elapsed();
    outcome
}
