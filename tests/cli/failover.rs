//! A failover in the middle of a run, on real streaming replication: the standby stops
//! receiving WAL for a moment (so commits the primary acknowledged are lost), the primary dies,
//! the standby is promoted. The URL lists both hosts with target_session_attrs=read-write.
//! The run never ends green with tenants behind; every tenant ends at the new version
//! exactly once, by this command or by the same command run again (which resumes the run).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn query_one(url: &str, sql: &str) -> Option<String> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).ok()?;
    c.query_opt(sql, &[]).ok()?.and_then(|r| r.get(0))
}

#[test]
fn a_failover_that_loses_commits_never_ends_green() {
    let primary = start_cluster(&[]);
    let standby = start_standby(&primary);
    let p = Project::on(&primary, "failover", 1);
    let db = p.url.rsplit('/').next().unwrap().to_string();
    // The database reaches the standby before anything else.
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_one(&standby.admin_url(&db), "SELECT 'ok'").is_none() {
        assert!(
            Instant::now() < deadline,
            "the standby never got the database"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let both = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write&connect_timeout=2",
        primary.port, standby.port
    );
    p.write_config("[run]\nretries = 8\n");
    let config = std::fs::read_to_string(p.config_path())
        .unwrap()
        .replace("${TEST_DB_URL}", &both);
    std::fs::write(p.config_path(), config).unwrap();
    let ids = p.create_tenants(400);
    // Streaming: the standby has all of it within moments.
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_one(
        &standby.admin_url(&db),
        "SELECT state FROM tenantctl.runs WHERE id = 1",
    )
    .as_deref()
        != Some("succeeded")
    {
        assert!(Instant::now() < deadline, "the standby does not follow: {:?}", query_one(&standby.admin_url("postgres"), "SELECT status || ' ' || coalesce(latest_end_lsn::text, '') FROM pg_stat_wal_receiver"));
        std::thread::sleep(Duration::from_millis(100));
    }
    p.add_migration(
        "V2__slow.sql",
        "SELECT pg_sleep(0.01);\nCREATE TABLE invoices (id bigint PRIMARY KEY);\n",
    );

    // The document is large: to a file, so that the pipe never fills.
    let json_path = p.path().join("out.json");
    let child = p
        .std_cmd()
        .args(["migrate", "--all", "--jobs", "2", "--json"])
        .stdout(std::fs::File::create(&json_path).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let a good part commit and replicate, then cut the standby off.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = query_one(
            &primary.admin_url(&db),
            "SELECT count(*)::text FROM tenantctl.run_schemas WHERE state = 'succeeded' AND run_id = (SELECT max(id) FROM tenantctl.runs)",
        )
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
        if done >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "the run never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let receiver = query_one(
        &standby.admin_url("postgres"),
        "SELECT pid::text FROM pg_stat_wal_receiver",
    )
    .expect("a WAL receiver on the standby");
    signal(receiver.parse().unwrap(), "STOP");
    std::thread::sleep(Duration::from_millis(700));
    let committed_on_primary: i64 = query_one(
        &primary.admin_url(&db),
        "SELECT count(*)::text FROM tenantctl.tenants WHERE version = 2",
    )
    .unwrap()
    .parse()
    .unwrap();
    primary.pg_ctl(&["stop", "-m", "immediate"]);
    signal(receiver.parse().unwrap(), "CONT");
    standby.pg_ctl(&["promote", "-w"]);

    let out = wait_with_deadline(child, Duration::from_secs(120));
    let json = std::fs::read(&json_path).unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    let at_v2 = |url: &str| -> i64 {
        query_one(
            url,
            "SELECT count(*)::text FROM tenantctl.tenants WHERE version = 2",
        )
        .unwrap()
        .parse()
        .unwrap()
    };
    let new_primary = standby.admin_url(&db);
    let code = out.status.code();
    eprintln!(
        "primary had {committed_on_primary} at V2 when it died; exit {code:?}; {} at V2 on the new primary\n{}",
        at_v2(&new_primary),
        stderr(&out)
    );
    // Commits were lost (the standby was cut off while the primary went on), and found so.
    let err = stderr(&out);
    assert!(
        err.contains(
            "schema(s) it committed are not there (lost in a failover) and are done again"
        ) && !err.contains(" 0 schema(s) it committed are not there"),
        "{err}"
    );
    if code == Some(0) {
        // Green means every tenant is done there.
        assert_eq!(doc["ok"], true, "{doc}");
        assert_eq!(at_v2(&new_primary), ids.len() as i64, "{doc}");
    } else {
        // Not green: the run says so, and the same command resumes it and finishes.
        assert_eq!(doc["ok"], false, "{doc}");
        let again = Command::new(assert_cmd::cargo::cargo_bin("tenantctl"))
            .current_dir(p.path())
            .args(["migrate", "--all", "--jobs", "2"])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert_eq!(
            again.status.code(),
            Some(0),
            "{}\n{}",
            stdout(&again),
            stderr(&again)
        );
        assert!(
            stderr(&again).contains("resuming run"),
            "{}",
            stderr(&again)
        );
    }
    assert_eq!(at_v2(&new_primary), ids.len() as i64);
    // Exactly once: one history row per version in every schema.
    for (schema, rows, distinct, max) in history_counts_at(&new_primary) {
        assert_eq!((rows, distinct, max), (2, 2, Some(2)), "{schema}");
    }
    // The ledger agrees: no run called succeeded has a row left pending.
    let bad = query_one(
        &new_primary,
        "SELECT count(*)::text FROM tenantctl.runs r WHERE r.state = 'succeeded' AND EXISTS (SELECT 1 FROM tenantctl.run_schemas s WHERE s.run_id = r.id AND s.state = 'pending')",
    )
    .unwrap();
    assert_eq!(bad, "0");
}

/// Pointed at a hot standby, a command that changes the database says so and what to do,
/// with the code for a server that cannot serve it; status still reads it.
#[test]
fn a_standby_is_named_as_a_standby() {
    let primary = start_cluster(&[]);
    let standby = start_standby(&primary);
    let p = Project::on(&primary, "standby", 2);
    p.create_tenants(3);
    let db = p.url.rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_one(
        &standby.admin_url(&db),
        "SELECT count(*)::text FROM tenantctl.tenants",
    )
    .as_deref()
        != Some("3")
    {
        assert!(Instant::now() < deadline, "the standby never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = std::fs::read_to_string(p.config_path())
        .unwrap()
        .replace("${TEST_DB_URL}", &standby.url(&db));
    std::fs::write(p.config_path(), config).unwrap();
    p.copy_migrations(3, 3);
    for args in [
        vec!["migrate", "--all"],
        vec!["rollback", "--to", "1", "--all"],
        vec!["tenant", "create", "acme"],
        vec!["tenant", "drop", "t0000", "--yes"],
    ] {
        let out = p.run(&args, 6);
        assert!(
            stderr(&out).contains("is a read-only standby (in recovery)")
                && stderr(&out).contains("target_session_attrs=read-write"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let v = p.json(&["migrate", "--all", "--json"], 6);
    assert_eq!(v["error"]["kind"], "unreachable", "{v}");
    p.run(&["status"], 0);
}

/// `status` shows as the last run the one that ended last: a resumed migrate that finished
/// after a tenant create made meanwhile.
#[test]
fn the_last_run_is_the_one_that_ended_last() {
    let p = Project::new("last_run", 1);
    p.create_tenants(60);
    p.add_migration("V2__slow.sql", "SELECT pg_sleep(0.05);\n");
    interrupt_after(
        &p,
        &["migrate", "--all", "--jobs", "1"],
        Duration::from_millis(800),
    );
    p.run(&["tenant", "create", "meanwhile"], 0);
    let out = p.run(&["migrate", "--all", "--jobs", "4"], 0);
    assert!(stderr(&out).contains("resuming run"), "{}", stderr(&out));
    let v = p.json(&["status", "--json"], 0);
    let last = &v["clusters"][0]["last_run"];
    assert_eq!(
        (last["command"].as_str(), last["state"].as_str()),
        (Some("migrate"), Some("succeeded")),
        "{last}"
    );
    let text = stdout(&p.run(&["status"], 0));
    assert!(text.contains("last run:   run 2 (migrate"), "{text}");
}
