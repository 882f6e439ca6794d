//! The tenant registry (`tenants`): who exists, on which schema, at which version. Read once
//! per command; written in each schema's own transaction by the SQL built here.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{failed, states, Control, Param, TenantState, TS};
use crate::labels::Labels;
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
    pub labels: Labels,
}

/// SQL: a tenant row's labels as JSON text, `{}` on a control schema older than labels
/// (read-only commands do not upgrade it).
pub(super) const LABELS: &str = "coalesce(to_jsonb(t) -> 'labels', '{}')::text";

/// Labels read back from [`LABELS`].
pub(super) fn labels_of(text: &str) -> anyhow::Result<Labels> {
    serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!("the control schema holds labels {text:?} this tenantctl cannot read: {e}")
    })
}

/// `NULL` or the number, for hot-path SQL text.
pub(super) fn int_or_null(v: Option<i32>) -> String {
    v.map_or("NULL".to_string(), |v| v.to_string())
}

/// A registry row as read by [`Control::tenants`] and [`Control::tenant_stream`].
fn tenant_row(r: &tokio_postgres::Row) -> anyhow::Result<TenantRow> {
    let state: String = r.get(2);
    Ok(TenantRow {
        tenant: Tenant::from_registry(r.get(0), r.get(1)),
        state: TenantState::parse(&state)
            .ok_or_else(|| states::unknown("the tenant state", &state))?,
        version: r.get(3),
        created_at: r.get(4),
        drift: r.get(5),
        archived_as: r.get(6),
        labels: labels_of(r.get(7))?,
    })
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

    /// SQL: the registry's rows as [`tenant_row`] reads them, all or those with the ids in $1.
    fn select_tenants(&self) -> String {
        format!(
            "SELECT id, schema_name, state, version, to_char(created_at AT TIME ZONE 'UTC', {TS}), drift, archived_as, {LABELS} \
             FROM {} t WHERE ($1::text[] IS NULL OR id = ANY($1))",
            self.table("tenants")
        )
    }

    /// Registered tenants (all, or those with the given ids), ordered by id.
    pub async fn tenants(
        &self,
        client: &Client,
        ids: Option<&[String]>,
    ) -> anyhow::Result<Vec<TenantRow>> {
        let sql = format!("{} ORDER BY id", self.select_tenants());
        let ids: Option<Vec<String>> = ids.map(<[String]>::to_vec);
        let rows = client
            .query_typed(&sql, &[(&ids, Type::TEXT_ARRAY)])
            .await
            .map_err(|e| failed("reading the tenant registry", &e))?;
        rows.iter().map(tenant_row).collect()
    }

    /// The same rows (all, or those with the given ids; with `failed_only`, those whose last
    /// change failed) as a stream, ordered by id: a listing reads them as it prints them, so
    /// that 50,000 tenants are never held. The server sends them as they are read.
    pub async fn tenant_stream<'c>(
        &self,
        client: &'c Client,
        ids: Option<&[String]>,
        failed_only: bool,
    ) -> anyhow::Result<impl futures::Stream<Item = anyhow::Result<TenantRow>> + 'c> {
        use futures::StreamExt as _;
        let sql = format!(
            "{} AND (NOT $2 OR id IN ({})) ORDER BY id",
            self.select_tenants(),
            self.failed_last_sql()
        );
        let ids: Option<Vec<String>> = ids.map(<[String]>::to_vec);
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
            [(&ids, Type::TEXT_ARRAY), (&failed_only, Type::BOOL)];
        let rows = client
            .query_typed_raw(&sql, params)
            .await
            .map_err(|e| failed("reading the tenant registry", &e))?;
        Ok(rows.map(|r| {
            r.map_err(|e| failed("reading the tenant registry", &e))
                .and_then(|r| tenant_row(&r))
        }))
    }

    /// Hot path: registers `tenant` with `labels` (or revives a dropped one, or one that
    /// moved away and comes back), active or, for a move's target, incoming. Affects no row
    /// when the id is already here otherwise: the caller checks the command's row count.
    pub fn register_sql(&self, tenant: &Tenant, labels: &Labels, incoming: bool) -> String {
        let labels = serde_json::to_string(labels).expect("strings");
        let state = match incoming {
            true => TenantState::Incoming,
            false => TenantState::Active,
        };
        format!(
            "INSERT INTO {t} AS t (id, schema_name, labels, state) VALUES ({id}, {schema}, {labels}::jsonb, {state}) \
             ON CONFLICT (id) DO UPDATE SET state = {state}, version = NULL, drift = NULL, archived_as = NULL, \
                 role = NULL, labels = EXCLUDED.labels, created_at = now(), updated_at = now() \
             WHERE t.state IN ({dropped}, {moved})",
            t = self.table("tenants"),
            id = quote_literal(tenant.id()),
            schema = quote_literal(tenant.schema()),
            labels = quote_literal(&labels),
            state = state.literal(),
            dropped = TenantState::Dropped.literal(),
            moved = TenantState::Moved.literal(),
        )
    }

    /// `tenant rename`: the registry row of `old` moved to `new` (id, schema, role), a dropped
    /// tenant's row under the new id forgotten (as `tenant create` of that id would).
    pub fn rename_sql(&self, old: &Tenant, new: &Tenant, role: Option<&str>) -> String {
        format!(
            "DELETE FROM {t} WHERE id = {new_id} AND state = {dropped}; \
             UPDATE {t} SET id = {new_id}, schema_name = {new_schema}, role = {role}, updated_at = now() \
             WHERE id = {old_id} AND state = {active};",
            t = self.table("tenants"),
            new_id = quote_literal(new.id()),
            new_schema = quote_literal(new.schema()),
            old_id = quote_literal(old.id()),
            role = role.map_or("NULL".into(), quote_literal),
            active = TenantState::Active.literal(),
            dropped = TenantState::Dropped.literal(),
        )
    }

    /// `tenant label`: sets and removes labels of the given active tenants and records it as a
    /// finished run (one ledger row per tenant), in one statement. Returns the run's id.
    pub async fn set_labels(
        &self,
        client: &Client,
        info: &super::RunInfo<'_>,
        ids: &[String],
        set: &Labels,
        remove: &[String],
    ) -> anyhow::Result<i64> {
        let sql = format!(
            "WITH r AS (INSERT INTO {runs} (command, target_version, digest, scope, state, actor, argv, host, pid, total, finished_at) \
                        VALUES ($1, NULL, $2, $3, {succeeded_run}, $4, $5, $6, $7, $8, clock_timestamp()) RETURNING id), \
                  u AS (UPDATE {t} t SET labels = (t.labels || $9::text::jsonb) - $10::text[], updated_at = now() \
                        WHERE t.id = ANY($11) AND t.state = {active} RETURNING t.id, t.schema_name, t.version), \
                  s AS (INSERT INTO {rs} (run_id, tenant_id, schema_name, state, version_before, version_after, applied, attempts, started_at, finished_at) \
                        SELECT r.id, u.id, u.schema_name, {succeeded}, u.version, u.version, 1, 1, now(), clock_timestamp() FROM r, u) \
             SELECT id FROM r",
            runs = self.table("runs"),
            t = self.table("tenants"),
            rs = self.table("run_schemas"),
            succeeded_run = super::RunState::Succeeded.literal(),
            succeeded = super::SchemaState::Succeeded.literal(),
            active = TenantState::Active.literal(),
        );
        let set = serde_json::to_string(set).expect("strings");
        let more: [Param<'_>; 3] = [
            (&set, Type::TEXT),
            (&remove, Type::TEXT_ARRAY),
            (&ids, Type::TEXT_ARRAY),
        ];
        finished_run(client, &sql, (info, ids.len()), &more, "setting labels").await
    }

    /// Records a finished run with one succeeded row per tenant in `tenants` (id, schema):
    /// `tenant tiers apply`, in the caller's transaction. Returns the run's id.
    pub async fn record_many(
        &self,
        client: &Client,
        info: &super::RunInfo<'_>,
        tenants: &[(String, String)],
    ) -> anyhow::Result<i64> {
        let sql = format!(
            "WITH r AS (INSERT INTO {runs} (command, target_version, digest, scope, state, actor, argv, host, pid, total, finished_at) \
                        VALUES ($1, NULL, $2, $3, {succeeded_run}, $4, $5, $6, $7, $8, clock_timestamp()) RETURNING id), \
                  s AS (INSERT INTO {rs} (run_id, tenant_id, schema_name, state, version_before, version_after, applied, attempts, started_at, finished_at) \
                        SELECT r.id, u.id, u.schema_name, {succeeded}, NULL, NULL, 1, 1, now(), clock_timestamp() \
                        FROM r, unnest($9::text[], $10::text[]) AS u(id, schema_name)) \
             SELECT id FROM r",
            runs = self.table("runs"),
            rs = self.table("run_schemas"),
            succeeded_run = super::RunState::Succeeded.literal(),
            succeeded = super::SchemaState::Succeeded.literal(),
        );
        let (ids, schemas): (Vec<String>, Vec<String>) = tenants.iter().cloned().unzip();
        let more: [Param<'_>; 2] = [(&ids, Type::TEXT_ARRAY), (&schemas, Type::TEXT_ARRAY)];
        let what = format!("recording the {} run", info.command);
        finished_run(client, &sql, (info, info.total), &more, &what).await
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

    /// Hot path: `tenant version = after` (and its drift mark cleared); for a pooled schema,
    /// its pool row (added at `pool fill`).
    pub(super) fn set_version_sql(&self, tenant: &Tenant, after: Option<i32>) -> String {
        // A pooled schema's row is made when `pool fill` brings it to a version (it has one:
        // fill refuses an empty set); a drained one's is gone, and stays gone.
        if tenant.is_pooled() {
            let (pool, s) = (self.table("pool"), quote_literal(tenant.schema()));
            return match after {
                Some(v) => format!(
                    "INSERT INTO {pool} AS p (schema_name, version) VALUES ({s}, {v}) \
                     ON CONFLICT (schema_name) DO UPDATE SET version = EXCLUDED.version"
                ),
                None => format!("UPDATE {pool} SET version = NULL WHERE schema_name = {s}"),
            };
        }
        format!(
            "UPDATE {} SET version = {}, drift = NULL, updated_at = now() WHERE id = {}",
            self.table("tenants"),
            int_or_null(after),
            quote_literal(tenant.id())
        )
    }

    /// Hot path, `tenant create`: takes a pooled schema at `version` if there is one (a
    /// creator that finds it locked by another takes the next: SKIP LOCKED) and renames it to
    /// the tenant's; else creates the schema. Either way the tenant's schema exists after it,
    /// and a rollback puts the pooled schema back in the pool.
    pub fn claim_or_create_sql(&self, tenant: &Tenant, version: Option<i32>) -> String {
        format!(
            "DO $tenantctl$ DECLARE s text; BEGIN \
                 SELECT schema_name INTO s FROM {pool} WHERE version IS NOT DISTINCT FROM {v} \
                     ORDER BY created_at, schema_name LIMIT 1 FOR UPDATE SKIP LOCKED; \
                 IF s IS NULL THEN EXECUTE format('CREATE SCHEMA %I', {schema}); \
                 ELSE DELETE FROM {pool} WHERE schema_name = s; \
                      EXECUTE format('ALTER SCHEMA %I RENAME TO %I', s, {schema}); END IF; \
             END $tenantctl$",
            pool = self.table("pool"),
            v = int_or_null(version),
            schema = quote_literal(tenant.schema()),
        )
    }

    /// Hot path, `pool fill`: a pooled schema already in the pool is locked (a creator skips
    /// it meanwhile) and migrated forward; a new one is created. One that `tenant create`
    /// took since the fill read the pool is a tenant now: its name is free, and a new pooled
    /// schema is created under it.
    pub fn pool_lock_or_create_sql(&self, schema: &Tenant) -> String {
        format!(
            "DO $tenantctl$ BEGIN \
                 PERFORM 1 FROM {pool} WHERE schema_name = {s} FOR UPDATE; \
                 IF NOT FOUND THEN EXECUTE format('CREATE SCHEMA %I', {s}); END IF; \
             END $tenantctl$",
            pool = self.table("pool"),
            s = quote_literal(schema.schema()),
        )
    }

    /// Pooled schemas and their versions, oldest first (none on a control schema older than
    /// the pool).
    pub async fn pool(&self, client: &Client) -> anyhow::Result<Vec<(Tenant, Option<i32>)>> {
        let exists: bool = client
            .query_typed_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[(&self.table("pool"), Type::TEXT)],
            )
            .await
            .map_err(|e| failed("reading the pool", &e))?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        self.pool_rows(client).await
    }

    /// The pooled schemas, oldest first (the pool table must exist: a current control
    /// schema has it).
    pub async fn pool_rows(&self, client: &Client) -> anyhow::Result<Vec<(Tenant, Option<i32>)>> {
        let rows = client
            .query_typed(
                &format!(
                    "SELECT schema_name, version FROM {} ORDER BY created_at, schema_name",
                    self.table("pool")
                ),
                &[],
            )
            .await
            .map_err(|e| failed("reading the pool", &e))?;
        Ok(rows
            .iter()
            .map(|r| (Tenant::pooled(r.get(0)), r.get(1)))
            .collect())
    }

    /// `n` fresh names for pooled schemas: `<prefix>pool__<n>` (a double underscore, so no
    /// tenant id can ever take one).
    pub async fn pool_names(
        &self,
        client: &Client,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<Vec<String>> {
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        let rows = client
            .query_typed(
                &format!(
                    "SELECT $1 || 'pool__' || nextval('{}') FROM generate_series(1, $2)",
                    self.table("pool_seq")
                ),
                &[(&prefix, Type::TEXT), (&n, Type::INT4)],
            )
            .await
            .map_err(|e| failed("naming pooled schemas", &e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Hot path, `tenant drop`: drops the role recorded for the tenant at creation (the
    /// template may have changed since; DROP OWNED BY revokes its grants and default
    /// privileges in this database), then marks the tenant dropped, with the schema it was
    /// archived as, if any. DROP OWNED BY needs membership in the role: a CREATEROLE role that
    /// is not a superuser grants it to itself first (the grant goes with the role).
    pub fn drop_sql(&self, tenant: &Tenant, archived_as: Option<&str>) -> String {
        if tenant.is_pooled() {
            return format!(
                "DELETE FROM {} WHERE schema_name = {}",
                self.table("pool"),
                quote_literal(tenant.schema())
            );
        }
        format!(
            "{} UPDATE {t} SET state = {dropped}, archived_as = {archived}, role = NULL WHERE id = {id}",
            self.drop_role_sql(tenant, None),
            t = self.table("tenants"),
            id = quote_literal(tenant.id()),
            dropped = TenantState::Dropped.literal(),
            archived = archived_as.map_or("NULL".into(), quote_literal),
        )
    }

    /// SQL: the role recorded for the tenant dropped, if it exists (see [`Control::drop_sql`]).
    /// With `only`, only while the tenant's row is in that state.
    pub(super) fn drop_role_sql(&self, tenant: &Tenant, only: Option<TenantState>) -> String {
        let only = only.map_or(String::new(), |s| format!(" AND state = {}", s.literal()));
        format!(
            "DO $tenantctl$ DECLARE r text; BEGIN \
                 SELECT role INTO r FROM {t} WHERE id = {id}{only}; \
                 IF r IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN \
                     EXECUTE format('GRANT %I TO CURRENT_USER', r); \
                     EXECUTE format('DROP OWNED BY %I', r); EXECUTE format('DROP ROLE %I', r); \
                 END IF; END $tenantctl$;",
            t = self.table("tenants"),
            id = quote_literal(tenant.id()),
        )
    }
}

/// Runs `sql`, whose $1..$8 are a finished run's `runs` row (command, digest, scope, actor,
/// argv, host, pid, total) and the rest `more`, and returns the id it selects.
async fn finished_run(
    client: &Client,
    sql: &str,
    (info, total): (&super::RunInfo<'_>, usize),
    more: &[Param<'_>],
    what: &str,
) -> anyhow::Result<i64> {
    let (command, host, pid) = (
        info.command.as_str(),
        crate::whoami::hostname(),
        std::process::id() as i32,
    );
    let total = i32::try_from(total).unwrap_or(i32::MAX);
    let mut params: Vec<Param<'_>> = vec![
        (&command, Type::TEXT),
        (&info.digest, Type::TEXT),
        (&info.scope, Type::TEXT),
        (&info.actor, Type::TEXT),
        (&info.argv, Type::TEXT),
        (&host, Type::TEXT),
        (&pid, Type::INT4),
        (&total, Type::INT4),
    ];
    params.extend_from_slice(more);
    let row = client
        .query_typed_one(sql, &params)
        .await
        .map_err(|e| failed(what, &e))?;
    Ok(row.get(0))
}
