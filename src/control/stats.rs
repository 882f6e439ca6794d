//! `tenant stats`: tenant sizes and activity, one catalog query per cluster (never one per tenant): the
//! relations of every registered tenant's schema, summed by schema, with the statistics
//! collector's row estimates, writes and scans since its last reset.

use tokio_postgres::Client;

use super::Control;
use crate::pgerror::describe;

/// One tenant's size and activity.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantStats {
    pub id: String,
    pub schema: String,
    /// Heap bytes (tables, with their free space map and visibility map).
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub toast_bytes: i64,
    /// `table_bytes + index_bytes + toast_bytes`.
    pub total_bytes: i64,
    /// `pg_class.reltuples` summed (an estimate: -1 per never-analyzed table counts as 0).
    pub rows: i64,
    /// Inserts, updates and deletes since the statistics reset.
    pub writes: i64,
    /// Sequential and index scans since the statistics reset.
    pub scans: i64,
    #[serde(skip)]
    pub labels: crate::labels::Labels,
}

impl Control {
    /// Every active tenant of the registry and its stats, by id. Sizes are the planner's
    /// (`relpages`, kept by VACUUM, ANALYZE and CREATE INDEX: no file is read), or with
    /// `exact` the files' (`pg_relation_size`: opens every relation, about 1 s per 1,000
    /// tenants of the repo's schema).
    pub async fn tenant_stats(
        &self,
        client: &Client,
        exact: bool,
    ) -> anyhow::Result<Vec<TenantStats>> {
        let registry = self.table("tenants");
        let (table, index, toast) = match exact {
            true => (
                "pg_relation_size(c.oid, 'main') + pg_relation_size(c.oid, 'fsm') + pg_relation_size(c.oid, 'vm')",
                "pg_relation_size(c.oid)",
                "CASE WHEN c.reltoastrelid <> 0 THEN pg_total_relation_size(c.reltoastrelid) ELSE 0 END",
            ),
            false => (
                "c.relpages::int8 * bs.b",
                "c.relpages::int8 * bs.b",
                "coalesce((SELECT x.relpages FROM pg_class x WHERE x.oid = c.reltoastrelid), 0)::int8 * bs.b",
            ),
        };
        let sql = format!(
            "WITH t AS (SELECT id, schema_name, coalesce(to_jsonb(r) -> 'labels', '{{}}')::text AS labels \
                        FROM {registry} r WHERE state = 'active'), \
                  c AS (SELECT n.nspname, c.relkind, c.reltuples, c.relpages, c.oid, c.reltoastrelid \
                        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                        WHERE n.nspname IN (SELECT schema_name FROM t) AND c.relkind IN ('r', 'm', 'i')), \
                  bs AS (SELECT current_setting('block_size')::int8 AS b) \
             SELECT t.id, t.schema_name, t.labels, \
                    coalesce(sum({table}) FILTER (WHERE c.relkind IN ('r', 'm')), 0)::int8, \
                    coalesce(sum({index}) FILTER (WHERE c.relkind = 'i'), 0)::int8, \
                    coalesce(sum({toast}) FILTER (WHERE c.relkind IN ('r', 'm')), 0)::int8, \
                    coalesce(sum(greatest(c.reltuples, 0)) FILTER (WHERE c.relkind = 'r'), 0)::int8, \
                    coalesce(sum(pg_stat_get_tuples_inserted(c.oid) + pg_stat_get_tuples_updated(c.oid) \
                        + pg_stat_get_tuples_deleted(c.oid)) FILTER (WHERE c.relkind = 'r'), 0)::int8, \
                    coalesce(sum(pg_stat_get_numscans(c.oid)) FILTER (WHERE c.relkind IN ('r', 'i')), 0)::int8 \
             FROM t CROSS JOIN bs LEFT JOIN c ON c.nspname = t.schema_name \
             GROUP BY t.id, t.schema_name, t.labels ORDER BY t.id"
        );
        let rows = client
            .query_typed(&sql, &[])
            .await
            .map_err(|e| anyhow::anyhow!("reading the tenants' sizes: {}", describe(&e)))?;
        rows.iter()
            .map(|r| {
                let (table, index, toast): (i64, i64, i64) = (r.get(3), r.get(4), r.get(5));
                let labels: String = r.get(2);
                Ok(TenantStats {
                    id: r.get(0),
                    schema: r.get(1),
                    table_bytes: table,
                    index_bytes: index,
                    toast_bytes: toast,
                    total_bytes: table + index + toast,
                    rows: r.get(6),
                    writes: r.get(7),
                    scans: r.get(8),
                    labels: serde_json::from_str(&labels).map_err(|e| {
                        anyhow::anyhow!("the registry holds labels {labels:?}: {e}")
                    })?,
                })
            })
            .collect()
    }
}
