//! query and exec on real PostgreSQL: merged results (CSV through a CSV parser, NDJSON,
//! the JSON document), tenants at different versions, writes refused by the read-only
//! transaction, hostile SQL refused before any connection, exec exactly once per tenant
//! (also after a SIGKILL), dry runs, --until-zero in batches, a canary that stops a fix.

use std::time::Duration;

use crate::support::*;

const NOTES: &str = "CREATE TABLE notes (id int PRIMARY KEY, body text, n numeric);
CREATE TABLE counter (n int NOT NULL);
INSERT INTO counter VALUES (0);";

fn project(name: &str, tenants: &[&str]) -> Project {
    let p = Project::new(name, 0);
    p.add_migration("V1__notes.sql", NOTES);
    let mut args = vec!["tenant", "create"];
    args.extend(tenants);
    p.run(&args, 0);
    p
}

fn counters(p: &Project, tenants: &[&str]) -> Vec<i32> {
    let mut db = p.db();
    tenants
        .iter()
        .map(|t| {
            db.query_one(&format!("SELECT n FROM tenant_{t}.counter"), &[])
                .unwrap()
                .get(0)
        })
        .collect()
}

#[test]
fn query_merges_every_tenants_rows_and_awkward_values_survive_csv_ndjson_and_json() {
    let p = project("fsql_merge", &["acme", "globex", "initech"]);
    p.db()
        .batch_execute(
            "INSERT INTO tenant_acme.notes VALUES (1, 'a,b', 1.5), (2, NULL, 12345678901234567890.123456789), (3, E'two\\nlines \"quoted\"', -0);
             INSERT INTO tenant_globex.notes VALUES (1, '', NULL);",
        )
        .unwrap();
    let sql = "select id, body, n from notes order by id";
    let out = p.run(&["query", "--all", "-c", sql, "--format", "csv"], 0);
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["cluster", "tenant", "id", "body", "n"]
    );
    let mut records: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    records.sort();
    let expect = |t: &str, id: &str, body: &str, n: &str| -> Vec<String> {
        ["default", t, id, body, n]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(
        records,
        vec![
            expect("acme", "1", "a,b", "1.5"),
            expect("acme", "2", "", "12345678901234567890.123456789"),
            expect("acme", "3", "two\nlines \"quoted\"", "0"),
            expect("globex", "1", "", ""),
        ]
    );
    // NULL is an empty field, an empty string is "": the parser reads both as "", the text
    // tells them apart.
    let text = stdout(&out);
    assert!(text.contains("default,acme,2,,"), "{text}");
    assert!(text.contains("default,globex,1,\"\","), "{text}");

    // NDJSON: one object per row, values typed by the server, numbers exact.
    let out = p.run(&["query", "--all", "-c", sql, "--format", "ndjson"], 0);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let acme2 = lines
        .iter()
        .find(|l| l["tenant"] == "acme" && l["row"]["id"] == 2)
        .unwrap();
    assert!(acme2["row"]["body"].is_null());
    assert!(stdout(&out).contains("\"n\":12345678901234567890.123456789"));
    let globex = lines.iter().find(|l| l["tenant"] == "globex").unwrap();
    assert_eq!(globex["row"]["body"], "");
    assert_eq!(globex["cluster"], "default");

    // JSON: the envelope, every row, the counts that agree with them.
    let doc = p.json(&["query", "--all", "-c", sql, "--json", "--with-labels"], 0);
    assert_eq!(doc["command"], "query");
    assert_eq!(doc["rows"].as_array().unwrap().len(), 4);
    assert_eq!(doc["counts"]["rows"], 4);
    assert_eq!(doc["counts"]["tenants"], 3);
    assert_eq!(doc["rows"][0]["labels"], serde_json::json!({}));
    assert_eq!(doc["failures"], serde_json::json!([]));
}

