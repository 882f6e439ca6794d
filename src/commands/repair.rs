//! `tenantctl repair --accept V`: record an applied migration file as it is now, where the
//! edit was meant. Phase 1 holds every cluster's fleet lock and reads the histories of the
//! tenants that have V applied, to show exactly what will change; after confirmation, each
//! cluster runs a recorded run (`repair`) that rewrites V's history row in each such schema's
//! own transaction. Nothing else is run or changed.

use std::fmt::Write as _;

use serde_json::json;

use crate::cli::RepairArgs;
use crate::config::Target;
use crate::control::{RunCommand, TenantState};
use crate::db::Session;
use crate::engine::apply::Mode;
use crate::engine::run::{self as engine_run, scope_of, Planned, RunRequest};
use crate::engine::verify::read_histories;
use crate::exit;
use crate::migrations::MigrationFile;
use crate::report::and_more;
use crate::report::json::Part;
use crate::tenant::Tenant;

use super::clusters::{finish, single_error, Done};
use super::migrate::require_on_disk;
use super::{load_migrations, parse_ids, run_output, Ctx};

/// Tenants named per line of the plan.
const NAMES: usize = 10;

/// One cluster's plan: its tenants that have the version applied, by what repair does there.
struct Plan<'a> {
    session: Session<'a>,
    /// History differs from the file: repaired.
    differ: Vec<(Tenant, Option<i32>)>,
    /// History matches the file already.
    accepted: Vec<(Tenant, Option<i32>)>,
    /// Registry says the version is applied, but the history has no row for it (drift that
    /// repair does not mend: `status --verify` shows it).
    missing: Vec<Tenant>,
    /// Below the version: nothing to accept.
    below: Vec<String>,
    /// Every tenant's labels, for --json.
    labels: std::collections::HashMap<String, crate::labels::Labels>,
}

pub async fn repair(ctx: &Ctx, args: RepairArgs) -> anyhow::Result<i32> {
    let migrations = load_migrations(&ctx.config)?;
    require_on_disk(&migrations, args.accept, "--accept")?;
    let file = migrations.get(args.accept).expect("checked above");
    let wanted: Option<Vec<String>> = (!args.all)
        .then(|| parse_ids(&ctx.config, &args.tenant))
        .transpose()?
        .map(|ts| ts.iter().map(|t| t.id().to_string()).collect());
    let (file_ref, wanted_ref, args_ref) = (file, wanted.as_deref(), &args);
    let mut plans = futures::future::join_all(
        ctx.targets
            .iter()
            .map(|t| plan_one(ctx, t, file_ref, wanted_ref, args_ref)),
    )
    .await;
    single_error(ctx, &mut plans)?;
    if let Some(wanted) = &wanted {
        super::require_registered(wanted, &ctx.targets, &plans, |p, id| {
            p.differ
                .iter()
                .chain(&p.accepted)
                .map(|(t, _)| t)
                .chain(&p.missing)
                .any(|t| t.id() == id)
                || p.below.iter().any(|b| b == id)
        })?;
    }
    let todo: usize = plans.iter().flatten().map(|p| p.differ.len()).sum();
    if args.dry_run {
        let results = ctx
            .targets
            .iter()
            .cloned()
            .zip(plans)
            .map(|(t, p)| (t, p.map(|p| plan_done(file, &p))))
            .collect();
        return finish(ctx, results, args.run.json);
    }
    if !args.yes && todo > 0 {
        let mut text = String::new();
        for p in plans.iter().flatten() {
            text.push_str(&plan_text(file, p, true));
        }
        // The plan comes first, on a terminal or not.
        crate::output::stderr_line(text.trim_end());
        super::confirm(
            "",
            &format!("repair {todo}"),
            "rewrite applied migrations' checksums",
        )?;
    }
    let (migrations, explicit_scope, args) = (&migrations, wanted.is_some(), &args);
    let outcomes = futures::future::join_all(plans.into_iter().map(|p| async move {
        let mut p = p?;
        let env = ctx.run_env(p.session.target);
        let explicit: Option<Vec<Tenant>> = explicit_scope.then(|| {
            p.differ
                .iter()
                .chain(&p.accepted)
                .map(|(t, _)| t.clone())
                .collect()
        });
        let tenants = p
            .differ
            .drain(..)
            .map(|(tenant, version)| Planned {
                tenant,
                version,
                todo: true,
            })
            .chain(p.accepted.drain(..).map(|(tenant, version)| Planned {
                tenant,
                version,
                todo: false,
            }))
            .collect();
        let result = engine_run::run(
            &mut p.session,
            &env,
            RunRequest {
                mode: Mode::Repair {
                    version: file.version,
                },
                migrations,
                target: Some(file.version),
                scope: scope_of(explicit.as_deref()),
                tenants,
                refused: Vec::new(),
                labels: std::collections::HashMap::new(),
                waves: None,
                seed: None,
                resume: false,
                fail_fast: args.run.fail_fast,
            },
        )
        .await?;
        anyhow::Ok(run_output(&result))
    }))
    .await;
    finish(
        ctx,
        ctx.targets.iter().cloned().zip(outcomes).collect(),
        args.run.json,
    )
}

