//! Hostile input, isolation, privileges, secrets and the audit trail.

use crate::support::*;
use predicates::prelude::*;
use proptest::prelude::*;

#[test]
fn accepted_ids_round_trip_exactly_through_pg_namespace() {
    let p = Project::new("id_roundtrip", 1);
    let db = std::cell::RefCell::new(p.db());
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 300,
        ..Default::default()
    });
    let strategy = prop_oneof![
        "\\PC{0,70}",
        "[a-z][a-z0-9_]{0,70}",
        "[a-zA-Z0-9_$\"';-]{1,20}"
    ];
    runner
        .run(&strategy, |id| {
            if let Ok(t) = tenantctl::tenant::Tenant::parse(&id, "tenant_", "tenantctl") {
                let mut db = db.borrow_mut();
                db.batch_execute(&format!("CREATE SCHEMA {}", t.quoted_schema()))
                    .unwrap();
                let found: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                        &[&t.schema()],
                    )
                    .unwrap()
                    .get(0);
                // The same name unquoted resolves to the same schema: no case folding applies.
                let unquoted: i64 = db
                    .query_one(
                        &format!(
                            "SELECT count(*) FROM pg_namespace WHERE oid = '{}'::regnamespace",
                            t.schema()
                        ),
                        &[],
                    )
                    .unwrap()
                    .get(0);
                db.batch_execute(&format!("DROP SCHEMA {}", t.quoted_schema()))
                    .unwrap();
                prop_assert_eq!((found, unquoted), (1, 1), "{}", id);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn hostile_ids_table() {
    let p = Project::new("hostile_ids", 2);
    p.cmd().args(["tenant", "create", "ok"]).assert().success();
    let before = p.fingerprint();
    let long = "x".repeat(64 - "tenant_".len());
    let cases: &[(&str, &str)] = &[
        (
            "acme\"; DROP SCHEMA tenant_ok CASCADE; --",
            "only lowercase letters",
        ),
        ("acme;", "only lowercase letters"),
        ("a--b", "only lowercase letters"),
        ("a$$b", "only lowercase letters"),
        ("a b", "only lowercase letters"),
        ("ACME", "only lowercase letters"),
        ("acmé", "only lowercase letters"),
        ("", "empty"),
        ("9lives", "must start with a lowercase letter"),
        (&long, "PostgreSQL allows at most 63"),
        ("acme__archived_1", "double underscore is reserved"),
        ("a'b", "only lowercase letters"),
    ];
    for (id, expect) in cases {
        for args in [
            &["tenant", "create"][..],
            &["migrate", "--tenant"][..],
            &["tenant", "drop", "--yes"][..],
        ] {
            let out = p.cmd().args(args).arg(id).output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?} {id:?}: {}",
                stderr(&out)
            );
            let err = stderr(&out);
            assert!(
                err.contains(expect) && err.contains("nothing was changed"),
                "{args:?} {id:?}: {err}"
            );
        }
    }
    p.write_config("[tenants]\nschema_prefix = \"\"");
    for id in [
        "public",
        "pg_toast",
        "information_schema",
        "tenantctl",
        "pg_x",
    ] {
        p.cmd()
            .args(["tenant", "create", id])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("reserved"));
    }
    assert_eq!(before, p.fingerprint(), "nothing changed");
}

