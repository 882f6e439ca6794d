//! `tenantctl tenant create|adopt`: registering tenants across clusters, placement included
//! (drop, label and list are in `tenant_change`).

pub use super::tenant_change::{drop, label, list};

use std::collections::HashMap;

use serde_json::json;

use crate::cli::{AdoptArgs, CreateArgs, RunOpts};
use crate::config::Target;
use crate::control::{RunCommand, TenantState};
use crate::db::Session;
use crate::engine::apply::Mode;
use crate::engine::failure::{Failure, FailureKind};
use crate::engine::run::{self as engine_run, scope_of, Planned, RunRequest};
use crate::engine::shared::apply_shared_recorded;
use crate::exit::UsageError;
use crate::labels::Labels;
use crate::migrations::{version_label, MigrationSet};
use crate::seed::Seed;
use crate::tenant::Tenant;

use super::clusters::{finish, single_error, Done};
use super::{load_migrations, load_shared, parse_ids, run_output, Ctx};
use crate::engine::checks::failed_names;

/// Every bad label at once (exit 2).
pub(super) fn bad_labels(errors: &[String]) -> anyhow::Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    Err(UsageError(format!(
        "{} bad label(s); nothing was changed:\n  {}",
        errors.len(),
        errors.join("\n  ")
    ))
    .into())
}

/// Ids (from the command line and `--from-file`, where a line is `ID [key=value ...]`) and
/// each one's labels: the line's, over the `--label`s given for all. Every bad label is named,
/// nothing is changed (exit 2).
fn ids_and_labels(
    args_ids: &[String],
    from_file: Option<&std::path::Path>,
    common: &[String],
) -> anyhow::Result<(Vec<String>, HashMap<String, Labels>)> {
    let mut errors = Vec::new();
    let mut parse = |text: &str, into: &mut Labels| match crate::labels::parse_label(text) {
        Ok((k, v)) => {
            into.insert(k, v);
        }
        Err(e) => errors.push(e),
    };
    let mut base = Labels::new();
    for l in common {
        parse(l, &mut base);
    }
    let mut lines: Vec<(String, Labels)> = args_ids
        .iter()
        .map(|id| (id.clone(), base.clone()))
        .collect();
    if let Some(path) = from_file {
        for line in super::read_id_file(path)? {
            let mut words = line.split_whitespace();
            let id = words.next().unwrap_or_default().to_string();
            let mut labels = base.clone();
            for w in words {
                parse(w, &mut labels);
            }
            lines.push((id, labels));
        }
    }
    bad_labels(&errors)?;
    let ids = lines.iter().map(|(id, _)| id.clone()).collect();
    Ok((ids, lines.into_iter().collect()))
}

pub async fn create(ctx: &Ctx, args: CreateArgs) -> anyhow::Result<i32> {
    let migrations = load_migrations(&ctx.config)?;
    // A new tenant gets every file: each must pass `migration check`.
    super::gate(&ctx.config, &migrations, |_| true, |_| false)?;
    let request = Registration {
        mode: Mode::Create,
        target: migrations.latest(),
        if_not_exists: args.if_not_exists,
        seed: load_seed(&ctx.config, &args.vars)?,
        load: None,
    };
    let code = register(
        ctx,
        &migrations,
        &args.ids,
        args.from_file.as_deref(),
        &args.label,
        request,
        &args.run,
    )
    .await?;
    if args.refill {
        refill(ctx)?;
    }
    Ok(code)
}

/// The seed of `[tenants] seed` with the `--var`s given, checked before anything changes
/// (exit 2 for an unknown variable, or `--var` with no seed to use it).
fn load_seed(config: &crate::config::Config, vars: &[String]) -> anyhow::Result<Option<Seed>> {
    let vars = crate::seed::parse_vars(vars)?;
    match &config.tenants.seed {
        Some(path) => Ok(Some(Seed::load(
            path,
            vars,
            config.tenants.role_template.is_some(),
        )?)),
        None if !vars.is_empty() => Err(UsageError(
            "--var is for the seed, and there is none: set [tenants] seed = \"seed.sql\" in the config; nothing was changed".into(),
        )
        .into()),
        None => Ok(None),
    }
}

