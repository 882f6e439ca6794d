//! One schema, one transaction, exactly once, in two round trips (see [`schema_tx`]), or one
//! (see [`in_one_trip`]). The opening: the preamble (a per-schema advisory lock, `SET LOCAL`
//! search_path and timeouts), the fence, the registration (create, adopt), and the schema's
//! history. Then the work: the pending migrations (or down scripts) as they are on disk, each
//! its own message, and the bookkeeping (history rows, the registry's version, the ledger row)
//! with COMMIT. Commit = done; anything else = nothing happened. Create, adopt, migrate,
//! rollback and drop are the modes of one shape.
//!
//! [`schema_tx`]: crate::engine::schema_tx

use refinery::Migration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::control::{session_lock_sql, Control, RunCommand};
use crate::engine::events::{Event, Events};
use crate::engine::failure::{Failure, FailureKind};
use crate::engine::history;
use crate::engine::schema_tx::{line_of, preamble, rows_affected, trip, TripError, TxSettings};
use crate::migrations::rules::concurrent_index_names;
use crate::migrations::scan::{chunks, for_each_statement};
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
    /// Where warnings go (an INVALID index dropped before a build is retried).
    pub events: &'a Events,
    /// Labels of the tenants a create or adopt registers, by id.
    pub labels: &'a std::collections::HashMap<String, crate::labels::Labels>,
    /// Seed data for the tenants a create makes.
    pub seed: Option<&'a crate::seed::Seed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create the schema and register the tenant in the same transaction.
    Create,
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
}

impl Mode {
    /// The command a run in this mode is recorded as.
    pub fn command(self) -> RunCommand {
        match self {
            Mode::Create => RunCommand::TenantCreate,
            Mode::Migrate => RunCommand::Migrate,
            Mode::Rollback { .. } => RunCommand::Rollback,
            Mode::Adopt { .. } => RunCommand::TenantAdopt,
            Mode::Drop { archive: false } => RunCommand::TenantDrop,
            Mode::Drop { archive: true } => RunCommand::TenantDropArchive,
            Mode::Repair { .. } => RunCommand::Repair,
            Mode::PoolFill => RunCommand::PoolFill,
            Mode::PoolDrain => RunCommand::PoolDrain,
        }
    }

    /// Whether the transaction registers the tenant.
    fn registers(self) -> bool {
        match self {
            Mode::Create | Mode::Adopt { .. } => true,
            Mode::Migrate
            | Mode::Rollback { .. }
            | Mode::Drop { .. }
            | Mode::Repair { .. }
            | Mode::PoolFill
            | Mode::PoolDrain => false,
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

/// One script of the work trip: what to blame if it fails, and its text as on disk.
pub struct Script<'s> {
    pub label: String,
    /// The version of a forward migration (None for a rollback script).
    pub version: Option<i32>,
    pub sql: &'s str,
}

/// Files above this size are sent a piece at a time (cut at statement ends), so that a very
/// large migration is not copied whole into the driver's buffers.
const PIECE: usize = 1 << 20;

/// What the work does, checked against the history: its segments, in order.
pub struct Work<'s> {
    pub before: Option<i32>,
    pub after: Option<i32>,
    pub count: usize,
    /// Ordinarily one: every script and the bookkeeping in the opening's transaction. Cut at
    /// no-transaction scripts (see [`cut`]).
    pub segments: Vec<Segment<'s>>,
    /// `tenant drop --archive`: the schema the data is renamed to.
    pub archived_as: Option<String>,
}

/// Scripts that are recorded together: a run of ordinary scripts in one transaction, or one
/// no-transaction script, run statement by statement and recorded right after it.
pub struct Segment<'s> {
    pub no_transaction: bool,
    pub scripts: Vec<Script<'s>>,
    /// History rows (inserted or deleted) for these scripts.
    pub bookkeeping: String,
    /// The schema's version once this segment is recorded.
    pub after: Option<i32>,
    /// Migrations done once it is recorded, earlier segments included.
    pub done: usize,
}

