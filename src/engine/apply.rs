//! One schema, one transaction, exactly once. [`apply_schema`] tries the one-round-trip way
//! first (see [`super::one_trip`]); otherwise two round trips (see [`schema_tx`]): the
//! opening (the preamble with its per-schema advisory lock and `SET LOCAL` search_path and
//! timeouts, the fence, the registration of create and adopt, the schema's history), then
//! the work planned from that history (see [`super::work`]) with its bookkeeping and COMMIT,
//! or segment by segment around no-transaction steps (see [`super::segmented`]). Commit =
//! done; anything else = nothing happened. Create, adopt, migrate, rollback, drop, repair
//! and the pool's fill and drain are the modes of one shape.
//!
//! [`schema_tx`]: crate::engine::schema_tx

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::control::{Control, RunCommand};
use crate::engine::events::Events;
use crate::engine::failure::{Failure, FailureKind};
use crate::engine::history;
use crate::engine::one_trip::in_one_trip;
use crate::engine::schema_tx::{fresh_preamble, rows_affected, trip, TripError, TxSettings};
use crate::engine::segmented::segmented;
use crate::engine::session::GUARD;
use crate::engine::tiers;
use crate::engine::work::{plan_work, Script, Segment};
use crate::migrations::MigrationSet;
use crate::tenant::{quote_ident, quote_literal, role_name, Tenant};

/// SQLSTATE raised in the opening of `tenant adopt` when the schema is not there.
const SQLSTATE_NO_SCHEMA: &str = "TNF03";

/// What every schema transaction of a run shares.
pub struct ApplyCtx<'a> {
    pub migrations: &'a MigrationSet,
    pub control: &'a Control,
    pub run_id: i64,
    /// The run's epoch when this process opened or took it over: the fence.
    pub epoch: i64,
    pub target: Option<i32>,
    pub tx: TxSettings<'a>,
    /// Role-per-tenant template, when that option is on.
    pub role_template: Option<&'a str>,
    /// `[tiers]`: the settings a new tenant's role gets, by its labels.
    pub tiers: &'a crate::config::Tiers,
    /// Where warnings go (an INVALID index dropped before a build is retried).
    pub events: &'a Events,
    /// Labels of the tenants a create or adopt registers, by id.
    pub labels: &'a std::collections::HashMap<String, crate::labels::Labels>,
    /// Seed data for the tenants a create makes.
    pub seed: Option<&'a crate::seed::Seed>,
    /// `tenant import`/`clone`: the rows loaded into the new schema.
    pub load: Option<&'a dyn Load>,
    /// `query`, `exec`: the SQL run in each tenant.
    pub sql: Option<&'a crate::engine::fleet_sql::FleetSql>,
    /// The run's stop signal, for work that waits between its transactions (`exec
    /// --until-zero`'s pause between batches).
    pub cancel: Option<&'a crate::engine::fleet::Cancel>,
}

/// `tenant import`/`clone`: rows put into the new schema in the transaction that creates
/// it, after its migrations and before the bookkeeping and COMMIT. Each call loads afresh
/// (a retried transaction loads again).
pub trait Load {
    fn load<'c>(
        &'c self,
        client: &'c Client,
        tenant: &'c Tenant,
        events: &'c Events,
    ) -> futures::future::LocalBoxFuture<'c, Result<(), Failure>>;
}

