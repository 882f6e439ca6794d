//! `doctor`'s fleet health, from the control schema: tenants behind the files, drift,
//! schemas with the tenant prefix that are not registered, a run waiting to be resumed,
//! what moves left behind.

use crate::control::RunState;
use crate::db::Session;
use crate::tenant::quote_ident;

use super::super::status_moves;
use super::super::Ctx;
use super::checks::{self, Check, Verdict};

/// A fleet check ([`checks::check`] in the `fleet` area); `fix` is kept only when it did not pass.
fn check(name: &'static str, verdict: Verdict, detail: String, fix: &str) -> Check {
    checks::check("fleet", name, verdict, detail, Some(fix))
}

pub async fn health(
    ctx: &Ctx,
    session: &Session<'_>,
    latest: Option<i32>,
) -> anyhow::Result<Vec<Check>> {
    let (control, client) = (&session.control, &session.client);
    if !control.exists(client).await? {
        return Ok(vec![check(
            "tenants",
            Verdict::Pass,
            "no control schema yet: no tenants here".into(),
            "",
        )]);
    }
    let summary = control.summary(client, latest, 5).await?;
    let mut out = Vec::new();
    let behind = summary.total() - summary.at(latest);
    out.push(if behind == 0 {
        check(
            "behind",
            Verdict::Pass,
            format!(
                "{} tenant(s), every one at the files' latest version",
                summary.total()
            ),
            "",
        )
    } else {
        let ids: Vec<&str> = summary.behind.iter().map(|(id, _)| id.as_str()).collect();
        check(
            "behind",
            Verdict::Warn,
            format!(
                "{behind} of {} tenant(s) not at the latest version (e.g. {})",
                summary.total(),
                ids.join(", ")
            ),
            "tenantctl migrate --all",
        )
    });
    let drifted: usize = summary.drifted.iter().map(|(_, n, _)| n).sum();
    out.push(if drifted == 0 {
        check(
            "drift",
            Verdict::Pass,
            "no tenant's history disagrees with the files".into(),
            "",
        )
    } else {
        let why: Vec<&str> = summary
            .drifted
            .iter()
            .map(|(d, ..)| d.as_str())
            .take(3)
            .collect();
        check(
            "drift",
            Verdict::Fail,
            format!(
                "{drifted} tenant(s) whose history disagrees with the files: {}",
                why.join("; ")
            ),
            "tenantctl status --failed says which and why; put the files back, or repair --accept",
        )
    });
    let schema = quote_ident(&ctx.config.control_schema);
    let row = client
        .query_typed_one(
            &format!(
                "SELECT count(*)::int, coalesce((array_agg(n.nspname::text ORDER BY n.nspname))[1:5], '{{}}') \
                 FROM pg_namespace n WHERE starts_with(n.nspname, $1) AND strpos(n.nspname, '__') = 0 \
                 AND NOT EXISTS (SELECT 1 FROM {schema}.tenants t WHERE t.schema_name = n.nspname)"
            ),
            &[(&ctx.config.tenants.schema_prefix, tokio_postgres::types::Type::TEXT)],
        )
        .await?;
    let (strays, names): (i32, Vec<String>) = (row.get(0), row.get(1));
    out.push(if strays == 0 {
        check(
            "unregistered",
            Verdict::Pass,
            "every schema with the tenant prefix is registered".into(),
            "",
        )
    } else {
        check(
            "unregistered",
            Verdict::Warn,
            format!(
                "{strays} schema(s) with the tenant prefix are not registered: {}",
                names.join(", ")
            ),
            "tenantctl tenant adopt ID --baseline VERSION registers one; or drop it",
        )
    });
    let waiting: Vec<(i64, String, String)> = client
        .query_typed(
            &format!(
                "SELECT r.id, r.command, r.state FROM {schema}.runs r \
                 WHERE r.state IN ({interrupted}, {halted}) \
                 AND r.id = (SELECT max(id) FROM {schema}.runs q WHERE q.command = r.command)",
                interrupted = RunState::Interrupted.literal(),
                halted = RunState::Halted.literal(),
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    out.push(if waiting.is_empty() {
        check(
            "interrupted",
            Verdict::Pass,
            "no run is waiting to be resumed".into(),
            "",
        )
    } else {
        let list: Vec<String> = waiting
            .iter()
            .map(|(id, c, s)| format!("{c} run {id} ({s})"))
            .collect();
        check(
            "interrupted",
            Verdict::Warn,
            format!("waiting to be resumed: {}", list.join(", ")),
            "run the same command again to carry it on (or --fresh to start over)",
        )
    });
    let moves = status_moves::read(session, true).await?;
    let (due, stray) = moves.leftovers();
    out.push(if stray.is_empty() && due == 0 {
        check(
            "leftovers",
            Verdict::Pass,
            "no old copy due and no stray replication slot or publication".into(),
            "",
        )
    } else {
        check(
            "leftovers",
            if stray.is_empty() {
                Verdict::Warn
            } else {
                Verdict::Fail
            },
            format!(
                "{due} old cop(ies) of moved tenants due, stray replication objects: {}",
                if stray.is_empty() {
                    "none".to_string()
                } else {
                    stray.join(", ")
                }
            ),
            "tenantctl tenant move --cleanup (a stray slot keeps WAL until the disk is full)",
        )
    });
    let archived: Vec<String> = client
        .query_typed(
            &format!(
                "SELECT t.archived_as FROM {schema}.tenants t JOIN pg_namespace n ON n.nspname = t.archived_as \
                 ORDER BY t.archived_as LIMIT 6"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.push(if archived.is_empty() {
        check("archived", Verdict::Pass, "no archived copy of a dropped tenant is kept".into(), "")
    } else {
        let shown: Vec<&str> = archived.iter().take(5).map(String::as_str).collect();
        let more = if archived.len() > 5 { ", …" } else { "" };
        check("archived", Verdict::Warn, format!("archived copies of dropped tenants are kept (their data, outside any tenant): {}{more}", shown.join(", ")), "DROP SCHEMA … CASCADE each once its data is no longer needed (tenant list --json shows archived_as)")
    });
    Ok(out)
}
