//! `tenantctl tenant drop|label|list`: the registered tenants, read, relabelled or dropped,
//! across clusters (creating and adopting them is `tenant`'s).

use std::collections::HashMap;

use serde_json::json;

use crate::cli::{DropArgs, LabelArgs, ListArgs};
use crate::config::Target;
use crate::control::{RunCommand, SchemaResult, TenantRow, TenantState};
use crate::db::Session;
use crate::engine::apply::Mode;
use crate::engine::run::{self as engine_run, scope_of, Planned, RunRequest};
use crate::exit::UsageError;
use crate::labels::{Labels, Selector};
use crate::migrations::MigrationSet;
use crate::report::json::Part;
use crate::report::Tally;
use crate::tenant::Tenant;

use super::clusters::{each, finish, finish_some, single_error, Done};
use super::listing::{Listing, Render};
use super::observed::OneShot;
use super::tenant::bad_labels;
use super::{load_migrations, parse_ids, run_output, Ctx};

pub async fn drop(ctx: &Ctx, args: DropArgs) -> anyhow::Result<i32> {
    let config = &ctx.config;
    let migrations =
        load_migrations(config).unwrap_or_else(|_| MigrationSet::empty(&config.migrations.dir));
    let ids = super::ids_from(&args.ids, args.from_file.as_deref())?;
    let tenants = parse_ids(config, &ids)?;
    let select = super::selector(args.select.as_deref())?;
    let id_list: Vec<String> = tenants.iter().map(|t| t.id().to_string()).collect();
    let (id_list, wanted) = (
        &id_list,
        (!id_list.is_empty()).then_some(id_list.as_slice()),
    );
    let select_ref = select.as_ref();
    // Read-only until the tenants are found: a cluster without a control schema has none.
    let mut found = futures::future::join_all(ctx.targets.iter().map(|t| async move {
        let session = ctx.session(t, false).await?;
        let rows = if session.control.exists(&session.client).await? {
            session.control.tenants(&session.client, wanted).await?
        } else {
            Vec::new()
        };
        // (the given ids found here, the tenants to drop)
        let found: Vec<String> = rows
            .iter()
            .filter(|r| r.state == TenantState::Active)
            .map(|r| r.tenant.id().to_string())
            .collect();
        let active: Vec<Planned> = rows
            .into_iter()
            .filter(|r| r.state == TenantState::Active)
            .filter(|r| select_ref.is_none_or(|s| s.matches(&r.labels)))
            .map(|r| Planned {
                tenant: r.tenant,
                version: r.version,
                todo: true,
            })
            .collect();
        anyhow::Ok((session, found, active))
    }))
    .await;
    single_error(ctx, &mut found)?;
    super::require_registered(id_list, &ctx.targets, &found, |(_, ids, _), id| {
        ids.iter().any(|f| f == id)
    })?;
    let chosen: Vec<Tenant> = found
        .iter()
        .flatten()
        .flat_map(|(_, _, active)| active.iter().map(|p| p.tenant.clone()))
        .collect();
    if let (Some(sel), true) = (&select, chosen.is_empty()) {
        return Err(super::nothing_selected(sel));
    }
    if !args.yes {
        confirm_drop(&chosen, args.archive)?;
    }
    let migrations = &migrations;
    let args = &args;
    let outcomes = futures::future::join_all(found.into_iter().map(|f| async move {
        // Every id was found above, so a cluster that did not answer holds none of them.
        let (mut session, _, in_scope) = f.ok()?;
        if in_scope.is_empty() {
            return None;
        }
        // A standby is named as one; an older control schema is brought up to date before
        // writing to it.
        if let Err(e) = session.require_primary().await {
            return Some(Err(e));
        }
        if let Err(e) = session.control.bootstrap(&session.client).await {
            return Some(Err(e));
        }
        let env = ctx.run_env(session.target);
        let scope = scope_of(Some(
            &in_scope
                .iter()
                .map(|p| p.tenant.clone())
                .collect::<Vec<_>>(),
        ));
        let request = RunRequest {
            mode: Mode::Drop {
                archive: args.archive,
            },
            migrations,
            target: None,
            scope,
            tenants: in_scope,
            refused: Vec::new(),
            labels: HashMap::new(),
            waves: None,
            seed: None,
            load: None,
            sql: None,
            resume: false,
            fail_fast: args.run.fail_fast,
        };
        Some(
            engine_run::run(&mut session, &env, request)
                .await
                .map(|result| run_output(&result)),
        )
    }))
    .await;
    finish_some(ctx, outcomes, args.run.json).await
}