/// Where an import's rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFrom {
    Archive,
    Clone,
    /// A tenant moving in from another cluster: registered `incoming` until its cutover.
    Move,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create the schema and register the tenant in the same transaction.
    Create,
    /// Create the schema at `ApplyCtx::target`, register the tenant and load its rows
    /// (`ApplyCtx::load`) in the same transaction: `tenant import`, `tenant clone`, and the
    /// target side of `tenant move` (registered as incoming, not active).
    Import { from: ImportFrom },
    /// Apply pending migrations to a registered tenant (up to `ApplyCtx::target`).
    Migrate,
    /// Revert applied migrations above `to` with their down scripts.
    Rollback { to: i32 },
    /// Register an existing schema and record versions up to `baseline` as applied.
    Adopt { baseline: i32 },
    /// Drop the schema (or, with `archive`, rename it out of the way) and its role, and mark
    /// the tenant dropped.
    Drop { archive: bool },
    /// `repair --accept`: record the file of `version` as it is now (its checksum and name)
    /// in the history of a schema that has it applied. Nothing is run.
    Repair { version: i32 },
    /// `tenant pool fill`: create and migrate a pooled schema (no tenant, no role), checked
    /// for objects that spell its name (they would not follow the rename at `tenant create`).
    PoolFill,
    /// `tenant pool drain`: drop a pooled schema and its pool row.
    PoolDrain,
    /// `query`: `ApplyCtx::sql` in a read-only transaction; its rows leave as an event.
    Query,
    /// `exec`: `ApplyCtx::sql` in one recorded transaction (`dry_run`: rolled back, not
    /// recorded); with `until_zero`, again in a transaction of its own each time until it
    /// affects no row.
    Exec { dry_run: bool, until_zero: bool },
}

impl Mode {
    /// The command a run in this mode is recorded as.
    pub fn command(self) -> RunCommand {
        match self {
            Mode::Create => RunCommand::TenantCreate,
            Mode::Import {
                from: ImportFrom::Archive,
            } => RunCommand::TenantImport,
            Mode::Import {
                from: ImportFrom::Clone,
            } => RunCommand::TenantClone,
            Mode::Import {
                from: ImportFrom::Move,
            } => RunCommand::TenantMove,
            Mode::Migrate => RunCommand::Migrate,
            Mode::Rollback { .. } => RunCommand::Rollback,
            Mode::Adopt { .. } => RunCommand::TenantAdopt,
            Mode::Drop { archive: false } => RunCommand::TenantDrop,
            Mode::Drop { archive: true } => RunCommand::TenantDropArchive,
            Mode::Repair { .. } => RunCommand::Repair,
            Mode::PoolFill => RunCommand::PoolFill,
            Mode::PoolDrain => RunCommand::PoolDrain,
            Mode::Query => RunCommand::Query,
            Mode::Exec { .. } => RunCommand::Exec,
        }
    }

    /// Whether the transaction registers the tenant.
    fn registers(self) -> bool {
        match self {
            Mode::Create | Mode::Import { .. } | Mode::Adopt { .. } => true,
            Mode::Migrate
            | Mode::Rollback { .. }
            | Mode::Drop { .. }
            | Mode::Repair { .. }
            | Mode::PoolFill
            | Mode::PoolDrain
            | Mode::Query
            | Mode::Exec { .. } => false,
        }
    }
}

/// A schema that committed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub before: Option<i32>,
    pub after: Option<i32>,
    pub count: usize,
    /// `tenant drop --archive`: the schema the data was renamed to.
    pub archived_as: Option<String>,
    /// `tenant create`: a pooled schema was taken.
    pub from_pool: bool,
    /// `query`: the rows returned; `exec`: the rows affected.
    pub rows: Option<u64>,
}

/// Applies pending migrations (or creates the tenant, …) in one transaction on `client`.
pub async fn apply_schema(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
) -> Result<Applied, Failure> {
    let result = transaction(client, ctx, tenant, mode, registry_version).await;
    rollback_on_error(client, result).await
}

/// Anything but a COMMIT is a rollback; if even ROLLBACK cannot be sent, the connection is
/// dead (and must not be reused) and PostgreSQL discards the transaction with it.
pub async fn rollback_on_error<T>(
    client: &Client,
    result: Result<T, Failure>,
) -> Result<T, Failure> {
    match result {
        Err(mut f) if !f.broken_connection => {
            if client.batch_execute("ROLLBACK").await.is_err() {
                f.broken_connection = true;
            }
            Err(f)
        }
        other => other,
    }
}

/// What a message of the opening trip does, to tell its failure apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Begin,
    CreateSchema,
    RequireSchema,
    CreateRole,
    History,
}

