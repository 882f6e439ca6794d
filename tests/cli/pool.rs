//! The tenant pool and seeds: schemas made and migrated ahead of `tenant create`, taken in
//! one transaction (renamed, seeded, registered), moved by migrate/rollback --all, refused
//! when their objects spell their own name; concurrent creators and a concurrent migrate,
//! a creator killed mid-claim; seed variables quoted whatever their values.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;

/// A seed that records the tenant and a plan, makes its first user, and sleeps
/// `:'pause'` seconds (0 unless a test wants a slow creation).
const SEED: &str = "-- the first user of every workspace\n\
INSERT INTO users (email, full_name) VALUES ('admin@' || :'tenant_id' || '.example', :'plan');\n\
SELECT pg_sleep(:'pause'::float);\n";

/// A project with a pool of `pool` and, with `seed`, [`SEED`] (then every create passes
/// `--var plan=… --var pause=…`).
fn pool_project(name: &str, upto: i32, pool: usize, seed: bool) -> Project {
    let p = Project::new(name, upto);
    std::fs::write(p.path().join("seed.sql"), SEED).unwrap();
    let seed = if seed { "seed = \"seed.sql\"\n" } else { "" };
    p.write_config(&format!("[tenants]\npool = {pool}\n{seed}"));
    p
}

