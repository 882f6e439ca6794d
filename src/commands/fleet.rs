//! The orchestration of a fleet command (migrate, rollback) across clusters: read every
//! cluster's registry, narrow to the tenants asked for, check the request against the files,
//! then plan (--dry-run) or run on every cluster at once under its fleet lock, with the
//! shared migrations first and a staged rollout's gate between the clusters.

use std::sync::Arc;

use serde_json::json;

use crate::cli::FleetOpts;
use crate::config::Target;
use crate::control::{RunCommand, TenantState};
use crate::db::Session;
use crate::engine::apply::Mode;
use crate::engine::plan::{self, Direction, Step};
use crate::engine::run::{self as engine_run, scope_of, Planned, RunEnv, RunRequest};
use crate::engine::shared::{apply_shared_recorded, shared_version};
use crate::engine::waves::{Gate, WavePlan, WaveSpec};
use crate::exit::{self, UsageError};
use crate::migrations::{version_label, MigrationSet};
use crate::report::summary::no_run_part;
use crate::tenant::Tenant;

use super::clusters::{finish, single_error, Done};
use super::migrate::{plan_output, Sides};
use super::{parse_ids, run_output, Ctx};

/// One cluster after phase 1: connected, fleet lock held, tenants read and checked.
struct Prepared<'a> {
    session: Session<'a>,
    active: Vec<Active>,
    env: RunEnv<'a>,
    /// Whether a run has anything to do here, when the first look found out.
    idle: Idle,
}

/// What a fleet command's first look found (see [`engine_run::probe`]).
enum Idle {
    /// Work to do, or no clear look: the full way.
    No,
    /// Nothing to do: the probe's transaction is open, holding the fleet lock, to record
    /// the run in.
    ToRecord,
    /// Nothing to do, and the run already recorded (see [`engine_run::record_if_idle`]).
    Recorded(Box<engine_run::Recorded>),
}

/// An active tenant in scope, as the registry has it.
struct Active {
    tenant: Tenant,
    version: Option<i32>,
    /// Drift-marked by an earlier run.
    drifted: bool,
    labels: crate::labels::Labels,
}

