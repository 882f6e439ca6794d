//! tenant move, tenant stats and rebalance on real PostgreSQL: two clusters with logical
//! replication on, a writer that never stops, a SIGKILL at every step of a move.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

const SHOP: &str = "CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id), total numeric(12,2) NOT NULL, note text);
CREATE MATERIALIZED VIEW order_totals AS SELECT customer_id, sum(total) AS total FROM orders GROUP BY customer_id;
";

/// A project with two clusters: `a` (the project's database on the first logical server)
/// and `b` (a fresh database on the second), and the shop migration.
struct Pair {
    p: Project,
    b_admin: String,
}

fn pair(name: &str) -> Pair {
    let (a, b) = logical_pair();
    let p = Project::on(a, name, 0);
    p.add_migration("V1__shop.sql", SHOP);
    let b_url = fresh_db(b, name);
    let b_admin = b.admin_url(b_url.rsplit('/').next().unwrap());
    p.with_cluster_b(&b_url);
    Pair { p, b_admin }
}

impl Pair {
    fn a(&self) -> postgres::Client {
        postgres::Client::connect(&self.p.admin, postgres::NoTls).unwrap()
    }

    fn b(&self) -> postgres::Client {
        postgres::Client::connect(&self.b_admin, postgres::NoTls).unwrap()
    }

    /// A tenant on cluster a with `n` customers and ten orders each.
    fn tenant_with_rows(&self, id: &str, n: i64) {
        self.p.run(&["tenant", "create", id, "--cluster", "a"], 0);
        self.a()
            .batch_execute(&format!(
                "INSERT INTO tenant_{id}.customers (name) SELECT 'c' || g FROM generate_series(1, {n}) g;
                 INSERT INTO tenant_{id}.orders (customer_id, total, note) SELECT 1 + g % {n}, g / 100.0, CASE WHEN g % 7 = 0 THEN NULL ELSE 'n' || g END FROM generate_series(1, {n} * 10) g;
                 REFRESH MATERIALIZED VIEW tenant_{id}.order_totals;"
            ))
            .unwrap();
    }
}

/// An application's transaction on a thread: `first`, then (once it has run, when this
/// returns) `pause`, `then` and COMMIT; joined, how it ended.
fn app_transaction(
    url: &str,
    first: &'static str,
    pause: Duration,
    then: &'static str,
) -> std::thread::JoinHandle<Result<(), postgres::Error>> {
    let url = url.to_string();
    let (began_tx, began) = std::sync::mpsc::channel();
    let app = std::thread::spawn(move || {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = db.transaction().unwrap();
        tx.execute(first, &[]).unwrap();
        began_tx.send(()).unwrap();
        std::thread::sleep(pause);
        tx.query(then, &[])?;
        tx.commit()
    });
    began.recv().unwrap();
    app
}

