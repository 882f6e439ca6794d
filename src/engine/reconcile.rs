//! After the coordinator reconnected (a failover, a restarted server): what this process saw
//! is not the truth any more, the ledger on the server it now talks to is. A schema whose
//! COMMIT the old primary acknowledged may be missing on the new one (asynchronous
//! replication loses the last commits), and a schema whose COMMIT got no answer may have
//! committed after all. So the run reads its ledger rows back there, reports what is true,
//! and does again, exactly once, every schema whose row is not finished there: the same
//! command converges in one go, and never ends green with tenants behind.

use std::collections::HashMap;

use crate::control::{SchemaResult, SchemaRow};
use crate::db::Session;
use crate::engine::apply::{Applied, ApplyCtx};
use crate::engine::events::{Event, Events};
use crate::engine::failure::FailureKind;
use crate::engine::fleet::{run_fleet, Cancel, FleetOpts, FleetOutcome, SchemaJob, Stop};
use crate::tenant::Tenant;

/// How many times the run goes back over its ledger (each pass may meet another failover).
const PASSES: usize = 3;

/// Brings `outcome` in line with the ledger on the server `session` now talks to, re-running
/// the schemas that are not finished there (not after a user's stop). Returns a note for the
/// report when the ledger could not be read.
pub async fn after_reconnect(
    session: &Session<'_>,
    command: crate::control::RunCommand,
    (pool, ctx, opts): (&deadpool_postgres::Pool, &ApplyCtx<'_>, &FleetOpts),
    events: &Events,
    cancel: &Cancel,
    outcome: &mut FleetOutcome,
) -> Option<String> {
    for _ in 0..PASSES {
        if cancel.is_cancelled() || outcome.fenced().is_some() {
            return None;
        }
        let rows = match session
            .control
            .run_schemas(&session.client, (ctx.run_id, command), false)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                return Some(format!(
                    "after reconnecting, run {}'s ledger could not be read back ({e:#}); the counts are what this process saw",
                    ctx.run_id
                ))
            }
        };
        let ledger: HashMap<&str, &SchemaRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
        let unfinished = |t: &Tenant| {
            ledger
                .get(t.id())
                .is_some_and(|r| r.result == SchemaResult::NotStarted)
        };
        let finished = |t: &Tenant| {
            ledger
                .get(t.id())
                .filter(|r| matches!(r.result, SchemaResult::Done | SchemaResult::Unchanged))
                .map(|r| Applied {
                    before: r.version_before,
                    after: r.version,
                    count: r.applied.unwrap_or(0).max(0) as usize,
                    archived_as: r.archived_as.clone(),
                    from_pool: r.from_pool.unwrap_or(false),
                    rows: r.rows.map(|n| n.max(0) as u64),
                })
        };
        let mut again: Vec<Tenant> = Vec::new();
        // Committed here as this process saw it, but not on this server: lost in the failover.
        let (lost, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut outcome.succeeded)
            .into_iter()
            .partition(|(t, _)| unfinished(t));
        outcome.succeeded = kept;
        let lost_n = lost.len();
        again.extend(lost.into_iter().map(|(t, _)| t));
        // Broken during the transaction or its COMMIT: the outcome is read back, not assumed.
        let mut still_failed = Vec::new();
        let mut found_committed = 0;
        for (t, f) in std::mem::take(&mut outcome.failed) {
            if f.kind != FailureKind::Connection && !f.broken_connection {
                still_failed.push((t, f));
            } else if let Some(applied) = finished(&t) {
                // Its failure was reported as it happened; the warning below says it did
                // commit (a second event would count it twice in the progress).
                found_committed += 1;
                outcome.succeeded.push((t, applied));
            } else if unfinished(&t) {
                again.push(t);
            } else {
                still_failed.push((t, f));
            }
        }
        outcome.failed = still_failed;
        // Not started because the database went away (not because the user stopped it).
        if matches!(outcome.stopped, Some(Stop::DatabaseDown(_)) | None) && !outcome.interrupted {
            again.append(&mut outcome.not_started);
            if matches!(outcome.stopped, Some(Stop::DatabaseDown(_))) {
                outcome.stopped = None;
            }
        }
        if lost_n + found_committed > 0 {
            events.emit(&Event::Warning {
                message: &format!(
                    "after reconnecting, run {}'s ledger on this server says otherwise than this process saw: {lost_n} schema(s) it committed are not there (lost in a failover) and are done again; {found_committed} whose COMMIT got no answer did commit",
                    ctx.run_id
                ),
            });
        }
        if again.is_empty() {
            return None;
        }
        // Each from where the registry on this server says it is.
        let ids: Vec<String> = again.iter().map(|t| t.id().to_string()).collect();
        let versions: HashMap<String, Option<i32>> = match session
            .control
            .tenants(&session.client, Some(&ids))
            .await
        {
            Ok(rows) => rows
                .into_iter()
                .map(|r| (r.tenant.id().to_string(), r.version))
                .collect(),
            Err(e) => {
                outcome.not_started.extend(again);
                return Some(format!(
                    "after reconnecting, the registry could not be read ({e:#}); the schemas left are not started"
                ));
            }
        };
        let jobs: Vec<SchemaJob> = again
            .into_iter()
            .map(|t| SchemaJob {
                version: versions.get(t.id()).copied().flatten(),
                tenant: t,
            })
            .collect();
        events.emit(&Event::Info {
            message: &format!(
                "run {}: {} schema(s) not finished on this server; doing them now",
                ctx.run_id,
                jobs.len()
            ),
        });
        let more = run_fleet(pool, ctx, jobs, opts, events, cancel).await;
        outcome.succeeded.extend(more.succeeded);
        outcome.failed.extend(more.failed);
        outcome.dropped.extend(more.dropped);
        outcome.not_started.extend(more.not_started);
        outcome.stopped = more.stopped;
        outcome.interrupted |= more.interrupted;
    }
    None
}
