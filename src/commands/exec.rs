//! `tenantctl exec`: a data change in every tenant, exactly once each. The SQL is checked
//! before any connection; every cluster is prepared at once (the fleet lock, moves settled,
//! the registry and the tenants an earlier exec of the same SQL already did); a request
//! wrong anywhere changes nothing anywhere; then each cluster runs it as a recorded run of
//! `exec` (`engine::run`, `apply::Mode::Exec`), staged in waves when asked. `--dry-run` runs
//! each tenant's transaction and rolls it back, without the lock or the ledger.

use std::collections::HashSet;

use serde_json::json;

use crate::cli::ExecArgs;
use crate::engine::apply::Mode;
use crate::engine::fleet::FleetOutcome;
use crate::engine::fleet_sql::unrecorded;
use crate::engine::run::{self as engine_run, scope_of, RunEnv, RunRequest};
use crate::engine::waves::WaveSpec;
use crate::exit::{self, UsageError};
use crate::migrations::MigrationSet;
use crate::report::json::Part;
use crate::tenant::Tenant;

use super::clusters::{finish_some, single_error, Done};
use super::query::{chosen_by, code_of, in_scope, read_sql, InScope};
use super::{run_output, Ctx};

/// One cluster, prepared.
struct Prepared<'a> {
    session: crate::db::Session<'a>,
    env: RunEnv<'a>,
    tenants: Vec<InScope>,
    /// Tenants an earlier exec of this SQL did (empty with --again).
    done: HashSet<String>,
}

