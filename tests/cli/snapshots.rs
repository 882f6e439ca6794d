//! What users see, as reviewed snapshots (insta): the text summary of a run with a failure,
//! `status` text, and every `--json` document. Volatile parts (times, run ids, pids, hosts,
//! URLs) are redacted; `--jobs 1` keeps the order of tenants fixed. A change here is a change
//! of what users read or what pipelines parse: review the diff.

use crate::support::*;

/// Keys whose values change from run to run.
const VOLATILE: &[&str] = &[
    "run_id",
    "run",
    "id_of_run",
    "elapsed_ms",
    "started_at",
    "finished_at",
    "created_at",
    "pid",
    "host",
    "actor",
    "command_line",
];

fn text_settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"postgres://[^\s)]+", "[url]");
    s.add_filter(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}( UTC|Z)?", "[time]");
    s.add_filter(r"\brun \d+", "run [id]");
    s.add_filter(r"in \d+\.\d+s", "in [elapsed]");
    s.add_filter(r"pid \d+", "pid [pid]");
    s.add_filter(r"on \S+ \(pid", "on [host] (pid");
    s.add_filter(r"by \S+ on", "by [actor] on");
    s.add_filter(r"/tmp/\.tmp\w+", "[project]");
    s.add_filter(r"__arch_\d{14}", "__arch_[time]");
    s
}

fn snapshot_text(name: &str, text: &str) {
    text_settings().bind(|| insta::assert_snapshot!(name, text));
}

fn snapshot_json(name: &str, out: &std::process::Output) {
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{name}: stdout is not JSON ({e}): {}", stdout(out)));
    let mut s = text_settings();
    for key in VOLATILE {
        s.add_redaction(&format!(".**.{key}"), format!("[{key}]"));
    }
    s.bind(|| insta::assert_json_snapshot!(name, value));
}

/// Three tenants at V6, a V7 that fails on t0001 (its table is taken), and one call per
/// document. The database state behind each is checked too.
#[test]
fn what_a_run_prints() {
    let p = Project::new("snap_run", 6);
    p.create_tenants(3);
    p.db()
        .batch_execute("CREATE TABLE tenant_t0001.project_summary_v2 (x int)")
        .unwrap();
    p.add_migration(
        "V7__summary_v2.sql",
        "CREATE TABLE project_summary_v2 (\n    project_id bigint PRIMARY KEY,\n    tasks int NOT NULL\n);\n",
    );
    p.add_migration(
        "V7__summary_v2.down.sql",
        "DROP TABLE project_summary_v2;\n",
    );

    let plan = p.run(&["migrate", "--all", "--dry-run", "--jobs", "1"], 0);
    snapshot_text("migrate_dry_run_text", &stdout(&plan));
    let plan = p.run(&["migrate", "--all", "--dry-run", "--json"], 0);
    snapshot_json("migrate_dry_run_json", &plan);

    let run = p.run(&["migrate", "--all", "--jobs", "1"], 1);
    snapshot_text("migrate_with_a_failure_text", &stdout(&run));
    let versions = p.versions();
    assert_eq!(
        (versions["t0000"], versions["t0001"], versions["t0002"]),
        (Some(7), Some(6), Some(7))
    );
    snapshot_text(
        "status_after_a_failure_text",
        &stdout(&p.run(&["status"], 0)),
    );
    snapshot_json(
        "status_after_a_failure_json",
        &p.run(&["status", "--json"], 0),
    );

    // Again with --json: t0001 still fails, the others are current.
    let run = p.run(&["migrate", "--all", "--jobs", "1", "--json"], 1);
    snapshot_json("migrate_with_a_failure_json", &run);

    let rollback = p.run(
        &["rollback", "--to", "6", "--all", "--jobs", "1", "--json"],
        0,
    );
    snapshot_json("rollback_json", &rollback);
    assert!(p.versions().values().all(|v| *v == Some(6)));

    snapshot_json(
        "status_verify_json",
        &p.run(&["status", "--verify", "--json"], 0),
    );
    snapshot_json("tenant_list_json", &p.run(&["tenant", "list", "--json"], 0));
    snapshot_text("tenant_list_text", &stdout(&p.run(&["tenant", "list"], 0)));

    let create = p.run(
        &[
            "tenant", "create", "t0002", "t0003", "--jobs", "1", "--json",
        ],
        1,
    );
    snapshot_json("tenant_create_with_an_existing_id_json", &create);
    let drop = p.run(
        &["tenant", "drop", "t0003", "--yes", "--jobs", "1", "--json"],
        0,
    );
    snapshot_json("tenant_drop_json", &drop);
    assert_eq!(p.tenant_state("t0003"), "dropped");

    let archive = p.run(
        &["tenant", "drop", "t0002", "--archive", "--yes", "--json"],
        0,
    );
    snapshot_json("tenant_drop_archive_json", &archive);
    let archived_as: String = p
        .db()
        .query_one(
            "SELECT archived_as FROM tenantctl.tenants WHERE id = 't0002'",
            &[],
        )
        .unwrap()
        .get(0);
    let v: serde_json::Value = serde_json::from_slice(&archive.stdout).unwrap();
    assert_eq!(v["tenants"][0]["archived_as"], archived_as.as_str());
    assert!(p.schema_exists(&archived_as));

    snapshot_json("audit_json", &p.run(&["audit", "--json"], 0));
    snapshot_text("audit_text", &stdout(&p.run(&["audit"], 0)));

    // Errors are documents too, with their own exit codes.
    snapshot_json(
        "error_usage_json",
        &p.run(&["migrate", "--tenant", "Not-An-Id", "--json"], 2),
    );
    snapshot_json(
        "error_unreachable_json",
        &p.run(
            &[
                "status",
                "--json",
                "--database-url",
                "postgres://nobody@127.0.0.1:1/nowhere?connect_timeout=2",
            ],
            6,
        ),
    );
}

/// The same documents over two clusters (two databases of the shared server).
#[test]
fn what_a_run_over_two_clusters_prints() {
    let p = Project::new("snap_clusters", 6);
    let second = p.two_clusters("snap_clusters_b");
    p.run(&["tenant", "create", "t0000", "--cluster", "a"], 0);
    p.run(&["tenant", "create", "t0001", "--cluster", "b"], 0);
    p.copy_migrations(7, 7);

    let run = p.run(&["migrate", "--all", "--json"], 0);
    snapshot_json("clusters_migrate_json", &run);
    snapshot_text("clusters_status_text", &stdout(&p.run(&["status"], 0)));
    snapshot_json("clusters_status_json", &p.run(&["status", "--json"], 0));
    assert_eq!(history_counts_at(&second)[0].3, Some(7));
}