/// The one number a statement returns.
fn value(db: &mut postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

/// The registry's state of `id` on a cluster (None: no row).
fn state(db: &mut postgres::Client, id: &str) -> Option<String> {
    db.query_opt("SELECT state FROM tenantctl.tenants WHERE id = $1", &[&id])
        .unwrap()
        .map(|r| r.get(0))
}

/// Every replication object a move could leave on this database (and its server's slots of
/// this database).
fn replication_objects(db: &mut postgres::Client) -> Vec<String> {
    db.query(
        "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database() \
         UNION ALL SELECT 'publication ' || pubname FROM pg_publication \
         UNION ALL SELECT 'subscription ' || subname FROM pg_subscription \
           WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// What a tenant's schema holds: rows per table and a digest of their contents.
fn contents(db: &mut postgres::Client, schema: &str) -> BTreeMap<String, (i64, String)> {
    ["customers", "orders", "order_totals"]
        .iter()
        .map(|t| {
            let r = db
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {schema}.{t} x"
                    ),
                    &[],
                )
                .unwrap();
            (t.to_string(), (r.get(0), r.get(1)))
        })
        .collect()
}

fn unfinished_moves(db: &mut postgres::Client) -> i64 {
    value(
        db,
        "SELECT count(*) FROM tenantctl.moves WHERE finished_at IS NULL",
    )
}

/// The moved tenant is active on b only, holds what a held, and nothing of the move is left
/// but the old copy on a.
fn assert_moved(t: &Pair, id: &str, before: &BTreeMap<String, (i64, String)>) {
    let (mut a, mut b) = (t.a(), t.b());
    assert_eq!(state(&mut a, id).as_deref(), Some("moved"));
    assert_eq!(state(&mut b, id).as_deref(), Some("active"));
    assert_eq!(&contents(&mut b, &format!("tenant_{id}")), before);
    assert_eq!(replication_objects(&mut a), Vec::<String>::new());
    assert_eq!(replication_objects(&mut b), Vec::<String>::new());
    assert_eq!(unfinished_moves(&mut a), 0);
    assert_eq!(unfinished_moves(&mut b), 0);
    let schemas: i64 = a
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&format!("tenant_{id}")],
        )
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "the source schema was renamed out of the way");
    // The sequences went with it: a new row gets an id above every moved one.
    let next: i64 = value(
        &mut b,
        &format!("INSERT INTO tenant_{id}.customers (name) VALUES ('after the move') RETURNING id"),
    );
    let max: i64 = value(
        &mut b,
        &format!("SELECT max(id) FROM tenant_{id}.customers WHERE name <> 'after the move'"),
    );
    assert!(next > max, "identity at {next}, rows up to {max}");
}