/// migrate and rollback: everything after the command-specific checks. Phase 1 prepares
/// every cluster (so that a request that is wrong anywhere changes nothing anywhere);
/// phase 2 runs them all at once.
pub async fn fleet_command(
    ctx: &Ctx,
    migrations: &MigrationSet,
    direction: Direction,
    tenant_ids: Option<&[String]>,
    opts: FleetOpts,
    sides: Sides<'_>,
) -> anyhow::Result<i32> {
    let wanted: Option<Vec<Tenant>> = tenant_ids
        .map(|ids| parse_ids(&ctx.config, ids))
        .transpose()?;
    let wanted_ids: Option<Vec<String>> = wanted
        .as_ref()
        .map(|ts| ts.iter().map(|t| t.id().to_string()).collect());
    let opts = &opts;
    let select = super::selector(opts.select.as_deref())?;
    let waves = WaveSpec::parse(&opts.waves.ask())?;
    // The whole fleet (--all, nothing narrowing it) includes the pool: a pooled schema left
    // behind would give `tenant create` a tenant at an old version.
    let with_pool = wanted_ids.is_none() && select.is_none() && !opts.failed && sides.tenants;
    // A run with nothing to do can be found so, and recorded, in one transaction (see
    // engine_run::probe): not for a dry run (which takes no lock), a staged rollout or a
    // shared set (their runs record more).
    let probe = (!opts.dry_run
        && !opts.failed
        && waves.is_none()
        && sides.shared.is_none()
        && sides.tenants)
        .then_some(direction);
    // On one cluster, over the whole fleet, the server can decide in the same transaction
    // and record the run (engine_run::record_if_idle): there is nothing the other clusters
    // or the tenant list could still refuse after it.
    let at_once = with_pool && ctx.targets.len() == 1;
    let mut prepared = futures::future::join_all(ctx.targets.iter().map(|t| {
        let ask = Ask {
            ids: wanted_ids.as_deref(),
            with_pool,
            probe,
            at_once,
        };
        prepare(ctx, t, migrations, ask, opts)
    }))
    .await;
    if let Some(i) = prepared
        .iter()
        .position(|p| matches!(p, Err(e) if exit::code_for(e) == exit::USAGE))
    {
        return Err(prepared.swap_remove(i).err().expect("an error"));
    }
    single_error(ctx, &mut prepared)?;
    if let Some(wanted) = &wanted_ids {
        super::require_registered(wanted, &ctx.targets, &prepared, |p, id| {
            p.active.iter().any(|a| a.tenant.id() == id)
        })?;
    }
    // --select narrows what --all or --tenant chose; matching nothing is an error (a typo
    // must not pass as a successful deploy).
    if let Some(sel) = &select {
        for p in prepared.iter_mut().flatten() {
            p.active.retain(|a| sel.matches(&a.labels));
        }
        if prepared.iter().flatten().all(|p| p.active.is_empty()) && sides.tenants {
            return Err(super::nothing_selected(sel));
        }
    }
    // --failed narrows to the tenants whose last change failed, on every cluster; none is
    // nothing to do, not an error.
    if opts.failed {
        for p in prepared.iter_mut().flatten() {
            let failed = p.session.control.failed_last(&p.session.client).await?;
            p.active.retain(|a| failed.contains(a.tenant.id()));
        }
    }
    if let Direction::Backward { to } = direction {
        let needs = prepared
            .iter()
            .flatten()
            .flat_map(|p| p.active.iter().map(|a| a.version));
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
    // What would be applied must pass `migration check` (its errors gate, as it says).
    let versions: Vec<Option<i32>> = prepared
        .iter()
        .flatten()
        .flat_map(|p| p.active.iter().map(|a| a.version))
        .collect();
    super::gate(
        &ctx.config,
        migrations,
        |v| match direction {
            Direction::Forward { target } => {
                target.is_none_or(|t| v <= t) && versions.iter().any(|a| a.is_none_or(|a| a < v))
            }
            Direction::Backward { .. } => false,
        },
        |v| match direction {
            Direction::Forward { .. } => false,
            Direction::Backward { to } => {
                v > to && versions.iter().any(|a| a.is_some_and(|a| a >= v))
            }
        },
    )?;
    // With given tenants (every one found above), a cluster holding none of them is left
    // out, reachable or not: ids are unique across clusters.
    let chosen = wanted_ids.is_some() || select.is_some();
    let explicit = chosen || opts.failed;
    let (clusters, prepared): (Vec<Target>, Vec<_>) = ctx
        .targets
        .iter()
        .cloned()
        .zip(prepared)
        .filter(|(_, p)| !chosen || matches!(p, Ok(p) if !p.active.is_empty()))
        .unzip();
    // A staged rollout: waves over the whole selected fleet, every cluster's seat at the
    // gate taken before any starts.
    let staged = match &waves {
        Some(spec) if sides.tenants => {
            let fleet: Vec<(String, crate::labels::Labels)> = prepared
                .iter()
                .flatten()
                .flat_map(|p| {
                    p.active
                        .iter()
                        .filter(|a| !a.tenant.is_pooled())
                        .map(|a| (a.tenant.id().to_string(), a.labels.clone()))
                })
                .collect();
            let waves = Arc::new(spec.assign(&fleet)?);
            Some((Gate::new(spec.rules.clone(), waves.clone()), waves))
        }
        _ => None,
    };
    let plans: Vec<Option<WavePlan>> = prepared
        .iter()
        .map(|p| match (p, &staged) {
            (Ok(p), Some((gate, waves))) => {
                let mine: std::collections::HashSet<&str> =
                    p.active.iter().map(|a| a.tenant.id()).collect();
                // Pooled schemas go with the last wave: no tenant waits on them, and none
                // is created from a pooled schema ahead of the fleet.
                let last = waves.len().saturating_sub(1);
                let wave_of = waves
                    .iter()
                    .enumerate()
                    .flat_map(|(w, ids)| {
                        ids.iter()
                            .filter(|id| mine.contains(id.as_str()))
                            .map(move |id| (id.clone(), w))
                    })
                    .chain(
                        p.active
                            .iter()
                            .filter(|a| a.tenant.is_pooled())
                            .map(|a| (a.tenant.id().to_string(), last)),
                    )
                    .collect();
                Some(WavePlan {
                    wave_of,
                    waves: waves.clone(),
                    seat: gate.seat(),
                })
            }
            _ => None,
        })
        .collect();
    let all_waves = staged.as_ref().map(|(_, w)| w.clone());
    let outcomes = futures::future::join_all(prepared.into_iter().zip(plans).map(|(p, plan)| {
        let all_waves = all_waves.clone();
        async move {
            match p {
                Ok(p) => {
                    let how = Execution {
                        direction,
                        explicit,
                        opts,
                        sides,
                        waves: plan,
                        all_waves,
                    };
                    execute(ctx, p, migrations, how).await
                }
                Err(e) => Err(e),
            }
        }
    }))
    .await;
    finish(
        ctx,
        clusters.into_iter().zip(outcomes).collect(),
        opts.run.json,
    )
    .await
}

/// What phase 1 reads on each cluster.
#[derive(Clone, Copy)]
struct Ask<'a> {
    /// --tenant/--from-file (None: every tenant).
    ids: Option<&'a [String]>,
    /// The pool's schemas too.
    with_pool: bool,
    /// Try finding nothing to do in one transaction first (see [`engine_run::probe`]).
    probe: Option<Direction>,
    /// With `probe`: let the server decide, and record the run, in that transaction.
    at_once: bool,
}

