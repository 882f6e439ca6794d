//! What a migration must not do, checked on the files before any database work (exit 2,
//! every finding named by file and line). A tenant's migrations run inside one transaction
//! per schema with `search_path` set to that schema; these statements would escape it:
//!
//! - transaction control (`COMMIT`, `BEGIN`, `ROLLBACK`, …): the rest of the file would run
//!   outside the transaction, with the schema's `search_path` gone;
//! - a session-level `SET`/`RESET` (not `SET LOCAL`): it outlives the transaction on a pooled
//!   connection and reaches the next tenant (`SET ROLE`, `SET search_path`);
//! - in tenant migrations, `CREATE/ALTER/DROP EXTENSION` and `… SCHEMA` (database-wide
//!   objects, which belong in the shared migrations), and names qualified with a schema
//!   outside the tenant (`public.x`, another tenant's schema, the control schema), also inside
//!   function bodies; the shared schema and the extensions schema may be named.
//!
//! Statements PostgreSQL refuses inside a transaction (`CREATE INDEX CONCURRENTLY`, `VACUUM`,
//! …) belong in a no-transaction migration (first line `-- tenantctl:no-transaction`), which
//! runs statement by statement outside a transaction; there, settings other than
//! `search_path` and the role may be set (they are reset after the file), and transaction
//! control is still refused.

use std::path::Path;

use super::scan::{for_each_statement, Statement, Tok};
use super::{is_no_transaction, MigrationSet, MigrationSetError, NO_TRANSACTION};

/// Which set is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// Per-tenant migrations.
    Tenant,
    /// The once-per-cluster shared migrations (may create extensions and schemas).
    Shared,
}

/// The names the checks need.
pub struct Rules<'a> {
    pub kind: SetKind,
    pub prefix: &'a str,
    pub control_schema: &'a str,
    /// Schemas a tenant migration may name: the shared schema, the extensions schema.
    pub allowed: Vec<&'a str>,
}

/// Something `migrate` refuses: where, which rule, what and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: std::path::PathBuf,
    pub line: usize,
    pub rule: &'static str,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

/// Checks every file (up and down) of `set`; all findings at once.
pub fn check_set(set: &MigrationSet, rules: &Rules<'_>) -> Result<(), MigrationSetError> {
    let mut findings = Vec::new();
    for f in set.files() {
        findings.extend(check_file(&f.path, f.sql(), rules));
        if let Some((path, sql)) = &f.down {
            findings.extend(check_file(path, sql, rules));
        }
    }
    if findings.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = findings.iter().take(20).map(|f| format!("  {f}")).collect();
    let more = match findings.len() {
        n if n > 20 => format!("\n  … and {} more", n - 20),
        _ => String::new(),
    };
    Err(MigrationSetError(format!(
        "{} problem(s) in the migrations; nothing was changed:\n{}{more}",
        findings.len(),
        shown.join("\n")
    )))
}

/// The findings for one file, as `path:line: message`.
pub fn check_file(path: &Path, sql: &str, rules: &Rules<'_>) -> Vec<String> {
    file_findings(path, sql, rules)
        .iter()
        .map(Finding::to_string)
        .collect()
}

