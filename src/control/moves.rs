//! Moves (`tenant move`) in the control schema: the registry states a move passes through
//! (`moving` and `moved` on the source, `incoming` on the target) and its row in `moves` on
//! each side, so that a move killed at any step is found and resumed by the same command.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{failed, locks::schema_lock_sql, Control, MovePhase, TenantState, TS};
use crate::tenant::{quote_ident, quote_literal, Tenant};

/// One side of a move that is not finished (or, for an old copy, finished and kept).
#[derive(Debug, Clone)]
pub struct MoveRow {
    pub id: i64,
    pub tenant_id: String,
    /// The other cluster: where it goes (source side) or where it comes from (target side).
    pub peer: String,
    pub online: bool,
    /// The publication, slot and subscription's name.
    pub link: String,
    pub phase: MovePhase,
    pub actor: String,
    pub started_at: String,
}

/// A source's copy of a tenant that moved away, kept after the cutover.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OldCopy {
    #[serde(skip)]
    pub id: i64,
    pub tenant: String,
    pub schema: String,
    pub moved_to: String,
    pub cut_at: String,
    /// When `--keep-source` lets it go (none: kept until `tenant move --cleanup`).
    pub keep_until: Option<String>,
    /// Whether `--cleanup` drops it now.
    pub due: bool,
}

fn move_row(r: &tokio_postgres::Row) -> anyhow::Result<MoveRow> {
    let phase: String = r.get(6);
    Ok(MoveRow {
        id: r.get(0),
        tenant_id: r.get(1),
        peer: r.get(3),
        online: r.get(4),
        link: r.get(5),
        phase: MovePhase::parse(&phase)
            .ok_or_else(|| super::states::unknown("the move phase", &phase))?,
        actor: r.get(7),
        started_at: r.get(8),
    })
}

impl Control {
    fn moves_select(&self) -> String {
        format!(
            "SELECT id, tenant_id, schema_name, peer, online, link, phase, actor, \
                    to_char(started_at AT TIME ZONE 'UTC', {TS}) FROM {} ",
            self.table("moves")
        )
    }

    /// The unfinished moves on this cluster, out (`incoming = false`) or in; all tenants, or
    /// one.
    pub async fn open_moves(
        &self,
        client: &Client,
        incoming: bool,
        tenant: Option<&str>,
    ) -> anyhow::Result<Vec<MoveRow>> {
        let sql = format!(
            "{} WHERE finished_at IS NULL AND direction = $1 AND ($2::text IS NULL OR tenant_id = $2) ORDER BY id",
            self.moves_select()
        );
        let direction = if incoming { "in" } else { "out" };
        let rows = client
            .query_typed(&sql, &[(&direction, Type::TEXT), (&tenant, Type::TEXT)])
            .await
            .map_err(|e| failed("reading the moves in progress", &e))?;
        rows.iter().map(move_row).collect()
    }

    /// The tenants in motion here (moving out, or incoming), by id.
    pub async fn in_motion(&self, client: &Client) -> anyhow::Result<Vec<(String, TenantState)>> {
        let sql = format!(
            "SELECT id, state FROM {} WHERE state IN ({}, {}) ORDER BY id",
            self.table("tenants"),
            TenantState::Moving.literal(),
            TenantState::Incoming.literal()
        );
        let rows = client
            .query_typed(&sql, &[])
            .await
            .map_err(|e| failed("reading the tenants being moved", &e))?;
        rows.iter()
            .map(|r| {
                let state: String = r.get(1);
                let state = TenantState::parse(&state)
                    .ok_or_else(|| super::states::unknown("the tenant state", &state))?;
                Ok((r.get(0), state))
            })
            .collect()
    }

