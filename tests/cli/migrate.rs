use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use predicates::prelude::*;

#[test]
fn migrates_200_schemas_then_a_new_migration_then_nothing() {
    let p = Project::new("migrate_200", 4);
    let ids = p.create_tenants(200);
    p.copy_migrations(5, 8);
    p.cmd()
        .args(["migrate", "--all", "--jobs", "8"])
        .assert()
        .success()
        .stdout(predicate::str::contains("200 migrated, 0 failed"));
    let mut db = p.db();
    // Every schema: full history, the objects of V5..V8, registry at V8.
    let rows = db
        .query(
            "SELECT n.nspname,
                    (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid AND c.relname IN ('users','projects','tasks','roles','project_summary')),
                    (SELECT count(*) FROM pg_proc f WHERE f.pronamespace = n.oid AND f.proname = 'touch_updated_at'),
                    (SELECT count(*) FROM pg_constraint k WHERE k.connamespace = n.oid AND k.conname = 'tasks_status_check')
             FROM pg_namespace n WHERE n.nspname LIKE 'tenant\\_%' ORDER BY 1",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 200);
    for r in &rows {
        let schema: String = r.get(0);
        assert_eq!(
            (r.get::<_, i64>(1), r.get::<_, i64>(2), r.get::<_, i64>(3)),
            (5, 1, 1),
            "{schema}"
        );
    }
    let histories: Vec<(String, i64, i32)> = ids
        .iter()
        .map(|id| {
            let r = db
                .query_one(
                    &format!(
                        "SELECT count(*), max(version) FROM tenant_{id}.refinery_schema_history"
                    ),
                    &[],
                )
                .unwrap();
            (id.clone(), r.get(0), r.get(1))
        })
        .collect();
    assert!(
        histories.iter().all(|(_, n, v)| *n == 8 && *v == 8),
        "{histories:?}"
    );
    assert!(p.versions().values().all(|v| *v == Some(8)));
    let succeeded: i64 = db
        .query_one(
            "SELECT count(*) FROM tenantctl.run_schemas WHERE run_id = (SELECT max(id) FROM tenantctl.runs) AND state = 'succeeded' AND version_before = 4 AND version_after = 8",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(succeeded, 200);

    // A new migration: applied everywhere, once.
    p.add_migration("V9__add_task_priority.sql", "ALTER TABLE tasks ADD COLUMN priority int NOT NULL DEFAULT 0;\nINSERT INTO roles VALUES ('guest', 'Guest', false);\n");
    p.cmd()
        .args(["migrate", "--all"])
        .assert()
        .success()
        .stdout(predicate::str::contains("200 migrated"));
    for id in ids.iter().step_by(17) {
        assert_eq!(
            p.history(&format!("tenant_{id}")),
            (1..=9).collect::<Vec<_>>()
        );
        let guests: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM tenant_{id}.roles WHERE name = 'guest'"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(guests, 1);
    }
    // Nothing left to do: nothing touched.
    let before = p.fingerprint();
    p.cmd()
        .args(["migrate", "--all"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "0 migrated, 0 failed, 200 already current",
        ));
    let after = p.fingerprint();
    let strip = |s: &str| s.lines().take(4).collect::<Vec<_>>().join("\n");
    assert_eq!(
        strip(&before),
        strip(&after),
        "a no-op run changes no schema"
    );
}

#[test]
fn one_failing_tenant_does_not_stop_the_others() {
    let p = Project::new("migrate_one_fails", 8);
    p.create_tenants(20);
    p.db()
        .batch_execute("CREATE TABLE tenant_t0007.invoices (legacy int)")
        .unwrap();
    p.add_migration(
        "V9__create_invoices.sql",
        "ALTER TABLE tasks ADD COLUMN billed boolean NOT NULL DEFAULT false;\nCREATE TABLE invoices (id bigint PRIMARY KEY, task_id bigint REFERENCES tasks (id));\n",
    );
    let out = p.run(&["migrate", "--all", "--jobs", "4"], 1);
    let text = stdout(&out);
    assert!(text.contains("19 migrated, 1 failed"), "{text}");
    assert!(
        text.contains("t0007 (schema tenant_t0007): V9__create_invoices failed at line 2:")
            && text.contains("relation \"invoices\" already exists")
            && text.contains("still at V8"),
        "{text}"
    );
    let versions = p.versions();
    for (id, v) in &versions {
        let want = if id == "t0007" { 8 } else { 9 };
        assert_eq!(*v, Some(want), "{id}");
    }
    // The failed tenant is untouched: no V9 history row, no half-applied column.
    assert_eq!(p.history("tenant_t0007"), (1..=8).collect::<Vec<_>>());
    let billed: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'tenant_t0007' AND column_name = 'billed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        billed, 0,
        "the first statement of the failed migration was rolled back"
    );
    // The ledger says so too.
    let (state, migration): (String, String) = p
        .db()
        .query_one("SELECT state, failed_migration FROM tenantctl.run_schemas WHERE tenant_id = 't0007' AND run_id = (SELECT max(id) FROM tenantctl.runs)", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (state.as_str(), migration.as_str()),
        ("failed", "V9__create_invoices")
    );
    // --json carries the same facts: the failed tenant (the others have nothing to do now).
    let v = p.json(&["migrate", "--all", "--json"], 1);
    let tenants = v["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1, "{v}");
    assert_eq!(tenants[0]["id"], "t0007");
    assert_eq!(tenants[0]["result"], "failed");
    let f = &tenants[0]["failure"];
    assert_eq!(f["migration"], "V9__create_invoices");
    assert_eq!(f["line"], 2);
    assert_eq!(f["sqlstate"], "42P07");
    assert_eq!(f["kind"], "migration");
    assert_eq!(f["version"], 8);
    assert_eq!(v["counts"]["unchanged"], 19);
    assert_eq!(v["counts"]["failed"], 1);
}

#[test]
fn fail_fast_stops_scheduling() {
    let p = Project::new("migrate_fail_fast", 8);
    p.create_tenants(10);
    // Every tenant fails: with --fail-fast and one job, only the first is attempted.
    p.add_migration("V9__broken.sql", "SELECT 1/0;");
    let out = p.run(&["migrate", "--all", "--jobs", "1", "--fail-fast"], 1);
    let text = stdout(&out);
    assert!(
        text.contains("0 migrated, 1 failed") && text.contains("9 not started (--fail-fast"),
        "{text}"
    );
    assert!(text.contains("division by zero"), "{text}");
    let attempted: i64 = p
        .db()
        .query_one("SELECT count(*) FROM tenantctl.run_schemas WHERE run_id = (SELECT max(id) FROM tenantctl.runs) AND state <> 'pending'", &[])
        .unwrap()
        .get(0);
    assert_eq!(attempted, 1);
    // Without --fail-fast every tenant is attempted, and the same error is reported once.
    let out = p.run(&["migrate", "--all"], 1);
    let text = stdout(&out);
    assert!(
        text.contains("0 migrated, 10 failed") && text.contains("10 tenants: V9__broken failed"),
        "{text}"
    );
}

#[test]
fn migrate_selected_tenants_only() {
    let p = Project::new("migrate_selected", 6);
    p.create_tenants(3);
    p.copy_migrations(7, 8);
    p.cmd()
        .args(["migrate", "--tenant", "t0001", "--tenant", "t0002"])
        .assert()
        .success();
    let v = p.versions();
    assert_eq!(
        (v["t0000"], v["t0001"], v["t0002"]),
        (Some(6), Some(8), Some(8))
    );
    let before = p.fingerprint();
    p.cmd()
        .args(["migrate", "--tenant", "t0000", "--tenant", "nobody"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "not registered (or dropped): nobody",
        ));
    assert_eq!(before, p.fingerprint(), "nothing changed");
    p.cmd()
        .args(["migrate"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--all"));
}

#[test]
fn search_path_is_the_tenant_schema_for_each_transaction() {
    let p = Project::new("migrate_search_path", 8);
    p.create_tenants(12);
    p.add_migration(
        "V9__record_search_path.sql",
        "CREATE TABLE seen AS SELECT current_setting('search_path') AS sp, current_schema() AS cs;",
    );
    p.cmd()
        .args(["migrate", "--all", "--jobs", "2"])
        .assert()
        .success();
    let mut db = p.db();
    for i in 0..12 {
        let schema = format!("tenant_t{i:04}");
        let (sp, cs): (String, String) = db
            .query_one(&format!("SELECT sp, cs FROM {schema}.seen"), &[])
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!(cs, schema);
        assert_eq!(sp, schema, "search_path holds only the tenant schema");
    }
    let sp: String = db.query_one("SHOW search_path", &[]).unwrap().get(0);
    assert_eq!(sp, "\"$user\", public", "session default untouched");
}

#[test]
fn connections_never_exceed_jobs_plus_one() {
    let p = Project::new("migrate_connections", 2);
    p.create_tenants(150);
    p.copy_migrations(3, 8);
    let db_name = p.url.rsplit('/').next().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let url = p.url.clone();
        std::thread::spawn(move || {
            let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut max = 0i64;
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                let n: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'tenantctl'",
                        &[&db_name],
                    )
                    .unwrap()
                    .get(0);
                max = max.max(n);
                samples += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (max, samples)
        })
    };
    p.cmd()
        .args(["migrate", "--all", "--jobs", "3"])
        .assert()
        .success();
    stop.store(true, Ordering::SeqCst);
    let (max, samples) = sampler.join().unwrap();
    assert!(samples > 10, "sampled {samples} times");
    assert!(max <= 4, "saw {max} connections with --jobs 3");
    assert!(
        max >= 2,
        "saw only {max} connections: the sampler missed the run"
    );
    assert!(p.versions().values().all(|v| *v == Some(8)));
}

#[test]
fn a_fleet_lock_held_by_no_visible_run_is_given_a_moment() {
    // A process that has just finished releases the fleet lock as its backend exits, a few
    // milliseconds after the process itself: the next command, started at once, waits that
    // out instead of failing as busy (CI saw exactly that between two back-to-back commands).
    let p = Project::new("migrate_lock_grace", 6);
    p.create_tenants(3);
    p.copy_migrations(7, 8);
    let holder = p.hold_fleet_lock();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(600));
        drop(holder);
    });
    let out = p.run(&["migrate", "--all"], 0);
    assert!(stdout(&out).contains("3 migrated"), "{}", stdout(&out));
    release.join().unwrap();
    p.assert_converged(8);
}

