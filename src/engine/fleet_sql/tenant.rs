//! One tenant's transaction of a `query` or an `exec` (see [`super`]).
//!
//! - query: `BEGIN READ ONLY`, the session reset, the timeouts and the tenant's `search_path`
//!   (transaction-local), the SQL, the session guard and COMMIT, in one message (one
//!   statement each for the opening and the guard: the server's work per tenant is what a
//!   trivial query costs); no schema lock (reads wait for no migration). Its rows are
//!   emitted once the transaction has ended.
//! - exec: the preamble every schema transaction has (the schema's advisory lock), the run's
//!   fence, a check that this run has not done the tenant already (a retry after a COMMIT
//!   whose answer was lost), the SQL; then, knowing how many rows it affected, the guard,
//!   the ledger row and COMMIT: two round trips. `--dry-run` rolls back instead, recording
//!   nothing. `--until-zero` repeats it, each batch its own transaction, until a batch
//!   affects no row; every batch commits its rows into the ledger row with its work.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{FleetSql, Rows, Values};
use crate::control::SQLSTATE_EXEC_DONE;
use crate::engine::apply::{Applied, ApplyCtx, Mode};
use crate::engine::events::Event;
use crate::engine::failure::{Failure, FailureKind};
use crate::engine::schema_tx::{fresh_preamble, line_of, rows_affected, trip, TripError};
use crate::tenant::quote_literal;
use crate::tenant::Tenant;

/// A `query` or `exec` in `tenant` (see the module's documentation).
pub async fn apply(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    version: Option<i32>,
) -> Result<Applied, Failure> {
    let Some(sql) = ctx.sql else {
        return Err(Failure::new(
            FailureKind::Other,
            "no SQL to run (a bug in tenantctl)".into(),
            version,
        ));
    };
    let applied = |rows: u64| Applied {
        before: version,
        after: version,
        count: 0,
        archived_as: None,
        from_pool: false,
        rows: Some(rows),
    };
    match mode {
        Mode::Query => query(client, ctx, sql, tenant, version).await.map(applied),
        Mode::Exec {
            dry_run,
            until_zero,
        } => exec(client, ctx, sql, tenant, version, (dry_run, until_zero))
            .await
            .map(applied),
        _ => Err(Failure::new(
            FailureKind::Other,
            format!("{mode:?} is not fleet SQL (a bug in tenantctl)"),
            version,
        )),
    }
}

async fn query(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    sql: &FleetSql,
    tenant: &Tenant,
    version: Option<i32>,
) -> Result<u64, Failure> {
    let (body, json) = sql.to_send();
    // One message: the opening on the first line, the SQL from the second (its lines and
    // statements are counted from there), the guard and COMMIT after it. `\n;` ends a
    // trailing comment; the SQL scans to its end (checked by FleetSql::new), so nothing of
    // it can reach into what follows.
    let message = format!(
        "{}\n{body}\n;{SESSION_GUARD} COMMIT;",
        read_only_opening(ctx, sql, tenant)
    );
    let replies = trip(client, &[message.as_str()]).await.map_err(|e| {
        let in_sql =
            (OPENING_STATEMENTS..OPENING_STATEMENTS + sql.statements).contains(&e.completed);
        let mut f = Failure::from_pg(&e.error, version);
        if in_sql {
            blame_sql(&mut f, sql, &message, &e, 1);
            if e.error.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) {
                f.message = format!(
                    "{}: query runs each tenant read-only; change data with tenantctl exec",
                    f.message
                );
            }
        }
        f
    })?;
    let rows = last_result(sql_replies(&replies[0]), json);
    if let Err(first) = sql.same_columns(&rows) {
        return Err(Failure::new(
            FailureKind::ColumnsDiffer,
            format!(
                "its rows have the columns ({}), the first tenant's had ({})",
                rows.columns.join(", "),
                first.join(", ")
            ),
            version,
        ));
    }
    ctx.events.emit(&Event::Rows {
        tenant,
        rows: &rows,
    });
    Ok(rows.len() as u64)
}

/// The replies of a query's message up to the SQL's last statement: all but the guard's
/// and COMMIT's (the last two statements).
fn sql_replies(replies: &[SimpleQueryMessage]) -> &[SimpleQueryMessage] {
    // The third statement end from the last, found without collecting (once per tenant).
    let end = replies
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, m)| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .nth(2)
        .map(|(i, _)| i);
    end.map_or(&[], |i| &replies[..=i])
}

async fn exec(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    sql: &FleetSql,
    tenant: &Tenant,
    version: Option<i32>,
    (dry_run, until_zero): (bool, bool),
) -> Result<u64, Failure> {
    let tx = crate::engine::schema_tx::TxSettings {
        statement_timeout: sql.statement_timeout.or(ctx.tx.statement_timeout),
        ..ctx.tx
    };
    let mut opening = fresh_preamble(tenant.schema(), &tx);
    if !dry_run {
        opening.push_str(&format!(
            " {}; {};",
            ctx.control.fence_sql(ctx.run_id, ctx.epoch, Some(tenant)),
            ctx.control.exec_not_done_sql(ctx.run_id, tenant)
        ));
    }
    let mut total = 0u64;
    loop {
        let replies = match trip(client, &[opening.as_str(), sql.text()]).await {
            Ok(r) => r,
            Err(e) if e.index == 0 && is_done_already(&e) => {
                // Done by this run (its COMMIT's answer was lost): nothing more to do.
                let _ = client.batch_execute("ROLLBACK").await;
                return Ok(total);
            }
            Err(e) => return Err(blame(sql, e, version)),
        };
        let n = rows_affected(&replies[1]);
        total += n;
        if dry_run {
            let close = format!("{SESSION_GUARD} ROLLBACK;");
            trip(client, &[close.as_str()])
                .await
                .map_err(|e| blame(sql, e, version))?;
            return Ok(total);
        }
        let done = !until_zero || n == 0;
        let close = format!(
            "{SESSION_GUARD} {}; COMMIT;",
            ctx.control.exec_rows_sql(ctx.run_id, tenant, n, done)
        );
        trip(client, &[close.as_str()])
            .await
            .map_err(|e| blame(sql, e, version))?;
        if done {
            return Ok(total);
        }
        // A batch committed is done: stopping here loses nothing, and the same command
        // carries on with the next batch.
        let stopped = match ctx.cancel {
            Some(cancel) => cancel.pause(sql.batch_pause).await,
            None => {
                tokio::time::sleep(sql.batch_pause).await;
                false
            }
        };
        if stopped {
            return Err(Failure::new(
                FailureKind::Interrupted,
                format!("stopped between batches, {total} row(s) committed in this tenant"),
                version,
            ));
        }
    }
}

