//! `tenantctl status`: the latest version on disk and where every tenant stands, from one
//! registry query, summarised by version so it stays readable at 10,000 tenants.

use std::collections::BTreeSet;

use serde_json::json;

use crate::cli::StatusArgs;
use crate::config::{Config, Target};
use crate::control::{
    Control, RunRow, RunState, SchemaRow, Summary, Summing, TenantRow, TenantState,
};
use crate::engine::shared::shared_version;
use crate::exit::SUCCESS;
use crate::labels::Selector;
use crate::migrations::{version_label, MigrationSet};
use crate::report::json::Part;
use crate::report::summary::{counts_text, failures_text, waves_text};
use crate::report::Tally;
use tokio_postgres::Client;

use super::clusters::{finish, single_error, Done};
use super::listing::{Listing, Render};
use super::{load_migrations, load_shared, parse_ids, Ctx};

/// Tenants behind the latest version listed by name in the text output.
const BEHIND_LISTED: usize = 20;

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

/// A run as `status` shows it: what, by whom, how it went in the ledger's counts.
fn run_text(out: &mut String, label: &str, run: &RunRow) {
    let mut waves = String::new();
    waves_text(&mut waves, &run.waves, run.halted.as_ref());
    out.push_str(&format!(
        "\n{label:<11} {}: {}\n            {} of {}{}\n",
        run.describe(),
        run.state,
        counts_text(run.command, &run.counts),
        run.total,
        run.finished_at
            .as_ref()
            .map_or(String::new(), |f| format!("; finished {f}")),
    ));
    if run.state == RunState::Interrupted {
        out.push_str("            the same command again resumes it\n");
    }
    for line in waves.lines() {
        out.push_str(&format!("            {line}\n"));
    }
}

