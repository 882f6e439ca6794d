//! The cutover of a move, in one source transaction: the tenant's tables held against writes
//! (reads go on), the WAL position taken, the target seen to apply up to it (within
//! `max_pause`, else everything is let go and tried again later), sequences copied,
//! materialized views refreshed, row counts (and with `verify`, content checksums) compared,
//! then the caller's last steps (its hook, the audit) and [`commit`]: the source schema
//! renamed out of the way and the tenant marked moved, committed together.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::link;
use crate::control::Control;
use crate::engine::copy::catalog;
use crate::pgerror::describe;
use crate::tenant::{quote_ident, quote_literal, Tenant};

fn err(what: &str, e: &tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", describe(e))
}

/// What holding the tables came to.
pub enum Held {
    /// The target applied everything: the source transaction is open, the tables held.
    CaughtUp { since: Instant },
    /// The target did not catch up within `max_pause`: everything was let go.
    TooSlow { lag_bytes: i64 },
}

/// Holds the tenant's tables (`EXCLUSIVE`: reads go on, writes wait) in a transaction on
/// `source` and waits until the move's subscription has applied every change before the
/// hold. Online moves only; an offline move holds them from the start (see [`hold_offline`]).
pub async fn hold(
    (source, flusher): (&Client, &Client),
    (schema, tables): (&str, &[String]),
    link_name: &str,
    max_pause: Duration,
) -> anyhow::Result<Held> {
    let ms = max_pause.as_millis().max(1);
    let held = source
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = 0; LOCK TABLE {} IN EXCLUSIVE MODE",
            qualified(schema, tables)
        ))
        .await;
    if let Err(e) = held {
        let _ = source.batch_execute("ROLLBACK").await;
        // Another transaction held a table longer than the pause allows (or took them in
        // another order): try again later.
        use tokio_postgres::error::SqlState;
        if [
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .iter()
        .any(|c| e.code() == Some(c))
        {
            let lag = link::lag(source, link_name).await?.unwrap_or(0);
            return Ok(Held::TooSlow { lag_bytes: lag });
        }
        return Err(err("holding the tenant's tables for the cutover", &e));
    }
    let since = Instant::now();
    let lsn: String = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| err("reading the source's WAL position", &e))?
        .get(0);
    // The insert position, not the write position: a write committed just before the hold
    // with `synchronous_commit = off` may not be written out yet, and it must be in the
    // stream before the cutover. The stream carries only flushed WAL: a transaction with a
    // synchronous commit flushes it now instead of at the WAL writer's next round.
    flusher
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT")
        .await
        .map_err(|e| err("flushing the source's WAL", &e))?;
    loop {
        if link::applied_up_to(source, link_name, &lsn).await? {
            return Ok(Held::CaughtUp { since });
        }
        if since.elapsed() >= max_pause {
            let lag = link::lag(source, link_name).await?.unwrap_or(0);
            source
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| err("letting the tenant's tables go", &e))?;
            return Ok(Held::TooSlow { lag_bytes: lag });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// An offline move's hold: the tables held against writes in a `REPEATABLE READ`
/// transaction whose snapshot the first copy then reads (the lock comes first, so the
/// snapshot holds every write).
pub async fn hold_offline(
    source: &Client,
    (schema, tables): (&str, &[String]),
) -> anyhow::Result<()> {
    source
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL lock_timeout = '30s'; LOCK TABLE {} IN EXCLUSIVE MODE",
            qualified(schema, tables)
        ))
        .await
        .map_err(|e| err("holding the tenant's tables against writes", &e))
}