    /// The source's first step: the tenant marked `moving` (so that no migration touches it
    /// from now on; a migration of it in flight is waited for through its schema's lock) and
    /// the move's row, in one transaction. None when the tenant is not an active tenant here.
    pub async fn start_move_out(
        &self,
        client: &Client,
        tenant: &Tenant,
        (peer, online, link): (&str, bool, &str),
        actor: &str,
    ) -> anyhow::Result<Option<MoveRow>> {
        let sql = format!(
            "WITH t AS (UPDATE {tenants} SET state = {moving}, updated_at = now() \
                        WHERE id = $1 AND state = {active} RETURNING id, schema_name) \
             INSERT INTO {moves} (tenant_id, schema_name, direction, peer, online, link, phase, actor) \
             SELECT id, schema_name, 'out', $2, $3, $4, {copying}, $5 FROM t \
             RETURNING id, tenant_id, schema_name, peer, online, link, phase, actor, \
                       to_char(started_at AT TIME ZONE 'UTC', {TS})",
            tenants = self.table("tenants"),
            moves = self.table("moves"),
            moving = TenantState::Moving.literal(),
            active = TenantState::Active.literal(),
            copying = MovePhase::Copying.literal(),
        );
        let lock = schema_lock_sql(tenant.schema());
        let begin = format!("BEGIN; SET LOCAL lock_timeout = '30s'; {lock};");
        client
            .batch_execute(&begin)
            .await
            .map_err(|e| failed("waiting for the tenant's schema (a migration of it?)", &e))?;
        let rows = client
            .query_typed(
                &sql,
                &[
                    (&tenant.id(), Type::TEXT),
                    (&peer, Type::TEXT),
                    (&online, Type::BOOL),
                    (&link, Type::TEXT),
                    (&actor, Type::TEXT),
                ],
            )
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(failed("marking the tenant as moving", &e));
            }
        };
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| failed("marking the tenant as moving", &e))?;
        rows.first().map(move_row).transpose()
    }

    /// A move's phase, on this side.
    pub async fn set_move_phase(
        &self,
        client: &Client,
        id: i64,
        phase: MovePhase,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE {} SET phase = $2 WHERE id = $1",
            self.table("moves")
        );
        client
            .query_typed(&sql, &[(&id, Type::INT8), (&phase.as_str(), Type::TEXT)])
            .await
            .map_err(|e| failed("recording the move's phase", &e))?;
        Ok(())
    }

    /// SQL of the target's side, in the transaction that creates the schema: the move's
    /// row (where it came from).
    pub fn move_in_sql(&self, tenant: &Tenant, peer: &str, link: &str, actor: &str) -> String {
        format!(
            "INSERT INTO {} (tenant_id, schema_name, direction, peer, online, link, phase, actor) \
             VALUES ({}, {}, 'in', {}, true, {}, {}, {})",
            self.table("moves"),
            quote_literal(tenant.id()),
            quote_literal(tenant.schema()),
            quote_literal(peer),
            quote_literal(link),
            MovePhase::Streaming.literal(),
            quote_literal(actor),
        )
    }

    /// SQL of the cutover, in the source's transaction that holds the tenant's tables: the
    /// schema renamed to `old_schema` (a write that still comes here fails from now on), the
    /// tenant marked moved, the move cut over.
    pub fn cutover_sql(&self, tenant: &Tenant, old_schema: &str, move_id: i64) -> String {
        format!(
            "ALTER SCHEMA {schema} RENAME TO {old}; \
             UPDATE {tenants} SET state = {moved}, updated_at = now() WHERE id = {id} AND state = {moving}; \
             UPDATE {moves} SET phase = {cut}, cut_at = clock_timestamp(), old_schema = {old_lit} WHERE id = {move_id};",
            schema = tenant.quoted_schema(),
            old = quote_ident(old_schema),
            old_lit = quote_literal(old_schema),
            tenants = self.table("tenants"),
            moves = self.table("moves"),
            id = quote_literal(tenant.id()),
            moved = TenantState::Moved.literal(),
            moving = TenantState::Moving.literal(),
            cut = MovePhase::CutOver.literal(),
        )
    }

    /// A move finished (done or aborted) on this side; the source's old copy kept until
    /// `keep_until` (seconds from now; None: until `tenant move --cleanup`).
    pub async fn finish_move(
        &self,
        client: &Client,
        id: i64,
        phase: MovePhase,
        keep_secs: Option<f64>,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE {} SET phase = $2, finished_at = clock_timestamp(), \
                 keep_until = CASE WHEN $3::float8 IS NULL THEN NULL ELSE clock_timestamp() + make_interval(secs => $3) END \
             WHERE id = $1",
            self.table("moves")
        );
        client
            .query_typed(
                &sql,
                &[
                    (&id, Type::INT8),
                    (&phase.as_str(), Type::TEXT),
                    (&keep_secs, Type::FLOAT8),
                ],
            )
            .await
            .map_err(|e| failed("recording the end of the move", &e))?;
        Ok(())
    }

    /// The target's flip: the incoming tenant made active, its move cut over (finished by
    /// [`Control::finish_move_in`] once its subscription is gone). Returns whether it was
    /// incoming (false: flipped already, or not here).
    pub async fn flip_incoming(&self, client: &Client, tenant_id: &str) -> anyhow::Result<bool> {
        let sql = format!(
            "WITH t AS (UPDATE {tenants} SET state = {active}, updated_at = now() \
                        WHERE id = $1 AND state = {incoming} RETURNING id) \
             UPDATE {moves} SET phase = {cut}, cut_at = clock_timestamp() \
             WHERE tenant_id = $1 AND direction = 'in' AND finished_at IS NULL AND EXISTS (SELECT 1 FROM t) \
             RETURNING id",
            tenants = self.table("tenants"),
            moves = self.table("moves"),
            active = TenantState::Active.literal(),
            incoming = TenantState::Incoming.literal(),
            cut = MovePhase::CutOver.literal(),
        );
        let rows = client
            .query_typed(&sql, &[(&tenant_id, Type::TEXT)])
            .await
            .map_err(|e| failed("making the moved tenant active", &e))?;
        Ok(!rows.is_empty())
    }

    /// The target's side of a move finished (its subscription dropped).
    pub async fn finish_move_in(&self, client: &Client, tenant_id: &str) -> anyhow::Result<()> {
        let sql = format!(
            "UPDATE {} SET phase = {}, finished_at = clock_timestamp() \
             WHERE tenant_id = $1 AND direction = 'in' AND finished_at IS NULL",
            self.table("moves"),
            MovePhase::Done.literal()
        );
        client
            .query_typed(&sql, &[(&tenant_id, Type::TEXT)])
            .await
            .map_err(|e| failed("recording the end of the move", &e))?;
        Ok(())
    }

    /// The source's side of an abort: the tenant active again, its move aborted. Returns
    /// whether it was moving.
    pub async fn undo_move_out(&self, client: &Client, tenant_id: &str) -> anyhow::Result<bool> {
        let sql = format!(
            "WITH t AS (UPDATE {tenants} SET state = {active}, updated_at = now() \
                        WHERE id = $1 AND state = {moving} RETURNING id) \
             UPDATE {moves} SET phase = {aborted}, finished_at = clock_timestamp() \
             WHERE tenant_id = $1 AND direction = 'out' AND finished_at IS NULL RETURNING (SELECT count(*) FROM t)",
            tenants = self.table("tenants"),
            moves = self.table("moves"),
            active = TenantState::Active.literal(),
            moving = TenantState::Moving.literal(),
            aborted = MovePhase::Aborted.literal(),
        );
        let rows = client
            .query_typed(&sql, &[(&tenant_id, Type::TEXT)])
            .await
            .map_err(|e| failed("making the tenant active again", &e))?;
        Ok(rows.first().is_some_and(|r| r.get::<_, i64>(0) > 0))
    }

    /// SQL of the target's side of an abort, in one transaction: the copy's schema and the
    /// role it was given dropped, the incoming registry row forgotten, its move aborted.
    pub fn undo_move_in_sql(&self, tenant: &Tenant) -> String {
        format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; {drop_role} \
             DELETE FROM {tenants} WHERE id = {id} AND state = {incoming}; \
             UPDATE {moves} SET phase = {aborted}, finished_at = clock_timestamp() \
             WHERE tenant_id = {id} AND direction = 'in' AND finished_at IS NULL;",
            schema = tenant.quoted_schema(),
            drop_role = self.drop_role_sql(tenant, Some(TenantState::Incoming)),
            tenants = self.table("tenants"),
            moves = self.table("moves"),
            id = quote_literal(tenant.id()),
            incoming = TenantState::Incoming.literal(),
            aborted = MovePhase::Aborted.literal(),
        )
    }

    /// The old copies moves left on this cluster, not cleaned up yet.
    pub async fn old_copies(&self, client: &Client) -> anyhow::Result<Vec<OldCopy>> {
        let sql = format!(
            "SELECT id, tenant_id, old_schema, peer, to_char(cut_at AT TIME ZONE 'UTC', {TS}), \
                    to_char(keep_until AT TIME ZONE 'UTC', {TS}), coalesce(keep_until <= now(), true) \
             FROM {} WHERE direction = 'out' AND old_schema IS NOT NULL AND cleaned_at IS NULL \
               AND finished_at IS NOT NULL ORDER BY id",
            self.table("moves")
        );
        let rows = client
            .query_typed(&sql, &[])
            .await
            .map_err(|e| failed("reading the old copies of moved tenants", &e))?;
        Ok(rows
            .iter()
            .map(|r| OldCopy {
                id: r.get(0),
                tenant: r.get(1),
                schema: r.get(2),
                moved_to: r.get(3),
                cut_at: r.get(4),
                keep_until: r.get(5),
                due: r.get(6),
            })
            .collect())
    }

    /// SQL: an old copy dropped and marked cleaned, in one transaction; the tenant's role
    /// here too while the tenant is still away (not if it came back since).
    pub fn drop_old_copy_sql(&self, copy: &OldCopy) -> String {
        let tenant = Tenant::from_registry(copy.tenant.clone(), copy.schema.clone());
        format!(
            "DROP SCHEMA IF EXISTS {} CASCADE; {} \
             UPDATE {} SET role = NULL WHERE id = {} AND state = {}; \
             UPDATE {} SET cleaned_at = clock_timestamp() WHERE id = {};",
            quote_ident(&copy.schema),
            self.drop_role_sql(&tenant, Some(TenantState::Moved)),
            self.table("tenants"),
            quote_literal(&copy.tenant),
            TenantState::Moved.literal(),
            self.table("moves"),
            copy.id
        )
    }
}
