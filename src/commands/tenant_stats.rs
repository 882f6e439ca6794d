//! `tenant stats` (each tenant's size and activity, per cluster the sums) and `rebalance`
//! (the moves that even out the clusters' sizes, planned from the same numbers, and run
//! one `tenant move` at a time).

use serde_json::json;

use crate::cli::{DataOpts, MoveArgs, RebalanceArgs, StatsArgs, StatsSort};
use crate::config::Target;
use crate::control::TenantStats;
use crate::engine::mover::plan::{self, Sized};
use crate::exit::UsageError;
use crate::report::json::Part;

use super::clusters::{finish, single_error, Done};
use super::{selector, Ctx};

/// Every selected cluster's tenants and their stats (those the selector matches), read at
/// once; fails when a cluster cannot be read.
async fn read_all<'a>(
    ctx: &'a Ctx,
    select: Option<&str>,
    exact: bool,
) -> anyhow::Result<Vec<(&'a Target, Vec<TenantStats>)>> {
    let selector = selector(select)?;
    let selector = &selector;
    let mut read = futures::future::join_all(ctx.targets.iter().map(|t| async move {
        let session = ctx.session(t, false).await?;
        let mut rows = match session.control.exists(&session.client).await? {
            true => session.control.tenant_stats(&session.client, exact).await?,
            false => Vec::new(),
        };
        if let Some(s) = selector {
            rows.retain(|r| s.matches(&r.labels));
        }
        anyhow::Ok((t, rows))
    }))
    .await;
    single_error(ctx, &mut read)?;
    read.into_iter().collect()
}

