//! Many schemas at once: a stream of schema jobs driven through `buffer_unordered(jobs)` over a
//! pool of `jobs` connections, so concurrency is bounded by construction and no task is
//! spawned per tenant. A failed schema never stops the others unless `fail_fast`; an
//! interrupt stops scheduling (and ends retry pauses at once) and lets in-flight transactions
//! finish; a run that lost its locks stops scheduling and commits nothing more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool, PoolError};
use futures::{stream, StreamExt};
use tokio::sync::Notify;
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

/// Shared between the signal handler, the heartbeat and the fleet: `cancel` (a signal) and
/// `fence` (the run lost its locks) stop scheduling new schemas and end retry pauses;
/// `abort` (after the grace period) cancels the statements of in-flight schemas, which then
/// roll back. Cancel requests go over the workers' TLS settings.
#[derive(Clone)]
pub struct Cancel(Arc<CancelState>);

struct CancelState {
    cancelled: AtomicBool,
    aborted: AtomicBool,
    fenced: Mutex<Option<String>>,
    wake: Notify,
    in_flight: Mutex<HashMap<usize, CancelToken>>,
    tls: Tls,
}

impl Cancel {
    pub fn new(tls: Tls) -> Cancel {
        Cancel(Arc::new(CancelState {
            cancelled: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            fenced: Mutex::new(None),
            wake: Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
            tls,
        }))
    }

    /// A signal: start nothing new.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.wake.notify_waiters();
    }

    /// The run is not this process's any more: start nothing new, commit nothing more.
    pub fn fence(&self, why: String) {
        self.0
            .fenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.0.wake.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Why the run was fenced, if it was.
    pub fn fenced(&self) -> Option<String> {
        self.0
            .fenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether nothing new may start (a signal, or fencing).
    pub fn stopping(&self) -> bool {
        self.is_cancelled() || self.fenced().is_some()
    }

    /// Sleeps for `pause`, or less when the run starts stopping. True: it is stopping.
    pub(crate) async fn pause(&self, pause: Duration) -> bool {
        let woken = self.0.wake.notified();
        if self.stopping() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = woken => {}
        }
        self.stopping()
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

/// Why a run stopped scheduling before every schema was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// `--fail-fast` and a schema failed.
    FailFast,
    /// SIGINT/SIGTERM.
    Interrupted,
    /// A schema still could not reach the database after its retries: the run stopped
    /// rather than fail every remaining tenant one slow attempt at a time.
    DatabaseDown(String),
    /// The run lost its locks and another runner took it over (or could: fencing).
    Fenced(String),
    /// A staged rollout's wave failed more than allowed, or the between-waves command said no.
    Halted { wave: usize, reason: String },
}

impl Stop {
    /// Its name in `--json` (`stopped.reason`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Stop::FailFast => "fail_fast",
            Stop::Interrupted => "interrupted",
            Stop::DatabaseDown(_) => "database_down",
            Stop::Fenced(_) => "fenced",
            Stop::Halted { .. } => "halted",
        }
    }

    /// Why, in words: what the `not started` count is put down to.
    pub fn why(&self) -> &'static str {
        match self {
            Stop::FailFast => "--fail-fast",
            Stop::Interrupted => "interrupted",
            Stop::DatabaseDown(_) => "the database could not be reached",
            Stop::Fenced(_) => "this process lost the run",
            Stop::Halted { .. } => "the rollout halted",
        }
    }
}

/// How a fleet run went.
#[derive(Debug, Default)]
pub struct FleetOutcome {
    pub succeeded: Vec<(Tenant, Applied)>,
    pub failed: Vec<(Tenant, Failure)>,
    /// Dropped (by `tenant drop`) while the run was going on: not touched, not failed.
    pub dropped: Vec<Tenant>,
    /// Never started: see `stopped` for why.
    pub not_started: Vec<Tenant>,
    /// Why scheduling stopped early, if it did.
    pub stopped: Option<Stop>,
    pub interrupted: bool,
    pub elapsed: Duration,
}

impl FleetOutcome {
    /// The state a run with this outcome ends in.
    pub fn state(&self) -> RunState {
        if self.interrupted {
            RunState::Interrupted
        } else if self.database_down().is_some() && !self.not_started.is_empty() {
            // The database went away with tenants left: the same command resumes the run.
            RunState::Interrupted
        } else if self.halted().is_some() {
            RunState::Halted
        } else if self.failed.is_empty() && self.not_started.is_empty() {
            RunState::Succeeded
        } else {
            RunState::Failed
        }
    }

