//! The messages of one schema's transaction. A transaction takes two round trips: the
//! opening (preamble, fence, registration, the history read) and the work (each migration
//! file as a message of its own, as it is on disk, then the bookkeeping and COMMIT). The
//! messages of a trip are pipelined: sent together, answered in order, so a schema costs two
//! round trips whatever the number of migrations. PostgreSQL parses a whole message before it
//! runs any of it, and an error's position is within that message: one file per message
//! makes the file to blame, and its line, exact.

use std::time::Duration;

use std::collections::VecDeque;

use futures::TryStreamExt;
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryStream};

use crate::control::schema_lock_sql;
use crate::tenant::quote_ident;

/// How a schema's transaction is set up.
#[derive(Debug, Clone, Copy)]
pub struct TxSettings<'a> {
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
    /// `statement_timeout` of a no-transaction migration's statements.
    pub step_statement_timeout: Option<Duration>,
    /// A schema on `search_path` after the one being migrated (the extensions schema).
    pub also_on_path: Option<&'a str>,
    /// The run, named in `application_name` so that a backend left behind by a killed
    /// process can be recognised.
    pub run_id: Option<i64>,
    /// `client_connection_check_interval` (PostgreSQL 14+): a statement whose client is gone
    /// stops within seconds instead of running on with its locks.
    pub check_client: bool,
}

impl TxSettings<'_> {
    /// `search_path` for `schema`'s work: the schema, then the extensions schema (if any),
    /// quoted.
    pub fn search_path(&self, schema: &str) -> String {
        std::iter::once(schema)
            .chain(self.also_on_path)
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `BEGIN`, the timeouts, the schema's advisory lock, quiet notices, and `search_path` set to
/// the schema (then the extensions schema, if any) for this transaction only (never on a
/// pooled session: it would leak to the next borrower). Identifiers are validated.
pub fn preamble(schema: &str, tx: &TxSettings<'_>) -> String {
    preamble_after(schema, tx, "")
}

/// The [`preamble`] of a schema's first transaction on a connection that served others: the
/// session is reset first (see [`super::session`]).
pub fn fresh_preamble(schema: &str, tx: &TxSettings<'_>) -> String {
    preamble_after(schema, tx, super::session::RESET)
}

fn preamble_after(schema: &str, tx: &TxSettings<'_>, reset: &str) -> String {
    let path = tx.search_path(schema);
    let mut sql = format!(
        "BEGIN; {reset} SET LOCAL lock_timeout = {lock}; SET LOCAL statement_timeout = {statement};",
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
    sql.push_str(super::session::RECORD);
    sql
}

/// Why a trip failed: the first message that failed, and PostgreSQL's error (the messages
/// after it in a transaction fail too, as "current transaction is aborted").
pub struct TripError {
    pub index: usize,
    pub error: tokio_postgres::Error,
    /// The replies of the messages before it.
    pub done: Vec<Vec<SimpleQueryMessage>>,
    /// How many statements of the failed message completed before the error: the failing
    /// statement's index in it (PostgreSQL gives no position for errors raised at run time).
    pub completed: usize,
}

/// How many bytes of messages may be sent ahead of their replies. Everything a schema
/// usually sends fits, so a trip is one round trip; a very large migration (sent in pieces,
/// see [`crate::migrations::scan::chunks`]) is streamed instead of copied whole into the
/// driver's buffers.
const IN_FLIGHT: usize = 8 << 20;

/// Sends `messages` as simple queries, pipelined (in one round trip when they fit in
/// [`IN_FLIGHT`]), and returns each one's replies, or the first that failed.
pub async fn trip(
    client: &Client,
    messages: &[&str],
) -> Result<Vec<Vec<SimpleQueryMessage>>, TripError> {
    let mut out: Vec<Vec<SimpleQueryMessage>> = Vec::with_capacity(messages.len());
    let mut in_flight: VecDeque<(SimpleQueryStream, usize)> = VecDeque::new();
    let mut bytes = 0usize;
    for m in messages {
        while !in_flight.is_empty() && bytes + m.len() > IN_FLIGHT {
            let (stream, size) = in_flight.pop_front().expect("not empty");
            bytes -= size;
            receive(stream, &mut out).await?;
        }
        // Sending only queues the message; the replies are read from the stream.
        match client.simple_query_raw(m).await {
            Ok(stream) => {
                in_flight.push_back((stream, m.len()));
                bytes += m.len();
            }
            Err(error) => {
                for (stream, _) in in_flight.drain(..) {
                    receive(stream, &mut out).await?;
                }
                let index = out.len();
                return Err(TripError {
                    index,
                    error,
                    done: out,
                    completed: 0,
                });
            }
        }
    }
    for (stream, _) in in_flight.drain(..) {
        receive(stream, &mut out).await?;
    }
    Ok(out)
}

/// Reads one message's replies into `out`, or fails the trip at it.
async fn receive(
    stream: SimpleQueryStream,
    out: &mut Vec<Vec<SimpleQueryMessage>>,
) -> Result<(), TripError> {
    let mut stream = std::pin::pin!(stream);
    let mut replies = Vec::new();
    loop {
        match stream.try_next().await {
            Ok(Some(reply)) => replies.push(reply),
            Ok(None) => {
                out.push(replies);
                return Ok(());
            }
            Err(error) => {
                let completed = replies
                    .iter()
                    .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
                    .count();
                return Err(TripError {
                    index: out.len(),
                    error,
                    done: std::mem::take(out),
                    completed,
                });
            }
        }
    }
}

/// The line of `sql` (one message) an error is to blame on: where PostgreSQL's position
/// points (a parse error, a missing relation); else, for an error raised while a statement
/// ran, the first line of that statement, the `completed + 1`th of the message.
pub fn line_of(sql: &str, e: &tokio_postgres::Error, completed: usize) -> Option<usize> {
    match e.as_db_error().map(|d| d.position()) {
        Some(Some(ErrorPosition::Original(pos))) => {
            let offset = (*pos as usize).saturating_sub(1);
            let prefix: String = sql.chars().take(offset).collect();
            (prefix.chars().count() == offset).then(|| prefix.matches('\n').count() + 1)
        }
        // A position inside a function's body, or none: the statement that was running.
        Some(_) => statement_line(sql, completed),
        None => None,
    }
}

/// The first line of the `index`th (0-based) statement of `sql`.
fn statement_line(sql: &str, index: usize) -> Option<usize> {
    let mut seen = 0usize;
    let mut line = None;
    let _ = crate::migrations::scan::for_each_statement(sql, |s| {
        if seen == index {
            line = Some(s.line);
        }
        seen += 1;
    });
    line
}

/// How many rows the last statement of a message affected.
pub fn rows_affected(replies: &[SimpleQueryMessage]) -> u64 {
    replies
        .iter()
        .rev()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}
