//! One schema, one transaction, exactly once. In that one transaction: the preamble (a
//! per-schema advisory lock, `SET LOCAL` search_path and timeouts), refinery's work through
//! [`SchemaTx`], the registry's version and the ledger row. Commit = done; anything else =
//! nothing happened. Create, adopt, migrate, rollback and drop are the modes of one shape.

use refinery::{AsyncMigrate, Migration, Target};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::control::{Control, RunCommand};
use crate::engine::failure::{drift_edited, drift_no_file, Failure, FailureKind};
use crate::engine::schema_tx::{preamble, SchemaTx, TxSettings, HISTORY_TABLE};
use crate::migrations::MigrationSet;
use crate::tenant::{quote_ident, quote_literal, role_name, Tenant};

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
        }
    }

    /// Whether the transaction registers the tenant.
    fn registers(self) -> bool {
        match self {
            Mode::Create | Mode::Adopt { .. } => true,
            Mode::Migrate | Mode::Rollback { .. } | Mode::Drop { .. } => false,
        }
    }
}

/// A schema that committed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub before: Option<i32>,
    pub after: Option<i32>,
    pub count: usize,
}

/// Applies pending migrations (or creates the tenant, …) in one transaction on `client`.
pub async fn apply_schema(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
) -> Result<Applied, Failure> {
    let result = run_transaction(client, ctx, tenant, mode, registry_version).await;
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

async fn run_transaction(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
) -> Result<Applied, Failure> {
    begin(client, ctx, tenant, mode.registers(), registry_version).await?;
    let mut tx = SchemaTx::new(client);
    let table = history_table(tenant);
    let role = ctx.role_template.map(|t| role_name(t, tenant));
    let (before, after, count) = match mode {
        Mode::Create | Mode::Migrate => {
            if mode == Mode::Create {
                create_schema(client, tenant).await?;
                if let Some(role) = &role {
                    create_role(client, tenant, role).await?;
                }
            }
            let target = ctx.target.map_or(Target::Latest, Target::Version);
            forward(&mut tx, ctx.migrations, &table, target, registry_version).await?
        }
        Mode::Adopt { baseline } => {
            require_schema(client, tenant).await?;
            if let Some(role) = &role {
                create_role(client, tenant, role).await?;
            }
            let target = Target::FakeVersion(baseline);
            forward(&mut tx, ctx.migrations, &table, target, registry_version).await?
        }
        Mode::Rollback { to } => {
            backward(&mut tx, ctx.migrations, &table, to, registry_version).await?
        }
        Mode::Drop { archive } => {
            drop_tenant(client, ctx, tenant, archive, registry_version).await?;
            (registry_version, None, 0)
        }
    };
    if let (Some(role), true) = (&role, mode.registers()) {
        grant_existing(client, ctx, tenant, role, &table).await?;
    }
    finish(client, ctx, tenant, before, after).await?;
    Ok(Applied {
        before,
        after,
        count,
    })
}

/// The preamble and, for commands that register a tenant, its registry row (refused if it
/// is already there): one round trip.
async fn begin(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    register: bool,
    registry_version: Option<i32>,
) -> Result<(), Failure> {
    let mut sql = preamble(tenant.schema(), &ctx.tx);
    // The fence: this run still belongs to this process (and the tenant still exists when
    // it should), checked under the schema's lock, held until COMMIT.
    let must_exist = (!register).then_some(tenant);
    sql.push_str(&format!(
        " {};",
        ctx.control.fence_sql(ctx.run_id, ctx.epoch, must_exist)
    ));
    if register {
        sql.push(' ');
        sql.push_str(&ctx.control.register_sql(tenant));
    }
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(|e| Failure::from_pg(&e, registry_version))?;
    if register {
        let inserted = messages
            .iter()
            .rev()
            .find_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0);
        if inserted == 0 {
            return Err(Failure::new(
                FailureKind::AlreadyExists,
                "is already registered".into(),
                registry_version,
            ));
        }
    }
    Ok(())
}