#[test]
fn a_run_with_nothing_to_do_is_one_transaction_under_the_fleet_lock() {
    let p = Project::new("migrate_nothing_to_do", 4);
    p.create_tenants(5);
    p.copy_migrations(7, 8);
    p.run(&["migrate", "--all"], 0);
    let newest = "SELECT id, state, total, finished_at IS NOT NULL, attempts, \
                  (SELECT count(*) FROM tenantctl.run_schemas s WHERE s.run_id = r.id) \
                  FROM tenantctl.runs r ORDER BY id DESC LIMIT 1";

    // Recorded like any run, and what is printed is what the ledger says.
    let doc = p.json(&["migrate", "--all", "--json"], 0);
    let mut db = p.db();
    let row = db.query_one(newest, &[]).unwrap();
    let id: i64 = row.get(0);
    assert_eq!(doc["clusters"][0]["run_id"].as_i64(), Some(id), "{doc}");
    assert_eq!(doc["counts"]["unchanged"].as_i64(), Some(5), "{doc}");
    assert_eq!(row.get::<_, String>(1), "succeeded");
    assert_eq!(row.get::<_, i32>(2), 5);
    assert!(row.get::<_, bool>(3), "finished");
    assert_eq!(
        row.get::<_, i64>(5),
        0,
        "no ledger rows for tenants it left alone"
    );
    let audit = stdout(&p.run(&["audit"], 0));
    assert!(
        audit.contains(&format!("run {id} migrate to V8: succeeded")),
        "{audit}"
    );
    // Nothing held afterwards.
    let held: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND d.datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 0);

    // It takes the fleet lock like any fleet command: busy while another holds it.
    let holder = p.hold_fleet_lock();
    let out = p.run(&["migrate", "--all"], 3);
    assert!(stderr(&out).contains("in progress"), "{}", stderr(&out));
    drop(holder);
    let after: i64 = db.query_one(newest, &[]).unwrap().get(0);
    assert_eq!(after, id, "a refused run records nothing");

    // A run that stopped midway is resumed (the same run, another attempt), not passed by
    // with a new one because nothing seems left to do.
    db.batch_execute(&format!(
        "UPDATE tenantctl.runs SET state = 'interrupted' WHERE id = {id}"
    ))
    .unwrap();
    let out = p.run(&["migrate", "--all"], 0);
    let row = db.query_one(newest, &[]).unwrap();
    assert_eq!(row.get::<_, i64>(0), id, "{}", stderr(&out));
    assert_eq!(row.get::<_, String>(1), "succeeded");
    assert_eq!(row.get::<_, i32>(4), 2, "a second attempt of the same run");
}