fn qualified(schema: &str, tables: &[String]) -> String {
    tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(schema), quote_ident(t)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The target made whole for what logical replication does not carry: every sequence's
/// value from the source (read in the held transaction), materialized views refreshed.
pub async fn settle_target(source: &Client, target: &Client, schema: &str) -> anyhow::Result<()> {
    let seqs = catalog::sequences(source, schema)
        .await
        .map_err(|e| err("reading the source's sequences", &e))?;
    let mut sql = String::new();
    for s in seqs {
        let Some(value) = s.value else { continue };
        sql.push_str(&format!(
            "SELECT setval({}, {value});",
            quote_literal(&format!("{}.{}", quote_ident(schema), quote_ident(&s.name)))
        ));
    }
    for view in catalog::matviews(target, schema)
        .await
        .map_err(|e| err("reading the target's materialized views", &e))?
    {
        sql.push_str(&format!(
            "REFRESH MATERIALIZED VIEW {}.{};",
            quote_ident(schema),
            quote_ident(&view)
        ));
    }
    if !sql.is_empty() {
        target
            .batch_execute(&sql)
            .await
            .map_err(|e| err("setting the target's sequences and views", &e))?;
    }
    Ok(())
}

/// One table's rows on both sides (and, with `--verify`, a checksum of their contents).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableCheck {
    pub table: String,
    pub rows: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// Row counts (and checksums) of every table, source and target at once; an error naming
/// the tables that differ.
pub async fn compare(
    (source, target): (&Client, &Client),
    (source_schema, target_schema): (&str, &str),
    tables: &[String],
    verify: bool,
) -> anyhow::Result<Vec<TableCheck>> {
    let (a, b) = futures::join!(
        table_sums(source, source_schema, tables, verify),
        table_sums(target, target_schema, tables, verify)
    );
    let (mut a, mut b) = (
        a.map_err(|e| err("counting the source's rows", &e))?,
        b.map_err(|e| err("counting the target's rows", &e))?,
    );
    // A UNION ALL's rows come in no promised order (a parallel append mixes them).
    a.sort_by(|x, y| x.table.cmp(&y.table));
    b.sort_by(|x, y| x.table.cmp(&y.table));
    let differ: Vec<String> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.rows != y.rows || x.checksum != y.checksum)
        .map(|(x, y)| match x.rows == y.rows {
            true => format!("{} (same {} rows, different contents)", x.table, x.rows),
            false => format!(
                "{} ({} rows on the source, {} on the target)",
                x.table, x.rows, y.rows
            ),
        })
        .collect();
    if !differ.is_empty() {
        anyhow::bail!(
            "the target does not hold what the source holds: {}; nothing was cut over",
            differ.join(", ")
        );
    }
    Ok(a)
}

async fn table_sums(
    client: &Client,
    schema: &str,
    tables: &[String],
    verify: bool,
) -> Result<Vec<TableCheck>, tokio_postgres::Error> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    // A row's text is the same on both servers when the session's formats are.
    let sum = match verify {
        true => "coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text",
        false => "NULL::text",
    };
    let sql = tables
        .iter()
        .map(|name| {
            format!(
                "SELECT {}::text, count(*), {sum} FROM {}.{} t",
                quote_literal(name),
                quote_ident(schema),
                quote_ident(name)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let formats = "SET timezone = 'UTC'; SET datestyle = 'ISO, MDY'; SET intervalstyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'";
    if verify {
        client.batch_execute(formats).await?;
    }
    let rows = client.query(&sql, &[]).await;
    if verify {
        let _ = client
            .batch_execute("RESET timezone; RESET datestyle; RESET intervalstyle; RESET extra_float_digits; RESET bytea_output")
            .await;
    }
    Ok(rows?
        .iter()
        .map(|r| TableCheck {
            table: r.get(0),
            rows: r.get(1),
            checksum: r.get(2),
        })
        .collect())
}

/// The last step of the source's transaction: the schema renamed to `old_schema`, the
/// tenant marked moved, the move cut over; COMMIT.
pub async fn commit(
    source: &Client,
    control: &Control,
    (tenant, move_id): (&Tenant, i64),
    old_schema: &str,
) -> anyhow::Result<()> {
    let sql = format!(
        "{} COMMIT;",
        control.cutover_sql(tenant, old_schema, move_id)
    );
    if let Err(e) = source.batch_execute(&sql).await {
        let _ = source.batch_execute("ROLLBACK").await;
        return Err(err("committing the cutover on the source", &e));
    }
    Ok(())
}