async fn prepare<'a>(
    ctx: &'a Ctx,
    target: &'a Target,
    migrations: &MigrationSet,
    ask: Ask<'_>,
    opts: &FleetOpts,
) -> anyhow::Result<Prepared<'a>> {
    let Ask {
        ids: wanted_ids,
        with_pool,
        probe,
        at_once,
    } = ask;
    if let Some(direction) = probe {
        let session = Session::connect(target, &ctx.config.control_schema).await?;
        let (command, target_version) = match direction {
            Direction::Forward { target } => (RunCommand::Migrate, target),
            Direction::Backward { to } => (RunCommand::Rollback, Some(to)),
        };
        let env = ctx.run_env(target);
        if at_once {
            let work =
                |version: &str, drifted: &str| todo_sql(migrations, direction, version, drifted);
            let recorded = engine_run::record_if_idle(
                &session,
                &env,
                (command, target_version),
                migrations,
                work,
            )
            .await?;
            if let Some(recorded) = recorded {
                return Ok(Prepared {
                    session,
                    active: Vec::new(),
                    env,
                    idle: Idle::Recorded(Box::new(recorded)),
                });
            }
            engine_run::settle_fleet(&session, &env, opts.wait, false).await?;
            return read_fleet(session, env, migrations, wanted_ids, with_pool).await;
        }
        let found = engine_run::probe(&session, command, migrations, wanted_ids, with_pool).await?;
        // Still open: the probe found no obstacle (its transaction is to be ended).
        let open = found.is_some();
        if let Some(found) = found {
            let active = active_of(found.tenants, found.pool);
            if active.iter().all(|a| !todo(migrations, a, direction)) {
                return Ok(Prepared {
                    session,
                    active,
                    env,
                    idle: Idle::ToRecord,
                });
            }
        }
        engine_run::settle_fleet(&session, &env, opts.wait, open).await?;
        return read_fleet(session, env, migrations, wanted_ids, with_pool).await;
    }
    let (session, env) = ctx.fleet_session(target, opts.dry_run, opts.wait).await?;
    read_fleet(session, env, migrations, wanted_ids, with_pool).await
}

/// Whether a run works on `a`. A drift-marked tenant is looked at again even when it seems
/// current: if its files were restored, the check passes and the mark clears; if not, it
/// is reported again.
fn todo(migrations: &MigrationSet, a: &Active, direction: Direction) -> bool {
    plan::needs_work(migrations, a.version, direction)
        || (a.drifted && matches!(direction, Direction::Forward { .. }))
}

