//! One schema, one transaction, exactly once. refinery's own checks, SQL and history inserts
//! run through [`SchemaTx`], a small implementation of refinery's driver traits over a
//! connection on which *we* opened the transaction. In that one transaction: a per-schema
//! advisory lock, `SET LOCAL` search_path and timeouts, refinery's work, the registry's
//! version and the ledger row. Commit = done; anything else = nothing happened.

use std::fmt;
use std::time::Duration;

use futures::{pin_mut, StreamExt};
use refinery::error::Kind;
use refinery::{AsyncMigrate, Migration, Target};
use refinery_core::traits::r#async::{AsyncQuery, AsyncTransaction};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::control::{Control, LOCK_NAMESPACE};
use crate::db::describe;
use crate::migrations::MigrationSet;
use crate::tenant::{quote_ident, quote_literal, role_name, Tenant};

/// refinery's history table, kept inside each tenant schema.
pub const HISTORY_TABLE: &str = "refinery_schema_history";

/// Column name of the marker rows that tell which statement of a batch completed.
const STEP_MARKER: &str = "tenantctl_step_done";

/// What every schema transaction of a run shares.
pub struct ApplyCtx<'a> {
    pub migrations: &'a MigrationSet,
    pub control: &'a Control,
    pub run_id: i64,
    pub target: Option<i32>,
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
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

/// A schema that committed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub before: Option<i32>,
    pub after: Option<i32>,
    pub count: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A migration's SQL failed.
    Migration,
    /// `tenant create` of an id that is already registered.
    AlreadyExists,
    /// `tenant create` where a schema of that name exists but is not registered.
    SchemaExists,
    /// `tenant adopt` of a schema that does not exist.
    SchemaMissing,
    /// The schema's history disagrees with the files.
    Drift,
    /// lock_timeout expired: something else holds a lock in this schema.
    LockTimeout,
    /// statement_timeout expired.
    StatementTimeout,
    /// The connection broke or the server went away.
    Connection,
    /// Cancelled after SIGINT/SIGTERM when the grace period ran out.
    Interrupted,
    Other,
}

impl FailureKind {
    /// Worth another attempt after a pause: the cause is outside the migration.
    pub fn is_transient(self) -> bool {
        matches!(self, FailureKind::LockTimeout | FailureKind::Connection)
    }
}

/// A schema that did not commit. Its transaction was rolled back (or never reached COMMIT).
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    /// `V7__add_invoices` when a migration is to blame.
    pub migration: Option<String>,
    /// Line within that migration file, when PostgreSQL reported a position.
    pub line: Option<usize>,
    /// PostgreSQL's own message, or what was wrong.
    pub message: String,
    /// The version the schema is still at.
    pub still_at: Option<i32>,
    /// Whether the connection is unusable and must not go back to the pool.
    pub broken_connection: bool,
    /// How many times the schema was tried (retries after lock timeouts and lost connections).
    pub attempts: u32,
}

impl Failure {
    /// A failure not (yet) attributed to a migration; one attempt so far.
    pub fn new(kind: FailureKind, message: String, still_at: Option<i32>) -> Failure {
        Failure {
            kind,
            migration: None,
            line: None,
            message,
            still_at,
            broken_connection: false,
            attempts: 1,
        }
    }

    /// The part of the message that is the same for every tenant hit by the same problem.
    pub fn headline(&self) -> String {
        let what = match (&self.migration, self.line) {
            (Some(m), Some(l)) => format!("{m} failed at line {l}: "),
            (Some(m), None) => format!("{m} failed: "),
            (None, _) => String::new(),
        };
        let tries = if self.attempts > 1 {
            format!(" (after {} attempts)", self.attempts)
        } else {
            String::new()
        };
        format!("{what}{}{tries}", self.message)
    }

    fn version_text(&self) -> String {
        match self.still_at {
            Some(v) => format!("still at V{v}"),
            None => "no migration applied".into(),
        }
    }

