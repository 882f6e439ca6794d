//! `migration check`: what `migrate` refuses (see [`super::rules`]), and what is risky on a
//! fleet of live tenants, each finding with its file, line, rule, level and fix. Statements
//! are read with the project's SQL scanner (comments, strings, `E''` strings, dollar quotes and
//! `BEGIN ATOMIC` bodies as PostgreSQL reads them), never with patterns over raw text.
//!
//! A warning is silenced for one statement by `-- tenantctl:allow RULE` (several rules may be
//! listed) on the line before it; errors cannot be, since `migrate` refuses them anyway.

use std::path::{Path, PathBuf};

use super::rules::{file_findings, Rules};
use super::scan::{for_each_statement, Statement, Tok};
use super::MigrationSet;

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
    for f in set.files() {
        out.extend(lint_file(&f.path, f.sql(), rules, tenants));
        match &f.down {
            // A rollback script drops what its migration made: only what `migrate` refuses.
            Some((path, sql)) => out.extend(lint_file(path, sql, rules, false)),
            None if tenants && with_down > 0 => out.push(Finding {
                file: f.path.clone(),
                line: 1,
                rule: "missing-down",
                level: Level::Warning,
                message: format!(
                    "{} has no rollback script, while {with_down} other migration(s) have one: `rollback` cannot go below it",
                    f.label()
                ),
                fix: format!("add {}.down.sql", f.label()),
            }),
            None => {}
        }
    }
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
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
        for (rule, level, message, fix) in found {
            if level == Level::Warning && allowed(&lines, s.line, rule) {
                continue;
            }
            out.push(Finding {
                file: path.to_path_buf(),
                line: s.line,
                rule,
                level,
                message,
                fix: fix.to_string(),
            });
        }
        if let Some(t) = created_table(&s) {
            created.push(t);
        }
    });
    if statements == 0 && tenants {
        out.push(Finding {
            file: path.to_path_buf(),
            line: 1,
            rule: "empty-migration",
            level: Level::Warning,
            message: "has no SQL statement (only comments): it would be recorded as applied and do nothing".into(),
            fix: "write its statements, or delete it".into(),
        });
    }
    out.sort_by_key(|f| f.line);
    out
}

/// What to do about a refusal of `migrate`.
fn fix_for(rule: &str) -> &'static str {
    match rule {
        "transaction-control" => "remove it: tenantctl opens and commits each schema's transaction",
        "session-setting" => "use SET LOCAL",
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
    line >= 2
        && lines
            .get(line - 2)
            .and_then(|l| l.trim().strip_prefix("-- tenantctl:allow"))
            .is_some_and(|rest| {
                rest.split(|c: char| c == ',' || c.is_whitespace())
                    .any(|r| r == rule)
            })
}

