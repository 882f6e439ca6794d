//! `tenant move --abort` (a move that has not cut over, undone on both clusters) and
//! `tenant move --cleanup` (the old copies moves left behind, and replication objects of
//! moves no longer going on), with the undo steps the move itself uses when its first copy
//! fails.

use serde_json::json;

use crate::cli::MoveArgs;
use crate::control::{MovePhase, RunCommand, TenantState};
use crate::db::Session;
use crate::engine::mover::link;
use crate::exit::UsageError;
use crate::report::json::Part;
use crate::tenant::Tenant;

use super::super::clusters::{finish, Done};
use super::super::observed::OneShot;
use super::super::tenant_data::record_on;
use super::super::Ctx;
use super::Side;

/// The target's side undone: the subscription dropped (never its slot: that is the
/// source's), then the copy's schema, role and incoming row, in one transaction.
pub(in crate::commands) async fn undo_target(
    session: &Session<'_>,
    tenant: &Tenant,
    link_name: &str,
) -> anyhow::Result<()> {
    link::drop_subscription(&session.client, link_name).await?;
    let sql = format!(
        "BEGIN; {} COMMIT;",
        session.control.undo_move_in_sql(tenant)
    );
    if let Err(e) = session.client.batch_execute(&sql).await {
        let _ = session.client.batch_execute("ROLLBACK").await;
        anyhow::bail!(
            "undoing the target's copy of tenant {}: {}",
            tenant.id(),
            crate::pgerror::describe(&e)
        );
    }
    Ok(())
}

/// The source's side undone: publication and slot dropped, the tenant active again.
pub(in crate::commands) async fn undo_source(
    session: &Session<'_>,
    tenant: &Tenant,
    link_name: &str,
) -> anyhow::Result<()> {
    link::drop_source(&session.client, link_name).await?;
    session
        .control
        .undo_move_out(&session.client, tenant.id())
        .await?;
    Ok(())
}

pub(in crate::commands) async fn abort(
    ctx: &Ctx,
    mut sides: Vec<Side<'_>>,
    tenant: &Tenant,
    args: &MoveArgs,
) -> anyhow::Result<i32> {
    let id = tenant.id();
    let Some(s) = sides.iter().position(|s| s.out.is_some()) else {
        // A target's copy whose source forgot the move (its abort stopped half-way).
        if let Some(t) = sides
            .iter()
            .position(|s| s.state() == Some(TenantState::Incoming))
        {
            let side = &sides[t];
            let link_name = side
                .inn
                .as_ref()
                .map(|m| m.link.clone())
                .unwrap_or_default();
            undo_target(&side.session, tenant, &link_name).await?;
            let text = format!(
                "dropped the unfinished copy of tenant {id} on {}; no move of it was going on\n",
                side.target.name
            );
            let done = Done::new(crate::exit::SUCCESS, text, abort_part(tenant, None, None));
            return finish(ctx, vec![(side.target.clone(), Ok(done))], args.opts.json).await;
        }
        return Err(UsageError(format!(
            "tenant {id} is not being moved: nothing to abort; nothing was changed"
        ))
        .into());
    };
    let source = sides.swap_remove(s);
    let mv = source.out.clone().expect("found");
    if mv.phase == MovePhase::CutOver {
        return Err(UsageError(format!(
            "the move of tenant {id} to {} has cut over: the tenant lives there now. Finish it with `tenant move {id} --to {}` (or move it back the same way); nothing was changed",
            mv.peer, mv.peer
        ))
        .into());
    }
    let version = source.row.as_ref().and_then(|r| r.version);
    let what = |run_id| (RunCommand::TenantMoveAbort, run_id, version);
    let one = std::slice::from_ref(tenant);
    let undone = async {
        if let Some(target) = sides.iter().find(|s| s.target.name == mv.peer) {
            undo_target(&target.session, tenant, &mv.link).await?;
        }
        undo_source(&source.session, tenant, &mv.link).await?;
        let scope = crate::digest::fnv1a_hex(id.bytes());
        record_on(
            ctx,
            (&source.session.control, &source.session.client),
            (RunCommand::TenantMoveAbort, tenant),
            version,
            (&mv.link, &scope),
        )
        .await
    }
    .await;
    match &undone {
        Ok(run_id) => OneShot::done(ctx, &source.target.name, what(*run_id), tenant),
        Err(e) => OneShot::start(ctx, &source.target.name, what(0), 1, one).failed(one, e, version),
    }
    undone?;
    let text = format!(
        "aborted the move of tenant {id} from {} to {} (it was {}): its copy, subscription, publication and slot dropped; the tenant is active on {} as before\n",
        source.target.name, mv.peer, mv.phase, source.target.name
    );
    let part =
        abort_part(tenant, Some(&source.target.name), Some(&mv.peer)).top("phase", json!(mv.phase));
    let done = Done::new(crate::exit::SUCCESS, text, part);
    finish(ctx, vec![(source.target.clone(), Ok(done))], args.opts.json).await
}

