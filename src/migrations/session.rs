//! What a migration could leave on the connection it ran on, beyond its transaction, in the
//! forms that can be seen in the file: refused before any connection, each with its fix.
//! (A literal session `SET`/`RESET` is [`super::rules`]' own rule; what cannot be seen,
//! dynamic SQL, is caught at run time by the guard before COMMIT and the session reset
//! between schemas: see `engine::session`.)

use super::scan::{statements, Statement, Tok};

/// Settings that move a migration out of its tenant or its role: refused in any form, also in
/// a no-transaction file (where other settings are fine: tenantctl resets them after it).
const MOVING: &[&str] = &["role", "search_path", "session_authorization"];

/// `(line, message)` for each way `s` would change the session: in the statement, in the
/// body of a `DO` block (which runs now; a function's body runs when it is called), and in
/// the SQL strings such a block `EXECUTE`s.
pub fn session_state(s: &Statement<'_>, no_tx: bool) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    check(s, no_tx, &mut out);
    if s.word(0).as_deref() == Some("DO") {
        for inner in s.bodies() {
            check(&inner, no_tx, &mut out);
            for (t, line) in &inner.tokens {
                let Tok::Str(text) = t else { continue };
                for dynamic in statements(text).unwrap_or_default() {
                    // EXECUTE 'SET ROLE …': the literal forms too.
                    if let Some(msg) = super::rules::session_setting(&dynamic, no_tx) {
                        out.push((*line, msg));
                    }
                    let mut found = Vec::new();
                    check(&dynamic, no_tx, &mut found);
                    out.extend(found.into_iter().map(|(_, m)| (*line, m)));
                }
            }
        }
    }
    out
}

fn check(s: &Statement<'_>, no_tx: bool, out: &mut Vec<(usize, String)>) {
    let w = |i: usize| s.word(i);
    match w(0).as_deref() {
        Some("SET") if w(1).as_deref() == Some("LOCAL") => {
            if matches!(w(2).as_deref(), Some("ROLE" | "SESSION")) {
                out.push((s.line, role_message(&s.head(4))));
            }
        }
        Some("PREPARE") if w(1).as_deref() != Some("TRANSACTION") => out.push((
            s.line,
            "`PREPARE` leaves a prepared statement on the connection: the next tenant's run of this migration fails with \"already exists\". Run the statement itself (or EXECUTE it in a DO block)".into(),
        )),
        Some("LISTEN") => out.push((
            s.line,
            "`LISTEN` leaves the connection listening: the next tenants' transactions on it would receive the channel's notifications. A migration has no use for it: remove it".into(),
        )),
        Some("DISCARD") => out.push((
            s.line,
            "`DISCARD` throws away the session tenantctl set up for this schema (and cannot run in a transaction): remove it; tenantctl resets the session between schemas itself".into(),
        )),
        Some("CREATE") if matches!(w(1).as_deref(), Some("TEMP" | "TEMPORARY")) => {
            let on_commit_drop = s.tokens.windows(3).any(|win| {
                matches!(win, [(Tok::Word { text: a, .. }, _), (Tok::Word { text: b, .. }, _), (Tok::Word { text: c, .. }, _)]
                    if a.eq_ignore_ascii_case("ON") && b.eq_ignore_ascii_case("COMMIT") && c.eq_ignore_ascii_case("DROP"))
            });
            if !(on_commit_drop && w(2).as_deref() == Some("TABLE")) {
                out.push((
                    s.line,
                    format!("`{}` outlives the transaction on the connection: the next tenant's run of this migration fails with \"already exists\". Add ON COMMIT DROP (a temporary table), or use an ordinary object", s.head(3)),
                ));
            }
        }
        Some("UPDATE") if names_pg_settings(s, 1) => out.push((s.line, settings_message("UPDATE pg_settings"))),
        Some("INSERT") if w(1).as_deref() == Some("INTO") && names_pg_settings(s, 2) => {
            out.push((s.line, settings_message("INSERT INTO pg_settings")))
        }
        _ => {}
    }
    calls(s, no_tx, out);
}

/// `pg_settings` or `pg_catalog.pg_settings` at token `i`.
fn names_pg_settings(s: &Statement<'_>, i: usize) -> bool {
    match s.word(i).as_deref() {
        Some("PG_SETTINGS") => true,
        Some("PG_CATALOG") => s.word(i + 2).as_deref() == Some("PG_SETTINGS"),
        _ => false,
    }
}

fn settings_message(what: &str) -> String {
    format!("`{what}` sets the session, not the transaction: it would outlive this schema's transaction and reach the next tenant on the same connection. Write `SET LOCAL …` or `set_config(…, true)`, which end with the transaction")
}

