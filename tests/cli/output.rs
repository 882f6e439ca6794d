//! What tenantctl says must be true: the right file and line, advice that does not make
//! things worse, counts that agree with the ledger, errors as JSON with their own exit codes,
//! grouped failures, a progress bar that never lies, and no crash on a closed pipe.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;

fn tenants_json(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["tenants"].as_array().unwrap()
}

/// (failed_migration, line, sqlstate) of a tenant's row in the newest run.
fn ledger_failure(p: &Project, id: &str) -> (Option<String>, Option<i32>, Option<String>) {
    let r = p
        .db()
        .query_one(
            "SELECT failed_migration, line, sqlstate FROM tenantctl.run_schemas \
             WHERE tenant_id = $1 AND run_id = (SELECT max(id) FROM tenantctl.runs)",
            &[&id],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn failures_are_blamed_on_their_own_file_and_line() {
    let p = Project::new("blame", 8);
    p.create_tenants(3);
    p.add_migration(
        "V9__seed_counter.sql",
        "CREATE TABLE counter (n int);\nINSERT INTO counter VALUES (1);\n",
    );
    // A parse error in the second of two pending files: PostgreSQL parses a file before it
    // runs any of it, so nothing of either applies, and the blame is V10's, line 3.
    p.add_migration(
        "V10__add_counter.sql",
        "-- widen the counter\nALTER TABLE counter\n  ADD COLUMN m int NOT NUL;\n",
    );
    let out = p.run(&["migrate", "--all"], 1);
    let text = stdout(&out);
    assert!(
        text.contains("V10__add_counter failed at line 3: ERROR: syntax error at or near \"NUL\""),
        "{text}"
    );
    assert!(!text.contains("V9__seed_counter failed"), "{text}");
    // Applied nowhere, so the advice is to fix the file.
    assert!(text.contains("fix the migration and re-run"), "{text}");
    assert!(p.versions().values().all(|v| *v == Some(8)));
    assert_eq!(p.history("tenant_t0000"), (1..=8).collect::<Vec<_>>());
    assert!(
        !p.schema_has_table("tenant_t0000", "counter"),
        "V9 rolled back too"
    );
    assert_eq!(
        ledger_failure(&p, "t0001"),
        (
            Some("V10__add_counter".into()),
            Some(3),
            Some("42601".into())
        )
    );
    let v = p.json(&["migrate", "--all", "--json"], 1);
    let f = &tenants_json(&v)[0]["failure"];
    assert_eq!(f["migration"], "V10__add_counter");
    assert_eq!(f["line"], 3);
    assert_eq!(f["sqlstate"], "42601");
    assert_eq!(f["version"], 8);

    // An error raised while a statement runs has no position: the blame is the line where
    // that statement starts (the second statement here, at line 4).
    p.add_migration(
        "V10__add_counter.sql",
        "ALTER TABLE counter ADD COLUMN m int;\n\n-- one over (n - 1)\nUPDATE counter\n   SET m = 1 / (n - 1);\n",
    );
    let text = stdout(&p.run(&["migrate", "--all"], 1));
    assert!(
        text.contains(
            "V10__add_counter failed at line 4: ERROR: division by zero (SQLSTATE 22012)"
        ),
        "{text}"
    );
    assert_eq!(
        ledger_failure(&p, "t0002"),
        (
            Some("V10__add_counter".into()),
            Some(4),
            Some("22012".into())
        )
    );

    // Inside a DO block: the line of the DO statement.
    p.add_migration(
        "V10__add_counter.sql",
        "SELECT 1;\nDO $$\nBEGIN\n  RAISE EXCEPTION 'boom';\nEND $$;\n",
    );
    let v = p.json(&["migrate", "--all", "--json"], 1);
    let f = &tenants_json(&v)[0]["failure"];
    assert_eq!(
        (f["line"].as_i64(), f["sqlstate"].as_str()),
        (Some(2), Some("P0001")),
        "{f}"
    );
}

#[test]
fn advice_names_where_a_failed_migration_is_applied_and_repair_accepts_an_edit() {
    let p = Project::new("advice", 8);
    p.create_tenants(10);
    for t in ["t0003", "t0007"] {
        p.db()
            .batch_execute(&format!("CREATE TABLE tenant_{t}.invoices (legacy int)"))
            .unwrap();
    }
    p.add_migration("V9__invoices.sql", "CREATE TABLE invoices (id int);\n");
    let text = stdout(&p.run(&["migrate", "--all"], 1));
    // Editing V9 now would make 8 tenants drift: the advice says so, and what to do instead.
    assert!(
        text.contains("V9__invoices is already applied on 8 other tenant(s): do not edit it"),
        "{text}"
    );
    assert!(text.contains("put the fix in a new migration"), "{text}");
    assert!(!text.contains("fix the migration and re-run"), "{text}");
    let error: String = p
        .db()
        .query_one(
            "SELECT error FROM tenantctl.run_schemas WHERE tenant_id = 't0003' AND run_id = (SELECT max(id) FROM tenantctl.runs)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        error.contains("already applied on 8 other tenant(s)"),
        "{error}"
    );

    // The file is edited anyway, on purpose (a comment): the two blocked tenants take it,
    // and the 8 that applied the old text now disagree with it.
    for t in ["t0003", "t0007"] {
        p.db()
            .batch_execute(&format!("DROP TABLE tenant_{t}.invoices"))
            .unwrap();
    }
    p.add_migration(
        "V9__invoices.sql",
        "-- invoices, one row per bill\nCREATE TABLE invoices (id int);\n",
    );
    // The 8 that applied the old text now disagree with the file: nothing runs until that is
    // settled, not even on the two that have V9 to do.
    let out = p.run(&["migrate", "--all"], 2);
    assert!(
        stderr(&out).contains("V9__invoices.sql changed after 8 tenant(s) applied it"),
        "{}",
        stderr(&out)
    );
    assert_eq!(p.versions()["t0003"], Some(8));

    // repair shows what it will change, changes nothing without --yes off a terminal...
    let before = p.fingerprint();
    let plan = p.json(
        &["repair", "--accept", "9", "--all", "--dry-run", "--json"],
        0,
    );
    assert_eq!(plan["counts"]["would_change"], 8);
    assert_eq!(plan["counts"]["unchanged"], 2);
    let out = p.run(&["repair", "--accept", "9", "--all"], 2);
    assert!(
        stderr(&out).contains("8 tenant(s) applied it with another checksum")
            && stderr(&out).contains("without --yes"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, p.fingerprint(), "nothing was changed");

    // ...and with --yes records the file as it is now, where it is applied, audited.
    let text = stdout(&p.run(
        &[
            "repair", "--accept", "9", "--all", "--yes", "--actor", "alice",
        ],
        0,
    ));
    assert!(text.contains("8 repaired, 0 failed"), "{text}");
    let checksums: i64 = p
        .db()
        .query_one(
            &format!(
                "SELECT count(DISTINCT checksum) FROM ({}) h",
                (0..10)
                    .map(|i| format!(
                        "SELECT checksum FROM tenant_t{i:04}.refinery_schema_history WHERE version = 9"
                    ))
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ")
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        checksums, 1,
        "the tenants that have V9 record the file as it is now"
    );
    p.json(&["status", "--verify", "--json"], 0);
    let audit = p.json(&["audit", "--json"], 0);
    let last = audit["runs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["command"], "repair");
    assert_eq!(last["actor"], "alice");
    assert_eq!(last["counts"]["done"], 8);
    assert_eq!(last["counts"]["unchanged"], 0);
    // Now the two that were blocked take V9 as it is.
    p.run(&["migrate", "--all"], 0);
    p.assert_converged(9);
    let text = stdout(&p.run(&["repair", "--accept", "9", "--all", "--yes"], 0));
    assert!(
        text.contains("0 repaired, 0 failed, 10 already accepted"),
        "{text}"
    );
    let out = p.run(&["repair", "--accept", "12", "--all", "--yes"], 2);
    assert!(
        stderr(&out).contains("there is no migration V12"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn errors_are_json_documents_with_their_own_exit_codes() {
    let p = Project::new("json_errors", 8);
    p.create_tenants(2);
    let kind = |v: &serde_json::Value| v["error"]["kind"].as_str().unwrap().to_string();

    let v = p.json(&["--config", "nope.toml", "status", "--json"], 2);
    assert_eq!(kind(&v), "config");
    let v = p.json(&["migrate", "--tenant", "Bad-Id", "--json"], 2);
    assert_eq!(kind(&v), "usage");
    assert_eq!(v["command"], "migrate");
    let v = p.json(&["migrate", "--all", "--no-such-flag", "--json"], 2);
    assert_eq!(kind(&v), "usage");

    // Busy: another run holds the fleet lock.
    let holder = p.hold_fleet_lock();
    let runs_before = p.last_run_state().0;
    let v = p.json(&["migrate", "--all", "--json"], 3);
    assert_eq!(kind(&v), "busy");
    assert_eq!(p.last_run_state().0, runs_before, "no run was opened");
    drop(holder);

    // Unreachable: its own exit code, not 1.
    let v = p.json(
        &[
            "status",
            "--json",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/nowhere?connect_timeout=3",
        ],
        6,
    );
    assert_eq!(kind(&v), "unreachable");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot connect"));

    // Failed as a whole (1): a role that may connect but not read the control schema.
    let role = format!("norights_{}", std::process::id());
    p.db()
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .unwrap();
    let url = p
        .url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(
        url, p.url,
        "the test URL names the postgres user: {}",
        p.url
    );
    let v = p.json(&["status", "--json", "--database-url", &url], 1);
    assert_eq!(kind(&v), "failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{v}"
    );
}

#[test]
fn counts_agree_with_the_ledger_after_a_resume_and_json_lists_every_failure() {
    let p = Project::new("counts_agree", 8);
    p.create_tenants(60);
    // 45 tenants fail, each in words of its own (no schema name in them); all are slow
    // enough to interrupt.
    p.add_migration(
        "V9__checked.sql",
        "SELECT pg_sleep(0.03);\nDO $$\nBEGIN\n  IF current_schema() < 'tenant_t0045' THEN\n    RAISE EXCEPTION 'bad data %', substr(md5(current_schema()), 1, 8);\n  END IF;\nEND $$;\n",
    );
    let child = p.spawn(&["migrate", "--all", "--jobs", "2"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.versions().values().filter(|v| **v == Some(9)).count() < 3 {
        assert!(Instant::now() < deadline, "no tenant got to V9");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), "INT");
    let out = wait_with_deadline(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));

    // The resumed run reports what the ledger holds for the run, earlier work included.
    let out = p.run(&["migrate", "--all", "--jobs", "2"], 1);
    let text = stdout(&out);
    assert!(
        text.contains(": 15 migrated, 45 failed (resumed a run that had done"),
        "{text}"
    );
    let audit = p.json(&["audit", "--json"], 0);
    let run = audit["runs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(run["counts"]["done"], 15);
    assert_eq!(run["counts"]["failed"], 45);
    assert_eq!(run["counts"]["unchanged"], 0);
    let (failed_rows, done_rows): (i64, i64) = {
        let r = p
            .db()
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'failed'), count(*) FILTER (WHERE state = 'succeeded') \
                 FROM tenantctl.run_schemas WHERE run_id = $1",
                &[&run["run_id"].as_i64().unwrap()],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((failed_rows, done_rows), (45, 15));
    assert_eq!(p.versions().values().filter(|v| **v == Some(9)).count(), 15);

    // Text caps the failures and says where the rest are; JSON has every one.
    assert!(
        text.contains("failed: 45 tenant(s), 45 cause(s):"),
        "{text}"
    );
    assert!(
        text.contains("… and 5 more failed tenant(s) not shown here: --json lists every one"),
        "{text}"
    );
    let v = p.json(&["status", "--json"], 0);
    let change = &v["clusters"][0]["last_change"];
    assert_eq!(change["failures"].as_array().unwrap().len(), 45);
    assert_eq!(change["counts"], run["counts"]);

    // A no-op run since does not hide the last change and its failures.
    let noop = stdout(&p.run(&["migrate", "--tenant", "t0059"], 0));
    assert!(
        noop.contains("0 migrated, 0 failed, 1 already current"),
        "{noop}"
    );
    let status = stdout(&p.run(&["status"], 0));
    assert!(status.contains("last run:"), "{status}");
    assert!(status.contains("last change:"), "{status}");
    assert!(status.contains("15 migrated, 45 failed of 60"), "{status}");
    assert!(status.contains("failed: 45 tenant(s)"), "{status}");
    let v = p.json(&["status", "--json"], 0);
    let c = &v["clusters"][0];
    assert_ne!(c["last_run"]["run_id"], c["last_change"]["run_id"]);
    assert_eq!(c["last_change"]["failures"].as_array().unwrap().len(), 45);
}

#[test]
fn identical_failures_are_grouped_live_and_in_the_summary() {
    let p = Project::new("grouped", 8);
    p.create_tenants(20);
    p.add_migration(
        "V9__broken.sql",
        "DO $$ BEGIN RAISE EXCEPTION 'no room in %', current_schema(); END $$;\n",
    );
    let out = p.run(&["migrate", "--all"], 1);
    let (text, live) = (stdout(&out), stderr(&out));
    assert_eq!(live.matches(": FAIL ").count(), 3, "{live}");
    assert_eq!(
        live.matches("more tenants fail the same way").count(),
        1,
        "{live}"
    );
    assert!(text.contains("failed: 20 tenant(s), 1 cause(s):"), "{text}");
    assert!(
        text.contains("  20 tenants: V9__broken failed at line 1: ERROR: no room in <schema>"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
    // The ledger and --json keep each tenant's own words.
    let v = p.json(&["migrate", "--all", "--json"], 1);
    assert_eq!(tenants_json(&v).len(), 20);
    for t in tenants_json(&v) {
        let schema = t["schema"].as_str().unwrap();
        assert!(
            t["failure"]["message"].as_str().unwrap().contains(schema),
            "{t}"
        );
    }
}

#[test]
fn drop_archive_says_where_the_data_went() {
    let p = Project::new("archive_name", 8);
    p.create_tenants(2);
    p.db()
        .batch_execute(
            "INSERT INTO tenant_t0000.users (email, full_name) VALUES ('a@example.com', 'A')",
        )
        .unwrap();
    let text = stdout(&p.run(&["tenant", "drop", "t0000", "--archive", "--yes"], 0));
    let at = text.find("data kept in schema ").expect(&text) + "data kept in schema ".len();
    let archived: String = text[at..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    assert!(archived.starts_with("tenant_t0000__arch_"), "{text}");
    let rows: i64 = p
        .db()
        .query_one(&format!("SELECT count(*) FROM {archived}.users"), &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the data is where the output says");
    let list = stdout(&p.run(&["tenant", "list"], 0));
    assert!(
        list.contains("ARCHIVED AS") && list.contains(&archived),
        "{list}"
    );
}

#[test]
fn a_closed_stdout_or_stderr_ends_the_command_quietly() {
    let p = Project::new("closed_pipe", 8);
    p.create_tenants(30);
    p.add_migration("V9__more.sql", "CREATE TABLE more (id int);\n");
    for args in [
        &["status", "--json"][..],
        &["status"],
        &["tenant", "list", "--json"],
        &["audit"],
        &["migrate", "--all", "--json"],
    ] {
        let mut child = p
            .std_cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command writes a byte.
        drop(child.stdout.take());
        let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("crashed"),
            "{args:?}: {err}"
        );
    }
    assert!(
        p.versions().values().all(|v| *v == Some(9)),
        "migrate did its work"
    );

    // The pipeline from the issue, literally.
    let bin = assert_cmd::cargo::cargo_bin("tenantctl");
    let out = p
        .std_cmd_raw("bash")
        .args([
            "-c",
            &format!(
                "'{}' status --json | head -c 50; echo; echo \"exit ${{PIPESTATUS[0]}}\"",
                bin.display()
            ),
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.starts_with("{\"format\":1,"), "{text}");
    assert!(
        text.trim_end().ends_with("exit 0"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

    // Progress to a closed stderr: the run still completes.
    p.add_migration("V10__again.sql", "CREATE TABLE again (id int);\n");
    let mut child = p
        .std_cmd()
        .args(["migrate", "--all"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(p.versions().values().all(|v| *v == Some(10)));
}

/// Every `pos/len` a progress bar drew in `screen` (a terminal's output).
fn bar_frames(screen: &str) -> Vec<(u64, u64)> {
    let mut frames = Vec::new();
    for (i, _) in screen.match_indices(" done (") {
        let before = &screen[..i];
        let Some(slash) = before.rfind('/') else {
            continue;
        };
        let len = &before[slash + 1..];
        let pos: String = before[..slash]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if let (Ok(pos), Ok(len)) = (pos.parse(), len.parse()) {
            frames.push((pos, len));
        }
    }
    frames
}

#[test]
fn the_progress_bar_never_runs_past_its_length_and_is_not_drawn_for_nothing() {
    let p = Project::new("bar", 8);
    p.create_tenants(12);
    p.add_migration(
        "V9__slow.sql",
        "SELECT pg_sleep(0.05);\nCREATE TABLE slow (id int);\n",
    );
    p.db()
        .batch_execute("CREATE TABLE tenant_t0004.slow (id int)")
        .unwrap();
    let on_a_terminal = |args: &str| -> String {
        let bin = assert_cmd::cargo::cargo_bin("tenantctl");
        let out = p
            .std_cmd_raw("script")
            .args(["-qec", &format!("'{}' {args}", bin.display()), "/dev/null"])
            .env("TERM", "xterm")
            .env("COLUMNS", "120")
            .output()
            .unwrap();
        stdout(&out)
    };
    let screen = on_a_terminal("migrate --all --jobs 2");
    let frames = bar_frames(&screen);
    assert!(!frames.is_empty(), "no bar drawn:\n{screen}");
    assert!(
        frames.iter().all(|(pos, len)| pos <= len && *len == 12),
        "{frames:?}"
    );
    assert!(screen.contains("11 migrated, 1 failed"), "{screen}");
    // Nothing to do: no bar at all (never a full bar at 0/0).
    p.db()
        .batch_execute("DROP TABLE tenant_t0004.slow")
        .unwrap();
    p.run(&["migrate", "--all"], 0);
    let screen = on_a_terminal("migrate --all");
    assert!(bar_frames(&screen).is_empty(), "{screen}");
    assert!(!screen.contains("0/0"), "{screen}");
    assert!(
        screen.contains("0 migrated, 0 failed, 12 already current"),
        "{screen}"
    );
    // A refused tenant is not a step of the bar.
    let screen = on_a_terminal("tenant create t0000 newbie");
    assert!(
        bar_frames(&screen)
            .iter()
            .all(|(pos, len)| pos <= len && *len == 1),
        "{screen}"
    );
    // A tenant past --slow-after: its line above the bar, and a mark on the bar.
    p.add_migration(
        "V10__one_slow.sql",
        "SELECT pg_sleep(CASE WHEN current_schema() = 'tenant_t0001' THEN 2.5 ELSE 0 END);\n",
    );
    let screen = on_a_terminal("migrate --all --slow-after 1s");
    assert!(
        screen.contains("slow: tenant t0001") && screen.contains("1 slow)"),
        "{screen}"
    );
}
