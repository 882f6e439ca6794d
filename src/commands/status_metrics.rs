//! `status --metrics`: every cluster's state read at once (the registry summarised by the
//! server, the pool, the ledger's last successful runs) and printed, or written atomically
//! to `--metrics-file`, as Prometheus metrics.

use std::path::Path;

use super::{load_migrations, Ctx};
use crate::config::Target;
use crate::report::fleet_metrics::{self, ClusterState};

/// Prints (or writes) the fleet's metrics; exit 4 when a cluster could not be read (its
/// `tenantctl_cluster_up` is 0 and its other series are left out).
pub async fn metrics(ctx: &Ctx, file: Option<&Path>) -> anyhow::Result<i32> {
    let latest = load_migrations(&ctx.config)?.latest();
    let states = futures::future::join_all(ctx.targets.iter().map(|t| async move {
        match read(ctx, t, latest).await {
            Ok(state) => state,
            Err(e) => {
                crate::output::stderr_line(&format!(
                    "warning: cluster {}: {e:#}; reported as tenantctl_cluster_up 0",
                    t.name
                ));
                ClusterState::empty(&t.name, false)
            }
        }
    }))
    .await;
    let text = fleet_metrics::text(latest, &states);
    match file {
        Some(path) => crate::report::metrics::write_atomically(path, &text)?,
        None => crate::output::stdout(&text),
    }
    Ok(match states.iter().all(|s| s.up) {
        true => crate::exit::SUCCESS,
        false => crate::exit::UNREACHABLE,
    })
}

async fn read(ctx: &Ctx, target: &Target, latest: Option<i32>) -> anyhow::Result<ClusterState> {
    let session = ctx.session(target, false).await?;
    let (control, client) = (&session.control, &session.client);
    let mut state = ClusterState::empty(&target.name, true);
    if !control.exists(client).await? {
        return Ok(state);
    }
    let (summary, pool, last) = futures::try_join!(
        control.summary(client, latest, 0),
        control.pool(client),
        control.last_successes(client)
    )?;
    state.pending = summary.total() - summary.at(latest);
    state.drifted = summary.drifted_count();
    state.by_version = summary.by_version;
    state.pool = pool.len();
    state.pool_ready = pool.iter().filter(|(_, v)| *v == latest).count();
    state.last_success = last;
    Ok(state)
}
