//! A schema whose pending migrations include no-transaction scripts (`CREATE INDEX
//! CONCURRENTLY`): segment after segment, each recorded as soon as it is done, under the
//! schema's advisory lock held at session level meanwhile; the connection is returned with
//! no transaction open, settings reset and that lock released.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::control::session_lock_sql;
use crate::engine::apply::ApplyCtx;
use crate::engine::events::Event;
use crate::engine::failure::{Failure, FailureKind};
use crate::engine::schema_tx::{line_of, preamble};
use crate::engine::work::{Segment, Work};
use crate::migrations::rules::concurrent_index_names;
use crate::migrations::scan::for_each_statement;
use crate::tenant::{quote_ident, Tenant};

/// A schema whose work has no-transaction scripts: segment after segment, each recorded as
/// it is done, under the schema's advisory lock held for the session meanwhile (each commit
/// would release the transaction's). Whatever happens, the connection is left as it was
/// found: no transaction open, settings reset, the session lock released.
pub async fn segmented(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    work: &Work<'_>,
    finish: &str,
) -> Result<(), Failure> {
    // In the opening's transaction, which holds the same lock: granted at once.
    client
        .batch_execute(&session_lock_sql(tenant.schema(), true))
        .await
        .map_err(|e| Failure::from_pg(&e, work.before))?;
    let result = segments_in_turn(client, ctx, tenant, work, finish).await;
    let clean = match &result {
        Err(f) if f.broken_connection => return result,
        Err(_) => "ROLLBACK; ",
        Ok(()) => "",
    };
    let sql = format!(
        "{clean}RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; {}",
        session_lock_sql(tenant.schema(), false)
    );
    match (client.batch_execute(&sql).await, result) {
        (Err(_), Err(mut f)) => {
            f.broken_connection = true;
            Err(f)
        }
        (_, result) => result,
    }
}

async fn segments_in_turn(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    work: &Work<'_>,
    finish: &str,
) -> Result<(), Failure> {
    let mut recorded = work.before;
    // The opening's transaction is open until the first segment commits.
    let mut open = true;
    let last = work.segments.len() - 1;
    for (i, seg) in work.segments.iter().enumerate() {
        let record = match i == last {
            true => format!("{}{finish}", seg.bookkeeping),
            false => format!(
                "{}{}",
                seg.bookkeeping,
                ctx.control
                    .schema_progress_sql(ctx.run_id, tenant, seg.after, seg.done)
            ),
        };
        if seg.no_transaction {
            if open {
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| Failure::from_pg(&e, recorded))?;
            }
            run_step(client, ctx, tenant, seg, recorded).await?;
            let sql = format!("{} {record}; COMMIT;", resume_sql(ctx, tenant));
            if let Err(e) = client.batch_execute(&sql).await {
                let mut f = Failure::from_pg(&e, recorded);
                f.message = format!(
                    "{}; recording {} after it ran failed, so a re-run runs it again",
                    f.message, seg.scripts[0].label
                );
                return Err(f);
            }
        } else {
            let first = (!open).then(|| resume_sql(ctx, tenant));
            seg.send(
                client,
                first.as_deref(),
                &format!("{}{record}; COMMIT;", super::session::GUARD),
                recorded,
            )
            .await?;
        }
        open = false;
        recorded = seg.after;
    }
    Ok(())
}

/// The opening of a later segment's transaction: the preamble (the schema's lock is this
/// session's already) and the fence.
fn resume_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant) -> String {
    format!(
        "{} {};",
        preamble(tenant.schema(), &ctx.tx),
        ctx.control.fence_sql(ctx.run_id, ctx.epoch, Some(tenant))
    )
}

