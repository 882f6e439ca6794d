//! `migration check`: what `migrate` refuses (see [`super::rules`]), and what is risky on a
//! fleet of live tenants, each finding with its file, line, rule, level and fix. Statements
//! are read with the project's SQL scanner (comments, strings, `E''` strings, dollar quotes and
//! `BEGIN ATOMIC` bodies as PostgreSQL reads them), never with patterns over raw text.
//!
//! A finding of [`super::risks`] is accepted for one statement by `-- tenantctl:allow RULE`
//! (several rules may be listed) on the line before it (for `empty-migration`, anywhere in
//! the file); what `migrate` refuses outright ([`super::rules`]) cannot be. Error-level
//! findings of the files a command would apply gate `migrate` and `tenant create` ([`gate`]):
//! `migration check` and `migrate` always agree.

use std::path::{Path, PathBuf};

use super::risks::{created_table, level_of, risks};
use super::rules::{file_findings, Rules};
use super::scan::for_each_statement;
use super::{MigrationSet, MigrationSetError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// `migrate` would refuse it, or it fails on a tenant with data.
    Error,
    /// Works, but locks or breaks things on a live fleet: look again.
    Warning,
}

/// One finding of `migration check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub file: PathBuf,
    pub line: usize,
    pub rule: &'static str,
    pub level: Level,
    pub message: String,
    pub fix: String,
}

