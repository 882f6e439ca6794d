//! `tenantctl query`: read-only SQL in every tenant, one merged result. The SQL is checked
//! before any connection; the tenants are read from every cluster's registry; each cluster's
//! tenants go through the fleet runner without a ledger (`engine::fleet_sql::unrecorded`),
//! and their rows into one row sink (`report::rows`) as each tenant ends.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Arc;

use serde_json::json;

use crate::cli::{QueryArgs, SqlScope};
use crate::control::TenantState;
use crate::engine::apply::Mode;
use crate::engine::events::{Event, Events};
use crate::engine::fleet::FleetOutcome;
use crate::engine::fleet_sql::{unrecorded, FleetSql};
use crate::engine::run::{Planned, RunEnv};
use crate::exit::{self, UsageError};
use crate::labels::Labels;
use crate::migrations::rules::SetKind;
use crate::report::json::{document, ClusterResult, Part};
use crate::report::rows::{Format, RowSink};

use super::clusters::{combine, single_error};
use super::Ctx;

/// Failures listed in the text summary; the rest are counted (JSON has them all).
const FAILURES_SHOWN: usize = 20;

/// The SQL of `-c` or `-f`, checked against the rules of tenant migrations (exit 2).
pub(super) fn read_sql(ctx: &Ctx, scope: &SqlScope) -> anyhow::Result<FleetSql> {
    let (text, origin) = match (&scope.command, &scope.file) {
        (Some(c), _) => (c.clone(), "-c".to_string()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| UsageError(format!("cannot read the SQL from stdin: {e}")))?;
            (text, "stdin".to_string())
        }
        (None, Some(path)) => (
            std::fs::read_to_string(path).map_err(|e| {
                UsageError(format!("cannot read the SQL from {}: {e}", path.display()))
            })?,
            path.display().to_string(),
        ),
        (None, None) => return Err(UsageError("give the SQL with -c or -f".into()).into()),
    };
    let mut sql = FleetSql::new(
        text,
        origin,
        &super::rules_for(&ctx.config, SetKind::Tenant),
    )?;
    sql.statement_timeout = scope.statement_timeout.filter(|d| !d.is_zero());
    Ok(sql)
}

/// `--tenant` (validated ids; empty: every tenant) and `--select` of a query or exec.
pub(super) fn chosen_by(
    ctx: &Ctx,
    scope: &SqlScope,
) -> anyhow::Result<(Vec<String>, Option<crate::labels::Selector>)> {
    let ids = super::parse_ids(&ctx.config, &scope.tenant)?
        .iter()
        .map(|t| t.id().to_string())
        .collect();
    Ok((ids, super::selector(scope.select.as_deref())?))
}

/// An active tenant in scope, with its labels.
pub(super) struct InScope {
    pub planned: Planned,
    pub labels: Labels,
}

/// The active tenants of `rows` that `scope` selects.
pub(super) fn in_scope(
    rows: Vec<crate::control::TenantRow>,
    select: Option<&crate::labels::Selector>,
) -> Vec<InScope> {
    rows.into_iter()
        .filter(|r| r.state == TenantState::Active)
        .filter(|r| select.is_none_or(|s| s.matches(&r.labels)))
        .map(|r| InScope {
            planned: Planned {
                tenant: r.tenant,
                version: r.version,
                todo: true,
            },
            labels: r.labels,
        })
        .collect()
}

pub async fn query(ctx: &Ctx, args: QueryArgs) -> anyhow::Result<i32> {
    let format = match (args.json, args.format) {
        (true, _) => Format::Json,
        (false, Some(f)) => f,
        (false, None) if std::io::stdout().is_terminal() => Format::Table,
        (false, None) => Format::Csv,
    };
    let mut sql = read_sql(ctx, &args.scope)?;
    sql.json_rows = format.json_rows();
    let (ids, select) = chosen_by(ctx, &args.scope)?;
    let wanted = (!ids.is_empty()).then_some(ids.as_slice());
    let mut found = futures::future::join_all(ctx.targets.iter().map(|t| async move {
        let session = ctx.session(t, false).await?;
        let rows = match session.control.exists(&session.client).await? {
            true => session.control.tenants(&session.client, wanted).await?,
            false => Vec::new(),
        };
        anyhow::Ok((session, rows))
    }))
    .await;
    single_error(ctx, &mut found)?;
    super::require_registered(&ids, &ctx.targets, &found, |(_, rows), id| {
        rows.iter()
            .any(|r| r.tenant.id() == id && r.state == TenantState::Active)
    })?;
    let found: Vec<_> = found
        .into_iter()
        .map(|f| f.map(|(session, rows)| (session, in_scope(rows, select.as_ref()))))
        .collect();
    if let Some(sel) = &select {
        if found.iter().flatten().all(|(_, t)| t.is_empty()) {
            return Err(super::nothing_selected(sel));
        }
    }
    let labels = args.with_labels.then(|| {
        found
            .iter()
            .flatten()
            .flat_map(|(_, t)| t.iter())
            .map(|t| (t.planned.tenant.id().to_string(), t.labels.clone()))
            .collect::<HashMap<_, _>>()
    });
    let sink = Arc::new(RowSink::new(format, labels, ctx.multi()));
    let chosen = !ids.is_empty() || select.is_some();
    let (sql, sink_ref, fail_fast) = (&sql, &sink, args.fail_fast);
    let results: Vec<(&crate::config::Target, anyhow::Result<FleetOutcome>)> =
        futures::future::join_all(ctx.targets.iter().zip(found).map(|(t, f)| async move {
            let (session, tenants) = match f {
                Ok(f) => f,
                Err(e) => return Some((t, Err(e))),
            };
            if chosen && tenants.is_empty() {
                return None;
            }
            let base = ctx.run_env(t);
            let (sink, cluster, report) = (sink_ref.clone(), t.name.clone(), base.events.clone());
            let env = RunEnv {
                events: Events::new(move |e| match e {
                    Event::Rows { tenant, rows } => sink.take(&cluster, tenant, rows),
                    other => report.emit(other),
                }),
                ..base
            };
            let planned = tenants.into_iter().map(|t| t.planned).collect();
            let outcome =
                unrecorded::run(&session, &env, Mode::Query, sql, planned, fail_fast).await;
            Some((t, outcome))
        }))
        .await
        .into_iter()
        .flatten()
        .collect();
    Ok(print(ctx, &sink, results))
}