#[test]
fn tenants_whose_columns_differ_are_reported_not_garbled_and_a_failing_tenant_stops_no_other() {
    let p = project("fsql_versions", &["ahead", "behind", "gone"]);
    p.add_migration(
        "V2__notes_flag.sql",
        "ALTER TABLE notes ADD COLUMN flag boolean;",
    );
    p.run(&["migrate", "--tenant", "ahead"], 0);
    p.db()
        .batch_execute(
            "INSERT INTO tenant_ahead.notes VALUES (1, 'x', 1, true); INSERT INTO tenant_behind.notes VALUES (1, 'y', 2);
             DROP TABLE tenant_gone.notes;",
        )
        .unwrap();
    let doc = p.json(
        &["query", "--all", "-c", "select * from notes", "--json"],
        1,
    );
    let failures = doc["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{doc}");
    let gone = failures.iter().find(|f| f["tenant"] == "gone").unwrap();
    assert_eq!(gone["failure"]["sqlstate"], "42P01");
    assert_eq!(gone["failure"]["migration"], "-c");
    assert_eq!(gone["failure"]["line"], 1);
    // Exactly one of the two shapes made it out, with its own columns.
    let differ = failures
        .iter()
        .find(|f| f["failure"]["kind"] == "columns_differ")
        .unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0]["tenant"], differ["tenant"]);
    let keys = rows[0]["row"].as_object().unwrap().len();
    assert_eq!(keys, if rows[0]["tenant"] == "ahead" { 4 } else { 3 });

    // CSV: every record as long as the header.
    let out = p.run(&["query", "--all", "-c", "select * from notes"], 1);
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    let width = reader.headers().unwrap().len();
    let records: Vec<_> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 1);
    assert!(records.iter().all(|r| r.len() == width));
    assert!(
        stderr(&out).contains("relation \"notes\" does not exist"),
        "{}",
        stderr(&out)
    );

    // The line is the SQL's own, whether PostgreSQL points at it (a missing relation) or
    // the statement fails as it runs (a division by zero), sent as JSON rows or as text.
    for (sql, line) in [
        ("select 1;\n\n-- the notes\nselect * from notes", 4),
        (
            "select 1;\nselect 1 / (select count(*) - count(*) from notes);\nselect 2",
            2,
        ),
    ] {
        let doc = p.json(&["query", "--tenant", "gone", "-c", sql, "--json"], 1);
        let f = &doc["failures"][0]["failure"];
        assert_eq!(f["migration"], "-c", "{sql}: {doc}");
        assert_eq!(f["line"], line, "{sql}: {doc}");
        let out = p.run(
            &["query", "--tenant", "gone", "-c", sql, "--format", "csv"],
            1,
        );
        assert!(
            stderr(&out).contains(&format!("-c failed at line {line}:")),
            "{sql}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_query_that_writes_is_refused_by_the_read_only_transaction_and_two_statements_give_the_last_rows(
) {
    let p = project("fsql_readonly", &["acme"]);
    p.db()
        .batch_execute("INSERT INTO tenant_acme.notes VALUES (1, 'keep', 1)")
        .unwrap();
    let doc = p.json(&["query", "--all", "-c", "delete from notes", "--json"], 1);
    let f = &doc["failures"][0]["failure"];
    assert_eq!(f["sqlstate"], "25006", "{doc}");
    assert!(
        f["message"].as_str().unwrap().contains("read-only"),
        "{doc}"
    );
    let left: i64 = p
        .db()
        .query_one("SELECT count(*) FROM tenant_acme.notes", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 1);

    let doc = p.json(
        &[
            "query",
            "--all",
            "-c",
            "select 1 as first;\nselect body as second from notes",
            "--json",
        ],
        0,
    );
    assert_eq!(
        doc["rows"],
        serde_json::json!([{"cluster": "default", "tenant": "acme", "row": {"second": "keep"}}])
    );
}

#[test]
fn hostile_sql_is_refused_before_any_database_work() {
    let p = project("fsql_hostile", &["acme", "globex"]);
    let before = p.fingerprint();
    for (sql, line) in [
        ("select 1;\nSET search_path TO tenant_globex", 2),
        (
            "select set_config('search_path', 'tenant_globex', false)",
            1,
        ),
        ("select set_config('work_mem', '1GB', false)", 1),
        ("RESET ALL", 1),
        ("select * from tenant_globex.notes", 1),
        ("update tenantctl.tenants set version = 0", 1),
        ("commit; delete from notes", 1),
    ] {
        for command in ["query", "exec"] {
            let out = p.run(&[command, "--all", "-c", sql], 2);
            assert!(
                stderr(&out).contains(&format!("-c:{line}:")),
                "{sql}: {}",
                stderr(&out)
            );
        }
    }
    assert_eq!(p.fingerprint(), before);
    // What the scanner cannot see (a function that sets the session) meets the guard: that
    // tenant fails, and the next tenant on the same connection still reads its own schema.
    p.db()
        .batch_execute(
            "CREATE FUNCTION tenant_acme.probe() RETURNS int LANGUAGE sql AS $$ SELECT length(set_config('search_path', 'tenant_globex', false)) $$;
             CREATE FUNCTION tenant_globex.probe() RETURNS int LANGUAGE sql AS $$ SELECT 7 $$;
             INSERT INTO tenant_globex.notes VALUES (1, 'globex', 1);
             INSERT INTO tenant_acme.notes VALUES (1, 'acme', 1);",
        )
        .unwrap();
    let doc = p.json(
        &[
            "query",
            "--all",
            "--jobs",
            "1",
            "-c",
            "select probe(), (select count(*) from notes) as notes",
            "--json",
        ],
        1,
    );
    let failures = doc["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{doc}");
    assert_eq!(failures[0]["tenant"], "acme");
    assert!(
        failures[0]["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("left the session changed"),
        "{doc}"
    );
    assert_eq!(
        doc["rows"],
        serde_json::json!([{"cluster": "default", "tenant": "globex", "row": {"probe": 7, "notes": 1}}])
    );
    // exec meets the same guard before its ledger row: acme's change is rolled back and
    // its ledger row says why; globex's is kept.
    let doc = p.json(
        &[
            "exec",
            "--all",
            "--jobs",
            "1",
            "-c",
            "update notes set body = body || '!' where probe() > 0",
            "--json",
        ],
        1,
    );
    let acme = doc["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "acme")
        .unwrap()
        .clone();
    assert_eq!(acme["result"], "failed", "{doc}");
    let bodies: Vec<(String, String)> = p
        .db()
        .query(
            "SELECT 'acme', coalesce(string_agg(body, ','), '') FROM tenant_acme.notes \
             UNION ALL SELECT 'globex', string_agg(body, ',') FROM tenant_globex.notes \
             UNION ALL SELECT 'ledger', message FROM tenantctl.run_schemas WHERE tenant_id = 'acme' AND state = 'failed'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        bodies.contains(&("globex".into(), "globex!".into())),
        "{bodies:?}"
    );
    assert!(
        !bodies.iter().any(|(t, b)| t == "acme" && b.contains('!')),
        "{bodies:?}"
    );
    assert!(
        bodies
            .iter()
            .any(|(t, m)| t == "ledger" && m.contains("left the session changed")),
        "{bodies:?}"
    );
    // No connection is made: the same refusal with a database that is not there.
    std::fs::write(
        p.config_path(),
        "[database]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\n[migrations]\ndir = \"migrations\"\n",
    )
    .unwrap();
    let out = p.run(&["exec", "--all", "-c", "RESET ALL"], 2);
    assert!(stderr(&out).contains("nothing was run"), "{}", stderr(&out));
}

#[test]
fn exec_runs_once_per_tenant_is_recorded_and_audited_and_again_runs_it_again() {
    let p = project("fsql_once", &["acme", "globex"]);
    let sql = "update counter set n = n + 1";
    let dry = p.json(&["exec", "--all", "-c", sql, "--dry-run", "--json"], 0);
    assert_eq!(dry["counts"]["would_change"], 2);
    assert_eq!(counters(&p, &["acme", "globex"]), [0, 0]);
    let doc = p.json(
        &["exec", "--all", "-c", sql, "--json", "--actor", "fixer"],
        0,
    );
    assert_eq!(doc["counts"]["done"], 2);
    assert!(doc["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["rows"] == 1));
    assert_eq!(counters(&p, &["acme", "globex"]), [1, 1]);
    // The same SQL again: nothing to do; a new tenant gets it.
    p.run(&["tenant", "create", "initech"], 0);
    let doc = p.json(&["exec", "--all", "-c", sql, "--json"], 0);
    assert_eq!(doc["counts"]["done"], 1);
    assert_eq!(doc["counts"]["unchanged"], 2);
    assert_eq!(counters(&p, &["acme", "globex", "initech"]), [1, 1, 1]);
    p.run(&["exec", "--tenant", "acme", "-c", sql, "--again"], 0);
    assert_eq!(counters(&p, &["acme", "globex", "initech"]), [2, 1, 1]);
    // The ledger: runs of exec with the SQL's digest, a row per tenant with its rows.
    let rows: Vec<(String, String, i64)> = p
        .db()
        .query(
            "SELECT r.actor, s.tenant_id, s.rows FROM tenantctl.runs r JOIN tenantctl.run_schemas s ON s.run_id = r.id \
             WHERE r.command = 'exec' AND s.state = 'succeeded' ORDER BY r.id, s.tenant_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0], ("fixer".to_string(), "acme".to_string(), 1));
    let audit = p.json(&["audit", "--json"], 0);
    let execs: Vec<&serde_json::Value> = audit["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["command"] == "exec")
        .collect();
    assert_eq!(execs.len(), 3);
    assert!(execs.iter().any(|r| r["actor"] == "fixer"));
}

#[test]
fn exec_killed_mid_run_carries_on_and_every_counter_moves_exactly_once() {
    let ids: Vec<String> = (0..24).map(|i| format!("t{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let p = project("fsql_kill", &refs);
    let args = [
        "exec",
        "--all",
        "--jobs",
        "2",
        "-c",
        "update counter set n = n + 1 where pg_sleep(0.1) is not null",
    ];
    let child = p.spawn(&args);
    // Kill once some tenants have committed, not all.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = p
            .db()
            .query_one(
                "SELECT count(*) FROM tenantctl.run_schemas s JOIN tenantctl.runs r ON r.id = s.run_id WHERE r.command = 'exec' AND s.state = 'succeeded'",
                &[],
            )
            .unwrap()
            .get(0);
        if done >= 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "exec did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), "KILL");
    let _ = wait_with_deadline(child, Duration::from_secs(10));
    let partial = counters(&p, &refs);
    assert!(partial.contains(&0), "the kill came too late: {partial:?}");
    let out = p.run(&args, 0);
    assert!(stderr(&out).contains("resuming run"), "{}", stderr(&out));
    assert_eq!(counters(&p, &refs), vec![1; refs.len()]);
    let (runs, rows): (i64, i64) = {
        let r = p
            .db()
            .query_one(
                "SELECT count(DISTINCT r.id), count(*) FILTER (WHERE s.state = 'succeeded') FROM tenantctl.runs r JOIN tenantctl.run_schemas s ON s.run_id = r.id WHERE r.command = 'exec'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (runs, rows),
        (1, 24),
        "one run, resumed, one done row per tenant"
    );
}

#[test]
fn until_zero_backfills_in_batches_no_transaction_longer_than_one() {
    let p = Project::new("fsql_batches", 0);
    p.add_migration(
        "V1__items.sql",
        "CREATE TABLE items (id int PRIMARY KEY, done boolean NOT NULL DEFAULT false);
         CREATE TABLE batch_log (xid bigint, n bigint);
         CREATE FUNCTION log_batch() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO batch_log SELECT txid_current(), count(*) FROM changed; RETURN NULL; END $$;
         CREATE TRIGGER items_batches AFTER UPDATE ON items REFERENCING NEW TABLE AS changed
             FOR EACH STATEMENT EXECUTE FUNCTION log_batch();",
    );
    p.run(&["tenant", "create", "big", "small"], 0);
    p.db()
        .batch_execute(
            "INSERT INTO tenant_big.items (id) SELECT g FROM generate_series(1, 200000) g;
             INSERT INTO tenant_small.items (id) SELECT g FROM generate_series(1, 10) g;",
        )
        .unwrap();
    let sql =
        "update items set done = true where id in (select id from items where not done limit 5000)";
    let out = p.run(
        &["exec", "--all", "--until-zero", "-c", "select 1; select 2"],
        2,
    );
    assert!(stderr(&out).contains("one statement"), "{}", stderr(&out));
    let doc = p.json(
        &[
            "exec",
            "--all",
            "--until-zero",
            "--batch-pause",
            "1ms",
            "-c",
            sql,
            "--json",
        ],
        0,
    );
    let big = doc["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "big")
        .unwrap();
    assert_eq!(big["rows"], 200000, "{doc}");
    let mut db = p.db();
    let left: i64 = db
        .query_one("SELECT count(*) FROM tenant_big.items WHERE NOT done", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let (transactions, largest, total): (i64, i64, i64) = {
        let r = db
            .query_one(
                "SELECT count(*), max(n)::int8, sum(n)::int8 FROM (SELECT xid, sum(n) AS n FROM tenant_big.batch_log GROUP BY xid) b",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(total, 200000);
    assert_eq!(largest, 5000, "no transaction changed more than one batch");
    assert!(transactions >= 40, "{transactions} transactions");
    let recorded: i64 = db
        .query_one(
            "SELECT s.rows FROM tenantctl.run_schemas s JOIN tenantctl.runs r ON r.id = s.run_id \
             WHERE r.command = 'exec' AND s.tenant_id = 'big' AND s.state = 'succeeded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, 200000);
}

#[test]
fn a_fix_that_breaks_the_canary_stops_there() {
    let p = project("fsql_canary", &["canary1", "t1", "t2", "t3"]);
    p.run(&["tenant", "label", "canary1", "canary=true"], 0);
    p.db()
        .batch_execute("ALTER TABLE tenant_canary1.counter ADD CONSTRAINT small CHECK (n < 1)")
        .unwrap();
    let out = p.run(
        &[
            "exec",
            "--all",
            "-c",
            "update counter set n = n + 1",
            "--canary-select",
            "canary=true",
            "--waves",
            "100%",
        ],
        7,
    );
    assert!(stderr(&out).contains("small"), "{}", stderr(&out));
    assert_eq!(counters(&p, &["canary1", "t1", "t2", "t3"]), [0, 0, 0, 0]);
}

#[test]
fn query_spans_clusters_with_each_rows_cluster() {
    let p = Project::new("fsql_clusters", 0);
    p.add_migration("V1__notes.sql", NOTES);
    p.two_clusters("fsql_clusters_b");
    p.run(&["tenant", "create", "acme", "--cluster", "a"], 0);
    p.run(&["tenant", "create", "globex", "--cluster", "b"], 0);
    let out = p.run(
        &[
            "query",
            "--all",
            "-c",
            "select n from counter",
            "--format",
            "ndjson",
        ],
        0,
    );
    let mut seen: Vec<(String, String)> = stdout(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["cluster"].as_str().unwrap().into(),
                v["tenant"].as_str().unwrap().into(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a".to_string(), "acme".to_string()),
            ("b".to_string(), "globex".to_string())
        ]
    );
}
