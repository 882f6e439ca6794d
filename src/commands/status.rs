//! `tenantctl status`: the latest version on disk and where every tenant stands, from one
//! registry query, summarised by version so it stays readable at 10,000 tenants.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::cli::StatusArgs;
use crate::config::{Config, Target};
use crate::control::{FailedRow, RunRow, RunState, TenantRow, TenantState};
use crate::engine::shared::shared_version;
use crate::exit::SUCCESS;
use crate::migrations::{version_label, MigrationSet};
use crate::report::Tally;

use super::clusters::{finish, single_error, Done, Output};
use super::{load_migrations, load_shared, parse_ids, Ctx};

/// Tenants behind the latest version listed by name in the text output.
const BEHIND_LISTED: usize = 20;
/// Failed tenants of the last run shown.
const FAILED_LISTED: i64 = 20;

/// Problems listed by `status --verify` in text (all are in --json).
const PROBLEMS_LISTED: usize = 50;

fn verify_text(v: &crate::engine::verify::Verification) -> String {
    let mut out = format!(
        "\nverify:     {} tenant schema(s) read: {}\n",
        v.checked,
        if v.problems.is_empty() {
            "registry, histories and files agree".to_string()
        } else {
            format!("{} problem(s)", v.problems.len())
        }
    );
    for p in v.problems.iter().take(PROBLEMS_LISTED) {
        let who = p.id.as_ref().map_or(format!("schema {}", p.schema), |id| {
            format!("tenant {id} (schema {})", p.schema)
        });
        out.push_str(&format!("  {who}: {}\n", p.problem));
    }
    if v.problems.len() > PROBLEMS_LISTED {
        out.push_str(&format!(
            "  … and {} more (--json lists all)\n",
            v.problems.len() - PROBLEMS_LISTED
        ));
    }
    out
}

fn last_run_text(run: &RunRow, failed: &[FailedRow]) -> String {
    let mut out = format!(
        "\nlast run:   {}: {}\n            {} succeeded, {} failed, {} pending, {} skipped of {}{}\n",
        run.describe(),
        run.state,
        run.succeeded,
        run.failed,
        run.pending,
        run.skipped,
        run.total,
        run.finished_at
            .as_ref()
            .map_or(String::new(), |f| format!("; finished {f}")),
    );
    if run.state == RunState::Interrupted {
        out.push_str("            `tenantctl migrate --all` resumes it\n");
    }
    for f in failed {
        out.push_str(&format!(
            "  failed: tenant {} (schema {}): {}\n",
            f.id,
            f.schema,
            f.error.as_deref().unwrap_or("(no error recorded)")
        ));
    }
    if (failed.len() as i64) < run.failed {
        out.push_str(&format!(
            "  … and {} more failed (--json)\n",
            run.failed - failed.len() as i64
        ));
    }
    out
}

