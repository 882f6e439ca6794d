//! `query` and `exec --dry-run` on one cluster: the fleet runner over a pool, with no run in
//! the ledger (they change nothing, so a read-only standby serves a query). The same events
//! as a run: its start (run id 0: none recorded), each tenant, its end.

use crate::db::Session;
use crate::engine::apply::{ApplyCtx, Mode};
use crate::engine::events::Event;
use crate::engine::fleet::{run_fleet, Cancel, FleetOpts, FleetOutcome, SchemaJob};
use crate::engine::run::{Planned, RunEnv};
use crate::engine::schema_tx::TxSettings;

use super::FleetSql;

/// Runs `mode` (Query, or a dry-run Exec) over `tenants` on `session`'s cluster.
pub async fn run(
    session: &Session<'_>,
    env: &RunEnv<'_>,
    mode: Mode,
    sql: &FleetSql,
    tenants: Vec<Planned>,
    fail_fast: bool,
) -> anyhow::Result<FleetOutcome> {
    let total = tenants.len();
    let jobs: Vec<SchemaJob> = tenants
        .into_iter()
        .filter(|p| p.todo)
        .map(|p| SchemaJob {
            tenant: p.tenant,
            version: p.version,
        })
        .collect();
    let free = match jobs.len() > 1 {
        true => session.free_slots().await?,
        false => 1,
    };
    let workers = crate::engine::run::workers_allowed(session, env, jobs.len(), free)?;
    let pool = session.pool(workers)?;
    let cancel = Cancel::new(session.tls().clone());
    let signal_guard = crate::engine::run::tie_to_signals(env, &cancel);
    env.events.emit(&Event::RunStarted {
        command: mode.command(),
        run_id: 0,
        total,
        todo: jobs.len(),
        refused: 0,
        jobs: workers,
        target: None,
        scope: "",
    });
    let run = &env.config.run;
    let labels = std::collections::HashMap::new();
    let ctx = ApplyCtx {
        migrations: &crate::migrations::MigrationSet::empty(&env.config.migrations.dir),
        control: &session.control,
        run_id: 0,
        epoch: 0,
        target: None,
        tx: TxSettings {
            lock_timeout: run.lock_timeout,
            statement_timeout: run.statement_timeout,
            step_statement_timeout: run.step_statement_timeout,
            also_on_path: env.config.migrations.extensions_schema.as_deref(),
            run_id: None,
            check_client: session.server_major >= 14,
        },
        role_template: None,
        tiers: &crate::config::Tiers::NONE,
        events: &env.events,
        labels: &labels,
        seed: None,
        load: None,
        sql: Some(sql),
        cancel: Some(&cancel),
    };
    let opts = FleetOpts {
        mode,
        jobs: workers,
        fail_fast,
        retries: run.retries,
        retry_delay: run.retry_delay,
        recycle_after: run.worker_recycle,
        slow_after: run.slow_after,
    };
    let mut outcome = run_fleet(&pool, &ctx, jobs, &opts, &env.events, &cancel).await;
    drop(signal_guard);
    pool.close();
    outcome.failed.sort_by(|a, b| a.0.id().cmp(b.0.id()));
    env.events.emit(&Event::RunFinished);
    Ok(outcome)
}
