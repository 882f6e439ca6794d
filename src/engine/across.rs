//! A fleet command (migrate, rollback) across clusters, with the run lifecycle it drives:
//! phase 1 prepares every cluster at once (connected, fleet lock held, registry read, every
//! file checked against what the fleet applied) so that a request that is wrong anywhere
//! changes nothing anywhere; the request is narrowed (--tenant, --select, --failed) and
//! checked (rollback scripts, the `migration check` gate); phase 2 plans (dry run) or runs on
//! every cluster at once, the shared migrations first and a staged rollout's gate between the
//! clusters. Each cluster's outcome comes back as data: the command renders it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Target};
use crate::control::{RunCommand, TenantState};
use crate::db::Session;
use crate::engine::apply::{Applied, Mode};
use crate::engine::checks;
use crate::engine::failure::Failure;
use crate::engine::plan::{self, Direction, Step};
use crate::engine::run::{self as engine_run, scope_of, Planned, RunEnv, RunRequest, RunResult};
use crate::engine::shared::{apply_shared_recorded, shared_version};
use crate::engine::waves::{WavePlan, WaveSpec};
use crate::exit::{self, UsageError};
use crate::labels::{Labels, Selector};
use crate::migrations::MigrationSet;
use crate::tenant::Tenant;

/// What a fleet command runs with: the configuration, the selected clusters, and what a run
/// on one of them needs besides its request (who runs it, where its events and signals go).
pub trait Host {
    fn config(&self) -> &Config;
    fn targets(&self) -> &[Target];
    fn run_env<'a>(&'a self, target: &'a Target) -> RunEnv<'a>;
}

/// The session of a fleet command on `target` and what its run needs: the control schema
/// created if needed and the fleet lock taken (waiting up to `wait`), except on a dry run,
/// which changes nothing.
pub async fn fleet_session<'a>(
    host: &'a impl Host,
    target: &'a Target,
    dry_run: bool,
    wait: Option<Duration>,
) -> anyhow::Result<(Session<'a>, RunEnv<'a>)> {
    let session = Session::open(target, &host.config().control_schema, !dry_run).await?;
    let env = host.run_env(target);
    if !dry_run {
        engine_run::lock_fleet(&session, &env, wait).await?;
    }
    Ok((session, env))
}

/// A migrate or rollback as asked, its arguments read and checked.
pub struct FleetRequest<'a> {
    pub migrations: &'a MigrationSet,
    pub direction: Direction,
    /// The shared set, applied first on each cluster (migrate only).
    pub shared: Option<&'a MigrationSet>,
    /// The tenants' migrations too (false: `--shared-only`).
    pub tenants: bool,
    /// `--tenant`/`--from-file`, validated (None: every tenant).
    pub ids: Option<Vec<String>>,
    pub select: Option<Selector>,
    pub waves: Option<WaveSpec>,
    pub failed: bool,
    pub dry_run: bool,
    pub wait: Option<Duration>,
    /// `--fresh`: start a new run instead of resuming an interrupted one.
    pub fresh: bool,
    pub fail_fast: bool,
}

/// How the shared set went on one cluster.
#[derive(Clone)]
pub enum SharedStep {
    /// A dry run: where it is, and how many would apply.
    Planned { at: Option<i32>, pending: usize },
    Applied {
        before: Option<i32>,
        after: Option<i32>,
        count: usize,
    },
    /// It failed: the cluster's tenants were not started; `pending` from where it stands.
    Failed {
        failure: Box<Failure>,
        pending: usize,
    },
}

/// What a fleet command did on one cluster.
pub struct ClusterOutcome {
    pub shared: Option<SharedStep>,
    pub work: Work,
}

/// The tenants' part of it.
pub enum Work {
    /// Nothing for the tenants: `--shared-only`, or the shared set failed.
    None,
    /// A dry run's plan.
    Plan(Plan),
    Ran(Box<RunResult>),
}

/// What a dry run would do on one cluster.
pub struct Plan {
    /// The tenants in scope.
    pub tenants: usize,
    /// Those that would change, each with what would apply.
    pub steps: Vec<Step>,
    pub labels: HashMap<String, Labels>,
    /// Every wave's tenants, fleet-wide (a staged rollout).
    pub waves: Option<Arc<Vec<Vec<String>>>>,
}

/// Every cluster's outcome, in the order of the clusters that took part (with given tenants,
/// those holding any), or the error that stopped the request before anything changed.
pub type Outcomes = Vec<(Target, anyhow::Result<ClusterOutcome>)>;

