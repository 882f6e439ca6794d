//! What an online move needs, asked of both clusters before anything changes: logical WAL,
//! the privileges to publish, make a slot and subscribe, a free slot and walsender, and
//! tables that logical replication can carry (a replica identity for UPDATE and DELETE, not
//! unlogged). Each missing piece is named with its fix; `--offline` needs none of them.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::control::HISTORY_TABLE;
use crate::engine::copy::catalog::RELATIONS;
use crate::pgerror::describe;

/// The tenant's tables that a move publishes (its history table aside: migrations make it
/// on the target), those that reference others first: the order a move locks them in. An
/// application's transaction that inserts into a child table then share-locks the parent row
/// (a foreign key check) holds the child first; taking the child first too, a move waits
/// for it instead of deadlocking with it. The schema's relations are found through
/// `pg_depend` by index, as the copier finds them (`catalog::RELATIONS`): this runs inside a
/// cutover, and a scan of `pg_class` or `pg_constraint` would cost what the fleet's size does.
pub async fn tables(client: &Client, schema: &str) -> anyhow::Result<Vec<Table>> {
    let rows = client
        .query_typed(
            &format!(
                "WITH RECURSIVE rel AS {RELATIONS}, \
                 fk AS ( \
                     SELECT k.conrelid AS child, k.confrelid AS parent FROM pg_constraint k \
                     WHERE k.conrelid IN (SELECT oid FROM rel) AND k.contype = 'f' AND k.conrelid <> k.confrelid), \
                 reach (child, parent, depth) AS ( \
                     SELECT child, parent, 1 FROM fk \
                     UNION SELECT r.child, f.parent, r.depth + 1 FROM reach r JOIN fk f ON f.child = r.parent \
                     WHERE r.depth < 16) \
                 SELECT c.relname::text, c.relpersistence = 'u', \
                        c.relreplident = 'f' OR (c.relreplident IN ('d', 'i') AND EXISTS ( \
                            SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                              AND (CASE c.relreplident WHEN 'd' THEN i.indisprimary ELSE i.indisreplident END))), \
                        (SELECT count(DISTINCT parent) FROM reach WHERE reach.child = c.oid) AS refs \
                 FROM rel c WHERE c.relkind = 'r' AND c.relname <> $2 ORDER BY refs DESC, 1"
            ),
            &[(&schema, Type::TEXT), (&HISTORY_TABLE, Type::TEXT)],
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading the tenant's tables: {}", describe(&e)))?;
    Ok(rows
        .iter()
        .map(|r| Table {
            name: r.get(0),
            unlogged: r.get(1),
            identity: r.get(2),
        })
        .collect())
}

/// The names of the tables a move publishes.
pub async fn table_names(client: &Client, schema: &str) -> anyhow::Result<Vec<String>> {
    Ok(tables(client, schema)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect())
}

/// A table as a move sees it.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub unlogged: bool,
    /// UPDATE and DELETE can be replicated: a primary key, a replica identity index, or FULL.
    pub identity: bool,
}

/// What the source lacks for an online move, one line each (empty: nothing).
pub async fn source(client: &Client, tables: &[Table]) -> anyhow::Result<Vec<String>> {
    let row = client
        .query_typed_one(
            "SELECT current_setting('wal_level'), \
                    (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user), \
                    has_database_privilege(current_database(), 'CREATE'), \
                    (current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots))::int4, \
                    (current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication))::int8",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("asking the source what it allows: {}", describe(&e)))?;
    let mut missing = Vec::new();
    let wal: String = row.get(0);
    if wal != "logical" {
        missing.push(format!(
            "the source has wal_level = {wal}; an online move streams the changes with logical replication, which needs wal_level = logical (ALTER SYSTEM SET wal_level = logical, then a restart; on a managed service, its logical replication setting)"
        ));
    }
    if !row.get::<_, bool>(1) {
        missing.push("the source's role may not make a replication slot: it needs the REPLICATION attribute (ALTER ROLE ... REPLICATION) or to be a superuser".into());
    }
    if !row.get::<_, bool>(2) {
        missing.push(
            "the source's role may not create a publication: it needs CREATE on the database"
                .into(),
        );
    }
    if row.get::<_, i32>(3) < 1 {
        missing.push("the source has no free replication slot: raise max_replication_slots (a restart), or drop a slot nobody uses".into());
    }
    if row.get::<_, i64>(4) < 1 {
        missing.push("the source has no free walsender: raise max_wal_senders (a restart)".into());
    }
    let unlogged: Vec<&str> = tables
        .iter()
        .filter(|t| t.unlogged)
        .map(|t| t.name.as_str())
        .collect();
    if !unlogged.is_empty() {
        missing.push(format!(
            "unlogged tables cannot be replicated: {}",
            names(&unlogged)
        ));
    }
    let no_identity: Vec<&str> = tables
        .iter()
        .filter(|t| !t.identity && !t.unlogged)
        .map(|t| t.name.as_str())
        .collect();
    if !no_identity.is_empty() {
        missing.push(format!(
            "tables without a primary key or replica identity: {} (once published, an UPDATE or DELETE on them would fail on the source; give them a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL, in a migration)",
            names(&no_identity)
        ));
    }
    Ok(missing)
}

/// What the target lacks for an online move.
pub async fn target(client: &Client) -> anyhow::Result<Vec<String>> {
    let row = client
        .query_typed_one(
            "SELECT rolsuper OR (to_regrole('pg_create_subscription') IS NOT NULL \
                 AND pg_has_role(current_user, 'pg_create_subscription', 'MEMBER')), \
                    current_setting('max_logical_replication_workers')::int \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("asking the target what it allows: {}", describe(&e)))?;
    let mut missing = Vec::new();
    if !row.get::<_, bool>(0) {
        missing.push("the target's role may not create a subscription: it must be a superuser (PostgreSQL 15), or a member of pg_create_subscription (16 and up)".into());
    }
    if row.get::<_, i32>(1) < 1 {
        missing.push("the target has max_logical_replication_workers = 0".into());
    }
    Ok(missing)
}

/// The first five names, and how many more.
fn names(list: &[&str]) -> String {
    let shown = list.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    format!(
        "{shown}{}",
        crate::lists::and_more(list.len().saturating_sub(5))
    )
}
