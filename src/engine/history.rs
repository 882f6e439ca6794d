//! A schema's history table (`refinery_schema_history`, in refinery's own format, so that
//! refinery's tools read what tenantctl writes and the other way round) and what it says
//! against the files: drift, and what is pending. tenantctl reads and writes the table
//! itself, inside the schema's transaction, so that the migrations can be sent as they are
//! on disk, one message each, without refinery's copies of every file per schema.

use refinery::Migration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_postgres::SimpleQueryMessage;

use crate::control::Control;
use crate::engine::failure::{Failure, FailureKind};
use crate::migrations::{MigrationFile, MigrationSet};
use crate::tenant::{quote_ident, quote_literal, Tenant};

/// refinery's history table, kept inside each tenant schema.
pub use crate::control::HISTORY_TABLE;

/// Quoted `"schema".refinery_schema_history`.
pub fn table(tenant: &Tenant) -> String {
    format!("{}.{HISTORY_TABLE}", quote_ident(tenant.schema()))
}

/// The table as refinery 0.10 creates it (`table` is quoted and validated).
pub fn ensure_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table}( version int4 PRIMARY KEY, name VARCHAR(255), applied_on VARCHAR(255), checksum VARCHAR(255))"
    )
}

/// The applied migrations, oldest first.
pub fn read_sql(table: &str) -> String {
    format!("SELECT version, name, applied_on, checksum FROM {table} ORDER BY version ASC")
}

/// SQLSTATE of [`guard_sql`]: the history is not the one expected.
pub const SQLSTATE_NOT_AS_EXPECTED: &str = "TNF05";

/// A statement that fails (SQLSTATE [`SQLSTATE_NOT_AS_EXPECTED`]) unless the table holds
/// exactly `expected`, oldest first, by version, name and checksum: what [`check`] would
/// compare, in one SHA-256 of the rows as text (so the statement's size does not grow with
/// the history).
pub fn guard_sql(table: &str, expected: &[&MigrationFile]) -> String {
    use sha2::{Digest, Sha256};
    let rows: Vec<String> = expected
        .iter()
        .map(|f| format!("{}:{}:{}", f.version, f.name, f.migration.checksum()))
        .collect();
    let digest: String = Sha256::digest(rows.join(",").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "DO $tenantctl$ BEGIN IF (SELECT encode(sha256(convert_to(coalesce(string_agg(\
             version::text || ':' || coalesce(name, '') || ':' || coalesce(checksum, ''), ',' ORDER BY version), ''), 'UTF8')), 'hex') \
             FROM {table}) IS DISTINCT FROM '{digest}' THEN \
             RAISE EXCEPTION '{HISTORY_TABLE} is not what the registry''s version says' USING ERRCODE = '{SQLSTATE_NOT_AS_EXPECTED}'; \
         END IF; END $tenantctl$"
    )
}

/// The rows of [`read_sql`] as refinery migrations; a row that cannot be read is drift.
pub fn parse(
    messages: &[SimpleQueryMessage],
    still_at: Option<i32>,
) -> Result<Vec<Migration>, Failure> {
    let mut applied = Vec::new();
    for msg in messages {
        let SimpleQueryMessage::Row(row) = msg else {
            continue;
        };
        let bad = |what: &str| {
            Failure::new(
                FailureKind::Drift,
                format!(
                    "{HISTORY_TABLE} has a row with an unreadable {what} ({:?}); repair the history table",
                    row.get(0)
                ),
                still_at,
            )
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
    Ok(applied)
}

/// Checks the history against the files, as refinery does before it applies anything:
/// every applied migration still has its file, unchanged; and (with `gaps`) no file below
/// the schema's version was left unapplied.
pub fn check(applied: &[Migration], set: &MigrationSet, gaps: bool) -> Result<(), Failure> {
    let before = applied.last().map(Migration::version);
    for app in applied {
        match set.get(app.version()) {
            None => {
                return Err(Failure::new(
                    FailureKind::Drift,
                    drift_no_file(app, set),
                    before,
                ))
            }
            Some(file) if file.migration != *app => {
                return Err(Failure::new(
                    FailureKind::Drift,
                    drift_edited(app, &file.migration),
                    before,
                ))
            }
            Some(_) => {}
        }
    }
    if let (true, Some(current)) = (gaps, before) {
        if let Some(skipped) = set
            .files()
            .iter()
            .find(|f| f.version <= current && !applied.iter().any(|a| a.version() == f.version))
        {
            return Err(Failure::new(
                FailureKind::Drift,
                format!(
                    "drift: {} is on disk but was never applied here, and this schema is already past it (at V{current}); give that migration a version above the latest",
                    skipped.migration
                ),
                before,
            ));
        }
    }
    Ok(())
}

/// The files a forward run applies: above the schema's version, up to `target`.
pub fn pending<'s>(
    applied: &[Migration],
    set: &'s MigrationSet,
    target: Option<i32>,
) -> Vec<&'s MigrationFile> {
    let before = applied.last().map(Migration::version);
    set.files()
        .iter()
        .filter(|f| before.is_none_or(|b| f.version > b) && target.is_none_or(|t| f.version <= t))
        .collect()
}