/// `--refill`: `tenant pool fill` in a process of its own, detached, with this one's config
/// and clusters; its output goes nowhere (`tenant pool status` shows the pool). The create
/// has finished by then: nothing of it waits for the fill.
fn refill(ctx: &Ctx) -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--config").arg(&ctx.config.path);
    match (ctx.multi(), ctx.targets.as_slice()) {
        // The URL in use (the config's or --database-url's) by the environment: a command
        // line is visible to every user of the machine, the password with it.
        (false, [only]) => {
            cmd.env("TENANTCTL_DATABASE_URL", &only.url);
        }
        _ => {
            for t in &ctx.targets {
                cmd.arg("--cluster").arg(&t.name);
            }
        }
    }
    cmd.env("TENANTCTL_ACTOR", &ctx.actor);
    cmd.args(["tenant", "pool", "fill", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group: a Ctrl-C meant for the caller's shell does not stop it.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().map_err(|e| {
        anyhow::anyhow!("--refill: could not start `tenantctl tenant pool fill`: {e}")
    })?;
    Ok(())
}

pub async fn adopt(ctx: &Ctx, args: AdoptArgs) -> anyhow::Result<i32> {
    let migrations = load_migrations(&ctx.config)?;
    super::migrate::require_on_disk(&migrations, args.baseline, "--baseline")?;
    if ctx.targets.len() > 1 {
        let names: Vec<&str> = ctx.targets.iter().map(|t| t.name.as_str()).collect();
        return Err(UsageError(format!(
            "tenant adopt registers schemas that already exist on one cluster: name it with --cluster NAME (clusters: {}); nothing was changed",
            names.join(", ")
        ))
        .into());
    }
    let request = Registration {
        mode: Mode::Adopt {
            baseline: args.baseline,
        },
        target: Some(args.baseline),
        if_not_exists: false,
        seed: None,
        load: None,
    };
    register(
        ctx,
        &migrations,
        &args.ids,
        args.from_file.as_deref(),
        &[],
        request,
        &args.run,
    )
    .await
}

/// What distinguishes create from adopt.
pub struct Registration<'a> {
    pub mode: Mode,
    pub target: Option<i32>,
    pub if_not_exists: bool,
    /// create: the seed each new tenant gets.
    pub seed: Option<Seed>,
    /// import, clone: the rows the new tenant is loaded with.
    pub load: Option<&'a dyn crate::engine::apply::Load>,
}

/// What one cluster knows about the ids being registered.
struct Known<'a> {
    session: Session<'a>,
    /// The given ids already active here, with their version.
    existing: HashMap<String, Option<i32>>,
    active: i64,
}

/// create and adopt: validate every id first; ask every cluster which ids it already has
/// (ids are unique across the fleet); place each new tenant on a selected cluster (the one
/// with the fewest tenants, or the --cluster given); then register each tenant in its own
/// transaction, in parallel, every cluster at once. Existing ids are refused (or skipped).
pub async fn register(
    ctx: &Ctx,
    migrations: &MigrationSet,
    args_ids: &[String],
    from_file: Option<&std::path::Path>,
    labels: &[String],
    request: Registration<'_>,
    run: &RunOpts,
) -> anyhow::Result<i32> {
    let config = &ctx.config;
    let (ids, labels) = ids_and_labels(args_ids, from_file, labels)?;
    if ids.is_empty() {
        return Err(UsageError(
            "no tenant ids given; pass ids as arguments or with --from-file".into(),
        )
        .into());
    }
    let tenants = parse_ids(config, &ids)?;
    let shared = if matches!(request.mode, Mode::Create | Mode::Import { .. }) {
        load_shared(config)?
    } else {
        None
    };
    // Every configured cluster is asked, not only the selected ones: an id must not exist
    // twice in the fleet.
    let all = config.targets(&[])?;
    let clusters = ask_clusters(ctx, &all, &tenants, migrations).await?;
    let (plan, refused) = place_all(ctx, &all, &clusters, tenants, request.if_not_exists);
    let scope = scope_of(Some(
        &plan
            .iter()
            .flatten()
            .map(|p| p.tenant.clone())
            .chain(refused.iter().flatten().map(|(t, _)| t.clone()))
            .collect::<Vec<_>>(),
    ));
    let (request, shared, labels) = (&request, shared.as_ref(), &labels);
    let work = clusters
        .into_iter()
        .zip(plan)
        .zip(refused)
        .map(|((k, in_scope), refused)| {
            let todo = Work {
                in_scope,
                refused,
                scope: scope.clone(),
            };
            async move {
                if todo.in_scope.is_empty() && todo.refused.is_empty() {
                    return None;
                }
                let registering = Registering {
                    migrations,
                    shared,
                    request,
                    labels,
                };
                Some(register_on(ctx, k.session, &registering, todo, run).await)
            }
        });
    let outcomes = futures::future::join_all(work).await;
    let results = all
        .into_iter()
        .zip(outcomes)
        .filter_map(|(s, o)| o.map(|o| (s, o)))
        .collect();
    finish(ctx, results, run.json).await
}