/// `tenant label ID... key=value ... key-`: on every cluster holding some of the ids, in one
/// statement each (recorded as a run, so audited).
pub async fn label(ctx: &Ctx, args: LabelArgs) -> anyhow::Result<i32> {
    use crate::labels::Change;
    let (mut ids, mut set, mut remove, mut errors) =
        (Vec::new(), Labels::new(), Vec::new(), Vec::new());
    for a in &args.args {
        match Change::parse(a) {
            None => ids.push(a.clone()),
            Some(Ok(Change::Set(k, v))) => {
                set.insert(k, v);
            }
            Some(Ok(Change::Remove(k))) => remove.push(k),
            Some(Err(e)) => errors.push(e),
        }
    }
    bad_labels(&errors)?;
    if ids.is_empty() || (set.is_empty() && remove.is_empty()) {
        return Err(UsageError(
            "give tenant ids and label changes: `tenantctl tenant label acme tier=enterprise` sets, `tenantctl tenant label acme tier-` removes; nothing was changed".into(),
        )
        .into());
    }
    let tenants = parse_ids(&ctx.config, &ids)?;
    let ids: Vec<String> = tenants.iter().map(|t| t.id().to_string()).collect();
    let ids_ref = &ids;
    let mut found = futures::future::join_all(ctx.targets.iter().map(|t| async move {
        let session = ctx.session(t, true).await?;
        let here: Vec<String> = session
            .control
            .tenants(&session.client, Some(ids_ref))
            .await?
            .into_iter()
            .filter(|r| r.state == TenantState::Active)
            .map(|r| r.tenant.id().to_string())
            .collect();
        anyhow::Ok((session, here))
    }))
    .await;
    single_error(ctx, &mut found)?;
    super::require_registered(&ids, &ctx.targets, &found, |(_, here), id| {
        here.iter().any(|h| h == id)
    })?;
    let (set, remove) = (&set, &remove);
    let outcomes = futures::future::join_all(found.into_iter().map(|f| async move {
        let (session, here) = f.ok()?;
        if here.is_empty() {
            return None;
        }
        Some(label_on(ctx, &session, &here, set, remove).await)
    }))
    .await;
    finish_some(ctx, outcomes, args.opts.json).await
}

async fn label_on(
    ctx: &Ctx,
    session: &Session<'_>,
    ids: &[String],
    set: &Labels,
    remove: &[String],
) -> anyhow::Result<Done> {
    let t0 = std::time::Instant::now();
    let argv = crate::whoami::command_line();
    let scope = crate::digest::fnv1a_hex(ids.join(",").into_bytes());
    let info = crate::control::RunInfo {
        command: RunCommand::TenantLabel,
        target: None,
        digest: "-",
        scope: &scope,
        total: ids.len(),
        actor: &ctx.actor,
        argv: &argv,
        seed: None,
    };
    let asked = parse_ids(&ctx.config, ids)?;
    let cluster = &session.target.name;
    let (control, client) = (&session.control, &session.client);
    let written = if ctx.config.tiers.is_empty() {
        control.set_labels(client, &info, ids, set, remove).await
    } else {
        // A label change moves the tenant to another tier in the same transaction.
        let in_tx = async {
            client.batch_execute("BEGIN").await?;
            let run_id = control.set_labels(client, &info, ids, set, remove).await?;
            super::tiers::apply_in_tx(ctx, (control, client), ids).await?;
            client.batch_execute("COMMIT").await?;
            anyhow::Ok(run_id)
        }
        .await;
        if in_tx.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        in_tx
    };
    let run_id = match written {
        Ok(run_id) => run_id,
        Err(e) => {
            let what = (RunCommand::TenantLabel, 0, None);
            OneShot::start(ctx, cluster, what, ids.len(), &asked).failed(&asked, &e, None);
            return Err(e);
        }
    };
    let (run, tenants) = engine_run::read_report(session, run_id, RunCommand::TenantLabel)
        .await?
        .ok_or_else(|| anyhow::anyhow!("run {run_id} is not in the ledger after it was written"))?;
    let done: Vec<_> = asked
        .into_iter()
        .filter(|t| {
            tenants
                .iter()
                .any(|r| r.id == t.id() && r.result == SchemaResult::Done)
        })
        .collect();
    let what = (RunCommand::TenantLabel, run_id, None);
    OneShot::start(ctx, cluster, what, ids.len(), &done).succeeded(
        run_id,
        &done,
        (None, None),
        &run.counts,
    );
    let result = engine_run::RunResult {
        command: RunCommand::TenantLabel,
        run_id,
        state: run.state,
        target: None,
        outcome: crate::engine::fleet::FleetOutcome {
            elapsed: t0.elapsed(),
            ..Default::default()
        },
        resumed_from: None,
        ledger_note: None,
        counts: run.counts,
        tenants,
        waves: Vec::new(),
        halted: None,
    };
    Ok(run_output(&result))
}

/// Without --yes: on a terminal, the operator types `drop <n>`; elsewhere, refuse.
fn confirm_drop(tenants: &[crate::tenant::Tenant], archive: bool) -> anyhow::Result<()> {
    let names: Vec<&str> = tenants.iter().map(|t| t.schema()).take(10).collect();
    let what = if archive {
        "rename (archive) the schemas"
    } else {
        "DELETE the schemas and all their data"
    };
    super::confirm(
        &format!(
            "This will {what} of {} tenant(s): {}{}.",
            tenants.len(),
            names.join(", "),
            if tenants.len() > 10 { ", …" } else { "" }
        ),
        &format!("drop {}", tenants.len()),
        "drop tenants",
    )
}