impl<'s> Segment<'s> {
    /// Everything in one transaction.
    pub fn whole(scripts: Vec<Script<'s>>, bookkeeping: String, after: Option<i32>) -> Segment<'s> {
        let done = scripts.len();
        Segment {
            no_transaction: false,
            scripts,
            bookkeeping,
            after,
            done,
        }
    }
}

/// One script in the order it runs: outside a transaction or not, and the schema's version
/// once it is done.
struct Item<'s> {
    script: Script<'s>,
    no_transaction: bool,
    after: Option<i32>,
}

/// Cuts scripts into segments at the no-transaction ones (each a segment of its own);
/// `book(range)` is the history bookkeeping for the items in `range`. No scripts: one empty
/// segment ending at `before`.
fn cut<'s>(
    items: Vec<Item<'s>>,
    before: Option<i32>,
    book: impl Fn(std::ops::Range<usize>) -> String,
) -> Vec<Segment<'s>> {
    let total = items.len();
    let mut out: Vec<Segment<'s>> = Vec::new();
    let mut run: Vec<Script<'s>> = Vec::new();
    let mut run_start = 0usize;
    let mut after = before;
    for (i, item) in items.into_iter().enumerate() {
        if item.no_transaction {
            if !run.is_empty() {
                out.push(Segment {
                    no_transaction: false,
                    scripts: std::mem::take(&mut run),
                    bookkeeping: book(run_start..i),
                    after,
                    done: i,
                });
            }
            out.push(Segment {
                no_transaction: true,
                scripts: vec![item.script],
                bookkeeping: book(i..i + 1),
                after: item.after,
                done: i + 1,
            });
            run_start = i + 1;
        } else {
            run.push(item.script);
        }
        after = item.after;
    }
    if !run.is_empty() || out.is_empty() {
        out.push(Segment {
            no_transaction: false,
            scripts: run,
            bookkeeping: book(run_start..total),
            after,
            done: total,
        });
    }
    out
}

