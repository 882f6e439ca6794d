//! What a tenant's schema holds that the copier needs, read from the catalog for that one
//! schema (never the whole catalog: an export at 10,000 tenants costs what it costs at 100).

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::archive::Table;
use crate::control::HISTORY_TABLE;

/// SQL: the relations of the schema named `$1` (`c`: oid, relname, relkind, …), found through
/// their dependency on the schema in `pg_depend`, by index: a scan of `pg_class`,
/// `pg_attribute` or `pg_constraint` would read every tenant's catalog rows (at 10,000
/// tenants, hundreds of thousands), and an export would cost more as the fleet grows.
pub(crate) const RELATIONS: &str =
    "(SELECT c.* FROM pg_depend d JOIN pg_class c ON c.oid = d.objid \
     WHERE d.refclassid = 'pg_namespace'::regclass \
       AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = $1) \
       AND d.refobjsubid = 0 AND d.classid = 'pg_class'::regclass AND d.deptype = 'n')";

/// The tables whose rows are copied, in name order: ordinary tables and partitions (a
/// partitioned table's rows are its partitions'), the history table aside. Each with the
/// columns that are copied (generated ones are computed again) and those whose type holds
/// large-object references.
pub struct Tables {
    pub tables: Vec<Table>,
    /// `table.column` of type `oid` or `lo`: their data lives outside the schema.
    pub large_objects: Vec<String>,
    /// Tables with user triggers (turned off during a load).
    pub triggered: Vec<String>,
}

pub async fn tables(client: &Client, schema: &str) -> Result<Tables, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            &format!(
                "SELECT c.relname::text, \
                    array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attgenerated = ''), \
                    array_agg(c.relname || '.' || a.attname) FILTER (WHERE a.atttypid = 'oid'::regtype \
                        OR a.atttypid = to_regtype('lo')), \
                    EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal) \
                 FROM {RELATIONS} c \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 WHERE c.relkind = 'r' AND c.relname <> $2 \
                 GROUP BY c.oid, c.relname ORDER BY c.relname"
            ),
            &[(&schema, Type::TEXT), (&HISTORY_TABLE, Type::TEXT)],
        )
        .await?;
    let mut out = Tables {
        tables: Vec::new(),
        large_objects: Vec::new(),
        triggered: Vec::new(),
    };
    for r in rows {
        let name: String = r.get(0);
        if r.get::<_, bool>(3) {
            out.triggered.push(name.clone());
        }
        out.large_objects
            .extend(r.get::<_, Option<Vec<String>>>(2).unwrap_or_default());
        out.tables.push(Table {
            name,
            columns: r.get::<_, Option<Vec<String>>>(1).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The schema's sequences (identity ones too) and their `last_value` (None: never used).
pub async fn sequences(
    client: &Client,
    schema: &str,
) -> Result<Vec<crate::archive::Sequence>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            &format!(
                "SELECT c.relname::text, pg_sequence_last_value(c.oid) FROM {RELATIONS} c \
                 WHERE c.relkind = 'S' ORDER BY 1"
            ),
            &[(&schema, Type::TEXT)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| crate::archive::Sequence {
            name: r.get(0),
            value: r.get(1),
        })
        .collect())
}

/// The schema's size on disk: its tables and materialized views with their indexes and
/// TOAST (what a move copies, for the pause an offline move announces).
pub async fn schema_bytes(client: &Client, schema: &str) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_typed_one(
            &format!(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM {RELATIONS} c \
                 WHERE c.relkind IN ('r', 'm')"
            ),
            &[(&schema, Type::TEXT)],
        )
        .await?;
    Ok(row.get(0))
}

/// The schema's materialized views that hold data (refreshed after a load).
pub async fn matviews(client: &Client, schema: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            &format!(
                "SELECT c.relname::text FROM {RELATIONS} c \
                 WHERE c.relkind = 'm' AND c.relispopulated ORDER BY 1"
            ),
            &[(&schema, Type::TEXT)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A foreign key of the schema: on which table, its name and its definition.
pub struct ForeignKey {
    pub table: String,
    pub name: String,
    pub definition: String,
}

/// The schema's foreign keys (on partitioned tables, the parent's only: adding it back
/// makes the partitions' again).
pub async fn foreign_keys(
    client: &Client,
    schema: &str,
) -> Result<Vec<ForeignKey>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            &format!(
                "SELECT c.relname::text, k.conname::text, pg_get_constraintdef(k.oid) \
                 FROM {RELATIONS} c JOIN pg_constraint k ON k.conrelid = c.oid \
                 WHERE k.contype = 'f' AND k.conparentid = 0 ORDER BY 1, 2"
            ),
            &[(&schema, Type::TEXT)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ForeignKey {
            table: r.get(0),
            name: r.get(1),
            definition: r.get(2),
        })
        .collect())
}

/// An index of the schema built again after a load (faster than keeping it up to date row
/// by row, as `pg_restore` does): a plain index by its definition, or the primary key,
/// unique or exclusion constraint it backs.
pub struct Index {
    pub table: String,
    pub name: String,
    /// `CREATE INDEX …` for a plain index; the constraint's definition otherwise.
    pub definition: String,
    pub constraint: bool,
}

/// The indexes of the schema's ordinary tables (not of partitions or partitioned tables,
/// whose indexes are attached to their parents'), with what backs a constraint marked.
pub async fn indexes(client: &Client, schema: &str) -> Result<Vec<Index>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            &format!(
                "SELECT t.relname::text, x.relname::text, \
                    coalesce(pg_get_constraintdef(k.oid), pg_get_indexdef(i.indexrelid)), k.oid IS NOT NULL \
                 FROM {RELATIONS} t JOIN pg_index i ON i.indrelid = t.oid \
                 JOIN pg_class x ON x.oid = i.indexrelid \
                 LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = t.oid \
                     AND k.contype IN ('p', 'u', 'x') \
                 WHERE t.relkind = 'r' AND NOT t.relispartition \
                   AND NOT x.relispartition AND t.relname <> $2 \
                 ORDER BY 1, 2"
            ),
            &[(&schema, Type::TEXT), (&HISTORY_TABLE, Type::TEXT)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Index {
            table: r.get(0),
            name: r.get(1),
            definition: r.get(2),
            constraint: r.get(3),
        })
        .collect())
}
