//! `tenant move ID --to CLUSTER`: a tenant moved to another cluster, online (logical
//! replication) or offline, resumed where it stopped when run again. The steps are the
//! mover's (`engine::mover`); this file finds where the move stands on every cluster and
//! picks the two sides; `steps.rs` runs what is left of the move, `report.rs` says what
//! happened, `admin.rs` is `--abort` and `--cleanup`.

mod admin;
mod report;
mod steps;

use std::time::Instant;

use crate::cli::MoveArgs;
use crate::config::Target;
use crate::control::{MoveRow, RunCommand, RunCounts, TenantRow, TenantState};
use crate::db::Session;
use crate::exit::UsageError;
use crate::tenant::Tenant;

use super::clusters::finish;
use super::observed::OneShot;
use super::{load_migrations, parse_ids, Ctx};
use report::Report;
use steps::Mover;

/// What one cluster knows of the tenant.
pub(in crate::commands) struct Side<'a> {
    pub target: &'a Target,
    pub session: Session<'a>,
    pub row: Option<TenantRow>,
    /// Its unfinished move out of here, in.
    pub out: Option<MoveRow>,
    pub inn: Option<MoveRow>,
}

impl Side<'_> {
    pub fn state(&self) -> Option<TenantState> {
        self.row.as_ref().map(|r| r.state)
    }
}

/// Asks every configured cluster at once what it knows of `tenant` (nothing is created).
pub(in crate::commands) async fn locate<'a>(
    ctx: &Ctx,
    all: &'a [Target],
    tenant: &Tenant,
) -> anyhow::Result<Vec<Side<'a>>> {
    let ids = [tenant.id().to_string()];
    let ids = &ids;
    let mut asked = futures::future::join_all(all.iter().map(|t| async move {
        let session = ctx.session(t, false).await?;
        let c = session.control.clone();
        let mut side = Side {
            target: t,
            row: None,
            out: None,
            inn: None,
            session,
        };
        if !c.exists(&side.session.client).await? {
            return anyhow::Ok(side);
        }
        let client = &side.session.client;
        let current = c.is_current(client).await?;
        // Sent together: one round trip.
        let (rows, out, inn) = futures::try_join!(
            c.tenants(client, Some(ids)),
            async {
                match current {
                    true => c.open_moves(client, false, Some(&ids[0])).await,
                    false => Ok(Vec::new()),
                }
            },
            async {
                match current {
                    true => c.open_moves(client, true, Some(&ids[0])).await,
                    false => Ok(Vec::new()),
                }
            }
        )?;
        (side.row, side.out, side.inn) = (
            rows.into_iter().next(),
            out.into_iter().last(),
            inn.into_iter().last(),
        );
        anyhow::Ok(side)
    }))
    .await;
    super::clusters::single_error(ctx, &mut asked)?;
    let down = crate::engine::checks::failed_names(all, &asked);
    if !down.is_empty() {
        return Err(crate::exit::UnreachableError(format!(
            "a move needs every cluster's word on where the tenant is, and these could not be asked: {}; nothing was changed",
            down.join("; ")
        ))
        .into());
    }
    Ok(asked.into_iter().flatten().collect())
}