async fn transaction(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
) -> Result<Applied, Failure> {
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
        Mode::Create => opening.push((
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
        | Mode::PoolDrain => {}
    }
    if let Some(role) = &role {
        opening.push((Step::CreateRole, create_role_sql(tenant, role)));
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
    let from_pool = mode == Mode::Create && !applied.is_empty();

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
    match work.segments.as_slice() {
        [only] if !only.no_transaction => {
            let last = format!("{}{finish}; COMMIT;", only.bookkeeping);
            only.send(client, None, &last, work.before).await?;
        }
        _ => segmented(client, ctx, tenant, &work, &finish).await?,
    }
    Ok(Applied {
        before: work.before,
        after: work.after,
        count: work.count,
        archived_as: work.archived_as,
        from_pool,
    })
}

/// Migrate and rollback in one round trip instead of two, when the registry's version says
/// what the history holds (it does whenever tenantctl wrote both, in one transaction): the
/// work is planned from the files up to that version, and the opening checks the history
/// against them (one statement, [`history::guard_sql`]) ahead of the scripts, in the same
/// pipeline and transaction, so nothing runs on a history that is not the expected one.
/// None: not tried (another mode, a plan that does not fit one transaction), or the opening
/// failed (the history is not as expected, say): the transaction is rolled back and the
/// caller goes the usual way, which reads the history and says what it found.
async fn in_one_trip(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
    table: &str,
) -> Option<Result<Applied, Failure>> {
    if !matches!(mode, Mode::Migrate | Mode::Rollback { .. }) {
        return None;
    }
    let expected: Vec<&crate::migrations::MigrationFile> = ctx
        .migrations
        .files()
        .iter()
        .filter(|f| registry_version.is_some_and(|v| f.version <= v))
        .collect();
    let applied: Vec<Migration> = expected.iter().map(|f| f.migration.clone()).collect();
    let work = plan_work(ctx, tenant, mode, &applied, table, registry_version).ok()?;
    let [only] = work.segments.as_slice() else {
        return None;
    };
    if only.no_transaction {
        return None;
    }
    // One message: each message is answered (and flushed) on its own.
    let opening = format!(
        "{} {}; {};",
        begin_sql(ctx, tenant, mode),
        history::ensure_sql(table),
        history::guard_sql(table, &expected),
    );
    let last = format!(
        "{}{}; COMMIT;",
        only.bookkeeping,
        ctx.control
            .schema_done_sql(ctx.run_id, tenant, work.after, work.count, false)
    );
    match only
        .send_after(client, &[&opening], &last, work.before)
        .await
    {
        Ok(()) => Some(Ok(Applied {
            before: work.before,
            after: work.after,
            count: work.count,
            archived_as: None,
            from_pool: false,
        })),
        Err((0, f)) if !f.broken_connection => match client.batch_execute("ROLLBACK").await {
            Ok(()) => None,
            Err(e) => Some(Err(Failure::from_pg(&e, work.before))),
        },
        Err((_, f)) => Some(Err(f)),
    }
}

/// `pool fill`: refuses (rolls back) a pooled schema whose objects spell its own name: a
/// function's body or `SET search_path`, a view's text. A schema rename (at `tenant create`)
/// does not reach into them; tables, indexes, sequences, defaults, triggers and views by
/// reference all follow it.
fn names_itself_sql(tenant: &Tenant) -> String {
    let lit = quote_literal(tenant.schema());
    format!(
        " DO $tenantctl$ DECLARE found text; BEGIN \
             SELECT string_agg(what, ', ') INTO found FROM ( \
                 SELECT format('function %s()', p.proname) AS what FROM pg_proc p \
                 WHERE p.pronamespace = to_regnamespace({ident}) \
                   AND (strpos(p.prosrc, {lit}) > 0 OR strpos(coalesce(array_to_string(p.proconfig, ','), ''), {lit}) > 0) \
                 UNION ALL \
                 SELECT format('view %s', v.viewname) FROM pg_views v \
                 WHERE v.schemaname = {lit} AND strpos(v.definition, {lit}) > 0) s; \
             IF found IS NOT NULL THEN RAISE EXCEPTION \
                 'the migrations make objects that spell the schema''s own name (%): a pooled schema is renamed at tenant create, and these would still point at the old name. Write them without the schema name (no SET search_path FROM CURRENT, no schema-qualified names in function bodies); the pool takes nothing until then', found \
                 USING ERRCODE = 'TNF04'; END IF; END $tenantctl$;",
        ident = quote_literal(&tenant.quoted_schema()),
    )
}

/// A schema whose work has no-transaction scripts: segment after segment, each recorded as
/// it is done, under the schema's advisory lock held for the session meanwhile (each commit
/// would release the transaction's). Whatever happens, the connection is left as it was
/// found: no transaction open, settings reset, the session lock released.
async fn segmented(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    work: &Work<'_>,
    finish: &str,
) -> Result<(), Failure> {
    // In the opening's transaction, which holds the same lock: granted at once.
    client
        .batch_execute(&session_lock_sql(tenant.schema(), true))
        .await
        .map_err(|e| Failure::from_pg(&e, work.before))?;
    let result = segments_in_turn(client, ctx, tenant, work, finish).await;
    let clean = match &result {
        Err(f) if f.broken_connection => return result,
        Err(_) => "ROLLBACK; ",
        Ok(()) => "",
    };
    let sql = format!(
        "{clean}RESET ALL; {}",
        session_lock_sql(tenant.schema(), false)
    );
    match (client.batch_execute(&sql).await, result) {
        (Err(_), Err(mut f)) => {
            f.broken_connection = true;
            Err(f)
        }
        (_, result) => result,
    }
}

async fn segments_in_turn(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    work: &Work<'_>,
    finish: &str,
) -> Result<(), Failure> {
    let mut recorded = work.before;
    // The opening's transaction is open until the first segment commits.
    let mut open = true;
    let last = work.segments.len() - 1;
    for (i, seg) in work.segments.iter().enumerate() {
        let record = match i == last {
            true => format!("{}{finish}", seg.bookkeeping),
            false => format!(
                "{}{}",
                seg.bookkeeping,
                ctx.control
                    .schema_progress_sql(ctx.run_id, tenant, seg.after, seg.done)
            ),
        };
        if seg.no_transaction {
            if open {
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| Failure::from_pg(&e, recorded))?;
            }
            run_step(client, ctx, tenant, seg, recorded).await?;
            let sql = format!("{} {record}; COMMIT;", resume_sql(ctx, tenant));
            if let Err(e) = client.batch_execute(&sql).await {
                let mut f = Failure::from_pg(&e, recorded);
                f.message = format!(
                    "{}; recording {} after it ran failed, so a re-run runs it again",
                    f.message, seg.scripts[0].label
                );
                return Err(f);
            }
        } else {
            let first = (!open).then(|| resume_sql(ctx, tenant));
            seg.send(
                client,
                first.as_deref(),
                &format!("{record}; COMMIT;"),
                recorded,
            )
            .await?;
        }
        open = false;
        recorded = seg.after;
    }
    Ok(())
}

/// The opening of a later segment's transaction: the preamble (the schema's lock is this
/// session's already) and the fence.
fn resume_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant) -> String {
    format!(
        "{} {};",
        preamble(tenant.schema(), &ctx.tx),
        ctx.control.fence_sql(ctx.run_id, ctx.epoch, Some(tenant))
    )
}

