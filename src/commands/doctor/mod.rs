//! `tenantctl doctor`: what a careful DBA checks before pointing a fleet tool at a cluster,
//! per cluster, each check pass / warn / fail with the fix; exit 1 when one fails. The
//! checks are in `checks.rs` (connection, pooler, privileges, limits) and `fleet.rs` (the
//! fleet's health from the control schema).

mod checks;
mod fleet;

use serde_json::json;

use crate::cli::DoctorArgs;
use crate::config::Target;
use crate::report::json::Part;

use super::clusters::{each, finish, Done};
use super::Ctx;
use checks::{Check, Verdict};

pub async fn doctor(ctx: &Ctx, args: DoctorArgs) -> anyhow::Result<i32> {
    let results = each(&ctx.targets, |t| one(ctx, t)).await;
    finish(ctx, results, args.json).await
}

async fn one(ctx: &Ctx, target: &Target) -> anyhow::Result<Done> {
    let checks = match run_checks(ctx, target).await {
        Ok(checks) => checks,
        Err(e) => vec![Check {
            area: "connection",
            check: "reachable",
            verdict: Verdict::Fail,
            detail: format!("{e:#}"),
            fix: Some(format!(
                "check the URL of cluster {} ({}) and that the server accepts this role",
                target.name, target.display_url
            )),
        }],
    };
    Ok(said(&checks))
}

async fn run_checks(ctx: &Ctx, target: &Target) -> anyhow::Result<Vec<Check>> {
    let session = ctx.session(target, false).await?;
    let mut out = checks::connection(&session, target).await?;
    out.extend(checks::pooler(&session, target).await?);
    out.extend(checks::privileges(&session.client, &ctx.config).await?);
    let shared = super::load_shared(&ctx.config)?;
    let wanted = shared
        .as_ref()
        .map(checks::extensions_in)
        .unwrap_or_default();
    out.extend(checks::extensions(&session.client, &wanted).await?);
    out.extend(checks::limits(&session.client, target, &ctx.config.tenants.schema_prefix).await?);
    out.extend(fleet::health(ctx, &session).await?);
    Ok(out)
}

fn said(checks: &[Check]) -> Done {
    let mut text = String::new();
    for c in checks {
        let verdict = match c.verdict {
            Verdict::Pass => "pass",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        text.push_str(&format!(
            "{verdict}  {}.{}: {}\n",
            c.area, c.check, c.detail
        ));
        if let Some(fix) = &c.fix {
            text.push_str(&format!("      fix: {fix}\n"));
        }
    }
    let count = |v| checks.iter().filter(|c| c.verdict == v).count();
    let (failed, warned) = (count(Verdict::Fail), count(Verdict::Warn));
    text.push_str(&format!(
        "{} check(s): {} passed, {warned} warning(s), {failed} failed\n",
        checks.len(),
        count(Verdict::Pass)
    ));
    let code = if failed > 0 {
        crate::exit::FAILED
    } else {
        crate::exit::SUCCESS
    };
    let part = Part::default()
        .top("command", json!("doctor"))
        .list("checks", checks.iter().map(|c| json!(c)).collect());
    Done::new(code, text, part)
}