/// What `migrate` refuses in one file, each with its rule.
pub fn file_findings(path: &Path, sql: &str, rules: &Rules<'_>) -> Vec<Finding> {
    let at = |line: usize, rule: &'static str, message: String| Finding {
        path: path.to_path_buf(),
        line,
        rule,
        message,
    };
    let mut out = Vec::new();
    let no_tx = is_no_transaction(sql);
    if no_tx && rules.kind == SetKind::Shared {
        out.push(at(
            1, "no-transaction-in-shared",
            format!("`{NO_TRANSACTION}` is for tenant migrations; shared migrations run in one transaction per cluster"),
        ));
    }
    // Enum values added by this file (value, line): using one later in the same transaction
    // is refused by PostgreSQL.
    let mut added: Vec<(String, usize)> = Vec::new();
    let scanned = for_each_statement(sql, |s| {
        if let Some(msg) = transaction_control(&s) {
            out.push(at(s.line, "transaction-control", msg));
        }
        if let Some(msg) = session_setting(&s, no_tx) {
            out.push(at(s.line, "session-setting", msg));
        }
        for (line, msg) in super::session::session_state(&s, no_tx) {
            out.push(at(line, "session-state", msg));
        }
        if !no_tx {
            if let Some(what) = outside_transaction_only(&s) {
                let fix = match rules.kind {
                    SetKind::Tenant => format!(
                        "make this a no-transaction migration: put `{NO_TRANSACTION}` on its first line (it then runs statement by statement, outside a transaction; write it so that a re-run after a crash is safe, e.g. CREATE INDEX CONCURRENTLY IF NOT EXISTS), and keep other changes in migrations of their own"
                    ),
                    SetKind::Shared => "shared migrations run in one transaction per cluster; use the plain form there".to_string(),
                };
                out.push(at(
                    s.line, "needs-no-transaction",
                    format!("`{what}` cannot run inside a transaction, and this file's statements run in one: {fix}"),
                ));
            }
            let uses: Vec<(String, usize)> = s
                .tokens
                .iter()
                .filter_map(|(t, line)| match t {
                    Tok::Str(text) => Some((text.to_string(), *line)),
                    _ => None,
                })
                .collect();
            for (value, line) in uses {
                if let Some((_, added_at)) = added.iter().find(|(v, _)| *v == value) {
                    out.push(at(
                        line, "enum-value-in-same-transaction",
                        format!(
                            "uses the enum value '{value}' added on line {added_at} in the same transaction, which PostgreSQL refuses (unsafe use of new value): move the `ALTER TYPE … ADD VALUE` into a no-transaction migration (`{NO_TRANSACTION}`) of its own, before this one"
                        ),
                    ));
                }
            }
            if let Some(value) = added_enum_value(&s) {
                added.push((value, s.line));
            }
        }
        if rules.kind == SetKind::Tenant {
            if let Some(msg) = database_wide(&s) {
                out.push(at(s.line, "database-wide", msg));
            }
            let bodies = s.bodies();
            for inner in std::iter::once(&s).chain(&bodies) {
                for (q, line) in inner.qualifiers() {
                    if let Some(msg) = outside_tenant(&q, rules) {
                        out.push(at(line, "outside-tenant", msg));
                    }
                }
                if let Some((q, line)) = inner.ddl_target_qualifier() {
                    if rules.allowed.contains(&q.as_str()) {
                        out.push(at(
                            line, "shared-ddl",
                            format!(
                                "`{}` on `{q}.…` changes the schema shared by every tenant, once per tenant; put it in migrations/shared/ (tenant migrations may only refer to shared objects)",
                                inner.head(2)
                            ),
                        ));
                    }
                }
            }
        }
    });
    if let Err(e) = scanned {
        out.push(at(
            e.line,
            "unreadable-sql",
            format!(
                "cannot be read as SQL ({}); PostgreSQL would refuse it too",
                e.message
            ),
        ));
    }
    out
}

fn transaction_control(s: &Statement) -> Option<String> {
    let what = match s.word(0)?.as_str() {
        "BEGIN" | "COMMIT" | "END" | "ABORT" => s.head(1),
        "START" if s.starts_with(&["START", "TRANSACTION"]) => s.head(2),
        "ROLLBACK" if s.word(1).as_deref() != Some("TO") => s.head(1),
        "PREPARE" if s.starts_with(&["PREPARE", "TRANSACTION"]) => s.head(2),
        _ => return None,
    };
    Some(format!(
        "`{what}` is transaction control: a schema's migrations run inside the one transaction tenantctl opens and commits for that schema, and this would end it (the rest would run outside it, in no tenant's schema). Remove it; SAVEPOINT and ROLLBACK TO SAVEPOINT are fine"
    ))
}

