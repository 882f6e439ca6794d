//! The migration files against what the fleet has seen and applied: files out of order
//! (new, but below the fleet's version).

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{failed, Control, TenantState};

impl Control {
    /// Migration files that are out of order: never part of any earlier run's set, yet below
    /// the highest version a tenant is at, so refinery would never apply them (it applies in
    /// version order) and they would be skipped silently. Empty until a first run has
    /// recorded a set (an upgraded control schema starts from what it sees).
    ///
    /// The fleet's highest version (a scan of the registry) is only read when a file is new:
    /// the usual case, every file known, costs two index probes whatever the fleet's size.
    pub async fn out_of_order(
        &self,
        client: &Client,
        files: &[(i32, String)],
    ) -> anyhow::Result<Vec<(i32, String)>> {
        let versions: Vec<i32> = files.iter().map(|f| f.0).collect();
        let names: Vec<&str> = files.iter().map(|f| f.1.as_str()).collect();
        let sql = format!("{} ORDER BY 1", self.out_of_order_sql("$1", "$2"));
        let rows = client
            .query_typed(
                &sql,
                &[(&versions, Type::INT4_ARRAY), (&names, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(|e| failed("comparing the migration files with the runs so far", &e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// [`Control::out_of_order`] as a query, over the files' versions and names in the
    /// array parameters `versions` and `names`.
    pub(super) fn out_of_order_sql(&self, versions: &str, names: &str) -> String {
        format!(
            "WITH unknown AS MATERIALIZED ( \
                 SELECT f.v, f.n FROM unnest({versions}::int4[], {names}::text[]) AS f(v, n) \
                 WHERE EXISTS (SELECT 1 FROM {known}) \
                   AND NOT EXISTS (SELECT 1 FROM {known} k WHERE k.version = f.v)) \
             SELECT v, n FROM unknown \
             WHERE v < (SELECT max(version) FROM {tenants} WHERE state = {active})",
            known = self.table("versions"),
            tenants = self.table("tenants"),
            active = TenantState::Active.literal(),
        )
    }
}