/// migrate and rollback across the host's clusters (see the module's documentation).
pub async fn run(host: &impl Host, req: FleetRequest<'_>) -> anyhow::Result<Outcomes> {
    let config = host.config();
    let targets = host.targets();
    let req = &req;
    let (migrations, direction) = (req.migrations, req.direction);
    let (wanted_ids, select, waves) = (&req.ids, &req.select, &req.waves);
    // The whole fleet (--all, nothing narrowing it) includes the pool: a pooled schema left
    // behind would give `tenant create` a tenant at an old version.
    let with_pool = wanted_ids.is_none() && select.is_none() && !req.failed && req.tenants;
    // A run with nothing to do can be found so, and recorded, in one transaction (see
    // engine_run::probe): not for a dry run (which takes no lock), a staged rollout or a
    // shared set (their runs record more).
    let probe =
        (!req.dry_run && !req.failed && waves.is_none() && req.shared.is_none() && req.tenants)
            .then_some(direction);
    // On one cluster, over the whole fleet, the server can decide in the same transaction
    // and record the run (engine_run::record_if_idle): there is nothing the other clusters
    // or the tenant list could still refuse after it.
    let at_once = with_pool && targets.len() == 1;
    let mut prepared = futures::future::join_all(targets.iter().map(|t| {
        let ask = Ask {
            ids: wanted_ids.as_deref(),
            with_pool,
            probe,
            at_once,
        };
        prepare(host, t, req, ask)
    }))
    .await;
    if let Some(i) = prepared
        .iter()
        .position(|p| matches!(p, Err(e) if exit::code_for(e) == exit::USAGE))
    {
        return Err(prepared.swap_remove(i).err().expect("an error"));
    }
    checks::single_error(config.multi_cluster, &mut prepared)?;
    if let Some(wanted) = &wanted_ids {
        checks::require_registered(wanted, targets, &prepared, |p, id| {
            p.active.iter().any(|a| a.tenant.id() == id)
        })?;
    }
    // --select narrows what --all or --tenant chose; matching nothing is an error (a typo
    // must not pass as a successful deploy).
    if let Some(sel) = &select {
        for p in prepared.iter_mut().flatten() {
            p.active.retain(|a| sel.matches(&a.labels));
        }
        if prepared.iter().flatten().all(|p| p.active.is_empty()) && req.tenants {
            return Err(checks::nothing_selected(sel));
        }
    }
    // --failed narrows to the tenants whose last change failed, on every cluster; none is
    // nothing to do, not an error.
    if req.failed {
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
    checks::gate(
        config,
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
    let explicit = chosen || req.failed;
    let (clusters, prepared): (Vec<Target>, Vec<_>) = targets
        .iter()
        .cloned()
        .zip(prepared)
        .filter(|(_, p)| !chosen || matches!(p, Ok(p) if !p.active.is_empty()))
        .unzip();
    // A staged rollout: waves over the whole selected fleet, every cluster's seat at the
    // gate taken before any starts.
    let in_scope: Vec<Option<Vec<(&Tenant, &Labels)>>> = prepared
        .iter()
        .map(|p| {
            p.as_ref()
                .ok()
                .map(|p| p.active.iter().map(|a| (&a.tenant, &a.labels)).collect())
        })
        .collect();
    let (plans, all_waves) = match waves {
        Some(spec) if req.tenants => crate::engine::waves::stage(spec, &in_scope)?,
        _ => (in_scope.iter().map(|_| None).collect(), None),
    };
    let outcomes = futures::future::join_all(prepared.into_iter().zip(plans).map(|(p, plan)| {
        let all_waves = all_waves.clone();
        async move {
            match p {
                Ok(p) => {
                    let how = Execution {
                        explicit,
                        waves: plan,
                        all_waves,
                    };
                    execute(config, p, req, how).await
                }
                Err(e) => Err(e),
            }
        }
    }))
    .await;
    Ok(clusters.into_iter().zip(outcomes).collect())
}

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
    labels: Labels,
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
    host: &'a impl Host,
    target: &'a Target,
    req: &FleetRequest<'_>,
    ask: Ask<'_>,
) -> anyhow::Result<Prepared<'a>> {
    let (config, migrations) = (host.config(), req.migrations);
    let Ask {
        ids: wanted_ids,
        with_pool,
        probe,
        at_once,
    } = ask;
    if let Some(direction) = probe {
        let session = Session::connect(target, &config.control_schema).await?;
        let (command, target_version) = match direction {
            Direction::Forward { target } => (RunCommand::Migrate, target),
            Direction::Backward { to } => (RunCommand::Rollback, Some(to)),
        };
        let env = host.run_env(target);
        in_motion(config, &session, &env, req.dry_run).await?;
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
            engine_run::settle_fleet(&session, &env, req.wait, false).await?;
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
        engine_run::settle_fleet(&session, &env, req.wait, open).await?;
        return read_fleet(session, env, migrations, wanted_ids, with_pool).await;
    }
    let (session, env) = fleet_session(host, target, req.dry_run, req.wait).await?;
    in_motion(config, &session, &env, req.dry_run).await?;
    read_fleet(session, env, migrations, wanted_ids, with_pool).await
}

