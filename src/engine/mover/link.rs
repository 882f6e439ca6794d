//! The replication link of an online move: a publication and a logical slot on the source, a
//! subscription on the target, all named after the move ([`link_name`]) so that a later
//! command finds them whatever became of the process that made them; and the first copy's
//! snapshot, aligned with the slot.
//!
//! Alignment without a replication connection: tokio-postgres speaks no replication
//! protocol (so `CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')` is out of reach), so the
//! slot is made with `pg_create_logical_replication_slot` while the tenant's tables are held
//! in SHARE mode by a `REPEATABLE READ` transaction that has not taken its snapshot yet (a
//! LOCK takes none). No write to the tenant commits between the lock and the snapshot,
//! which is taken right after the slot exists and exported to the copying connection:
//! every write the snapshot holds committed before the slot's start, every write after it
//! is in the stream. Writes to the tenant wait for the time the slot takes to be made
//! (milliseconds on a quiet server; it waits for transactions already running to end,
//! bounded by `max_wait`).

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::pgerror::describe;
use crate::tenant::{quote_ident, quote_literal};

/// The prefix of every publication, slot and subscription a move makes.
pub const PREFIX: &str = "tenantctl_mv_";

/// The name of a move's publication, slot and subscription: the prefix and a hash of the
/// source database and the tenant (slots are per server, so two fleets on one server moving
/// the same id do not meet; a tenant is in one move at a time).
pub fn link_name(source_database: &str, tenant_id: &str) -> String {
    let key = format!("{source_database}\u{0}{tenant_id}");
    format!("{PREFIX}{}", crate::digest::fnv1a_hex(key.bytes()))
}

fn err(what: &str, e: &tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", describe(e))
}

/// `schema.table, …` quoted.
fn table_list(schema: &str, tables: &[String]) -> String {
    tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(schema), quote_ident(t)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The publication of the tenant's tables (made anew: a leftover of an earlier attempt is
/// replaced). Tables, not `FOR TABLES IN SCHEMA`: publishing a schema needs a superuser on
/// PostgreSQL 15, publishing tables needs only their ownership.
pub async fn create_publication(
    client: &Client,
    link: &str,
    schema: &str,
    tables: &[String],
) -> anyhow::Result<()> {
    let sql = format!(
        "DROP PUBLICATION IF EXISTS {l}; CREATE PUBLICATION {l} FOR TABLE {}",
        table_list(schema, tables),
        l = quote_ident(link),
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| err("creating the publication on the source", &e))
}

/// What [`aligned_start`] made: how long the tenant's writes waited for the slot.
pub struct Aligned {
    pub pause: Duration,
}

/// The slot and the first copy's snapshot, aligned (see the module's doc). On return,
/// `copier` is in a `REPEATABLE READ, READ ONLY` transaction on that snapshot; `locker` and
/// `slotter` are free again. None: the tables could not be held, or the slot not made,
/// within `max_wait` (transactions running on the source); nothing is held then, and the
/// caller may try again. On error nothing is held either (a slot made is dropped again).
pub async fn aligned_start(
    (locker, slotter, copier): (&Client, &Client, &Client),
    link: &str,
    (schema, tables): (&str, &[String]),
    max_wait: Duration,
) -> anyhow::Result<Option<Aligned>> {
    use tokio_postgres::error::SqlState;
    let ms = max_wait.as_millis().max(1);
    let held = locker
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL lock_timeout = {ms}; LOCK TABLE {} IN SHARE MODE",
            table_list(schema, tables)
        ))
        .await;
    if let Err(e) = held {
        let _ = locker.batch_execute("ROLLBACK").await;
        if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
            || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
        {
            return Ok(None);
        }
        return Err(err(
            "holding the tenant's tables for the start of the stream",
            &e,
        ));
    }
    let t0 = Instant::now();
    let made = match slotter
        .batch_execute(&format!("SET statement_timeout = {ms}"))
        .await
    {
        Ok(()) => {
            slotter
                .query_typed(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[(&link, Type::TEXT)],
                )
                .await
        }
        Err(e) => Err(e),
    };
    let _ = slotter.batch_execute("RESET statement_timeout").await;
    if let Err(e) = made {
        let _ = locker.batch_execute("ROLLBACK").await;
        if e.code() == Some(&SqlState::QUERY_CANCELED) {
            return Ok(None);
        }
        return Err(err(
            "creating the replication slot on the source (it waits for the transactions already running there to end)",
            &e,
        ));
    }
    let exported = locker.query_typed("SELECT pg_export_snapshot()", &[]).await;
    let snapshot: String = match exported {
        Ok(rows) => rows[0].get(0),
        Err(e) => {
            let _ = locker.batch_execute("ROLLBACK").await;
            drop_slot(slotter, link).await?;
            return Err(err("exporting the snapshot", &e));
        }
    };
    let imported = copier
        .batch_execute(&format!(
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&snapshot)
        ))
        .await;
    let _ = locker.batch_execute("ROLLBACK").await;
    let pause = t0.elapsed();
    if let Err(e) = imported {
        let _ = copier.batch_execute("ROLLBACK").await;
        drop_slot(slotter, link).await?;
        return Err(err("taking the snapshot for the first copy", &e));
    }
    Ok(Some(Aligned { pause }))
}