    /// What state was left behind and what to do next.
    pub fn aftermath(&self) -> String {
        let at = self.version_text();
        match self.kind {
            FailureKind::Migration => format!("rolled back, {at}; fix the migration and re-run"),
            FailureKind::AlreadyExists => {
                "already registered, nothing changed; pass --if-not-exists to skip existing tenants".into()
            }
            FailureKind::SchemaExists => "nothing changed; the schema exists but is not a registered tenant: adopt it with `tenantctl tenant adopt`, drop or rename it, or pick another id".into(),
            FailureKind::SchemaMissing => "nothing changed; create new tenants with `tenantctl tenant create`".into(),
            FailureKind::Drift => format!("not touched, {at}"),
            FailureKind::LockTimeout => format!(
                "rolled back, {at}; another session holds a lock in this schema: re-run when it is released, or raise [run] lock_timeout"
            ),
            FailureKind::StatementTimeout => format!(
                "rolled back, {at}; a statement ran past [run] statement_timeout: raise it or make the migration cheaper"
            ),
            FailureKind::Connection => format!(
                "the transaction did not commit, so PostgreSQL rolled it back ({at}); re-run once the server is reachable"
            ),
            FailureKind::Interrupted => format!("interrupted and rolled back, {at}; re-run to continue"),
            FailureKind::Other => format!("rolled back, {at}; re-run after fixing the cause"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — {}", self.headline(), self.aftermath())
    }
}

/// The statement that failed inside a batch, and where.
#[derive(Debug, Clone)]
struct FailedStep {
    query: String,
    line: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error("{}", describe(.0))]
    Pg(tokio_postgres::Error),
    #[error("{0}")]
    History(String),
}

/// refinery's view of our open transaction.
struct SchemaTx<'a> {
    client: &'a Client,
    history: Option<Vec<Migration>>,
    failed: Option<FailedStep>,
}

impl SchemaTx<'_> {
    /// Runs statements as one simple-query batch (one round trip), with a marker row after
    /// each so that, on error, we know which statement failed and at which line.
    async fn run_batch(&mut self, queries: &[&str]) -> Result<usize, TxError> {
        let mut batch = String::new();
        let mut starts = Vec::with_capacity(queries.len());
        let mut chars = 0usize;
        for (i, q) in queries.iter().enumerate() {
            starts.push(chars);
            batch.push_str(q);
            let marker = format!("\n;\nSELECT {i} AS {STEP_MARKER};\n");
            chars += q.chars().count() + marker.chars().count();
            batch.push_str(&marker);
        }
        let mut done = 0usize;
        let outcome = match self.client.simple_query_raw(&batch).await {
            Ok(stream) => {
                pin_mut!(stream);
                let mut err = None;
                while let Some(msg) = stream.next().await {
                    match msg {
                        Ok(SimpleQueryMessage::Row(row))
                            if row.columns().first().map(|c| c.name()) == Some(STEP_MARKER) =>
                        {
                            done += 1;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                err.map_or(Ok(()), Err)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok(queries.len()),
            Err(e) => {
                if let Some(query) = queries.get(done) {
                    let line = match e.as_db_error().and_then(|d| d.position()) {
                        Some(ErrorPosition::Original(pos)) => {
                            let offset = (*pos as usize).saturating_sub(1);
                            offset.checked_sub(starts[done]).and_then(|rel| {
                                let mut it = query.chars();
                                let prefix: String = it.by_ref().take(rel).collect();
                                (prefix.chars().count() == rel && it.next().is_some())
                                    .then(|| prefix.matches('\n').count() + 1)
                            })
                        }
                        _ => None,
                    };
                    self.failed = Some(FailedStep {
                        query: (*query).to_string(),
                        line,
                    });
                }
                Err(TxError::Pg(e))
            }
        }
    }
}

impl AsyncTransaction for SchemaTx<'_> {
    type Error = TxError;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let queries: Vec<&str> = queries.collect();
        self.run_batch(&queries).await
    }
}

impl AsyncQuery<Vec<Migration>> for SchemaTx<'_> {
    async fn query(&mut self, query: &str) -> Result<Vec<Migration>, Self::Error> {
        let messages = self.client.simple_query(query).await.map_err(TxError::Pg)?;
        let mut applied = Vec::new();
        for msg in messages {
            let SimpleQueryMessage::Row(row) = msg else {
                continue;
            };
            let bad = |what: &str| {
                TxError::History(format!(
                    "{HISTORY_TABLE} has a row with an unreadable {what} ({:?}); repair the history table",
                    row.get(0)
                ))
            };
            let version: i32 = row
                .get(0)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("version"))?;
            let name = row.get(1).unwrap_or_default().to_string();
            let applied_on = row
                .get(2)
                .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
                .ok_or_else(|| bad("applied_on"))?;
            let checksum: u64 = row
                .get(3)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("checksum"))?;
            applied.push(Migration::applied(version, name, applied_on, checksum));
        }
        self.history = Some(applied.clone());
        Ok(applied)
    }
}