/// Every finding for the tenant set (and the shared set, if any), in file order.
pub fn check(
    set: &MigrationSet,
    tenant: &Rules<'_>,
    shared: Option<(&MigrationSet, &Rules<'_>)>,
) -> Vec<Finding> {
    let mut out = lint_set(set, tenant, true);
    if let Some((set, rules)) = shared {
        out.extend(lint_set(set, rules, false));
    }
    out
}

fn lint_set(set: &MigrationSet, rules: &Rules<'_>, tenants: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let with_down = set.files().iter().filter(|f| f.down.is_some()).count();
    // Enum values added by earlier files of the same transaction (until a no-transaction
    // file cuts it): (value, the file that adds it).
    let mut added: Vec<(String, String)> = Vec::new();
    for f in set.files() {
        let mut up = lint_file(&f.path, f.sql(), rules, tenants);
        up.extend(enum_values_used(f, &mut added));
        if tenants && with_down > 0 && f.down.is_none() {
            up.push(Finding {
                file: f.path.clone(),
                line: 1,
                rule: "missing-down",
                level: Level::Warning,
                message: format!(
                    "{} has no rollback script, while {with_down} other migration(s) have one: `rollback` cannot go below it",
                    f.label()
                ),
                fix: format!("add {}.down.sql", f.label()),
            });
            up.sort_by_key(|f| f.line);
        }
        out.extend(up);
        // A rollback script drops what its migration made: only what `migrate` refuses.
        if let Some((path, sql)) = &f.down {
            out.extend(lint_file(path, sql, rules, false));
        }
    }
    // In version order (the set's), each file's findings by line; each once.
    out.dedup_by(|a, b| a.file == b.file && a.line == b.line && a.rule == b.rule);
    out
}

/// A value that an earlier file adds to an enum (`ALTER TYPE … ADD VALUE`), used by this one:
/// wherever both are pending (always on `tenant create`) they run in one transaction, which
/// PostgreSQL refuses. Notes this file's own added values in `added` for the files after it.
fn enum_values_used(f: &super::MigrationFile, added: &mut Vec<(String, String)>) -> Vec<Finding> {
    let mut out = Vec::new();
    if f.no_transaction {
        // The run is cut here: what was added before has committed.
        added.clear();
        return out;
    }
    let lines: Vec<&str> = f.sql().lines().collect();
    let mut own = Vec::new();
    let _ = for_each_statement(f.sql(), |s| {
        for (t, line) in &s.tokens {
            let super::scan::Tok::Str(text) = t else {
                continue;
            };
            let Some((value, by)) = added.iter().find(|(v, _)| v == text) else {
                continue;
            };
            if allowed(&lines, *line, "enum-value-in-same-transaction") {
                continue;
            }
            out.push(Finding {
                file: f.path.clone(),
                line: *line,
                rule: "enum-value-in-same-transaction",
                level: Level::Error,
                message: format!(
                    "uses the enum value '{value}' that {by} adds: wherever both are pending (every `tenant create`) they run in one transaction, and PostgreSQL refuses a new enum value before the transaction that added it commits (unsafe use of new value)"
                ),
                fix: format!(
                    "put the `ALTER TYPE … ADD VALUE` in a no-transaction migration of its own (`-- tenantctl:no-transaction` on its first line) before this one; if {by} is already applied, adding that line is an edit with the same effect: `tenantctl repair --accept <its version>` records it"
                ),
            });
        }
        if let Some(v) = super::rules::added_enum_value(&s) {
            own.push(v);
        }
    });
    added.extend(own.into_iter().map(|v| (v, f.label())));
    out
}

/// Findings for one file: `migrate`'s refusals (errors), then (with `risks`, for tenant
/// migrations) what is risky on a live fleet.
pub fn lint_file(path: &Path, sql: &str, rules: &Rules<'_>, tenants: bool) -> Vec<Finding> {
    let mut out: Vec<Finding> = file_findings(path, sql, rules)
        .into_iter()
        .map(|f| Finding {
            fix: fix_for(f.rule).to_string(),
            file: f.path,
            line: f.line,
            rule: f.rule,
            level: Level::Error,
            message: f.message,
        })
        .collect();
    let lines: Vec<&str> = sql.lines().collect();
    let mut created: Vec<String> = Vec::new();
    let mut statements = 0usize;
    let _ = for_each_statement(sql, |s| {
        statements += 1;
        let found = match tenants {
            true => risks(&s, &created),
            false => Vec::new(),
        };
        for (rule, message, fix) in found {
            if allowed(&lines, s.line, rule) {
                continue;
            }
            out.push(Finding {
                file: path.to_path_buf(),
                line: s.line,
                rule,
                level: level_of(rule),
                message,
                fix: fix.to_string(),
            });
        }
        if let Some(t) = created_table(&s) {
            created.push(t);
        }
    });
    let placeholder = lines.iter().any(|l| allows(l, "empty-migration"));
    if statements == 0 && !placeholder {
        out.push(Finding {
            file: path.to_path_buf(),
            line: 1,
            rule: "empty-migration",
            level: level_of("empty-migration"),
            message: "has no SQL statement (only comments): it would be recorded as applied and do nothing, and its statements, written later, would never reach the tenants that had it".into(),
            fix: "write its statements before any tenant gets it (or delete it); a placeholder meant to stay empty says `-- tenantctl:allow empty-migration`".into(),
        });
    }
    out.sort_by_key(|f| f.line);
    out
}

/// Refuses (exit 2) the error-level findings of the files a command is about to apply:
/// `applies(version)` tells which up scripts (tenant risks and empty files), `downs` which
/// down scripts (empty files only). The message lists each finding with its fix.
pub fn gate(
    set: &MigrationSet,
    rules: &Rules<'_>,
    applies: impl Fn(i32) -> bool,
    downs: impl Fn(i32) -> bool,
) -> Result<(), MigrationSetError> {
    let mut errors: Vec<Finding> = Vec::new();
    // Enum values added by files applied in the same transaction (one applied before has
    // committed its values).
    let mut added = Vec::new();
    for f in set.files() {
        if applies(f.version) {
            errors.extend(lint_file(&f.path, f.sql(), rules, true));
            errors.extend(enum_values_used(f, &mut added));
        }
        if let (Some((path, sql)), true) = (&f.down, downs(f.version)) {
            errors.extend(
                lint_file(path, sql, rules, false)
                    .into_iter()
                    .filter(|x| x.rule == "empty-migration"),
            );
        }
    }
    errors.retain(|f| f.level == Level::Error);
    if errors.is_empty() {
        return Ok(());
    }
    let shown: String = errors.iter().map(Finding::show).collect();
    Err(MigrationSetError(format!(
        "{} error-level finding(s) in the migrations this would apply; nothing was changed (`tenantctl migration check` shows the same):\n{}  a finding that is right for this fleet is accepted by `-- tenantctl:allow RULE` on the line before the statement",
        errors.len(),
        shown
    )))
}

impl Finding {
    /// `path:line: level[rule]: message` and its fix, two lines.
    pub fn show(&self) -> String {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        let message = self
            .message
            .strip_prefix(&format!("{}:{}: ", self.file.display(), self.line))
            .unwrap_or(&self.message);
        format!(
            "{}:{}: {level}[{}]: {message}\n    fix: {}\n",
            self.file.display(),
            self.line,
            self.rule,
            self.fix
        )
    }
}

/// What to do about a refusal of `migrate`.
fn fix_for(rule: &str) -> &'static str {
    match rule {
        "transaction-control" => "remove it: tenantctl opens and commits each schema's transaction",
        "session-setting" => "use SET LOCAL",
        "session-state" => "use the transaction's own form (SET LOCAL, set_config(…, true), pg_advisory_xact_lock, ON COMMIT DROP), or remove it",
        "needs-no-transaction" => "move it into a file of its own whose first line is `-- tenantctl:no-transaction`",
        "enum-value-in-same-transaction" => "add the value in a no-transaction migration of its own, before",
        "database-wide" => "put it in a shared migration (migrations/shared/)",
        "outside-tenant" => "name the tenant's objects without a schema; objects for everyone go in migrations/shared/",
        "shared-ddl" => "put it in a shared migration (migrations/shared/)",
        "no-transaction-in-shared" => "remove the directive: shared migrations run in one transaction",
        _ => "see the message",
    }
}

