//! `tenant tiers apply|status`: every tenant role against its tier (`[tiers.<name>]`), and
//! the tier of relabelled tenants applied in `tenant label`'s transaction. The settings and
//! statements are `engine::tiers`'; this file groups roles by tier, says it, records it.

use serde_json::json;
use tokio_postgres::Client;

use crate::cli::{TiersApplyArgs, TiersCommand, TiersStatusArgs};
use crate::config::Target;
use crate::control::{Control, RunCommand, RunInfo, TenantState};
use crate::engine::tiers::{alter_sql, changes, read_roles, Change, BATCH};
use crate::exit::UsageError;
use crate::report::json::Part;
use crate::tenant::role_name;

use super::clusters::{each, finish, Done};
use super::Ctx;

/// One tenant's role against its tier.
struct RolePlan {
    id: String,
    schema: String,
    role: String,
    tier: Option<String>,
    /// None: the role does not exist.
    changes: Option<Vec<Change>>,
}

/// Every tenant role of a cluster (or of `ids`) against its tier.
struct Plan {
    roles: Vec<RolePlan>,
    /// Tenants two tiers select, said.
    conflicts: Vec<String>,
}

impl Plan {
    /// Tenants two tiers select stop the change: the first few said (at 10,000 tenants a
    /// selector overlap would otherwise be a message of 10,000 lines), nothing changed.
    fn refuse_conflicts(&self) -> anyhow::Result<()> {
        const SHOWN: usize = 3;
        let Some(first) = self.conflicts.first() else {
            return Ok(());
        };
        let mut text: Vec<&str> = vec![first];
        text.extend(
            self.conflicts
                .iter()
                .skip(1)
                .take(SHOWN - 1)
                .map(String::as_str),
        );
        let more = self.conflicts.len().saturating_sub(SHOWN);
        let more = match more {
            0 => String::new(),
            n => {
                format!("; and {n} more tenant(s) in two tiers (`tenant tiers status` lists them)")
            }
        };
        Err(UsageError(format!("{}{more}; nothing was changed", text.join("; "))).into())
    }

    fn changed(&self) -> impl Iterator<Item = &RolePlan> {
        self.roles
            .iter()
            .filter(|r| r.changes.as_ref().is_some_and(|c| !c.is_empty()))
    }

    fn sql(&self) -> Vec<String> {
        self.changed()
            .map(|r| alter_sql(&r.role, r.changes.as_deref().unwrap_or_default()))
            .collect()
    }
}

fn require_tiers(ctx: &Ctx) -> anyhow::Result<&str> {
    if ctx.config.tiers.is_empty() {
        return Err(UsageError(format!(
            "{} has no [tiers]: add [tiers.<name>] with select and the role settings (docs/tiers.md); nothing was changed",
            ctx.config.path.display()
        ))
        .into());
    }
    Ok(ctx
        .config
        .tenants
        .role_template
        .as_deref()
        .expect("tiers need roles (config)"))
}

async fn plan(
    ctx: &Ctx,
    (control, client): (&Control, &Client),
    ids: Option<&[String]>,
) -> anyhow::Result<Plan> {
    let template = require_tiers(ctx)?;
    let rows: Vec<_> = control
        .tenants(client, ids)
        .await?
        .into_iter()
        .filter(|r| r.state == TenantState::Active)
        .collect();
    let names: Vec<String> = rows
        .iter()
        .map(|r| role_name(template, &r.tenant))
        .collect();
    let states = read_roles(client, &names).await?;
    let mut plan = Plan {
        roles: Vec::new(),
        conflicts: Vec::new(),
    };
    for (row, role) in rows.iter().zip(names) {
        let tier = match ctx.config.tiers.of(row.tenant.id(), &row.labels) {
            Ok(t) => t,
            Err(message) => {
                plan.conflicts.push(message);
                continue;
            }
        };
        plan.roles.push(RolePlan {
            id: row.tenant.id().to_string(),
            schema: row.tenant.schema().to_string(),
            changes: states.get(&role).map(|s| changes(s, tier)),
            role,
            tier: tier.map(|t| t.name.clone()),
        });
    }
    Ok(plan)
}

/// In the caller's transaction (`tenant label`): the roles of `ids` brought to the tiers
/// their labels now select. A tenant two tiers select fails it (nothing is committed).
pub(super) async fn apply_in_tx(
    ctx: &Ctx,
    (control, client): (&Control, &Client),
    ids: &[String],
) -> anyhow::Result<()> {
    let plan = plan(ctx, (control, client), Some(ids)).await?;
    plan.refuse_conflicts()?;
    let sql = plan.sql().concat();
    if !sql.is_empty() {
        client.batch_execute(&sql).await?;
    }
    Ok(())
}

pub async fn tiers(ctx: &Ctx, command: TiersCommand) -> anyhow::Result<i32> {
    match command {
        TiersCommand::Apply(args) => apply(ctx, args).await,
        TiersCommand::Status(args) => status(ctx, args).await,
    }
}

async fn status(ctx: &Ctx, args: TiersStatusArgs) -> anyhow::Result<i32> {
    require_tiers(ctx)?;
    let results = each(&ctx.targets, |t| async move {
        let session = ctx.session(t, false).await?;
        let plan = plan(ctx, (&session.control, &session.client), None).await?;
        Ok(said(
            ctx,
            &plan,
            "tenant tiers status",
            "differ from their tier",
            None,
        ))
    })
    .await;
    finish(ctx, results, args.json).await
}

