//! The shared step: migrations applied once per cluster into the shared schema (tables for
//! every tenant), in one transaction under the same per-schema advisory lock as tenants, so
//! racing runners apply them exactly once. Each time they apply (or fail), the cluster's
//! ledger records it as a run of its own.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::config::Config;
use crate::control::{RunCommand, RunInfo, SharedOutcome, SHARED_ROW};
use crate::db::Session;
use crate::engine::apply::{rollback_on_error, Applied};
use crate::engine::failure::Failure;
use crate::engine::history;
use crate::engine::schema_tx::{preamble, trip, TxSettings};
use crate::engine::work::{Script, Segment};
use crate::migrations::MigrationSet;
use crate::pgerror::describe;
use crate::tenant::{quote_ident, quote_literal};
use crate::whoami::command_line;

/// History of the shared migrations, kept in the shared schema under a name of our own (an
/// application may use refinery's default table name in `public` itself).
pub const SHARED_HISTORY_TABLE: &str = "tenantctl_shared_history";

/// Quoted `"shared".tenantctl_shared_history`.
fn shared_history_table(schema: &str) -> String {
    format!("{}.{SHARED_HISTORY_TABLE}", quote_ident(schema))
}

/// `CREATE SCHEMA` only when it does not exist: `IF NOT EXISTS` would need CREATE on the
/// database even when it exists, which a deploy role that only migrates may lack.
fn create_if_missing(schema: &str) -> String {
    format!(
        "DO $tenantctl$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {lit}) \
             THEN CREATE SCHEMA {q}; END IF; END $tenantctl$;",
        lit = quote_literal(schema),
        q = quote_ident(schema),
    )
}

/// Applies the pending shared migrations of one cluster into `schema`: all of them or none.
/// The schema is created only when missing (`CREATE SCHEMA IF NOT EXISTS` would need CREATE
/// on the database even when it exists, which a deploy role that only migrates may lack).
async fn apply_shared(
    client: &Client,
    set: &MigrationSet,
    schema: &str,
    config: &Config,
) -> Result<Applied, Failure> {
    let result: Result<Applied, Failure> = async {
        let tx = TxSettings {
            lock_timeout: config.run.lock_timeout,
            statement_timeout: config.run.statement_timeout,
            step_statement_timeout: None,
            also_on_path: None,
            run_id: None,
            check_client: false,
        };
        let mut sql = format!("{} {}", preamble(schema, &tx), create_if_missing(schema));
        if let Some(ext) = &config.migrations.extensions_schema {
            // Tenants read it (types, functions, operator classes); only its owner writes.
            let q = quote_ident(ext);
            sql.push_str(&format!(
                " {} REVOKE CREATE ON SCHEMA {q} FROM PUBLIC; GRANT USAGE ON SCHEMA {q} TO PUBLIC;",
                create_if_missing(ext)
            ));
        }
        let table = shared_history_table(schema);
        let opening = [
            sql.as_str(),
            &history::ensure_sql(&table),
            &history::read_sql(&table),
        ];
        let replies = trip(client, &opening)
            .await
            .map_err(|e| Failure::from_pg(&e.error, None))?;
        let applied = history::parse(replies.last().map_or(&[][..], Vec::as_slice), None)?;
        history::check(&applied, set, true)?;
        let pending = history::pending(&applied, set, None);
        let before = applied.last().map(|m| m.version());
        let after = pending.last().map(|f| f.version).or(before);
        let segment = Segment::whole(
            pending
                .iter()
                .map(|f| Script {
                    label: f.label(),
                    // One shared schema: a failed file is applied nowhere else.
                    version: None,
                    sql: f.sql(),
                })
                .collect(),
            history::insert_sql(&table, &pending),
            after,
        );
        segment
            .send(
                client,
                None,
                &format!("{}{} COMMIT;", super::session::GUARD, segment.bookkeeping),
                before,
            )
            .await?;
        Ok(Applied {
            before,
            after,
            count: pending.len(),
            archived_as: None,
            from_pool: false,
            rows: None,
        })
    }
    .await;
    rollback_on_error(client, result).await
}

/// The newest shared migration applied in `schema` (None when none is, or no history yet).
pub async fn shared_version(client: &Client, schema: &str) -> anyhow::Result<Option<i32>> {
    let table = shared_history_table(schema);
    let read = |e: tokio_postgres::Error| {
        anyhow::anyhow!(
            "reading the shared migrations' history {table}: {}",
            describe(&e)
        )
    };
    let exists: Option<String> = client
        .query_typed_one("SELECT to_regclass($1)::text", &[(&table, Type::TEXT)])
        .await
        .map_err(read)?
        .get(0);
    if exists.is_none() {
        return Ok(None);
    }
    Ok(client
        .query_typed_one(&format!("SELECT max(version) FROM {table}"), &[])
        .await
        .map_err(read)?
        .get(0))
}

/// Applies the pending shared migrations on the session's cluster and, when anything was
/// applied or it failed, records that in the cluster's ledger as a run of its own
/// (`command`, e.g. `migrate (shared)`). The result is the shared transaction's, whatever the
/// ledger write after it does.
pub async fn apply_shared_recorded(
    session: &Session<'_>,
    config: &Config,
    actor: &str,
    set: &MigrationSet,
    command: RunCommand,
) -> Result<Applied, Failure> {
    let schema = &config.migrations.shared_schema;
    let result = apply_shared(&session.client, set, schema, config).await;
    let outcome = match &result {
        Ok(a) if a.count == 0 => return result,
        Ok(a) => SharedOutcome {
            before: a.before,
            after: a.after,
            applied: a.count as i32,
            failure: None,
        },
        Err(f) if f.broken_connection => return result,
        Err(f) => SharedOutcome {
            before: f.still_at,
            after: f.still_at,
            applied: 0,
            failure: Some(f.record(SHARED_ROW)),
        },
    };
    let argv = command_line();
    let info = RunInfo {
        command,
        target: set.latest(),
        digest: set.digest(),
        scope: &format!("shared:{schema}"),
        total: 1,
        actor,
        argv: &argv,
        seed: None,
    };
    // The shared transaction has committed (or rolled back) already: a ledger write that
    // fails here cannot change what happened, so it does not change the result either.
    let _ = session
        .control
        .record_shared(&session.client, &info, schema, &outcome)
        .await;
    result
}