/// A no-transaction script, statement by statement, each its own implicit transaction, with
/// the schema's `search_path` and the step's timeouts set for the session meanwhile (reset
/// afterwards). INVALID indexes it creates (by name) that an earlier attempt left behind are
/// dropped first and reported; a failed build's are dropped after it.
async fn run_step(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    seg: &Segment<'_>,
    still_at: Option<i32>,
) -> Result<(), Failure> {
    let script = &seg.scripts[0];
    let blame = |e: &tokio_postgres::Error, line: Option<u32>| {
        let mut f = Failure::from_pg(e, still_at);
        f.migration = Some(script.label.clone());
        f.migration_version = script.version;
        f.line = line;
        f.outside_transaction = true;
        if f.kind == FailureKind::Other {
            f.kind = FailureKind::Migration;
        }
        f
    };
    client
        .batch_execute(&step_settings_sql(ctx, tenant))
        .await
        .map_err(|e| Failure::from_pg(&e, still_at))?;
    let indexes = concurrent_index_names(script.sql);
    drop_invalid(
        client,
        ctx,
        tenant,
        &indexes,
        "left by an earlier attempt that did not finish; building it again",
    )
    .await?;
    // (text, lines before it in the file)
    let mut statements: Vec<(&str, usize)> = Vec::new();
    let mut start = 0usize;
    let scanned = for_each_statement(script.sql, |s| {
        let text = &script.sql[start..s.end];
        statements.push((text, script.sql[..start].matches('\n').count()));
        start = s.end;
    });
    if scanned.is_err() {
        statements = vec![(script.sql, 0)];
    }
    for (text, lines_before) in statements {
        if let Err(e) = client.simple_query(text).await {
            let f = blame(&e, line_of(text, &e, 0).map(|l| (l + lines_before) as u32));
            if !f.broken_connection {
                let _ = drop_invalid(
                    client,
                    ctx,
                    tenant,
                    &indexes,
                    "left by this failed build, so that nothing of it remains",
                )
                .await;
            }
            return Err(f);
        }
    }
    client
        .batch_execute("RESET ALL")
        .await
        .map_err(|e| Failure::from_pg(&e, still_at))
}

/// Session settings for a no-transaction step: what the preamble sets for a transaction, at
/// session level, with the step's own statement timeout; then the fence.
fn step_settings_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant) -> String {
    let tx = &ctx.tx;
    let path = std::iter::once(tenant.schema())
        .chain(tx.also_on_path)
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "SET search_path TO {path}; SET lock_timeout = {}; SET statement_timeout = {}; SET client_min_messages = warning;",
        tx.lock_timeout.as_millis(),
        tx.step_statement_timeout.map_or(0, |d| d.as_millis()),
    );
    if tx.check_client {
        sql.push_str(" SET client_connection_check_interval = 2000;");
    }
    if let Some(run) = tx.run_id {
        sql.push_str(&format!(" SET application_name = 'tenantctl run {run}';"));
    }
    sql.push_str(&format!(
        " {};",
        ctx.control.fence_sql(ctx.run_id, ctx.epoch, Some(tenant))
    ));
    sql
}