/// [`todo`] as a SQL condition over a registry row's `version` and `drifted` (SQL).
fn todo_sql(
    migrations: &MigrationSet,
    direction: Direction,
    version: &str,
    drifted: &str,
) -> String {
    let needs = plan::needs_work_sql(migrations, version, direction);
    match direction {
        Direction::Forward { .. } => format!("({needs} OR {drifted})"),
        Direction::Backward { .. } => needs,
    }
}

/// The active tenants of the registry's rows, then the pool's schemas.
fn active_of(
    rows: Vec<crate::control::TenantRow>,
    pool: Vec<(Tenant, Option<i32>)>,
) -> Vec<Active> {
    let mut active: Vec<Active> = rows
        .into_iter()
        .filter(|r| r.state == TenantState::Active)
        .map(|r| Active {
            drifted: r.drift.is_some(),
            tenant: r.tenant,
            version: r.version,
            labels: r.labels,
        })
        .collect();
    active.extend(pool.into_iter().map(|(tenant, version)| Active {
        tenant,
        version,
        drifted: false,
        labels: Default::default(),
    }));
    active
}

/// Phase 1's reads, under the fleet lock.
async fn read_fleet<'a>(
    session: Session<'a>,
    env: RunEnv<'a>,
    migrations: &MigrationSet,
    wanted_ids: Option<&[String]>,
    with_pool: bool,
) -> anyhow::Result<Prepared<'a>> {
    // Nothing to read on a dry run before the control schema exists. Otherwise the registry,
    // the out-of-order check and the pool are read in one round trip (after the fleet lock
    // and the reaping, which `lock_fleet` has awaited).
    let exists = session.control.exists(&session.client).await?;
    let (rows, in_order, pool) = futures::join!(
        async {
            match exists {
                true => session.control.tenants(&session.client, wanted_ids).await,
                false => Ok(Vec::new()),
            }
        },
        crate::engine::files::refuse_unfaithful(&session, migrations),
        async {
            match with_pool && exists {
                true => session.control.pool(&session.client).await,
                false => Ok(Vec::new()),
            }
        }
    );
    let rows = rows?;
    in_order?;
    let pool = pool?;
    Ok(Prepared {
        session,
        active: active_of(rows, pool),
        env,
        idle: Idle::No,
    })
}

/// How one cluster's part of a migrate/rollback runs.
struct Execution<'a> {
    direction: Direction,
    /// The tenants were chosen (--tenant, --select): the run's scope is that list.
    explicit: bool,
    opts: &'a FleetOpts,
    sides: Sides<'a>,
    /// This cluster's part of a staged rollout.
    waves: Option<WavePlan>,
    /// Every wave's tenants, fleet-wide (for the plan).
    all_waves: Option<Arc<Vec<Vec<String>>>>,
}