async fn transaction(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
) -> Result<Applied, Failure> {
    if matches!(mode, Mode::Query | Mode::Exec { .. }) {
        return crate::engine::fleet_sql::tenant::apply(
            client,
            ctx,
            tenant,
            mode,
            registry_version,
        )
        .await;
    }
    let table = history::table(tenant);
    if let Some(done) = in_one_trip(client, ctx, tenant, mode, registry_version, &table).await {
        return done;
    }
    let role = ctx
        .role_template
        .map(|t| role_name(t, tenant))
        .filter(|_| mode.registers());

    // The opening: one round trip.
    let mut opening: Vec<(Step, String)> = vec![(Step::Begin, begin_sql(ctx, tenant, mode))];
    match mode {
        // A pooled schema at the target if there is one, else a new one.
        Mode::Create | Mode::Import { .. } => opening.push((
            Step::CreateSchema,
            ctx.control.claim_or_create_sql(tenant, ctx.target),
        )),
        Mode::PoolFill => opening.push((
            Step::CreateSchema,
            ctx.control.pool_lock_or_create_sql(tenant),
        )),
        Mode::Adopt { .. } => opening.push((Step::RequireSchema, require_schema_sql(tenant))),
        Mode::Migrate
        | Mode::Rollback { .. }
        | Mode::Drop { .. }
        | Mode::Repair { .. }
        | Mode::PoolDrain
        | Mode::Query
        | Mode::Exec { .. } => {}
    }
    if let Some(role) = &role {
        let mut sql = create_role_sql(tenant, role);
        if !ctx.tiers.is_empty() {
            // The tier's settings with the role, in the same transaction.
            let none = crate::labels::Labels::new();
            let labels = ctx.labels.get(tenant.id()).unwrap_or(&none);
            let tier = ctx
                .tiers
                .of(tenant.id(), labels)
                .map_err(|message| Failure::new(FailureKind::Other, message, registry_version))?;
            let changes = tiers::changes(&tiers::RoleState::new_role(), tier);
            sql.push(' ');
            sql.push_str(&tiers::alter_sql(role, &changes));
        }
        opening.push((Step::CreateRole, sql));
    }
    let reads_history = !matches!(mode, Mode::Drop { .. } | Mode::PoolDrain);
    if reads_history {
        opening.push((Step::History, history::ensure_sql(&table)));
        opening.push((Step::History, history::read_sql(&table)));
    }
    let messages: Vec<&str> = opening.iter().map(|(_, m)| m.as_str()).collect();
    let already = || {
        Failure::new(
            FailureKind::AlreadyExists,
            format!(
                "already registered (schema {}): created meanwhile by another command",
                tenant.schema()
            ),
            registry_version,
        )
    };
    let replies = trip(client, &messages).await.map_err(|e| {
        // Registering writes nothing for an id that is already there; what failed after
        // that (its schema exists, say) follows from it.
        match e.done.first() {
            Some(begin) if mode.registers() && rows_affected(begin) == 0 => already(),
            _ => opening_failure(opening[e.index].0, tenant, &e, registry_version),
        }
    })?;
    if mode.registers() && rows_affected(&replies[0]) == 0 {
        return Err(already());
    }
    let applied = match (reads_history, replies.last()) {
        (true, Some(rows)) => history::parse(rows, registry_version)?,
        _ => Vec::new(),
    };
    // A new schema has no history: one that has came from the pool.
    let from_pool = matches!(mode, Mode::Create | Mode::Import { .. }) && !applied.is_empty();

    // The work and the bookkeeping: one round trip (more when a no-transaction script cuts
    // it into segments).
    let mut work = plan_work(ctx, tenant, mode, &applied, &table, registry_version)?;
    let seed_sql = match (mode, ctx.seed) {
        (Mode::Create, Some(seed)) => {
            Some(seed.render(tenant.id(), tenant.schema(), role.as_deref()))
        }
        _ => None,
    };
    let seed_label = ctx.seed.map(|s| format!("seed {}", s.path.display()));
    if let (Some(sql), Some(label)) = (&seed_sql, seed_label) {
        let script = Script {
            label,
            version: None,
            sql,
        };
        match work.segments.last_mut() {
            Some(last) if !last.no_transaction => last.scripts.push(script),
            _ => work.segments.push(Segment {
                no_transaction: false,
                scripts: vec![script],
                bookkeeping: String::new(),
                after: work.after,
                done: work.count,
            }),
        }
    }
    let mut finish = String::new();
    if let Some(role) = &role {
        finish.push_str(&grant_existing_sql(ctx, tenant, role, &table));
    }
    if mode == Mode::PoolFill {
        finish.push_str(&names_itself_sql(tenant));
    }
    finish.push_str(
        &ctx.control
            .schema_done_sql(ctx.run_id, tenant, work.after, work.count, from_pool),
    );
    match (work.segments.as_slice(), ctx.load.filter(|_| matches!(mode, Mode::Import { .. }))) {
        // The rows between the migrations and the end: one transaction for all of it.
        ([only], Some(load)) if !only.no_transaction => {
            only.send(client, None, &only.bookkeeping, work.before).await?;
            load.load(client, tenant, ctx.events).await?;
            let last = format!("{GUARD}{finish}; COMMIT;");
            trip(client, &[last.as_str()])
                .await
                .map_err(|e| Failure::from_pg(&e.error, work.before))?;
        }
        (_, Some(_)) => {
            return Err(Failure::new(
                FailureKind::Archive,
                "the migrations up to the archive's version run outside a transaction (a no-transaction step): an import must be one transaction, so that a failed one leaves nothing".into(),
                work.before,
            ))
        }
        ([only], None) if !only.no_transaction => {
            let last = format!("{GUARD}{}{finish}; COMMIT;", only.bookkeeping);
            only.send(client, None, &last, work.before).await?;
        }
        (_, None) => segmented(client, ctx, tenant, &work, &finish).await?,
    }
    Ok(Applied {
        before: work.before,
        after: work.after,
        count: work.count,
        archived_as: work.archived_as,
        from_pool,
        rows: None,
    })
}

