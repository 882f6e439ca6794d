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
    // What the files need, read once for every cluster (a broken set is the command's error).
    let latest = super::load_migrations(&ctx.config)?.latest();
    let extensions = super::load_shared(&ctx.config)?
        .as_ref()
        .map(checks::extensions_in)
        .unwrap_or_default();
    let wanted = (latest, extensions.as_slice());
    let results = each(&ctx.targets, |t| one(ctx, t, wanted)).await;
    finish(ctx, results, args.json).await
}

/// One cluster's checks. A server that cannot be reached is a failed check; an error once
/// connected is the cluster's error (named, exit code as for any command).
async fn one(
    ctx: &Ctx,
    target: &Target,
    (latest, extensions): (Option<i32>, &[String]),
) -> anyhow::Result<Done> {
    let session = match ctx.session(target, false).await {
        Ok(session) => session,
        Err(e) => {
            return Ok(said(&[Check {
                area: "connection",
                check: "reachable",
                verdict: Verdict::Fail,
                detail: format!("{e:#}"),
                fix: Some(format!(
                    "check the URL of cluster {} ({}) and that the server accepts this role",
                    target.name, target.display_url
                )),
            }]))
        }
    };
    let mut out = checks::connection(&session, target).await?;
    out.extend(checks::pooler(&session, target).await?);
    out.extend(checks::privileges(&session.client, &ctx.config).await?);
    out.extend(checks::extensions(&session.client, extensions).await?);
    out.extend(checks::limits(&session, target, &ctx.config.tenants.schema_prefix).await?);
    out.extend(fleet::health(ctx, &session, latest).await?);
    Ok(said(&out))
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