/// The exit code of one cluster's query (or exec --dry-run).
pub(super) fn code_of(outcome: &FleetOutcome) -> i32 {
    if outcome.interrupted {
        exit::INTERRUPTED
    } else if outcome.database_down().is_some() {
        exit::UNREACHABLE
    } else if outcome.failed.is_empty() && outcome.not_started.is_empty() {
        exit::SUCCESS
    } else {
        exit::FAILED
    }
}

/// The end of the output (rows are already out): JSON's document, or the summary on stderr.
fn print(
    ctx: &Ctx,
    sink: &RowSink,
    results: Vec<(&crate::config::Target, anyhow::Result<FleetOutcome>)>,
) -> i32 {
    let codes: Vec<(i32, bool)> = results
        .iter()
        .map(|(_, r)| match r {
            Ok(o) => (code_of(o), o.database_down().is_some()),
            Err(e) => (exit::code_for(e), true),
        })
        .collect();
    let code = combine(&codes);
    let rows = sink.rows();
    if sink.format() == Format::Json {
        let parts: Vec<ClusterResult<'_>> = results
            .iter()
            .zip(&codes)
            .map(|((t, r), (c, _))| ClusterResult {
                name: &t.name,
                code: *c,
                outcome: r.as_ref().map(part),
            })
            .collect();
        let mut doc = document(parts, code);
        if let Some(counts) = doc.get_mut("counts").and_then(|c| c.as_object_mut()) {
            counts.insert("rows".into(), json!(rows));
        }
        sink.finish(Some(&doc), None);
        return code;
    }
    let width = console::Term::stdout()
        .size_checked()
        .map(|(_, w)| w as usize);
    sink.finish(None, width);
    if ctx.reporters.is_quiet() && code == exit::SUCCESS {
        return code;
    }
    let mut lines = Vec::new();
    let (mut tenants, mut failed, mut not_started) = (0, 0, 0);
    for (t, r) in &results {
        let prefix = if ctx.multi() {
            format!("[{}] ", t.name)
        } else {
            String::new()
        };
        match r {
            Ok(o) => {
                tenants += o.succeeded.len() + o.failed.len() + o.not_started.len();
                failed += o.failed.len();
                not_started += o.not_started.len();
                for (tenant, f) in &o.failed {
                    lines.push(format!("{prefix}{tenant}: {}", f.live()));
                }
                if let (Some(stop), false) = (&o.stopped, o.not_started.is_empty()) {
                    lines.push(format!(
                        "{prefix}{} tenant(s) not started: {}",
                        o.not_started.len(),
                        stop.why()
                    ));
                }
            }
            Err(e) => lines.push(format!("{prefix}error: {e:#}")),
        }
    }
    let shown = lines.len().min(FAILURES_SHOWN);
    let mut text = format!(
        "query: {tenants} tenant(s), {rows} row(s), {failed} failed{}",
        match not_started {
            0 => String::new(),
            n => format!(", {n} not started"),
        }
    );
    for l in &lines[..shown] {
        text.push_str(&format!("\n  {l}"));
    }
    if lines.len() > shown {
        text.push_str(&format!(
            "\n  … and {} more (--format json lists them all)",
            lines.len() - shown
        ));
    }
    crate::output::stderr_line(&text);
    code
}

/// One cluster's share of the JSON document: its failures and counts.
fn part(o: &FleetOutcome) -> Part {
    let failures = o
        .failed
        .iter()
        .map(|(t, f)| json!({ "tenant": t.id(), "schema": t.schema(), "failure": f.row() }))
        .collect();
    Part::default()
        .top("command", json!("query"))
        .list("failures", failures)
        .count(
            "tenants",
            (o.succeeded.len() + o.failed.len() + o.not_started.len()) as i64,
        )
        .count("succeeded", o.succeeded.len() as i64)
        .count("failed", o.failed.len() as i64)
        .count("not_started", o.not_started.len() as i64)
        .cluster(
            "stopped",
            json!(o
                .stopped
                .as_ref()
                .map(|s| json!({"reason": s.as_str(), "why": s.why()}))),
        )
}
