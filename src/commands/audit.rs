//! `tenantctl audit`: the run ledger read as an audit trail.

use std::fmt::Write as _;

use crate::cli::AuditArgs;
use crate::config::Target;

use super::clusters::{each, finish, Done};
use super::Ctx;

pub async fn audit(ctx: &Ctx, args: AuditArgs) -> anyhow::Result<i32> {
    let results = each(&ctx.targets, |t| audit_one(ctx, t, &args)).await;
    finish(ctx, results, args.json)
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
    let value = serde_json::to_value(&rows)?;
    Ok(Done::either(args.json, || audit_text(&rows, args), value))
}

fn audit_text(rows: &[crate::control::AuditRow], args: &AuditArgs) -> String {
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
            "run {} {} {}{target}: {} ({} succeeded, {} failed of {}) by {} on {} (pid {}), {} – {}\n    $ {}",
            r.run,
            r.started_at,
            r.command,
            r.outcome,
            r.succeeded,
            r.failed,
            r.tenants,
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
