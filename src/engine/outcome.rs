//! The end of a run: the advice for its failures, its outcome written to the ledger (across a
//! reconnect), and read back from it, so that what a command reports is what the ledger says.

use crate::control::{
    FailureRecord, RunCommand, RunCounts, RunRow, RunState, SchemaResult, SchemaRow, SchemaState,
};
use crate::db::Session;
use crate::engine::failure::{Failure, FailureKind};
use crate::engine::fleet::FleetOutcome;
use crate::migrations::MigrationSet;
use crate::tenant::Tenant;

/// A failed migration that other tenants already have: the advice is not to edit it (see
/// [`Failure::aftermath`]). One query for the run; without it the advice is the plain one.
pub(super) async fn advise_on_failures(
    session: &Session<'_>,
    migrations: &MigrationSet,
    failed: &mut [(Tenant, Failure)],
) {
    // A statement that cannot succeed on any tenant with rows, whatever their data: read
    // once per failing statement (a file is scanned once, however many tenants failed on it).
    let mut seen: std::collections::HashMap<(i32, u32), bool> = std::collections::HashMap::new();
    for (_, f) in failed.iter_mut() {
        let file = f.migration_version.and_then(|v| migrations.get(v));
        if let (Some(file), Some(line), FailureKind::Migration) = (file, f.line, f.kind) {
            f.fails_on_rows = *seen.entry((file.version, line)).or_insert_with(|| {
                crate::migrations::risks::rules_at(file.sql(), line as usize)
                    .contains(&"add-column-not-null-without-default")
            });
        }
    }
    let mut versions: Vec<i32> = failed
        .iter()
        .filter(|(_, f)| f.kind == FailureKind::Migration)
        .filter_map(|(_, f)| f.migration_version)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    if versions.is_empty() {
        return;
    }
    let Ok(counts) = session.control.at_or_past(&session.client, &versions).await else {
        return;
    };
    for (_, f) in failed.iter_mut() {
        if let Some(v) = f.migration_version {
            f.applied_elsewhere = counts
                .iter()
                .find(|(at, _)| *at == v)
                .map(|c| u32::try_from(c.1).unwrap_or(u32::MAX));
        }
    }
}

/// The run (with its counts and waves) and its tenants as the ledger holds them; None if
/// the run is gone.
pub async fn read_report(
    session: &Session<'_>,
    run_id: i64,
    command: RunCommand,
) -> anyhow::Result<Option<(RunRow, Vec<SchemaRow>)>> {
    // One round trip: the run and its rows are asked for together.
    let (run, tenants) = futures::join!(
        session.control.run(&session.client, run_id),
        session
            .control
            .run_schemas(&session.client, (run_id, command), false)
    );
    let (run, tenants) = (run?, tenants?);
    Ok(run.map(|run| (run, tenants)))
}

/// The run's counts and tenants from what this process saw, by the ledger's rules.
pub(super) fn seen_report(
    command: RunCommand,
    outcome: &FleetOutcome,
    skipped: usize,
) -> (RunCounts, Vec<SchemaRow>) {
    let row = |t: &Tenant, result, before, version| SchemaRow {
        id: t.id().into(),
        schema: t.schema().into(),
        result,
        version_before: before,
        version,
        applied: Some(0),
        attempts: 1,
        archived_as: None,
        from_pool: None,
        rows: None,
        failure: None,
        wave: None,
        labels: crate::labels::Labels::new(),
    };
    let mut tenants: Vec<SchemaRow> = Vec::new();
    for (t, a) in &outcome.succeeded {
        let result = SchemaResult::of(command, SchemaState::Succeeded, a.count > 0);
        tenants.push(SchemaRow {
            applied: Some(a.count as i32),
            archived_as: a.archived_as.clone(),
            from_pool: (command == RunCommand::TenantCreate).then_some(a.from_pool),
            rows: a.rows.map(|n| n as i64),
            ..row(t, result, a.before, a.after)
        });
    }
    for (t, f) in &outcome.failed {
        tenants.push(SchemaRow {
            attempts: f.attempts as i32,
            failure: Some(f.row()),
            ..row(t, SchemaResult::Failed, f.still_at, f.still_at)
        });
    }
    for t in &outcome.dropped {
        tenants.push(row(t, SchemaResult::DroppedMeanwhile, None, None));
    }
    for t in &outcome.not_started {
        tenants.push(row(t, SchemaResult::NotStarted, None, None));
    }
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    let mut counts = RunCounts::tally(tenants.iter().map(|t| &t.result));
    counts.unchanged += skipped as i64;
    (counts, tenants)
}

/// Writes failures and the run's final state. If the coordinator's connection died (the
/// server restarted), reconnects once; if that fails too, says what is missing instead of
/// failing the command: every succeeded schema is already recorded in its own transaction.
pub(super) async fn record_outcome(
    session: &mut Session<'_>,
    run_id: i64,
    epoch: i64,
    outcome: &FleetOutcome,
    state: RunState,
) -> Option<String> {
    const DROPPED: &str = "dropped while the run was going on; not touched";
    let dropped = outcome.dropped.iter().map(|t| FailureRecord {
        skipped: true,
        id: t.id(),
        kind: FailureKind::Dropped.as_str(),
        sqlstate: None,
        migration: None,
        line: None,
        message: DROPPED,
        error: DROPPED.into(),
        attempts: 1,
        drift: None,
    });
    let rows: Vec<FailureRecord<'_>> = outcome
        .failed
        .iter()
        .map(|(t, f)| f.record(t.id()))
        .chain(dropped)
        .collect();
    let mut last_err = None;
    for round in 0..2 {
        if round == 1 {
            if let Err(e) = session.reconnect().await {
                last_err = Some(e);
                break;
            }
        }
        // Both writes are conditional on the epoch: a run taken over meanwhile is left to
        // its new owner.
        let write = async {
            session
                .control
                .record_failures(&session.client, run_id, epoch, &rows)
                .await?;
            session
                .control
                .finish_run(&session.client, run_id, epoch, state, outcome.halted())
                .await
        };
        match write.await {
            Ok(true) => return None,
            Ok(false) => {
                return Some(format!(
                    "run {run_id} was taken over by another tenantctl before this one could close it; the schemas this process committed are recorded, the rest is the other run's"
                ))
            }
            Err(e) => last_err = Some(e),
        }
    }
    last_err.map(|e| {
        format!(
            "could not record the end of run {run_id} in the ledger ({e:#}); succeeded schemas are recorded, and the next run will see this one as interrupted"
        )
    })
}