#[test]
fn hostile_configs_table() {
    let p = Project::new("hostile_configs", 2);
    let before = p.fingerprint();
    let cases: &[(&str, &[&str])] = &[
        (
            "[database]\nurl = \"${TEST_DB_URL}\"\nurl2 = \"x\"",
            &["line 3", "url2"],
        ),
        ("[database]\nurl = 5", &["line 2", "url", "string"]),
        (
            "[database]\nurl = \"${TEST_DB_URL}\"\n[run]\nstatement_timeout = \"5 parsecs\"",
            &["line 4", "run.statement_timeout"],
        ),
        (
            "[database]\nurl = \"${TEST_DB_URL}\"\n[run]\ngrace_period = \"-1s\"",
            &["run.grace_period"],
        ),
        (
            "[database]\nurl = \"${TEST_DB_URL}\"\n[run]\nretries = 99",
            &["run.retries", "0 to 20"],
        ),
        (
            "[database]\nurl = \"${NOT_SET_ANYWHERE_42}\"",
            &["line 2", "database.url", "NOT_SET_ANYWHERE_42 is not set"],
        ),
        (
            "[database]\nurl = \"postgres://u:pw@host:99999999/db\"",
            &["database.url", "not a valid PostgreSQL connection string"],
        ),
        (
            "[database]\nurl = \"${TEST_DB_URL}\"\n[tenants]\nrole = \"{schema}-app\"",
            &["tenants.role"],
        ),
        (
            "[database]\nurl = \"${TEST_DB_URL}\"\n[tenants]\nrole = \"x_{nope}\"",
            &["tenants.role", "{nope}"],
        ),
        ("[[database]]\nurl = 1", &["tenants.toml"]),
        ("not toml at all", &["tenants.toml", "line 1"]),
    ];
    for (text, expect) in cases {
        std::fs::write(p.config_path(), text).unwrap();
        let out = p.cmd().args(["status"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        let err = stderr(&out);
        for e in *expect {
            assert!(err.contains(e), "{text}: expected {e:?} in {err}");
        }
        assert!(!err.contains(":pw@"), "{err}");
    }
    // Unreadable: a directory where the file should be.
    p.cmd()
        .args(["--config", "migrations", "status"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read config file"));
    assert_eq!(before, p.fingerprint());
}

#[test]
fn public_schema_objects_cannot_capture_migrations() {
    let p = Project::new("cve_2018_1058", 8);
    // Someone plants look-alikes in public: a function shadowing a built-in used by a
    // migration, and tables named like the tenant's.
    p.db()
        .batch_execute(
            "CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'captured'; END $$;
             CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '1999-01-01'::timestamptz $$;
             CREATE TABLE public.roles (name text);",
        )
        .unwrap();
    p.cmd()
        .args(["tenant", "create", "acme"])
        .assert()
        .success();
    p.add_migration("V9__uses_builtins.sql", "CREATE TABLE audit AS SELECT lower('ABC') AS l, now() > '2000-01-01' AS recent, (SELECT count(*) FROM roles) AS roles;");
    p.cmd().args(["migrate", "--all"]).assert().success();
    let (l, recent, roles): (String, bool, i64) = p
        .db()
        .query_one("SELECT l, recent, roles FROM tenant_acme.audit", &[])
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        (l.as_str(), recent, roles),
        ("abc", true, 3),
        "built-ins and the tenant's own tables were used"
    );
    let public_roles: i64 = p
        .db()
        .query_one("SELECT count(*) FROM public.roles", &[])
        .unwrap()
        .get(0);
    assert_eq!(public_roles, 0);
}

#[test]
fn tenant_roles_get_exactly_their_own_tables() {
    let p = Project::new("roles", 8);
    // Role names are cluster-wide: make them unique to this test's database.
    let tag = p.url.rsplit('/').next().unwrap().to_string();
    p.write_config(&format!("[tenants]\nrole = \"{tag}_{{id}}\""));
    p.cmd()
        .args(["tenant", "create", "acme", "globex"])
        .assert()
        .success();
    p.add_migration(
        "V9__invoices.sql",
        "CREATE TABLE invoices (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total int);\n",
    );
    p.cmd().args(["migrate", "--all"]).assert().success();
    let role = format!("{tag}_acme");
    let mut db = p.db();
    let can = |db: &mut postgres::Client, sql: &str| -> bool {
        let mut tx = db.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL ROLE \"{role}\""))
            .unwrap();
        let ok = tx.batch_execute(sql).is_ok();
        tx.rollback().unwrap();
        ok
    };
    let matrix: &[(&str, bool)] = &[
        ("SELECT * FROM tenant_acme.users", true),
        (
            "INSERT INTO tenant_acme.users (email, full_name) VALUES ('a@b', 'A')",
            true,
        ),
        ("UPDATE tenant_acme.tasks SET title = 'x'", true),
        ("DELETE FROM tenant_acme.projects", true),
        ("INSERT INTO tenant_acme.invoices (total) VALUES (1)", true),
        ("SELECT * FROM tenant_acme.project_summary", true),
        ("CREATE TABLE tenant_acme.mine (x int)", false),
        ("DROP TABLE tenant_acme.users", false),
        ("ALTER TABLE tenant_acme.users ADD COLUMN x int", false),
        ("TRUNCATE tenant_acme.users", false),
        ("SELECT * FROM tenant_globex.users", false),
        (
            "INSERT INTO tenant_globex.users (email, full_name) VALUES ('a@b', 'A')",
            false,
        ),
        ("SELECT * FROM tenant_acme.refinery_schema_history", false),
        ("DELETE FROM tenant_acme.refinery_schema_history", false),
        ("SELECT * FROM tenantctl.tenants", false),
        ("SELECT * FROM tenantctl.runs", false),
        ("UPDATE tenantctl.tenants SET version = 1", false),
        ("CREATE TABLE public.mine (x int)", false),
    ];
    for (sql, expected) in matrix {
        assert_eq!(can(&mut db, sql), *expected, "{role}: {sql}");
    }
    let login: bool = db
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .unwrap()
        .get(0);
    assert!(!login, "tenant roles cannot log in");
    // Dropping the tenant drops its role: the one recorded at creation, even if the template
    // has changed since.
    p.write_config(&format!("[tenants]\nrole = \"{tag}_renamed_{{id}}\""));
    p.cmd()
        .args(["tenant", "drop", "acme", "--yes"])
        .assert()
        .success();
    let roles: i64 = db
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0);
    assert_eq!(roles, 0);
    p.cmd()
        .args(["tenant", "drop", "globex", "--yes"])
        .assert()
        .success();
}

