//! The fleet never silently diverges: every applied file checked on every run, lint that
//! gates, repair that cannot hide a split, advice per kind of failure, `--failed`.

use std::collections::BTreeMap;

use crate::support::*;

fn count(p: &Project, sql: &str) -> i64 {
    p.db().query_one(sql, &[]).unwrap().get(0)
}

/// The control schema's per-version checksum counts (shards summed).
fn applied(p: &Project) -> BTreeMap<(i32, String), i64> {
    p.db()
        .query(
            "SELECT version, checksum, sum(tenants)::int8 FROM tenantctl.applied GROUP BY 1, 2 HAVING sum(tenants) <> 0",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

/// The same counted from every tenant schema's history (pooled schemas included).
fn histories(p: &Project) -> BTreeMap<(i32, String), i64> {
    let mut db = p.db();
    let schemas: Vec<String> = db
        .query(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'refinery_schema_history' AND table_schema LIKE 'tenant\\_%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = BTreeMap::new();
    for s in schemas {
        for r in db
            .query(
                &format!("SELECT version, checksum FROM {s}.refinery_schema_history"),
                &[],
            )
            .unwrap()
        {
            *out.entry((r.get(0), r.get(1))).or_insert(0) += 1;
        }
    }
    out
}

fn occurrences(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// The first paragraph of the issue, as a user meets it: V3 adds a NOT NULL column, fails on
/// the 3 tenants with rows, applies on the 50 others; the user then edits V3.
#[test]
fn a_not_null_column_edited_after_50_tenants_applied_it() {
    let p = Project::new("fidelity_not_null", 0);
    p.add_migration(
        "V1__create_users.sql",
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n",
    );
    p.add_migration(
        "V2__add_name.sql",
        "ALTER TABLE users ADD COLUMN name text;\n",
    );
    let ids = p.create_tenants(53);
    let with_rows = ["t0010", "t0020", "t0030"];
    for t in with_rows {
        p.db()
            .batch_execute(&format!(
                "INSERT INTO tenant_{t}.users (id, email) VALUES (1, 'a@{t}.test')"
            ))
            .unwrap();
    }

    // Without the allow comment the lint gates it: nothing runs.
    p.add_migration(
        "V3__add_plan.sql",
        "ALTER TABLE users ADD COLUMN plan text NOT NULL;\n",
    );
    let before = p.fingerprint();
    let out = p.run(&["migrate", "--all"], 2);
    assert!(
        stderr(&out).contains("error[add-column-not-null-without-default]")
            && stderr(&out).contains("V3__add_plan.sql:1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, p.fingerprint(), "refused before any change");
    // migration check says the same, with the same exit code.
    let check = p.run(&["migration", "check"], 1);
    assert!(stdout(&check).contains("error[add-column-not-null-without-default]"));

    // The user accepts the finding: 50 apply it, the 3 with rows fail.
    p.add_migration(
        "V3__add_plan.sql",
        "-- tenantctl:allow add-column-not-null-without-default\nALTER TABLE users ADD COLUMN plan text NOT NULL;\n",
    );
    let out = p.run(&["migrate", "--all"], 1);
    let text = stdout(&out);
    assert!(text.contains("50 migrated, 3 failed"), "{text}");
    for t in with_rows {
        assert!(text.contains(&format!("{t} (schema tenant_{t})")), "{text}");
        assert_eq!(p.versions()[t], Some(2));
    }
    // The advice for a statement that fails wherever there are rows, once for the three.
    assert_eq!(
        occurrences(&text, "adds a NOT NULL column without a default"),
        1,
        "{text}"
    );
    assert!(
        text.contains("applied on the 50 other tenant(s) whose table was empty")
            && text.contains("ALTER COLUMN ... DROP DEFAULT")
            && text.contains("tenantctl repair --accept 3"),
        "{text}"
    );

    // --failed finds exactly those three, in the listing and in status.
    let list = p.json(&["tenant", "list", "--failed", "--json"], 0);
    let listed: Vec<&str> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, with_rows);
    let status = p.json(&["status", "--failed", "--json"], 0);
    assert_eq!(status["tenants"].as_array().unwrap().len(), 3);

    // What the user did: add the default to V3 and re-run. Refused, for every tenant, before
    // any change, naming the file, the 50, both checksums, and the ways out.
    p.add_migration(
        "V3__add_plan.sql",
        "-- tenantctl:allow add-column-not-null-without-default\nALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';\n",
    );
    let before = p.fingerprint();
    let out = p.run(&["migrate", "--all"], 2);
    let err = stderr(&out);
    assert!(
        err.contains("migrations/V3__add_plan.sql changed after 50 tenant(s) applied it (checksum ")
            && err.contains(" then, ")
            && err.contains(" now): restore it (git checkout -- migrations/V3__add_plan.sql), or put the change in a new migration")
            && err.contains("tenantctl repair --accept 3"),
        "{err}"
    );
    assert_eq!(
        before,
        p.fingerprint(),
        "nothing changed, not even the ledger"
    );
    let status = p.run(&["status"], 1);
    assert!(
        stdout(&status).contains("V3__add_plan.sql changed after 50 tenant(s)"),
        "{}",
        stdout(&status)
    );
    // tenant create refuses too: a new tenant would get the other form.
    p.run(&["tenant", "create", "newcomer"], 2);
    assert!(!p.schema_exists("tenant_newcomer"));

    // The way the advice gives: the same result where it applied, and it works with rows.
    p.add_migration(
        "V3__add_plan.sql",
        "-- tenantctl:allow add-column-not-null-without-default\nALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';\nALTER TABLE users ALTER COLUMN plan DROP DEFAULT;\n",
    );
    let out = p.run(&["repair", "--accept", "3", "--all", "--yes"], 0);
    assert!(
        stderr(&out).contains("V3 checksum recorded") || stdout(&out).contains("50 repaired"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    // In the database: the 50 histories hold V3 as the file is now, and the counts follow.
    let list = p.json(&["migration", "list", "--json"], 0);
    let now = list["migrations"][2]["checksum"]
        .as_str()
        .unwrap()
        .to_string();
    let v3: Vec<(String, i64)> = histories(&p)
        .into_iter()
        .filter(|((v, _), _)| *v == 3)
        .map(|((_, sum), n)| (sum, n))
        .collect();
    assert_eq!(v3, [(now, 50)], "V3 as the file is now, in 50 histories");
    assert_eq!(applied(&p), histories(&p));
    let out = p.run(&["migrate", "--failed"], 0);
    assert!(stdout(&out).contains("3 migrated"), "{}", stdout(&out));
    let status = p.run(&["status"], 0);
    assert!(
        stdout(&status).contains("53 registered: 53 up to date"),
        "{}",
        stdout(&status)
    );
    p.run(&["status", "--verify"], 0);
    // One schema everywhere: plan NOT NULL without a default in all 53; the 3 hold 'free'.
    assert_eq!(
        count(&p, "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE 'tenant\\_%' AND c.relname = 'users' AND a.attname = 'plan' AND a.attnotnull AND NOT a.atthasdef"),
        ids.len() as i64
    );
    for t in with_rows {
        assert_eq!(
            count(
                &p,
                &format!("SELECT count(*) FROM tenant_{t}.users WHERE plan = 'free'")
            ),
            1
        );
    }
    assert_eq!(applied(&p), histories(&p));
    // Nothing failed last any more.
    let list = p.json(&["tenant", "list", "--failed", "--json"], 0);
    assert_eq!(list["tenants"], serde_json::json!([]));
}

/// The second trap of the first paragraph: `init`'s next steps apply an empty V1.
#[test]
fn an_empty_migration_from_init_is_refused() {
    let p = Project::new("fidelity_empty", 0);
    let run = |dir: &std::path::Path, args: &[&str], code: i32| {
        let out = p
            .cmd()
            .current_dir(dir)
            .env("DATABASE_URL", &p.url)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        out
    };
    run(p.path(), &["init", "app"], 0);
    let app = p.path().join("app");
    run(&app, &["migration", "new", "create_users"], 0);
    let out = run(&app, &["tenant", "create", "acme"], 2);
    assert!(
        stderr(&out).contains("V1__create_users.sql")
            && stderr(&out).contains("error[empty-migration]"),
        "{}",
        stderr(&out)
    );
    assert!(!p.schema_exists("tenant_acme"));
    // Once written, acme gets the table.
    std::fs::write(
        app.join("migrations/V1__create_users.sql"),
        "CREATE TABLE users (id bigint PRIMARY KEY);\n",
    )
    .unwrap();
    run(&app, &["tenant", "create", "acme"], 0);
    assert!(p.schema_has_table("tenant_acme", "users"));
    // migrate refuses one as well, before any change.
    std::fs::write(app.join("migrations/V2__later.sql"), "-- to do\n").unwrap();
    let out = run(&app, &["migrate", "--all"], 2);
    assert!(stderr(&out).contains("V2__later.sql"), "{}", stderr(&out));
    std::fs::remove_file(app.join("migrations/V2__later.sql")).unwrap();
    // A placeholder meant to stay empty is accepted when it says so.
    std::fs::write(
        app.join("migrations/V2__placeholder.sql"),
        "-- tenantctl:allow empty-migration\n-- reserved\n",
    )
    .unwrap();
    run(&app, &["migrate", "--all"], 0);
}

/// Repair reads every tenant's history for the version first and refuses to merge forms.
#[test]
fn repair_refuses_to_hide_a_split() {
    let p = Project::new("fidelity_split", 4);
    p.create_tenants(10);
    let v4 = p.migrations_dir().join("V4__add_task_indexes.sql");
    let original = std::fs::read_to_string(&v4).unwrap();
    std::fs::write(&v4, format!("-- reviewed\n{original}")).unwrap();
    // Two tenants get the edited text recorded (they ran one form: allowed).
    let out = p.run(
        &[
            "repair", "--accept", "4", "--tenant", "t0000", "--tenant", "t0001", "--yes",
        ],
        0,
    );
    assert!(
        stderr(&out).contains("tenant t0000 (schema tenant_t0000): V4 checksum recorded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(applied(&p), histories(&p));
    // The fleet now holds V4 in two forms: migrate names the 8 that differ from the file.
    let out = p.run(&["migrate", "--all"], 2);
    assert!(
        stderr(&out).contains("V4__add_task_indexes.sql changed after 8 tenant(s) applied it"),
        "{}",
        stderr(&out)
    );
    // repair --all refuses: two forms, their groups shown, which one is the file now.
    let before = p.fingerprint();
    let out = p.run(&["repair", "--accept", "4", "--all", "--yes"], 2);
    let err = stderr(&out);
    assert!(
        err.contains("10 tenant(s) applied V4__add_task_indexes in 2 different forms")
            && err.contains("8 tenant(s): t0002, t0003")
            && err.contains("(the file as it is now): 2 tenant(s): t0000, t0001")
            && err.contains("--tenant <that group's ids>"),
        "{err}"
    );
    assert_eq!(before, p.fingerprint(), "nothing changed");
    // A --tenant group that ran one form is repaired.
    p.run(
        &[
            "repair", "--accept", "4", "--tenant", "t0002", "--tenant", "t0003", "--yes",
        ],
        0,
    );
    // A --tenant group whose tenants ran different forms is refused: with the file edited
    // once more, t0000 (second form) and t0004 (first form) both differ from it.
    let second = std::fs::read_to_string(&v4).unwrap();
    std::fs::write(&v4, format!("-- reviewed twice\n{second}")).unwrap();
    let out = p.run(
        &[
            "repair", "--accept", "4", "--tenant", "t0000", "--tenant", "t0004", "--yes",
        ],
        2,
    );
    assert!(
        stderr(&out).contains("2 tenant(s) applied V4__add_task_indexes in 2 different forms"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&v4, second).unwrap();
    // --accept-split records it for all, and the audit keeps the command line.
    p.run(
        &[
            "repair",
            "--accept",
            "4",
            "--all",
            "--accept-split",
            "--yes",
        ],
        0,
    );
    let distinct = histories(&p).keys().filter(|(v, _)| *v == 4).count();
    assert_eq!(distinct, 1);
    assert_eq!(applied(&p), histories(&p));
    let argv: String = p
        .db()
        .query_one(
            "SELECT argv FROM tenantctl.runs WHERE command = 'repair' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(argv.contains("--accept-split"), "{argv}");
    p.run(&["migrate", "--all"], 0);
}

/// Each branch of the advice after a failed migration.
#[test]
fn the_advice_after_a_failure_fits_the_case() {
    let p = Project::new("fidelity_advice", 1);
    p.create_tenants(6);
    // A data problem: two tenants hold a bad email; four take the constraint.
    for t in ["t0001", "t0004"] {
        p.db()
            .batch_execute(&format!(
                "INSERT INTO tenant_{t}.users (email, full_name) VALUES ('nobody', 'x')"
            ))
            .unwrap();
    }
    p.add_migration(
        "V2__email_check.sql",
        "-- tenantctl:allow constraint-missing-not-valid\nALTER TABLE users ADD CONSTRAINT users_email_at CHECK (email LIKE '%@%');\n",
    );
    let text = stdout(&p.run(&["migrate", "--all"], 1));
    assert!(text.contains("4 migrated, 2 failed"), "{text}");
    assert_eq!(
        occurrences(&text, "is already applied on 4 other tenant(s)"),
        1,
        "{text}"
    );
    assert!(
        text.contains("Fix what these tenants' data needs") && !text.contains("this tenant's"),
        "{text}"
    );
    // One tenant: the singular.
    p.db()
        .batch_execute("DELETE FROM tenant_t0001.users WHERE email = 'nobody'")
        .unwrap();
    let text = stdout(&p.run(&["migrate", "--failed"], 1));
    assert!(text.contains("1 migrated, 1 failed"), "{text}");
    assert!(text.contains("Fix what this tenant's data needs"), "{text}");

    // A NOT NULL column that no tenant has yet, and every tenant has rows.
    let q = Project::new("fidelity_advice_nn", 1);
    q.create_tenants(2);
    for t in ["t0000", "t0001"] {
        q.db()
            .batch_execute(&format!(
                "INSERT INTO tenant_{t}.users (email, full_name) VALUES ('a@b', 'x')"
            ))
            .unwrap();
    }
    q.add_migration(
        "V2__plan.sql",
        "-- tenantctl:allow add-column-not-null-without-default\nALTER TABLE users ADD COLUMN plan text NOT NULL;\n",
    );
    let text = stdout(&q.run(&["migrate", "--all"], 1));
    assert!(
        text.contains("V2__plan adds a NOT NULL column without a default, which fails wherever the table has rows: give the column a DEFAULT (no tenant has V2__plan yet, so editing it is safe)"),
        "{text}"
    );
    assert_eq!(occurrences(&text, "adds a NOT NULL column"), 1, "{text}");

    // Anything else no tenant has: fix the migration.
    q.add_migration("V2__plan.sql", "SELECT 1 / 0;\n");
    let text = stdout(&q.run(&["migrate", "--all"], 1));
    assert!(
        text.contains("no tenant has it applied, so fix the migration and re-run"),
        "{text}"
    );
    // rollback --failed takes the tenants whose last change failed.
    let out = q.run(&["rollback", "--to", "0", "--failed"], 0);
    assert!(stdout(&out).contains("2 rolled back"), "{}", stdout(&out));
    assert_eq!(q.versions()["t0000"], None);
}

/// The control schema's counts stay in step with the histories through every command that
/// writes one, and an upgraded control schema counts the histories it finds.
#[test]
fn the_applied_counts_follow_every_history_write() {
    let p = Project::new("fidelity_counts", 6);
    p.write_config("[tenants]\npool = 3\n");
    p.create_tenants(12);
    assert_eq!(applied(&p), histories(&p), "create");
    p.copy_migrations(7, 8);
    p.run(&["migrate", "--all"], 0);
    assert_eq!(applied(&p), histories(&p), "migrate");
    p.run(
        &[
            "rollback", "--to", "5", "--tenant", "t0001", "--tenant", "t0002",
        ],
        0,
    );
    assert_eq!(applied(&p), histories(&p), "rollback");
    p.run(&["tenant", "drop", "t0003", "--yes"], 0);
    assert_eq!(applied(&p), histories(&p), "drop");
    p.run(&["tenant", "pool", "fill"], 0);
    assert_eq!(applied(&p), histories(&p), "pool fill");
    p.run(&["tenant", "create", "late"], 0);
    assert_eq!(applied(&p), histories(&p), "create from the pool");

    // A control schema from before the counts (v8): the next command counts the histories.
    p.db()
        .batch_execute(
            "DROP TABLE tenantctl.applied; COMMENT ON SCHEMA tenantctl IS 'tenantctl control schema v8'",
        )
        .unwrap();
    p.run(&["migrate", "--all"], 0);
    assert_eq!(applied(&p), histories(&p), "filled on upgrade");
    assert_eq!(
        applied(&p).values().sum::<i64>(),
        14 * 8,
        "11 tenants, 3 pooled"
    );
    // And the check works on the upgraded schema.
    let v2 = p.migrations_dir().join("V2__create_projects.sql");
    let text = std::fs::read_to_string(&v2).unwrap();
    std::fs::write(&v2, format!("{text}\n-- edited\n")).unwrap();
    let out = p.run(&["migrate", "--all"], 2);
    assert!(
        stderr(&out).contains("V2__create_projects.sql changed after"),
        "{}",
        stderr(&out)
    );
}

/// Each line found wrong on a fresh clone now says exactly what happened.
#[test]
fn the_lines_say_what_happened() {
    let p = Project::new("fidelity_lines", 1);
    p.create_tenants(60);
    p.add_migration(
        "V2__slow_fail.sql",
        "SELECT pg_sleep(0.1);\nSELECT 1 / 0;\n",
    );
    let out = p.run(&["migrate", "--all", "--jobs", "2"], 1);
    let err = stderr(&out);
    // In a pipe, the progress line appears although every tenant fails.
    assert!(
        err.lines().any(|l| l.starts_with("migrate: ")
            && l.contains("/60 done, ")
            && l.contains(" failed, ")),
        "{err}"
    );
    // "… the same way as X" names a tenant whose FAIL line was printed.
    let first = err
        .split("fail the same way as ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        err.contains(&format!("FAIL tenant {first} (schema")),
        "{err}"
    );
    assert_eq!(err.matches("FAIL tenant").count(), 3, "{err}");
    // The summary speaks of the 60 once.
    let text = stdout(&out);
    assert_eq!(
        text.matches("no tenant has it applied").count(),
        1,
        "{text}"
    );
    assert_eq!(p.versions()["t0000"], Some(1));

    // tenant drop says it dropped.
    let out = p.run(&["tenant", "drop", "t0000", "--yes"], 0);
    assert!(
        stderr(&out).contains("tenant t0000 (schema tenant_t0000): dropped"),
        "{}",
        stderr(&out)
    );
    assert!(!p.schema_exists("tenant_t0000"));

    // The drop-table warning names the table.
    std::fs::remove_file(p.migrations_dir().join("V2__slow_fail.sql")).unwrap();
    p.add_migration("V2__drop_legacy.sql", "DROP TABLE IF EXISTS legacy;\n");
    let out = p.run(&["migration", "check"], 0);
    assert!(
        stdout(&out).contains("`legacy`") && !stdout(&out).contains("`IF`"),
        "{}",
        stdout(&out)
    );

    // --help shows both environment variables alike, never a value.
    let out = p
        .cmd()
        .env("TENANTCTL_CONFIG", "secret-place.toml")
        .env("TENANTCTL_DATABASE_URL", "postgres://u:hunter2@h/db")
        .arg("--help")
        .output()
        .unwrap();
    let help = stdout(&out);
    assert!(
        help.contains("[env: TENANTCTL_CONFIG]")
            && help.contains("[env: TENANTCTL_DATABASE_URL]")
            && !help.contains("hunter2")
            && !help.contains("secret-place"),
        "{help}"
    );
    // A typo suggests the closest command first.
    let out = p.run(&["stauts"], 2);
    let err = stderr(&out);
    let suggested = err
        .split("similar subcommands exist: ")
        .nth(1)
        .or_else(|| err.split("a similar subcommand exists: ").nth(1))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(suggested.starts_with("'status'"), "{err}");
}

/// An enum value added by one file and used by a later one: together (always on tenant
/// create) they are one transaction, which PostgreSQL refuses. The lint says so first.
#[test]
fn an_enum_value_used_by_a_later_file_of_the_same_transaction() {
    let p = Project::new("fidelity_enum", 1);
    p.add_migration("V2__mood.sql", "CREATE TYPE mood AS ENUM ('ok');\n");
    p.add_migration("V3__great.sql", "ALTER TYPE mood ADD VALUE 'great';\n");
    p.add_migration(
        "V4__moods.sql",
        "CREATE TABLE moods (m mood NOT NULL DEFAULT 'great');\n",
    );
    let out = p.run(&["migration", "check"], 1);
    assert!(
        stdout(&out).contains("V4__moods.sql:1: error[enum-value-in-same-transaction]: uses the enum value 'great' that V3__great adds"),
        "{}",
        stdout(&out)
    );
    let out = p.run(&["tenant", "create", "acme"], 2);
    assert!(stderr(&out).contains("enum-value-in-same-transaction"));
    assert!(!p.schema_exists("tenant_acme"));
    // The finding is right: accepted anyway, PostgreSQL refuses it.
    p.add_migration(
        "V4__moods.sql",
        "-- tenantctl:allow enum-value-in-same-transaction\nCREATE TABLE moods (m mood NOT NULL DEFAULT 'great');\n",
    );
    let out = p.run(&["tenant", "create", "acme"], 1);
    assert!(
        stdout(&out).contains("unsafe use of new value"),
        "{}",
        stdout(&out)
    );
    assert!(!p.schema_exists("tenant_acme"));
    // The fix: the ADD VALUE in a no-transaction file of its own.
    p.add_migration(
        "V3__great.sql",
        "-- tenantctl:no-transaction\nALTER TYPE mood ADD VALUE IF NOT EXISTS 'great';\n",
    );
    p.add_migration(
        "V4__moods.sql",
        "CREATE TABLE moods (m mood NOT NULL DEFAULT 'great');\n",
    );
    p.run(&["migration", "check"], 0);
    p.run(&["tenant", "create", "acme"], 0);
    assert!(p.schema_has_table("tenant_acme", "moods"));
}
