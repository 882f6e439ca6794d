//! Watching a run: the NDJSON event stream (`--events`), the run's Prometheus metrics
//! (`--metrics-file`, `--pushgateway`, checked by the real promtool and read back from a real
//! Pushgateway), the fleet's state as metrics (`status --metrics`), and slow tenants named
//! with what blocks them (`--slow-after`).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::external::{promtool_problems, Pushgateway};
use crate::support::{stderr, wait_ok, Project};

/// A fleet at V5 with tenants `ids`, and a V6 that fails where a user's id is 1000 or more.
fn fleet(name: &str, ids: &[&str]) -> Project {
    let p = Project::new(name, 5);
    let mut args = vec!["tenant", "create"];
    args.extend(ids);
    p.run(&args, 0);
    p.add_migration(
        "V6__small_ids.sql",
        "ALTER TABLE users ADD CONSTRAINT small_ids CHECK (id < 1000);\n",
    );
    p
}

fn events(p: &Project, file: &str) -> Vec<Value> {
    std::fs::read_to_string(p.path().join(file))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

#[test]
fn the_event_stream_rebuilds_the_ledgers_counts() {
    let p = fleet("obs_stream", &["a", "b", "c", "d", "e", "f"]);
    p.run(&["migrate", "--tenant", "a", "--tenant", "b"], 0);
    p.db()
        .batch_execute(
            "INSERT INTO tenant_c.users (id, email, full_name) OVERRIDING SYSTEM VALUE VALUES (5000, 'x@c', 'X')",
        )
        .unwrap();
    p.run(&["migrate", "--all", "--events", "run.ndjson"], 1);
    let all = events(&p, "run.ndjson");
    let started = named(&all, "run_started");
    assert_eq!(started.len(), 1, "{all:?}");
    let run_id = started[0]["run_id"].as_i64().unwrap();
    for e in &all {
        assert_eq!(e["format"], 1, "{e}");
        assert_eq!(e["cluster"], "default", "{e}");
        assert_eq!(e["run_id"], run_id, "{e}");
        let ts = e["ts"].as_str().unwrap();
        assert!(ts.starts_with("20") && ts.ends_with('Z'), "{e}");
    }
    assert_eq!(started[0]["command"], "migrate");
    assert_eq!(started[0]["scope"], "all");

    // Rebuilt from the stream alone.
    let (total, todo, refused) = (
        started[0]["total"].as_i64().unwrap(),
        started[0]["todo"].as_i64().unwrap(),
        started[0]["refused"].as_i64().unwrap(),
    );
    let finished = named(&all, "tenant_finished");
    let failed = named(&all, "tenant_failed");
    let done = finished
        .iter()
        .filter(|e| e["applied"].as_i64() > Some(0))
        .count() as i64;
    let unchanged = total - todo - refused + finished.len() as i64 - done;
    assert_eq!(
        named(&all, "tenant_started").len(),
        finished.len() + failed.len()
    );

    // The ledger, read by the test.
    let ledger: Vec<(String, i64)> = p
        .db()
        .query(
            "SELECT state, count(*) FROM tenantctl.run_schemas WHERE run_id = $1 GROUP BY state",
            &[&run_id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let count = |s: &str| ledger.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    let ledger_total: i32 = p
        .db()
        .query_one("SELECT total FROM tenantctl.runs WHERE id = $1", &[&run_id])
        .unwrap()
        .get(0);
    assert_eq!(
        (done, failed.len() as i64),
        (count("succeeded"), count("failed")),
        "{ledger:?}"
    );
    assert_eq!(total, i64::from(ledger_total));
    assert_eq!((done, unchanged, failed.len()), (3, 2, 1));
    let end = named(&all, "run_finished");
    assert_eq!(end.len(), 1);
    assert_eq!(
        end[0]["counts"],
        serde_json::json!({"done": done, "unchanged": unchanged, "failed": failed.len(), "not_started": 0, "dropped_meanwhile": 0})
    );
    assert_eq!(end[0]["exit_code"], 1);
    assert_eq!(end[0]["state"], "failed");
    // The failure as the JSON documents give it.
    let f = &failed[0];
    assert_eq!(f["tenant"], "c");
    assert_eq!(f["failure"]["sqlstate"], "23514", "{f}");
    assert_eq!(f["failure"]["migration"], "V6__small_ids");
    assert_eq!(f["failure"]["line"], 1);

    // Appended: a second run adds its own lines.
    p.run(&["migrate", "--all", "--events", "run.ndjson"], 1);
    assert_eq!(named(&events(&p, "run.ndjson"), "run_started").len(), 2);
}

/// (run_id, state, total) of the ledger's runs of `command`, oldest first.
fn ledger_runs(p: &Project, command: &str) -> Vec<(i64, String, i32)> {
    p.db()
        .query(
            "SELECT id, state, total FROM tenantctl.runs WHERE command = $1 ORDER BY id",
            &[&command],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn label_and_rename_are_runs_in_the_stream_and_in_the_metrics() {
    let p = fleet("obs_oneshot", &["a", "b", "c", "d"]);
    // Two tenants labelled in one statement: a run of two in the ledger.
    let flags = ["--events", "one.ndjson", "--metrics-file", "one.prom"];
    let mut label = vec!["tenant", "label", "a", "b", "tier=gold"];
    label.extend(flags);
    p.run(&label, 0);
    let mut rename = vec!["tenant", "rename", "c", "zed"];
    rename.extend(flags);
    p.run(&rename, 0);
    // A rename the database refuses: a function body spells the schema's name.
    p.db()
        .batch_execute("CREATE FUNCTION tenant_d.n() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM tenant_d.users'")
        .unwrap();
    let mut refused = vec!["tenant", "rename", "d", "dee"];
    refused.extend(flags);
    p.run(&refused, 2);

    let all = events(&p, "one.ndjson");
    let runs: Vec<&Value> = named(&all, "run_started");
    let ends: Vec<&Value> = named(&all, "run_finished");
    assert_eq!(runs.len(), 3, "{all:#?}");
    assert_eq!(ends.len(), 3, "{all:#?}");
    let commands: Vec<&str> = runs
        .iter()
        .map(|e| e["command"].as_str().unwrap())
        .collect();
    assert_eq!(commands, ["tenant label", "tenant rename", "tenant rename"]);

    // The label: the ledger's run and its counts.
    let labels = ledger_runs(&p, "tenant label");
    let (label_run, ..) = labels.last().unwrap().clone();
    assert_eq!(runs[0]["run_id"], label_run);
    assert_eq!(
        (runs[0]["total"].as_i64(), runs[0]["todo"].as_i64()),
        (Some(2), Some(2))
    );
    let in_run = |id: i64, name: &str| -> Vec<String> {
        all.iter()
            .filter(|e| e["event"] == name && e["run_id"] == id)
            .map(|e| e["tenant"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(in_run(label_run, "tenant_started"), ["a", "b"]);
    assert_eq!(in_run(label_run, "tenant_finished"), ["a", "b"]);
    let ledger_counts: (i64, i64) = p
        .db()
        .query_one(
            "SELECT count(*) FILTER (WHERE applied > 0), count(*) FILTER (WHERE coalesce(applied, 0) = 0) FROM tenantctl.run_schemas WHERE run_id = $1",
            &[&label_run],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(ledger_counts, (2, 0));
    assert_eq!(ends[0]["counts"]["done"], ledger_counts.0, "{}", ends[0]);
    assert_eq!(
        ends[0]["counts"]["unchanged"], ledger_counts.1,
        "{}",
        ends[0]
    );
    assert_eq!(
        (ends[0]["state"].as_str(), ends[0]["exit_code"].as_i64()),
        (Some("succeeded"), Some(0))
    );

    // The rename: the ledger's run, under the new id.
    let renames = ledger_runs(&p, "tenant rename");
    assert_eq!(
        renames.len(),
        1,
        "the refused rename recorded nothing: {renames:?}"
    );
    let (rename_run, state, _) = renames[0].clone();
    assert_eq!(state, "succeeded");
    assert_eq!(runs[1]["run_id"], rename_run);
    assert_eq!(in_run(rename_run, "tenant_finished"), ["zed"]);
    assert_eq!(ends[1]["run_id"], rename_run);

    // The refused rename: no run in the ledger, so no run id; why, and exit 2.
    assert_eq!(runs[2]["run_id"], Value::Null);
    let failed = named(&all, "tenant_failed");
    assert_eq!(failed.len(), 1, "{all:#?}");
    assert_eq!(failed[0]["tenant"], "d");
    assert_eq!(failed[0]["failure"]["sqlstate"], "TNF04", "{}", failed[0]);
    let message = failed[0]["failure"]["message"].as_str().unwrap();
    assert!(
        message.contains("not renamed") && message.contains("spell"),
        "{message}"
    );
    assert_eq!(
        (ends[2]["state"].as_str(), ends[2]["exit_code"].as_i64()),
        (Some("failed"), Some(2))
    );
    assert_eq!(ends[2]["counts"]["failed"], 1);
    assert_eq!(p.tenant_state("d"), "active");

    // The last command's metrics (the refused rename), valid for promtool.
    let metrics = std::fs::read_to_string(p.path().join("one.prom")).unwrap();
    assert_eq!(promtool_problems(&metrics), "", "{metrics}");
    assert!(
        metrics.contains(
            r#"tenantctl_run_tenants{cluster="default",command="tenant rename",result="failed"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("tenantctl_run_exit_code{cluster=\"default\",command=\"tenant rename\"} 2"),
        "{metrics}"
    );
}

#[test]
fn run_metrics_pass_promtool_and_reach_the_pushgateway_and_status_gives_the_fleets_state() {
    let p = fleet("obs_metrics", &["a", "b", "c"]);
    let gateway = Pushgateway::start();
    let url = gateway.url();
    p.run(
        &[
            "migrate",
            "--all",
            "--metrics-file",
            "m.prom",
            "--pushgateway",
            &url,
        ],
        0,
    );
    let text = std::fs::read_to_string(p.path().join("m.prom")).unwrap();
    assert_eq!(promtool_problems(&text), "", "{text}");
    assert!(
        text.contains(
            r#"tenantctl_run_tenants{cluster="default",command="migrate",result="done"} 3"#
        ),
        "{text}"
    );
    assert!(text
        .contains(r#"tenantctl_migrations_applied_total{cluster="default",command="migrate"} 3"#));
    assert!(text.contains(r#"tenantctl_tenant_duration_seconds_count{cluster="default",command="migrate",result="done"} 3"#));
    assert!(
        !text.contains("tenant=") && !text.contains("tenant_a"),
        "{text}"
    );
    // No temporary file left beside it.
    let left: Vec<_> = std::fs::read_dir(p.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Read back from the Pushgateway's own API: the group and its value.
    let groups = gateway.groups();
    let group = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| {
            g["labels"]["job"] == "tenantctl"
                && g["labels"]["command"] == "migrate"
                && g["labels"]["cluster"] == "default"
        })
        .unwrap_or_else(|| panic!("no group: {groups}"))
        .clone();
    let done = group["tenantctl_run_tenants"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["labels"]["result"] == "done")
        .unwrap()
        .clone();
    assert_eq!(done["value"], "3", "{group}");

    // A Pushgateway that is not there: a warning, the run's exit code stands.
    let out = p.run(
        &[
            "migrate",
            "--all",
            "--pushgateway",
            "http://ci:s3cr3t-pw@127.0.0.1:1",
        ],
        0,
    );
    assert!(
        stderr(&out).contains("metrics not pushed"),
        "{}",
        stderr(&out)
    );
    // Its password (basic auth) is never printed.
    assert!(!stderr(&out).contains("s3cr3t-pw"), "{}", stderr(&out));

    // The fleet's state: one tenant behind.
    p.add_migration("V7__note.sql", "ALTER TABLE users ADD COLUMN note text;\n");
    p.run(&["migrate", "--tenant", "a"], 0);
    let out = p.run(&["status", "--metrics"], 0);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(promtool_problems(&text), "", "{text}");
    for line in [
        r#"tenantctl_tenants{cluster="default",version="7"} 1"#,
        r#"tenantctl_tenants{cluster="default",version="6"} 2"#,
        r#"tenantctl_tenants_pending{cluster="default"} 2"#,
        r#"tenantctl_latest_version 7"#,
        r#"tenantctl_cluster_up{cluster="default"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    let last: f64 = p
        .db()
        .query_one(
            "SELECT extract(epoch FROM max(finished_at))::float8 FROM tenantctl.runs WHERE command = 'migrate' AND state = 'succeeded'",
            &[],
        )
        .unwrap()
        .get(0);
    let shown: f64 = text
        .lines()
        .find(|l| {
            l.starts_with(
                r#"tenantctl_last_success_timestamp_seconds{cluster="default",command="migrate"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((shown - last).abs() < 0.001, "{shown} vs {last}");
    p.run(&["status", "--metrics", "--metrics-file", "fleet.prom"], 0);
    let file = std::fs::read_to_string(p.path().join("fleet.prom")).unwrap();
    assert!(file.contains("tenantctl_tenants_pending"), "{file}");

    // --slow-after is the fleet runs' own; a label takes the stream but not it: refused,
    // nothing changed.
    let out = p.run(
        &[
            "tenant",
            "label",
            "a",
            "tier=x",
            "--slow-after",
            "1s",
            "--events",
            "x.ndjson",
        ],
        2,
    );
    assert!(stderr(&out).contains("--slow-after"), "{}", stderr(&out));
    assert!(!p.path().join("x.ndjson").exists());
    let labels: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM tenantctl.tenants WHERE labels ? 'tier'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(labels, 0);
    p.run(&["status", "--events", "x.ndjson"], 2);
    // `--events -`: stdout is the stream and nothing else; the summary goes to stderr.
    let out = p.run(&["tenant", "label", "a", "b", "tier=y", "--events", "-"], 0);
    let lines: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not NDJSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.last().unwrap()["event"], "run_finished", "{lines:?}");
    assert!(stderr(&out).contains("2 labelled"), "{}", stderr(&out));
    let out = p.run(&["migrate", "--all", "--events", "-", "--json"], 2);
    assert!(
        stderr(&out).contains("both write to stdout"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_slow_tenant_is_reported_once_live_with_what_blocks_it() {
    let p = fleet("obs_slow", &["a", "b"]);
    p.write_config("[run]\nlock_timeout = \"60s\"");
    let mut holder = p.db();
    holder
        .batch_execute("BEGIN; LOCK TABLE tenant_a.users IN ACCESS SHARE MODE")
        .unwrap();
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let mut child = p.spawn(&[
        "migrate",
        "--all",
        "--slow-after",
        "1s",
        "--events",
        "slow.ndjson",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let slow = loop {
        let text = std::fs::read_to_string(p.path().join("slow.ndjson")).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("\"tenant_slow\"")) {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no slow event: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Seen while the run still waits: the stream is written as it happens.
    assert!(child.try_wait().unwrap().is_none());
    assert_eq!(slow["tenant"], "a");
    let waiting = slow["waiting"].as_str().unwrap();
    assert!(
        waiting.contains("tenant_a.users") && waiting.contains(&format!("pid {pid}")),
        "{waiting}"
    );
    holder.batch_execute("COMMIT").unwrap();
    let out = wait_ok(child, Duration::from_secs(60));
    assert!(
        stderr(&out).contains("slow: tenant a (schema tenant_a): V5 -> V6 still running after 1s"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        (
            slow["version_before"].as_i64(),
            slow["target_version"].as_i64()
        ),
        (Some(5), Some(6))
    );
    assert_eq!(named(&events(&p, "slow.ndjson"), "tenant_slow").len(), 1);
    assert!(p.versions().values().all(|v| *v == Some(6)));
}
