//! refinery's view of a transaction that *we* opened: a small implementation of refinery's
//! driver traits over a connection, so that refinery's own checks, SQL and history inserts
//! run inside the one transaction per schema that tenantctl owns. Also the transaction's
//! preamble, and the batch runner that finds which statement of a batch failed.

use std::time::Duration;

use futures::{pin_mut, StreamExt};
use refinery::Migration;
use refinery_core::traits::r#async::{AsyncQuery, AsyncTransaction};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::control::schema_lock_sql;
use crate::pgerror::describe;
use crate::tenant::quote_ident;

/// refinery's history table, kept inside each tenant schema.
pub const HISTORY_TABLE: &str = "refinery_schema_history";

/// Column name of the marker rows that tell which statement of a batch completed.
const STEP_MARKER: &str = "tenantctl_step_done";

/// How a schema's transaction is set up.
#[derive(Debug, Clone, Copy)]
pub struct TxSettings<'a> {
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
    /// A schema on `search_path` after the one being migrated (the extensions schema).
    pub also_on_path: Option<&'a str>,
    /// The run, named in `application_name` so that a backend left behind by a killed
    /// process can be recognised.
    pub run_id: Option<i64>,
    /// `client_connection_check_interval` (PostgreSQL 14+): a statement whose client is gone
    /// stops within seconds instead of running on with its locks.
    pub check_client: bool,
}

/// `BEGIN`, the timeouts, the schema's advisory lock, quiet notices, and `search_path` set to
/// the schema (then the extensions schema, if any) for this transaction only (never on a
/// pooled session: it would leak to the next borrower). Identifiers are validated.
pub fn preamble(schema: &str, tx: &TxSettings<'_>) -> String {
    let path = std::iter::once(schema)
        .chain(tx.also_on_path)
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "BEGIN; SET LOCAL lock_timeout = {lock}; SET LOCAL statement_timeout = {statement};",
        lock = tx.lock_timeout.as_millis(),
        statement = tx.statement_timeout.map_or(0, |d| d.as_millis()),
    );
    if tx.check_client {
        sql.push_str(" SET LOCAL client_connection_check_interval = 2000;");
    }
    if let Some(run) = tx.run_id {
        sql.push_str(&format!(
            " SET LOCAL application_name = 'tenantctl run {run}';"
        ));
    }
    sql.push_str(&format!(
        " {}; SET LOCAL client_min_messages = warning; SET LOCAL search_path TO {path};",
        schema_lock_sql(schema)
    ));
    sql
}

/// The statement that failed inside a batch, and where.
#[derive(Debug, Clone)]
pub struct FailedStep {
    pub query: String,
    pub line: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error("{}", describe(.0))]
    Pg(tokio_postgres::Error),
    #[error("{0}")]
    History(String),
}

/// refinery's view of our open transaction.
pub struct SchemaTx<'a> {
    pub client: &'a Client,
    /// The history refinery read, once it has.
    pub history: Option<Vec<Migration>>,
    /// The statement that failed, once one has.
    pub failed: Option<FailedStep>,
}

impl SchemaTx<'_> {
    pub fn new(client: &Client) -> SchemaTx<'_> {
        SchemaTx {
            client,
            history: None,
            failed: None,
        }
    }

    /// Runs statements as one simple-query batch (one round trip), with a marker row after
    /// each so that, on error, we know which statement failed and at which line.
    pub async fn run_batch(&mut self, queries: &[&str]) -> Result<usize, TxError> {
        let mut batch = String::new();
        let mut starts = Vec::with_capacity(queries.len());
        let mut chars = 0usize;
        for (i, q) in queries.iter().enumerate() {
            starts.push(chars);
            batch.push_str(q);
            let marker = format!("\n;\nSELECT {i} AS {STEP_MARKER};\n");
            chars += q.chars().count() + marker.chars().count();
            batch.push_str(&marker);
        }
        let mut done = 0usize;
        let outcome = match self.client.simple_query_raw(&batch).await {
            Ok(stream) => {
                pin_mut!(stream);
                let mut err = None;
                while let Some(msg) = stream.next().await {
                    match msg {
                        Ok(SimpleQueryMessage::Row(row))
                            if row.columns().first().map(|c| c.name()) == Some(STEP_MARKER) =>
                        {
                            done += 1;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                err.map_or(Ok(()), Err)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok(queries.len()),
            Err(e) => {
                if let Some(query) = queries.get(done) {
                    let line = match e.as_db_error().and_then(|d| d.position()) {
                        Some(ErrorPosition::Original(pos)) => {
                            let offset = (*pos as usize).saturating_sub(1);
                            offset.checked_sub(starts[done]).and_then(|rel| {
                                let mut it = query.chars();
                                let prefix: String = it.by_ref().take(rel).collect();
                                (prefix.chars().count() == rel && it.next().is_some())
                                    .then(|| prefix.matches('\n').count() + 1)
                            })
                        }
                        _ => None,
                    };
                    self.failed = Some(FailedStep {
                        query: (*query).to_string(),
                        line,
                    });
                }
                Err(TxError::Pg(e))
            }
        }
    }

    /// Reads a history table (`table` is quoted and validated) in refinery's terms.
    pub async fn read_history(&mut self, table: &str) -> Result<Vec<Migration>, TxError> {
        let query =
            format!("SELECT version, name, applied_on, checksum FROM {table} ORDER BY version ASC");
        self.query(&query).await
    }
}

impl AsyncTransaction for SchemaTx<'_> {
    type Error = TxError;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let queries: Vec<&str> = queries.collect();
        self.run_batch(&queries).await
    }
}

impl AsyncQuery<Vec<Migration>> for SchemaTx<'_> {
    async fn query(&mut self, query: &str) -> Result<Vec<Migration>, Self::Error> {
        let messages = self.client.simple_query(query).await.map_err(TxError::Pg)?;
        let mut applied = Vec::new();
        for msg in messages {
            let SimpleQueryMessage::Row(row) = msg else {
                continue;
            };
            let bad = |what: &str| {
                TxError::History(format!(
                    "{HISTORY_TABLE} has a row with an unreadable {what} ({:?}); repair the history table",
                    row.get(0)
                ))
            };
            let version: i32 = row
                .get(0)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("version"))?;
            let name = row.get(1).unwrap_or_default().to_string();
            let applied_on = row
                .get(2)
                .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
                .ok_or_else(|| bad("applied_on"))?;
            let checksum: u64 = row
                .get(3)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("checksum"))?;
            applied.push(Migration::applied(version, name, applied_on, checksum));
        }
        self.history = Some(applied.clone());
        Ok(applied)
    }
}

impl refinery::AsyncMigrate for SchemaTx<'_> {}