async fn execute(
    ctx: &Ctx,
    p: Prepared<'_>,
    migrations: &MigrationSet,
    how: Execution<'_>,
) -> anyhow::Result<Done> {
    let Execution {
        direction,
        explicit,
        opts,
        sides,
        waves,
        all_waves,
    } = how;
    let Prepared {
        mut session,
        active,
        env,
        idle,
    } = p;
    let shared = match sides.shared {
        Some(set) => match shared_step(ctx, &session, set, opts.dry_run, direction).await? {
            Ok(step) => Some(step),
            Err(failed) => return Ok(failed),
        },
        None => None,
    };
    let with_shared = |done: Done| match &shared {
        Some((line, value)) => done.prepend(line, "shared", value.clone()),
        None => done.prepend("", "shared", serde_json::Value::Null),
    };
    let (mode, target) = match direction {
        Direction::Forward { target } => (Mode::Migrate, target),
        Direction::Backward { to } => (Mode::Rollback { to }, Some(to)),
    };
    if !sides.tenants {
        // --shared-only: the same document, with no tenants.
        let part = no_run_part(mode.command(), target).top("dry_run", json!(opts.dry_run));
        return Ok(with_shared(Done::new(exit::SUCCESS, String::new(), part)));
    }
    if opts.dry_run {
        let steps: Vec<Step> = active
            .iter()
            .filter_map(|a| plan::step(migrations, &a.tenant, a.version, direction))
            .collect();
        let labels: std::collections::HashMap<&str, &crate::labels::Labels> =
            active.iter().map(|a| (a.tenant.id(), &a.labels)).collect();
        return Ok(with_shared(plan_output(
            mode.command(),
            direction,
            target,
            active.len(),
            &steps,
            &labels,
            all_waves.as_deref().map(Vec::as_slice),
        )));
    }
    let scope = if explicit {
        let list: Vec<Tenant> = active.iter().map(|a| a.tenant.clone()).collect();
        scope_of(Some(&list))
    } else {
        scope_of(None)
    };
    let tenants = active
        .into_iter()
        .map(|a| Planned {
            todo: todo(migrations, &a, direction),
            tenant: a.tenant,
            version: a.version,
        })
        .collect();
    let req = RunRequest {
        mode,
        migrations,
        target,
        scope,
        tenants,
        refused: Vec::new(),
        labels: std::collections::HashMap::new(),
        waves,
        seed: None,
        resume: !opts.fresh,
        fail_fast: opts.run.fail_fast,
    };
    let result = match idle {
        Idle::ToRecord => engine_run::record_nothing_to_do(&session, &env, req).await?,
        Idle::Recorded(r) => {
            let total = usize::try_from(r.run.total).unwrap_or_default();
            engine_run::nothing_done(
                &env,
                req.mode.command(),
                target,
                r.run_id,
                total,
                Some(r.run),
            )
        }
        Idle::No => engine_run::run(&mut session, &env, req).await?,
    };
    Ok(with_shared(run_output(&result)))
}

/// The shared set on one cluster: applied (or, in a dry run, planned) before its tenants.
/// Ok((line, json)) to put before the cluster's result; Err(done) when it failed, in which
/// case the cluster's tenants are not started.
async fn shared_step(
    ctx: &Ctx,
    session: &Session<'_>,
    set: &MigrationSet,
    dry_run: bool,
    direction: Direction,
) -> anyhow::Result<Result<(String, serde_json::Value), Done>> {
    let schema = &ctx.config.migrations.shared_schema;
    if dry_run {
        let at = shared_version(&session.client, schema).await?;
        let pending = set.pending_count(at, None);
        return Ok(Ok((
            format!(
                "shared: schema {schema} at {}, {pending} shared migration(s) would apply\n",
                version_label(at)
            ),
            json!({ "schema": schema, "version_before": at, "version": at, "applied": 0, "pending": pending, "failure": null }),
        )));
    }
    match apply_shared_recorded(
        session,
        &ctx.config,
        &ctx.actor,
        set,
        RunCommand::MigrateShared,
    )
    .await
    {
        Ok(a) => Ok(Ok((
            if a.count == 0 {
                format!(
                    "shared: schema {schema} up to date at {}\n",
                    version_label(a.after)
                )
            } else {
                format!(
                    "shared: schema {schema} {} -> {}: {} shared migration(s) applied\n",
                    version_label(a.before),
                    version_label(a.after),
                    a.count
                )
            },
            json!({ "schema": schema, "version_before": a.before, "version": a.after, "applied": a.count, "pending": 0, "failure": null }),
        ))),
        Err(f) => {
            let text = format!(
                "shared migrations in schema {schema} failed: {f}. This cluster's tenants were not started (their migrations may need the shared tables); fix the shared migration and re-run\n"
            );
            let target = match direction {
                Direction::Forward { target } => target,
                Direction::Backward { to } => Some(to),
            };
            let part = no_run_part(RunCommand::Migrate, target)
                .cluster(
                    "shared",
                    json!({ "schema": schema, "version_before": f.still_at, "version": f.still_at, "applied": 0,
                            "pending": set.pending_count(f.still_at, None), "failure": f.row() }),
                );
            let mut done = Done::new(exit::FAILED, text, part);
            done.down = true;
            Ok(Err(done))
        }
    }
}