/// Waits, holding nothing, until the write transactions running on the source's server now
/// have ended (at most `limit`; false: some still run), so that the slot made with the
/// tenant's writes held waits only for those that started since.
pub async fn wait_for_running(client: &Client, limit: Duration) -> anyhow::Result<bool> {
    let since: std::time::SystemTime = client
        .query_one("SELECT now()", &[])
        .await
        .map_err(|e| err("reading the source's clock", &e))?
        .get(0);
    let deadline = Instant::now() + limit;
    loop {
        let running: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL \
                 AND pid <> pg_backend_pid() AND xact_start <= $1",
                &[&since],
            )
            .await
            .map_err(|e| err("reading the transactions running on the source", &e))?
            .get(0);
        if running == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SQL on the target, in the transaction that creates the schema: the subscription, on the
/// slot made by [`aligned_start`], without a copy of its own (tenantctl's copy is in the
/// same transaction), streaming once that transaction commits.
pub fn create_subscription_sql(link: &str, conninfo: &str) -> String {
    format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} \
         WITH (create_slot = false, slot_name = {}, copy_data = false, enabled = true)",
        quote_ident(link),
        quote_literal(conninfo),
        quote_ident(link),
        quote_literal(link)
    )
}

/// Drops the subscription on the target, if it is there, without touching the source (the
/// slot is dropped there by [`drop_source`]): disabled, detached from its slot, dropped.
pub async fn drop_subscription(client: &Client, link: &str) -> anyhow::Result<bool> {
    let exists = client
        .query_typed(
            "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[(&link, Type::TEXT)],
        )
        .await
        .map_err(|e| err("looking for the move's subscription", &e))?;
    if exists.is_empty() {
        return Ok(false);
    }
    let q = quote_ident(link);
    client
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {q} DISABLE; ALTER SUBSCRIPTION {q} SET (slot_name = NONE); DROP SUBSCRIPTION {q}"
        ))
        .await
        .map_err(|e| err("dropping the move's subscription on the target", &e))?;
    Ok(true)
}

/// Drops the move's slot on the source, once no walsender holds it (the subscription's
/// worker stops when it is disabled or dropped; after 10 s it is terminated).
pub async fn drop_slot(client: &Client, link: &str) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = client
            .query_typed(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[(&link, Type::TEXT)],
            )
            .await
            .map_err(|e| err("looking for the move's replication slot", &e))?;
        let Some(row) = rows.first() else {
            return Ok(false);
        };
        match row.get::<_, Option<i32>>(0) {
            None => break,
            Some(pid) if Instant::now() > deadline => {
                let _ = client
                    .query_typed("SELECT pg_terminate_backend($1)", &[(&pid, Type::INT4)])
                    .await;
            }
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match client
        .query_typed(
            "SELECT pg_drop_replication_slot($1)",
            &[(&link, Type::TEXT)],
        )
        .await
    {
        Ok(_) => Ok(true),
        // Taken again by a walsender in between: one more round.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
            Box::pin(drop_slot(client, link)).await
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => Ok(false),
        Err(e) => Err(err(
            "dropping the move's replication slot on the source",
            &e,
        )),
    }
}

