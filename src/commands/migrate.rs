//! `tenantctl migrate` and the shape it shares with `rollback`: pick the tenants, check the
//! request against the files, plan, then either print the plan (--dry-run) or run it under
//! the fleet lock.

use serde_json::json;

use crate::cli::{FleetOpts, MigrateArgs};
use crate::config::Settings;
use crate::engine::apply::Mode;
use crate::engine::plan::{self, Direction, Step};
use crate::exit::{UsageError, SUCCESS};
use crate::migrations::MigrationSet;
use crate::tenant::Tenant;

use super::{load_migrations, parse_ids, redact_json, run_schemas, scope_of, RunRequest, Session};

pub async fn migrate(settings: &Settings, args: MigrateArgs, quiet: bool) -> anyhow::Result<i32> {
    let migrations = load_migrations(settings)?;
    let target = match args.to {
        Some(v) => {
            require_on_disk(&migrations, v, "--to")?;
            Some(v)
        }
        None => migrations.latest(),
    };
    let tenants = (!args.all).then_some(args.tenant.as_slice());
    fleet_command(
        settings,
        &migrations,
        Direction::Forward { target },
        tenants,
        args.fleet,
        quiet,
    )
    .await
}

/// `version` must be a migration on disk (or 0 where `allow_zero`).
pub fn require_on_disk(set: &MigrationSet, version: i32, flag: &str) -> anyhow::Result<()> {
    if set.get(version).is_some() {
        return Ok(());
    }
    let known: Vec<String> = set.files().iter().map(|f| f.version.to_string()).collect();
    Err(UsageError(format!(
        "{flag} {version}: there is no migration V{version} in {} (versions: {}); nothing was changed",
        set.dir.display(),
        if known.is_empty() { "none".into() } else { known.join(", ") }
    ))
    .into())
}

/// migrate and rollback: everything after the command-specific checks.
pub async fn fleet_command(
    settings: &Settings,
    migrations: &MigrationSet,
    direction: Direction,
    tenant_ids: Option<&[String]>,
    opts: FleetOpts,
    quiet: bool,
) -> anyhow::Result<i32> {
    let wanted: Option<Vec<Tenant>> = tenant_ids.map(|ids| parse_ids(settings, ids)).transpose()?;
    let wanted_ids: Option<Vec<String>> = wanted
        .as_ref()
        .map(|ts| ts.iter().map(|t| t.id().to_string()).collect());
    // A dry run changes nothing: it does not even create the control schema.
    let mut session = Session::open(settings, !opts.dry_run).await?;
    let reporter = crate::report::for_stderr(quiet);
    if !opts.dry_run {
        session.fleet_lock(opts.wait, reporter.as_ref()).await?;
    }
    let rows = if opts.dry_run && !session.control.exists(&session.client).await? {
        Vec::new()
    } else {
        session
            .control
            .tenants(&session.client, wanted_ids.as_deref())
            .await?
    };
    if let Some(wanted) = &wanted_ids {
        super::require_registered(wanted, &rows)?;
    }
    // (tenant, registry version, drift-marked by an earlier run)
    let active: Vec<(Tenant, Option<i32>, bool)> = rows
        .into_iter()
        .filter(|r| r.state == "active")
        .map(|r| (r.tenant, r.version, r.drift.is_some()))
        .collect();
    if let Direction::Backward { to } = direction {
        let needs: Vec<Option<i32>> = active.iter().map(|(_, v, _)| *v).collect();
        let missing = plan::missing_downs(migrations, needs, to);
        if !missing.is_empty() {
            return Err(UsageError(format!(
                "rollback to V{to} needs {} rollback script(s) that do not exist; nothing was changed. Write them, or roll back less far:\n  {}",
                missing.len(),
                missing.join("\n  ")
            ))
            .into());
        }
    }
    let (command, mode, target) = match direction {
        Direction::Forward { target } => ("migrate", Mode::Migrate, target),
        Direction::Backward { to } => ("rollback", Mode::Rollback { to }, Some(to)),
    };
    if opts.dry_run {
        let steps: Vec<Step> = active
            .iter()
            .filter_map(|(t, v, _)| plan::step(migrations, t, *v, direction))
            .collect();
        print_plan(command, target, active.len(), &steps, opts.run.json);
        return Ok(SUCCESS);
    }
    // A drift-marked tenant is looked at again even when it seems current: if its files were
    // restored, the check passes and the mark clears; if not, it is reported again.
    let tenants = active
        .into_iter()
        .map(|(t, v, drifted)| {
            let todo = plan::needs_work(migrations, v, direction)
                || (drifted && matches!(direction, Direction::Forward { .. }));
            (t, v, todo)
        })
        .collect();
    run_schemas(
        &mut session,
        RunRequest {
            command,
            mode,
            migrations,
            target,
            scope: scope_of(wanted.as_deref()),
            tenants,
            refused: Vec::new(),
            resume: !opts.fresh,
            jobs: settings.jobs,
            fail_fast: opts.run.fail_fast,
            json: opts.run.json,
        },
        reporter,
    )
    .await
}

/// Groups with more tenants than this list only the first ones by name.
const NAMES_PER_GROUP: usize = 10;

fn print_plan(command: &str, target: Option<i32>, total: usize, steps: &[Step], json: bool) {
    let groups = plan::group(steps);
    let verb = if command == "rollback" {
        "revert"
    } else {
        "apply"
    };
    if json {
        let v = json!({
            "command": command,
            "dry_run": true,
            "target_version": target,
            "tenants_in_scope": total,
            "tenants": steps.iter().map(|s| json!({
                "id": s.tenant.id(), "schema": s.tenant.schema(), "from": s.from, "to": s.to, verb: s.migrations,
            })).collect::<Vec<_>>(),
            "groups": groups.iter().map(|g| json!({
                "from": g.from, "to": g.to, verb: g.migrations, "tenants": g.tenants.len(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", redact_json(&v));
        return;
    }
    println!(
        "{command} --dry-run: {total} tenant(s) in scope, {} would change, {} would not; nothing was changed",
        steps.len(),
        total - steps.len()
    );
    for g in &groups {
        let names: Vec<&str> = g
            .tenants
            .iter()
            .take(NAMES_PER_GROUP)
            .map(String::as_str)
            .collect();
        let more = g.tenants.len().saturating_sub(NAMES_PER_GROUP);
        println!(
            "  {} tenant(s) at {} -> {}: {verb} {}",
            g.tenants.len(),
            crate::migrations::version_label(g.from),
            crate::migrations::version_label(g.to),
            g.migrations.join(", ")
        );
        println!(
            "    {}{}",
            names.join(", "),
            if more > 0 {
                format!(", … and {more} more (--json lists all)")
            } else {
                String::new()
            }
        );
    }
}