#[test]
fn the_server_finds_nothing_to_do_exactly_when_the_plan_does() {
    // On one cluster over the whole fleet, the server decides "nothing to do" and records
    // the run in the same transaction (SQL twins of the plan's rules). Each case where the
    // two could part is run here, and the run's ledger rows say which way it went.
    let p = Project::new("migrate_idle_rules", 4);
    p.write_config("[tenants]\npool = 2\n");
    p.run(&["tenant", "pool", "fill"], 0);
    p.copy_migrations(5, 8);
    let mut db = p.db();
    // (run id, target, ledger rows) of the newest run.
    let mut newest = || -> (i64, Option<i32>, i64) {
        let row = db
            .query_one(
                "SELECT id, target_version, \
                        (SELECT count(*) FROM tenantctl.run_schemas s WHERE s.run_id = r.id) \
                 FROM tenantctl.runs r ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };

    // No tenant yet, the pool behind: the pool moves.
    p.run(&["migrate", "--all"], 0);
    assert_eq!(newest().2, 2, "both pooled schemas worked on");
    let ids = p.create_tenants(3);
    p.run(&["migrate", "--all"], 0);
    let (idle, _, rows) = newest();
    assert_eq!(rows, 0, "everything current: nothing to do");

    // A drift mark on a current tenant: looked at again, and cleared (its files match).
    p.db()
        .execute(
            "UPDATE tenantctl.tenants SET drift = 'V8__x was changed' WHERE id = $1",
            &[&ids[0]],
        )
        .unwrap();
    p.run(&["migrate", "--all"], 0);
    assert_eq!(newest().2, 1, "the drift-marked tenant worked on");
    let marks: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM tenantctl.tenants WHERE drift IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(marks, 0);

    // A tenant with nothing applied (registry version NULL) is worked on.
    p.db()
        .execute(
            "UPDATE tenantctl.tenants SET version = NULL WHERE id = $1",
            &[&ids[1]],
        )
        .unwrap();
    p.run(&["migrate", "--all"], 0);
    assert_eq!(newest().2, 1, "the tenant without a version worked on");
    p.assert_converged(8);

    // A target below the fleet is nothing to do for migrate (it never goes down), and so
    // is a rollback to where the fleet is; a rollback below it is work.
    p.run(&["migrate", "--all", "--to", "7"], 0);
    let (_, target, rows) = newest();
    assert_eq!(
        (target, rows),
        (Some(7), 0),
        "below the fleet: nothing to do"
    );
    p.run(&["rollback", "--all", "--to", "8"], 0);
    let (id, target, rows) = newest();
    assert!(
        id > idle && target == Some(8) && rows == 0,
        "{id} {target:?} {rows}"
    );
    let pooled: i64 = p
        .db()
        .query_one("SELECT count(*) FROM tenantctl.pool", &[])
        .unwrap()
        .get(0);
    p.run(&["rollback", "--all", "--to", "7"], 0);
    assert_eq!(
        newest().2,
        3 + pooled,
        "the tenants and the pool rolled back"
    );
    p.assert_converged(7);

    // A registry version ahead of the files is looked at (the history decides), not passed by.
    p.run(&["migrate", "--all"], 0);
    p.db()
        .execute(
            "UPDATE tenantctl.tenants SET version = 9 WHERE id = $1",
            &[&ids[2]],
        )
        .unwrap();
    p.run(&["migrate", "--all"], 0);
    assert_eq!(newest().2, 1);
    p.assert_converged(8);
}

#[test]
fn a_history_ahead_of_the_registry_is_read_not_assumed() {
    // A schema's migrations and the history check share one round trip when the registry's
    // version says what the history holds; when it does not (here the registry is behind:
    // V6 is applied, the registry says V5), the check stops the pipeline before any script
    // runs, and the schema goes the usual way: V6 is not run a second time.
    let p = Project::new("migrate_registry_behind", 6);
    let ids = p.create_tenants(4);
    p.db()
        .execute(
            "UPDATE tenantctl.tenants SET version = 5 WHERE id = $1",
            &[&ids[0]],
        )
        .unwrap();
    p.copy_migrations(7, 8);
    let out = p.run(&["migrate", "--all"], 0);
    assert!(
        stdout(&out).contains("4 migrated, 0 failed"),
        "{}",
        stdout(&out)
    );
    p.assert_converged(8);
    let row = p
        .db()
        .query_one(
            "SELECT version_before, version_after, applied FROM tenantctl.run_schemas \
             WHERE tenant_id = $1 AND run_id = (SELECT max(id) FROM tenantctl.runs)",
            &[&ids[0]],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, Option<i32>>(0),
            row.get::<_, Option<i32>>(1),
            row.get::<_, Option<i32>>(2)
        ),
        (Some(5), Some(8), Some(2)),
        "planned from the registry, done from the history: V7 and V8 applied"
    );
}

#[test]
fn worker_connections_are_replaced_after_worker_recycle_schemas() {
    // Each tenant records the backend that migrated it.
    let backends = |p: &Project| -> usize {
        let ids: Vec<String> = p.versions().keys().cloned().collect();
        let sql = ids
            .iter()
            .map(|id| format!("SELECT pid FROM tenant_{id}.who"))
            .collect::<Vec<_>>()
            .join(" UNION ");
        p.db()
            .query(&format!("SELECT DISTINCT pid FROM ({sql}) s"), &[])
            .unwrap()
            .len()
    };
    let p = Project::new("migrate_recycle", 8);
    p.create_tenants(6);
    p.add_migration(
        "V9__who.sql",
        "CREATE TABLE who AS SELECT pg_backend_pid() AS pid;\n",
    );
    p.add_migration("V9__who.down.sql", "DROP TABLE who;\n");
    p.write_config("[run]\njobs = 1\nworker_recycle = 2\n");
    p.run(&["migrate", "--all"], 0);
    p.assert_converged(9);
    assert_eq!(backends(&p), 3, "one connection per 2 schemas");

    p.run(&["rollback", "--to", "8", "--all"], 0);
    p.write_config("[run]\njobs = 1\nworker_recycle = 0\n");
    p.run(&["migrate", "--all"], 0);
    assert_eq!(backends(&p), 1, "0: one connection for the whole run");

    p.write_config("[run]\nworker_recycle = -1\n");
    let err = stderr(&p.run(&["migrate", "--all"], 2));
    assert!(err.contains("run.worker_recycle"), "{err}");
}