fn role_message(what: &str) -> String {
    format!("`{what}` makes what follows run as another role: the objects it creates belong to that role, and tenantctl's bookkeeping (as the role it connects with) would fail or run as that role. tenantctl runs migrations as the role it connects with: grant that role what the migration needs instead")
}

/// Function calls that change the session: `set_config(name, value, is_local)` whose third
/// argument is not literally `true`, and session-level advisory locks.
fn calls(s: &Statement<'_>, no_tx: bool, out: &mut Vec<(usize, String)>) {
    for (i, (t, line)) in s.tokens.iter().enumerate() {
        let Tok::Word {
            text,
            quoted: false,
        } = t
        else {
            continue;
        };
        if !matches!(s.tokens.get(i + 1), Some((Tok::LParen, _))) {
            continue;
        }
        let name = text.to_ascii_lowercase();
        match name.as_str() {
            "set_config" => {
                let args = arguments(s, i + 1);
                let setting = args.first().and_then(|a| match a.as_slice() {
                    [Tok::Str(v)] => Some(v.to_ascii_lowercase()),
                    _ => None,
                });
                let local = matches!(args.get(2).map(Vec::as_slice), Some([Tok::Word { text, quoted: false }]) if text.eq_ignore_ascii_case("true"));
                let moving = setting.as_deref().filter(|n| MOVING.contains(n));
                if let Some(setting) = moving.filter(|n| *n != "search_path") {
                    out.push((*line, role_message(&format!("set_config('{setting}', …)"))));
                } else if moving.is_some() {
                    out.push((
                        *line,
                        "`set_config('search_path', …)` moves what follows out of the tenant's schema (its objects would land elsewhere while the history says they are in the tenant). tenantctl sets the search path for each schema: name nothing, or qualify with the shared or extensions schema".into(),
                    ));
                } else if !local && !no_tx {
                    out.push((
                        *line,
                        "`set_config(…)` without `true` as its third argument sets the session, not the transaction: it would outlive this schema's transaction and reach the next tenant on the same connection. Write `set_config(name, value, true)`, which ends with the transaction".into(),
                    ));
                }
            }
            "pg_advisory_lock" | "pg_advisory_lock_shared" | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared" => out.push((
                *line,
                format!("`{name}` takes a session lock that outlives the transaction: the connection would hold it while it migrates the next tenants. Use `{}`, released at COMMIT", name.replace("advisory_lock", "advisory_xact_lock")),
            )),
            _ => {}
        }
    }
}

/// The arguments of the call whose `(` is token `open`: each argument's tokens.
fn arguments<'a>(s: &'a Statement<'a>, open: usize) -> Vec<Vec<Tok<'a>>> {
    let mut args = vec![Vec::new()];
    let mut depth = 0i32;
    for (t, _) in s.tokens.iter().skip(open) {
        match t {
            Tok::LParen => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            Tok::RParen => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Comma if depth == 1 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        args.last_mut().expect("one").push(t.clone());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sql: &str, no_tx: bool) -> Vec<usize> {
        let mut out = Vec::new();
        for s in statements(sql).unwrap() {
            out.extend(session_state(&s, no_tx).into_iter().map(|(l, _)| l));
        }
        out
    }

    #[test]
    fn what_outlives_the_transaction_is_seen() {
        let sql = "SELECT set_config('work_mem', '77kB', false);\n\
                   SELECT pg_catalog.set_config('search_path', 'public', false);\n\
                   SELECT set_config('app.x', '1', true);\n\
                   DO $$ BEGIN PERFORM set_config('role', 'other', true); END $$;\n\
                   DO $$ BEGIN EXECUTE 'SET ROLE other'; END $$;\n\
                   UPDATE pg_settings SET setting = '1MB' WHERE name = 'work_mem';\n\
                   SET LOCAL ROLE other;\n\
                   PREPARE p AS SELECT 1;\n\
                   LISTEN ch;\n\
                   SELECT pg_advisory_lock(1);\n\
                   SELECT pg_advisory_xact_lock(1);\n\
                   CREATE TEMP TABLE t (id int);\n\
                   CREATE TEMPORARY TABLE u (id int) ON COMMIT DROP;\n\
                   DISCARD ALL;\n\
                   CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ SELECT set_config('app.t', 'x', false) $$;\n\
                   SET LOCAL work_mem = '1MB';\n\
                   SELECT 'set_config(''a'', ''b'', false)';\n";
        assert_eq!(found(sql, false), [1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 14]);
        // In a no-transaction file settings are reset after the file: only what moves it.
        let sql = "SELECT set_config('maintenance_work_mem', '1GB', false);\nSELECT set_config('search_path', 'public', false);\n";
        assert_eq!(found(sql, true), [2]);
    }
}