#[test]
fn an_online_move_under_a_writer_loses_nothing_and_doubles_nothing() {
    let t = pair("mv_writer");
    t.tenant_with_rows("acme", 2000);
    let stop = Arc::new(AtomicBool::new(false));
    let (a_url, b_url, stopping) = (t.p.admin.clone(), t.b_admin.clone(), stop.clone());
    // An application that writes every 5 ms to where the tenant lives: the source until
    // its schema is gone (the cutover), then the target.
    let writer = std::thread::spawn(move || {
        let mut a = postgres::Client::connect(&a_url, postgres::NoTls).unwrap();
        let mut b = postgres::Client::connect(&b_url, postgres::NoTls).unwrap();
        let (mut committed, mut on_b, mut stopped_at) = (Vec::new(), false, None);
        for i in 0.. {
            if stopping.load(Ordering::SeqCst) {
                let at = *stopped_at.get_or_insert_with(Instant::now);
                if (on_b && committed.iter().filter(|(_, b)| *b).count() >= 20)
                    || at.elapsed() > Duration::from_secs(5)
                {
                    break;
                }
            }
            let name = format!("w{i}");
            let sql = "INSERT INTO tenant_acme.customers (name) VALUES ($1)";
            if !on_b {
                match a.execute(sql, &[&name]) {
                    Ok(_) => {
                        committed.push((name, false));
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => {
                        let text = e
                            .as_db_error()
                            .map(|d| d.message().to_string())
                            .unwrap_or_default();
                        assert!(
                            text.contains("does not exist"),
                            "the source refused a write: {e}"
                        );
                        on_b = true;
                    }
                }
            }
            b.execute(sql, &[&name]).unwrap();
            committed.push((name, true));
            std::thread::sleep(Duration::from_millis(5));
        }
        committed
    });
    std::thread::sleep(Duration::from_millis(300));
    let out =
        t.p.cmd()
            .args(["tenant", "move", "acme", "--to", "b", "--json"])
            .output()
            .unwrap();
    stop.store(true, Ordering::SeqCst);
    let committed = writer.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["command"], "tenant move");
    assert_eq!(doc["online"], true);
    let on_a = committed.iter().filter(|(_, b)| !b).count();
    let on_b = committed.len() - on_a;
    assert!(
        on_a > 10 && on_b >= 20,
        "the writer wrote {on_a} to a, {on_b} to b"
    );
    // Every committed insert exactly once on the target, and nothing else.
    let (mut a, mut b) = (t.a(), t.b());
    let mut there: Vec<String> = b
        .query(
            "SELECT name FROM tenant_acme.customers WHERE name LIKE 'w%' ORDER BY name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut want: Vec<String> = committed.iter().map(|(n, _)| n.clone()).collect();
    there.sort();
    want.sort();
    assert_eq!(there, want);
    // The old copy holds what was written before the cutover, and nothing after.
    let old = doc["old_schema"].as_str().unwrap().to_string();
    let mut kept: Vec<String> = a
        .query(
            &format!("SELECT name FROM {old}.customers WHERE name LIKE 'w%'"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut before: Vec<String> = committed
        .iter()
        .filter(|(_, b)| !b)
        .map(|(n, _)| n.clone())
        .collect();
    kept.sort();
    before.sort();
    assert_eq!(kept, before);
    assert_eq!(state(&mut a, "acme").as_deref(), Some("moved"));
    assert_eq!(state(&mut b, "acme").as_deref(), Some("active"));
    assert_eq!(replication_objects(&mut a), Vec::<String>::new());
    assert_eq!(replication_objects(&mut b), Vec::<String>::new());
    // The materialized view was refreshed on the target at the cutover.
    let views: i64 = value(&mut b, "SELECT count(*) FROM tenant_acme.order_totals");
    assert_eq!(views, 2000);
    // Both audit trails record it.
    for db in [&mut a, &mut b] {
        let n: i64 = value(db, "SELECT count(*) FROM tenantctl.runs WHERE command = 'tenant move' AND state = 'succeeded'");
        assert_eq!(n, 1);
    }
}

#[test]
fn a_tenant_being_moved_is_migrated_on_neither_side_and_on_its_new_cluster_after() {
    let t = pair("mv_migrate");
    t.tenant_with_rows("acme", 100);
    t.tenant_with_rows("globex", 10);
    // A routing hook that fails: the cutover is rolled back, the move goes on streaming.
    let out = t.p.run(
        &[
            "tenant",
            "move",
            "acme",
            "--to",
            "b",
            "--on-cutover",
            "exit 3",
        ],
        1,
    );
    assert!(
        stderr(&out).contains("--on-cutover failed"),
        "{}",
        stderr(&out)
    );
    let (mut a, mut b) = (t.a(), t.b());
    assert_eq!(state(&mut a, "acme").as_deref(), Some("moving"));
    assert_eq!(state(&mut b, "acme").as_deref(), Some("incoming"));
    assert_eq!(replication_objects(&mut a).len(), 2, "publication and slot");
    t.p.add_migration(
        "V2__email.sql",
        "ALTER TABLE customers ADD COLUMN email text;",
    );
    let out = t.p.run(&["migrate", "--all"], 0);
    assert!(
        stderr(&out).contains("tenant acme is being moved to b"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("tenant acme is arriving from a"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        t.p.history("tenant_acme"),
        vec![1],
        "not migrated on the source"
    );
    assert_eq!(t.p.history("tenant_globex"), vec![1, 2]);
    let history = |db: &mut postgres::Client, schema: &str| -> Vec<i32> {
        db.query(
            &format!("SELECT version FROM {schema}.refinery_schema_history ORDER BY version"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(
        history(&mut b, "tenant_acme"),
        vec![1],
        "not migrated on the target"
    );
    // Run again: the move resumes from the stream and cuts over; a later migrate --all
    // migrates it on b, and only there.
    let before = contents(&mut a, "tenant_acme");
    let out =
        t.p.run(&["tenant", "move", "acme", "--to", "b", "--json"], 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["resumed_from"], "streaming");
    assert_moved(&t, "acme", &before);
    let out = t.p.run(&["migrate", "--all"], 0);
    assert!(!stderr(&out).contains("being moved"), "{}", stderr(&out));
    assert_eq!(history(&mut b, "tenant_acme"), vec![1, 2]);
    let old = doc["old_schema"].as_str().unwrap();
    assert_eq!(
        history(&mut a, old),
        vec![1],
        "the old copy is left as it was"
    );
    let status = t.p.json(&["status", "--json"], 0);
    let acme: Vec<&serde_json::Value> = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["id"] == "acme")
        .collect();
    assert_eq!(acme.len(), 1, "{status}");
    assert_eq!(acme[0]["cluster"], "b");
    assert_eq!(acme[0]["version"], 2);
}

/// SIGKILL at a point of the move (see `engine::mover::kill_point`).
fn killed_at(t: &Pair, point: &str) {
    let out =
        t.p.cmd()
            .env("TENANTCTL_TEST_KILL_AT", point)
            .args(["tenant", "move", "acme", "--to", "b"])
            .output()
            .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "killed at {point}: {}",
        stderr(&out)
    );
    let (mut a, mut b) = (t.a(), t.b());
    let active = [state(&mut a, "acme"), state(&mut b, "acme")]
        .iter()
        .filter(|s| s.as_deref() == Some("active"))
        .count();
    assert!(active <= 1, "killed at {point}: active on both clusters");
}

#[test]
fn a_move_killed_at_any_point_is_finished_by_the_same_command() {
    for point in [
        "copying",
        "copied",
        "streaming",
        "cutover",
        "committed",
        "flipped",
    ] {
        let t = pair(&format!("mv_kill_{point}"));
        t.tenant_with_rows("acme", 300);
        let before = contents(&mut t.a(), "tenant_acme");
        killed_at(&t, point);
        // Before the cutover's commit the source still serves the tenant; after it, the
        // target does (or will, at the flip).
        let source = state(&mut t.a(), "acme");
        match point {
            "copying" | "copied" | "streaming" | "cutover" => {
                assert_eq!(source.as_deref(), Some("moving"), "{point}")
            }
            _ => assert_eq!(source.as_deref(), Some("moved"), "{point}"),
        }
        let status = t.p.json(&["status", "--json"], 0);
        if point != "flipped" {
            assert!(
                !status["moves"].as_array().unwrap().is_empty(),
                "{point}: {status}"
            );
        }
        t.p.run(&["tenant", "move", "acme", "--to", "b"], 0);
        assert_moved(&t, "acme", &before);
    }
}

#[test]
fn a_flip_left_undone_is_finished_by_migrate_and_the_tenant_is_migrated() {
    let t = pair("mv_flip");
    t.tenant_with_rows("acme", 50);
    killed_at(&t, "committed");
    assert_eq!(state(&mut t.b(), "acme").as_deref(), Some("incoming"));
    t.p.add_migration(
        "V2__email.sql",
        "ALTER TABLE customers ADD COLUMN email text;",
    );
    // A dry run changes nothing, and says what the real run will do.
    let out = t.p.run(&["migrate", "--all", "--dry-run"], 0);
    assert!(
        stderr(&out).contains("without --dry-run"),
        "{}",
        stderr(&out)
    );
    assert_eq!(state(&mut t.b(), "acme").as_deref(), Some("incoming"));
    let out = t.p.run(&["migrate", "--all"], 0);
    assert!(
        stderr(&out).contains("it is active here now"),
        "{}",
        stderr(&out)
    );
    assert_eq!(state(&mut t.b(), "acme").as_deref(), Some("active"));
    let v: i32 = t
        .b()
        .query_one(
            "SELECT max(version) FROM tenant_acme.refinery_schema_history",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(v, 2, "the moved tenant is not left out of migrate --all");
    // The same move then drops what replication left.
    t.p.run(&["tenant", "move", "acme", "--to", "b"], 0);
    assert_eq!(replication_objects(&mut t.a()), Vec::<String>::new());
    assert_eq!(replication_objects(&mut t.b()), Vec::<String>::new());
}

#[test]
fn abort_undoes_a_move_that_has_not_cut_over_and_refuses_one_that_has() {
    let t = pair("mv_abort");
    t.tenant_with_rows("acme", 100);
    let before = contents(&mut t.a(), "tenant_acme");
    killed_at(&t, "streaming");
    let out = t.p.run(&["tenant", "move", "acme", "--abort"], 0);
    assert!(
        stdout(&out).contains("aborted the move"),
        "{}",
        stdout(&out)
    );
    let (mut a, mut b) = (t.a(), t.b());
    assert_eq!(state(&mut a, "acme").as_deref(), Some("active"));
    assert_eq!(state(&mut b, "acme"), None);
    let left: i64 = value(
        &mut b,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme'",
    );
    assert_eq!(left, 0);
    assert_eq!(replication_objects(&mut a), Vec::<String>::new());
    assert_eq!(replication_objects(&mut b), Vec::<String>::new());
    assert_eq!(contents(&mut a, "tenant_acme"), before);
    // Nothing to abort now; a cut-over move is not undone.
    t.p.run(&["tenant", "move", "acme", "--abort"], 2);
    killed_at(&t, "committed");
    let out = t.p.run(&["tenant", "move", "acme", "--abort"], 2);
    assert!(stderr(&out).contains("has cut over"), "{}", stderr(&out));
    t.p.run(&["tenant", "move", "acme", "--to", "b"], 0);
    assert_moved(&t, "acme", &before);
}

#[test]
fn what_logical_replication_cannot_carry_is_refused_and_offline_moves_it() {
    let t = pair("mv_offline");
    t.p.add_migration(
        "V2__log.sql",
        "CREATE TABLE audit_log (at timestamptz NOT NULL DEFAULT now(), what text);",
    );
    t.tenant_with_rows("acme", 200);
    t.a().batch_execute("INSERT INTO tenant_acme.audit_log (what) SELECT 'x' || g FROM generate_series(1, 50) g").unwrap();
    let out = t.p.run(&["tenant", "move", "acme", "--to", "b"], 2);
    let err = stderr(&out);
    assert!(
        err.contains("audit_log") && err.contains("primary key") && err.contains("--offline"),
        "{err}"
    );
    let (mut a, mut b) = (t.a(), t.b());
    assert_eq!(state(&mut a, "acme").as_deref(), Some("active"));
    assert_eq!(state(&mut b, "acme"), None);
    assert_eq!(replication_objects(&mut a), Vec::<String>::new());
    let before = contents(&mut a, "tenant_acme");
    let out = t.p.run(
        &[
            "tenant",
            "move",
            "acme",
            "--to",
            "b",
            "--offline",
            "--keep-source",
            "0s",
            "--json",
        ],
        0,
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["online"], false);
    assert_eq!(doc["old_schema_dropped"], true);
    assert_eq!(contents(&mut b, "tenant_acme"), before);
    let logs: i64 = value(&mut b, "SELECT count(*) FROM tenant_acme.audit_log");
    assert_eq!(logs, 50);
    let old: i64 = value(
        &mut a,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant_acme__moved_%'",
    );
    assert_eq!(old, 0, "--keep-source 0s drops the old copy");
}

#[test]
fn a_source_without_logical_wal_names_what_is_missing() {
    // The shared test server runs with wal_level = replica.
    let p = Project::new("mv_nowal", 0);
    p.add_migration("V1__shop.sql", SHOP);
    let (_, b) = logical_pair();
    let b_url = fresh_db(b, "mv_nowal_b");
    p.with_cluster_b(&b_url);
    p.run(&["tenant", "create", "acme", "--cluster", "a"], 0);
    let out = p.run(&["tenant", "move", "acme", "--to", "b"], 2);
    assert!(
        stderr(&out).contains("wal_level = replica"),
        "{}",
        stderr(&out)
    );
    assert_eq!(p.tenant_state("acme"), "active");
    p.run(&["tenant", "move", "acme", "--to", "b", "--offline"], 0);
    assert_eq!(p.tenant_state("acme"), "moved");
}

#[test]
fn old_copies_and_stray_replication_objects_are_shown_and_cleaned_up() {
    let t = pair("mv_cleanup");
    t.tenant_with_rows("acme", 20);
    t.p.run(
        &["tenant", "move", "acme", "--to", "b", "--keep-source", "7d"],
        0,
    );
    let status = t.p.json(&["status", "--json"], 0);
    let copies = status["old_copies"].as_array().unwrap();
    assert_eq!(copies.len(), 1, "{status}");
    assert_eq!(copies[0]["due"], false);
    // Not due: --cleanup keeps it; named, it goes.
    let out = t.p.run(&["tenant", "move", "--cleanup", "--yes"], 0);
    assert!(
        stdout(&out).contains("nothing to clean up"),
        "{}",
        stdout(&out)
    );
    let old = copies[0]["schema"].as_str().unwrap().to_string();
    assert!(t.p.schema_exists(&old));
    // A publication named like a move's, of no move: status fails and names it.
    t.a()
        .batch_execute("CREATE PUBLICATION tenantctl_mv_stray")
        .unwrap();
    let out = t.p.run(&["status"], 1);
    assert!(
        stdout(&out).contains("LEFTOVER REPLICATION OBJECTS")
            && stdout(&out).contains("tenantctl_mv_stray"),
        "{}",
        stdout(&out)
    );
    // Without a terminal and without --yes, nothing is dropped.
    t.p.run(&["tenant", "move", "--cleanup", "acme"], 2);
    assert!(t.p.schema_exists(&old));
    t.p.run(&["tenant", "move", "--cleanup", "acme", "--yes"], 0);
    assert!(!t.p.schema_exists(&old));
    assert_eq!(replication_objects(&mut t.a()), Vec::<String>::new());
    let status = t.p.json(&["status", "--json"], 0);
    assert_eq!(status["old_copies"], serde_json::json!([]));
    assert_eq!(status["leftovers"], serde_json::json!([]));
}

#[test]
fn bad_moves_are_refused_and_change_nothing() {
    let t = pair("mv_bad");
    t.tenant_with_rows("acme", 5);
    let err = stderr(&t.p.run(&["tenant", "move", "acme", "--to", "nowhere"], 2));
    assert!(
        err.contains("no such cluster") && err.contains("a, b"),
        "{err}"
    );
    let err = stderr(&t.p.run(&["tenant", "move", "ghost", "--to", "b"], 2));
    assert!(err.contains("not registered"), "{err}");
    let err = stderr(&t.p.run(&["tenant", "move", "acme", "--to", "a"], 2));
    assert!(err.contains("already on cluster a"), "{err}");
    t.p.run(&["tenant", "move", "acme"], 2);
    assert_eq!(state(&mut t.a(), "acme").as_deref(), Some("active"));
    let moves: i64 = value(&mut t.a(), "SELECT count(*) FROM tenantctl.moves");
    assert_eq!(moves, 0);
}

#[test]
fn stats_sizes_every_tenant_and_rebalance_moves_the_largest_unpinned() {
    let t = pair("mv_rebalance");
    t.tenant_with_rows("big", 3000);
    t.tenant_with_rows("mid", 1500);
    t.tenant_with_rows("small", 100);
    t.p.run(&["tenant", "label", "big", "pin=true"], 0);
    t.a().batch_execute("ANALYZE").unwrap();
    let stats = t.p.json(&["tenant", "stats", "--json"], 0);
    let ids: Vec<&str> = stats["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["big", "mid", "small"], "largest first");
    let big = &stats["tenants"][0];
    assert!(big["total_bytes"].as_i64().unwrap() > big["index_bytes"].as_i64().unwrap());
    assert!(big["rows"].as_i64().unwrap() >= 30_000, "{big}");
    let plan = t.p.json(&["rebalance", "--plan", "--json"], 0);
    let moves: Vec<(&str, &str)> = plan["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["tenant"].as_str().unwrap(), m["to"].as_str().unwrap()))
        .collect();
    // The pinned tenant stays; the largest of the others goes first.
    assert_eq!(moves, [("mid", "b"), ("small", "b")], "{plan}");
    assert_eq!(
        plan["balanced"], false,
        "the pinned one is more than the mean: {plan}"
    );
    t.p.run(
        &["rebalance", "--apply", "--yes", "--events", "moves.ndjson"],
        0,
    );
    // Each move is two runs in the stream, each the ledger's: the copy made on the target
    // (cluster b), the cutover on the source (cluster a).
    let stream = std::fs::read_to_string(t.p.path().join("moves.ndjson")).unwrap();
    let events: Vec<serde_json::Value> = stream
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |name: &str, cluster: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["event"] == name && e["cluster"] == cluster)
            .collect()
    };
    for (cluster, mut db) in [("a", t.a()), ("b", t.b())] {
        let started: Vec<&str> = of("tenant_started", cluster)
            .iter()
            .map(|e| e["tenant"].as_str().unwrap())
            .collect();
        assert_eq!(started, ["mid", "small"], "{cluster}: {stream}");
        let finished: Vec<&str> = of("tenant_finished", cluster)
            .iter()
            .map(|e| e["tenant"].as_str().unwrap())
            .collect();
        assert_eq!(finished, ["mid", "small"], "{cluster}: {stream}");
        let recorded: Vec<i64> = db
            .query(
                "SELECT id FROM tenantctl.runs WHERE command = 'tenant move' ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let ended: Vec<(i64, &str)> = of("run_finished", cluster)
            .iter()
            .map(|e| (e["run_id"].as_i64().unwrap(), e["state"].as_str().unwrap()))
            .collect();
        let expected: Vec<(i64, &str)> = recorded.iter().map(|&id| (id, "succeeded")).collect();
        assert_eq!(ended, expected, "{cluster}: {stream}");
        assert!(of("run_started", cluster)
            .iter()
            .all(|e| e["command"] == "tenant move"));
    }
    for id in ["mid", "small"] {
        assert_eq!(state(&mut t.a(), id).as_deref(), Some("moved"));
        assert_eq!(state(&mut t.b(), id).as_deref(), Some("active"));
    }
    assert_eq!(state(&mut t.a(), "big").as_deref(), Some("active"));
    let plans: i64 = value(
        &mut t.a(),
        "SELECT count(*) FROM tenantctl.runs WHERE command = 'rebalance'",
    );
    assert_eq!(plans, 1, "the plan is in the audit trail");
}

#[test]
fn a_connection_lost_in_the_first_copy_or_in_the_cutover_leaves_the_move_whole() {
    let t = pair("mv_lost");
    t.tenant_with_rows("acme", 20_000);
    let before = contents(&mut t.a(), "tenant_acme");
    // The source's side of the first copy is terminated while it streams its rows.
    let child = t.p.spawn(&["tenant", "move", "acme", "--to", "b"]);
    let mut a = t.a();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut cut = 0;
    while cut == 0 && Instant::now() < deadline {
        cut = a
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'COPY %TO STDOUT%'",
                &[],
            )
            .unwrap()
            .len();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(cut > 0, "no COPY seen to cut");
    let out = wait_with_deadline(child, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing moved"), "{}", stderr(&out));
    let mut b = t.b();
    assert_eq!(state(&mut a, "acme").as_deref(), Some("active"));
    assert_eq!(state(&mut b, "acme"), None);
    assert_eq!(replication_objects(&mut a), Vec::<String>::new());
    assert_eq!(replication_objects(&mut b), Vec::<String>::new());
    // Inside the cutover: the routing hook itself cuts every tenantctl connection to the
    // source; the cutover is rolled back, the move streams on, and the same command ends it.
    let hook = format!(
        "psql '{}' -qAtc \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tenantctl'\" >/dev/null",
        t.p.url
    );
    let out = t.p.run(
        &["tenant", "move", "acme", "--to", "b", "--on-cutover", &hook],
        1,
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_eq!(state(&mut t.a(), "acme").as_deref(), Some("moving"));
    assert_eq!(state(&mut t.b(), "acme").as_deref(), Some("incoming"));
    t.p.run(&["tenant", "move", "acme", "--to", "b"], 0);
    assert_moved(&t, "acme", &before);
}

#[test]
fn a_long_transaction_on_the_source_delays_the_start_without_holding_the_tenant() {
    let t = pair("mv_longtx");
    t.tenant_with_rows("acme", 50);
    t.tenant_with_rows("globex", 5);
    // Another tenant's write transaction, open for 3 s when the move starts: making a slot
    // waits for it; the tenant's writes must not wait with it.
    let long = app_transaction(
        &t.p.admin,
        "INSERT INTO tenant_globex.customers (name) VALUES ('long')",
        Duration::from_secs(3),
        "SELECT 1",
    );
    let before = contents(&mut t.a(), "tenant_acme");
    let out = t.p.run(
        &[
            "tenant",
            "move",
            "acme",
            "--to",
            "b",
            "--max-pause",
            "300ms",
            "--json",
        ],
        0,
    );
    long.join().unwrap().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let start = doc["start_pause_ms"].as_u64().unwrap();
    assert!(
        start < 1000,
        "the tenant's writes were held {start} ms at the start"
    );
    assert!(doc["elapsed_ms"].as_u64().unwrap() >= 2000, "{doc}");
    assert_moved(&t, "acme", &before);
}

#[test]
fn the_id_stays_taken_on_both_clusters_during_and_after_a_move() {
    let t = pair("mv_ids");
    t.tenant_with_rows("acme", 20);
    killed_at(&t, "streaming");
    for cluster in ["a", "b"] {
        let out =
            t.p.run(&["tenant", "create", "acme", "--cluster", cluster], 1);
        assert!(
            stdout(&out).contains("already registered"),
            "{}",
            stdout(&out)
        );
    }
    assert_eq!(state(&mut t.a(), "acme").as_deref(), Some("moving"));
    assert_eq!(state(&mut t.b(), "acme").as_deref(), Some("incoming"));
    t.p.run(&["tenant", "move", "acme", "--to", "b"], 0);
    for cluster in ["a", "b"] {
        t.p.run(&["tenant", "create", "acme", "--cluster", cluster], 1);
    }
    assert_eq!(state(&mut t.a(), "acme").as_deref(), Some("moved"));
    assert_eq!(state(&mut t.b(), "acme").as_deref(), Some("active"));
    let schemas = value(
        &mut t.a(),
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme'",
    );
    assert_eq!(schemas, 0, "no second acme was made on the source");
}

#[test]
fn a_stream_the_target_cannot_apply_stops_the_move_and_abort_clears_it() {
    let t = pair("mv_broken");
    t.tenant_with_rows("acme", 20);
    killed_at(&t, "streaming");
    // A row put on the target by hand, where the stream will bring another with its key.
    t.b()
        .batch_execute("INSERT INTO tenant_acme.customers (id, name) OVERRIDING SYSTEM VALUE VALUES (21, 'by hand')")
        .unwrap();
    t.a()
        .batch_execute("INSERT INTO tenant_acme.customers (name) VALUES ('from the app')")
        .unwrap();
    let out = t.p.run(&["tenant", "move", "acme", "--to", "b"], 1);
    assert!(
        stderr(&out).contains("failed to apply changes"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        state(&mut t.a(), "acme").as_deref(),
        Some("moving"),
        "nothing cut over"
    );
    t.p.run(&["tenant", "move", "acme", "--abort"], 0);
    assert_eq!(state(&mut t.a(), "acme").as_deref(), Some("active"));
    assert_eq!(replication_objects(&mut t.a()), Vec::<String>::new());
    assert_eq!(replication_objects(&mut t.b()), Vec::<String>::new());
}

#[test]
fn the_cutover_takes_child_tables_first_and_does_not_deadlock_with_the_app() {
    let t = pair("mv_order");
    t.tenant_with_rows("acme", 20);
    killed_at(&t, "streaming");
    // The application's transaction: an order written, then (a second later) its customer
    // share-locked, as a foreign key check or an ORM does. A cutover that took the parent
    // table first would deadlock with it.
    let app = app_transaction(
        &t.p.admin,
        "UPDATE tenant_acme.orders SET note = 'app' WHERE id = 1",
        Duration::from_millis(1500),
        "SELECT 1 FROM tenant_acme.customers WHERE id = 1 FOR SHARE",
    );
    let out = t.p.run(
        &[
            "tenant",
            "move",
            "acme",
            "--to",
            "b",
            "--max-pause",
            "5s",
            "--json",
        ],
        0,
    );
    app.join()
        .unwrap()
        .expect("the application's transaction commits");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["attempts"], 1, "{doc}");
    let note: String = t
        .b()
        .query_one("SELECT note FROM tenant_acme.orders WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(note, "app", "the app's write reached the target");
}
