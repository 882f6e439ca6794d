//! `tenantctl migrate` and the shape it shares with `rollback`: pick the tenants, check the
//! request against the files, plan, then either print the plan (--dry-run) or run it under
//! the fleet lock.

use serde_json::json;

use crate::cli::MigrateArgs;
use crate::control::RunCommand;
use crate::engine::plan::{self, Direction, PlannedSegment, Step};
use crate::exit::{self, UsageError};
use crate::migrations::MigrationSet;
use crate::report::json::Part;

use super::clusters::Done;
use super::{load_migrations, load_shared, Ctx};

pub use super::fleet::fleet_command;

/// Groups with more tenants than this list only the first ones by name.
const NAMES_PER_GROUP: usize = 10;

pub async fn migrate(ctx: &Ctx, args: MigrateArgs) -> anyhow::Result<i32> {
    let config = &ctx.config;
    let shared = if args.tenants_only {
        None
    } else {
        load_shared(config)?
    };
    if args.shared_only && shared.is_none() {
        return Err(UsageError(format!(
            "--shared-only: there are no shared migrations in {}; put V<n>__<name>.sql files there, or set [migrations] shared_dir",
            config.migrations.shared_dir.display()
        ))
        .into());
    }
    let migrations = if args.shared_only {
        MigrationSet::empty(&config.migrations.dir)
    } else {
        load_migrations(config)?
    };
    let target = match args.to {
        Some(v) => {
            require_on_disk(&migrations, v, "--to")?;
            Some(v)
        }
        None => migrations.latest(),
    };
    // --tenant/--from-file name tenants; --all, or --select alone, means every tenant.
    let ids = super::ids_from(&args.tenant, args.from_file.as_deref())?;
    let tenants = (!args.all && !args.shared_only && !ids.is_empty()).then_some(ids.as_slice());
    let sides = Sides {
        shared: shared.as_ref(),
        tenants: !args.shared_only,
    };
    fleet_command(
        ctx,
        &migrations,
        Direction::Forward { target },
        tenants,
        args.fleet,
        sides,
    )
    .await
}

/// Which sets a run applies: the shared set (once per cluster, first) and/or the tenants'.
#[derive(Clone, Copy)]
pub struct Sides<'a> {
    pub shared: Option<&'a MigrationSet>,
    pub tenants: bool,
}

impl Sides<'_> {
    pub const TENANTS_ONLY: Sides<'static> = Sides {
        shared: None,
        tenants: true,
    };
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

/// `[{"transaction": true, "migrations": [...]}, …]`.
pub(super) fn segments_json(segments: &[PlannedSegment]) -> serde_json::Value {
    segments
        .iter()
        .map(|(tx, labels)| json!({ "transaction": tx, "migrations": labels }))
        .collect()
}

/// `V2__a, V3__b` when everything runs in one transaction; with no-transaction migrations,
/// the segments: `V2__a; then V3__idx (no transaction, recorded alone); then V4__b`.
pub(super) fn segments_text(segments: &[PlannedSegment]) -> String {
    if let [(true, labels)] = segments {
        return labels.join(", ");
    }
    segments
        .iter()
        .map(|(tx, labels)| match tx {
            true => labels.join(", "),
            false => format!("{} (no transaction, recorded alone)", labels.join(", ")),
        })
        .collect::<Vec<_>>()
        .join("; then ")
}

pub(super) fn plan_output(
    command: RunCommand,
    direction: Direction,
    target: Option<i32>,
    total: usize,
    steps: &[Step],
    labels: &std::collections::HashMap<&str, &crate::labels::Labels>,
    waves: Option<&[Vec<String>]>,
) -> Done {
    let groups = plan::group(steps);
    let wave_of: std::collections::HashMap<&str, usize> = waves
        .unwrap_or_default()
        .iter()
        .enumerate()
        .flat_map(|(w, ids)| ids.iter().map(move |id| (id.as_str(), w)))
        .collect();
    let verb = match direction {
        Direction::Forward { .. } => "apply",
        Direction::Backward { .. } => "revert",
    };
    let part = Part::default()
        .top("command", json!(command))
        .top("dry_run", json!(true))
        .top("target_version", json!(target))
        .list(
            "tenants",
            steps
                .iter()
                .map(|s| {
                    json!({
                        "id": s.tenant.id(), "schema": s.tenant.schema(),
                        "labels": labels.get(s.tenant.id()), "version": s.from,
                        "would_be_at": s.to, "migrations": s.migrations,
                        "segments": segments_json(&s.segments),
                        "wave": wave_of.get(s.tenant.id()),
                    })
                })
                .collect(),
        )
        .list(
            "groups",
            groups
                .iter()
                .map(|g| {
                    json!({
                        "version": g.from, "would_be_at": g.to, "migrations": g.migrations,
                        "segments": segments_json(&g.segments), "tenants": g.tenants.len(),
                    })
                })
                .collect(),
        )
        .count("would_change", steps.len() as i64)
        .count("unchanged", (total - steps.len()) as i64)
        .top(
            "waves",
            json!(waves
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(w, ids)| json!({ "wave": w, "tenants": ids }))
                .collect::<Vec<_>>()),
        );
    let mut out = format!(
        "{command} --dry-run: {total} tenant(s) in scope, {} would change, {} would not; nothing was changed",
        steps.len(),
        total - steps.len()
    );
    out.push('\n');
    for g in &groups {
        let names: Vec<&str> = g
            .tenants
            .iter()
            .take(NAMES_PER_GROUP)
            .map(String::as_str)
            .collect();
        let more = g.tenants.len().saturating_sub(NAMES_PER_GROUP);
        out.push_str(&format!(
            "  {} tenant(s) at {} -> {}: {verb} {}\n",
            g.tenants.len(),
            crate::migrations::version_label(g.from),
            crate::migrations::version_label(g.to),
            segments_text(&g.segments)
        ));
        out.push_str(&format!(
            "    {}{}\n",
            names.join(", "),
            crate::report::and_more(more)
        ));
    }
    if let Some(waves) = waves {
        out.push_str(
            "waves (a stable order, the same on every run; failures halt before the next):\n",
        );
        for (w, ids) in waves.iter().enumerate() {
            let shown: Vec<&str> = ids
                .iter()
                .take(NAMES_PER_GROUP)
                .map(String::as_str)
                .collect();
            out.push_str(&format!(
                "  wave {w}{}: {} tenant(s): {}{}\n",
                if w == 0 { " (canary)" } else { "" },
                ids.len(),
                shown.join(", "),
                crate::report::and_more(ids.len() - shown.len())
            ));
        }
    }
    Done::new(exit::SUCCESS, out, part)
}