/// Drops the move's publication and slot on the source, if they are there.
pub async fn drop_source(client: &Client, link: &str) -> anyhow::Result<()> {
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(link)))
        .await
        .map_err(|e| err("dropping the move's publication on the source", &e))?;
    drop_slot(client, link).await?;
    Ok(())
}

/// How far the target's subscription is behind the source: bytes of WAL between the
/// source's current position and what the slot's consumer confirmed. None: no slot.
pub async fn lag(client: &Client, link: &str) -> anyhow::Result<Option<i64>> {
    let rows = client
        .query_typed(
            "SELECT (pg_current_wal_lsn() - coalesce(confirmed_flush_lsn, restart_lsn))::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[(&link, Type::TEXT)],
        )
        .await
        .map_err(|e| err("reading the move's lag", &e))?;
    Ok(rows.first().map(|r| r.get::<_, i64>(0).max(0)))
}

/// Whether the target has applied everything up to `lsn`: the walsender of the
/// subscription reports the position its worker applied (`replay_lsn`).
pub async fn applied_up_to(client: &Client, link: &str, lsn: &str) -> anyhow::Result<bool> {
    let rows = client
        .query_typed(
            "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND replay_lsn >= $2::text::pg_lsn",
            &[(&link, Type::TEXT), (&lsn, Type::TEXT)],
        )
        .await
        .map_err(|e| err("reading how far the target applied the stream", &e))?;
    Ok(!rows.is_empty())
}

/// How many times the target's subscription failed to apply a change (0: none, or no
/// subscription).
pub async fn apply_errors(client: &Client, link: &str) -> anyhow::Result<i64> {
    let rows = client
        .query_typed(
            "SELECT apply_error_count FROM pg_stat_subscription_stats WHERE subname = $1",
            &[(&link, Type::TEXT)],
        )
        .await;
    match rows {
        Ok(rows) => Ok(rows.first().map_or(0, |r| r.get(0))),
        // Before PostgreSQL 15 there is no such view: the stall bound is what is left.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(err("reading the subscription's errors", &e)),
    }
}

/// Replication objects named like a move's, on one cluster: slots and publications
/// (a source's), subscriptions (a target's), and table-sync slots of those subscriptions.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Leftovers {
    pub slots: Vec<String>,
    pub publications: Vec<String>,
    pub subscriptions: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.publications.is_empty() && self.subscriptions.is_empty()
    }

    /// Every name, once.
    pub fn names(&self) -> std::collections::BTreeSet<&str> {
        self.slots
            .iter()
            .chain(&self.publications)
            .chain(&self.subscriptions)
            .map(String::as_str)
            .collect()
    }
}

/// The move objects on this cluster (this database's publications and subscriptions, the
/// server's slots of this database, with the table-sync slots `pg_<oid>_sync_…` of its
/// subscriptions: a subscription dropped half-way leaves those too).
pub async fn find(client: &Client) -> anyhow::Result<Leftovers> {
    let like = format!("{PREFIX}%");
    let rows = client
        .query_typed(
            "SELECT 's', slot_name::text FROM pg_replication_slots \
               WHERE database = current_database() AND (slot_name LIKE $1 \
                  OR slot_name::text ~ ('^pg_(' || coalesce((SELECT string_agg(oid::text, '|') FROM pg_subscription WHERE subname LIKE $1), '0') || ')_sync_')) \
             UNION ALL SELECT 'p', pubname::text FROM pg_publication WHERE pubname LIKE $1 \
             UNION ALL SELECT 'u', subname::text FROM pg_subscription \
               WHERE subname LIKE $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY 1, 2",
            &[(&like, Type::TEXT)],
        )
        .await
        .map_err(|e| err("looking for replication objects of moves", &e))?;
    let mut out = Leftovers::default();
    for r in rows {
        let (kind, name): (String, String) = (r.get(0), r.get(1));
        match kind.as_str() {
            "s" => out.slots.push(name),
            "p" => out.publications.push(name),
            _ => out.subscriptions.push(name),
        }
    }
    Ok(out)
}
