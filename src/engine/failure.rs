//! Why a schema did not commit, in words an operator can act on: the kind of failure, the
//! migration and line to blame, PostgreSQL's own message, the version the schema is still at,
//! and the next step.

use std::fmt;

use tokio_postgres::error::SqlState;

use crate::control::{FailureRecord, FailureRow, SQLSTATE_DROPPED, SQLSTATE_FENCED};
use crate::pgerror::describe;

/// How the advice speaks of the failed tenant's data; a summary of several tenants puts it
/// in the plural (see [`plural_advice`]).
pub const THIS_TENANTS_DATA: &str = "this tenant's data";

/// `advice` about several tenants at once.
pub fn plural_advice(advice: &str) -> String {
    advice.replace(THIS_TENANTS_DATA, "these tenants' data")
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
    /// Cancelled after SIGINT/SIGTERM when the grace period ran out, or stopped before its
    /// next attempt.
    Interrupted,
    /// The run was taken over by another tenantctl: this process may commit nothing more.
    Fenced,
    /// The tenant was dropped while the run was going on.
    Dropped,
    /// `tenant import`/`clone`: the archive does not fit the schema the migrations make,
    /// or its rows are not what its manifest says.
    Archive,
    /// `query`: the tenant's rows have other columns than the first tenant's (a tenant at
    /// another version): left out, not printed under the wrong names.
    ColumnsDiffer,
    Other,
}

impl FailureKind {
    /// Its name in the ledger and in `--json` (docs/json.md lists them).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Migration => "migration",
            FailureKind::AlreadyExists => "already_exists",
            FailureKind::SchemaExists => "schema_exists",
            FailureKind::SchemaMissing => "schema_missing",
            FailureKind::Drift => "drift",
            FailureKind::LockTimeout => "lock_timeout",
            FailureKind::StatementTimeout => "statement_timeout",
            FailureKind::Connection => "connection",
            FailureKind::Interrupted => "interrupted",
            FailureKind::Fenced => "fenced",
            FailureKind::Dropped => "dropped",
            FailureKind::Archive => "archive",
            FailureKind::ColumnsDiffer => "columns_differ",
            FailureKind::Other => "other",
        }
    }

    /// Worth another attempt after a pause: the cause is outside the migration.
    pub fn is_transient(self) -> bool {
        match self {
            FailureKind::LockTimeout | FailureKind::Connection => true,
            FailureKind::Migration
            | FailureKind::AlreadyExists
            | FailureKind::SchemaExists
            | FailureKind::SchemaMissing
            | FailureKind::Drift
            | FailureKind::StatementTimeout
            | FailureKind::Interrupted
            | FailureKind::Fenced
            | FailureKind::Dropped
            | FailureKind::Archive
            | FailureKind::ColumnsDiffer
            | FailureKind::Other => false,
        }
    }
}

/// A schema that did not commit. Its transaction was rolled back (or never reached COMMIT).
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    /// `V7__add_invoices` when a migration is to blame.
    pub migration: Option<String>,
    /// That migration's version, when it is a forward one (its file may be applied elsewhere).
    pub migration_version: Option<i32>,
    /// PostgreSQL's SQLSTATE, when the server raised the error.
    pub sqlstate: Option<Box<str>>,
    /// How many tenants already have `migration_version` applied (set after the run): then
    /// editing the file is the wrong fix.
    pub applied_elsewhere: Option<u32>,
    /// Line within that migration file, when PostgreSQL reported a position.
    pub line: Option<u32>,
    /// The failing statement cannot succeed on a tenant that has rows, whatever their data
    /// (a NOT NULL column added without a default): set after the run, for the advice.
    pub fails_on_rows: bool,
    /// PostgreSQL's own message, or what was wrong.
    pub message: String,
    /// The version the schema is still at.
    pub still_at: Option<i32>,
    /// Whether the connection is unusable and must not go back to the pool.
    pub broken_connection: bool,
    /// How many times the schema was tried (retries after lock timeouts and lost connections).
    pub attempts: u32,
    /// It failed in a no-transaction migration: what that file's earlier statements did
    /// stays done (no transaction to roll back).
    pub outside_transaction: bool,
}

impl Failure {
    /// A failure not (yet) attributed to a migration; one attempt so far.
    pub fn new(kind: FailureKind, message: String, still_at: Option<i32>) -> Failure {
        Failure {
            kind,
            migration: None,
            migration_version: None,
            sqlstate: None,
            applied_elsewhere: None,
            line: None,
            fails_on_rows: false,
            message,
            still_at,
            broken_connection: false,
            attempts: 1,
            outside_transaction: false,
        }
    }

    /// A command's error as a failure: the driver's classification when the database said
    /// it, else `other` with the whole cause chain.
    pub fn from_error(e: &anyhow::Error, still_at: Option<i32>) -> Failure {
        match e
            .chain()
            .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        {
            Some(pg) => {
                let mut f = Failure::from_pg(pg, still_at);
                f.message = format!("{e:#}");
                f
            }
            None => Failure::new(FailureKind::Other, format!("{e:#}"), still_at),
        }
    }