impl AsyncMigrate for SchemaTx<'_> {}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// Classifies a driver error into a failure that tells the operator what happened.
pub fn failure_from_pg(e: &tokio_postgres::Error, still_at: Option<i32>) -> Failure {
    let kind = match e.code() {
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => FailureKind::LockTimeout,
        Some(c) if *c == SqlState::QUERY_CANCELED => FailureKind::StatementTimeout,
        Some(c)
            if c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN =>
        {
            FailureKind::Connection
        }
        Some(_) => FailureKind::Other,
        None => FailureKind::Connection,
    };
    let mut f = Failure::new(kind, describe(e), still_at);
    f.broken_connection = e.is_closed() || kind == FailureKind::Connection;
    f
}

/// Applies pending migrations (or creates the tenant) in one transaction on `client`.
pub async fn apply_schema(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
) -> Result<Applied, Failure> {
    let result = run_transaction(client, ctx, tenant, mode, registry_version).await;
    if let Err(failure) = &result {
        // Anything but a COMMIT is a rollback; if even ROLLBACK cannot be sent, the
        // connection is dead and PostgreSQL discards the transaction with it.
        if !failure.broken_connection && client.batch_execute("ROLLBACK").await.is_err() {
            let mut f = failure.clone();
            f.broken_connection = true;
            return Err(f);
        }
    }
    result
}

async fn run_transaction(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
) -> Result<Applied, Failure> {
    let registers = matches!(mode, Mode::Create | Mode::Adopt { .. });
    begin(client, ctx, tenant, registers, registry_version).await?;
    let mut tx = SchemaTx {
        client,
        history: None,
        failed: None,
    };
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
        Mode::Rollback { to } => backward(&mut tx, ctx, &table, to, registry_version).await?,
        Mode::Drop { archive } => {
            drop_tenant(client, ctx, tenant, archive, registry_version).await?;
            (registry_version, None, 0)
        }
    };
    if let (Some(role), Mode::Create | Mode::Adopt { .. }) = (&role, mode) {
        // Tables that already existed (adopt) get the grants too; the history table never:
        // a tenant's role must not be able to rewrite what is applied.
        let q = quote_ident(role);
        let schema_q = tenant.quoted_schema();
        client
            .batch_execute(&format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema_q} TO {q}; \
                 GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema_q} TO {q}; \
                 REVOKE ALL ON {table} FROM {q}; \
                 UPDATE {tenants} SET role = {lit} WHERE id = {id}",
                tenants = ctx.control.table("tenants"),
                lit = quote_literal(role),
                id = quote_literal(tenant.id()),
            ))
            .await
            .map_err(|e| failure_from_pg(&e, None))?;
    }
    finish(client, ctx, tenant, before, after).await?;
    Ok(Applied {
        before,
        after,
        count,
    })
}

