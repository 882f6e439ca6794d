//! `tenantctl audit`: the run ledger read as an audit trail.

use std::fmt::Write as _;

use crate::cli::AuditArgs;
use crate::config::Target;
use crate::control::RunRow;
use crate::exit::SUCCESS;
use crate::report::json::Part;
use crate::report::summary::counts_text;

use super::clusters::{each, finish, Done};
use super::Ctx;

pub async fn audit(ctx: &Ctx, args: AuditArgs) -> anyhow::Result<i32> {
    let results = each(&ctx.targets, |t| audit_one(ctx, t, &args)).await;
    finish(ctx, results, args.json).await
}

async fn audit_one(ctx: &Ctx, target: &Target, args: &AuditArgs) -> anyhow::Result<Done> {
    let session = ctx.session(target, false).await?;
    let rows = if session.control.exists(&session.client).await? {
        session
            .control
            .audit(
                &session.client,
                args.since.map(|d| d.as_secs_f64()),
                args.limit.max(1),
            )
            .await?
    } else {
        Vec::new()
    };
    let runs = rows
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    let part = Part::default()
        .top("command", serde_json::json!("audit"))
        .list("runs", runs);
    Ok(Done::new(SUCCESS, audit_text(&rows, args), part))
}

fn audit_text(rows: &[RunRow], args: &AuditArgs) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "no runs recorded{}",
            if args.since.is_some() {
                " in that period"
            } else {
                ""
            }
        );
        return out;
    }
    for r in rows {
        let target = r
            .target_version
            .map_or(String::new(), |v| format!(" to V{v}"));
        let _ = writeln!(
            out,
            "run {} {}{target}: {} ({} of {}) by {} on {} (pid {}), {} – {}\n    $ {}",
            r.id,
            r.command,
            r.state,
            counts_text(r.command, &r.counts),
            r.total,
            r.actor,
            r.host,
            r.pid,
            r.started_at,
            r.finished_at.as_deref().unwrap_or("(not finished)"),
            r.command_line
        );
    }
    out
}
