//! The tenant registry (`tenants`): who exists, on which schema, at which version. Read once
//! per command; written in each schema's own transaction by the SQL built here.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{failed, states, Control, TenantState, TS};
use crate::tenant::{quote_literal, Tenant};

/// One registered tenant as the registry sees it.
#[derive(Debug, Clone)]
pub struct TenantRow {
    pub tenant: Tenant,
    pub state: TenantState,
    pub version: Option<i32>,
    pub created_at: String,
    /// Why the last run refused to touch this schema (see drift detection), if it did.
    pub drift: Option<String>,
    /// A tenant dropped with `--archive`: the schema its data was renamed to.
    pub archived_as: Option<String>,
}

/// `NULL` or the number, for hot-path SQL text.
pub(super) fn int_or_null(v: Option<i32>) -> String {
    v.map_or("NULL".to_string(), |v| v.to_string())
}

impl Control {
    /// How many active tenants this cluster holds (placement of new tenants).
    pub async fn active_count(&self, client: &Client) -> anyhow::Result<i64> {
        let row = client
            .query_typed_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE state = {}",
                    self.table("tenants"),
                    TenantState::Active.literal()
                ),
                &[],
            )
            .await
            .map_err(|e| failed("counting tenants", &e))?;
        Ok(row.get(0))
    }

    /// Registered tenants (all, or those with the given ids), ordered by id.
    pub async fn tenants(
        &self,
        client: &Client,
        ids: Option<&[String]>,
    ) -> anyhow::Result<Vec<TenantRow>> {
        let sql = format!(
            "SELECT id, schema_name, state, version, to_char(created_at AT TIME ZONE 'UTC', {TS}), drift, archived_as \
             FROM {} WHERE ($1::text[] IS NULL OR id = ANY($1)) ORDER BY id",
            self.table("tenants")
        );
        let ids: Option<Vec<String>> = ids.map(<[String]>::to_vec);
        let rows = client
            .query_typed(&sql, &[(&ids, Type::TEXT_ARRAY)])
            .await
            .map_err(|e| failed("reading the tenant registry", &e))?;
        rows.into_iter()
            .map(|r| {
                let state: String = r.get(2);
                Ok(TenantRow {
                    tenant: Tenant::from_registry(r.get(0), r.get(1)),
                    state: TenantState::parse(&state)
                        .ok_or_else(|| states::unknown("the tenant state", &state))?,
                    version: r.get(3),
                    created_at: r.get(4),
                    drift: r.get(5),
                    archived_as: r.get(6),
                })
            })
            .collect()
    }

    /// Hot path: registers `tenant` (or revives a dropped one). Affects no row when the id
    /// is already an active tenant: the caller checks the command's row count.
    pub fn register_sql(&self, tenant: &Tenant) -> String {
        format!(
            "INSERT INTO {t} AS t (id, schema_name) VALUES ({id}, {schema}) \
             ON CONFLICT (id) DO UPDATE SET state = {active}, version = NULL, drift = NULL, archived_as = NULL, \
                 role = NULL, created_at = now(), updated_at = now() WHERE t.state = {dropped}",
            t = self.table("tenants"),
            id = quote_literal(tenant.id()),
            schema = quote_literal(tenant.schema()),
            active = TenantState::Active.literal(),
            dropped = TenantState::Dropped.literal(),
        )
    }

    /// Hot path: records the role made for `tenant` (role per tenant).
    pub fn record_role_sql(&self, tenant: &Tenant, role: &str) -> String {
        format!(
            "UPDATE {} SET role = {} WHERE id = {}",
            self.table("tenants"),
            quote_literal(role),
            quote_literal(tenant.id())
        )
    }

    /// Hot path: `tenant version = after` (and its drift mark cleared).
    pub(super) fn set_version_sql(&self, tenant: &Tenant, after: Option<i32>) -> String {
        format!(
            "UPDATE {} SET version = {}, drift = NULL, updated_at = now() WHERE id = {}",
            self.table("tenants"),
            int_or_null(after),
            quote_literal(tenant.id())
        )
    }

    /// Hot path, `tenant drop`: drops the role recorded for the tenant at creation (the
    /// template may have changed since; DROP OWNED BY revokes its grants and default
    /// privileges in this database), then marks the tenant dropped, with the schema it was
    /// archived as, if any. DROP OWNED BY needs membership in the role: a CREATEROLE role that
    /// is not a superuser grants it to itself first (the grant goes with the role).
    pub fn drop_sql(&self, tenant: &Tenant, archived_as: Option<&str>) -> String {
        let t = self.table("tenants");
        let id = quote_literal(tenant.id());
        format!(
            "DO $tenantctl$ DECLARE r text; BEGIN \
                 SELECT role INTO r FROM {t} WHERE id = {id}; \
                 IF r IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN \
                     EXECUTE format('GRANT %I TO CURRENT_USER', r); \
                     EXECUTE format('DROP OWNED BY %I', r); EXECUTE format('DROP ROLE %I', r); \
                 END IF; END $tenantctl$; \
             UPDATE {t} SET state = {dropped}, archived_as = {archived}, role = NULL WHERE id = {id}",
            dropped = TenantState::Dropped.literal(),
            archived = archived_as.map_or("NULL".into(), quote_literal),
        )
    }
}
