//! Labels, selectors and staged rollouts: a canary and waves that halt on failures, resume
//! where they stopped, run a check between waves, and stop cleanly during a pause.

use std::time::{Duration, Instant};

use crate::support::*;

/// `count` tenants `t0000…`, a third `tier=free`, the rest `tier=paid` (with `region=eu` on
/// even ones), created from a file with labels per line.
fn labelled_project(name: &str, count: usize) -> (Project, Vec<String>) {
    let p = Project::new(name, 2);
    let ids: Vec<String> = (0..count).map(|i| format!("t{i:04}")).collect();
    let lines: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| match (i % 3, i % 2) {
            (0, _) => format!("{id} tier=free"),
            (_, 0) => format!("{id} tier=paid region=eu"),
            _ => format!("{id} tier=paid"),
        })
        .collect();
    std::fs::write(p.path().join("ids.txt"), lines.join("\n") + "\n").unwrap();
    p.run(
        &[
            "tenant",
            "create",
            "--from-file",
            "ids.txt",
            "--label",
            "env=prod",
        ],
        0,
    );
    (p, ids)
}

/// Each tenant's labels as the registry holds them.
fn labels(p: &Project, id: &str) -> serde_json::Value {
    let text: String = p
        .db()
        .query_one(
            "SELECT labels::text FROM tenantctl.tenants WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

#[test]
fn labels_are_set_checked_shown_and_audited() {
    let (p, _) = labelled_project("labels", 6);
    assert_eq!(
        labels(&p, "t0000"),
        serde_json::json!({"env": "prod", "tier": "free"})
    );
    assert_eq!(
        labels(&p, "t0002"),
        serde_json::json!({"env": "prod", "tier": "paid", "region": "eu"})
    );
    // Set and remove, kubectl style.
    p.run(
        &["tenant", "label", "t0000", "t0001", "canary=true", "env-"],
        0,
    );
    assert_eq!(
        labels(&p, "t0001"),
        serde_json::json!({"tier": "paid", "canary": "true"})
    );
    // A bad label is named, and nothing changes.
    let before = p.fingerprint();
    for args in [
        &["tenant", "label", "t0000", "Tier=x"][..],
        &["tenant", "label", "t0000", "tier=has space"],
        &["tenant", "create", "new1", "--label", "a=B"],
    ] {
        let out = p.run(args, 2);
        assert!(
            stderr(&out).contains("is not allowed"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = p.run(&["tenant", "label", "nobody", "x=y"], 2);
    assert!(stderr(&out).contains("not registered"), "{}", stderr(&out));
    assert_eq!(before, p.fingerprint(), "nothing was changed");
    // Shown in the list and in every tenant object of --json.
    let list = stdout(&p.run(&["tenant", "list"], 0));
    assert!(
        list.contains("LABELS") && list.contains("canary=true,tier=paid"),
        "{list}"
    );
    let v = p.json(&["tenant", "list", "--json"], 0);
    assert_eq!(v["tenants"][1]["labels"]["canary"], "true");
    let v = p.json(&["status", "--json"], 0);
    assert_eq!(v["tenants"][0]["labels"]["tier"], "free");
    // Audited.
    let audit = p.json(&["audit", "--json"], 0);
    let label_runs: Vec<&serde_json::Value> = audit["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["command"] == "tenant label")
        .collect();
    assert_eq!(label_runs.len(), 1);
    assert_eq!(label_runs[0]["counts"]["done"], 2);
}

#[test]
fn selectors_choose_tenants_and_a_typo_is_not_success() {
    let (p, ids) = labelled_project("selectors", 12);
    p.run(&["tenant", "label", "t0003", "canary=true"], 0);
    let selected = |sel: &str| -> Vec<String> {
        let v = p.json(&["tenant", "list", "--select", sel, "--json"], 0);
        v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let free: Vec<String> = ids.iter().step_by(3).cloned().collect();
    assert_eq!(selected("tier=free"), free);
    assert_eq!(selected("tier!=free").len(), 8);
    assert_eq!(
        selected("region in (eu, us)"),
        ["t0002", "t0004", "t0008", "t0010"]
    );
    assert_eq!(selected("region notin (eu)").len(), 8);
    assert_eq!(selected("canary"), ["t0003"]);
    assert_eq!(selected("!canary").len(), 11);
    assert_eq!(
        selected("tier=paid,!region"),
        ["t0001", "t0005", "t0007", "t0011"]
    );

    // Bad syntax: exit 2, the position named.
    let out = p.run(&["migrate", "--all", "--select", "tier in (free"], 2);
    assert!(stderr(&out).contains("at position 14"), "{}", stderr(&out));
    // Nothing matched: status and list say so (exit 0); migrate, rollback, drop refuse (2).
    let out = p.run(&["status", "--select", "tier=gold"], 0);
    assert!(
        stdout(&out).contains("no tenant matches --select tier=gold"),
        "{}",
        stdout(&out)
    );
    let out = p.run(&["tenant", "list", "--select", "tier=gold"], 0);
    assert!(
        stdout(&out).contains("no tenant matches"),
        "{}",
        stdout(&out)
    );
    let before = p.fingerprint();
    for args in [
        &["migrate", "--all", "--select", "tier=gold"][..],
        &["rollback", "--to", "1", "--select", "tier=gold"],
        &["tenant", "drop", "--select", "tier=gold", "--yes"],
    ] {
        let out = p.run(args, 2);
        assert!(
            stderr(&out).contains("no tenant matches it"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(before, p.fingerprint());

    // --select with --all migrates only the matching tenants; with --tenant it narrows.
    p.copy_migrations(3, 3);
    let v = p.json(&["migrate", "--all", "--select", "region=eu", "--json"], 0);
    assert_eq!(v["counts"]["done"], 4);
    let versions = p.versions();
    assert!(ids.iter().all(|id| versions[id]
        == Some(if selected("region=eu").contains(id) {
            3
        } else {
            2
        })));
    let v = p.json(
        &[
            "migrate",
            "--tenant",
            "t0000",
            "--tenant",
            "t0001",
            "--select",
            "tier=free",
            "--json",
        ],
        0,
    );
    assert_eq!(v["counts"]["done"], 1);
    assert_eq!(p.versions()["t0000"], Some(3));
    assert_eq!(p.versions()["t0001"], Some(2));
    // Drop by selector.
    p.run(&["tenant", "drop", "--select", "canary", "--yes"], 0);
    assert_eq!(p.tenant_state("t0003"), "dropped");
}

/// Wave 2's ids from the dry run of `args`.
fn planned_waves(p: &Project, args: &[&str]) -> Vec<Vec<String>> {
    let mut all = args.to_vec();
    all.extend(["--dry-run", "--json"]);
    let v = p.json(&all, 0);
    v["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn a_rollout_halts_at_the_failing_wave_and_resumes_there() {
    let (p, ids) = labelled_project("rollout", 300);
    // V3 counts itself: a data effect to prove each tenant ran it exactly once.
    p.add_migration(
        "V3__effect.sql",
        "CREATE TABLE effect (n int);\nINSERT INTO effect VALUES (1);\n",
    );
    let cmd = [
        "migrate",
        "--all",
        "--canary",
        "5",
        "--waves",
        "10%,50%,100%",
    ];
    let waves = planned_waves(&p, &cmd);
    let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
    assert_eq!(sizes, [5, 25, 120, 150]);
    let text = stdout(&p.run(&[&cmd[..], &["--dry-run"]].concat(), 0));
    assert!(text.contains("wave 0 (canary): 5 tenant(s):"), "{text}");
    assert_eq!(planned_waves(&p, &cmd), waves, "the same order every time");
    // Three tenants of wave 2 fail V3: they already have the table.
    let bad: Vec<&String> = waves[2].iter().take(3).collect();
    for id in &bad {
        p.run(&["tenant", "label", id, "bad=yes"], 0);
        p.db()
            .batch_execute(&format!("CREATE TABLE tenant_{id}.effect (n int)"))
            .unwrap();
    }
    let out = p.run(&cmd, 7);
    let text = stdout(&out);
    assert!(
        text.contains("HALTED after wave 2: 3 of 120 tenant(s) failed in wave 2"),
        "{text}"
    );
    let versions = p.versions();
    for (w, ids_w) in waves.iter().enumerate() {
        for id in ids_w {
            let want = match w {
                3 => 2,
                2 if bad.contains(&id) => 2,
                _ => 3,
            };
            assert_eq!(versions[id], Some(want), "{id} in wave {w}");
        }
    }
    // Wave 3 untouched: no history row for V3, no table.
    for id in &waves[3] {
        assert_eq!(p.history(&format!("tenant_{id}")), [1, 2], "{id}");
        assert!(!p.schema_has_table(&format!("tenant_{id}"), "effect"));
    }
    let v = p.json(&["status", "--json"], 0);
    let run = &v["clusters"][0]["last_run"];
    assert_eq!(run["state"], "halted");
    assert_eq!(run["halted"]["wave"], 2);
    let states: Vec<&str> = run["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "done", "halted", "not_started"]);
    assert!(stdout(&p.run(&["status"], 0)).contains("HALTED after wave 2"));

    // Fixed: the same command resumes at wave 2 (the failed ones first) and finishes.
    for id in &bad {
        p.db()
            .batch_execute(&format!("DROP TABLE tenant_{id}.effect"))
            .unwrap();
    }
    let out = p.run(&cmd, 0);
    assert!(stderr(&out).contains("resuming run"), "{}", stderr(&out));
    p.assert_converged(3);
    let effects: i64 = p
        .db()
        .query_one(
            &format!(
                "SELECT sum(n)::bigint FROM ({}) e",
                ids.iter()
                    .map(|id| format!("SELECT n FROM tenant_{id}.effect"))
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ")
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(effects, 300, "V3 ran exactly once in every tenant");
    let v = p.json(&["status", "--json"], 0);
    assert_eq!(v["clusters"][0]["last_run"]["state"], "succeeded");
}

#[test]
fn the_check_between_waves_halts_and_a_signal_during_a_pause_stops_cleanly() {
    let (p, _) = labelled_project("between", 20);
    p.run(&["tenant", "label", "t0007", "canary=true"], 0);
    p.copy_migrations(3, 3);
    // The check fails after wave 1: wave 2 is not started.
    let check = "test \"$TENANTCTL_WAVE\" -lt 1 && test -s \"$TENANTCTL_TENANTS_FILE\" && test -n \"$TENANTCTL_RUN_ID\"";
    let cmd = [
        "migrate",
        "--all",
        "--canary-select",
        "canary=true",
        "--waves",
        "50%,100%",
        "--between-waves",
        check,
        "--json",
    ];
    let v = p.json(&cmd, 7);
    assert_eq!(v["halted"]["wave"], 1);
    assert!(
        v["halted"]["reason"]
            .as_str()
            .unwrap()
            .contains("--between-waves command exited with status 1"),
        "{v}"
    );
    assert_eq!(p.versions()["t0007"], Some(3), "the canary went first");
    let at3 = p.versions().values().filter(|v| **v == Some(3)).count();
    assert_eq!(at3, 10, "the canary and wave 1 (50%)");

    // SIGINT during the pause: exit 130 with nothing in flight, then the same command resumes.
    p.add_migration("V4__more.sql", "CREATE TABLE more (id int);\n");
    let args = ["migrate", "--all", "--canary", "2", "--pause", "1h"];
    let child = p.spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.versions().values().filter(|v| **v == Some(4)).count() < 2 {
        assert!(Instant::now() < deadline, "the canary did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    signal(child.id(), "INT");
    let out = wait_with_deadline(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(
        stderr(&out).contains("pausing before wave 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(p.versions().values().filter(|v| **v == Some(4)).count(), 2);
    let busy: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM tenantctl.run_schemas WHERE run_id = (SELECT max(id) FROM tenantctl.runs) AND state = 'failed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(busy, 0, "nothing was half-done");
    let out = p.run(&["migrate", "--all", "--canary", "2", "--pause", "1ms"], 0);
    assert!(stderr(&out).contains("resuming run"), "{}", stderr(&out));
    p.assert_converged(4);
}
