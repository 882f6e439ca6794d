//! No-transaction migrations (`-- tenantctl:no-transaction`): CREATE INDEX CONCURRENTLY
//! across the fleet while the tenants are written to, crash and failure recovery (INVALID
//! indexes), segments recorded one by one, a clean connection afterwards, rollback through a
//! no-transaction down script, and what is refused before anything runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

const DIRECTIVE: &str = "-- tenantctl:no-transaction\n";

/// V1: a table of `rows` rows, and an IMMUTABLE function `slow_key` that sleeps `pause`
/// seconds every 200 rows of an index build over it (for builds slow enough to interrupt).
fn items_project(name: &str, tenants: usize, rows: usize, pause: f64) -> (Project, Vec<String>) {
    let p = Project::new(name, 0);
    p.add_migration(
        "V1__items.sql",
        &format!(
            "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int NOT NULL, payload text);\n\
             INSERT INTO items (v, payload) SELECT g % 1000, md5(g::text) FROM generate_series(1, {rows}) g;\n\
             CREATE FUNCTION slow_key(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$\n\
             BEGIN IF v % 200 = 0 THEN PERFORM pg_sleep({pause}); END IF; RETURN v; END $$;\n"
        ),
    );
    let ids = p.create_tenants(tenants);
    (p, ids)
}

/// (schema, index) of every INVALID index in tenant schemas.
fn invalid_indexes(p: &Project) -> Vec<(String, String)> {
    p.db()
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid AND n.nspname LIKE 'tenant\\_%' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// How many tenant schemas have a valid index of that name.
fn valid_index_count(p: &Project, name: &str) -> i64 {
    p.db()
        .query_one(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1 AND i.indisvalid",
            &[&name],
        )
        .unwrap()
        .get(0)
}

/// What a writer saw: inserts, lock waits over 100 ms (with `counting`), other errors, and the
/// longest insert.
type Seen = (u64, u64, Vec<String>, Duration);

/// Inserts into every tenant's `items`, round robin, until stopped. With `counting`, under a
/// 100 ms lock timeout: an insert that has to wait for a lock (a plain CREATE INDEX holds one
/// against writers for the whole build) fails and is counted. (Not 1 ms: the two writers share
/// tables, and on a loaded machine one can wait a few ms for the other's relation-extension
/// lock, which says nothing about the migration.) Without, it waits, and the
/// longest insert is how long a writer was held up.
fn writer(
    url: String,
    schemas: Vec<String>,
    stop: Arc<AtomicBool>,
    counting: bool,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        if counting {
            db.batch_execute("SET lock_timeout = '100ms'").unwrap();
        }
        let (mut inserts, mut waits, mut errors, mut longest) =
            (0u64, 0u64, Vec::new(), Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            for schema in &schemas {
                let t0 = Instant::now();
                match db.batch_execute(&format!("INSERT INTO {schema}.items (v) VALUES (7)")) {
                    Ok(()) => inserts += 1,
                    Err(e) if e.code().map(|c| c.code()) == Some("55P03") => waits += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                longest = longest.max(t0.elapsed());
            }
        }
        (inserts, waits, errors, longest)
    })
}

/// `migrate --all` while two writers insert into every tenant: one counting lock waits, one
/// timing its inserts.
fn while_writing(p: &Project, schemas: &[String]) -> (std::process::Output, Seen, Seen) {
    let stop = Arc::new(AtomicBool::new(false));
    let counting = writer(p.admin.clone(), schemas.to_vec(), stop.clone(), true);
    let timing = writer(p.admin.clone(), schemas.to_vec(), stop.clone(), false);
    std::thread::sleep(Duration::from_millis(200));
    let out = p.run(&["migrate", "--all", "--jobs", "4"], 0);
    stop.store(true, Ordering::Relaxed);
    (out, counting.join().unwrap(), timing.join().unwrap())
}