pub async fn move_tenant(ctx: &Ctx, args: MoveArgs) -> anyhow::Result<i32> {
    if args.cleanup {
        return admin::cleanup(ctx, &args).await;
    }
    let migrations = load_migrations(&ctx.config)?;
    let id = args.id.clone().expect("clap requires ID");
    let tenant = parse_ids(&ctx.config, std::slice::from_ref(&id))?.remove(0);
    let all = ctx.config.targets(&[])?;
    if let Some(to) = &args.to {
        if !all.iter().any(|t| &t.name == to) {
            return Err(UsageError(format!(
                "--to {to}: no such cluster in {}; its clusters: {}",
                ctx.config.path.display(),
                ctx.config.cluster_names().join(", ")
            ))
            .into());
        }
    }
    let sides = locate(ctx, &all, &tenant).await?;
    if args.abort {
        return admin::abort(ctx, sides, &tenant, &args).await;
    }
    let to = args.to.clone().expect("clap requires --to");
    let mut sides = sides;
    let started = Instant::now();
    let one = std::slice::from_ref(&tenant);
    if let Some(done) = moved_already(&sides, &tenant, &to, &args, started) {
        let nothing = RunCounts {
            unchanged: 1,
            ..RunCounts::default()
        };
        let what = (RunCommand::TenantMove, 0, None);
        OneShot::start(ctx, &done.0.name, what, 1, &[]).succeeded(0, &[], (None, None), &nothing);
        return finish(ctx, vec![(done.0, Ok(done.1))], args.opts.json).await;
    }
    let (s, t) = pick(&mut sides, &tenant, &to)?;
    let mut source = sides.remove(s);
    let t = if t > s { t - 1 } else { t };
    let mut target = sides.remove(t);
    let version = source.row.as_ref().and_then(|r| r.version);
    // The run is recorded at the cutover: until then its events have no run id.
    let what = (RunCommand::TenantMove, 0, version);
    let observed = OneShot::start(ctx, &source.target.name, what, 1, one);
    let _stop = ctx.signals.on_signal({
        let stopped = observed.interrupted(&tenant, version);
        |name| async move {
            crate::output::stderr_line(&format!(
                "{name} received: the move stopped where it was (anything uncommitted is rolled back); run the same tenant move again to carry on, or `tenant move ID --abort`"
            ));
            stopped(name);
            std::process::exit(crate::exit::INTERRUPTED);
        }
    });
    let mut mover = Mover {
        ctx,
        migrations: &migrations,
        tenant: &tenant,
        args: &args,
        report: Report::default(),
    };
    let moved = async {
        for side in [&source, &target] {
            side.session.control.bootstrap(&side.session.client).await?;
        }
        mover.run(&mut source, &mut target).await
    }
    .await;
    if let Err(e) = moved {
        observed.failed(one, &e, version);
        return Err(e);
    }
    let run_id = mover.report.run_id.unwrap_or(0);
    let after = (version, mover.report.version);
    observed.succeeded(run_id, one, after, &OneShot::one_done());
    let done = mover
        .report
        .done(&tenant, (&source, &target), &args, started);
    finish(ctx, vec![(target.target.clone(), Ok(done))], args.opts.json).await
}

/// The same `tenant move` run again after it finished: nothing to do (exit 0, the move's
/// document with nothing done in it).
fn moved_already(
    sides: &[Side<'_>],
    tenant: &Tenant,
    to: &str,
    args: &MoveArgs,
    started: Instant,
) -> Option<(Target, super::Done)> {
    let here = sides
        .iter()
        .find(|s| s.target.name == to && s.state() == Some(TenantState::Active))?;
    let from = sides
        .iter()
        .find(|s| s.target.name != to && s.state() == Some(TenantState::Moved))?;
    if sides.iter().any(|s| s.out.is_some()) {
        return None;
    }
    let report = Report {
        version: here.row.as_ref().and_then(|r| r.version),
        ..Report::default()
    };
    let mut done = report.done(tenant, (from, here), args, started);
    done.text = format!(
        "tenant {} was moved to {to} already (from {}): nothing to do\n",
        tenant.id(),
        from.target.name
    );
    Some((here.target.clone(), done))
}

/// The source and target sides (indexes into `sides`): an unfinished move of the tenant
/// is resumed (to the cluster it was going to), else it moves from where it is active.
fn pick(sides: &mut [Side<'_>], tenant: &Tenant, to: &str) -> anyhow::Result<(usize, usize)> {
    let id = tenant.id();
    if let Some(s) = sides.iter().position(|s| s.out.is_some()) {
        let going = &sides[s].out.as_ref().expect("found").peer;
        if going != to {
            return Err(UsageError(format!(
                "tenant {id} is being moved to {going} (from {}): carry on with `tenant move {id} --to {going}`, or undo it with `tenant move {id} --abort`; nothing was changed",
                sides[s].target.name
            ))
            .into());
        }
        let t = sides
            .iter()
            .position(|x| x.target.name == to)
            .expect("checked");
        return Ok((s, t));
    }
    let Some(s) = sides
        .iter()
        .position(|s| s.state() == Some(TenantState::Active))
    else {
        return Err(UsageError(format!(
            "tenant {id} is not registered (or not active) on any configured cluster; nothing was changed"
        ))
        .into());
    };
    if sides[s].target.name == to {
        return Err(UsageError(format!(
            "tenant {id} is already on cluster {to}; nothing was changed"
        ))
        .into());
    }
    let t = sides
        .iter()
        .position(|x| x.target.name == to)
        .expect("checked");
    if let Some(state) = sides[t].state().filter(|s| {
        matches!(
            s,
            TenantState::Active | TenantState::Moving | TenantState::Incoming
        )
    }) {
        return Err(UsageError(format!(
            "cluster {to} already has a tenant {id} ({state}); ids are unique across the fleet: nothing was changed (a leftover of an aborted move? `tenant move {id} --abort` clears it)"
        ))
        .into());
    }
    Ok((s, t))
}