/// The first `n` words of a statement as written.
fn written(s: &Statement<'_>, n: usize) -> String {
    s.tokens
        .iter()
        .take(n)
        .filter_map(|(t, _)| match t {
            Tok::Word { text, .. } => Some(text.to_string()),
            Tok::Dot => Some(".".into()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" . ", ".")
}

/// Unquoted names fold to lower case.
fn name_at(s: &Statement<'_>, i: usize) -> Option<String> {
    match s.tokens.get(i) {
        Some((Tok::Word { text, quoted }, _)) => Some(match quoted {
            true => text.to_string(),
            false => text.to_lowercase(),
        }),
        _ => None,
    }
}

/// `CREATE [UNLOGGED|TEMP] TABLE [IF NOT EXISTS] name`: the table's name.
fn created_table(s: &Statement<'_>) -> Option<String> {
    if s.word(0).as_deref() != Some("CREATE") {
        return None;
    }
    let mut i = 1;
    while matches!(
        s.word(i).as_deref(),
        Some("UNLOGGED" | "TEMP" | "TEMPORARY" | "GLOBAL" | "LOCAL")
    ) {
        i += 1;
    }
    if s.word(i).as_deref() != Some("TABLE") {
        return None;
    }
    i += 1;
    if s.word(i).as_deref() == Some("IF") {
        i += 3;
    }
    name_at(s, i)
}

/// The table an `ALTER TABLE` or `CREATE INDEX … ON` statement acts on, and where its
/// actions (or the rest) start.
fn target_table(s: &Statement<'_>, from: usize) -> Option<(String, usize)> {
    let mut i = from;
    while matches!(s.word(i).as_deref(), Some("IF" | "EXISTS" | "ONLY")) {
        i += 1;
    }
    let mut name = name_at(s, i)?;
    // schema.table: the table.
    if matches!(s.tokens.get(i + 1), Some((Tok::Dot, _))) {
        name = name_at(s, i + 2)?;
        i += 2;
    }
    Some((name, i + 1))
}

type Risk = (&'static str, Level, String, &'static str);

/// The fleet risks of one statement; `created`: tables made earlier in the same file (empty,
/// so indexing or constraining them locks nothing of consequence).
fn risks(s: &Statement<'_>, created: &[String]) -> Vec<Risk> {
    let mut out = Vec::new();
    match s.word(0).as_deref() {
        Some("CREATE") => {
            let at = if s.word(1).as_deref() == Some("UNIQUE") { 2 } else { 1 };
            if s.word(at).as_deref() == Some("INDEX") && s.word(at + 1).as_deref() != Some("CONCURRENTLY") {
                let on = (0..s.tokens.len()).position(|i| s.word(i).as_deref() == Some("ON"));
                let table = on.and_then(|on| target_table(s, on + 1)).map(|t| t.0);
                if !table.as_ref().is_some_and(|t| created.contains(t)) {
                    out.push((
                        "index-without-concurrently",
                        Level::Warning,
                        format!(
                            "`{}` blocks every write to {} for as long as the index takes to build, on every tenant",
                            written(s, at + 2),
                            table.map_or("the table".to_string(), |t| format!("`{t}`"))
                        ),
                        "build it with CREATE INDEX CONCURRENTLY IF NOT EXISTS in a no-transaction migration (`-- tenantctl:no-transaction`)",
                    ));
                }
            }
        }
        Some("DROP") if s.word(1).as_deref() == Some("TABLE") => out.push((
            "drop-table",
            Level::Warning,
            format!(
                "`{}` deletes every tenant's data in it, and breaks application code that still uses it",
                written(s, 3)
            ),
            "stop using the table in a deploy first, then drop it in a later migration",
        )),
        Some("ALTER") if s.word(1).as_deref() == Some("TABLE") => {
            let Some((table, start)) = target_table(s, 2) else {
                return out;
            };
            let fresh = created.contains(&table);
            for (begin, end) in actions(s, start) {
                let w = |i: usize| if i < end { s.word(i) } else { None };
                let has = |word: &str| (begin..end).any(|i| s.word(i).as_deref() == Some(word));
                match w(begin).as_deref() {
                    Some("ADD") if !fresh => {
                        let is_constraint = matches!(
                            w(begin + 1).as_deref(),
                            Some("CONSTRAINT" | "PRIMARY" | "UNIQUE" | "CHECK" | "FOREIGN" | "EXCLUDE")
                        );
                        let not_null = (begin..end).any(|i| s.word(i).as_deref() == Some("NOT") && s.word(i + 1).as_deref() == Some("NULL"));
                        if !is_constraint && not_null && !has("DEFAULT") && !has("GENERATED") {
                            out.push((
                                "add-column-not-null-without-default",
                                Level::Error,
                                format!("a NOT NULL column without a default cannot be added to `{table}` on a tenant that has rows"),
                                "give it a DEFAULT, or add it nullable, fill it, then SET NOT NULL in a later migration",
                            ));
                        }
                    }
                    Some("ALTER") if !fresh && has("TYPE") => out.push((
                        "alter-column-type",
                        Level::Warning,
                        format!("changing a column's type rewrites `{table}` under an ACCESS EXCLUSIVE lock (no reads, no writes) on every tenant"),
                        "add a new column, fill it, move the application over, then drop the old one",
                    )),
                    Some("DROP") if !matches!(w(begin + 1).as_deref(), Some("CONSTRAINT" | "DEFAULT" | "NOT" | "IDENTITY" | "EXPRESSION")) && !fresh => out.push((
                        "drop-column",
                        Level::Warning,
                        format!("dropping a column of `{table}` deletes its data on every tenant and breaks application code that still reads it"),
                        "stop using the column in a deploy first, then drop it in a later migration",
                    )),
                    Some("RENAME") if !fresh => out.push((
                        "rename",
                        Level::Warning,
                        format!("renaming in `{table}` breaks the application code still running against the old name during the rollout"),
                        "add the new name (a column or a view) first, move the application over, then drop the old name later",
                    )),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    out
}

/// The actions of an `ALTER TABLE` (split at top-level commas): `(first token, end)`.
fn actions(s: &Statement<'_>, start: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut begin = start;
    for (i, (t, _)) in s.tokens.iter().enumerate().skip(start) {
        match t {
            Tok::LParen => depth += 1,
            Tok::RParen => depth -= 1,
            Tok::Comma if depth == 0 => {
                out.push((begin, i));
                begin = i + 1;
            }
            _ => {}
        }
    }
    out.push((begin, s.tokens.len()));
    out
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
                   ALTER TABLE fresh ADD COLUMN n int NOT NULL;\n\
                   CREATE INDEX old_id ON old (id);\n\
                   ALTER TABLE old ADD COLUMN a int NOT NULL, ADD COLUMN b int NOT NULL DEFAULT 0, ADD CONSTRAINT c CHECK (a IS NOT NULL);\n\
                   ALTER TABLE public.old ALTER COLUMN a TYPE bigint, DROP COLUMN z, DROP CONSTRAINT c;\n\
                   ALTER TABLE old RENAME COLUMN a TO aa;\nDROP TABLE gone;\n\
                   -- tenantctl:allow drop-table\nDROP TABLE also_gone;\n\
                   SELECT 'ALTER TABLE old DROP COLUMN q';\n";
        assert_eq!(
            lint(sql),
            [
                (4, "index-without-concurrently"),
                (5, "add-column-not-null-without-default"),
                (6, "outside-tenant"),
                (6, "alter-column-type"),
                (6, "drop-column"),
                (7, "rename"),
                (8, "drop-table"),
            ]
        );
        assert_eq!(lint("-- nothing\n"), [(1, "empty-migration")]);
    }
}