/// What in `s` PostgreSQL refuses inside a transaction block, if anything.
fn outside_transaction_only(s: &Statement) -> Option<&'static str> {
    let has = |w: &str| (0..s.tokens.len()).any(|i| s.word(i).as_deref() == Some(w));
    let w = |i: usize| s.word(i);
    match w(0)?.as_str() {
        "CREATE" => {
            let at = if w(1).as_deref() == Some("UNIQUE") {
                2
            } else {
                1
            };
            (w(at).as_deref() == Some("INDEX") && w(at + 1).as_deref() == Some("CONCURRENTLY"))
                .then_some("CREATE INDEX CONCURRENTLY")
        }
        "DROP" => (w(1).as_deref() == Some("INDEX") && w(2).as_deref() == Some("CONCURRENTLY"))
            .then_some("DROP INDEX CONCURRENTLY"),
        "REINDEX" if has("CONCURRENTLY") => Some("REINDEX … CONCURRENTLY"),
        "REINDEX" if has("SCHEMA") || has("DATABASE") || has("SYSTEM") => {
            Some("REINDEX SCHEMA|DATABASE|SYSTEM")
        }
        "VACUUM" => Some("VACUUM"),
        "ALTER" if has("DETACH") && has("PARTITION") && has("CONCURRENTLY") => {
            Some("ALTER TABLE … DETACH PARTITION … CONCURRENTLY")
        }
        _ => None,
    }
}

/// The names of the indexes `sql` builds with `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT
/// EXISTS] name` (as PostgreSQL stores them: unquoted names fold to lower case). An index
/// built without a name cannot be found again after an interrupted build: name them.
pub fn concurrent_index_names(sql: &str) -> Vec<String> {
    let mut names = Vec::new();
    let _ = for_each_statement(sql, |s| {
        if outside_transaction_only(&s) != Some("CREATE INDEX CONCURRENTLY") {
            return;
        }
        let mut i = if s.word(1).as_deref() == Some("UNIQUE") {
            4
        } else {
            3
        };
        if s.word(i).as_deref() == Some("IF") && s.word(i + 2).as_deref() == Some("EXISTS") {
            i += 3;
        }
        if s.word(i).as_deref() == Some("ON") {
            return;
        }
        if let Some((Tok::Word { text, quoted }, _)) = s.tokens.get(i) {
            names.push(match quoted {
                true => text.to_string(),
                false => text.to_lowercase(),
            });
        }
    });
    names
}

/// `ALTER TYPE … ADD VALUE [IF NOT EXISTS] 'v'`: the value added.
pub(super) fn added_enum_value(s: &Statement) -> Option<String> {
    if !(s.starts_with(&["ALTER", "TYPE"])) {
        return None;
    }
    let at = (0..s.tokens.len()).position(|i| {
        s.word(i).as_deref() == Some("ADD") && s.word(i + 1).as_deref() == Some("VALUE")
    })?;
    s.tokens[at + 2..].iter().find_map(|(t, _)| match t {
        Tok::Str(v) => Some(v.to_string()),
        _ => None,
    })
}