    /// The database went away for good during the run.
    pub fn database_down(&self) -> Option<&str> {
        match &self.stopped {
            Some(Stop::DatabaseDown(why)) => Some(why),
            _ => None,
        }
    }

    /// The rollout halted after a wave: (wave, why).
    pub fn halted(&self) -> Option<(usize, &str)> {
        match &self.stopped {
            Some(Stop::Halted { wave, reason }) => Some((*wave, reason)),
            _ => None,
        }
    }

    /// Adds a wave's outcome to the run's.
    pub fn absorb(&mut self, wave: FleetOutcome) {
        self.succeeded.extend(wave.succeeded);
        self.failed.extend(wave.failed);
        self.dropped.extend(wave.dropped);
        self.not_started.extend(wave.not_started);
        if self.stopped.is_none() {
            self.stopped = wave.stopped;
        }
        self.interrupted |= wave.interrupted;
    }

    /// The run lost its locks during the run.
    pub fn fenced(&self) -> Option<&str> {
        match &self.stopped {
            Some(Stop::Fenced(why)) => Some(why),
            _ => None,
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
    /// Schemas a worker connection serves before it is closed and replaced (0: never).
    pub recycle_after: usize,
    /// A schema still running after this long is reported once (`Event::Slow`).
    pub slow_after: Option<Duration>,
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

/// One attempt: a connection from the pool, one transaction. After a lock timeout, the
/// sessions holding locks in the schema are named (a tenantctl backend left over from an
/// earlier run is said to be one).
async fn attempt(
    pool: &Pool,
    ctx: &ApplyCtx<'_>,
    opts: &FleetOpts,
    job: &SchemaJob,
    slot: usize,
    cancel: &Cancel,
) -> Result<Applied, Failure> {
    let mode = opts.mode;
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
        if f.kind == FailureKind::LockTimeout && !f.broken_connection {
            if let Some(holders) = lock_holders(&conn, &job.tenant).await {
                f.message = format!("{}; {holders}", f.message);
            }
        }
        if f.broken_connection {
            // Never hand a connection in an unknown state to the next schema.
            drop(Object::take(conn));
            return result;
        }
    }
    // A backend keeps the catalog entries of every relation it touched (each schema's
    // tables, indexes, views): retired after `recycle_after` schemas, a worker's backend
    // stays small however large the fleet (the next checkout connects afresh).
    if opts.recycle_after > 0 && Object::metrics(&conn).recycle_count + 1 >= opts.recycle_after {
        drop(Object::take(conn));
    }
    result
}

/// Who holds locks in the tenant's schema (its advisory lock, or its tables), for the
/// message of a lock timeout.
async fn lock_holders(conn: &tokio_postgres::Client, tenant: &Tenant) -> Option<String> {
    use tokio_postgres::types::Type;
    let sql = format!(
        "SELECT DISTINCT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''), \
                coalesce(extract(epoch FROM now() - a.xact_start)::int8, 0) \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.granted AND a.pid <> pg_backend_pid() AND ( \
           (l.locktype = 'advisory' AND l.classid = {ns}::oid AND l.objid = hashtext($1)::oid AND l.objsubid = 2) \
           OR l.relation IN (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1)) \
         ORDER BY 1 LIMIT 5",
        ns = crate::control::LOCK_NAMESPACE
    );
    let rows = conn
        .query_typed(&sql, &[(&tenant.schema(), Type::TEXT)])
        .await
        .ok()?;
    if rows.is_empty() {
        return None;
    }
    let who: Vec<String> = rows
        .iter()
        .map(|r| {
            let (pid, app, state, secs): (i32, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            match app.strip_prefix("tenantctl run ") {
                Some(run) => format!(
                    "pid {pid} (left over from tenantctl run {run}: it ends by itself within seconds, or run SELECT pg_terminate_backend({pid}))"
                ),
                None => format!(
                    "pid {pid} ({}, {state} for {secs} s)",
                    if app.is_empty() { "no application name".to_string() } else { format!("application {app:?}") }
                ),
            }
        })
        .collect();
    Some(format!("held by {}", who.join(", ")))
}

/// A schema with retries: lock timeouts and lost connections are tried again after a
/// growing pause (the connection goes back to the pool meanwhile), everything else fails
/// at once. Safe to repeat: each attempt re-reads the schema's history under its lock. Once
/// the run is stopping, no new attempt starts and a pause ends at once.
async fn one_schema(
    pool: &Pool,
    ctx: &ApplyCtx<'_>,
    opts: &FleetOpts,
    job: &SchemaJob,
    slot: usize,
    cancel: &Cancel,
) -> (Result<Applied, Failure>, u32) {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt(pool, ctx, opts, job, slot, cancel).await {
            Ok(applied) => return (Ok(applied), tries),
            Err(mut f) => {
                let retry = f.kind.is_transient() && tries <= opts.retries;
                let pause = backoff(opts.retry_delay, tries);
                if retry {
                    ctx.events.emit(&Event::Retrying {
                        tenant: &job.tenant,
                        failure: &f,
                        attempt: tries,
                        pause,
                    });
                }
                if retry && !cancel.pause(pause).await {
                    continue;
                }
                if retry {
                    // Stopped while waiting to try again: not another attempt.
                    f.kind = match cancel.fenced() {
                        Some(_) => FailureKind::Fenced,
                        None => FailureKind::Interrupted,
                    };
                }
                f.attempts = tries;
                return (Err(f), tries);
            }
        }
    }
}

/// [`one_schema`], reported once as slow (with what it waits for) if it runs past
/// `opts.slow_after`.
async fn watched(
    pool: &Pool,
    ctx: &ApplyCtx<'_>,
    opts: &FleetOpts,
    job: &SchemaJob,
    slot: usize,
    cancel: &Cancel,
) -> (Result<Applied, Failure>, u32) {
    let work = one_schema(pool, ctx, opts, job, slot, cancel);
    let Some(after) = opts.slow_after else {
        return work.await;
    };
    let watch = async {
        tokio::time::sleep(after).await;
        let waiting = super::slow::diagnose(pool, &job.tenant, ctx.run_id).await;
        ctx.events.emit(&Event::Slow {
            tenant: &job.tenant,
            from: job.version,
            to: ctx.target,
            elapsed: after,
            waiting: waiting.as_deref(),
        });
        futures::future::pending::<()>().await
    };
    tokio::select! {
        r = work => r,
        _ = watch => unreachable!("the watch never ends"),
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
    let stop: Mutex<Option<Stop>> = Mutex::new(None);
    let stopped = || stop.lock().unwrap_or_else(|e| e.into_inner()).is_some();
    let halt = |why: Stop| {
        stop.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
    };
    let mut outcome = FleetOutcome::default();
    let mut scheduled = vec![false; jobs.len()];
    {
        let scheduled_ref = &mut scheduled;
        let mut results = stream::iter(jobs.iter().enumerate())
            .take_while(|_| futures::future::ready(!stopped() && !cancel.stopping()))
            .map(|(i, job)| {
                scheduled_ref[i] = true;
                async move {
                    let t0 = Instant::now();
                    events.emit(&Event::SchemaStarted {
                        tenant: &job.tenant,
                    });
                    let (r, attempts) = watched(pool, ctx, opts, job, i, cancel).await;
                    (job, r, attempts, t0.elapsed())
                }
            })
            .buffer_unordered(opts.jobs.max(1));
        while let Some((job, result, attempts, elapsed)) = results.next().await {
            match result {
                Ok(applied) => {
                    events.emit(&Event::SchemaSucceeded {
                        tenant: &job.tenant,
                        applied: &applied,
                        elapsed,
                        attempts,
                    });
                    outcome.succeeded.push((job.tenant.clone(), applied));
                }
                Err(failure) if failure.kind == FailureKind::Dropped => {
                    events.emit(&Event::SchemaDropped {
                        tenant: &job.tenant,
                    });
                    outcome.dropped.push(job.tenant.clone());
                }
                Err(failure) => {
                    events.emit(&Event::SchemaFailed {
                        tenant: &job.tenant,
                        failure: &failure,
                        elapsed,
                    });
                    match failure.kind {
                        FailureKind::Fenced => {
                            cancel.fence(failure.message.clone());
                        }
                        FailureKind::Connection => {
                            // Retries are spent: the database is not coming back soon.
                            halt(Stop::DatabaseDown(failure.message.clone()));
                        }
                        _ if opts.fail_fast => halt(Stop::FailFast),
                        _ => {}
                    }
                    outcome.failed.push((job.tenant.clone(), failure));
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
    outcome.stopped = match (cancel.fenced(), cancel.is_cancelled()) {
        (Some(why), _) => Some(Stop::Fenced(why)),
        (None, true) => Some(Stop::Interrupted),
        (None, false) => stop.into_inner().unwrap_or_else(|e| e.into_inner()),
    };
    outcome.interrupted = cancel.is_cancelled()
        && (!outcome.not_started.is_empty()
            || outcome
                .failed
                .iter()
                .any(|(_, f)| f.kind == FailureKind::Interrupted));
    outcome.elapsed = started.elapsed();
    outcome
}