/// The registry's version, the ledger row, COMMIT: one round trip.
async fn finish(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    before: Option<i32>,
    after: Option<i32>,
) -> Result<(), Failure> {
    let sql = format!(
        "{}; COMMIT;",
        ctx.control.schema_done_sql(ctx.run_id, tenant, after)
    );
    client.batch_execute(&sql).await.map_err(|e| {
        let mut f = Failure::from_pg(&e, before);
        if f.kind == FailureKind::Connection {
            f.message = format!(
                "{}; the connection broke while committing, so the outcome is not known: `tenantctl status` shows it and a re-run finishes the job without applying anything twice",
                f.message
            );
        }
        f
    })
}

async fn create_schema(client: &Client, tenant: &Tenant) -> Result<(), Failure> {
    client
        .batch_execute(&format!("CREATE SCHEMA {}", tenant.quoted_schema()))
        .await
        .map_err(|e| {
            let mut f = Failure::from_pg(&e, None);
            if e.code() == Some(&SqlState::DUPLICATE_SCHEMA) {
                f.kind = FailureKind::SchemaExists;
            }
            f
        })
}

/// Role per tenant: a login-less role with USAGE on its own schema and DML on its tables,
/// now and for tables later migrations create (default privileges of the migrating role).
/// No CREATE, nothing outside its schema.
async fn create_role(client: &Client, tenant: &Tenant, role: &str) -> Result<(), Failure> {
    let q = quote_ident(role);
    let schema_q = tenant.quoted_schema();
    client
        .batch_execute(&format!(
            "CREATE ROLE {q} NOLOGIN; \
             GRANT USAGE ON SCHEMA {schema_q} TO {q}; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA {schema_q} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {q}; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA {schema_q} GRANT USAGE, SELECT ON SEQUENCES TO {q};"
        ))
        .await
        .map_err(|e| {
            let mut f = Failure::from_pg(&e, None);
            if e.code() == Some(&SqlState::DUPLICATE_OBJECT) {
                f.message = format!(
                    "{}; role names are shared by every database of the server: pick a [tenants] role template that includes something unique to this database",
                    f.message
                );
            } else if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                f.message = format!("{}; role per tenant needs the CREATEROLE privilege", f.message);
            }
            f
        })
}

/// Tables that already existed (adopt) get the role's grants too; the history table never:
/// a tenant's role must not be able to rewrite what is applied. The role is recorded in the
/// registry, so that `tenant drop` drops the role it made.
async fn grant_existing(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    role: &str,
    history: &str,
) -> Result<(), Failure> {
    let q = quote_ident(role);
    let schema_q = tenant.quoted_schema();
    client
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema_q} TO {q}; \
             GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema_q} TO {q}; \
             REVOKE ALL ON {history} FROM {q}; {}",
            ctx.control.record_role_sql(tenant, role)
        ))
        .await
        .map_err(|e| Failure::from_pg(&e, None))
}

/// `tenant drop`: the schema goes (or is renamed out of the way), then the role, and the
/// registry marks the tenant dropped.
async fn drop_tenant(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    archive: bool,
    registry_version: Option<i32>,
) -> Result<(), Failure> {
    let schema_q = tenant.quoted_schema();
    let archived_as = archive.then(|| archive_name(tenant.schema()));
    let first = match &archived_as {
        Some(name) => format!("ALTER SCHEMA {schema_q} RENAME TO {};", quote_ident(name)),
        None => format!("DROP SCHEMA IF EXISTS {schema_q} CASCADE;"),
    };
    let sql = format!(
        "{first} {}",
        ctx.control.drop_sql(tenant, archived_as.as_deref())
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| Failure::from_pg(&e, registry_version))
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

/// `tenant adopt`: the schema must already be there.
async fn require_schema(client: &Client, tenant: &Tenant) -> Result<(), Failure> {
    let sql = format!(
        "SELECT count(*) FROM pg_namespace WHERE nspname = {}",
        quote_literal(tenant.schema())
    );
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(|e| Failure::from_pg(&e, None))?;
    let found = messages
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0).is_some_and(|v| v != "0")));
    if found {
        Ok(())
    } else {
        Err(Failure::new(
            FailureKind::SchemaMissing,
            format!("schema {} does not exist", tenant.schema()),
            None,
        ))
    }
}