/// Drops the INVALID indexes among `names` in the tenant's schema (an interrupted or failed
/// `CREATE INDEX CONCURRENTLY` leaves one behind), concurrently, and says so.
async fn drop_invalid(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    names: &[String],
    why: &str,
) -> Result<(), Failure> {
    if names.is_empty() {
        return Ok(());
    }
    let rows = client
        .query_typed(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relnamespace = to_regnamespace($1) AND c.relname = ANY($2) AND NOT i.indisvalid",
            &[(&tenant.quoted_schema(), Type::TEXT), (&names, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(|e| Failure::from_pg(&e, None))?;
    for row in rows {
        let name: String = row.get(0);
        client
            .batch_execute(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                tenant.quoted_schema(),
                quote_ident(&name)
            ))
            .await
            .map_err(|e| Failure::from_pg(&e, None))?;
        ctx.events.emit(&Event::Warning {
            message: &format!(
                "{tenant}: dropped the INVALID index {name} (what an interrupted or failed CREATE INDEX CONCURRENTLY leaves) {why}"
            ),
        });
    }
    Ok(())
}

/// The preamble, the fence (this run is still this process's; the tenant still exists when
/// it should), and for commands that register a tenant, its registry row (none is written
/// when the id is already an active tenant: the caller checks the row count).
fn begin_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant, mode: Mode) -> String {
    let registers = mode.registers();
    let mut sql = preamble(tenant.schema(), &ctx.tx);
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
        sql.push_str(&ctx.control.register_sql(tenant, labels));
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

/// What the work trip does in each mode, checked against the history first.
fn plan_work<'s>(
    ctx: &ApplyCtx<'s>,
    tenant: &Tenant,
    mode: Mode,
    applied: &[Migration],
    table: &str,
    registry_version: Option<i32>,
) -> Result<Work<'s>, Failure> {
    let set = ctx.migrations;
    let before = applied.last().map(Migration::version);
    let forward = |target: Option<i32>, run: bool| -> Result<Work<'s>, Failure> {
        history::check(applied, set, true)?;
        let pending = history::pending(applied, set, target);
        let after = pending.last().map(|f| f.version).or(before);
        let segments = match run {
            true => cut(
                pending
                    .iter()
                    .map(|f| Item {
                        script: Script {
                            label: f.label(),
                            version: Some(f.version),
                            sql: f.sql(),
                        },
                        no_transaction: f.no_transaction,
                        after: Some(f.version),
                    })
                    .collect(),
                before,
                |r| history::insert_sql(table, &pending[r]),
            ),
            // refinery's fake run: recorded as applied, not run.
            false => vec![Segment::whole(
                Vec::new(),
                history::insert_sql(table, &pending),
                after,
            )],
        };
        Ok(Work {
            before,
            after,
            count: pending.len(),
            segments,
            archived_as: None,
        })
    };
    match mode {
        Mode::Create | Mode::Migrate | Mode::PoolFill => forward(ctx.target, true),
        Mode::Adopt { baseline } => forward(Some(baseline), false),
        Mode::Rollback { to } => {
            history::check(applied, set, false)?;
            let mut items = Vec::new();
            let mut reverted = Vec::new();
            let versions: Vec<i32> = applied.iter().map(Migration::version).collect();
            for app in applied.iter().rev().filter(|m| m.version() > to) {
                let file = set.get(app.version()).expect("checked above");
                let Some((_, down)) = &file.down else {
                    return Err(Failure::new(
                        FailureKind::Other,
                        format!(
                            "{} has no rollback script {}.down.sql",
                            file.label(),
                            file.label()
                        ),
                        before,
                    ));
                };
                items.push(Item {
                    script: Script {
                        label: format!("{}.down", file.label()),
                        version: None,
                        sql: down,
                    },
                    no_transaction: file.down_no_transaction(),
                    // Once this is reverted: the newest applied version below it.
                    after: versions.iter().copied().filter(|v| *v < file.version).max(),
                });
                reverted.push(file.version);
            }
            let count = items.len();
            Ok(Work {
                before,
                after: versions.iter().copied().filter(|v| *v <= to).max(),
                count,
                segments: cut(items, before, |r| history::delete_sql(table, &reverted[r])),
                archived_as: None,
            })
        }
        Mode::Repair { version } => {
            let file = set.get(version).expect("checked by the command");
            let Some(app) = applied.iter().find(|a| a.version() == version) else {
                return Err(Failure::new(
                    FailureKind::Other,
                    format!(
                        "{} is not applied here, so there is nothing to repair",
                        file.label()
                    ),
                    before,
                ));
            };
            let accepted = file.migration == *app;
            let bookkeeping = match accepted {
                true => String::new(),
                false => history::accept_sql(table, file),
            };
            Ok(Work {
                before,
                after: before,
                count: usize::from(!accepted),
                segments: vec![Segment::whole(Vec::new(), bookkeeping, before)],
                archived_as: None,
            })
        }
        Mode::PoolDrain => Ok(Work {
            before: registry_version,
            after: None,
            count: 0,
            segments: vec![Segment::whole(
                Vec::new(),
                drop_sql(ctx, tenant, None),
                None,
            )],
            archived_as: None,
        }),
        Mode::Drop { archive } => {
            let archived_as = archive.then(|| archive_name(tenant.schema()));
            Ok(Work {
                before: registry_version,
                after: None,
                count: 0,
                segments: vec![Segment::whole(
                    Vec::new(),
                    drop_sql(ctx, tenant, archived_as.as_deref()),
                    None,
                )],
                archived_as,
            })
        }
    }
}