/// A session-level `SET`/`RESET`. In a no-transaction file settings are allowed (tenantctl
/// resets them after the file), except those that move the file out of its tenant.
pub(super) fn session_setting(s: &Statement, no_tx: bool) -> Option<String> {
    if no_tx {
        let target = match s.word(0)?.as_str() {
            "SET" | "RESET" => {
                let i = if s.word(1).as_deref() == Some("SESSION") {
                    2
                } else {
                    1
                };
                s.word(i)?
            }
            _ => return None,
        };
        return matches!(target.as_str(), "SEARCH_PATH" | "ROLE" | "AUTHORIZATION" | "SCHEMA" | "ALL")
            .then(|| {
                format!(
                    "`{}` would move this no-transaction migration out of its tenant's schema or role (tenantctl sets them for it); settings such as maintenance_work_mem are fine here",
                    s.head(3)
                )
            });
    }
    match s.word(0)?.as_str() {
        "SET" => match s.word(1).as_deref() {
            Some("LOCAL" | "TRANSACTION" | "CONSTRAINTS") => None,
            _ => Some(format!(
                "`{}` sets the session, not the transaction: it would outlive this schema's transaction and reach the next tenant on the same connection. Write `SET LOCAL …`, which ends with the transaction",
                s.head(3)
            )),
        },
        "RESET" => Some(format!(
            "`{}` changes the session, beyond this schema's transaction; settings made with SET LOCAL end by themselves",
            s.head(2)
        )),
        _ => None,
    }
}

fn database_wide(s: &Statement) -> Option<String> {
    let verb = s.word(0)?;
    if !matches!(verb.as_str(), "CREATE" | "ALTER" | "DROP") {
        return None;
    }
    match s.word(1)?.as_str() {
        "EXTENSION" => {
            // The extension's name, after IF [NOT] EXISTS.
            let at = (2..s.tokens.len()).find(|i| {
                !matches!(s.word(*i).as_deref(), Some("IF" | "NOT" | "EXISTS"))
            })?;
            let name = match &s.tokens.get(at)?.0 {
                Tok::Word { text, quoted: true } => text.to_string(),
                Tok::Word { text, .. } => text.to_lowercase(),
                _ => "the_extension".to_string(),
            };
            Some(format!(
                "`{verb} EXTENSION {name}` acts on the whole database, not one tenant (the first tenant's schema would own the extension and the others would fail). Install extensions once, in a shared migration (migrations/shared/): `CREATE EXTENSION IF NOT EXISTS {name} SCHEMA extensions`, with [migrations] extensions_schema = \"extensions\" so that every tenant finds them"
            ))
        }
        "SCHEMA" => Some(format!(
            "`{verb} SCHEMA` acts outside the tenant's own schema; tenant migrations create objects in the tenant's schema only (objects for everyone go in migrations/shared/)"
        )),
        _ => None,
    }
}