/// Asks every cluster which of the ids it already holds (and, when there is a choice, how
/// many tenants it has). Fails when any cluster cannot be asked: nothing is created then.
async fn ask_clusters<'a>(
    ctx: &Ctx,
    all: &'a [Target],
    tenants: &[Tenant],
    migrations: &MigrationSet,
) -> anyhow::Result<Vec<Known<'a>>> {
    let id_list: Vec<String> = tenants.iter().map(|t| t.id().to_string()).collect();
    let id_list = &id_list;
    let mut known = futures::future::join_all(all.iter().map(|t| async move {
        let selected = ctx.targets.iter().any(|c| c.name == t.name);
        // Selected clusters get their control schema now (they may receive tenants).
        let session = ctx.session(t, selected).await?;
        if !selected && !session.control.exists(&session.client).await? {
            return anyhow::Ok(Known {
                session,
                existing: HashMap::new(),
                active: 0,
            });
        }
        // Sent together (one round trip): the files' order check and the ids' lookup.
        let (order, rows) = futures::join!(
            async {
                match selected {
                    true => crate::engine::files::refuse_unfaithful(&session, migrations).await,
                    false => Ok(()),
                }
            },
            session.control.tenants(&session.client, Some(id_list))
        );
        order?;
        let existing = rows?
            .into_iter()
            .filter(|r| r.state == TenantState::Active)
            .map(|r| (r.tenant.id().to_string(), r.version))
            .collect();
        // Placement needs the counts only when there is a choice.
        let active = if ctx.targets.len() > 1 && selected {
            session.control.active_count(&session.client).await?
        } else {
            0
        };
        anyhow::Ok(Known {
            session,
            existing,
            active,
        })
    }))
    .await;
    if let Some(i) = known
        .iter()
        .position(|k| matches!(k, Err(e) if crate::exit::code_for(e) == crate::exit::USAGE))
    {
        return Err(known.swap_remove(i).err().expect("an error"));
    }
    single_error(ctx, &mut known)?;
    let unreachable = failed_names(all, &known);
    if !unreachable.is_empty() {
        return Err(crate::exit::UnreachableError(format!(
            "tenant ids are unique across clusters, and these could not be asked whether the ids exist there: {}; nothing was created. Re-run once they are back",
            unreachable.join("; ")
        ))
        .into());
    }
    Ok(known.into_iter().flatten().collect())
}

/// Placement: new ids go to the selected cluster with the fewest active tenants, one at a
/// time (a batch spreads out); existing ids are refused (or, with --if-not-exists, counted
/// as done) on the cluster that has them. One list of each per cluster, in `all`'s order.
type Placement = (Vec<Vec<Planned>>, Vec<Vec<(Tenant, Failure)>>);

