//! `tenantctl audit`: the run ledger read as an audit trail.

use crate::cli::AuditArgs;
use crate::config::Settings;
use crate::exit::SUCCESS;

use super::{redact_json, Session};

pub async fn audit(settings: &Settings, args: AuditArgs) -> anyhow::Result<i32> {
    let session = Session::open(settings, false).await?;
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
    if args.json {
        println!("{}", redact_json(&serde_json::to_value(&rows)?));
        return Ok(SUCCESS);
    }
    if rows.is_empty() {
        println!(
            "no runs recorded{}",
            if args.since.is_some() {
                " in that period"
            } else {
                ""
            }
        );
        return Ok(SUCCESS);
    }
    for r in &rows {
        let target = r
            .target_version
            .map_or(String::new(), |v| format!(" to V{v}"));
        println!(
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
    Ok(SUCCESS)
}
