//! Rollback, drift detection, adopting existing schemas, dry runs, `status --verify`.

use crate::support::*;
use predicates::prelude::*;

fn count(p: &Project, sql: &str) -> i64 {
    p.db().query_one(sql, &[]).unwrap().get(0)
}

/// Objects that V5..V8 create, across all tenant schemas.
fn late_objects(p: &Project) -> (i64, i64, i64, i64) {
    (
        count(
            p,
            "SELECT count(*) FROM pg_constraint WHERE conname = 'tasks_status_check'",
        ),
        count(
            p,
            "SELECT count(*) FROM pg_proc WHERE proname = 'touch_updated_at'",
        ),
        count(
            p,
            "SELECT count(*) FROM pg_class WHERE relname = 'project_summary' AND relkind = 'v'",
        ),
        count(
            p,
            "SELECT count(*) FROM pg_class WHERE relname = 'roles' AND relkind = 'r'",
        ),
    )
}

#[test]
fn rollback_200_schemas_and_back_up() {
    let p = Project::new("rollback_200", 8);
    p.create_tenants(200);
    assert_eq!(late_objects(&p), (200, 200, 200, 200));
    p.cmd()
        .args(["rollback", "--to", "4", "--all", "--jobs", "6"])
        .assert()
        .success()
        .stdout(predicate::str::contains("200 rolled back, 0 failed"));
    assert_eq!(late_objects(&p), (0, 0, 0, 0), "objects of V5..V8 are gone");
    assert!(p.versions().values().all(|v| *v == Some(4)));
    for (schema, rows, distinct, max) in p.history_counts() {
        assert_eq!((rows, distinct, max), (4, 4, Some(4)), "{schema}");
    }
    let ledger = count(&p, "SELECT count(*) FROM tenantctl.run_schemas rs JOIN tenantctl.runs r ON r.id = rs.run_id WHERE r.command = 'rollback' AND rs.state = 'succeeded' AND rs.version_before = 8 AND rs.version_after = 4");
    assert_eq!(ledger, 200);
    p.cmd()
        .args(["migrate", "--all"])
        .assert()
        .success()
        .stdout(predicate::str::contains("200 migrated"));
    assert_eq!(late_objects(&p), (200, 200, 200, 200), "and restored");
    p.assert_converged(8);
    // Back to nothing at all for one tenant.
    p.cmd()
        .args(["rollback", "--to", "0", "--tenant", "t0000"])
        .assert()
        .success();
    assert_eq!(p.versions()["t0000"], None);
    assert!(p.history("tenant_t0000").is_empty());
    assert_eq!(count(&p, "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_t0000' AND tablename <> 'refinery_schema_history'"), 0);
}