pub async fn list(ctx: &Ctx, args: ListArgs) -> anyhow::Result<i32> {
    let select = super::selector(args.select.as_deref())?;
    let select = select.as_ref();
    let (failed, json) = (args.failed, args.json);
    let results = each(&ctx.targets, |t| list_one(ctx, t, select, (failed, json))).await;
    finish(ctx, results, args.json).await
}

async fn list_one(
    ctx: &Ctx,
    target: &Target,
    select: Option<&Selector>,
    (only_failed, json): (bool, bool),
) -> anyhow::Result<Done> {
    let session = ctx.session(target, false).await?;
    let kept = select.cloned();
    let keep = move |r: &TenantRow| kept.as_ref().is_none_or(|s| s.matches(&r.labels));
    let exists = session.control.exists(&session.client).await?;
    let listing = Listing::open((session, exists), None, only_failed, keep).await?;
    // The first pass counts and measures; the rows print as the second reads them.
    let mut widths = Widths::default();
    listing
        .each(|r| {
            widths.add(r);
            true
        })
        .await?;
    let counts = vec![
        (Tally::Active, widths.active),
        (Tally::Dropped, widths.dropped),
        (Tally::InMoves, widths.rows - widths.active - widths.dropped),
    ];
    let part = Part::default()
        .top("command", json!("tenant list"))
        .list("tenants", Vec::new());
    let done = |text: String| Done::new(crate::exit::SUCCESS, text, part).counts(counts);
    if json {
        let render = Render::Json("tenants", Box::new(list_json));
        return Ok(done(String::new()).listing(listing.render(render), String::new()));
    }
    Ok(match select {
        _ if widths.rows > 0 => {
            let tail = format!("{} tenant(s)\n", widths.rows);
            let render = Render::Lines(Box::new(move |r| widths.line(r)));
            done(widths.header()).listing(listing.render(render), tail)
        }
        _ if only_failed => done("no tenant's last change failed (on this selection)\n".into()),
        Some(sel) => done(format!("no tenant matches --select {sel}\n")),
        None => {
            done("no tenants registered (create one with `tenantctl tenant create <ID>`)\n".into())
        }
    })
}

fn list_json(r: &TenantRow) -> serde_json::Value {
    json!({
        "id": r.tenant.id(), "schema": r.tenant.schema(), "labels": r.labels,
        "state": r.state, "version": r.version, "created_at": r.created_at,
        "archived_as": r.archived_as,
    })
}

/// `tenant list`'s columns, measured over the rows as they are read.
#[derive(Clone, Copy)]
struct Widths {
    rows: usize,
    active: usize,
    dropped: usize,
    id: usize,
    schema: usize,
    labels: usize,
    archives: bool,
}

impl Default for Widths {
    fn default() -> Widths {
        Widths {
            rows: 0,
            active: 0,
            dropped: 0,
            id: 2,
            schema: 6,
            labels: 6,
            archives: false,
        }
    }
}

impl Widths {
    fn add(&mut self, r: &TenantRow) {
        self.rows += 1;
        self.active += usize::from(r.state == TenantState::Active);
        self.dropped += usize::from(r.state == TenantState::Dropped);
        self.id = self.id.max(r.tenant.id().len());
        self.schema = self.schema.max(r.tenant.schema().len());
        self.labels = self.labels.max(crate::labels::show(&r.labels).len());
        self.archives |= r.archived_as.is_some();
    }

    fn header(&self) -> String {
        let w_labels = self.labels;
        self.row(
            ["ID", "SCHEMA", "STATE", "VERSION", "CREATED"],
            &if self.archives {
                format!("{:<w_labels$}  ARCHIVED AS", "LABELS")
            } else {
                "LABELS".to_string()
            },
        )
    }

    fn line(&self, r: &TenantRow) -> String {
        let w_labels = self.labels;
        let labels = crate::labels::show(&r.labels);
        let v = r.version.map_or("-".to_string(), |v| format!("V{v}"));
        let last = match &r.archived_as {
            Some(a) => format!("{labels:<w_labels$}  {a}"),
            None => labels,
        };
        let state = r.state.to_string();
        self.row(
            [r.tenant.id(), r.tenant.schema(), &state, &v, &r.created_at],
            last.trim_end(),
        )
    }

    fn row(&self, [id, schema, state, version, created]: [&str; 5], last: &str) -> String {
        let (w_id, w_schema) = (self.id, self.schema);
        format!(
            "{id:<w_id$}  {schema:<w_schema$}  {state:<7}  {version:>7}  {created:<20}  {last}\n"
        )
    }
}
