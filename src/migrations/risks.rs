//! What is risky on a fleet of live tenants, statement by statement: locks that stop an
//! application's writes on every tenant for as long as a table takes to scan or rewrite,
//! changes that break the application still running during the rollout, and statements that
//! cannot succeed on a tenant with ordinary data. Each rule has a level (see [`RULES`]):
//! errors gate `migrate` and `tenant create`, warnings are printed. A table created earlier
//! in the same file is empty, so what would lock or rewrite it costs nothing and is exempt.

use super::lint::Level;
use super::scan::{for_each_statement, Statement, Tok};

/// Every rule of `migration check` beyond what `migrate` refuses outright, with its level:
/// the table the docs print.
pub const RULES: &[(&str, Level)] = &[
    ("add-column-not-null-without-default", Level::Error),
    ("empty-migration", Level::Error),
    ("index-without-concurrently", Level::Warning),
    ("drop-index-without-concurrently", Level::Warning),
    ("constraint-missing-not-valid", Level::Warning),
    ("adding-foreign-key", Level::Warning),
    ("set-not-null", Level::Warning),
    ("unique-without-index", Level::Warning),
    ("volatile-default", Level::Warning),
    ("alter-column-type", Level::Warning),
    ("drop-column", Level::Warning),
    ("drop-table", Level::Warning),
    ("rename", Level::Warning),
    ("missing-down", Level::Warning),
];

/// A rule's level (errors for unknown names: they are `migrate`'s own refusals).
pub fn level_of(rule: &str) -> Level {
    RULES
        .iter()
        .find(|(r, _)| *r == rule)
        .map_or(Level::Error, |r| r.1)
}

/// (rule, message, fix).
pub type Risk = (&'static str, String, &'static str);