/// Records `files` as applied now.
pub fn insert_sql(table: &str, files: &[&MigrationFile]) -> String {
    if files.is_empty() {
        return String::new();
    }
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let rows: Vec<String> = files
        .iter()
        .map(|f| {
            format!(
                "({}, {}, {}, {})",
                f.version,
                quote_literal(&f.name),
                quote_literal(&now),
                quote_literal(&f.migration.checksum().to_string())
            )
        })
        .collect();
    format!(
        "INSERT INTO {table} (version, name, applied_on, checksum) VALUES {};",
        rows.join(", ")
    )
}

/// Records `files` as applied now in a tenant's (or pooled schema's) history, and counts them
/// in the fleet's record of what is applied (see [`crate::control::FileCheck`]).
pub fn record_sql(control: &Control, table: &str, files: &[&MigrationFile]) -> String {
    if files.is_empty() {
        return String::new();
    }
    let rows: Vec<String> = files
        .iter()
        .map(|f| {
            format!(
                "({}, {}, 1)",
                f.version,
                quote_literal(&f.migration.checksum().to_string())
            )
        })
        .collect();
    format!(
        "{} {}",
        insert_sql(table, files),
        control.count_applied_sql("", &format!("VALUES {}", rows.join(", ")))
    )
}

/// Records `file` as it is now (name and checksum) for its applied version: `repair
/// --accept`; the fleet's record moves from the old checksum to the new one.
pub fn accept_sql(control: &Control, table: &str, file: &MigrationFile) -> String {
    let sum = quote_literal(&file.migration.checksum().to_string());
    let with = format!(
        "WITH old AS (SELECT version, coalesce(checksum, '') AS checksum FROM {table} WHERE version = {v}), \
              u AS (UPDATE {table} SET name = {name}, checksum = {sum} WHERE version = {v})",
        v = file.version,
        name = quote_literal(&file.name),
    );
    control.count_applied_sql(
        &with,
        &format!(
            "SELECT version, checksum, -1 FROM old UNION ALL SELECT version, {sum}, 1 FROM old"
        ),
    )
}

/// Forgets `versions` (a rollback reverted them), in the fleet's record too.
pub fn delete_sql(control: &Control, table: &str, versions: &[i32]) -> String {
    if versions.is_empty() {
        return String::new();
    }
    let list: Vec<String> = versions.iter().map(i32::to_string).collect();
    control.count_applied_sql(
        &format!(
            "WITH gone AS (DELETE FROM {table} WHERE version IN ({}) RETURNING version, checksum)",
            list.join(", ")
        ),
        "SELECT version, coalesce(checksum, ''), -1 FROM gone",
    )
}

/// Drift: an applied migration whose file was edited afterwards.
fn drift_edited(applied: &Migration, file: &Migration) -> String {
    format!(
        "drift: {applied} was changed after it was applied here (applied checksum {}, file {file} has {}); restore the file as it was applied, and put the change in a new migration",
        applied.checksum(),
        file.checksum()
    )
}

/// Drift: an applied migration without a file (deleted, or the schema is ahead of the files).
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