/// History of the shared migrations, kept in the shared schema under a name of our own (an
/// application may use refinery's default table name in `public` itself).
pub const SHARED_HISTORY_TABLE: &str = "tenantctl_shared_history";

/// Quoted `"shared".tenantctl_shared_history`.
pub fn shared_history_table(schema: &str) -> String {
    format!("{}.{SHARED_HISTORY_TABLE}", quote_ident(schema))
}

/// Applies the pending shared migrations of one cluster into `schema`, in one transaction
/// under the same per-schema advisory lock as tenants: all of them or none, exactly once
/// even when two runners race. The schema is created only when missing (`CREATE SCHEMA IF
/// NOT EXISTS` would need CREATE on the database even when it exists, which a deploy role
/// that only migrates may lack).
pub async fn apply_shared(
    client: &Client,
    set: &MigrationSet,
    schema: &str,
    lock_timeout: Duration,
    statement_timeout: Option<Duration>,
) -> Result<Applied, Failure> {
    let result: Result<Applied, Failure> = async {
        let preamble = format!(
            "BEGIN; SET LOCAL lock_timeout = {lock}; SET LOCAL statement_timeout = {st}; \
             SELECT pg_advisory_xact_lock({LOCK_NAMESPACE}, hashtext({lit})); \
             SET LOCAL client_min_messages = warning; \
             DO $tenantctl$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {lit}) \
                 THEN CREATE SCHEMA {q}; END IF; END $tenantctl$; \
             SET LOCAL search_path TO {q};",
            lock = millis(lock_timeout),
            st = statement_timeout.map_or(0, millis),
            lit = quote_literal(schema),
            q = quote_ident(schema),
        );
        client
            .batch_execute(&preamble)
            .await
            .map_err(|e| failure_from_pg(&e, None))?;
        let mut tx = SchemaTx {
            client,
            history: None,
            failed: None,
        };
        let table = shared_history_table(schema);
        let (before, after, count) = forward(&mut tx, set, &table, Target::Latest, None).await?;
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| failure_from_pg(&e, before))?;
        Ok(Applied {
            before,
            after,
            count,
        })
    }
    .await;
    if let Err(f) = &result {
        if !f.broken_connection {
            let _ = client.batch_execute("ROLLBACK").await;
        }
    }
    result
}

/// The newest shared migration applied in `schema` (None when none is, or no history yet).
pub async fn shared_version(client: &Client, schema: &str) -> anyhow::Result<Option<i32>> {
    let table = shared_history_table(schema);
    let read = |e: tokio_postgres::Error| {
        anyhow::anyhow!(
            "reading the shared migrations' history {table}: {}",
            describe(&e)
        )
    };
    let exists: Option<String> = client
        .query_one(
            &format!("SELECT to_regclass({})::text", quote_literal(&table)),
            &[],
        )
        .await
        .map_err(read)?
        .get(0);
    if exists.is_none() {
        return Ok(None);
    }
    Ok(client
        .query_one(&format!("SELECT max(version) FROM {table}"), &[])
        .await
        .map_err(read)?
        .get(0))
}