/// Functions whose value differs per row: a default calling one is computed for every
/// existing row, so adding such a column rewrites the table.
const VOLATILE: &[&str] = &[
    "RANDOM",
    "GEN_RANDOM_UUID",
    "UUID_GENERATE_V1",
    "UUID_GENERATE_V4",
    "CLOCK_TIMESTAMP",
    "TIMEOFDAY",
    "NEXTVAL",
    "TXID_CURRENT",
];

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
pub fn created_table(s: &Statement<'_>) -> Option<String> {
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

/// The (possibly schema-qualified) name starting at token `i`, skipping `IF EXISTS` and
/// `ONLY`: the object's own name, and the index after it.
fn object_at(s: &Statement<'_>, from: usize) -> Option<(String, usize)> {
    let mut i = from;
    while matches!(s.word(i).as_deref(), Some("IF" | "EXISTS" | "ONLY")) {
        i += 1;
    }
    let mut name = name_at(s, i)?;
    if matches!(s.tokens.get(i + 1), Some((Tok::Dot, _))) {
        name = name_at(s, i + 2)?;
        i += 2;
    }
    Some((name, i + 1))
}

/// The names of a `DROP TABLE|INDEX [CONCURRENTLY] [IF EXISTS] a, b …`, from token `from`.
fn dropped_names(s: &Statement<'_>, from: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut i = from;
    while let Some((name, next)) = object_at(s, i) {
        names.push(name);
        match s.tokens.get(next) {
            Some((Tok::Comma, _)) => i = next + 1,
            _ => break,
        }
    }
    names
}

/// `` `a`, `b` ``.
fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fleet risks of one statement; `created`: tables made earlier in the same file.
pub fn risks(s: &Statement<'_>, created: &[String]) -> Vec<Risk> {
    let mut out = Vec::new();
    match s.word(0).as_deref() {
        Some("CREATE") => create_index(s, created, &mut out),
        Some("DROP") if s.word(1).as_deref() == Some("TABLE") => {
            let names = dropped_names(s, 2);
            let fresh = !names.is_empty() && names.iter().all(|n| created.contains(n));
            if !fresh {
                out.push((
                    "drop-table",
                    format!(
                        "`DROP TABLE` of {} deletes every tenant's data in it, and breaks application code that still uses it",
                        if names.is_empty() { "a table".to_string() } else { quoted_list(&names) }
                    ),
                    "stop using the table in a deploy first, then drop it in a later migration",
                ));
            }
        }
        Some("DROP")
            if s.word(1).as_deref() == Some("INDEX")
                && s.word(2).as_deref() != Some("CONCURRENTLY") =>
        {
            out.push((
                "drop-index-without-concurrently",
                format!(
                    "`DROP INDEX` of {} blocks every read and write of its table until it is done, on every tenant",
                    quoted_list(&dropped_names(s, 2))
                ),
                "drop it with DROP INDEX CONCURRENTLY IF EXISTS in a no-transaction migration (`-- tenantctl:no-transaction`)",
            ));
        }
        Some("ALTER") if s.word(1).as_deref() == Some("TABLE") => alter_table(s, created, &mut out),
        _ => {}
    }
    out
}

fn create_index(s: &Statement<'_>, created: &[String], out: &mut Vec<Risk>) {
    let at = if s.word(1).as_deref() == Some("UNIQUE") {
        2
    } else {
        1
    };
    if s.word(at).as_deref() != Some("INDEX") || s.word(at + 1).as_deref() == Some("CONCURRENTLY") {
        return;
    }
    let on = (0..s.tokens.len()).position(|i| s.word(i).as_deref() == Some("ON"));
    let table = on.and_then(|on| object_at(s, on + 1)).map(|t| t.0);
    if table.as_ref().is_some_and(|t| created.contains(t)) {
        return;
    }
    out.push((
        "index-without-concurrently",
        format!(
            "`{}` blocks every write to {} for as long as the index takes to build, on every tenant",
            written(s, at + 2),
            table.map_or("the table".to_string(), |t| format!("`{t}`"))
        ),
        "build it with CREATE INDEX CONCURRENTLY IF NOT EXISTS in a no-transaction migration (`-- tenantctl:no-transaction`)",
    ));
}

fn alter_table(s: &Statement<'_>, created: &[String], out: &mut Vec<Risk>) {
    let Some((table, start)) = object_at(s, 2) else {
        return;
    };
    if created.contains(&table) {
        return;
    }
    for (begin, end) in actions(s, start) {
        let w = |i: usize| if i < end { s.word(i) } else { None };
        let has = |word: &str| (begin..end).any(|i| s.word(i).as_deref() == Some(word));
        let pair = |a: &str, b: &str| {
            (begin..end)
                .any(|i| s.word(i).as_deref() == Some(a) && s.word(i + 1).as_deref() == Some(b))
        };
        match w(begin).as_deref() {
            Some("ADD") => {
                // ADD [CONSTRAINT name] kind …, or ADD [COLUMN] [IF NOT EXISTS] name type …
                let mut k = begin + 1;
                if w(k).as_deref() == Some("CONSTRAINT") {
                    k += 2;
                }
                match w(k).as_deref() {
                    Some("CHECK") if !pair("NOT", "VALID") => out.push((
                        "constraint-missing-not-valid",
                        format!("adding a CHECK constraint to `{table}` reads every row under a lock that blocks its writes, on every tenant"),
                        "add it with NOT VALID (instant), then VALIDATE CONSTRAINT in a later migration (which lets writes go on)",
                    )),
                    Some("FOREIGN") if !pair("NOT", "VALID") => out.push((
                        "adding-foreign-key",
                        format!("adding a FOREIGN KEY to `{table}` reads every row while it blocks writes to `{table}` and to the table it references, on every tenant"),
                        "add it with NOT VALID (a brief lock), then VALIDATE CONSTRAINT in a later migration",
                    )),
                    Some("UNIQUE" | "PRIMARY") if !pair("USING", "INDEX") => out.push((
                        "unique-without-index",
                        format!("adding a UNIQUE or PRIMARY KEY constraint to `{table}` builds its index while every read and write of the table waits, on every tenant"),
                        "build the index with CREATE UNIQUE INDEX CONCURRENTLY in a no-transaction migration first, then ADD CONSTRAINT … UNIQUE USING INDEX",
                    )),
                    Some("CHECK" | "FOREIGN" | "UNIQUE" | "PRIMARY" | "EXCLUDE") => {}
                    _ => add_column(s, (begin, end), &table, out),
                }
            }
            Some("ALTER") if has("TYPE") => out.push((
                "alter-column-type",
                format!("changing a column's type rewrites `{table}` under an ACCESS EXCLUSIVE lock (no reads, no writes) on every tenant"),
                "add a new column, fill it, move the application over, then drop the old one",
            )),
            Some("ALTER") if pair("SET", "NOT") => out.push((
                "set-not-null",
                format!("SET NOT NULL reads every row of `{table}` while nothing can read or write it, on every tenant"),
                "add CHECK (column IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it in a later migration, then SET NOT NULL (PostgreSQL skips the scan when a valid CHECK proves it)",
            )),
            Some("DROP")
                if !matches!(
                    w(begin + 1).as_deref(),
                    Some("CONSTRAINT" | "DEFAULT" | "NOT" | "IDENTITY" | "EXPRESSION")
                ) =>
            {
                out.push((
                    "drop-column",
                    format!("dropping a column of `{table}` deletes its data on every tenant and breaks application code that still reads it"),
                    "stop using the column in a deploy first, then drop it in a later migration",
                ))
            }
            Some("RENAME") => out.push((
                "rename",
                format!("renaming in `{table}` breaks the application code still running against the old name during the rollout"),
                "add the new name (a column or a view) first, move the application over, then drop the old name later",
            )),
            _ => {}
        }
    }
}

/// `ADD [COLUMN] …` of an existing table.
fn add_column(s: &Statement<'_>, (begin, end): (usize, usize), table: &str, out: &mut Vec<Risk>) {
    let has = |word: &str| (begin..end).any(|i| s.word(i).as_deref() == Some(word));
    let not_null = (begin..end)
        .any(|i| s.word(i).as_deref() == Some("NOT") && s.word(i + 1).as_deref() == Some("NULL"));
    if not_null && !has("DEFAULT") && !has("GENERATED") && !has("SERIAL") && !has("BIGSERIAL") {
        out.push((
            "add-column-not-null-without-default",
            format!("a NOT NULL column without a default cannot be added to `{table}` on a tenant that has rows"),
            "give it a DEFAULT, or add it nullable, fill it, then SET NOT NULL in a later migration",
        ));
    }
    if has("REFERENCES") {
        out.push((
            "adding-foreign-key",
            format!("a column with REFERENCES blocks writes to `{table}` and to the table it references while it is added, on every tenant"),
            "add the column without it, then the constraint with NOT VALID, and VALIDATE CONSTRAINT in a later migration",
        ));
    }
    let default_at = (begin..end).position(|i| s.word(i).as_deref() == Some("DEFAULT"));
    let volatile = default_at.is_some_and(|d| {
        (begin + d..end).any(|i| s.word(i).is_some_and(|w| VOLATILE.contains(&w.as_str())))
    });
    let rewrites = volatile
        || has("SERIAL")
        || has("BIGSERIAL")
        || has("SMALLSERIAL")
        || (has("GENERATED") && has("STORED"));
    if rewrites {
        out.push((
            "volatile-default",
            format!("a column whose value is computed per row (a volatile default, a serial, a stored generated column) rewrites `{table}` under an ACCESS EXCLUSIVE lock, on every tenant"),
            "add the column without a default (or with a constant one), fill it in batches, then SET DEFAULT for new rows",
        ));
    }
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

/// The rules the statement of `sql` that covers `line` (1-based: the last statement starting
/// at or before it) breaks, as a tenant migration: to tell why a statement failed.
pub fn rules_at(sql: &str, line: usize) -> Vec<&'static str> {
    let mut created: Vec<String> = Vec::new();
    let mut found = Vec::new();
    let _ = for_each_statement(sql, |s| {
        if s.line <= line {
            found = risks(&s, &created).into_iter().map(|r| r.0).collect();
        }
        if let Some(t) = created_table(&s) {
            created.push(t);
        }
    });
    found
}
