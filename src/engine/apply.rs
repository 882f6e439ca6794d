//! One schema, one transaction, exactly once, in two round trips (see [`schema_tx`]). The
//! opening: the preamble (a per-schema advisory lock, `SET LOCAL` search_path and timeouts),
//! the fence, the registration (create, adopt), and the schema's history. Then the work: the
//! pending migrations (or down scripts) as they are on disk, each its own message, and the
//! bookkeeping (history rows, the registry's version, the ledger row) with COMMIT. Commit =
//! done; anything else = nothing happened. Create, adopt, migrate, rollback and drop are the
//! modes of one shape.
//!
//! [`schema_tx`]: crate::engine::schema_tx

use refinery::Migration;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::control::{Control, RunCommand};
use crate::engine::failure::{Failure, FailureKind};
use crate::engine::history;
use crate::engine::schema_tx::{line_of, preamble, rows_affected, trip, TripError, TxSettings};
use crate::migrations::scan::chunks;
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
        }
    }

    /// Whether the transaction registers the tenant.
    fn registers(self) -> bool {
        match self {
            Mode::Create | Mode::Adopt { .. } => true,
            Mode::Migrate | Mode::Rollback { .. } | Mode::Drop { .. } | Mode::Repair { .. } => {
                false
            }
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

/// What the work trip does.
pub struct Work<'s> {
    pub before: Option<i32>,
    pub after: Option<i32>,
    pub count: usize,
    pub scripts: Vec<Script<'s>>,
    /// Statements for the last message, before the registry, the ledger and COMMIT.
    pub bookkeeping: String,
    /// `tenant drop --archive`: the schema the data is renamed to.
    pub archived_as: Option<String>,
}

async fn transaction(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
) -> Result<Applied, Failure> {
    let table = history::table(tenant);
    let role = ctx
        .role_template
        .map(|t| role_name(t, tenant))
        .filter(|_| mode.registers());

    // The opening: one round trip.
    let mut opening: Vec<(Step, String)> = vec![(Step::Begin, begin_sql(ctx, tenant, mode))];
    match mode {
        Mode::Create => opening.push((
            Step::CreateSchema,
            format!("CREATE SCHEMA {}", tenant.quoted_schema()),
        )),
        Mode::Adopt { .. } => opening.push((Step::RequireSchema, require_schema_sql(tenant))),
        Mode::Migrate | Mode::Rollback { .. } | Mode::Drop { .. } | Mode::Repair { .. } => {}
    }
    if let Some(role) = &role {
        opening.push((Step::CreateRole, create_role_sql(tenant, role)));
    }
    let reads_history = !matches!(mode, Mode::Drop { .. });
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

    // The work and the bookkeeping: one round trip.
    let work = plan_work(ctx, tenant, mode, &applied, &table, registry_version)?;
    let mut last = work.bookkeeping.clone();
    if let Some(role) = &role {
        last.push_str(&grant_existing_sql(ctx, tenant, role, &table));
    }
    last.push_str(
        &ctx.control
            .schema_done_sql(ctx.run_id, tenant, work.after, work.count),
    );
    last.push_str("; COMMIT;");
    work.send(client, &last).await?;
    Ok(Applied {
        before: work.before,
        after: work.after,
        count: work.count,
        archived_as: work.archived_as,
    })
}

/// The preamble, the fence (this run is still this process's; the tenant still exists when
/// it should), and for commands that register a tenant, its registry row (none is written
/// when the id is already an active tenant: the caller checks the row count).
fn begin_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant, mode: Mode) -> String {
    let registers = mode.registers();
    let mut sql = preamble(tenant.schema(), &ctx.tx);
    let must_exist = (!registers).then_some(tenant);
    sql.push_str(&format!(
        " {};",
        ctx.control.fence_sql(ctx.run_id, ctx.epoch, must_exist)
    ));
    if registers {
        sql.push(' ');
        sql.push_str(&ctx.control.register_sql(tenant));
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
        Ok(Work {
            before,
            after: pending.last().map(|f| f.version).or(before),
            count: pending.len(),
            scripts: match run {
                true => pending
                    .iter()
                    .map(|f| Script {
                        label: f.label(),
                        version: Some(f.version),
                        sql: f.sql(),
                    })
                    .collect(),
                // refinery's fake run: recorded as applied, not run.
                false => Vec::new(),
            },
            bookkeeping: history::insert_sql(table, &pending),
            archived_as: None,
        })
    };
    match mode {
        Mode::Create | Mode::Migrate => forward(ctx.target, true),
        Mode::Adopt { baseline } => forward(Some(baseline), false),
        Mode::Rollback { to } => {
            history::check(applied, set, false)?;
            let mut scripts = Vec::new();
            let mut reverted = Vec::new();
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
                scripts.push(Script {
                    label: format!("{}.down", file.label()),
                    version: None,
                    sql: down,
                });
                reverted.push(file.version);
            }
            Ok(Work {
                before,
                after: applied
                    .iter()
                    .map(Migration::version)
                    .filter(|v| *v <= to)
                    .max(),
                count: scripts.len(),
                scripts,
                bookkeeping: history::delete_sql(table, &reverted),
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
            Ok(Work {
                before,
                after: before,
                count: usize::from(!accepted),
                scripts: Vec::new(),
                bookkeeping: match accepted {
                    true => String::new(),
                    false => history::accept_sql(table, file),
                },
                archived_as: None,
            })
        }
        Mode::Drop { archive } => {
            let archived_as = archive.then(|| archive_name(tenant.schema()));
            Ok(Work {
                before: registry_version,
                after: None,
                count: 0,
                scripts: Vec::new(),
                bookkeeping: drop_sql(ctx, tenant, archived_as.as_deref()),
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

impl Work<'_> {
    /// Sends the scripts (each as it is on disk; a very large one in pieces) and then `last`,
    /// the bookkeeping with COMMIT. On failure the script that failed is blamed, at the line
    /// PostgreSQL pointed at; a failure of `last` says that the outcome of a broken
    /// connection is unknown.
    pub async fn send(&self, client: &Client, last: &str) -> Result<(), Failure> {
        // (script, lines before this piece in it, text)
        let mut pieces: Vec<(Option<&Script<'_>>, usize, &str)> = Vec::new();
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
        let mut f = Failure::from_pg(&e.error, self.before);
        match pieces[e.index] {
            (Some(script), lines_before, text) => {
                f.migration = Some(script.label.clone());
                f.migration_version = script.version;
                f.line = line_of(text, &e.error, e.completed).map(|l| (l + lines_before) as u32);
                if f.kind == FailureKind::Other {
                    f.kind = FailureKind::Migration;
                }
            }
            (None, ..) if f.kind == FailureKind::Connection => {
                f.message = format!(
                    "{}; the connection broke while committing, so the outcome is not known: `tenantctl status` shows it and a re-run finishes the job without applying anything twice",
                    f.message
                );
            }
            (None, ..) => {}
        }
        Err(f)
    }
}
