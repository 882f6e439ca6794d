//! Fleet SQL (`query`, `exec`): one piece of SQL in every tenant's schema, one transaction per
//! tenant, through the fleet runner (`apply::Mode::Query`, `apply::Mode::Exec`; see
//! [`tenant`]). The SQL is checked by the migrations' rules ([`FleetSql::new`]) before any
//! connection: nothing that ends the transaction, changes the session or names another
//! tenant, the control schema or `public`. A query's rows leave the engine as a data-only
//! event (`Event::Rows`) the moment its tenant's transaction has ended, so that nothing holds
//! a fleet's result; `query` and `exec --dry-run` run without the ledger ([`unrecorded`]).

pub mod tenant;
pub mod unrecorded;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::exit::UsageError;
use crate::migrations::rules::{file_findings, Rules};
use crate::migrations::scan::for_each_statement;
use crate::migrations::NO_TRANSACTION;

/// The SQL of a `query` or `exec`, checked, with what its runs need.
pub struct FleetSql {
    text: String,
    /// `-c` or the file's path: what failures blame, with a line.
    pub origin: String,
    /// SHA-256 of the text (hex): an exec's identity in the ledger.
    pub digest: String,
    /// How many statements it has.
    pub statements: usize,
    /// The text with its last statement's rows turned into JSON objects by the server
    /// (`row_to_json`: numbers stay numbers, exactly), when that statement is a query.
    as_json: Option<String>,
    /// Send [`FleetSql::as_json`] (`query --format json|ndjson`).
    pub json_rows: bool,
    /// `--statement-timeout`: instead of `[run] statement_timeout`.
    pub statement_timeout: Option<Duration>,
    /// `exec --until-zero`: the pause between a tenant's batches.
    pub batch_pause: Duration,
    /// The columns of the first tenant's rows: the other tenants' must be the same.
    reference: Mutex<Option<Vec<String>>>,
}

/// One tenant's result: the last statement's columns and rows.
#[derive(Debug, Default)]
pub struct Rows {
    /// Column names (for rows made JSON by the server: the keys of the first row; none
    /// when there is no row).
    pub columns: Vec<String>,
    pub values: Values,
}

/// Rows as PostgreSQL's text (NULL: None), or as JSON object texts made by the server.
#[derive(Debug)]
pub enum Values {
    Text(Vec<Vec<Option<String>>>),
    Json(Vec<String>),
}

impl Default for Values {
    fn default() -> Values {
        Values::Text(Vec::new())
    }
}