async fn apply(ctx: &Ctx, args: TiersApplyArgs) -> anyhow::Result<i32> {
    require_tiers(ctx)?;
    let dry_run = args.dry_run;
    let results = each(&ctx.targets, |t| apply_on(ctx, t, dry_run)).await;
    finish(ctx, results, args.opts.json).await
}

async fn apply_on(ctx: &Ctx, target: &Target, dry_run: bool) -> anyhow::Result<Done> {
    let session = ctx.session(target, true).await?;
    let (control, client) = (&session.control, &session.client);
    let plan = plan(ctx, (control, client), None).await?;
    plan.refuse_conflicts()?;
    if dry_run {
        return Ok(said(
            ctx,
            &plan,
            "tenant tiers apply",
            "would change (--dry-run: nothing was changed)",
            None,
        ));
    }
    let changed: Vec<(String, String)> = plan
        .changed()
        .map(|r| (r.id.clone(), r.schema.clone()))
        .collect();
    if changed.is_empty() {
        return Ok(said(ctx, &plan, "tenant tiers apply", "changed", None));
    }
    // One transaction: every role or none; a round trip per BATCH roles.
    let sql = plan.sql();
    let written = async {
        client.batch_execute("BEGIN").await?;
        for chunk in sql.chunks(BATCH) {
            client.batch_execute(&chunk.concat()).await?;
        }
        let argv = crate::whoami::command_line();
        let scope = crate::digest::fnv1a_hex(
            changed
                .iter()
                .flat_map(|(id, _)| format!("{id},").into_bytes()),
        );
        let info = RunInfo {
            command: RunCommand::TenantTiers,
            target: None,
            digest: "-",
            scope: &scope,
            total: changed.len(),
            actor: &ctx.actor,
            argv: &argv,
            seed: None,
        };
        let run_id = control.record_many(client, &info, &changed).await?;
        client.batch_execute("COMMIT").await?;
        anyhow::Ok(run_id)
    }
    .await;
    match written {
        Ok(run_id) => Ok(said(
            ctx,
            &plan,
            "tenant tiers apply",
            "changed",
            Some(run_id),
        )),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e.context("tenant roles not brought to their tiers (nothing was changed)"))
        }
    }
}

/// The plan as text and JSON: per tier, its tenants and the roles that differ.
fn said(ctx: &Ctx, plan: &Plan, command: &str, verb: &str, run_id: Option<i64>) -> Done {
    let mut names: Vec<Option<String>> = ctx
        .config
        .tiers
        .0
        .iter()
        .map(|t| Some(t.name.clone()))
        .collect();
    names.push(None);
    let mut text = String::new();
    let mut tiers = Vec::new();
    for name in names {
        let members: Vec<&RolePlan> = plan.roles.iter().filter(|r| r.tier == name).collect();
        let tier = ctx
            .config
            .tiers
            .0
            .iter()
            .find(|t| Some(&t.name) == name.as_ref());
        if name.is_none() && members.is_empty() {
            continue;
        }
        let differing: Vec<&&RolePlan> = members
            .iter()
            .filter(|r| r.changes.as_ref().is_some_and(|c| !c.is_empty()))
            .collect();
        text.push_str(&format!(
            "tier {}{}: {} tenant(s), {} role(s) {verb}\n",
            name.as_deref().unwrap_or("(none)"),
            tier.and_then(|t| t.select.as_ref())
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            members.len(),
            differing.len()
        ));
        for r in &differing {
            let list: Vec<String> = r
                .changes
                .iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{} {} -> {}",
                        c.setting,
                        c.now.as_deref().unwrap_or("(not set)"),
                        c.tier.as_deref().unwrap_or("(not set)")
                    )
                })
                .collect();
            text.push_str(&format!(
                "  {} (role {}): {}\n",
                r.id,
                r.role,
                list.join(", ")
            ));
        }
        tiers.push(json!({
            "name": name,
            "select": tier.and_then(|t| t.select.as_ref()).map(|s| s.to_string()),
            "tenants": members.iter().map(|r| &r.id).collect::<Vec<_>>(),
            "differ": differing.iter().map(|r| json!({"tenant": r.id, "role": r.role, "changes": r.changes})).collect::<Vec<_>>(),
        }));
    }
    let missing: Vec<&RolePlan> = plan.roles.iter().filter(|r| r.changes.is_none()).collect();
    for r in &missing {
        text.push_str(&format!(
            "warning: tenant {}'s role {} does not exist (made before [tenants] role was set?): create it, or `tenant drop` and create the tenant again\n",
            r.id, r.role
        ));
    }
    for c in &plan.conflicts {
        text.push_str(&format!("warning: {c}\n"));
    }
    if let Some(run_id) = run_id {
        text.push_str(&format!("recorded as run {run_id}\n"));
    }
    let part = Part::default()
        .top("command", json!(command))
        .cluster("run_id", json!(run_id))
        .list("tiers", tiers)
        .list(
            "conflicts",
            plan.conflicts
                .iter()
                .map(|c| json!({"message": c}))
                .collect(),
        )
        .list(
            "missing_roles",
            missing
                .iter()
                .map(|r| json!({"tenant": r.id, "role": r.role}))
                .collect(),
        );
    Done::new(crate::exit::SUCCESS, text, part)
}