#[test]
fn drop_needs_confirmation_and_archive_keeps_the_data() {
    let p = Project::new("drop", 8);
    p.cmd()
        .args(["tenant", "create", "acme", "globex", "initech"])
        .assert()
        .success();
    p.db()
        .batch_execute("INSERT INTO tenant_globex.users (email, full_name) VALUES ('keep@me', 'K')")
        .unwrap();
    let before = p.fingerprint();
    p.cmd()
        .args(["tenant", "drop", "acme"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("without --yes"));
    p.cmd()
        .args(["tenant", "drop", "nosuch", "--yes"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not registered"));
    assert_eq!(before, p.fingerprint());

    p.cmd()
        .args(["tenant", "drop", "acme", "--yes"])
        .assert()
        .success();
    p.cmd()
        .args(["tenant", "drop", "globex", "--archive", "--yes"])
        .assert()
        .success();
    let mut db = p.db();
    let acme: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(acme, 0, "dropped");
    let archived: String = db
        .query_one(
            "SELECT archived_as FROM tenantctl.tenants WHERE id = 'globex' AND state = 'dropped'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(archived.starts_with("tenant_globex__arch_"), "{archived}");
    let kept: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM \"{archived}\".users WHERE email = 'keep@me'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "archived data is kept");
    // Dropped tenants are not migrated, listed as active, or flagged by --verify.
    p.add_migration("V9__x.sql", "CREATE TABLE x (n int);");
    p.cmd()
        .args(["migrate", "--all"])
        .assert()
        .success()
        .stdout(predicate::str::contains("1 migrated"));
    p.cmd().args(["status", "--verify"]).assert().success();
    // The id can be used again.
    p.cmd()
        .args(["tenant", "create", "acme"])
        .assert()
        .success();
    assert_eq!(p.versions()["acme"], Some(9));
}

#[test]
fn audit_trail_records_every_change() {
    let p = Project::new("audit", 8);
    p.cmd()
        .args(["tenant", "create", "acme", "globex"])
        .assert()
        .success();
    p.add_migration("V9__x.sql", "CREATE TABLE x (n int);");
    p.add_migration("V9__x.down.sql", "DROP TABLE x;");
    let url_with_pw = p.url.replace("postgres@", "postgres:Aud1t-Secret@");
    p.cmd()
        .args([
            "migrate",
            "--all",
            "--actor",
            "deploy-bot",
            "--database-url",
            &url_with_pw,
        ])
        .assert()
        .success();
    p.cmd()
        .args(["rollback", "--to", "8", "--tenant", "acme"])
        .assert()
        .success();
    p.cmd()
        .args(["tenant", "drop", "globex", "--yes", "--archive"])
        .assert()
        .success();
    p.cmd()
        .args(["migrate", "--all", "--dry-run"])
        .assert()
        .success();

    let out = p.cmd().args(["audit", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let commands: Vec<&str> = runs
        .iter()
        .map(|r| r["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        commands,
        [
            "tenant create",
            "migrate",
            "rollback",
            "tenant drop --archive"
        ],
        "a dry run is not a change"
    );
    assert_eq!(runs[1]["actor"], "deploy-bot");
    assert_eq!(runs[1]["state"], "succeeded");
    assert_eq!(runs[1]["counts"]["done"], 2);
    let line = runs[1]["command_line"].as_str().unwrap();
    assert!(
        line.contains("migrate --all --actor deploy-bot --database-url") && line.contains("***"),
        "{line}"
    );
    assert!(
        !out.stdout.windows(12).any(|w| w == b"Aud1t-Secret"),
        "password in the audit trail"
    );
    let stored: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM tenantctl.runs WHERE argv LIKE '%Aud1t-Secret%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "not stored either");
    assert!(runs[0]["actor"].as_str().unwrap().len() > 1);
    assert!(runs[0]["host"].as_str().unwrap().len() > 1);
    p.cmd()
        .args(["audit", "--since", "1h"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("tenant drop --archive: succeeded")
                .and(predicate::str::contains("by deploy-bot")),
        );
}

#[test]
fn passwords_never_printed_on_any_error_path() {
    // A cluster of this test's own with password authentication for one role.
    let server = start_cluster(&[]);
    let data = server.data_dir.clone().unwrap();
    let hba = data.join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all pwuser 127.0.0.1/32 scram-sha-256\n{original}"),
    )
    .unwrap();
    server.pg_ctl(&["reload"]);
    let secret = "Corr3ct-H0rse-pw";
    let mut admin = postgres::Client::connect(&server.url("postgres"), postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("SET password_encryption = 'scram-sha-256'; CREATE ROLE pwuser LOGIN CREATEDB PASSWORD '{secret}'"))
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE pwdb OWNER pwuser")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let p = Project::on(&server, "pw", 3);
    let good = format!("postgres://pwuser:{secret}@127.0.0.1:{}/pwdb", server.port);
    let check = |url: &str, args: &[&str], expect_ok: bool| {
        let out = p
            .cmd()
            .arg("--database-url")
            .arg(url)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let all = format!("{}{}", stdout(&out), stderr(&out));
        for leak in [secret, "Wr0ng-H0rse-pw"] {
            assert!(!all.contains(leak), "password printed for {args:?}: {all}");
        }
        all
    };
    // It works with the right password, and nothing prints it.
    check(&good, &["tenant", "create", "acme"], true);
    check(&good, &["status", "--json"], true);
    check(&good, &["audit", "--json"], true);
    // Wrong password, bad database, unreachable host, unparseable port.
    let wrong = good.replace(secret, "Wr0ng-H0rse-pw");
    let all = check(&wrong, &["migrate", "--all"], false);
    assert!(
        all.contains("password authentication failed") && all.contains("***"),
        "{all}"
    );
    check(&good.replace("/pwdb", "/no_such_db"), &["status"], false);
    check(
        &good.replace(&format!(":{}/", server.port), ":1/"),
        &["tenant", "create", "x"],
        false,
    );
    check(
        &good.replace(&format!(":{}/", server.port), ":port/"),
        &["status"],
        false,
    );
    // A config file carrying the password, and a failing migration.
    p.write_config("");
    std::fs::write(
        p.config_path(),
        format!("[database]\nurl = \"{good}\"\n[migrations]\ndir = \"migrations\"\n"),
    )
    .unwrap();
    p.add_migration("V4__broken.sql", "SELECT nonsense FROM nowhere;");
    let out = p
        .cmd()
        .args(["migrate", "--all", "--json"])
        .output()
        .unwrap();
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains(secret), "{all}");
}

#[test]
fn a_server_without_standard_conforming_strings_is_refused() {
    // The hot path quotes identifiers into SQL text; a server that reads backslashes in
    // literals as escapes is refused before anything is touched.
    let p = Project::new("scs_off", 2);
    let db_name = p.url.rsplit('/').next().unwrap().to_string();
    p.db()
        .batch_execute(&format!(
            "ALTER DATABASE \"{db_name}\" SET standard_conforming_strings = off"
        ))
        .unwrap();
    let before = p.fingerprint();
    for args in [&["tenant", "create", "acme"][..], &["migrate", "--all"][..]] {
        let out = p.run(args, 2);
        let err = stderr(&out);
        assert!(
            err.contains("standard_conforming_strings = off") && err.contains("ALTER DATABASE"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(before, p.fingerprint(), "nothing was touched");
    p.db()
        .batch_execute(&format!(
            "ALTER DATABASE \"{db_name}\" SET standard_conforming_strings = on"
        ))
        .unwrap();
    p.run(&["tenant", "create", "acme"], 0);
    assert_eq!(p.versions().get("acme"), Some(&Some(2)));
}