pub async fn exec(ctx: &Ctx, args: ExecArgs) -> anyhow::Result<i32> {
    let mut sql = read_sql(ctx, &args.scope)?;
    if args.until_zero && sql.statements != 1 {
        return Err(UsageError(format!(
            "--until-zero repeats one statement until it affects no row; {} has {} statements: give it one (an UPDATE … WHERE id IN (SELECT id … LIMIT 5000)); nothing was run",
            sql.origin, sql.statements
        ))
        .into());
    }
    sql.batch_pause = args.batch_pause.unwrap_or_default();
    let (ids, select) = chosen_by(ctx, &args.scope)?;
    let wanted = (!ids.is_empty()).then_some(ids.as_slice());
    let waves = WaveSpec::parse(&args.waves.ask())?;
    let (sql, args_ref, select_ref) = (&sql, &args, select.as_ref());
    let mut prepared = futures::future::join_all(ctx.targets.iter().map(|t| async move {
        let (session, env) = ctx
            .fleet_session(t, args_ref.dry_run, args_ref.wait)
            .await?;
        crate::engine::across::in_motion(&ctx.config, &session, &env, args_ref.dry_run).await?;
        let (rows, done, failed) = match session.control.exists(&session.client).await? {
            true => {
                let c = (&session.control, &session.client);
                futures::try_join!(
                    c.0.tenants(c.1, wanted),
                    async {
                        match args_ref.again {
                            true => Ok(HashSet::new()),
                            false => c.0.exec_done(c.1, &sql.digest).await,
                        }
                    },
                    async {
                        match args_ref.failed {
                            true => c.0.failed_last(c.1).await.map(Some),
                            false => Ok(None),
                        }
                    }
                )?
            }
            false => (Vec::new(), HashSet::new(), None),
        };
        let mut tenants = in_scope(rows, select_ref);
        if let Some(failed) = failed {
            tenants.retain(|t| failed.contains(t.planned.tenant.id()));
        }
        anyhow::Ok(Prepared {
            session,
            env,
            tenants,
            done,
        })
    }))
    .await;
    if let Some(i) = prepared
        .iter()
        .position(|p| matches!(p, Err(e) if exit::code_for(e) == exit::USAGE))
    {
        return Err(prepared.swap_remove(i).err().expect("an error"));
    }
    single_error(ctx, &mut prepared)?;
    super::require_registered(&ids, &ctx.targets, &prepared, |p, id| {
        p.tenants.iter().any(|t| t.planned.tenant.id() == id)
    })?;
    if let Some(sel) = &select {
        if prepared.iter().flatten().all(|p| p.tenants.is_empty()) {
            return Err(super::nothing_selected(sel));
        }
    }
    let in_waves: Vec<Option<Vec<(&Tenant, &crate::labels::Labels)>>> = prepared
        .iter()
        .map(|p| {
            p.as_ref().ok().map(|p| {
                p.tenants
                    .iter()
                    .filter(|t| !p.done.contains(t.planned.tenant.id()))
                    .map(|t| (&t.planned.tenant, &t.labels))
                    .collect()
            })
        })
        .collect();
    let plans = match (&waves, args.dry_run) {
        (Some(spec), false) => crate::engine::waves::stage(spec, &in_waves)?.0,
        _ => in_waves.iter().map(|_| None).collect(),
    };
    drop(in_waves);
    let chosen = !ids.is_empty() || select.is_some() || args.failed;
    let empty = MigrationSet::empty(&ctx.config.migrations.dir);
    let empty = &empty;
    let outcomes =
        futures::future::join_all(prepared.into_iter().zip(plans).map(|(p, plan)| async move {
            let mut p = match p {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            if chosen && p.tenants.is_empty() {
                return None;
            }
            let list: Vec<Tenant> = p.tenants.iter().map(|t| t.planned.tenant.clone()).collect();
            let scope = scope_of(chosen.then_some(list.as_slice()));
            let planned = p
                .tenants
                .into_iter()
                .map(|t| {
                    let mut planned = t.planned;
                    planned.todo = !p.done.contains(planned.tenant.id());
                    planned
                })
                .collect();
            let mode = Mode::Exec {
                dry_run: args_ref.dry_run,
                until_zero: args_ref.until_zero,
            };
            if args_ref.dry_run {
                let fail_fast = args_ref.run.fail_fast;
                return Some(
                    unrecorded::run(&p.session, &p.env, mode, sql, planned, fail_fast)
                        .await
                        .map(|o| dry_run_output(&o, args_ref.until_zero)),
                );
            }
            let request = RunRequest {
                mode,
                migrations: empty,
                target: None,
                scope,
                tenants: planned,
                refused: Vec::new(),
                labels: std::collections::HashMap::new(),
                waves: plan,
                seed: None,
                load: None,
                sql: Some(sql),
                resume: !args_ref.fresh,
                fail_fast: args_ref.run.fail_fast,
            };
            Some(
                engine_run::run(&mut p.session, &p.env, request)
                    .await
                    .map(|result| run_output(&result)),
            )
        }))
        .await;
    finish_some(ctx, outcomes, args.run.json).await
}

/// What a dry run found on one cluster: the rows each tenant's transaction changed before
/// it was rolled back, and the failures it met.
fn dry_run_output(o: &FleetOutcome, until_zero: bool) -> Done {
    let mut tenants: Vec<serde_json::Value> = o
        .succeeded
        .iter()
        .map(|(t, a)| json!({ "id": t.id(), "schema": t.schema(), "rows": a.rows, "failure": null }))
        .chain(o.failed.iter().map(
            |(t, f)| json!({ "id": t.id(), "schema": t.schema(), "rows": null, "failure": f.row() }),
        ))
        .collect();
    tenants.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let rows: u64 = o.succeeded.iter().filter_map(|(_, a)| a.rows).sum();
    let changing = o
        .succeeded
        .iter()
        .filter(|(_, a)| a.rows.unwrap_or(0) > 0)
        .count();
    let batch = if until_zero {
        " (in its first batch)"
    } else {
        ""
    };
    let mut text = format!(
        "exec --dry-run: {} tenant(s) ran it and rolled back: {changing} would change {rows} row(s){batch}, {} would fail; nothing was kept\n",
        o.succeeded.len() + o.failed.len(),
        o.failed.len()
    );
    for (t, a) in o
        .succeeded
        .iter()
        .filter(|(_, a)| a.rows.unwrap_or(0) > 0)
        .take(20)
    {
        text.push_str(&format!("  {t}: {} row(s)\n", a.rows.unwrap_or(0)));
    }
    for (t, f) in o.failed.iter().take(20) {
        text.push_str(&format!("  {t}: {}\n", f.live()));
    }
    let part = Part::default()
        .top("command", json!("exec"))
        .top("dry_run", json!(true))
        .list("tenants", tenants)
        .count("would_change", changing as i64)
        .count("rows", rows as i64)
        .count("failed", o.failed.len() as i64);
    Done::new(code_of(o), text, part)
}