fn abort_part(tenant: &Tenant, from: Option<&str>, to: Option<&str>) -> Part {
    Part::default()
        .top("command", json!("tenant move --abort"))
        .top(
            "tenant",
            json!({"id": tenant.id(), "schema": tenant.schema()}),
        )
        .top("from", json!(from))
        .top("to", json!(to))
}

/// `--cleanup [ID]`, per selected cluster: the old copies that are due (with ID: that
/// tenant's), and replication objects named like a move's that no unfinished move owns.
pub(in crate::commands) async fn cleanup(ctx: &Ctx, args: &MoveArgs) -> anyhow::Result<i32> {
    if let Some(id) = &args.id {
        super::super::parse_ids(&ctx.config, std::slice::from_ref(id))?;
    }
    let mut found = Vec::new();
    for target in &ctx.targets {
        let session = ctx.session(target, false).await?;
        let c = &session.control;
        if !c.exists(&session.client).await? || !c.is_current(&session.client).await? {
            found.push((session, Vec::new(), link::Leftovers::default()));
            continue;
        }
        let copies: Vec<_> = c
            .old_copies(&session.client)
            .await?
            .into_iter()
            .filter(|copy| match &args.id {
                Some(id) => &copy.tenant == id,
                None => copy.due,
            })
            .collect();
        let open: std::collections::HashSet<String> = c
            .open_moves(&session.client, false, None)
            .await?
            .into_iter()
            .chain(c.open_moves(&session.client, true, None).await?)
            .map(|m| m.link)
            .collect();
        let mut stray = link::find(&session.client).await?;
        for list in [
            &mut stray.slots,
            &mut stray.publications,
            &mut stray.subscriptions,
        ] {
            list.retain(|n| !open.contains(n));
        }
        found.push((session, copies, stray));
    }
    let copies: usize = found.iter().map(|f| f.1.len()).sum();
    let strays: usize = found.iter().map(|f| f.2.names().len()).sum();
    if copies + strays > 0 && !args.yes {
        let list: Vec<String> = found
            .iter()
            .flat_map(|(s, c, _)| {
                c.iter().map(move |c| {
                    format!(
                        "  {} on {} (tenant {}, moved to {} at {})",
                        c.schema, s.target.name, c.tenant, c.moved_to, c.cut_at
                    )
                })
            })
            .collect();
        super::super::confirm(
            &format!(
                "drop {copies} old cop(ies) of moved tenants and {strays} stray replication object(s):\n{}",
                list.join("\n")
            ),
            "drop",
            "drop old copies",
        )?;
    }
    let mut results = Vec::new();
    for (session, copies, stray) in found {
        let mut lines = String::new();
        let mut dropped = Vec::new();
        for copy in &copies {
            let sql = format!("BEGIN; {} COMMIT;", session.control.drop_old_copy_sql(copy));
            if let Err(e) = session.client.batch_execute(&sql).await {
                let _ = session.client.batch_execute("ROLLBACK").await;
                anyhow::bail!("dropping {}: {}", copy.schema, crate::pgerror::describe(&e));
            }
            let tenant = Tenant::from_registry(copy.tenant.clone(), copy.schema.clone());
            let scope = crate::digest::fnv1a_hex(copy.tenant.bytes());
            let run_id = record_on(
                ctx,
                (&session.control, &session.client),
                (RunCommand::TenantMoveCleanup, &tenant),
                None,
                (&copy.schema, &scope),
            )
            .await?;
            let what = (RunCommand::TenantMoveCleanup, run_id, None);
            OneShot::done(ctx, &session.target.name, what, &tenant);
            lines.push_str(&format!(
                "dropped {} (the old copy of tenant {}, moved to {} at {})\n",
                copy.schema, copy.tenant, copy.moved_to, copy.cut_at
            ));
            dropped.push(json!({"tenant": copy.tenant, "schema": copy.schema, "moved_to": copy.moved_to, "cut_at": copy.cut_at}));
        }
        for name in &stray.subscriptions {
            link::drop_subscription(&session.client, name).await?;
        }
        for name in stray.publications.iter().chain(&stray.slots) {
            link::drop_source(&session.client, name).await?;
        }
        for name in stray.names() {
            lines.push_str(&format!("dropped the stray replication object {name}\n"));
        }
        if lines.is_empty() {
            lines.push_str("nothing to clean up\n");
        }
        let part = Part::default()
            .top("command", json!("tenant move --cleanup"))
            .list("dropped", dropped)
            .list(
                "stray",
                stray.names().into_iter().map(|n| json!(n)).collect(),
            );
        results.push((
            session.target.clone(),
            Ok(Done::new(crate::exit::SUCCESS, lines, part)),
        ));
    }
    finish(ctx, results, args.opts.json).await
}
