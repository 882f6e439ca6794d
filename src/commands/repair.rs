//! `tenantctl repair --accept V`: record an applied migration file as it is now, where the
//! edit was meant. Phase 1 holds every cluster's fleet lock and reads the histories of the
//! tenants that have V applied, to show exactly what will change; after confirmation, each
//! cluster runs a recorded run (`repair`) that rewrites V's history row in each such schema's
//! own transaction. Nothing else is run or changed.

use std::collections::BTreeMap;
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
use crate::migrations::{MigrationFile, MigrationSet};
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
    /// The forms of the version its tenants applied: checksum -> tenant ids.
    forms: BTreeMap<String, Vec<String>>,
    /// Other files whose text differs from what the fleet applied (a warning here: repair
    /// runs nothing, and each such file has its own `repair --accept`).
    other_changes: Vec<String>,
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
            .map(|t| plan_one(ctx, t, &migrations, file_ref, wanted_ref, args_ref)),
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
    refuse_split(file, &plans, wanted.is_some(), args.accept_split)?;
    let todo: usize = plans.iter().flatten().map(|p| p.differ.len()).sum();
    if args.dry_run {
        let results = ctx
            .targets
            .iter()
            .cloned()
            .zip(plans)
            .map(|(t, p)| (t, p.map(|p| plan_done(file, &p))))
            .collect();
        return finish(ctx, results, args.run.json).await;
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
                load: None,
                sql: None,
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
    .await
}

async fn plan_one<'a>(
    ctx: &'a Ctx,
    target: &'a Target,
    migrations: &MigrationSet,
    file: &MigrationFile,
    wanted: Option<&[String]>,
    args: &RepairArgs,
) -> anyhow::Result<Plan<'a>> {
    let (session, _) = ctx.fleet_session(target, args.dry_run, args.wait).await?;
    // The other files against the fleet: out of order or missing is refused as everywhere;
    // another changed file is only named (repair runs nothing, and has its own --accept).
    let mut found = crate::engine::files::check(&session, migrations).await?;
    let others: Vec<crate::control::Changed> = std::mem::take(&mut found.changed)
        .into_iter()
        .filter(|c| c.version != file.version)
        .collect();
    crate::engine::files::refuse(migrations, &found)?;
    let other_changes = others
        .iter()
        .map(|c| crate::engine::files::changed_text(migrations, c))
        .collect();
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
        forms: BTreeMap::new(),
        other_changes,
    };
    for r in past {
        let row = histories
            .get(r.tenant.schema())
            .and_then(|h| h.iter().find(|a| a.0 == file.version));
        if let Some((_, _, sum)) = row {
            plan.forms
                .entry(sum.clone())
                .or_default()
                .push(r.tenant.id().to_string());
        }
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

/// Refuses (exit 2) to record one checksum for tenants that applied the version in more than
/// one form: with `--all`, when the fleet holds more than one form of it (the file's current
/// text counts as one); with `--tenant`, when the tenants to repair ran more than one form.
/// Their schemas may differ, and one checksum would hide it. `--accept-split` overrides (the
/// command line, with it, is in the audit trail).
fn refuse_split(
    file: &MigrationFile,
    plans: &[anyhow::Result<Plan<'_>>],
    named: bool,
    accept_split: bool,
) -> anyhow::Result<()> {
    let now = file.migration.checksum().to_string();
    let mut forms: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in plans.iter().flatten() {
        let repaired: std::collections::HashSet<&str> =
            p.differ.iter().map(|(t, _)| t.id()).collect();
        for (sum, ids) in &p.forms {
            let ids = ids
                .iter()
                .map(String::as_str)
                .filter(|id| !named || repaired.contains(id));
            forms.entry(sum.as_str()).or_default().extend(ids);
        }
    }
    forms.retain(|_, ids| !ids.is_empty());
    let todo = plans.iter().flatten().any(|p| !p.differ.is_empty());
    if forms.len() < 2 || !todo || accept_split {
        return Ok(());
    }
    let mut groups: Vec<(&str, Vec<&str>)> = forms.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut text = format!(
        "repair --accept {v}: {} tenant(s) applied {} in {} different forms, so their schemas may differ, and recording one checksum for all of them would hide it; nothing was changed.\n",
        groups.iter().map(|g| g.1.len()).sum::<usize>(),
        file.label(),
        groups.len(),
        v = file.version,
    );
    for (sum, ids) in &groups {
        let shown: Vec<String> = ids.iter().take(NAMES).map(|s| s.to_string()).collect();
        let _ = writeln!(
            text,
            "  checksum {}{}: {} tenant(s): {}{}",
            crate::engine::files::short(sum),
            if *sum == now {
                " (the file as it is now)"
            } else {
                ""
            },
            ids.len(),
            shown.join(", "),
            and_more(ids.len() - shown.len())
        );
    }
    let _ = write!(
        text,
        "The way out: a new migration that brings one group to the other's effect; once it has run, `tenantctl repair --accept {v} --tenant <that group's ids>` records the file for them. If you know the forms have the same effect, --accept-split records it for all (the audit trail keeps the command line)",
        v = file.version
    );
    Err(exit::UsageError(text).into())
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
    for other in &plan.other_changes {
        let _ = writeln!(out, "  note: {other}");
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