/// BEGIN, timeouts, the schema's advisory lock, `search_path` for this transaction only, and
/// for commands that register a tenant, its registry row (refused if it is already there).
async fn begin(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    register: bool,
    registry_version: Option<i32>,
) -> Result<(), Failure> {
    let schema_lit = quote_literal(tenant.schema());
    let statement_timeout = ctx.statement_timeout.map_or(0, millis);
    let mut preamble = format!(
        "BEGIN; SET LOCAL lock_timeout = {lock}; SET LOCAL statement_timeout = {statement_timeout}; \
         SELECT pg_advisory_xact_lock({LOCK_NAMESPACE}, hashtext({schema_lit})); \
         SET LOCAL search_path TO {schema_q}; SET LOCAL client_min_messages = warning;",
        lock = millis(ctx.lock_timeout),
        schema_q = tenant.quoted_schema(),
    );
    if register {
        preamble.push_str(&format!(
            " INSERT INTO {t} AS t (id, schema_name) VALUES ({}, {schema_lit}) \
              ON CONFLICT (id) DO UPDATE SET state = 'active', version = NULL, drift = NULL, archived_as = NULL, \
                  role = NULL, created_at = now(), updated_at = now() WHERE t.state = 'dropped';",
            quote_literal(tenant.id()),
            t = ctx.control.table("tenants"),
        ));
    }
    let messages = client
        .simple_query(&preamble)
        .await
        .map_err(|e| failure_from_pg(&e, registry_version))?;
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

async fn create_schema(client: &Client, tenant: &Tenant) -> Result<(), Failure> {
    client
        .batch_execute(&format!("CREATE SCHEMA {}", tenant.quoted_schema()))
        .await
        .map_err(|e| {
            let mut f = failure_from_pg(&e, None);
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
            let mut f = failure_from_pg(&e, None);
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

/// `tenant drop`: the schema goes (or is renamed out of the way), then the role.
async fn drop_tenant(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    archive: bool,
    registry_version: Option<i32>,
) -> Result<(), Failure> {
    let schema_q = tenant.quoted_schema();
    let mut sql = String::new();
    let archived_as = archive.then(|| archive_name(tenant.schema()));
    match &archived_as {
        Some(name) => sql.push_str(&format!(
            "ALTER SCHEMA {schema_q} RENAME TO {};",
            quote_ident(name)
        )),
        None => sql.push_str(&format!("DROP SCHEMA IF EXISTS {schema_q} CASCADE;")),
    }
    // The role recorded when the tenant was created (the template may have changed since).
    // DROP OWNED BY revokes its grants and default privileges in this database.
    sql.push_str(&format!(
        " DO $tenantctl$ DECLARE r text; BEGIN \
             SELECT role INTO r FROM {} WHERE id = {}; \
             IF r IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN \
                 EXECUTE format('DROP OWNED BY %I', r); EXECUTE format('DROP ROLE %I', r); \
             END IF; END $tenantctl$;",
        ctx.control.table("tenants"),
        quote_literal(tenant.id()),
    ));
    sql.push_str(&format!(
        " UPDATE {} SET state = 'dropped', archived_as = {}, role = NULL WHERE id = {};",
        ctx.control.table("tenants"),
        archived_as.as_deref().map_or("NULL".into(), quote_literal),
        quote_literal(tenant.id())
    ));
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| failure_from_pg(&e, registry_version))
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
        .map_err(|e| failure_from_pg(&e, None))?;
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
async fn forward(
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
    let report = report.map_err(|e| failure_from_refinery(&e, tx.failed.take(), set, before))?;
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
    ctx: &ApplyCtx<'_>,
    table: &str,
    to: i32,
    registry_version: Option<i32>,
) -> Result<(Option<i32>, Option<i32>, usize), Failure> {
    let set = ctx.migrations;
    let probe = format!("SELECT to_regclass({})::text", quote_literal(table));
    let has_history = tx
        .client
        .simple_query(&probe)
        .await
        .map_err(|e| failure_from_pg(&e, registry_version))?
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0).is_some()));
    let history = if has_history {
        let query =
            format!("SELECT version, name, applied_on, checksum FROM {table} ORDER BY version ASC");
        tx.query(&query).await.map_err(|e| match e {
            TxError::Pg(pg) => failure_from_pg(&pg, registry_version),
            TxError::History(msg) => Failure::new(FailureKind::Drift, msg, registry_version),
        })?
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
            let TxError::Pg(pg) = &e else {
                unreachable!("run_batch only fails with PostgreSQL errors")
            };
            let mut f = failure_from_pg(pg, before);
            if let Some(step) = tx.failed.take() {
                if let Some(file) = set
                    .files()
                    .iter()
                    .find(|m| m.down.as_ref().is_some_and(|(_, sql)| *sql == step.query))
                {
                    f.migration = Some(format!("{}.down", file.label()));
                    f.line = step.line;
                    if f.kind == FailureKind::Other {
                        f.kind = FailureKind::Migration;
                    }
                }
            }
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

/// The registry's version, the ledger row, COMMIT: one round trip.
async fn finish(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    before: Option<i32>,
    after: Option<i32>,
) -> Result<(), Failure> {
    let id_lit = quote_literal(tenant.id());
    let version_sql = after.map_or("NULL".to_string(), |v| v.to_string());
    let finish = format!(
        "UPDATE {tenants} SET version = {version_sql}, drift = NULL, updated_at = now() WHERE id = {id_lit}; \
         UPDATE {ledger} SET state = 'succeeded', version_after = {version_sql}, attempts = attempts + 1, \
             started_at = now(), finished_at = clock_timestamp(), error = NULL, failed_migration = NULL \
         WHERE run_id = {run} AND tenant_id = {id_lit}; COMMIT;",
        tenants = ctx.control.table("tenants"),
        ledger = ctx.control.table("run_schemas"),
        run = ctx.run_id,
    );
    client.batch_execute(&finish).await.map_err(|e| {
        let mut f = failure_from_pg(&e, before);
        if f.kind == FailureKind::Connection {
            f.message = format!(
                "{}; the connection broke while committing, so the outcome is not known: `tenantctl status` shows it and a re-run finishes the job without applying anything twice",
                f.message
            );
        }
        f
    })
}

fn drift_edited(applied: &Migration, file: &Migration) -> String {
    format!(
        "drift: {applied} was changed after it was applied here (applied checksum {}, file {file} has {}); restore the file as it was applied, and put the change in a new migration",
        applied.checksum(),
        file.checksum()
    )
}

fn drift_no_file(applied: &Migration, set: &MigrationSet) -> String {
    match set.latest() {
        Some(latest) if applied.version() > latest => format!(
            "drift: this schema is ahead of the files: {applied} is applied here, but the newest file is {}; use the checkout that has it, or roll back with the files that still have its .down.sql",
            set.label(latest)
        ),
        _ => format!(
            "drift: {applied} is applied here but its file is missing from {}; restore the file",
            set.dir.display()
        ),
    }
}

fn failure_from_refinery(
    e: &refinery::Error,
    failed: Option<FailedStep>,
    set: &MigrationSet,
    before: Option<i32>,
) -> Failure {
    match e.kind() {
        Kind::Connection(_, source) => {
            let mut f = match source.downcast_ref::<TxError>() {
                Some(TxError::Pg(pg)) => failure_from_pg(pg, before),
                Some(TxError::History(msg)) => {
                    Failure::new(FailureKind::Drift, msg.clone(), before)
                }
                None => Failure::new(FailureKind::Other, e.to_string(), before),
            };
            if let Some(step) = failed {
                if let Some(file) = set.files().iter().find(|m| m.sql == step.query) {
                    f.migration = Some(file.label());
                    f.line = step.line;
                    if f.kind == FailureKind::Other {
                        f.kind = FailureKind::Migration;
                    }
                }
            }
            f
        }
        Kind::DivergentVersion(applied, file) => {
            Failure::new(FailureKind::Drift, drift_edited(applied, file), before)
        }
        Kind::MissingVersion(m) => {
            let msg = if set.get(m.version()).is_some() {
                format!(
                    "drift: {m} is on disk but was never applied here, and this schema is already past it (at V{}); give that migration a version above the latest",
                    before.unwrap_or_default()
                )
            } else {
                drift_no_file(m, set)
            };
            Failure::new(FailureKind::Drift, msg, before)
        }
        _ => Failure::new(FailureKind::Other, e.to_string(), before),
    }
}

/// Quoted `"schema".refinery_schema_history`.
pub fn history_table(tenant: &Tenant) -> String {
    format!("{}.{HISTORY_TABLE}", quote_ident(tenant.schema()))
}