/// `-- tenantctl:allow RULE [RULE…]` on the line before line `line` (1-based).
fn allowed(lines: &[&str], line: usize, rule: &str) -> bool {
    line >= 2 && lines.get(line - 2).is_some_and(|l| allows(l, rule))
}

/// Whether `line` is `-- tenantctl:allow …` naming `rule`.
fn allows(line: &str, rule: &str) -> bool {
    line.trim()
        .strip_prefix("-- tenantctl:allow")
        .is_some_and(|rest| {
            rest.split(|c: char| c == ',' || c.is_whitespace())
                .any(|r| r == rule)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::rules::SetKind;

    fn lint(sql: &str) -> Vec<(usize, &'static str)> {
        let rules = Rules {
            kind: SetKind::Tenant,
            prefix: "tenant_",
            control_schema: "tenantctl",
            allowed: vec![],
        };
        lint_file(Path::new("V9__x.sql"), sql, &rules, true)
            .into_iter()
            .map(|f| (f.line, f.rule))
            .collect()
    }

    #[test]
    fn fleet_risks_and_what_makes_them_safe() {
        let sql = "CREATE TABLE fresh (id int);\nCREATE INDEX fresh_id ON fresh (id);\n\
                   ALTER TABLE fresh ADD COLUMN n int NOT NULL, ADD CONSTRAINT f FOREIGN KEY (n) REFERENCES old (id);\n\
                   CREATE INDEX old_id ON old (id);\n\
                   ALTER TABLE old ADD COLUMN a int NOT NULL, ADD COLUMN b int NOT NULL DEFAULT 0, ADD CONSTRAINT c CHECK (a IS NOT NULL);\n\
                   ALTER TABLE public.old ALTER COLUMN a TYPE bigint, DROP COLUMN z, DROP CONSTRAINT c;\n\
                   ALTER TABLE old RENAME COLUMN a TO aa;\nDROP TABLE IF EXISTS legacy, other;\n\
                   -- tenantctl:allow drop-table\nDROP TABLE also_gone;\n\
                   SELECT 'ALTER TABLE old DROP COLUMN q';\n\
                   ALTER TABLE old ADD CONSTRAINT k CHECK (a > 0) NOT VALID, ADD CONSTRAINT fk FOREIGN KEY (b) REFERENCES p (id) NOT VALID;\n\
                   ALTER TABLE old ADD CONSTRAINT fk2 FOREIGN KEY (b) REFERENCES p (id);\n\
                   ALTER TABLE old ALTER COLUMN b SET NOT NULL;\n\
                   ALTER TABLE old ADD CONSTRAINT u UNIQUE (b), ADD CONSTRAINT u2 UNIQUE USING INDEX u2_idx;\n\
                   ALTER TABLE old ADD PRIMARY KEY (id);\n\
                   DROP INDEX IF EXISTS old_b;\nDROP INDEX CONCURRENTLY old_c;\n\
                   ALTER TABLE old ADD COLUMN t timestamptz DEFAULT now(), ADD COLUMN u uuid DEFAULT gen_random_uuid();\n\
                   ALTER TABLE old ADD COLUMN s bigserial, ADD COLUMN r int REFERENCES p (id);\n\
                   -- tenantctl:allow add-column-not-null-without-default\n\
                   ALTER TABLE old ADD COLUMN q int NOT NULL;\n\
                   DROP TABLE fresh;\n";
        assert_eq!(
            lint(sql),
            [
                (4, "index-without-concurrently"),
                (5, "add-column-not-null-without-default"),
                (5, "constraint-missing-not-valid"),
                (6, "outside-tenant"),
                (6, "alter-column-type"),
                (6, "drop-column"),
                (7, "rename"),
                (8, "drop-table"),
                (13, "adding-foreign-key"),
                (14, "set-not-null"),
                (15, "unique-without-index"),
                (16, "unique-without-index"),
                (17, "drop-index-without-concurrently"),
                (18, "needs-no-transaction"),
                (19, "volatile-default"),
                (20, "volatile-default"),
                (20, "adding-foreign-key"),
            ]
        );
        assert_eq!(lint("-- nothing\n"), [(1, "empty-migration")]);
        assert!(lint("-- tenantctl:allow empty-migration\n-- kept empty\n").is_empty());
        let rules = Rules {
            kind: SetKind::Tenant,
            prefix: "tenant_",
            control_schema: "tenantctl",
            allowed: vec![],
        };
        let found = lint_file(Path::new("V9__x.sql"), sql, &rules, true);
        let drop = found.iter().find(|f| f.line == 8).unwrap();
        assert!(
            drop.message.contains("`legacy`, `other`"),
            "{}",
            drop.message
        );
        assert!(found
            .iter()
            .filter(|f| f.level == Level::Error)
            .all(|f| matches!(
                f.rule,
                "add-column-not-null-without-default" | "outside-tenant" | "needs-no-transaction"
            )));
    }
}