#[test]
fn a_failing_down_script_leaves_that_tenant_untouched() {
    let p = Project::new("rollback_fail", 8);
    p.create_tenants(10);
    // t0004 has something depending on roles: V8's down (DROP TABLE roles) fails there.
    p.db().batch_execute("CREATE VIEW tenant_t0004.admins AS SELECT name FROM tenant_t0004.roles WHERE can_admin").unwrap();
    let out = p.run(&["rollback", "--to", "6", "--all"], 1);
    let text = stdout(&out);
    assert!(text.contains("9 rolled back, 1 failed"), "{text}");
    assert!(
        text.contains("t0004 (schema tenant_t0004): V8__seed_roles.down failed")
            && text.contains("still at V8"),
        "{text}"
    );
    let v = p.versions();
    assert_eq!(v["t0004"], Some(8));
    assert!(v
        .iter()
        .filter(|(k, _)| k.as_str() != "t0004")
        .all(|(_, v)| *v == Some(6)));
    assert_eq!(p.history("tenant_t0004"), (1..=8).collect::<Vec<_>>());
    // Nothing of the failed tenant's rollback stuck: V7's view (reverted before V8's failed
    // script in the same transaction) is still there.
    assert_eq!(count(&p, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'tenant_t0004' AND c.relname IN ('roles', 'project_summary')"), 2);
}

#[test]
fn missing_down_files_are_refused_before_anything() {
    let p = Project::new("rollback_missing_down", 8);
    p.create_tenants(3);
    std::fs::remove_file(
        p.migrations_dir()
            .join("V6__touch_updated_at_trigger.down.sql"),
    )
    .unwrap();
    std::fs::remove_file(p.migrations_dir().join("V8__seed_roles.down.sql")).unwrap();
    let before = p.fingerprint();
    p.cmd()
        .args(["rollback", "--to", "4", "--all"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("needs 2 rollback script(s)")
                .and(predicate::str::contains(
                    "V6__touch_updated_at_trigger.down.sql",
                ))
                .and(predicate::str::contains("V8__seed_roles.down.sql")),
        );
    assert_eq!(
        before,
        p.fingerprint(),
        "database unchanged, ledger included"
    );
    // Not needed when the range does not include them.
    p.cmd()
        .args(["rollback", "--to", "8", "--all"])
        .assert()
        .success();
    p.cmd()
        .args(["rollback", "--to", "42", "--all"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no migration V42"));
}

#[test]
fn drift_is_detected_before_any_change() {
    let p = Project::new("drift", 8);
    p.create_tenants(30);
    p.add_migration(
        "V9__add_color.sql",
        "ALTER TABLE projects ADD COLUMN color text;\n",
    );
    let schema_only = |p: &Project| {
        p.fingerprint()
            .lines()
            .take(4)
            .collect::<Vec<_>>()
            .join("\n")
    };

    // 1. An applied migration edited after it was applied.
    let v3 = p.migrations_dir().join("V3__create_tasks.sql");
    let original = std::fs::read_to_string(&v3).unwrap();
    std::fs::write(
        &v3,
        original.replace("due_on       date,", "due_on       timestamptz,"),
    )
    .unwrap();
    let before = schema_only(&p);
    let ledger = p.fingerprint();
    // Refused before any change, for every tenant (none of them has work to do with V3),
    // naming the file, how many applied it, and the ways out.
    let out = p.run(&["migrate", "--all"], 2);
    let err = stderr(&out);
    assert!(
        err.contains("V3__create_tasks.sql changed after 30 tenant(s) applied it")
            && err.contains("git checkout -- ")
            && err.contains("tenantctl repair --accept 3"),
        "{err}"
    );
    assert_eq!(
        ledger,
        p.fingerprint(),
        "nothing changed, not even the ledger"
    );
    let status = p.run(&["status"], 1);
    assert!(
        stdout(&status).contains("FILES CHANGED AFTER THE FLEET APPLIED THEM")
            && stdout(&status).contains("V3__create_tasks.sql changed after 30 tenant(s)"),
        "{}",
        stdout(&status)
    );
    let v = p.json(&["status", "--json"], 1);
    let changed = &v["clusters"][0]["changed_files"][0];
    assert_eq!(
        (changed["version"].as_i64(), changed["tenants"].as_i64()),
        (Some(3), Some(30)),
        "{v}"
    );
    let out = p.run(&["rollback", "--to", "7", "--all"], 2);
    assert!(
        stderr(&out).contains("V3__create_tasks.sql changed after"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&["tenant", "create", "newcomer"], 2);
    assert!(
        stderr(&out).contains("V3__create_tasks.sql changed after"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, schema_only(&p));
    assert_eq!(ledger, p.fingerprint());
    std::fs::write(&v3, &original).unwrap();

    // 2. An applied migration whose file was deleted.
    let v2 = std::fs::read_to_string(p.migrations_dir().join("V2__create_projects.sql")).unwrap();
    std::fs::remove_file(p.migrations_dir().join("V2__create_projects.sql")).unwrap();
    std::fs::remove_file(p.migrations_dir().join("V2__create_projects.down.sql")).unwrap();
    let out = p.run(&["migrate", "--all"], 2);
    assert!(
        stderr(&out).contains("V2__create_projects.sql is missing: 30 tenant(s) applied V2"),
        "{}",
        stderr(&out)
    );
    p.run(&["status"], 1);
    assert_eq!(before, schema_only(&p));
    std::fs::write(p.migrations_dir().join("V2__create_projects.sql"), &v2).unwrap();

    // 3. A schema ahead of the files (V9 applied, then the checkout lost V9).
    p.cmd()
        .args(["migrate", "--tenant", "t0000"])
        .assert()
        .success();
    assert_eq!(p.versions()["t0000"], Some(9));
    std::fs::remove_file(p.migrations_dir().join("V9__add_color.sql")).unwrap();
    let before = schema_only(&p);
    let out = p.run(&["migrate", "--all"], 1);
    let text = stdout(&out);
    assert!(
        text.contains("t0000 (schema tenant_t0000)") && text.contains("ahead of the files"),
        "{text}"
    );
    assert!(
        text.contains("0 migrated, 1 failed, 29 already current"),
        "{text}"
    );
    assert_eq!(before, schema_only(&p));
    // Files restored: the drift mark clears once the tenant migrates cleanly.
    p.add_migration(
        "V9__add_color.sql",
        "ALTER TABLE projects ADD COLUMN color text;\n",
    );
    p.cmd().args(["migrate", "--all"]).assert().success();
    let drifted = count(
        &p,
        "SELECT count(*) FROM tenantctl.tenants WHERE drift IS NOT NULL",
    );
    assert_eq!(drifted, 0);
}

#[test]
fn adopt_a_schema_made_by_plain_sql_then_migrate_it() {
    let p = Project::new("adopt", 8);
    // Made by "another tool": V1..V3 run by hand, no history table.
    let mut sql = String::from("CREATE SCHEMA tenant_legacy; SET search_path TO tenant_legacy;\n");
    for f in [
        "V1__create_users.sql",
        "V2__create_projects.sql",
        "V3__create_tasks.sql",
    ] {
        sql.push_str(&std::fs::read_to_string(format!("{REPO_MIGRATIONS}/{f}")).unwrap());
    }
    sql.push_str("INSERT INTO users (email, full_name) VALUES ('old@customer', 'Old Customer');");
    p.db().batch_execute(&sql).unwrap();

    p.cmd()
        .args(["tenant", "adopt", "legacy", "--baseline", "3"])
        .assert()
        .success()
        .stdout(predicate::str::contains("1 adopted"));
    assert_eq!(p.history("tenant_legacy"), vec![1, 2, 3]);
    assert_eq!(p.versions()["legacy"], Some(3));
    p.cmd()
        .args(["migrate", "--all"])
        .assert()
        .success()
        .stdout(predicate::str::contains("1 migrated"));
    p.assert_converged(8);
    let kept = count(
        &p,
        "SELECT count(*) FROM tenant_legacy.users WHERE email = 'old@customer'",
    );
    assert_eq!(kept, 1, "data kept");
    // Adopting what does not exist, or what is already registered, changes nothing.
    p.cmd()
        .args(["tenant", "adopt", "nosuch", "--baseline", "3"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "schema tenant_nosuch does not exist",
        ));
    p.cmd()
        .args(["tenant", "adopt", "legacy", "--baseline", "3"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("already registered"));
    assert_eq!(p.versions().len(), 1);
}

#[test]
fn dry_runs_change_nothing_at_all() {
    let p = Project::new("dry_run", 5);
    // On a database tenantctl has never touched: not even the control schema appears.
    let untouched = p.fingerprint();
    p.cmd()
        .args(["migrate", "--all", "--dry-run"])
        .assert()
        .success();
    assert_eq!(untouched, p.fingerprint());

    p.create_tenants(30);
    p.cmd()
        .args(["rollback", "--to", "3", "--tenant", "t0001"])
        .assert()
        .success();
    p.copy_migrations(6, 8);
    let before = p.fingerprint();
    let out = p.run(&["migrate", "--all", "--dry-run"], 0);
    let text = stdout(&out);
    assert!(
        text.contains("30 would change") && text.contains("nothing was changed"),
        "{text}"
    );
    assert!(text.contains("29 tenant(s) at V5 -> V8: apply V6__touch_updated_at_trigger, V7__create_project_summary_view, V8__seed_roles"), "{text}");
    assert!(
        text.contains("1 tenant(s) at V3 -> V8: apply V4__add_task_indexes"),
        "{text}"
    );
    let out = p
        .cmd()
        .args(["migrate", "--all", "--dry-run", "--json", "--to", "7"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tenants"].as_array().unwrap().len(), 30);
    assert_eq!(v["target_version"], 7);
    let t1 = v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "t0001")
        .unwrap();
    assert_eq!(t1["would_be_at"], 7);
    assert_eq!(
        t1["migrations"],
        serde_json::json!([
            "V4__add_task_indexes",
            "V5__add_task_status_constraint",
            "V6__touch_updated_at_trigger",
            "V7__create_project_summary_view"
        ])
    );
    p.cmd()
        .args(["rollback", "--to", "2", "--all", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("29 tenant(s) at V5 -> V2: revert V5__add_task_status_constraint, V4__add_task_indexes, V3__create_tasks"));
    assert_eq!(
        before,
        p.fingerprint(),
        "catalog and ledger byte-for-byte the same"
    );
}

#[test]
fn migrate_to_a_version_goes_forward_only() {
    let p = Project::new("migrate_to", 4);
    p.create_tenants(4);
    p.copy_migrations(5, 8);
    p.cmd()
        .args(["migrate", "--all", "--to", "6"])
        .assert()
        .success()
        .stdout(predicate::str::contains("4 migrated"));
    assert!(p.versions().values().all(|v| *v == Some(6)));
    p.cmd()
        .args(["migrate", "--all", "--to", "V5"])
        .assert()
        .success()
        .stdout(predicate::str::contains("0 migrated"));
    assert!(
        p.versions().values().all(|v| *v == Some(6)),
        "--to never goes down"
    );
    p.cmd()
        .args(["migrate", "--all", "--to", "99"])
        .assert()
        .code(2);
}

#[test]
fn status_verify_reports_what_disagrees() {
    let p = Project::new("verify", 8);
    p.create_tenants(6);
    p.cmd()
        .args(["status", "--verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "registry, histories and files agree",
        ));
    p.db()
        .batch_execute(
            "UPDATE tenantctl.tenants SET version = 5 WHERE id = 't0001';
             DROP SCHEMA tenant_t0002 CASCADE;
             CREATE SCHEMA tenant_ghost;
             UPDATE tenant_t0003.refinery_schema_history SET checksum = '1' WHERE version = 4;
             DELETE FROM tenant_t0004.refinery_schema_history WHERE version = 6;",
        )
        .unwrap();
    let out = p.run(&["status", "--verify"], 1);
    let text = stdout(&out);
    for expect in [
        "tenant t0001 (schema tenant_t0001): registry says V5, the schema's history says V8",
        "tenant t0002 (schema tenant_t0002): registered, but its schema does not exist",
        "tenant t0003 (schema tenant_t0003): drift: V4__add_task_indexes was changed after it was applied",
        "tenant t0004 (schema tenant_t0004): drift: never applied but below the schema's version V8: V6__touch_updated_at_trigger",
        "schema tenant_ghost: schema has the tenant prefix",
    ] {
        assert!(text.contains(expect), "missing {expect:?} in:\n{text}");
    }
    let out = p
        .cmd()
        .args(["status", "--verify", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let verify = &v["clusters"][0]["verify"];
    assert_eq!(verify["problems"].as_array().unwrap().len(), 5);
    assert_eq!(verify["checked"], 6);
}