    /// Classifies a driver error into a failure that tells the operator what happened.
    pub fn from_pg(e: &tokio_postgres::Error, still_at: Option<i32>) -> Failure {
        let kind = match e.code() {
            Some(c) if c.code() == SQLSTATE_FENCED => FailureKind::Fenced,
            Some(c) if c.code() == SQLSTATE_DROPPED => FailureKind::Dropped,
            // The session guard: what the migration did to its session.
            Some(c) if c.code() == super::session::SQLSTATE_SESSION => FailureKind::Migration,
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
        f.sqlstate = e.code().map(|c| c.code().into());
        f.broken_connection = e.is_closed() || kind == FailureKind::Connection;
        f
    }

    /// The ledger's record of this failure for tenant `id`.
    pub fn record<'a>(&'a self, id: &'a str) -> FailureRecord<'a> {
        FailureRecord {
            skipped: false,
            id,
            kind: self.kind.as_str(),
            sqlstate: self.sqlstate.as_deref(),
            migration: self.migration.as_deref(),
            line: self.line.map(|l| l as i32),
            message: &self.message,
            error: self.to_string(),
            attempts: self.attempts as i32,
            drift: (self.kind == FailureKind::Drift).then_some(self.message.as_str()),
        }
    }

    /// As `--json` prints it (and the ledger holds it).
    pub fn row(&self) -> FailureRow {
        FailureRow {
            kind: self.kind.as_str().into(),
            sqlstate: self.sqlstate.as_deref().map(str::to_string),
            migration: self.migration.clone(),
            line: self.line.map(|l| l as i32),
            message: self.message.clone(),
            error: self.to_string(),
            version: self.still_at,
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

    /// The failure as shown the moment it happens. A failed migration's advice waits for the
    /// summary: whether the file is already applied elsewhere is known only at the end.
    pub fn live(&self) -> String {
        match self.kind {
            FailureKind::Migration => {
                format!(
                    "{} — {}, {}",
                    self.headline(),
                    self.undone(),
                    self.version_text()
                )
            }
            _ => self.to_string(),
        }
    }

    /// What became of the failed work: rolled back, or (outside a transaction) left as far as
    /// it got.
    fn undone(&self) -> &'static str {
        match self.outside_transaction {
            false => "rolled back",
            true => "not recorded (it ran outside a transaction: the file's statements before the failing one stay done, and a re-run runs the whole file again)",
        }
    }

    /// What state was left behind and what to do next.
    pub fn aftermath(&self) -> String {
        let at = self.version_text();
        match self.kind {
            FailureKind::Migration
                if self.sqlstate.as_deref() == Some(super::session::SQLSTATE_SESSION) =>
            {
                format!(
                    "{}, {at}. The session guard refused what the migration did to its session (its hint says what to change, in the migration or in what it calls); nothing of it reached another tenant",
                    self.undone()
                )
            }
            FailureKind::Migration => {
                let v = self.migration_version.unwrap_or_default();
                match (self.applied_elsewhere, &self.migration) {
                    (Some(n), Some(m)) if n > 0 && self.fails_on_rows => format!(
                        "{}, {at}. {m} adds a NOT NULL column without a default: it applied on the {n} other tenant(s) whose table was empty, and fails on every tenant whose table has rows, whatever the data. Only adding a DEFAULT to it would leave the {n} without one (their schemas would differ). The way out keeps one schema: in {m}, add the column with `NOT NULL DEFAULT <value>` then `ALTER COLUMN ... DROP DEFAULT` (the same result where it applied, and it works where there are rows), record that edit for the {n} with `tenantctl repair --accept {v}`, and re-run; a default meant to stay goes in a new migration",
                        self.undone(),
                    ),
                    (Some(n), Some(m)) if n > 0 => format!(
                        "{}, {at}. {m} is already applied on {n} other tenant(s): do not edit it (they would drift). Fix what {THIS_TENANTS_DATA} needs and re-run, or put the fix in a new migration; if you edited the file on purpose (a comment, an equivalent fix), `tenantctl repair --accept {v}` records its new checksum",
                        self.undone(),
                    ),
                    (_, Some(m)) if self.fails_on_rows => format!(
                        "{}, {at}; {m} adds a NOT NULL column without a default, which fails wherever the table has rows: give the column a DEFAULT (no tenant has {m} yet, so editing it is safe) and re-run",
                        self.undone()
                    ),
                    _ => format!(
                        "{}, {at}; no tenant has it applied, so fix the migration and re-run",
                        self.undone()
                    ),
                }
            }
            FailureKind::AlreadyExists => {
                "nothing changed; pass --if-not-exists to skip existing tenants".into()
            }
            FailureKind::SchemaExists => "nothing changed; the schema exists but is not a registered tenant: adopt it with `tenantctl tenant adopt`, drop or rename it, or pick another id".into(),
            FailureKind::SchemaMissing => "nothing changed; create new tenants with `tenantctl tenant create`".into(),
            FailureKind::Drift => format!("not touched, {at}"),
            FailureKind::LockTimeout => format!(
                "rolled back, {at}; another session holds a lock in this schema: re-run when it is released, or raise [run] lock_timeout"
            ),
            FailureKind::StatementTimeout if self.outside_transaction => format!(
                "{}, {at}; a statement ran past [run] step_statement_timeout: raise it or make the migration cheaper",
                self.undone()
            ),
            FailureKind::StatementTimeout => format!(
                "rolled back, {at}; a statement ran past [run] statement_timeout: raise it or make the migration cheaper"
            ),
            FailureKind::Connection => format!(
                "the transaction did not commit, so PostgreSQL rolled it back ({at}); re-run once the server is reachable"
            ),
            FailureKind::Interrupted => format!("interrupted and rolled back, {at}; re-run to continue"),
            FailureKind::Fenced => format!(
                "not committed, {at}: this process lost the run to another tenantctl, which carries on with this schema"
            ),
            FailureKind::Dropped => "not touched: the tenant was dropped (or the pooled schema taken) while the run was going on".into(),
            FailureKind::Archive => "rolled back: nothing was imported".into(),
            FailureKind::ColumnsDiffer => format!("its rows are left out ({at}): name the columns in the query, or bring the tenants to one version (tenantctl migrate)"),
            FailureKind::Other => format!("rolled back, {at}; re-run after fixing the cause"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — {}", self.headline(), self.aftermath())
    }
}