fn mb(bytes: i64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

pub async fn stats(ctx: &Ctx, args: StatsArgs) -> anyhow::Result<i32> {
    let clusters = read_all(ctx, args.select.as_deref(), args.exact).await?;
    let mut results = Vec::new();
    for (target, mut rows) in clusters {
        rows.sort_by(|a, b| {
            let key = |r: &TenantStats| match args.sort {
                StatsSort::Size => r.total_bytes,
                StatsSort::Rows => r.rows,
                StatsSort::Writes => r.writes,
            };
            key(b).cmp(&key(a)).then(a.id.cmp(&b.id))
        });
        let sum = |f: fn(&TenantStats) -> i64| rows.iter().map(f).sum::<i64>();
        let (total, tables, indexes, toast) = (
            sum(|r| r.total_bytes),
            sum(|r| r.table_bytes),
            sum(|r| r.index_bytes),
            sum(|r| r.toast_bytes),
        );
        let (row_sum, writes, scans) = (sum(|r| r.rows), sum(|r| r.writes), sum(|r| r.scans));
        let width = rows.iter().map(|r| r.id.len()).max().unwrap_or(6).max(6);
        let mut text = format!(
            "{:<width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}  {:>12}  {:>12}\n",
            "TENANT", "TOTAL", "TABLES", "INDEXES", "TOAST", "ROWS", "WRITES", "SCANS"
        );
        for r in &rows {
            text.push_str(&format!(
                "{:<width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}  {:>12}  {:>12}\n",
                r.id,
                mb(r.total_bytes),
                mb(r.table_bytes),
                mb(r.index_bytes),
                mb(r.toast_bytes),
                r.rows,
                r.writes,
                r.scans
            ));
        }
        text.push_str(&format!(
            "{} tenant(s): {} ({} tables, {} indexes, {} TOAST), {row_sum} row(s), {writes} write(s), {scans} scan(s)\n",
            rows.len(),
            mb(total),
            mb(tables),
            mb(indexes),
            mb(toast)
        ));
        let part = Part::default()
            .top("command", json!("tenant stats"))
            .top("sort", json!(format!("{:?}", args.sort).to_lowercase()))
            .top("exact", json!(args.exact))
            .list(
                "tenants",
                rows.iter()
                    .map(|r| serde_json::to_value(r).expect("plain data"))
                    .collect(),
            )
            .cluster("tenants", json!(rows.len()))
            .cluster("total_bytes", json!(total))
            .cluster("table_bytes", json!(tables))
            .cluster("index_bytes", json!(indexes))
            .cluster("toast_bytes", json!(toast))
            .cluster("rows", json!(row_sum))
            .cluster("writes", json!(writes))
            .cluster("scans", json!(scans));
        results.push((
            target.clone(),
            Ok(Done::new(crate::exit::SUCCESS, text, part)),
        ));
    }
    finish(ctx, results, args.json).await
}

pub async fn rebalance(ctx: &Ctx, args: RebalanceArgs) -> anyhow::Result<i32> {
    if !(0.0..=1000.0).contains(&args.max_skew) {
        return Err(UsageError(format!(
            "--max-skew {}: a percentage from 0 to 1000",
            args.max_skew
        ))
        .into());
    }
    if args.apply && args.opts.json {
        return Err(UsageError(
            "--apply prints each move's report as it goes, which --json would mix into its document: see the plan with --plan --json, then --apply without --json".into(),
        )
        .into());
    }
    if ctx.targets.len() < 2 {
        return Err(UsageError(
            "rebalance needs at least two clusters ([clusters.<name>] in tenants.toml, or --cluster given twice)".into(),
        )
        .into());
    }
    let clusters = read_all(ctx, None, false).await?;
    let sized: Vec<(String, Vec<Sized>)> = clusters
        .iter()
        .map(|(t, rows)| {
            let tenants = rows
                .iter()
                .map(|r| Sized {
                    id: r.id.clone(),
                    bytes: r.total_bytes,
                    pinned: r.labels.contains_key("pin"),
                })
                .collect();
            (t.name.clone(), tenants)
        })
        .collect();
    let planned = plan::plan(&sized, args.max_skew);
    let mut text = String::new();
    for (name, before, after) in &planned.clusters {
        text.push_str(&format!("{name}: {} -> {}\n", mb(*before), mb(*after)));
    }
    for m in &planned.moves {
        text.push_str(&format!(
            "move {} ({}) from {} to {}\n",
            m.tenant,
            mb(m.bytes),
            m.from,
            m.to
        ));
    }
    text.push_str(&match (planned.moves.len(), planned.balanced) {
        (0, true) => format!(
            "every cluster is within {}% of the mean ({}): nothing to move\n",
            args.max_skew,
            mb(planned.mean_bytes)
        ),
        (n, true) => format!(
            "{n} move(s) bring every cluster within {}% of the mean ({})\n",
            args.max_skew,
            mb(planned.mean_bytes)
        ),
        (n, false) => format!(
            "{n} move(s); the clusters stay beyond {}% of the mean ({}): what is left is pinned, or too large to move without overshooting\n",
            args.max_skew,
            mb(planned.mean_bytes)
        ),
    });
    let part = |applied: bool| {
        Part::default()
            .top("command", json!("rebalance"))
            .top("applied", json!(applied))
            .top("max_skew", json!(args.max_skew))
            .top("mean_bytes", json!(planned.mean_bytes))
            .top("balanced", json!(planned.balanced))
            .top(
                "sizes",
                json!(planned
                    .clusters
                    .iter()
                    .map(|(c, b, a)| json!({"cluster": c, "before_bytes": b, "after_bytes": a}))
                    .collect::<Vec<_>>()),
            )
            .top("moves", json!(planned.moves))
    };
    let first = ctx.targets[0].clone();
    if args.plan || planned.moves.is_empty() {
        if args.apply {
            text.push_str("nothing was moved\n");
        }
        let done = Done::new(crate::exit::SUCCESS, text, part(false));
        return finish(ctx, vec![(first, Ok(done))], args.opts.json).await;
    }
    if !args.yes {
        super::confirm(&text, "move", "run the rebalance plan")?;
    }
    // The plan in the audit trail of the first cluster, before any move.
    {
        let session = ctx.session(&first, true).await?;
        let digest = crate::digest::fnv1a_hex(
            planned
                .moves
                .iter()
                .flat_map(|m| format!("{}>{};", m.tenant, m.to).into_bytes()),
        );
        let tenant = crate::tenant::Tenant::from_registry("rebalance".into(), String::new());
        super::tenant_data::record_on(
            ctx,
            (&session.control, &session.client),
            (crate::control::RunCommand::Rebalance, &tenant),
            None,
            (&digest, &format!("{} move(s)", planned.moves.len())),
        )
        .await?;
    }
    for (i, m) in planned.moves.iter().enumerate() {
        if !ctx.reporters.is_quiet() {
            crate::output::stderr_line(&format!(
                "rebalance: move {}/{}: {} from {} to {}",
                i + 1,
                planned.moves.len(),
                m.tenant,
                m.from,
                m.to
            ));
        }
        let code = Box::pin(super::tenant_move::move_tenant(
            ctx,
            MoveArgs {
                id: Some(m.tenant.clone()),
                to: Some(m.to.clone()),
                offline: false,
                max_pause: args.max_pause,
                keep_source: None,
                verify: false,
                on_cutover: None,
                abort: false,
                cleanup: false,
                yes: true,
                opts: DataOpts {
                    actor: args.opts.actor.clone(),
                    json: false,
                },
                stream: args.stream.clone(),
            },
        ))
        .await?;
        if code != crate::exit::SUCCESS {
            return Ok(code);
        }
    }
    let done = Done::new(
        crate::exit::SUCCESS,
        format!("rebalance: {} move(s) done\n", planned.moves.len()),
        part(true),
    );
    finish(ctx, vec![(first, Ok(done))], args.opts.json).await
}
