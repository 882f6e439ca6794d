//! Tenants across several clusters, and shared migrations: three throwaway clusters started
//! here, tenants placed across them, migrate and status spanning all, one cluster stopped
//! mid-run (its tenants fail, the others finish, exit 4), and a re-run that converges.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::*;

const CLUSTERS: [&str; 3] = ["alpha", "beta", "gamma"];

/// A project whose config names one cluster per URL (alpha, beta, gamma, ...).
fn fleet_project(urls: &[String], extra: &str) -> Project {
    let p = Project::new("fleet", 4);
    let mut text = String::from("[migrations]\ndir = \"migrations\"\n");
    for (name, url) in CLUSTERS.iter().zip(urls) {
        text.push_str(&format!("[clusters.{name}]\nurl = \"{url}\"\njobs = 2\n"));
    }
    text.push_str(extra);
    std::fs::write(p.config_path(), text).unwrap();
    std::fs::create_dir(p.migrations_dir().join("shared")).unwrap();
    p
}

fn shared_migration(p: &Project, file: &str, sql: &str) {
    std::fs::write(p.migrations_dir().join("shared").join(file), sql).unwrap();
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect")
}

/// Registry version per active tenant on one cluster.
fn registry(url: &str) -> BTreeMap<String, Option<i32>> {
    connect(url)
        .query(
            "SELECT id, version FROM tenantctl.tenants WHERE state = 'active'",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn assert_cluster_at(url: &str, version: i32) {
    for (schema, rows, distinct, max) in history_counts_at(url) {
        assert_eq!(
            (rows, distinct, max),
            (version as i64, version as i64, Some(version)),
            "{schema} on {url}"
        );
    }
    assert!(registry(url).values().all(|v| *v == Some(version)));
}

/// (history rows, distinct versions) of the shared migrations, and the rows of their table.
fn shared_state(url: &str) -> (i64, i64, i64) {
    let mut db = connect(url);
    let h = db
        .query_one(
            "SELECT count(*), count(DISTINCT version) FROM public.tenantctl_shared_history",
            &[],
        )
        .unwrap();
    let plans: i64 = db
        .query_one("SELECT count(*) FROM public.plans", &[])
        .unwrap()
        .get(0);
    (h.get(0), h.get(1), plans)
}

#[test]
fn fleet_of_three_clusters_with_one_stopped_mid_run() {
    let servers: Vec<Server> = (0..3).map(|_| start_cluster(&[])).collect();
    let urls: Vec<String> = servers.iter().map(|s| fresh_db(s, "fleet")).collect();
    let p = fleet_project(
        &urls,
        "[run]\nretries = 1\nretry_delay = \"200ms\"\nlock_timeout = \"2s\"\n",
    );
    shared_migration(
        &p,
        "V1__plans.sql",
        "CREATE TABLE plans (id int PRIMARY KEY, name text NOT NULL);\nINSERT INTO plans VALUES (1, 'free');\n",
    );

    // Placement: 30 new tenants spread over the three clusters, shared set applied first.
    let ids: Vec<String> = (0..30).map(|i| format!("c{i:02}")).collect();
    let file = p.id_file(&ids);
    let out = p.run(
        &["tenant", "create", "--from-file", file.to_str().unwrap()],
        0,
    );
    let text = stdout(&out);
    assert!(
        text.contains("== cluster alpha") && text.contains("overall: 3 cluster(s), 3 ok"),
        "{text}"
    );
    for url in &urls {
        assert_eq!(registry(url).len(), 10, "{url}: {text}");
        assert_cluster_at(url, 4);
        assert_eq!(shared_state(url), (1, 1, 1));
    }
    // Every cluster keeps its own control schema: its tenants and its run ledger.
    for url in &urls {
        let (runs, tenants): (i64, i32) = {
            let r = connect(url)
                .query_one(
                    "SELECT count(*), sum(total)::int FROM tenantctl.runs WHERE command = 'tenant create'",
                    &[],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!(
            (runs, tenants),
            (1, 10),
            "{url}: one run, its own 10 tenants"
        );
    }

    // --cluster places a tenant; an id that exists on another cluster is refused.
    p.run(&["tenant", "create", "extra", "--cluster", "gamma"], 0);
    assert!(registry(&urls[2]).contains_key("extra"));
    let out = p.run(&["tenant", "create", "c00", "--cluster", "beta"], 1);
    let text = stdout(&out);
    assert!(
        text.contains("already registered (on cluster alpha)"),
        "{text}"
    );
    assert!(!registry(&urls[1]).contains_key("c00"));
    assert!(registry(&urls[0]).contains_key("c00"));
    // Without --cluster, the next one goes where there are fewest: alpha or beta (10 each).
    p.run(&["tenant", "create", "next"], 0);
    assert!(registry(&urls[0]).contains_key("next"));

    // A deploy: tenant V5..V8 and a shared V2, migrated everywhere at once.
    p.copy_migrations(5, 8);
    shared_migration(
        &p,
        "V2__plan_price.sql",
        "ALTER TABLE plans ADD COLUMN price int;\nINSERT INTO plans VALUES (2, 'pro', 10);\n",
    );
    let out = p.run(&["migrate", "--all"], 0);
    let text = stdout(&out);
    assert!(
        text.contains("shared: schema public V1 -> V2: 1 shared migration(s) applied"),
        "{text}"
    );
    assert!(text.contains("32 migrated, 0 failed"), "{text}");
    for url in &urls {
        assert_cluster_at(url, 8);
        assert_eq!(shared_state(url), (2, 2, 2), "shared set once per cluster");
        // The shared step is in each cluster's audit trail, as a run of its own.
        let ledger: Vec<(String, String, Option<i32>, Option<i32>)> = connect(url)
            .query(
                "SELECT r.command, s.state, s.version_before, s.version_after FROM tenantctl.runs r \
                 JOIN tenantctl.run_schemas s ON s.run_id = r.id WHERE s.tenant_id = '(shared)' ORDER BY r.id",
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(
            ledger,
            [
                (
                    "tenant create (shared)".into(),
                    "succeeded".into(),
                    None,
                    Some(1)
                ),
                (
                    "migrate (shared)".into(),
                    "succeeded".into(),
                    Some(1),
                    Some(2)
                ),
            ],
            "{url}"
        );
    }
    // The clusters worked at the same time: every cluster's work (from its shared step to
    // the end of its tenants' run) started before any ended. (From the shared step: a
    // cluster whose shared step is slow under load starts its tenants later.)
    let spans: Vec<(f64, f64)> = urls
        .iter()
        .map(|u| {
            let r = connect(u)
                .query_one(
                    "SELECT (SELECT extract(epoch FROM started_at)::float8 FROM tenantctl.runs \
                             WHERE command = 'migrate (shared)' ORDER BY id DESC LIMIT 1), \
                            (SELECT extract(epoch FROM finished_at)::float8 FROM tenantctl.runs \
                             WHERE command = 'migrate' ORDER BY id DESC LIMIT 1)",
                    &[],
                )
                .unwrap();
            (r.get(0), r.get(1))
        })
        .collect();
    let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(last_start < first_end, "runs did not overlap: {spans:?}");
    // A re-run applies nothing, shared or tenant.
    let out = p.run(&["migrate", "--all"], 0);
    assert!(
        stdout(&out).contains("shared: schema public up to date at V2"),
        "{}",
        stdout(&out)
    );
    for url in &urls {
        assert_eq!(shared_state(url), (2, 2, 2));
    }

    // status: per cluster and overall; --cluster narrows; --json has both.
    let out = p.run(&["status"], 0);
    let text = stdout(&out);
    assert!(
        text.contains("overall: 3 cluster(s), 3 ok; tenants: 32 registered, 32 up to date"),
        "{text}"
    );
    assert!(text.contains("shared:     schema public at V2"), "{text}");
    let out = p.run(&["status", "--cluster", "beta", "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clusters"].as_array().unwrap().len(), 1);
    assert_eq!(v["clusters"][0]["cluster"], "beta");
    assert_eq!(v["counts"]["registered"], 10);
    assert_eq!(v["format"], 1);
    let out = p.run(&["tenant", "list", "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counts"]["active"], 32);
    // --tenant finds each tenant on its own cluster.
    p.run(&["status", "--tenant", "c00", "--tenant", "extra"], 0);

    // One cluster stops mid-run. V9 is slow (0.4 s a schema) and marks each schema once.
    p.add_migration(
        "V9__slow_marker.sql",
        "SELECT pg_sleep(0.4);\nCREATE TABLE marker (n int NOT NULL);\nINSERT INTO marker VALUES (1);\n",
    );
    let child = p.spawn(&["migrate", "--all"]);
    let started = Instant::now();
    loop {
        let done = registry(&urls[2])
            .values()
            .filter(|v| **v == Some(9))
            .count();
        if done >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "gamma never progressed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    servers[2].pg_ctl(&["-m", "immediate", "-w", "stop"]);
    let out = wait_with_deadline(child, Duration::from_secs(120));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(4), "{text}\n{}", stderr(&out));
    assert!(text.contains("failed (gamma)"), "{text}");
    assert!(
        text.contains("partial: cluster(s) gamma did not finish"),
        "{text}"
    );
    // The clusters that stayed up finished.
    assert_cluster_at(&urls[0], 9);
    assert_cluster_at(&urls[1], 9);

    // While gamma is down, a run does the others' (nothing) and says gamma failed.
    let out = p.run(&["migrate", "--all"], 4);
    assert!(
        stdout(&out).contains("== cluster gamma"),
        "{}",
        stdout(&out)
    );
    let out = p.run(&["status", "--json"], 4);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 4);
    assert_eq!(v["ok"], false);
    let gamma = &v["clusters"][2];
    assert_eq!(gamma["cluster"], "gamma");
    assert_eq!(gamma["ok"], false);
    assert_eq!(gamma["exit_code"], 6, "{gamma}");
    assert_eq!(gamma["error"]["kind"], "unreachable", "{gamma}");
    assert_eq!(v["clusters"][0]["error"], serde_json::Value::Null);

    // Back up: what committed is whole, and a re-run converges, exactly once.
    servers[2].pg_ctl(&["-w", "start"]);
    for (schema, rows, distinct, max) in history_counts_at(&urls[2]) {
        assert_eq!(rows, distinct, "{schema}");
        assert!(matches!(max, Some(8) | Some(9)), "{schema} at {max:?}");
    }
    let out = p.run(&["migrate", "--all"], 0);
    let text = stdout(&out);
    assert!(text.contains("overall: 3 cluster(s), 3 ok"), "{text}");
    for url in &urls {
        assert_cluster_at(url, 9);
        assert_one_row_everywhere(url, "marker");
    }
}

/// Clusters here are databases on the suite's server: enough for what does not stop a server.
fn fleet_on_shared_server(extra: &str) -> (Project, Vec<String>) {
    let urls: Vec<String> = (0..3).map(|_| fresh_db(server(), "fleetdb")).collect();
    (fleet_project(&urls, extra), urls)
}

#[test]
fn a_failing_shared_migration_stops_only_its_cluster() {
    let (p, urls) = fleet_on_shared_server("");
    p.run(&["tenant", "create", "a1", "a2", "a3"], 0);
    // beta already has a `plans` table of its own: the shared migration fails there only.
    connect(&urls[1])
        .batch_execute("CREATE TABLE public.plans (x int)")
        .unwrap();
    shared_migration(
        &p,
        "V1__plans.sql",
        "CREATE TABLE plans (id int PRIMARY KEY);\n",
    );
    p.copy_migrations(5, 5);
    let before = registry(&urls[1]);
    let out = p.run(&["migrate", "--all"], 4);
    let text = stdout(&out);
    assert!(
        text.contains("shared migrations in schema public failed")
            && text.contains("relation \"plans\" already exists"),
        "{text}"
    );
    assert_cluster_at(&urls[0], 5);
    assert_cluster_at(&urls[2], 5);
    assert_eq!(
        registry(&urls[1]),
        before,
        "beta's tenants were not started"
    );
    let n: i64 = connect(&urls[1])
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'tenantctl_shared_history'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the failed shared transaction left nothing behind");
    let (state, error): (String, String) = {
        let r = connect(&urls[1])
            .query_one(
                "SELECT s.state, s.error FROM tenantctl.run_schemas s JOIN tenantctl.runs r ON r.id = s.run_id \
                 WHERE r.command = 'migrate (shared)'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(state, "failed");
    assert!(error.contains("already exists"), "{error}");

    // --tenants-only skips the shared set; --shared-only applies nothing else.
    p.run(&["migrate", "--all", "--tenants-only"], 0);
    assert_cluster_at(&urls[1], 5);
    let out = p.run(&["migrate", "--shared-only", "--cluster", "alpha"], 0);
    assert!(
        stdout(&out).contains("up to date at V1"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn cluster_config_and_selection_errors_change_nothing() {
    let (p, urls) = fleet_on_shared_server("");
    p.run(&["tenant", "create", "r1", "r2", "r3", "r4"], 0);
    // Every refusal below leaves every cluster's catalog, registry and ledger as they are.
    let prints: Vec<String> = urls.iter().map(|u| fingerprint_at(u)).collect();
    let out = p.run(&["status", "--cluster", "delta"], 2);
    let err = stderr(&out);
    assert!(
        err.contains("--cluster delta: no such cluster") && err.contains("alpha, beta, gamma"),
        "{err}"
    );
    let out = p.run(&["tenant", "adopt", "legacy", "--baseline", "3"], 2);
    assert!(stderr(&out).contains("--cluster NAME"), "{}", stderr(&out));
    let out = p.run(&["--database-url", &urls[0], "migrate", "--all"], 2);
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    // A rollback that would need a missing down script touches no cluster.
    std::fs::remove_file(p.migrations_dir().join("V4__add_task_indexes.down.sql")).unwrap();
    let out = p.run(&["rollback", "--to", "2", "--all"], 2);
    assert!(stderr(&out).contains("rollback script"), "{}", stderr(&out));
    // An id that is on no cluster is refused before anything runs.
    let out = p.run(&["migrate", "--tenant", "nobody"], 2);
    assert!(stderr(&out).contains("nobody"), "{}", stderr(&out));
    let after: Vec<String> = urls.iter().map(|u| fingerprint_at(u)).collect();
    assert_eq!(prints, after);
}

#[test]
fn an_interrupted_fleet_run_resumes_on_every_cluster() {
    let (p, urls) = fleet_on_shared_server("");
    let ids: Vec<String> = (0..90).map(|i| format!("i{i:02}")).collect();
    let file = p.id_file(&ids);
    p.run(
        &["tenant", "create", "--from-file", file.to_str().unwrap()],
        0,
    );
    // 30 tenants a cluster x 50 ms / 2 jobs: about 0.75 s a cluster.
    p.add_migration(
        "V5__slow.sql",
        "SELECT pg_sleep(0.05);\nCREATE TABLE slow (n int);\nINSERT INTO slow VALUES (1);\n",
    );
    let (out, _) = interrupt_after(&p, &["migrate", "--all"], Duration::from_millis(400));
    let text = stdout(&out);
    assert!(
        text.contains("overall: 3 cluster(s)") && text.contains("interrupted: the same command"),
        "{text}"
    );
    for url in &urls {
        let state: String = connect(url)
            .query_one(
                "SELECT state FROM tenantctl.runs WHERE command = 'migrate' ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(state, "interrupted", "{url}: {text}");
        let done = registry(url).values().filter(|v| **v == Some(5)).count();
        assert!(
            done < 30,
            "{url}: the interrupt landed mid-run ({done} done)"
        );
    }
    let out = p.run(&["migrate", "--all"], 0);
    let err = stderr(&out);
    for name in CLUSTERS {
        assert!(
            err.contains(&format!("[{name}] resuming run")),
            "{name}: {err}"
        );
    }
    for url in &urls {
        assert_cluster_at(url, 5);
        assert_one_row_everywhere(url, "slow");
    }
}

#[test]
fn a_busy_cluster_makes_the_run_partial_not_wrong() {
    let (p, urls) = fleet_on_shared_server("");
    p.run(&["tenant", "create", "b1", "b2", "b3", "b4", "b5", "b6"], 0);
    p.add_migration(
        "V5__slow.sql",
        "SELECT pg_sleep(1.5);\nCREATE TABLE slow (n int);\n",
    );
    // A runner holds alpha's fleet lock; a fleet-wide run meanwhile does the rest.
    let first = p.spawn(&["migrate", "--all", "--cluster", "alpha"]);
    let started = Instant::now();
    while connect(&urls[0])
        .query_one(
            "SELECT count(*) FROM tenantctl.runs WHERE command = 'migrate' AND state = 'running'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = p.run(&["migrate", "--all"], 4);
    let text = stdout(&out);
    assert!(
        text.contains("is in progress on this database") && text.contains("failed (alpha)"),
        "{text}"
    );
    let out = wait_with_deadline(first, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for url in &urls {
        assert_cluster_at(url, 5);
    }
}

#[test]
fn cluster_passwords_are_never_printed() {
    let p = Project::new("fleetpw", 4);
    std::fs::write(
        p.config_path(),
        "[clusters.up]\nurl = \"postgres://u:Sup3rSecretPw@127.0.0.1:1/db\"\n\
         [clusters.down]\nurl = \"postgres://v:An0therSecret@127.0.0.1:2/db\"\n",
    )
    .unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["migrate", "--all"],
        &["tenant", "list", "--json"],
        &["tenant", "create", "acme"],
    ] {
        let out = p.cmd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(6),
            "{args:?}: both clusters unreachable"
        );
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            !all.contains("Sup3rSecretPw") && !all.contains("An0therSecret"),
            "{args:?}: {all}"
        );
        assert!(all.contains("u:***@127.0.0.1:1"), "{args:?}: {all}");
    }
}

#[test]
fn shared_migrations_need_no_create_on_the_database() {
    // A deploy role that may create in `public` and write the control schema, but may not
    // create schemas: the shared step must not try to (the schema is there).
    let p = Project::new("shareddeploy", 4);
    p.run(&["tenant", "create", "d1"], 0);
    let role = format!("deployer_{}", std::process::id());
    p.db()
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; REVOKE CREATE ON DATABASE \"{db}\" FROM PUBLIC; \
             GRANT CREATE, USAGE ON SCHEMA public TO {role}; GRANT USAGE ON SCHEMA tenantctl TO {role}; \
             GRANT ALL ON ALL TABLES IN SCHEMA tenantctl TO {role}; \
             GRANT ALL ON ALL SEQUENCES IN SCHEMA tenantctl TO {role};",
            db = p.url.rsplit('/').next().unwrap(),
        ))
        .unwrap();
    std::fs::create_dir(p.migrations_dir().join("shared")).unwrap();
    shared_migration(&p, "V1__plans.sql", "CREATE TABLE plans (id int);\n");
    let as_deployer = p.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(as_deployer, p.url, "the test URL names its user");
    let out = p
        .cmd()
        .env("TEST_DB_URL", &as_deployer)
        .args(["migrate", "--shared-only"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(shared_state_history(&p.url), 1);
}

fn shared_state_history(url: &str) -> i64 {
    connect(url)
        .query_one("SELECT count(*) FROM public.tenantctl_shared_history", &[])
        .unwrap()
        .get(0)
}