/// refinery's run: verify history against the files, apply (or, for a fake target, record)
/// what is pending. Returns (before, after, applied count).
pub async fn forward(
    tx: &mut SchemaTx<'_>,
    set: &MigrationSet,
    table: &str,
    target: Target,
    registry_version: Option<i32>,
) -> Result<(Option<i32>, Option<i32>, usize), Failure> {
    let report = AsyncMigrate::migrate(tx, set.refinery(), true, true, true, target, table).await;
    let history = tx.history.take();
    let before = history
        .as_ref()
        .map(|h| h.last().map(Migration::version))
        .unwrap_or(registry_version);
    let report = report.map_err(|e| Failure::from_refinery(&e, tx.failed.take(), set, before))?;
    let done: Vec<i32> = match target {
        // refinery's fake run records versions without reporting them.
        Target::FakeVersion(v) => set
            .files()
            .iter()
            .map(|f| f.version)
            .filter(|x| *x <= v && before.is_none_or(|b| *x > b))
            .collect(),
        _ => report
            .applied_migrations()
            .iter()
            .map(Migration::version)
            .collect(),
    };
    let after = done.last().copied().or(before);
    Ok((before, after, done.len()))
}

/// Rollback: the down scripts of every applied version above `to`, newest first, each with
/// the removal of its history row, all in this one transaction.
async fn backward(
    tx: &mut SchemaTx<'_>,
    set: &MigrationSet,
    table: &str,
    to: i32,
    registry_version: Option<i32>,
) -> Result<(Option<i32>, Option<i32>, usize), Failure> {
    let probe = format!("SELECT to_regclass({})::text", quote_literal(table));
    let has_history = tx
        .client
        .simple_query(&probe)
        .await
        .map_err(|e| Failure::from_pg(&e, registry_version))?
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0).is_some()));
    let history = if has_history {
        tx.read_history(table)
            .await
            .map_err(|e| Failure::from_tx(&e, registry_version))?
    } else {
        Vec::new()
    };
    let before = history.last().map(Migration::version);
    let by_version: std::collections::HashMap<i32, &Migration> =
        set.refinery().iter().map(|m| (m.version(), m)).collect();
    for applied in &history {
        match by_version.get(&applied.version()) {
            None => {
                return Err(Failure::new(
                    FailureKind::Drift,
                    drift_no_file(applied, set),
                    before,
                ))
            }
            Some(file)
                if file.checksum() != applied.checksum() || file.name() != applied.name() =>
            {
                return Err(Failure::new(
                    FailureKind::Drift,
                    drift_edited(applied, file),
                    before,
                ))
            }
            Some(_) => {}
        }
    }
    let mut queries = Vec::new();
    let mut count = 0;
    for applied in history.iter().rev().filter(|m| m.version() > to) {
        let file = set.get(applied.version()).expect("checked above");
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
        queries.push(down.clone());
        queries.push(format!(
            "DELETE FROM {table} WHERE version = {}",
            file.version
        ));
        count += 1;
    }
    if !queries.is_empty() {
        let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
        if let Err(e) = tx.run_batch(&refs).await {
            let mut f = Failure::from_tx(&e, before);
            f.blame(
                tx.failed.take(),
                set.files().iter().filter_map(|m| {
                    m.down
                        .as_ref()
                        .map(|(_, sql)| (format!("{}.down", m.label()), sql.as_str()))
                }),
            );
            return Err(f);
        }
    }
    let after = history
        .iter()
        .map(Migration::version)
        .filter(|v| *v <= to)
        .max();
    Ok((before, after, count))
}

/// Quoted `"schema".refinery_schema_history`.
pub fn history_table(tenant: &Tenant) -> String {
    format!("{}.{HISTORY_TABLE}", quote_ident(tenant.schema()))
}