/// Tenants in a move are not worked on (each named in a warning); a move that cut over
/// without its target flipped is finished first, unless this is a dry run (see
/// [`crate::engine::mover::settle`]).
pub async fn in_motion(
    config: &Config,
    session: &Session<'_>,
    env: &RunEnv<'_>,
    dry_run: bool,
) -> anyhow::Result<()> {
    for message in crate::engine::mover::settle::settle(config, session, !dry_run).await? {
        env.events
            .emit(&crate::engine::events::Event::Warning { message: &message });
    }
    Ok(())
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
struct Execution {
    /// The tenants were chosen (--tenant, --select): the run's scope is that list.
    explicit: bool,
    /// This cluster's part of a staged rollout.
    waves: Option<WavePlan>,
    /// Every wave's tenants, fleet-wide (for the plan).
    all_waves: Option<Arc<Vec<Vec<String>>>>,
}

async fn execute(
    config: &Config,
    p: Prepared<'_>,
    req: &FleetRequest<'_>,
    how: Execution,
) -> anyhow::Result<ClusterOutcome> {
    let Execution {
        explicit,
        waves,
        all_waves,
    } = how;
    let (migrations, direction) = (req.migrations, req.direction);
    let Prepared {
        mut session,
        active,
        env,
        idle,
    } = p;
    let shared = match req.shared {
        Some(set) => Some(shared_step(config, &session, env.actor, set, req.dry_run).await?),
        None => None,
    };
    let outcome = |work: Work| ClusterOutcome {
        shared: shared.clone(),
        work,
    };
    if matches!(shared, Some(SharedStep::Failed { .. })) || !req.tenants {
        // The shared set failed (the tenants' migrations may need it), or --shared-only.
        return Ok(outcome(Work::None));
    }
    let (mode, target) = match direction {
        Direction::Forward { target } => (Mode::Migrate, target),
        Direction::Backward { to } => (Mode::Rollback { to }, Some(to)),
    };
    if req.dry_run {
        let steps: Vec<Step> = active
            .iter()
            .filter_map(|a| plan::step(migrations, &a.tenant, a.version, direction))
            .collect();
        let labels = active
            .iter()
            .map(|a| (a.tenant.id().to_string(), a.labels.clone()))
            .collect();
        return Ok(outcome(Work::Plan(Plan {
            tenants: active.len(),
            steps,
            labels,
            waves: all_waves,
        })));
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
        load: None,
        sql: None,
        resume: !req.fresh,
        fail_fast: req.fail_fast,
    };
    let result = match idle {
        Idle::ToRecord => engine_run::record_nothing_to_do(&session, &env, req).await?,
        Idle::Recorded(r) => {
            let total = usize::try_from(r.run.total).unwrap_or_default();
            engine_run::nothing_done(
                &env,
                req.mode.command(),
                (target, &req.scope),
                r.run_id,
                total,
                Some(r.run),
            )
        }
        Idle::No => engine_run::run(&mut session, &env, req).await?,
    };
    Ok(outcome(Work::Ran(Box::new(result))))
}

/// The shared set on one cluster: applied (or, in a dry run, planned) before its tenants.
async fn shared_step(
    config: &Config,
    session: &Session<'_>,
    actor: &str,
    set: &MigrationSet,
    dry_run: bool,
) -> anyhow::Result<SharedStep> {
    if dry_run {
        let at = shared_version(&session.client, &config.migrations.shared_schema).await?;
        let pending = set.pending_count(at, None);
        return Ok(SharedStep::Planned { at, pending });
    }
    Ok(
        match apply_shared_recorded(session, config, actor, set, RunCommand::MigrateShared).await {
            Ok(Applied {
                before,
                after,
                count,
                ..
            }) => SharedStep::Applied {
                before,
                after,
                count,
            },
            Err(f) => SharedStep::Failed {
                pending: set.pending_count(f.still_at, None),
                failure: Box::new(f),
            },
        },
    )
}