/// The last run, and the last run that worked on any schema with its failures (when the
/// last run changed nothing, it does not hide the last one that did).
fn runs_text(out: &mut String, last: &Option<RunRow>, change: &Option<(RunRow, Vec<SchemaRow>)>) {
    if let Some(run) = last {
        run_text(out, "last run:", run);
    }
    if let Some((run, failed)) = change {
        if last.as_ref().map(|l| l.id) != Some(run.id) {
            run_text(out, "last change:", run);
        }
        let mut failures = String::new();
        failures_text(
            &mut failures,
            failed.iter().filter_map(|t| {
                t.failure
                    .as_ref()
                    .map(|f| (t.id.as_str(), t.schema.as_str(), f.error.as_str()))
            }),
        );
        for line in failures.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
}

/// The run the process that started it no longer holds reads as interrupted.
async fn as_seen(
    control: &Control,
    client: &Client,
    run: Option<RunRow>,
) -> anyhow::Result<Option<RunRow>> {
    match run {
        Some(mut run) => {
            if run.state == RunState::Running && !control.run_is_live(client, run.id).await? {
                run.state = RunState::Interrupted;
            }
            Ok(Some(run))
        }
        None => Ok(None),
    }
}

pub async fn status(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<i32> {
    let config = &ctx.config;
    let migrations = load_migrations(config)?;
    let shared = load_shared(config)?;
    let ids = super::ids_from(&args.tenant, args.from_file.as_deref())?;
    let wanted = if ids.is_empty() {
        None
    } else {
        Some(
            parse_ids(config, &ids)?
                .iter()
                .map(|t| t.id().to_string())
                .collect::<Vec<_>>(),
        )
    };
    let select = super::selector(args.select.as_deref())?;
    let (migrations, shared, wanted, args) =
        (&migrations, shared.as_ref(), wanted.as_deref(), &args);
    let select = select.as_ref();
    let mut outcomes = futures::future::join_all(
        ctx.targets
            .iter()
            .map(|t| status_one(ctx, t, migrations, shared, (wanted, select), args)),
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
    finish(ctx, results, args.json).await
}

/// One cluster's status: the ids of the given tenants found there, and its report.
async fn status_one(
    ctx: &Ctx,
    target: &Target,
    migrations: &MigrationSet,
    shared: Option<&MigrationSet>,
    (wanted, select): (Option<&[String]>, Option<&Selector>),
    args: &StatusArgs,
) -> anyhow::Result<(BTreeSet<String>, Done)> {
    let config = &ctx.config;
    let session = ctx.session(target, false).await?;
    let latest = migrations.latest();
    // Plain status over the whole fleet prints a summary: the server computes it, so it costs
    // the same at 50,000 tenants as at 1,000. What lists tenants reads their rows.
    let summarised =
        !args.json && !args.verify && wanted.is_none() && select.is_none() && !args.failed;
    let (control, client) = (&session.control, &session.client);
    let exists = control.exists(client).await?;
    let (summary, last_run, last_change, pool) = if exists {
        let summary = if summarised {
            Some(control.summary(client, latest, BEHIND_LISTED).await?)
        } else {
            None
        };
        let pool = control.pool(client).await?;
        let last = as_seen(control, client, control.last_run(client).await?).await?;
        // The last run has rows that only work on a schema makes: it is the last change too.
        let worked = |r: &&RunRow| r.counts.done + r.counts.failed + r.counts.not_started > 0;
        let change = match last.as_ref().filter(worked) {
            Some(run) => Some(run.clone()),
            None => as_seen(control, client, control.last_change(client).await?).await?,
        };
        let change = match change {
            Some(run) => {
                let failed = control
                    .run_schemas(client, (run.id, run.command), true)
                    .await?;
                Some((run, failed))
            }
            None => None,
        };
        (summary, last, change, pool)
    } else {
        (None, None, None, Vec::new())
    };
    let files = crate::engine::files::check(&session, migrations).await?;
    let moves = super::status_moves::read(&session, exists).await?;
    let late = files.late.clone();
    // The given tenants found registered (before --select and --failed narrow them).
    let found: BTreeSet<String> = match wanted {
        Some(wanted) if exists => control
            .tenants(client, Some(wanted))
            .await?
            .into_iter()
            .filter(|r| r.state == TenantState::Active)
            .map(|r| r.tenant.id().to_string())
            .collect(),
        _ => BTreeSet::new(),
    };
    let shared_at = match shared {
        Some(_) => Some(shared_version(&session.client, &config.migrations.shared_schema).await?),
        None => None,
    };
    // What lists tenants reads them as a stream, summarised on the way, and holds them only
    // for the given tenants' lines or --verify; --json prints them as it reads them again.
    let (summary, rows, listing) = match summary {
        Some(summary) => (summary, Vec::new(), None),
        None => {
            let select = select.cloned();
            let keep = move |r: &TenantRow| {
                r.state == TenantState::Active
                    && select.as_ref().is_none_or(|s| s.matches(&r.labels))
            };
            let listing = Listing::open((session, exists), wanted, args.failed, keep).await?;
            let hold = wanted.is_some() || args.verify;
            let (mut summing, mut rows) = (Summing::new(latest, BEHIND_LISTED), Vec::new());
            listing
                .each(|r| {
                    summing.add(r);
                    if hold {
                        rows.push(r.clone());
                    }
                    true
                })
                .await?;
            (summing.done(), rows, Some(listing))
        }
    };
    let verification = match (&listing, args.verify) {
        (Some(listing), true) => Some(
            crate::engine::verify::verify(
                listing.client(),
                migrations,
                &rows,
                wanted.is_none(),
                &config.tenants.schema_prefix,
                &config.control_schema,
            )
            .await?,
        ),
        _ => None,
    };
    let current = summary.at(latest);
    let counts = vec![
        (Tally::Registered, summary.total()),
        (Tally::UpToDate, current),
        (Tally::NotAtLatest, summary.total() - current),
        (Tally::Drifted, summary.drifted_count()),
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
    let unfaithful = !files.changed.is_empty() || !files.missing.is_empty();
    let code = match &verification {
        Some(v) if !v.problems.is_empty() => crate::exit::FAILED,
        _ if unfaithful || moves.leaked() => crate::exit::FAILED,
        _ => SUCCESS,
    };
    let detail = wanted.is_some().then_some(rows.as_slice());
    let mut text = to_text(config, target, migrations, &summary, detail);
    if let (Some(sel), 0) = (select, summary.total()) {
        text.push_str(&format!("no tenant matches --select {sel}\n"));
    }
    if args.failed && summary.total() == 0 {
        text.push_str("no tenant's last change failed (on this selection)\n");
    }
    text.insert_str(text.find("tenants:").unwrap_or(text.len()), &shared_line);
    // The pool, when there is one (or one is configured), after the tenants' line.
    let pool_size = config.tenants.pool;
    if !pool.is_empty() || pool_size > 0 {
        let line = super::pool::pool_line(&pool, pool_size, migrations.latest());
        let at = text.find("tenants:").map_or(text.len(), |i| {
            text[i..].find('\n').map_or(text.len(), |n| i + n + 1)
        });
        text.insert_str(at, &line);
    }
    text.push_str(&moves.text());
    if !late.is_empty() {
        let names: Vec<String> = late.iter().map(|(v, n)| format!("V{v}__{n}")).collect();
        text.push_str(&format!(
            "\nOUT OF ORDER: {} new but below the fleet's version: migrate refuses it; give it a version above the latest\n",
            names.join(", ")
        ));
    }
    if unfaithful {
        let only = crate::control::FileCheck {
            late: Vec::new(),
            ..files.clone()
        };
        text.push_str("\nFILES CHANGED AFTER THE FLEET APPLIED THEM: migrate, rollback and tenant create refuse to run until this is resolved\n");
        for line in crate::engine::files::problems(migrations, &only) {
            text.push_str(&format!("  {line}\n"));
        }
    }
    runs_text(&mut text, &last_run, &last_change);
    if let Some(ver) = &verification {
        text.push_str(&verify_text(ver));
    }
    let mut part = to_part(migrations, &summary)
        .cluster(
            "shared",
            match (shared, shared_at) {
                (Some(set), Some(at)) => json!({
                    "schema": config.migrations.shared_schema, "version": at,
                    "latest_version": set.latest(), "pending": set.pending_count(at, None),
                }),
                _ => serde_json::Value::Null,
            },
        )
        .cluster(
            "out_of_order",
            json!(late
                .iter()
                .map(|(version, name)| json!({ "version": version, "name": name }))
                .collect::<Vec<_>>()),
        )
        .cluster("changed_files", changed_json(migrations, &files))
        .cluster(
            "missing_files",
            json!(files
                .missing
                .iter()
                .map(|(version, name, tenants)| json!({
                    "version": version, "name": name, "tenants": tenants,
                    "file": migrations.dir.join(format!("V{version}__{name}.sql")).display().to_string(),
                }))
                .collect::<Vec<_>>()),
        )
        .cluster(
            "pool",
            super::pool::pool_json(&pool, pool_size, migrations.latest()),
        )
        .cluster("last_run", serde_json::to_value(&last_run)?)
        .cluster("verify", serde_json::to_value(&verification)?);
    part = moves.part(part);
    part = part.cluster(
        "last_change",
        match &last_change {
            Some((run, failed)) => {
                let mut r = serde_json::to_value(run)?;
                r["failures"] = serde_json::to_value(failed)?;
                r
            }
            None => serde_json::Value::Null,
        },
    );
    let done = Done::new(code, text, part).counts(counts);
    let done = match listing {
        Some(listing) if args.json => {
            let render = Render::Json("tenants", Box::new(tenant_json(migrations)));
            done.listing(listing.render(render), String::new())
        }
        _ => done,
    };
    Ok((found, done))
}

/// The files whose text differs from what the fleet applied under their version: each with
/// its file, its checksum now, how many tenants applied another text, and every form held.
fn changed_json(migrations: &MigrationSet, files: &crate::control::FileCheck) -> serde_json::Value {
    json!(files
        .changed
        .iter()
        .map(|c| {
            let file = migrations.get(c.version);
            let now = file
                .map(|f| f.migration.checksum().to_string())
                .unwrap_or_default();
            json!({
                "version": c.version,
                "file": file.map(|f| f.path.display().to_string()),
                "checksum": now,
                "tenants": c.other_than(&now),
                "forms": c.forms.iter().map(|(sum, n)| json!({
                    "checksum": sum, "tenants": n, "current": *sum == now,
                })).collect::<Vec<_>>(),
            })
        })
        .collect::<Vec<_>>())
}

/// A tenant's object in the document's `tenants` (each with its pending count).
fn tenant_json(migrations: &MigrationSet) -> impl Fn(&TenantRow) -> serde_json::Value {
    let versions: Vec<i32> = migrations.files().iter().map(|f| f.version).collect();
    move |r: &TenantRow| {
        json!({
            "id": r.tenant.id(),
            "schema": r.tenant.schema(),
            "labels": r.labels,
            "version": r.version,
            "pending": versions.iter().filter(|v| r.version.is_none_or(|at| **v > at)).count(),
            "drift": r.drift,
        })
    }
}

/// The cluster's part; its `tenants` are filled as they are read (see `listing`).
fn to_part(migrations: &MigrationSet, summary: &Summary) -> Part {
    Part::default()
        .top("command", json!("status"))
        .top("latest_version", json!(migrations.latest()))
        .top("migrations", json!(migrations.files().len()))
        .list("tenants", Vec::new())
        .list(
            "summary",
            summary
                .by_version
                .iter()
                .map(|(v, n)| {
                    json!({
                        "version": v,
                        "tenants": n,
                        "pending": migrations.pending_count(*v, None),
                    })
                })
                .collect(),
        )
}

/// The status text from the summary; with `detail` (given tenants), a line per tenant.
fn to_text(
    config: &Config,
    target: &Target,
    migrations: &MigrationSet,
    summary: &Summary,
    detail: Option<&[TenantRow]>,
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
    let total = summary.total();
    if total == 0 {
        out.push_str(
            "tenants:    none registered (create one with `tenantctl tenant create <ID>`)\n",
        );
        return out;
    }
    let current = summary.at(latest);
    let ahead: usize = summary
        .by_version
        .iter()
        .filter(|(v, _)| {
            matches!((v, latest), (Some(v), Some(l)) if *v > l) || (v.is_some() && latest.is_none())
        })
        .map(|(_, n)| n)
        .sum();
    let behind = total - current - ahead;
    out.push_str(&format!(
        "tenants:    {total} registered: {current} up to date, {behind} behind{}\n\n",
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
    for (v, n) in &summary.by_version {
        let label = if *v == latest {
            format!("{} (latest)", version_label(*v))
        } else {
            version_label(*v)
        };
        out.push_str(&format!(
            "{label:<12} {n:>8} {:>8}\n",
            migrations.pending_count(*v, None)
        ));
    }
    if let Some(rows) = detail {
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
        let names: Vec<String> = summary
            .behind
            .iter()
            .map(|(id, v)| format!("{id} ({})", version_label(*v)))
            .collect();
        let more = (behind + ahead).saturating_sub(names.len());
        out.push_str(&format!(
            "\nnot at latest: {}{}\nrun `tenantctl migrate --all` to bring them up to date\n",
            names.join(", "),
            crate::report::and_more(more)
        ));
    }
    let drifted = summary.drifted_count();
    if drifted > 0 {
        // The same drift everywhere is one problem with the files: say it once.
        out.push_str(&format!(
            "\nDRIFTED: {drifted} tenant(s) were not touched by the last run because their history disagrees with the files:\n"
        ));
        for (problem, n, ids) in &summary.drifted {
            let more = n.saturating_sub(ids.len());
            out.push_str(&format!(
                "  {n} tenant(s): {problem}\n    {}{}\n",
                ids.join(", "),
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