fn place_all(
    ctx: &Ctx,
    all: &[Target],
    clusters: &[Known<'_>],
    tenants: Vec<Tenant>,
    if_not_exists: bool,
) -> Placement {
    let mut plan: Vec<Vec<Planned>> = vec![Vec::new(); clusters.len()];
    let mut refused: Vec<Vec<(Tenant, Failure)>> = vec![Vec::new(); clusters.len()];
    let mut load: Vec<i64> = clusters.iter().map(|k| k.active).collect();
    let eligible: Vec<bool> = all
        .iter()
        .map(|t| ctx.targets.iter().any(|c| c.name == t.name))
        .collect();
    for t in tenants {
        let home = clusters
            .iter()
            .position(|k| k.existing.contains_key(t.id()));
        let Some(i) = home else {
            let i = place(&mut load, &eligible);
            plan[i].push(Planned {
                tenant: t,
                version: None,
                todo: true,
            });
            continue;
        };
        let version = clusters[i].existing[t.id()];
        if if_not_exists {
            plan[i].push(Planned {
                tenant: t,
                version,
                todo: false,
            });
            continue;
        }
        let on = if ctx.multi() {
            format!(" (on cluster {})", all[i].name)
        } else {
            String::new()
        };
        let failure = Failure::new(
            FailureKind::AlreadyExists,
            format!("already registered{on}, at {}", version_label(version)),
            version,
        );
        refused[i].push((t, failure));
    }
    (plan, refused)
}

/// The cluster for one more new tenant: the eligible one with the fewest (the first of
/// equals), whose count then grows by one.
fn place(load: &mut [i64], eligible: &[bool]) -> usize {
    let i = (0..load.len())
        .filter(|i| eligible[*i])
        .min_by_key(|i| load[*i])
        .expect("at least one cluster is selected");
    load[i] += 1;
    i
}

/// What one cluster registers.
struct Work {
    in_scope: Vec<Planned>,
    refused: Vec<(Tenant, Failure)>,
    scope: String,
}

/// What every cluster's part of a create/adopt shares.
struct Registering<'a> {
    migrations: &'a MigrationSet,
    shared: Option<&'a MigrationSet>,
    request: &'a Registration<'a>,
    labels: &'a HashMap<String, Labels>,
}

/// One cluster's part of create/adopt: its pending shared migrations first (for new
/// tenants), then its tenants, recorded as one run.
async fn register_on(
    ctx: &Ctx,
    mut session: Session<'_>,
    how: &Registering<'_>,
    work: Work,
    run: &RunOpts,
) -> anyhow::Result<Done> {
    let (migrations, shared, request) = (how.migrations, how.shared, how.request);
    let shared_schema = &ctx.config.migrations.shared_schema;
    let mut shared_line = String::new();
    let mut shared_json = serde_json::Value::Null;
    let creates = work.in_scope.iter().any(|p| p.todo);
    if let (Some(set), true) = (shared, creates) {
        let applied = apply_shared_recorded(
            &session,
            &ctx.config,
            &ctx.actor,
            set,
            RunCommand::TenantCreateShared,
        )
        .await;
        match applied {
            Ok(a) => {
                if a.count > 0 {
                    shared_line = format!(
                        "shared: schema {shared_schema} {} -> {}: {} shared migration(s) applied first\n",
                        version_label(a.before),
                        version_label(a.after),
                        a.count
                    );
                }
                shared_json = json!({
                    "schema": shared_schema, "version_before": a.before, "version": a.after,
                    "applied": a.count, "pending": 0, "failure": null,
                });
            }
            Err(f) => anyhow::bail!(
                "shared migrations in schema {shared_schema} failed: {f}; no tenant was created on this cluster (their migrations may need the shared tables)"
            ),
        }
    }
    let env = ctx.run_env(session.target);
    let result = engine_run::run(
        &mut session,
        &env,
        RunRequest {
            mode: request.mode,
            migrations,
            target: request.target,
            scope: work.scope,
            tenants: work.in_scope,
            refused: work.refused,
            labels: how.labels.clone(),
            waves: None,
            seed: request.seed.as_ref(),
            load: request.load,
            sql: None,
            resume: false,
            fail_fast: run.fail_fast,
        },
    )
    .await?;
    Ok(run_output(&result).prepend(&shared_line, "shared", shared_json))
}

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn new_tenants_go_where_there_are_fewest() {
        let mut load = vec![10, 10, 11];
        let all = [true, true, true];
        let picks: Vec<usize> = (0..5).map(|_| place(&mut load, &all)).collect();
        assert_eq!(picks, [0, 1, 0, 1, 2]);
        assert_eq!(load, [12, 12, 12]);
        // Only the selected clusters (--cluster) are eligible, however full.
        let mut load = vec![0, 50, 9];
        assert_eq!(place(&mut load, &[false, true, false]), 1);
        assert_eq!(load, [0, 51, 9]);
    }
}