#[test]
fn concurrent_index_builds_across_the_fleet_never_block_writers() {
    let (p, ids) = items_project("notx_fleet", 200, 20_000, 0.002);
    let schemas: Vec<String> = ids.iter().map(|id| format!("tenant_{id}")).collect();
    // V2 and V4 do not touch `items`, so any lock a writer meets comes from V3.
    p.add_migration("V2__audit.sql", "CREATE TABLE audit (id int);\n");
    p.add_migration(
        "V3__items_v.sql",
        &format!(
            "{DIRECTIVE}CREATE INDEX CONCURRENTLY IF NOT EXISTS items_v_idx ON items (slow_key(v), id);\n"
        ),
    );
    p.add_migration(
        "V4__after_index.sql",
        "CREATE TABLE after_index AS SELECT count(*) AS n FROM pg_indexes WHERE indexname = 'items_v_idx' AND schemaname = current_schema();\n",
    );
    let plan = stdout(&p.run(&["migrate", "--all", "--dry-run"], 0));
    assert!(
        plan.contains("apply V2__audit; then V3__items_v (no transaction, recorded alone); then V4__after_index"),
        "{plan}"
    );
    let v = p.json(&["migrate", "--all", "--dry-run", "--json"], 0);
    let segments = &v["tenants"][0]["segments"];
    assert_eq!(segments.as_array().unwrap().len(), 3, "{segments}");
    assert_eq!(segments[1]["transaction"], false);

    let (out, (inserts, waits, errors, _), (_, _, errors2, longest)) = while_writing(&p, &schemas);
    assert!(errors2.is_empty(), "{errors2:?}");
    assert!(
        stdout(&out).contains("200 migrated, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(inserts > 0);
    p.assert_converged(4);
    assert_eq!(valid_index_count(&p, "items_v_idx"), 200);
    assert!(invalid_indexes(&p).is_empty());
    // V4 ran after V3 everywhere: it saw the index.
    let saw: i64 = p
        .db()
        .query_one(
            &format!(
                "SELECT sum(n)::bigint FROM ({}) s",
                schemas
                    .iter()
                    .map(|s| format!("SELECT n FROM {s}.after_index"))
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ")
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(saw, 200);

    // The same with a plain CREATE INDEX (in a transaction): writers wait for it.
    p.add_migration(
        "V5__items_payload.sql",
        "CREATE INDEX items_v_idx2 ON items (slow_key(v), id);\n",
    );
    let (_, (plain_inserts, plain_waits, plain_errors, _), (_, _, _, plain_longest)) =
        while_writing(&p, &schemas);
    assert!(plain_errors.is_empty(), "{plain_errors:?}");
    eprintln!(
        "writers during CREATE INDEX CONCURRENTLY: {inserts} inserts, {waits} waited over 100 ms for a lock; longest insert (no lock timeout) {longest:?}. \
         During a plain CREATE INDEX: {plain_inserts} inserts, {plain_waits} waited; longest insert {plain_longest:?}"
    );
    assert_eq!(
        waits, 0,
        "a writer waited for a lock during the concurrent builds"
    );
    assert!(
        plain_waits > 0,
        "the plain builds never made a writer wait: the comparison shows nothing"
    );
}

#[test]
fn a_killed_or_terminated_build_is_cleaned_up_and_finished_once() {
    let (p, _) = items_project("notx_kill", 6, 20_000, 0.03);
    p.add_migration("V2__audit.sql", "CREATE TABLE audit (id int);\n");
    // About 3 s per build: long enough to be caught in the middle.
    p.add_migration(
        "V3__slow_idx.sql",
        &format!("{DIRECTIVE}CREATE INDEX CONCURRENTLY IF NOT EXISTS items_slow_idx ON items (slow_key(v));\n"),
    );
    p.add_migration("V4__after.sql", "CREATE TABLE after_v3 (id int);\n");
    let building = |p: &Project| -> Vec<i32> {
        p.db()
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%CREATE INDEX CONCURRENTLY%' \
                 AND state = 'active' \
                 AND query NOT LIKE '%pg_stat_activity%'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    // A build is under way once its index is in the catalog, not yet valid.
    let wait_for_builds = |p: &Project| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while building(p).is_empty() || invalid_indexes(p).is_empty() {
            assert!(Instant::now() < deadline, "no build started");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // SIGKILL mid-build: the orphaned builds stop (the server checks for the client every
    // 2 s) and leave INVALID indexes; a re-run drops them, builds again, finishes once.
    let child = p.spawn(&["migrate", "--all", "--jobs", "4"]);
    wait_for_builds(&p);
    signal(child.id(), "KILL");
    let _ = wait_with_deadline(child, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !building(&p).is_empty() {
        assert!(Instant::now() < deadline, "orphaned builds kept running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = invalid_indexes(&p);
    assert!(
        !left.is_empty(),
        "the kill left no INVALID index: nothing was tested"
    );
    let out = p.run(&["migrate", "--all"], 0);
    assert!(
        stderr(&out).contains("dropped the INVALID index items_slow_idx"),
        "{}",
        stderr(&out)
    );
    assert!(invalid_indexes(&p).is_empty());
    p.assert_converged(4);
    assert_eq!(valid_index_count(&p, "items_slow_idx"), 6);

    // A worker's backend terminated mid-build: that tenant is retried and finishes.
    p.add_migration(
        "V5__slow_idx2.sql",
        &format!("{DIRECTIVE}CREATE INDEX CONCURRENTLY IF NOT EXISTS items_slow_idx2 ON items (slow_key(v), id);\n"),
    );
    let child = p.spawn(&["migrate", "--all", "--jobs", "2"]);
    // The victim is a backend whose index is already in the catalog, not yet valid: one
    // terminated before that would leave nothing behind, and nothing would be tested.
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim: i32 = loop {
        let found = p
            .db()
            .query(
                "SELECT c.pid FROM pg_stat_progress_create_index c \
                 JOIN pg_index i ON i.indexrelid = c.index_relid \
                 WHERE c.datid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND NOT i.indisvalid LIMIT 1",
                &[],
            )
            .unwrap();
        if let Some(row) = found.first() {
            break row.get(0);
        }
        assert!(Instant::now() < deadline, "no build reached the catalog");
        std::thread::sleep(Duration::from_millis(10));
    };
    p.db()
        .query_one("SELECT pg_terminate_backend($1)", &[&victim])
        .unwrap();
    let out = wait_ok(child, Duration::from_secs(120));
    assert!(
        stderr(&out).contains("dropped the INVALID index items_slow_idx2"),
        "{}",
        stderr(&out)
    );
    assert!(invalid_indexes(&p).is_empty());
    p.assert_converged(5);
    assert_eq!(valid_index_count(&p, "items_slow_idx2"), 6);
}

#[test]
fn a_failed_build_stops_its_tenants_at_the_last_recorded_version() {
    let (p, ids) = items_project("notx_fail", 10, 2_000, 0.0);
    // Three tenants have a duplicated key: their unique index cannot be built.
    for id in &ids[..3] {
        p.db()
            .batch_execute(&format!("UPDATE tenant_{id}.items SET v = 1 WHERE id <= 2"))
            .unwrap();
    }
    for id in &ids[3..] {
        p.db()
            .batch_execute(&format!("UPDATE tenant_{id}.items SET v = id"))
            .unwrap();
    }
    p.add_migration("V2__audit.sql", "CREATE TABLE audit (id int);\n");
    p.add_migration(
        "V3__unique_v.sql",
        &format!("{DIRECTIVE}-- one row per key\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_v_key ON items (v);\n"),
    );
    p.add_migration("V4__after.sql", "CREATE TABLE after_v3 (id int);\n");
    let out = p.run(&["migrate", "--all"], 1);
    let text = stdout(&out);
    assert!(text.contains("7 migrated, 3 failed"), "{text}");
    assert!(
        text.contains(
            "V3__unique_v failed at line 3: ERROR: could not create unique index \"items_v_key\""
        ) && text.contains("not recorded (it ran outside a transaction"),
        "{text}"
    );
    let versions = p.versions();
    for (i, id) in ids.iter().enumerate() {
        let want = if i < 3 { 2 } else { 4 };
        assert_eq!(versions[id], Some(want), "{id}");
    }
    // V2 was recorded before V3 ran: those three are at V2, with V3's index gone.
    assert_eq!(p.history(&format!("tenant_{}", ids[0])), [1, 2]);
    assert!(invalid_indexes(&p).is_empty(), "{:?}", invalid_indexes(&p));
    assert_eq!(valid_index_count(&p, "items_v_key"), 7);
    let v = p.json(&["status", "--json"], 0);
    let failures = v["clusters"][0]["last_change"]["failures"]
        .as_array()
        .unwrap();
    assert_eq!(failures.len(), 3);
    assert!(failures
        .iter()
        .all(|f| f["version"] == 2 && f["failure"]["version"] == 2));

    for id in &ids[..3] {
        p.db()
            .batch_execute(&format!("UPDATE tenant_{id}.items SET v = id"))
            .unwrap();
    }
    let text = stdout(&p.run(&["migrate", "--all"], 0));
    assert!(
        text.contains("3 migrated, 0 failed, 7 already current"),
        "{text}"
    );
    p.assert_converged(4);
}

#[test]
fn segments_leave_the_connection_clean_and_roll_back_through_a_no_transaction_script() {
    let (p, ids) = items_project("notx_clean", 3, 500, 0.0);
    p.add_migration(
        "V2__items_v.sql",
        &format!(
            "{DIRECTIVE}SET maintenance_work_mem = '77MB';\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_v_idx ON items (v);\n"
        ),
    );
    p.add_migration(
        "V2__items_v.down.sql",
        &format!("{DIRECTIVE}DROP INDEX CONCURRENTLY IF EXISTS items_v_idx;\n"),
    );
    // Runs right after V2 on the same connection (--jobs 1): what the session holds now.
    p.add_migration(
        "V3__probe.sql",
        "CREATE TABLE probe AS SELECT current_setting('maintenance_work_mem') AS mwm, \
         (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' \
            AND objid <> hashtext(current_schema())::oid) AS other_locks;\n",
    );
    p.add_migration("V3__probe.down.sql", "DROP TABLE probe;\n");
    p.run(&["migrate", "--all", "--jobs", "1"], 0);
    for id in &ids {
        let (mwm, other): (String, i64) = p
            .db()
            .query_one(
                &format!("SELECT mwm, other_locks FROM tenant_{id}.probe"),
                &[],
            )
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_ne!(
            mwm, "77MB",
            "{id}: a setting of the no-transaction file leaked"
        );
        assert_eq!(other, 0, "{id}: an earlier schema's lock is still held");
    }
    p.assert_converged(3);

    // A new tenant takes the no-transaction migration too (after its first transaction).
    p.run(&["tenant", "create", "newbie"], 0);
    assert_eq!(p.versions()["newbie"], Some(3));
    assert_eq!(p.history("tenant_newbie"), [1, 2, 3]);
    assert_eq!(valid_index_count(&p, "items_v_idx"), 4);

    // Rollback through the no-transaction down script.
    let out = p.run(&["rollback", "--to", "1", "--all"], 0);
    assert!(
        stdout(&out).contains("4 rolled back, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(valid_index_count(&p, "items_v_idx"), 0);
    p.assert_converged(1);

    // [run] step_statement_timeout bounds a no-transaction statement (V2 and V3 are applied
    // first, without it: concurrent index builds wait for each other).
    p.run(&["migrate", "--all"], 0);
    p.write_config("[run]\nstep_statement_timeout = \"300ms\"");
    p.add_migration(
        "V4__slow.sql",
        &format!("{DIRECTIVE}SELECT pg_sleep(30);\n"),
    );
    let text = stdout(&p.run(&["migrate", "--all"], 1));
    assert!(
        text.contains("V4__slow failed at line 2") && text.contains("statement timeout"),
        "{text}"
    );
    assert!(
        p.versions().values().all(|v| *v == Some(3)),
        "V4 not recorded"
    );
}

#[test]
fn what_cannot_run_in_a_transaction_is_refused_before_anything_runs() {
    let (p, _) = items_project("notx_lint", 2, 10, 0.0);
    let before = p.fingerprint();
    for (file, sql, expect) in [
        (
            "V2__idx.sql",
            "CREATE TABLE x (id int);\n-- an index\nCREATE INDEX CONCURRENTLY x_id ON x (id);\n",
            "V2__idx.sql:3: `CREATE INDEX CONCURRENTLY` cannot run inside a transaction",
        ),
        (
            "V2__vac.sql",
            "VACUUM items;\n",
            "V2__vac.sql:1: `VACUUM` cannot run inside a transaction",
        ),
        (
            "V2__enum.sql",
            "CREATE TYPE mood AS ENUM ('ok');\nALTER TYPE mood ADD VALUE 'great';\nSELECT 'great'::mood;\n",
            "V2__enum.sql:3: uses the enum value 'great' added on line 2",
        ),
        (
            "V2__tx.sql",
            "-- tenantctl:no-transaction\nBEGIN;\nCREATE INDEX CONCURRENTLY i ON items (v);\nCOMMIT;\n",
            "V2__tx.sql:2: `BEGIN` is transaction control",
        ),
        (
            "V2__path.sql",
            "-- tenantctl:no-transaction\nSET search_path TO public;\nCREATE INDEX CONCURRENTLY i ON items (v);\n",
            "V2__path.sql:2: `SET SEARCH_PATH TO` would move this no-transaction migration",
        ),
    ] {
        p.add_migration(file, sql);
        let out = p.run(&["migrate", "--all"], 2);
        assert!(stderr(&out).contains(expect), "{file}: {}", stderr(&out));
        if file == "V2__idx.sql" {
            assert!(
                stderr(&out).contains("put `-- tenantctl:no-transaction` on its first line"),
                "{}",
                stderr(&out)
            );
        }
        std::fs::remove_file(p.migrations_dir().join(file)).unwrap();
    }
    assert_eq!(before, p.fingerprint(), "nothing was changed");
}