/// `tenant drop`: the schema goes (or is renamed out of the way), then the role, and the
/// registry marks the tenant dropped.
fn drop_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant, archived_as: Option<&str>) -> String {
    let schema_q = tenant.quoted_schema();
    let first = match archived_as {
        Some(name) => format!("ALTER SCHEMA {schema_q} RENAME TO {};", quote_ident(name)),
        None => format!("DROP SCHEMA IF EXISTS {schema_q} CASCADE;"),
    };
    format!("{first} {};", ctx.control.drop_sql(tenant, archived_as))
}

/// `<schema>__arch_<UTC yyyymmddhhmmss>`, cut to fit 63 bytes. Tenant ids cannot contain
/// `__`, so an archived name never collides with a live tenant's schema.
fn archive_name(schema: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let suffix = format!("__arch_{stamp}");
    let keep = crate::tenant::MAX_IDENT_BYTES - suffix.len();
    format!("{}{suffix}", &schema[..schema.len().min(keep)])
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

impl Segment<'_> {
    /// Sends `first` (the opening of a later segment's transaction), the scripts (each as it
    /// is on disk; a very large one in pieces) and then `last`, the bookkeeping with COMMIT.
    /// On failure the script that failed is blamed, at its line; a failure of `last` says
    /// that the outcome of a broken connection is unknown. `still_at`: the schema's version
    /// if this does not commit.
    pub async fn send(
        &self,
        client: &Client,
        first: Option<&str>,
        last: &str,
        still_at: Option<i32>,
    ) -> Result<(), Failure> {
        let first: Vec<&str> = first.into_iter().collect();
        self.send_after(client, &first, last, still_at)
            .await
            .map_err(|(_, f)| f)
    }

    /// [`Segment::send`] after several opening messages; a failure comes with the index of
    /// the message that failed (the openings first).
    pub async fn send_after(
        &self,
        client: &Client,
        first: &[&str],
        last: &str,
        still_at: Option<i32>,
    ) -> Result<(), (usize, Failure)> {
        // (script, lines before this piece in it, text)
        let mut pieces: Vec<(Option<&Script<'_>>, usize, &str)> = Vec::new();
        pieces.extend(first.iter().map(|m| (None, 0, *m)));
        for script in &self.scripts {
            match chunks(script.sql, PIECE) {
                Ok(cut) => pieces.extend(cut.into_iter().map(|(n, p)| (Some(script), n, p))),
                Err(_) => pieces.push((Some(script), 0, script.sql)),
            }
        }
        pieces.push((None, 0, last));
        let messages: Vec<&str> = pieces.iter().map(|p| p.2).collect();
        let Err(e) = trip(client, &messages).await else {
            return Ok(());
        };
        let mut f = Failure::from_pg(&e.error, still_at);
        match pieces[e.index] {
            (Some(script), lines_before, text) => {
                f.migration = Some(script.label.clone());
                f.migration_version = script.version;
                f.line = line_of(text, &e.error, e.completed).map(|l| (l + lines_before) as u32);
                if f.kind == FailureKind::Other {
                    f.kind = FailureKind::Migration;
                }
            }
            (None, ..) if f.kind == FailureKind::Connection && e.index + 1 == pieces.len() => {
                f.message = format!(
                    "{}; the connection broke while committing, so the outcome is not known: `tenantctl status` shows it and a re-run finishes the job without applying anything twice",
                    f.message
                );
            }
            (None, ..) => {}
        }
        Err((e.index, f))
    }
}
