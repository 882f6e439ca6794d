//! Runs that are killed, interrupted, raced, locked out, or lose their server: nothing is lost,
//! nothing is applied twice, and a re-run converges.

use std::time::{Duration, Instant};

use crate::support::*;
use predicates::prelude::*;

/// A migration that inserts exactly one row: any double application shows as two rows.
const ONE_ROW: &str = "CREATE TABLE marker (n int NOT NULL);\nINSERT INTO marker VALUES (1);\n";

fn assert_one_marker_row_everywhere(p: &Project) {
    assert_one_row_everywhere(&p.url, "marker");
}

#[test]
fn sigkill_at_several_points_then_rerun_converges() {
    let p = Project::new("sigkill", 4);
    p.create_tenants(500);
    p.copy_migrations(5, 8);
    // 20 ms a schema (500 x 20 ms / 4 jobs = 2.5 s a pass), so that even the third kill
    // (1.85 s of runs in all) lands before the fleet is done, on any machine.
    p.add_migration(
        "V9__marker.sql",
        &format!("SELECT pg_sleep(0.02);\n{ONE_ROW}"),
    );
    let mut done_before = Vec::new();
    for delay_ms in [250u64, 600, 1000] {
        let child = p.spawn(&["migrate", "--all", "--jobs", "4"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pid = child.id();
        signal(pid, "KILL");
        let out = wait_with_deadline(child, Duration::from_secs(30));
        assert_eq!(out.status.code(), None, "killed by a signal");
        // Whatever was committed is complete: every schema is at V4 or V9, never between.
        for (schema, rows, distinct, max) in p.history_counts() {
            assert_eq!(rows, distinct, "{schema}");
            assert!(matches!(max, Some(4) | Some(9)), "{schema} at {max:?}");
        }
        done_before.push(p.versions().values().filter(|v| **v == Some(9)).count());
    }
    assert!(
        done_before.windows(2).all(|w| w[0] <= w[1]),
        "progress is kept: {done_before:?}"
    );
    // The killed run is recognised as interrupted and resumed.
    let out = p.run(&["migrate", "--all"], 0);
    let err = stderr(&out);
    assert!(err.contains("resuming run"), "{err}");
    p.assert_converged(9);
    assert_one_marker_row_everywhere(&p);
    let (_, state) = p.last_run_state();
    assert_eq!(state, "succeeded");
    // One run was resumed (ledger: attempts > 1), none is left running.
    let running: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM tenantctl.runs WHERE state = 'running'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(running, 0);
}

#[test]
fn sigint_interrupts_and_the_next_run_resumes() {
    let p = Project::new("sigint", 4);
    p.create_tenants(300);
    p.copy_migrations(5, 8);
    let (out, _) = interrupt_after(
        &p,
        &["migrate", "--all", "--jobs", "2"],
        Duration::from_millis(400),
    );
    let text = stdout(&out);
    assert!(
        text.contains("interrupted") && text.contains("not started"),
        "{text}"
    );
    let (run_id, state) = p.last_run_state();
    assert_eq!(state, "interrupted");
    let done = p.versions().values().filter(|v| **v == Some(8)).count();
    assert!(
        done < 300,
        "the interrupt stopped the run early ({done} done)"
    );
    p.cmd().args(["status"]).assert().success().stdout(
        predicate::str::contains(format!("run {run_id} (migrate to V8)"))
            .and(predicate::str::contains("interrupted")),
    );
    let out = p.run(&["migrate", "--all"], 0);
    assert!(
        stderr(&out).contains(&format!("resuming run {run_id}")),
        "{}",
        stderr(&out)
    );
    p.assert_converged(8);
    // --fresh after a finished run: a new run, nothing to do.
    p.cmd()
        .args(["migrate", "--all", "--fresh"])
        .assert()
        .success()
        .stdout(predicate::str::contains("0 migrated"));
}

#[test]
fn grace_period_cancels_long_in_flight_schemas() {
    let p = Project::new("grace", 8);
    p.create_tenants(3);
    p.write_config("[run]\ngrace_period = \"1s\"");
    p.add_migration(
        "V9__slow.sql",
        "CREATE TABLE slow (x int);\nSELECT pg_sleep(60);\n",
    );
    let (out, stopped_in) = interrupt_after(
        &p,
        &["migrate", "--all", "--jobs", "3"],
        Duration::from_millis(800),
    );
    assert!(stopped_in < Duration::from_secs(15), "took {stopped_in:?}");
    assert!(
        stdout(&out).contains("interrupted and rolled back"),
        "{}",
        stdout(&out)
    );
    let slow: i64 = p
        .db()
        .query_one("SELECT count(*) FROM pg_class WHERE relname = 'slow'", &[])
        .unwrap()
        .get(0);
    assert_eq!(slow, 0, "cancelled transactions rolled back");
    assert!(p.versions().values().all(|v| *v == Some(8)));
}

#[test]
fn two_runners_never_apply_twice() {
    let p = Project::new("two_runners", 4);
    p.create_tenants(200);
    p.copy_migrations(5, 8);
    p.add_migration("V9__marker.sql", ONE_ROW);
    // Started together, both waiting: one does the work, the other then finds nothing to do.
    let a = p.spawn(&["migrate", "--all", "--jobs", "3", "--wait", "2m"]);
    let b = p.spawn(&["migrate", "--all", "--jobs", "3", "--wait", "2m"]);
    let a = wait_with_deadline(a, Duration::from_secs(120));
    let b = wait_with_deadline(b, Duration::from_secs(120));
    assert_eq!(
        (a.status.code(), b.status.code()),
        (Some(0), Some(0)),
        "{}{}",
        stderr(&a),
        stderr(&b)
    );
    let migrated = |o: &std::process::Output| -> usize {
        let t = stdout(o);
        let i = t.find(" migrated").unwrap();
        t[..i].rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        migrated(&a) + migrated(&b),
        200,
        "{}{}",
        stdout(&a),
        stdout(&b)
    );
    p.assert_converged(9);
    assert_one_marker_row_everywhere(&p);

    // Without --wait, a second runner exits with code 3 and names the run in progress.
    p.add_migration("V10__slow.sql", "SELECT pg_sleep(0.02);\n");
    let a = p.spawn(&["migrate", "--all", "--jobs", "1"]);
    std::thread::sleep(Duration::from_millis(700));
    let out = p.cmd().args(["migrate", "--all"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("(migrate to V10) started by") && err.contains("--wait"),
        "{err}"
    );
    let a = wait_with_deadline(a, Duration::from_secs(120));
    assert_eq!(a.status.code(), Some(0));
    p.assert_converged(10);
}

#[test]
fn a_locked_tenant_is_retried_and_never_blocks_the_fleet() {
    let p = Project::new("locked", 8);
    p.create_tenants(10);
    p.write_config("[run]\nlock_timeout = \"500ms\"\nretries = 2\nretry_delay = \"200ms\"");
    p.add_migration(
        "V9__priority.sql",
        "ALTER TABLE tasks ADD COLUMN priority int;\n",
    );

    // 1. Someone holds ACCESS EXCLUSIVE on t0003's table for the whole run: that tenant is
    //    retried, then fails saying the table was locked; the others finish.
    let mut holder = p.db();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE tenant_t0003.tasks IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let t0 = Instant::now();
    let out = p.run(&["migrate", "--all", "--jobs", "4"], 1);
    let text = stdout(&out);
    assert!(text.contains("9 migrated, 1 failed"), "{text}");
    assert!(
        text.contains("t0003 (schema tenant_t0003): ")
            && text.contains("lock timeout")
            && text.contains("after 3 attempts")
            && text.contains("holds a lock"),
        "{text}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    tx.rollback().unwrap();
    assert_eq!(p.versions()["t0003"], Some(8));

    // 2. A long report holds ACCESS SHARE; our ALTER queues for ACCESS EXCLUSIVE. A reader
    //    arriving behind us waits at most lock_timeout (plus a margin), because our attempt
    //    gives up; when the report ends, a retry succeeds.
    let mut report = p.db();
    let mut rtx = report.transaction().unwrap();
    rtx.query("SELECT count(*) FROM tenant_t0003.tasks", &[])
        .unwrap();
    let migrate = p.spawn(&["migrate", "--all"]);
    std::thread::sleep(Duration::from_millis(150));
    let url = p.url.clone();
    let reader = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let t = Instant::now();
        c.query_one("SELECT count(*) FROM tenant_t0003.tasks", &[])
            .unwrap();
        t.elapsed()
    });
    let waited = reader.join().unwrap();
    assert!(
        waited < Duration::from_millis(500 + 700),
        "reader waited {waited:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    rtx.rollback().unwrap();
    let out = wait_with_deadline(migrate, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    p.assert_converged(9);
}

#[test]
fn terminated_backends_restarts_and_outages_converge() {
    // A cluster of this test's own: it gets restarted and stopped. Few slots on purpose.
    let server = start_cluster(&["max_connections=16"]);
    let p = Project::on(&server, "outages", 4);
    p.create_tenants(300);
    p.copy_migrations(5, 8);
    p.add_migration("V9__marker.sql", ONE_ROW);

    // 1. Workers' backends are terminated mid-run: only in-flight schemas are hit, retried.
    let child = p.spawn(&["migrate", "--all", "--jobs", "4"]);
    let mut admin = p.db();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(250));
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'tenantctl' \
                 AND pid NOT IN (SELECT backend_pid FROM tenantctl.runs WHERE state = 'running')",
            )
            .unwrap();
    }
    let out = wait_with_deadline(child, Duration::from_secs(120));
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{}",
        stderr(&out)
    );
    p.cmd().args(["migrate", "--all"]).assert().success();
    p.assert_converged(9);
    assert_one_marker_row_everywhere(&p);

    // 2. The server restarts (immediate) mid-run: the run ends, a re-run converges.
    p.add_migration(
        "V10__marker2.sql",
        "CREATE TABLE marker2 (n int);\nINSERT INTO marker2 VALUES (1);\n",
    );
    let child = p.spawn(&["migrate", "--all", "--jobs", "4"]);
    std::thread::sleep(Duration::from_millis(400));
    server.pg_ctl(&["-m", "immediate", "-w", "restart"]);
    let out = wait_with_deadline(child, Duration::from_secs(120));
    assert!(
        out.status.code().is_some(),
        "ended by itself: {}",
        stderr(&out)
    );
    assert!(wait_ready(&p.url, Duration::from_secs(30)));
    p.cmd().args(["migrate", "--all"]).assert().success();
    p.assert_converged(10);

    // 3. The server goes away and stays away: the run stops within a bounded time, non-zero,
    //    with a clear message.
    // Slow enough (300 x 50 ms / 4 jobs) that the stop lands mid-run.
    p.add_migration(
        "V11__more.sql",
        "SELECT pg_sleep(0.05);\nCREATE TABLE more (n int);\n",
    );
    p.write_config("[run]\nretries = 2\nretry_delay = \"200ms\"");
    let child = p.spawn(&["migrate", "--all", "--jobs", "4"]);
    std::thread::sleep(Duration::from_millis(300));
    server.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    let t0 = Instant::now();
    let out = wait_with_deadline(child, Duration::from_secs(90));
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
    // The database went away: exit 6 (unreachable), not 1 (tenants failed).
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains("could not be reached") || all.contains("cannot connect"),
        "{all}"
    );
    server.pg_ctl(&["-w", "start"]);
    assert!(wait_ready(&p.url, Duration::from_secs(30)));
    p.cmd().args(["migrate", "--all"]).assert().success();
    p.assert_converged(11);

    // 4. Fewer free connection slots than --jobs: lowered with a warning, not a crash.
    p.add_migration("V12__last.sql", "CREATE TABLE last (n int);\n");
    let out = p.run(&["migrate", "--all", "--jobs", "64"], 0);
    assert!(
        stderr(&out).contains("free connection slot"),
        "{}",
        stderr(&out)
    );
    p.assert_converged(12);
}