fn outside_tenant(qualifier: &str, rules: &Rules<'_>) -> Option<String> {
    if rules.allowed.contains(&qualifier) {
        return None;
    }
    let why = if qualifier == rules.control_schema {
        "is tenantctl's control schema"
    } else if !rules.prefix.is_empty() && qualifier.starts_with(rules.prefix) {
        "has the tenant prefix, so it is some tenant's schema (a tenant's own objects are named without a schema)"
    } else if qualifier == "public" {
        "is shared by every tenant"
    } else {
        return None;
    };
    let allowed = if rules.allowed.is_empty() {
        String::new()
    } else {
        format!(
            "; the schemas a tenant migration may name are: {}",
            rules.allowed.join(", ")
        )
    };
    Some(format!(
        "`{qualifier}.…` names an object outside the tenant's schema: `{qualifier}` {why}. Name the tenant's objects without a schema, and put objects for everyone in migrations/shared/{allowed}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `path:line` of each finding.
    fn lines(found: &[String]) -> Vec<&str> {
        found
            .iter()
            .map(|f| f.split(": ").next().unwrap())
            .collect()
    }

    fn check(sql: &str, kind: SetKind) -> Vec<String> {
        let rules = Rules {
            kind,
            prefix: "tenant_",
            control_schema: "tenantctl",
            allowed: vec!["extensions"],
        };
        check_file(Path::new("V9__x.sql"), sql, &rules)
    }

    #[test]
    fn transaction_control_is_refused_outside_routine_bodies() {
        let found = check(
            "CREATE TABLE a (x int);\nCOMMIT;\nCREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;\nsavepoint s;\nROLLBACK TO SAVEPOINT s;\nrollback;\nSTART TRANSACTION;\nEND;",
            SetKind::Shared,
        );
        let lines: Vec<&str> = found.iter().map(|f| &f[..12]).collect();
        assert_eq!(
            lines,
            [
                "V9__x.sql:2:",
                "V9__x.sql:6:",
                "V9__x.sql:7:",
                "V9__x.sql:8:"
            ]
        );
        assert!(
            found[0].contains("`COMMIT` is transaction control"),
            "{found:?}"
        );
    }

    #[test]
    fn session_settings_are_refused_local_ones_are_not() {
        let found = check(
            "SET LOCAL statement_timeout = 0;\nSET search_path TO public;\nset role app;\nSET SESSION AUTHORIZATION x;\nRESET ALL;\nSET CONSTRAINTS ALL DEFERRED;",
            SetKind::Tenant,
        );
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found[0].starts_with("V9__x.sql:2: `SET SEARCH_PATH TO`"),
            "{found:?}"
        );
    }

    #[test]
    fn what_cannot_run_in_a_transaction_needs_the_directive() {
        let sql = "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"Big\" ON t (x);\n\
                   create index concurrently small on t (y);\nCREATE INDEX CONCURRENTLY ON t (z);\n\
                   DROP INDEX CONCURRENTLY old;\nREINDEX (VERBOSE) INDEX CONCURRENTLY i;\nVACUUM t;\n\
                   CREATE INDEX plain ON t (x);\nSELECT 'CREATE INDEX CONCURRENTLY x';";
        let found = check(sql, SetKind::Tenant);
        assert_eq!(
            lines(&found),
            [
                "V9__x.sql:1",
                "V9__x.sql:2",
                "V9__x.sql:3",
                "V9__x.sql:4",
                "V9__x.sql:5",
                "V9__x.sql:6"
            ],
            "{found:#?}"
        );
        let with = format!("{NO_TRANSACTION}\n{sql}");
        assert!(
            check(&with, SetKind::Tenant).is_empty(),
            "{:?}",
            check(&with, SetKind::Tenant)
        );
        assert_eq!(concurrent_index_names(sql), ["Big", "small"]);
        // The directive in a shared migration is refused.
        assert_eq!(check(&with, SetKind::Shared).len(), 1);
    }

    #[test]
    fn an_enum_value_is_not_used_in_the_transaction_that_adds_it() {
        let found = check(
            "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'great';\nUPDATE t SET m = 'ok';\nUPDATE t SET m = 'great';",
            SetKind::Tenant,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("V9__x.sql:3: uses the enum value 'great' added on line 1"));
        let found = check(
            &format!(
                "{NO_TRANSACTION}\nALTER TYPE mood ADD VALUE 'great';\nUPDATE t SET m = 'great';"
            ),
            SetKind::Tenant,
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn tenant_migrations_stay_in_their_schema() {
        let sql = "CREATE EXTENSION IF NOT EXISTS ltree;\nCREATE SCHEMA x;\nCREATE TABLE public.post (id int);\n\
                   INSERT INTO \"tenant_other\".t SELECT t.id FROM tasks t;\nSELECT extensions.ltree_in('a');\n\
                   CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$\nDELETE FROM tenantctl.runs\n$$;\n\
                   CREATE TABLE paths (p extensions.ltree, plan int REFERENCES extensions.plans (id));\n\
                   CREATE INDEX i ON extensions.plans (id);";
        let found = check(sql, SetKind::Tenant);
        assert_eq!(
            lines(&found),
            [
                "V9__x.sql:1",
                "V9__x.sql:2",
                "V9__x.sql:3",
                "V9__x.sql:4",
                "V9__x.sql:7",
                "V9__x.sql:10"
            ],
            "{found:#?}"
        );
        // The same in a shared migration is fine.
        assert!(check(sql, SetKind::Shared).is_empty());
    }
}
