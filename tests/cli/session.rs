//! Nothing a migration does to its session reaches the next tenant: the forms that can be
//! seen are refused before any connection; dynamic SQL is caught by the guard before COMMIT
//! and undone by the reset every schema's transaction starts with. Jobs 2 and 30 tenants, so
//! each connection serves many.

use crate::support::*;

fn rows(p: &Project, sql: &str) -> Vec<(String, String)> {
    p.db()
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A role of this test's own (roles are cluster-wide; tests run in parallel).
fn a_role(p: &Project, prefix: &str) -> String {
    let role = format!(
        "{prefix}_{}",
        p.url.rsplit('/').next().unwrap().replace(['-', '.'], "_")
    );
    p.db()
        .batch_execute(&format!("CREATE ROLE {role}"))
        .unwrap();
    role
}

/// (schema, owner) of every table named `table`, by schema.
fn owners(p: &Project, table: &str) -> Vec<(String, String)> {
    p.db()
        .query(
            "SELECT n.nspname::text, r.rolname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_roles r ON r.oid = c.relowner WHERE c.relname = $1 ORDER BY 1",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn what_a_migration_does_to_its_session_stays_with_its_tenant() {
    let p = Project::new("session_leaks", 1);
    let other = a_role(&p, "other");
    p.create_tenants(30);
    // Dynamic forms: no file shows them, so they pass migration check.
    p.add_migration(
        "V2__sneaky.sql",
        &format!(
            "CREATE FUNCTION sneaky() RETURNS void LANGUAGE plpgsql AS $$ BEGIN\n\
             IF current_schema() = 'tenant_t0001' THEN EXECUTE 'SET ' || 'ROLE {other}'; END IF;\n\
             IF current_schema() = 'tenant_t0002' THEN EXECUTE 'SELECT set_' || 'config(''search_path'', ''public'', false)'; END IF;\n\
             IF current_schema() = 'tenant_t0003' THEN EXECUTE 'SET work' || '_mem = ''77kB'''; END IF;\n\
             IF current_schema() = 'tenant_t0004' THEN EXECUTE 'PREP' || 'ARE p AS SELECT 1'; END IF;\n\
             IF current_schema() = 'tenant_t0005' THEN EXECUTE 'SELECT pg_advisory' || '_lock(4242)'; END IF;\n\
             EXECUTE 'CREATE TEMP' || ' TABLE scratch (id int)';\n\
             END $$;\nSELECT sneaky();\n"
        ),
    );
    p.add_migration(
        "V3__seen.sql",
        "CREATE TABLE seen AS SELECT current_user::text AS who, current_setting('work_mem') AS work_mem, \
         (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND pid = pg_backend_pid()) AS held;\n",
    );
    p.run(&["migration", "check"], 0);
    let out = p.run(&["migrate", "--all", "--jobs", "2"], 1);
    let text = stdout(&out);
    assert!(text.contains("27 migrated, 3 failed"), "{text}");
    // t0001 runs as the other role from then on: its next statement is refused (that role may
    // not create in the schema), or else the guard names the role.
    assert!(
        text.contains("t0001 (schema tenant_t0001): V3__seen failed at line 1: ERROR: no schema has been selected")
            || text.contains(&format!("the migration left the session running as role {other}")),
        "{text}"
    );
    assert!(
        text.contains("the migration left prepared statement(s) p on the session"),
        "{text}"
    );
    assert!(
        text.contains("the migration changed search_path to public"),
        "{text}"
    );
    // Rolled back: neither got V2 or V3.
    let v = p.versions();
    assert_eq!(
        (v["t0001"], v["t0002"], v["t0004"]),
        (Some(1), Some(1), Some(1))
    );
    assert!(!p.schema_has_table("public", "seen"));
    // Every table was created by the migrating role, in its own tenant's schema.
    let owners = owners(&p, "seen");
    assert_eq!(owners.len(), 27, "{owners:?}");
    assert!(owners.iter().all(|(_, r)| r == "postgres"), "{owners:?}");
    // No later tenant saw the role, the setting or the lock of another.
    let seen = rows(
        &p,
        &(1..30)
            .filter(|i| ![1, 2, 4].contains(i))
            .map(|i| {
                format!(
                    "SELECT 't{i:04}'::text || ':' || who, work_mem || ':' || held FROM tenant_t{i:04}.seen"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL "),
    );
    for (who, what) in &seen {
        assert!(who.ends_with(":postgres"), "{seen:?}");
        if !who.starts_with("t0003:") && !who.starts_with("t0005:") {
            assert_eq!(what, "4MB:0", "{who}: {seen:?}");
        }
    }
}

#[test]
fn a_prepared_statement_is_named_and_a_no_transaction_role_change_is_caught() {
    let p = Project::new("session_prepare", 1);
    let other = a_role(&p, "nt");
    p.create_tenants(8);
    p.add_migration(
        "V2__prepare.sql",
        "DO $$ BEGIN IF current_schema() = 'tenant_t0004' THEN EXECUTE 'PREP' || 'ARE p AS SELECT 1'; END IF; END $$;\nCREATE TABLE a (id int);\n",
    );
    let text = stdout(&p.run(&["migrate", "--all", "--jobs", "2"], 1));
    assert!(
        text.contains("7 migrated, 1 failed")
            && text.contains("the migration left prepared statement(s) p on the session"),
        "{text}"
    );
    p.add_migration(
        "V3__role_step.sql",
        &format!(
            "-- tenantctl:no-transaction\nDO $$ BEGIN IF current_schema() = 'tenant_t0002' THEN EXECUTE 'SET ' || 'ROLE {other}'; END IF; END $$;\n"
        ),
    );
    p.add_migration("V4__b.sql", "CREATE TABLE b (id int);\n");
    // t0004 still fails at V2; t0002 at the step.
    let text = stdout(&p.run(&["migrate", "--all", "--jobs", "2"], 1));
    assert!(
        text.contains("6 migrated, 2 failed")
            && text.contains(&format!(
                "the no-transaction migration left the session running as role {other}"
            )),
        "{text}"
    );
    // The others' tables are the migrating role's.
    let owners = owners(&p, "b");
    assert_eq!(owners.len(), 6, "{owners:?}");
    assert!(owners.iter().all(|(_, r)| r == "postgres"), "{owners:?}");
}

#[test]
fn the_forms_that_can_be_seen_are_refused_before_any_connection() {
    let p = Project::new("session_static", 1);
    p.create_tenants(2);
    let before = p.fingerprint();
    for (sql, says) in [
        (
            "SELECT set_config('work_mem', '77kB', false);\n",
            "set_config(name, value, true)",
        ),
        (
            "DO $$ BEGIN PERFORM pg_catalog.set_config('role', 'x', true); END $$;\n",
            "set_config('role', …)",
        ),
        (
            "UPDATE pg_settings SET setting = '1MB' WHERE name = 'work_mem';\n",
            "UPDATE pg_settings",
        ),
        ("SET LOCAL ROLE x;\n", "SET LOCAL ROLE"),
        ("PREPARE q AS SELECT 1;\n", "PREPARE"),
        ("LISTEN ch;\n", "LISTEN"),
        ("SELECT pg_advisory_lock(1);\n", "pg_advisory_xact_lock"),
        ("CREATE TEMP TABLE t (id int);\n", "ON COMMIT DROP"),
        ("DISCARD TEMP;\n", "DISCARD"),
    ] {
        p.add_migration("V2__leak.sql", sql);
        let out = p.run(&["migrate", "--all"], 2);
        assert!(
            stderr(&out).contains("V2__leak.sql:1") && stderr(&out).contains(says),
            "{sql}: {}",
            stderr(&out)
        );
        let out = p.run(&["migration", "check"], 1);
        assert!(
            stdout(&out).contains("session-state") || stdout(&out).contains("session-setting"),
            "{sql}"
        );
    }
    assert_eq!(before, p.fingerprint());
    // The transaction's own forms pass.
    p.add_migration(
        "V2__leak.sql",
        "SELECT set_config('work_mem', '77kB', true);\nSELECT pg_advisory_xact_lock(1);\nCREATE TEMP TABLE t (id int) ON COMMIT DROP;\n",
    );
    p.run(&["migrate", "--all"], 0);
}