impl Rows {
    pub fn len(&self) -> usize {
        match &self.values {
            Values::Text(v) => v.len(),
            Values::Json(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FleetSql {
    /// Checks `text` (from `origin`: `-c`, or a file) against the rules of tenant
    /// migrations; every finding is named with its line (exit 2, before any connection).
    pub fn new(text: String, origin: String, rules: &Rules<'_>) -> Result<FleetSql, UsageError> {
        let mut ends = Vec::new();
        for_each_statement(&text, |s| ends.push(s.end)).map_err(|e| {
            UsageError(format!(
                "{origin}:{}: cannot be read as SQL ({}); nothing was run",
                e.line, e.message
            ))
        })?;
        if ends.is_empty() {
            return Err(UsageError(format!(
                "{origin}: there is no SQL statement in it; nothing was run"
            )));
        }
        let mut problems: Vec<String> = Vec::new();
        if crate::migrations::is_no_transaction(&text) {
            problems.push(format!(
                "{origin}:1: `{NO_TRANSACTION}` is for migrations: query and exec run in one transaction per tenant"
            ));
        }
        for f in file_findings(Path::new(&origin), &text, rules) {
            let message = match f.rule {
                "needs-no-transaction" => format!(
                    "{}: query and exec run in one transaction per tenant, and this statement cannot: run it outside tenantctl, or as a no-transaction migration",
                    f.message.split(':').next().unwrap_or("the statement")
                ),
                _ => f.message,
            };
            problems.push(format!("{}:{}: {message}", f.path.display(), f.line));
        }
        if !problems.is_empty() {
            return Err(UsageError(format!(
                "{} problem(s) in the SQL; nothing was run:\n  {}",
                problems.len(),
                problems.join("\n  ")
            )));
        }
        let digest = {
            use sha2::{Digest, Sha256};
            Sha256::digest(text.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let start = match ends.len() {
            1 => 0,
            n => ends[n - 2],
        };
        let as_json = json_text(&text, start, ends[ends.len() - 1]);
        Ok(FleetSql {
            statements: ends.len(),
            text,
            origin,
            digest,
            as_json,
            json_rows: false,
            statement_timeout: None,
            batch_pause: Duration::ZERO,
            reference: Mutex::new(None),
        })
    }

    /// The SQL as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What is sent for a query: the text, or its JSON form.
    pub(crate) fn to_send(&self) -> (&str, bool) {
        match (&self.as_json, self.json_rows) {
            (Some(json), true) => (json, true),
            _ => (&self.text, false),
        }
    }

    /// Takes the columns of a tenant's rows as the reference, or compares them with it:
    /// Err(the reference) when they differ. A result without rows is never compared.
    pub(crate) fn same_columns(&self, rows: &Rows) -> Result<(), Vec<String>> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut reference = self.reference.lock().unwrap_or_else(|e| e.into_inner());
        match &*reference {
            None => {
                *reference = Some(rows.columns.clone());
                Ok(())
            }
            Some(c) if *c == rows.columns => Ok(()),
            Some(c) => Err(c.clone()),
        }
    }
}

/// `text` with its last statement (`start..end`) wrapped so that each row comes back as one
/// JSON object text, when that statement is a query (SELECT, WITH, VALUES, TABLE, or one in
/// parentheses). Lines are kept: the wrapper opens on the statement's first line.
fn json_text(text: &str, start: usize, end: usize) -> Option<String> {
    let last = text[start..end].trim_end();
    let last = last.strip_suffix(';').unwrap_or(last);
    let mut first = None;
    let _ = for_each_statement(last, |s| {
        if first.is_none() {
            first = Some(match s.tokens.first() {
                Some((crate::migrations::scan::Tok::LParen, _)) => Some("(".to_string()),
                _ => s.word(0),
            });
        }
    });
    let query = matches!(
        first.flatten().as_deref(),
        Some("SELECT" | "WITH" | "VALUES" | "TABLE" | "(")
    );
    query.then(|| {
        format!(
            "{}SELECT row_to_json(tenantctl_row)::text FROM ({last}\n) tenantctl_row",
            &text[..start]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::rules::SetKind;

    fn rules() -> Rules<'static> {
        Rules {
            kind: SetKind::Tenant,
            prefix: "tenant_",
            control_schema: "tenantctl",
            allowed: vec!["shared"],
        }
    }

    #[test]
    fn the_last_query_is_wrapped_and_lines_are_kept() {
        let sql = FleetSql::new(
            "select 1;\n-- the users\nselect id, name from users order by id; -- done\n".into(),
            "-c".into(),
            &rules(),
        )
        .unwrap();
        assert_eq!(sql.statements, 2);
        let json = sql.as_json.as_deref().unwrap();
        assert!(json.starts_with("select 1;SELECT row_to_json(tenantctl_row)::text FROM (\n-- the users\nselect id, name from users order by id\n) tenantctl_row"), "{json}");
        assert_eq!(json.matches('\n').count(), 3);
        let show = FleetSql::new("show work_mem".into(), "-c".into(), &rules()).unwrap();
        assert!(show.as_json.is_none());
        assert_eq!(sql.digest.len(), 64);
    }

    #[test]
    fn what_would_leave_the_tenant_or_its_transaction_is_refused_with_its_line() {
        for (text, line) in [
            ("select 1;\nSET search_path TO tenant_other", 2),
            ("select set_config('work_mem', '1GB', false)", 1),
            ("RESET ALL", 1),
            ("select * from tenant_other.users", 1),
            ("select * from tenantctl.runs", 1),
            ("commit", 1),
            ("vacuum users", 1),
        ] {
            let e = FleetSql::new(text.into(), "-c".into(), &rules())
                .err()
                .unwrap_or_else(|| panic!("{text} passed"));
            assert!(e.0.contains(&format!("-c:{line}:")), "{text}: {}", e.0);
        }
        assert!(FleetSql::new("  -- nothing\n".into(), "-c".into(), &rules()).is_err());
        assert!(FleetSql::new("select * from shared.plans".into(), "-c".into(), &rules()).is_ok());
    }
}