/// A no-transaction script, statement by statement, each its own implicit transaction, with
/// the schema's `search_path` and the step's timeouts set for the session meanwhile (reset
/// afterwards). INVALID indexes it creates (by name) that an earlier attempt left behind are
/// dropped first and reported; a failed build's are dropped after it.
async fn run_step(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    seg: &Segment<'_>,
    still_at: Option<i32>,
) -> Result<(), Failure> {
    let script = &seg.scripts[0];
    let blame = |e: &tokio_postgres::Error, line: Option<u32>| {
        let mut f = Failure::from_pg(e, still_at);
        f.migration = Some(script.label.clone());
        f.migration_version = script.version;
        f.line = line;
        f.outside_transaction = true;
        if f.kind == FailureKind::Other {
            f.kind = FailureKind::Migration;
        }
        f
    };
    client
        .batch_execute(&step_settings_sql(ctx, tenant))
        .await
        .map_err(|e| Failure::from_pg(&e, still_at))?;
    let indexes = concurrent_index_names(script.sql);
    drop_invalid(
        client,
        ctx,
        tenant,
        &indexes,
        "left by an earlier attempt that did not finish; building it again",
    )
    .await?;
    // (text, lines before it in the file)
    let mut statements: Vec<(&str, usize)> = Vec::new();
    let mut start = 0usize;
    let scanned = for_each_statement(script.sql, |s| {
        let text = &script.sql[start..s.end];
        statements.push((text, script.sql[..start].matches('\n').count()));
        start = s.end;
    });
    if scanned.is_err() {
        statements = vec![(script.sql, 0)];
    }
    for (text, lines_before) in statements {
        if let Err(e) = client.simple_query(text).await {
            let f = blame(&e, line_of(text, &e, 0).map(|l| (l + lines_before) as u32));
            if !f.broken_connection {
                let _ = drop_invalid(
                    client,
                    ctx,
                    tenant,
                    &indexes,
                    "left by this failed build, so that nothing of it remains",
                )
                .await;
            }
            return Err(f);
        }
    }
    // The session as the step found it; a step that changed the role fails (what it created
    // since belongs to that role), and the tenants after it on this connection do not inherit it.
    let replies = client
        .simple_query(super::session::STEP_RESET)
        .await
        .map_err(|e| Failure::from_pg(&e, still_at))?;
    let changed_role = replies.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t") => {
            r.get(1).map(str::to_string)
        }
        _ => None,
    });
    match changed_role {
        Some(role) => {
            let mut f = Failure::new(
                FailureKind::Migration,
                format!(
                    "the no-transaction migration left the session running as role {role}: what it created since belongs to {role}; the session was reset, so the next tenants are not affected. Remove the SET ROLE or set_config('role', …) and grant the role tenantctl connects as what the migration needs"
                ),
                still_at,
            );
            f.migration = Some(script.label.clone());
            f.migration_version = script.version;
            f.outside_transaction = true;
            Err(f)
        }
        None => Ok(()),
    }
}

/// Session settings for a no-transaction step: what the preamble sets for a transaction, at
/// session level, with the step's own statement timeout; then the fence.
fn step_settings_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant) -> String {
    let tx = &ctx.tx;
    let path = tx.search_path(tenant.schema());
    let mut sql = format!(
        "SET search_path TO {path}; SET lock_timeout = {}; SET statement_timeout = {}; SET client_min_messages = warning;",
        tx.lock_timeout.as_millis(),
        tx.step_statement_timeout.map_or(0, |d| d.as_millis()),
    );
    if tx.check_client {
        sql.push_str(" SET client_connection_check_interval = 2000;");
    }
    if let Some(run) = tx.run_id {
        sql.push_str(&format!(" SET application_name = 'tenantctl run {run}';"));
    }
    sql.push_str(&format!(
        " {};",
        ctx.control.fence_sql(ctx.run_id, ctx.epoch, Some(tenant))
    ));
    sql
}

/// Drops the INVALID indexes among `names` in the tenant's schema (an interrupted or failed
/// `CREATE INDEX CONCURRENTLY` leaves one behind), concurrently, and says so.
async fn drop_invalid(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    names: &[String],
    why: &str,
) -> Result<(), Failure> {
    if names.is_empty() {
        return Ok(());
    }
    let rows = client
        .query_typed(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relnamespace = to_regnamespace($1) AND c.relname = ANY($2) AND NOT i.indisvalid",
            &[(&tenant.quoted_schema(), Type::TEXT), (&names, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(|e| Failure::from_pg(&e, None))?;
    for row in rows {
        let name: String = row.get(0);
        client
            .batch_execute(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                tenant.quoted_schema(),
                quote_ident(&name)
            ))
            .await
            .map_err(|e| Failure::from_pg(&e, None))?;
        ctx.events.emit(&Event::Warning {
            message: &format!(
                "{tenant}: dropped the INVALID index {name} (what an interrupted or failed CREATE INDEX CONCURRENTLY leaves) {why}"
            ),
        });
    }
    Ok(())
}