/// Before the COMMIT (and an exec's ledger row): the session runs as the same role with the
/// same `search_path` as the opening left it, in one plain expression (a `DO` block is compiled anew each time:
/// at 10,000 tenants that is most of a trivial query's cost). A change fails the tenant (its
/// transaction, and the change with it, rolls back), with what changed in the message.
/// Prepared statements are not looked for, unlike a migration's guard: reading
/// `pg_prepared_statement()` costs as much again as the rest of the guard, and one left by
/// a function cannot mislead the next tenant (PostgreSQL plans it again for another
/// `search_path`; preparing it again fails, loudly; exec's opening deallocates them). Other
/// settings are reset by the next opening's `RESET ALL`.
const SESSION_GUARD: &str = "SELECT CASE WHEN current_user <> current_setting('tenantctl.run_as') \
    OR current_setting('search_path') <> current_setting('tenantctl.search_path') \
    THEN ('the SQL left the session changed (role ' || current_user || ', search_path ' || current_setting('search_path') \
    || '): remove the SET ROLE or set_config it runs')::int END;";

/// How many statements [`read_only_opening`] has.
const OPENING_STATEMENTS: usize = 3;

/// The opening of a query's transaction, on one line: read-only, the settings reset (a
/// read-only transaction can leave nothing else behind that matters: no temporary table;
/// the guard refuses a role or search path), then in one statement
/// the timeouts, the tenant's `search_path` and what the guard compares with; no schema
/// lock.
fn read_only_opening(ctx: &ApplyCtx<'_>, sql: &FleetSql, tenant: &Tenant) -> String {
    let tx = &ctx.tx;
    let path = quote_literal(&tx.search_path(tenant.schema()));
    let timeout = sql.statement_timeout.or(tx.statement_timeout);
    format!(
        "BEGIN READ ONLY; RESET ALL; SELECT set_config('lock_timeout', '{lock}', true), \
         set_config('statement_timeout', '{statement}', true),{check} set_config('client_min_messages', 'warning', true), \
         set_config('tenantctl.run_as', current_user, true), \
         set_config('tenantctl.search_path', set_config('search_path', {path}, true), true);",
        lock = tx.lock_timeout.as_millis(),
        statement = timeout.map_or(0, |d| d.as_millis()),
        check = match tx.check_client {
            true => " set_config('client_connection_check_interval', '2000', true),",
            false => "",
        },
    )
}

fn is_done_already(e: &TripError) -> bool {
    e.error
        .code()
        .is_some_and(|c| c.code() == SQLSTATE_EXEC_DONE)
}

/// A failure of exec's trip, blamed on the SQL's line when the SQL (message 1) failed.
fn blame(sql: &FleetSql, e: TripError, version: Option<i32>) -> Failure {
    let mut f = Failure::from_pg(&e.error, version);
    if e.index == 1 {
        blame_sql(&mut f, sql, sql.text(), &e, 0);
    }
    f
}

/// Names the SQL and the line of `sent` the error is at, `lines_before` lines of `sent`
/// coming before the SQL.
fn blame_sql(f: &mut Failure, sql: &FleetSql, sent: &str, e: &TripError, lines_before: usize) {
    f.migration = Some(sql.origin.clone());
    f.line = line_of(sent, &e.error, e.completed)
        .and_then(|l| l.checked_sub(lines_before))
        .map(|l| l as u32);
}

/// The last statement's result: its columns and rows (none when it returns no rows).
fn last_result(replies: &[SimpleQueryMessage], json: bool) -> Rows {
    let mut current: Option<Rows> = None;
    let mut last = Rows::default();
    for m in replies {
        match m {
            SimpleQueryMessage::RowDescription(columns) => {
                current = Some(Rows {
                    columns: columns.iter().map(|c| c.name().to_string()).collect(),
                    values: Values::Text(Vec::new()),
                });
            }
            SimpleQueryMessage::Row(row) => {
                if let Some(Rows {
                    values: Values::Text(rows),
                    ..
                }) = &mut current
                {
                    rows.push(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    );
                }
            }
            SimpleQueryMessage::CommandComplete(_) => {
                last = current.take().unwrap_or_default();
            }
            _ => {}
        }
    }
    if !json {
        return last;
    }
    // Made JSON by the server: one text column, an object per row.
    let Values::Text(rows) = last.values else {
        return last;
    };
    let objects: Vec<String> = rows
        .into_iter()
        .map(|mut r| r.pop().flatten().unwrap_or_else(|| "{}".into()))
        .collect();
    let columns = objects
        .first()
        .and_then(|o| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(o).ok())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    Rows {
        columns,
        values: Values::Json(objects),
    }
}