/// `pool fill`: refuses (rolls back) a pooled schema whose objects spell its own name: a
/// function's body or `SET search_path`, a view's text. A schema rename (at `tenant create`)
/// does not reach into them; tables, indexes, sequences, defaults, triggers and views by
/// reference all follow it.
fn names_itself_sql(tenant: &Tenant) -> String {
    spells_its_name_sql(
        tenant.schema(),
        "the migrations make objects that spell the schema''s own name (%): a pooled schema is renamed at tenant create, and these would still point at the old name. Write them without the schema name (no SET search_path FROM CURRENT, no schema-qualified names in function bodies); the pool takes nothing until then",
    )
}

/// A statement that fails (SQLSTATE TNF04, `message` with `%` for the objects found) when
/// objects of `schema` spell its name where a rename does not reach: a function's body or
/// its `SET search_path`, a view's text.
pub fn spells_its_name_sql(schema: &str, message: &str) -> String {
    let lit = quote_literal(schema);
    format!(
        " DO $tenantctl$ DECLARE found text; BEGIN \
             SELECT string_agg(what, ', ') INTO found FROM ( \
                 SELECT format('function %s()', p.proname) AS what FROM pg_proc p \
                 WHERE p.pronamespace = to_regnamespace({ident}) \
                   AND (strpos(p.prosrc, {lit}) > 0 OR strpos(coalesce(array_to_string(p.proconfig, ','), ''), {lit}) > 0) \
                 UNION ALL \
                 SELECT format('view %s', v.viewname) FROM pg_views v \
                 WHERE v.schemaname = {lit} AND strpos(v.definition, {lit}) > 0) s; \
             IF found IS NOT NULL THEN RAISE EXCEPTION '{message}', found \
                 USING ERRCODE = 'TNF04'; END IF; END $tenantctl$;",
        ident = quote_literal(&quote_ident(schema)),
    )
}

