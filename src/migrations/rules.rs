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

use std::path::Path;

use super::scan::{for_each_statement, Statement};
use super::{MigrationSet, MigrationSetError};

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
    let at = |line: usize, msg: String| format!("{}:{line}: {msg}", path.display());
    let mut out = Vec::new();
    let scanned = for_each_statement(sql, |s| {
        if let Some(msg) = transaction_control(&s) {
            out.push(at(s.line, msg));
        }
        if let Some(msg) = session_setting(&s) {
            out.push(at(s.line, msg));
        }
        if rules.kind == SetKind::Tenant {
            if let Some(msg) = database_wide(&s) {
                out.push(at(s.line, msg));
            }
            let bodies = s.bodies();
            for inner in std::iter::once(&s).chain(&bodies) {
                for (q, line) in inner.qualifiers() {
                    if let Some(msg) = outside_tenant(&q, rules) {
                        out.push(at(line, msg));
                    }
                }
                if let Some((q, line)) = inner.ddl_target_qualifier() {
                    if rules.allowed.contains(&q.as_str()) {
                        out.push(at(
                            line,
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

fn session_setting(s: &Statement) -> Option<String> {
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
        "EXTENSION" => Some(format!(
            "`{verb} EXTENSION` acts on the whole database, not one tenant (the first tenant's schema would own the extension and the others would fail). Install extensions once, in a shared migration (migrations/shared/): `CREATE EXTENSION IF NOT EXISTS ltree SCHEMA extensions`, with [migrations] extensions_schema = \"extensions\" so that every tenant finds them"
        )),
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
    fn tenant_migrations_stay_in_their_schema() {
        let sql = "CREATE EXTENSION IF NOT EXISTS ltree;\nCREATE SCHEMA x;\nCREATE TABLE public.post (id int);\n\
                   INSERT INTO \"tenant_other\".t SELECT t.id FROM tasks t;\nSELECT extensions.ltree_in('a');\n\
                   CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$\nDELETE FROM tenantctl.runs\n$$;\n\
                   CREATE TABLE paths (p extensions.ltree, plan int REFERENCES extensions.plans (id));\n\
                   CREATE INDEX i ON extensions.plans (id);";
        let found = check(sql, SetKind::Tenant);
        let lines: Vec<&str> = found
            .iter()
            .map(|f| f.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            lines,
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