/// The pool table: (schema, version), by name.
fn pool_rows(p: &Project) -> Vec<(String, Option<i32>)> {
    p.db()
        .query(
            "SELECT schema_name, version FROM tenantctl.pool ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Schemas named like pooled ones that exist in the database.
fn pooled_schemas(p: &Project) -> BTreeSet<String> {
    p.db()
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tenant\\_pool\\_\\_%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every pooled schema has its pool row and every pool row its schema, with a history at
/// the row's version (one row per version).
fn assert_pool_whole(p: &Project) {
    let rows = pool_rows(p);
    let names: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(pooled_schemas(p), names, "pooled schemas vs pool rows");
    for (schema, version) in rows {
        let history = p.history(&schema);
        let want: Vec<i32> = (1..=version.unwrap()).collect();
        assert_eq!(history, want, "{schema}: history vs pool row");
    }
}

/// Every registered tenant's history agrees with the registry (one row per version).
fn assert_tenants_whole(p: &Project) {
    for (schema, rows, distinct, max) in p.history_counts() {
        assert_eq!(rows, distinct, "{schema}: a version applied twice");
        assert_eq!(Some(rows as i32), max, "{schema}: a gap in the history");
    }
    let versions = p.versions();
    for (id, version) in versions {
        assert_eq!(
            p.history(&format!("tenant_{id}")).last().copied(),
            version,
            "{id}: registry vs history"
        );
    }
}

#[test]
fn a_pooled_schema_becomes_a_working_tenant_with_its_seed() {
    let p = pool_project("pool_take", 8, 3, true);
    let fill = p.json(&["tenant", "pool", "fill", "--json"], 0);
    assert_eq!(fill["command"], "tenant pool fill", "{fill}");
    assert_eq!(fill["counts"]["done"], 3, "{fill}");
    assert_eq!(pool_rows(&p).len(), 3);
    assert_pool_whole(&p);
    // Nothing to do the second time.
    let again = p.json(&["tenant", "pool", "fill", "--json"], 0);
    assert_eq!(again["counts"]["done"], 0, "{again}");
    assert_eq!(again["counts"]["unchanged"], 3, "{again}");
    let before = pooled_schemas(&p);

    let created = p.json(
        &[
            "tenant", "create", "acme", "--var", "plan=pro", "--var", "pause=0", "--json",
        ],
        0,
    );
    let t = &created["tenants"][0];
    assert_eq!(t["from_pool"], true, "{created}");
    assert_eq!(t["version"], 8, "{created}");
    assert_eq!(t["applied"], 0, "{created}");
    // One pooled schema is gone (renamed), the rest are still pooled; the tenant is whole.
    let after = pooled_schemas(&p);
    assert_eq!(before.difference(&after).count(), 1);
    assert_eq!(after.len(), 2);
    assert_pool_whole(&p);
    assert!(p.schema_exists("tenant_acme"));
    assert_eq!(p.history("tenant_acme"), (1..=8).collect::<Vec<_>>());
    assert_eq!(p.versions()["acme"], Some(8));

    // Everything the migrations made follows the rename: identity sequences, foreign keys,
    // the trigger (V6) and the view (V7); and the seed ran, with its variables as data.
    let mut db = p.db();
    db.batch_execute(
        "SET search_path TO tenant_acme;\n\
         INSERT INTO users (email, full_name) VALUES ('b@acme.example', 'B');\n\
         INSERT INTO projects (owner_id, name) SELECT id, 'launch' FROM users WHERE email = 'b@acme.example';\n\
         INSERT INTO tasks (project_id, title, updated_at) SELECT id, 'ship', now() - interval '1 day' FROM projects;\n\
         UPDATE tasks SET status = 'done';",
    )
    .unwrap();
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM tenant_acme.users), \
                    (SELECT max(id) FROM tenant_acme.users), \
                    (SELECT updated_at > now() - interval '1 minute' FROM tenant_acme.tasks), \
                    (SELECT done FROM tenant_acme.project_summary), \
                    (SELECT full_name FROM tenant_acme.users WHERE email = 'admin@acme.example')",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(
        row.get::<_, i64>(1),
        2,
        "identity continues in the renamed schema"
    );
    assert!(
        row.get::<_, bool>(2),
        "the V6 trigger fires after the rename"
    );
    assert_eq!(
        row.get::<_, i64>(3),
        1,
        "the V7 view reads the renamed tables"
    );
    assert_eq!(
        row.get::<_, String>(4),
        "pro",
        "the seed ran with --var plan"
    );

    // The ledger and the audit trail say what happened.
    let from_pool: bool = db
        .query_one(
            "SELECT from_pool FROM tenantctl.run_schemas WHERE tenant_id = 'acme'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(from_pool);
    let audit = p.json(&["audit", "--json"], 0);
    let run = audit["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["command"] == "tenant create")
        .unwrap();
    assert!(
        run["seed"].as_str().unwrap().starts_with("seed.sql ("),
        "{run}"
    );
    assert!(
        run["command_line"]
            .as_str()
            .unwrap()
            .contains("--var plan=pro"),
        "{run}"
    );

    // The text says where the schema came from; status shows the pool.
    let out = p.run(
        &[
            "tenant", "create", "beta", "--var", "plan=x", "--var", "pause=0",
        ],
        0,
    );
    assert!(
        stdout(&out).contains("(1 from the pool)"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("a pooled schema at V8 taken"),
        "{}",
        stderr(&out)
    );
    // ... and so does the ledger, in the row that committed with the claim.
    let recorded: bool = p
        .db()
        .query_one(
            "SELECT from_pool FROM tenantctl.run_schemas WHERE tenant_id = 'beta' AND state = 'succeeded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(recorded, "the ledger says beta's schema came from the pool");
    let status = p.json(&["status", "--json"], 0);
    assert_eq!(status["clusters"][0]["pool"]["ready"], 1, "{status}");
    assert_eq!(status["clusters"][0]["pool"]["size"], 3, "{status}");
    let text = stdout(&p.run(&["tenant", "pool", "status"], 0));
    assert!(
        text.contains("1 schema(s), 1 ready at V8 (size 3)"),
        "{text}"
    );

    // An empty pool: created as before, and said so.
    p.run(&["tenant", "pool", "drain", "--yes"], 0);
    assert!(pool_rows(&p).is_empty());
    assert!(pooled_schemas(&p).is_empty());
    let fresh = p.json(
        &[
            "tenant", "create", "gamma", "--var", "plan=x", "--var", "pause=0", "--json",
        ],
        0,
    );
    assert_eq!(fresh["tenants"][0]["from_pool"], false, "{fresh}");
    assert_eq!(fresh["tenants"][0]["applied"], 8, "{fresh}");
    assert_tenants_whole(&p);
}

#[test]
fn the_pool_refuses_migrations_that_spell_its_schema_name() {
    let p = Project::new("pool_names_itself", 1);
    p.write_config("[tenants]\npool = 2\n");
    p.add_migration(
        "V2__counter.sql",
        "CREATE FUNCTION user_count() RETURNS bigint LANGUAGE sql SET search_path FROM CURRENT AS $$ SELECT count(*) FROM users $$;\n",
    );
    let out = p.run(&["tenant", "pool", "fill"], 1);
    let text = stdout(&out);
    assert!(text.contains("spell the schema's own name"), "{text}");
    assert!(text.contains("function user_count()"), "{text}");
    assert!(text.contains("SET search_path FROM CURRENT"), "{text}");
    assert!(pool_rows(&p).is_empty());
    assert!(pooled_schemas(&p).is_empty(), "nothing half-made is left");
    // A function body and a view that spell the schema's name (built from current_schema()
    // while the migration ran) are refused too, each named.
    for (sql, named) in [
        (
            "DO $m$ BEGIN EXECUTE format('CREATE FUNCTION user_count() RETURNS bigint LANGUAGE sql AS %L',              format('SELECT count(*) FROM %I.users', current_schema())); END $m$;\n",
            "function user_count()",
        ),
        (
            "DO $m$ BEGIN EXECUTE format('CREATE VIEW home AS SELECT %L::text AS schema_name', current_schema()); END $m$;\n",
            "view home",
        ),
    ] {
        p.add_migration("V2__counter.sql", sql);
        let text = stdout(&p.run(&["tenant", "pool", "fill"], 1));
        assert!(text.contains("spell the schema's own name"), "{text}");
        assert!(text.contains(named), "{text}");
        assert!(pool_rows(&p).is_empty());
        assert!(pooled_schemas(&p).is_empty(), "nothing half-made is left");
    }
    // Written without the schema's name, it pools (and tenants still create as before).
    p.add_migration(
        "V2__counter.sql",
        "CREATE FUNCTION user_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM users $$;\n",
    );
    p.run(&["tenant", "pool", "fill"], 0);
    assert_eq!(pool_rows(&p).len(), 2);
    assert_pool_whole(&p);
}

#[test]
fn migrate_and_rollback_all_move_the_pool_and_a_narrowed_run_does_not() {
    let p = pool_project("pool_moves", 7, 2, false);
    p.create_tenants(2);
    p.run(&["tenant", "pool", "fill"], 0);
    p.copy_migrations(8, 8);
    // The pool is behind the files: a create makes the schema as before.
    let behind = p.json(&["tenant", "create", "late", "--json"], 0);
    assert_eq!(behind["tenants"][0]["from_pool"], false, "{behind}");
    let status = stdout(&p.run(&["status"], 0));
    assert!(status.contains("not ready: 2 at V7"), "{status}");
    // A migrate narrowed to some tenants leaves the pool where it is.
    p.run(&["migrate", "--tenant", "t0000"], 0);
    assert!(pool_rows(&p).iter().all(|r| r.1 == Some(7)));
    // --all moves it, and says the pooled schemas are among the counts.
    let out = p.run(&["migrate", "--all"], 0);
    assert!(
        stdout(&out).contains("(pooled schemas among them: 2)"),
        "{}",
        stdout(&out)
    );
    assert!(pool_rows(&p).iter().all(|r| r.1 == Some(8)));
    assert_pool_whole(&p);
    let taken = p.json(&["tenant", "create", "now", "--json"], 0);
    assert_eq!(taken["tenants"][0]["from_pool"], true, "{taken}");
    // rollback --all takes the pool back with the fleet.
    let back = p.json(&["rollback", "--all", "--to", "7", "--json"], 0);
    let pooled_in_run = back["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["id"].as_str().unwrap().contains("__"))
        .count();
    assert_eq!(pooled_in_run, 1, "{back}");
    assert_eq!(pool_rows(&p).len(), 1);
    assert!(pool_rows(&p).iter().all(|r| r.1 == Some(7)));
    assert_pool_whole(&p);
    assert_tenants_whole(&p);
    // A staged rollout moves the pool in its last wave.
    let waves = p.json(&["migrate", "--all", "--waves", "50%,100%", "--json"], 0);
    let pooled_wave: Vec<&serde_json::Value> = waves["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["id"].as_str().unwrap().contains("__"))
        .map(|t| &t["wave"])
        .collect();
    assert_eq!(pooled_wave, vec![&serde_json::json!(2)], "{waves}");
    assert!(pool_rows(&p).iter().all(|r| r.1 == Some(8)));
    // --refill tops the pool up in the background, after the create has taken its schema.
    let out = p.json(&["tenant", "create", "refilled", "--refill", "--json"], 0);
    assert_eq!(out["tenants"][0]["from_pool"], true, "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while pool_rows(&p).iter().filter(|r| r.1 == Some(8)).count() < 2 {
        assert!(Instant::now() < deadline, "the pool was not refilled");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The refill's run closes in the ledger, recorded as the caller's actor.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = p
            .db()
            .query_one(
                "SELECT state, actor FROM tenantctl.runs WHERE command = 'tenant pool fill' ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        let (state, actor): (String, String) = (row.get(0), row.get(1));
        if state != "running" {
            assert_eq!(state, "succeeded");
            let creator: String = p
                .db()
                .query_one(
                    "SELECT actor FROM tenantctl.runs WHERE command = 'tenant create' ORDER BY id DESC LIMIT 1",
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(actor, creator);
            break;
        }
        assert!(Instant::now() < deadline, "the refill never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_pool_whole(&p);
}

#[test]
fn creators_racing_a_migrate_never_get_a_half_migrated_schema() {
    // Creators with the V1..8 files take pooled schemas at V8 while a migrate --all with a
    // slow V9 moves the same pool to V9 (one schema at a time): each pooled schema is either
    // taken whole at V8 (the migrate then finds it gone: dropped meanwhile) or migrated whole
    // to V9 first (and skipped by the creators while it is).
    let p = pool_project("pool_race", 8, 12, true);
    p.run(&["tenant", "pool", "fill"], 0);
    let old = p.path().join("old");
    std::fs::create_dir(&old).unwrap();
    for entry in std::fs::read_dir(p.migrations_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), old.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        p.path().join("old.toml"),
        "[database]\nurl = \"${TEST_DB_URL}\"\n[migrations]\ndir = \"old\"\n[tenants]\nseed = \"seed.sql\"\n",
    )
    .unwrap();
    p.add_migration(
        "V9__slow.sql",
        "SELECT pg_sleep(0.25);\nALTER TABLE users ADD COLUMN nickname text;\n",
    );
    let migrate = p.spawn(&["migrate", "--all", "--jobs", "1", "--json"]);
    let ids: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let mut creators = Vec::new();
    for id in &ids {
        std::thread::sleep(Duration::from_millis(200));
        creators.push(
            p.std_cmd()
                .args(["--config", "old.toml", "tenant", "create", id, "--json"])
                .args(["--var", "plan=x", "--var", "pause=0"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let mut from_pool = 0;
    for c in creators {
        let v = wait_json(c, Duration::from_secs(60));
        assert_eq!(v["tenants"][0]["version"], 8, "{v}");
        if v["tenants"][0]["from_pool"] == true {
            from_pool += 1;
        }
    }
    let m = wait_json(migrate, Duration::from_secs(120));
    // Every pooled schema in the migrate was migrated, or taken before it got there.
    let (done, gone) = (
        m["counts"]["done"].as_i64().unwrap(),
        m["counts"]["dropped_meanwhile"].as_i64().unwrap(),
    );
    assert_eq!(done + gone, 12, "{m}");
    assert!(
        from_pool > 0,
        "no creator took a pooled schema: the race was not run"
    );
    assert_eq!(gone as usize, from_pool, "{m}");
    // No tenant is half-made: V8 whole, without V9's column; the rest of the pool is at V9.
    assert_tenants_whole(&p);
    for id in &ids {
        assert_eq!(p.versions()[id.as_str()], Some(8));
        let has: bool = p
            .db()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 AND column_name = 'nickname')",
                &[&format!("tenant_{id}")],
            )
            .unwrap()
            .get(0);
        assert!(!has, "{id} has V9's column at V8");
    }
    assert_eq!(pool_rows(&p).len(), 12 - from_pool);
    assert!(pool_rows(&p).iter().all(|r| r.1 == Some(9)));
    assert_pool_whole(&p);
}

#[test]
fn concurrent_creators_never_share_a_pooled_schema() {
    let p = pool_project("pool_crowd", 3, 8, true);
    p.run(&["tenant", "pool", "fill"], 0);
    let pooled_before = pooled_schemas(&p);
    let ids: Vec<String> = (0..16).map(|i| format!("n{i:02}")).collect();
    let children: Vec<_> = ids
        .iter()
        .map(|id| {
            p.spawn(&[
                "tenant",
                "create",
                id,
                "--var",
                "plan=x",
                "--var",
                "pause=0.2",
                "--json",
            ])
        })
        .collect();
    let mut from_pool = 0;
    for c in children {
        let v = wait_json(c, Duration::from_secs(120));
        from_pool += usize::from(v["tenants"][0]["from_pool"] == true);
    }
    assert_eq!(
        from_pool, 8,
        "every pooled schema taken once, the rest created"
    );
    assert!(pool_rows(&p).is_empty());
    // The pooled names are all gone (each renamed once), and 16 tenant schemas exist.
    assert!(pooled_schemas(&p).is_disjoint(&pooled_before));
    assert_eq!(p.versions().len(), 16);
    for id in &ids {
        assert!(p.schema_exists(&format!("tenant_{id}")));
    }
    let ledger: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM tenantctl.run_schemas WHERE from_pool",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ledger, 8);
    assert_tenants_whole(&p);
}

#[test]
fn a_creator_killed_mid_claim_leaves_the_schema_pooled_or_a_tenant() {
    let p = pool_project("pool_kill", 3, 1, true);
    p.run(&["tenant", "pool", "fill"], 0);
    let pooled = pooled_schemas(&p);
    let child = p.spawn(&[
        "tenant", "create", "acme", "--var", "plan=x", "--var", "pause=30",
    ]);
    // Killed while its transaction sleeps in the seed, the schema already renamed in it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sleeping: i64 = p
            .db()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'",
                &[],
            )
            .unwrap()
            .get(0);
        if sleeping > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the seed never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(child.id(), "KILL");
    let _ = wait_with_deadline(child, Duration::from_secs(10));
    // The server notices the client is gone (client_connection_check_interval) and rolls
    // the transaction back; wait for its backend to end.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p
        .db()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(Instant::now() < deadline, "the killed creator's backend lives on");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Never lost: still pooled (and no tenant), or a whole tenant (and not pooled). Here,
    // killed before its COMMIT could run, it is still pooled: the server rolled back.
    assert!(
        !p.versions().contains_key("acme"),
        "the killed creator's transaction committed"
    );
    assert!(!p.schema_exists("tenant_acme"));
    assert_eq!(pooled_schemas(&p), pooled);
    assert_pool_whole(&p);
    // The same command again takes it.
    let again = p.json(
        &[
            "tenant",
            "create",
            "acme",
            "--if-not-exists",
            "--var",
            "plan=x",
            "--var",
            "pause=0",
            "--json",
        ],
        0,
    );
    assert_eq!(again["tenants"][0]["from_pool"], true, "{again}");
    assert!(pool_rows(&p).is_empty());
    assert_tenants_whole(&p);
}

#[test]
fn seed_variables_stay_data_and_bad_ones_change_nothing() {
    let p = pool_project("pool_seed", 8, 0, true);
    let before = p.fingerprint();
    // An unknown variable, a built-in one given, a malformed one, --var with no seed.
    let out = p.run(&["tenant", "create", "acme", "--var", "pause=0"], 2);
    assert!(stderr(&out).contains(":plan"), "{}", stderr(&out));
    let out = p.run(
        &[
            "tenant",
            "create",
            "acme",
            "--var",
            "plan=x",
            "--var",
            "pause=0",
            "--var",
            "tenant_id=evil",
        ],
        2,
    );
    assert!(
        stderr(&out).contains("set by tenantctl"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&["tenant", "create", "acme", "--var", "plan"], 2);
    assert!(stderr(&out).contains("NAME=VALUE"), "{}", stderr(&out));
    assert_eq!(
        p.fingerprint(),
        before,
        "a refused create changed the database"
    );
    // Hostile values are data: quotes, a statement separator, dollar quotes, a backslash,
    // and text that looks like another variable.
    let hostile = "x'); DROP TABLE users; -- $$ $q$ \\ :'tenant_id' \"";
    p.run(
        &[
            "tenant",
            "create",
            "acme",
            "--var",
            &format!("plan={hostile}"),
            "--var",
            "pause=0",
        ],
        0,
    );
    let name: String = p
        .db()
        .query_one(
            "SELECT full_name FROM tenant_acme.users WHERE email = 'admin@acme.example'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(name, hostile);
    assert!(p.schema_has_table("tenant_acme", "users"));
    // A failing seed rolls the whole creation back.
    let out = p.run(
        &[
            "tenant",
            "create",
            "beta",
            "--var",
            "plan=x",
            "--var",
            "pause=not a number",
        ],
        1,
    );
    assert!(stdout(&out).contains("seed.sql"), "{}", stdout(&out));
    assert!(!p.schema_exists("tenant_beta"));
    assert!(!p.versions().contains_key("beta"));
    // And with a pool: the pooled schema stays in the pool.
    p.write_config("[tenants]\npool = 1\nseed = \"seed.sql\"\n");
    p.run(&["tenant", "pool", "fill"], 0);
    let pooled = pooled_schemas(&p);
    p.run(
        &[
            "tenant",
            "create",
            "beta",
            "--var",
            "plan=x",
            "--var",
            "pause=not a number",
        ],
        1,
    );
    assert_eq!(pooled_schemas(&p), pooled);
    assert_pool_whole(&p);
    assert!(!p.schema_exists("tenant_beta"));
    // --var without a seed.
    p.write_config("");
    let out = p.run(&["tenant", "create", "gamma", "--var", "plan=x"], 2);
    assert!(stderr(&out).contains("[tenants] seed"), "{}", stderr(&out));
}