pub async fn status(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<i32> {
    let config = &ctx.config;
    let migrations = load_migrations(config)?;
    let shared = load_shared(config)?;
    let wanted = if args.tenant.is_empty() {
        None
    } else {
        Some(
            parse_ids(config, &args.tenant)?
                .iter()
                .map(|t| t.id().to_string())
                .collect::<Vec<_>>(),
        )
    };
    let (migrations, shared, wanted, args) =
        (&migrations, shared.as_ref(), wanted.as_deref(), &args);
    let mut outcomes = futures::future::join_all(
        ctx.targets
            .iter()
            .map(|t| status_one(ctx, t, migrations, shared, wanted, args)),
    )
    .await;
    single_error(ctx, &mut outcomes)?;
    if let Some(wanted) = wanted {
        super::require_registered(wanted, &ctx.targets, &outcomes, |(ids, _), id| {
            ids.contains(id)
        })?;
    }
    // With given tenants (every one found above), only the clusters holding them report.
    let results = ctx
        .targets
        .iter()
        .cloned()
        .zip(outcomes)
        .filter(|(_, o)| {
            wanted.is_none() || !ctx.multi() || matches!(o, Ok((ids, _)) if !ids.is_empty())
        })
        .map(|(s, o)| (s, o.map(|(_, done)| done)))
        .collect();
    finish(ctx, results, args.json)
}

/// One cluster's status: the ids of the given tenants found there, and its report.
async fn status_one(
    ctx: &Ctx,
    target: &Target,
    migrations: &MigrationSet,
    shared: Option<&MigrationSet>,
    wanted: Option<&[String]>,
    args: &StatusArgs,
) -> anyhow::Result<(BTreeSet<String>, Done)> {
    let config = &ctx.config;
    let session = ctx.session(target, false).await?;
    let (rows, last_run) = if session.control.exists(&session.client).await? {
        let control = &session.control;
        let rows = control.tenants(&session.client, wanted).await?;
        let last = match control.last_run(&session.client).await? {
            Some(mut run) => {
                if run.state == RunState::Running
                    && !control.run_is_live(&session.client, run.id).await?
                {
                    run.state = RunState::Interrupted;
                }
                let failed = control
                    .failed_schemas(&session.client, run.id, FAILED_LISTED)
                    .await?;
                Some((run, failed))
            }
            None => None,
        };
        (rows, last)
    } else {
        (Vec::new(), None)
    };
    let late = if session.control.is_current(&session.client).await? {
        session
            .control
            .out_of_order(&session.client, &migrations.versions())
            .await?
    } else {
        Vec::new()
    };
    let rows: Vec<TenantRow> = rows
        .into_iter()
        .filter(|r| r.state == TenantState::Active)
        .collect();
    let found: BTreeSet<String> = rows.iter().map(|r| r.tenant.id().to_string()).collect();
    let shared_at = match shared {
        Some(_) => Some(shared_version(&session.client, &config.migrations.shared_schema).await?),
        None => None,
    };
    let verification = if args.verify {
        Some(
            crate::engine::verify::verify(
                &session.client,
                migrations,
                &rows,
                wanted.is_none(),
                &config.tenants.schema_prefix,
                &config.control_schema,
            )
            .await?,
        )
    } else {
        None
    };
    let latest = migrations.latest();
    let current = rows.iter().filter(|r| r.version == latest).count();
    let counts = vec![
        (Tally::Registered, rows.len()),
        (Tally::UpToDate, current),
        (Tally::NotAtLatest, rows.len() - current),
        (
            Tally::Drifted,
            rows.iter().filter(|r| r.drift.is_some()).count(),
        ),
    ];
    let shared_line = match (shared, shared_at) {
        (Some(set), Some(at)) => format!(
            "shared:     schema {} at {}, {} of {} shared migration(s) pending ({})\n",
            config.migrations.shared_schema,
            version_label(at),
            set.pending_count(at, None),
            set.files().len(),
            set.dir.display()
        ),
        _ => String::new(),
    };
    let code = match &verification {
        Some(v) if !v.problems.is_empty() => crate::exit::FAILED,
        _ => SUCCESS,
    };
    let done = if args.json {
        let mut v = to_json(migrations, &rows);
        if let Some(ver) = &verification {
            v["verify"] = serde_json::to_value(ver)?;
        }
        if let (Some(set), Some(at)) = (shared, shared_at) {
            v["shared"] = json!({
                "schema": config.migrations.shared_schema, "version": at,
                "latest_version": set.latest(), "pending": set.pending_count(at, None),
            });
        }
        v["out_of_order"] = json!(late
            .iter()
            .map(|(version, name)| json!({ "version": version, "name": name }))
            .collect::<Vec<_>>());
        v["last_run"] = match &last_run {
            Some((run, failed)) => {
                let mut r = serde_json::to_value(run)?;
                r["failures"] = serde_json::to_value(failed)?;
                r
            }
            None => serde_json::Value::Null,
        };
        Done::new(code, Output::Json(v))
    } else {
        let mut text = to_text(config, target, migrations, &rows, wanted.is_some());
        text.insert_str(text.find("tenants:").unwrap_or(text.len()), &shared_line);
        if !late.is_empty() {
            let names: Vec<String> = late.iter().map(|(v, n)| format!("V{v}__{n}")).collect();
            text.push_str(&format!(
                "\nOUT OF ORDER: {} new but below the fleet's version: migrate refuses it; give it a version above the latest\n",
                names.join(", ")
            ));
        }
        if let Some((run, failed)) = &last_run {
            text.push_str(&last_run_text(run, failed));
        }
        if let Some(ver) = &verification {
            text.push_str(&verify_text(ver));
        }
        Done::new(code, Output::Text(text))
    };
    Ok((found, done.counts(counts)))
}

/// Tenants per version (None = nothing applied), highest first.
fn by_version(rows: &[TenantRow]) -> BTreeMap<std::cmp::Reverse<Option<i32>>, usize> {
    let mut groups = BTreeMap::new();
    for r in rows {
        *groups.entry(std::cmp::Reverse(r.version)).or_insert(0) += 1;
    }
    groups
}

fn to_json(migrations: &MigrationSet, rows: &[TenantRow]) -> serde_json::Value {
    let latest = migrations.latest();
    json!({
        "latest_version": latest,
        "migrations": migrations.files().len(),
        "tenants": rows.iter().map(|r| json!({
            "id": r.tenant.id(),
            "schema": r.tenant.schema(),
            "version": r.version,
            "pending": migrations.pending_count(r.version, None),
            "drift": r.drift,
        })).collect::<Vec<_>>(),
        "summary": by_version(rows).into_iter().map(|(v, n)| json!({
            "version": v.0,
            "tenants": n,
            "pending": migrations.pending_count(v.0, None),
        })).collect::<Vec<_>>(),
    })
}

fn to_text(
    config: &Config,
    target: &Target,
    migrations: &MigrationSet,
    rows: &[TenantRow],
    detailed: bool,
) -> String {
    let latest = migrations.latest();
    let mut out = format!(
        "database:   {} (control schema {})\nmigrations: {} in {}, latest {}\n",
        target.display_url,
        config.control_schema,
        migrations.files().len(),
        migrations.dir.display(),
        latest.map_or("none".into(), |v| migrations.label(v)),
    );
    if rows.is_empty() {
        out.push_str(
            "tenants:    none registered (create one with `tenantctl tenant create <ID>`)\n",
        );
        return out;
    }
    let current = rows.iter().filter(|r| r.version == latest).count();
    let ahead = rows
        .iter()
        .filter(|r| {
            matches!((r.version, latest), (Some(v), Some(l)) if v > l)
                || (r.version.is_some() && latest.is_none())
        })
        .count();
    let behind = rows.len() - current - ahead;
    out.push_str(&format!(
        "tenants:    {} registered: {current} up to date, {behind} behind{}\n\n",
        rows.len(),
        if ahead > 0 {
            format!(", {ahead} AHEAD of the files on disk (missing migration files?)")
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "{:<12} {:>8} {:>8}\n",
        "VERSION", "TENANTS", "PENDING"
    ));
    for (v, n) in by_version(rows) {
        let label = if v.0 == latest {
            format!("{} (latest)", version_label(v.0))
        } else {
            version_label(v.0)
        };
        out.push_str(&format!(
            "{label:<12} {n:>8} {:>8}\n",
            migrations.pending_count(v.0, None)
        ));
    }
    if detailed {
        out.push_str(&format!(
            "\n{:<24} {:<32} {:>8} {:>8}\n",
            "TENANT", "SCHEMA", "VERSION", "PENDING"
        ));
        for r in rows {
            out.push_str(&format!(
                "{:<24} {:<32} {:>8} {:>8}\n",
                r.tenant.id(),
                r.tenant.schema(),
                version_label(r.version),
                migrations.pending_count(r.version, None)
            ));
        }
    } else if behind > 0 {
        let names: Vec<String> = rows
            .iter()
            .filter(|r| r.version != latest)
            .take(BEHIND_LISTED)
            .map(|r| format!("{} ({})", r.tenant.id(), version_label(r.version)))
            .collect();
        let more = (behind + ahead).saturating_sub(names.len());
        out.push_str(&format!(
            "\nnot at latest: {}{}\nrun `tenantctl migrate --all` to bring them up to date\n",
            names.join(", "),
            crate::report::and_more(more)
        ));
    }
    let drifted: Vec<&TenantRow> = rows.iter().filter(|r| r.drift.is_some()).collect();
    if !drifted.is_empty() {
        // The same drift everywhere is one problem with the files: say it once.
        let mut by_problem: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in &drifted {
            by_problem
                .entry(r.drift.as_deref().unwrap_or_default())
                .or_default()
                .push(r.tenant.id());
        }
        out.push_str(&format!(
            "\nDRIFTED: {} tenant(s) were not touched by the last run because their history disagrees with the files:\n",
            drifted.len()
        ));
        for (problem, ids) in by_problem {
            let shown: Vec<&str> = ids.iter().take(BEHIND_LISTED).copied().collect();
            let more = ids.len().saturating_sub(shown.len());
            out.push_str(&format!(
                "  {} tenant(s): {problem}\n    {}{}\n",
                ids.len(),
                shown.join(", "),
                if more > 0 {
                    format!(", … and {more} more")
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}