/// The preamble, the fence (this run is still this process's; the tenant still exists when
/// it should), and for commands that register a tenant, its registry row (none is written
/// when the id is already an active tenant: the caller checks the row count).
pub fn begin_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant, mode: Mode) -> String {
    let registers = mode.registers();
    let mut sql = fresh_preamble(tenant.schema(), &ctx.tx);
    // A pooled schema's pool row is made by `pool fill`, and checked (and locked) after.
    let must_exist = (!registers && mode != Mode::PoolFill).then_some(tenant);
    sql.push_str(&format!(
        " {};",
        ctx.control.fence_sql(ctx.run_id, ctx.epoch, must_exist)
    ));
    if registers {
        sql.push(' ');
        let none = crate::labels::Labels::new();
        let labels = ctx.labels.get(tenant.id()).unwrap_or(&none);
        let incoming = mode
            == Mode::Import {
                from: ImportFrom::Move,
            };
        sql.push_str(&ctx.control.register_sql(tenant, labels, incoming));
    }
    sql
}

/// `tenant adopt`: the schema must already be there.
fn require_schema_sql(tenant: &Tenant) -> String {
    format!(
        "DO $tenantctl$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {lit}) THEN \
             RAISE EXCEPTION 'schema % does not exist', {lit} USING ERRCODE = '{SQLSTATE_NO_SCHEMA}'; \
         END IF; END $tenantctl$",
        lit = quote_literal(tenant.schema())
    )
}

/// Role per tenant: a login-less role with USAGE on its own schema and DML on its tables,
/// now and for tables later migrations create (default privileges of the migrating role).
/// No CREATE, nothing outside its schema.
fn create_role_sql(tenant: &Tenant, role: &str) -> String {
    let q = quote_ident(role);
    let schema_q = tenant.quoted_schema();
    format!(
        "CREATE ROLE {q} NOLOGIN; \
         GRANT USAGE ON SCHEMA {schema_q} TO {q}; \
         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema_q} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {q}; \
         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema_q} GRANT USAGE, SELECT ON SEQUENCES TO {q};"
    )
}

/// Tables that already existed (adopt) get the role's grants too; the history table never:
/// a tenant's role must not be able to rewrite what is applied. The role is recorded in the
/// registry, so that `tenant drop` drops the role it made.
fn grant_existing_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant, role: &str, history: &str) -> String {
    let q = quote_ident(role);
    let schema_q = tenant.quoted_schema();
    format!(
        " GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema_q} TO {q}; \
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema_q} TO {q}; \
         REVOKE ALL ON {history} FROM {q}; {};",
        ctx.control.record_role_sql(tenant, role)
    )
}

/// A failure of the opening trip, told apart by the step that failed.
fn opening_failure(step: Step, tenant: &Tenant, e: &TripError, still_at: Option<i32>) -> Failure {
    let code = e.error.code();
    let mut f = Failure::from_pg(&e.error, still_at);
    match step {
        Step::CreateSchema if code == Some(&SqlState::DUPLICATE_SCHEMA) => {
            f.kind = FailureKind::SchemaExists;
        }
        Step::RequireSchema if code.is_some_and(|c| c.code() == SQLSTATE_NO_SCHEMA) => {
            f = Failure::new(
                FailureKind::SchemaMissing,
                format!("schema {} does not exist", tenant.schema()),
                None,
            );
        }
        Step::CreateRole if code == Some(&SqlState::DUPLICATE_OBJECT) => {
            f.message = format!(
                "{}; role names are shared by every database of the server: pick a [tenants] role template that includes something unique to this database",
                f.message
            );
        }
        Step::CreateRole if code == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            f.message = format!(
                "{}; role per tenant needs the CREATEROLE privilege",
                f.message
            );
        }
        Step::Begin
        | Step::CreateSchema
        | Step::RequireSchema
        | Step::CreateRole
        | Step::History => {}
    }
    f
}