async fn plan_one<'a>(
    ctx: &'a Ctx,
    target: &'a Target,
    file: &MigrationFile,
    wanted: Option<&[String]>,
    args: &RepairArgs,
) -> anyhow::Result<Plan<'a>> {
    let (session, _) = ctx.fleet_session(target, args.dry_run, args.wait).await?;
    let rows = if args.dry_run && !session.control.exists(&session.client).await? {
        Vec::new()
    } else {
        session.control.tenants(&session.client, wanted).await?
    };
    let active: Vec<_> = rows
        .into_iter()
        .filter(|r| r.state == TenantState::Active)
        .collect();
    let (past, below): (Vec<_>, Vec<_>) = active
        .into_iter()
        .partition(|r| r.version.is_some_and(|v| v >= file.version));
    let schemas: Vec<&str> = past.iter().map(|r| r.tenant.schema()).collect();
    let histories = read_histories(&session.client, &schemas).await?;
    let checksum = file.migration.checksum().to_string();
    let mut plan = Plan {
        session,
        differ: Vec::new(),
        accepted: Vec::new(),
        missing: Vec::new(),
        below: below.iter().map(|r| r.tenant.id().to_string()).collect(),
        labels: past
            .iter()
            .map(|r| (r.tenant.id().to_string(), r.labels.clone()))
            .collect(),
    };
    for r in past {
        let row = histories
            .get(r.tenant.schema())
            .and_then(|h| h.iter().find(|a| a.0 == file.version));
        match row {
            None => plan.missing.push(r.tenant),
            Some((_, name, sum)) if *name == file.name && *sum == checksum => {
                plan.accepted.push((r.tenant, r.version))
            }
            Some(_) => plan.differ.push((r.tenant, r.version)),
        }
    }
    Ok(plan)
}

fn names(tenants: impl Iterator<Item = String>, total: usize) -> String {
    let shown: Vec<String> = tenants.take(NAMES).collect();
    format!("{}{}", shown.join(", "), and_more(total - shown.len()))
}

/// What repair will do (or, with `would`, would do) on one cluster, in words.
fn plan_text(file: &MigrationFile, plan: &Plan<'_>, would: bool) -> String {
    let verb = if would { "will" } else { "would" };
    let mut out = format!(
        "repair --accept {}: the file as it is now has checksum {}\n",
        file.label(),
        file.migration.checksum()
    );
    if plan.differ.is_empty() {
        let _ = writeln!(
            out,
            "  nothing to repair: {} tenant(s) with it applied record it as it is now",
            plan.accepted.len()
        );
    } else {
        let _ = writeln!(
            out,
            "  {} tenant(s) applied it with another checksum; their history {verb} record the file as it is now (nothing is run):\n    {}",
            plan.differ.len(),
            names(plan.differ.iter().map(|(t, _)| t.id().to_string()), plan.differ.len())
        );
        let _ = writeln!(
            out,
            "  {} already record it as it is now; {} are below V{} (nothing applied to accept)",
            plan.accepted.len(),
            plan.below.len(),
            file.version
        );
    }
    if !plan.missing.is_empty() {
        let _ = writeln!(
            out,
            "  {} tenant(s) are past V{} but have no history row for it (left alone; `tenantctl status --verify` shows them):\n    {}",
            plan.missing.len(),
            file.version,
            names(plan.missing.iter().map(|t| t.id().to_string()), plan.missing.len())
        );
    }
    out
}

/// The plan as one cluster's output (--dry-run).
fn plan_done(file: &MigrationFile, plan: &Plan<'_>) -> Done {
    let mut text = plan_text(file, plan, false);
    text.push_str("  (--dry-run: nothing was changed)\n");
    let entry = |t: &Tenant, v: Option<i32>, would: &str| {
        json!({ "id": t.id(), "schema": t.schema(), "labels": plan.labels.get(t.id()),
                "version": v, "would": would })
    };
    let tenants = plan
        .differ
        .iter()
        .map(|(t, v)| entry(t, *v, "repair"))
        .chain(plan.accepted.iter().map(|(t, v)| entry(t, *v, "nothing")))
        .chain(plan.missing.iter().map(|t| entry(t, None, "missing")))
        .collect();
    let part = Part::default()
        .top("command", json!(RunCommand::Repair))
        .top("dry_run", json!(true))
        .top("target_version", json!(file.version))
        .top("checksum", json!(file.migration.checksum().to_string()))
        .list("tenants", tenants)
        .count("would_change", plan.differ.len() as i64)
        .count("unchanged", (plan.accepted.len() + plan.below.len()) as i64)
        .count("missing", plan.missing.len() as i64);
    Done::new(exit::SUCCESS, text, part)
}
