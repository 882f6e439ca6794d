//! The commands that need no database (init, migration new/list/check, completions, man),
//! selection from files and comma lists, help, and `audit --since` in its forms.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// A folder whose config points at an unroutable address through a variable that is not
/// set: a command that resolved the URL, or tried to connect, would fail or hang.
fn offline_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tenants.toml"),
        "[database]\nurl = \"${TENANTCTL_TEST_UNSET_URL}\"\n[migrations]\ndir = \"migrations\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    dir
}

fn offline(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = assert_cmd::Command::cargo_bin("tenantctl").unwrap();
    c.current_dir(dir);
    for var in CLEARED_ENV {
        c.env_remove(var);
    }
    c.env_remove("TENANTCTL_TEST_UNSET_URL")
        .env(
            "DATABASE_URL",
            "postgres://nobody@10.255.255.1:5432/nowhere?connect_timeout=30",
        )
        .timeout(Duration::from_secs(20));
    let t0 = Instant::now();
    let out = c.args(args).output().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "{args:?} took {:?}",
        t0.elapsed()
    );
    out
}

#[test]
fn init_and_migration_files_need_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = offline(dir.path(), &["init", "svc"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let svc = dir.path().join("svc");
    let config = std::fs::read_to_string(svc.join("tenants.toml")).unwrap();
    assert!(
        config.contains("url = \"${DATABASE_URL}\"") && config.contains("# "),
        "{config}"
    );
    assert!(svc.join("migrations").is_dir());
    // Never over an existing config without --force.
    let out = offline(dir.path(), &["init", "svc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("exists; nothing was changed (--force overwrites it)"));
    assert_eq!(
        offline(dir.path(), &["init", "svc", "--force"])
            .status
            .code(),
        Some(0)
    );

    let p = offline_project();
    let d = p.path();
    let out = offline(d, &["migration", "new", "Create Users", "--down"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "migrations/V1__create_users.sql\nmigrations/V1__create_users.down.sql\n"
    );
    std::fs::write(
        d.join("migrations/V1__create_users.sql"),
        "CREATE TABLE users (id int);\n",
    )
    .unwrap();
    let out = offline(d, &["migration", "new", "index-users", "--no-transaction"]);
    assert_eq!(stdout(&out), "migrations/V2__index_users.sql\n");
    let text = std::fs::read_to_string(d.join("migrations/V2__index_users.sql")).unwrap();
    assert!(text.starts_with("-- tenantctl:no-transaction\n"), "{text}");
    let out = offline(d, &["migration", "new", "bad/name"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("'/' is not allowed"),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("migrations/V3__bad").exists());

    // list, text and JSON.
    let out = offline(d, &["migration", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("V1       create_users") && stdout(&out).contains("2 migration(s)"),
        "{}",
        stdout(&out)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&offline(d, &["migration", "list", "--json"]).stdout).unwrap();
    assert_eq!(v["format"], 1);
    assert_eq!(v["migrations"][0]["down"], true);
    assert_eq!(v["migrations"][1]["no_transaction"], true);

    // Two branches both made V3: check names both files.
    std::fs::write(
        d.join("migrations/V3__from_alice.sql"),
        "CREATE TABLE a (id int);\n",
    )
    .unwrap();
    std::fs::write(
        d.join("migrations/V3__from_bob.sql"),
        "CREATE TABLE b (id int);\n",
    )
    .unwrap();
    let out = offline(d, &["migration", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("duplicate migration version 3")
            && stderr(&out).contains("V3__from_alice.sql")
            && stderr(&out).contains("V3__from_bob.sql"),
        "{}",
        stderr(&out)
    );
    // No config at all: migration commands use ./migrations.
    let bare = tempfile::tempdir().unwrap();
    std::fs::create_dir(bare.path().join("migrations")).unwrap();
    let out = offline(bare.path(), &["migration", "new", "first"]);
    assert_eq!(
        stdout(&out),
        "migrations/V1__first.sql\n",
        "{}",
        stderr(&out)
    );
    // Any command that needs the config says how to get one.
    let out = offline(bare.path(), &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`tenantctl init` creates"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn migration_check_over_a_corpus_of_risky_and_safe_migrations() {
    let p = offline_project();
    let d = p.path().join("migrations");
    let corpus = [
        ("V1__create.sql", "CREATE TABLE users (id bigint PRIMARY KEY, email text);\nCREATE INDEX users_email ON users (email);\nALTER TABLE users ADD COLUMN name text NOT NULL;\n"),
        ("V1__create.down.sql", "DROP TABLE users;\n"),
        ("V2__index.sql", "-- tenantctl:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS users_name ON users (name);\n"),
        ("V3__risky.sql", "CREATE INDEX users_lower ON users (lower(email));\nALTER TABLE users ADD COLUMN plan text NOT NULL;\nALTER TABLE users ALTER COLUMN id TYPE numeric;\n-- tenantctl:allow drop-column\nALTER TABLE users DROP COLUMN legacy;\nALTER TABLE users DROP COLUMN other;\nALTER TABLE users RENAME COLUMN email TO mail;\nDROP TABLE sessions;\n"),
        ("V4__escapes.sql", "COMMIT;\nINSERT INTO tenant_other.audit SELECT 1;\nSET search_path TO public;\nCREATE INDEX CONCURRENTLY i ON users (id);\n"),
        ("V5__comments.sql", "-- DROP TABLE users;\nSELECT 'ALTER TABLE users RENAME TO x';\nDO $$ BEGIN PERFORM 1; END $$;\n"),
        ("V6__only_comments.sql", "-- TODO\n"),
        ("V70__later.sql", "DROP INDEX IF EXISTS users_email;\n"),
        ("V8__eight.sql", "ALTER TABLE users ALTER COLUMN name SET NOT NULL;\n"),
    ];
    for (file, sql) in corpus {
        std::fs::write(d.join(file), sql).unwrap();
    }
    let out = offline(p.path(), &["migration", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    insta::assert_snapshot!("migration_check_corpus", stdout(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&offline(p.path(), &["migration", "check", "--json"]).stdout)
            .unwrap();
    assert_eq!(v["exit_code"], 1);
    let findings = v["findings"].as_array().unwrap();
    let errors = findings.iter().filter(|f| f["level"] == "error").count();
    assert_eq!(v["counts"]["errors"], errors as i64);
    let rules: Vec<&str> = findings
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    // One DROP COLUMN of two is allowed by its comment; nothing in V5 (strings, comments).
    assert_eq!(
        rules.iter().filter(|r| **r == "drop-column").count(),
        1,
        "{rules:?}"
    );
    assert!(
        findings
            .iter()
            .filter(|f| f["file"].as_str().unwrap().contains("V5__"))
            .all(|f| f["rule"] == "missing-down"),
        "{v}"
    );
    // The safe files alone (a new table may be indexed and constrained at will): exit 0.
    for (file, _) in corpus.iter().skip(3) {
        std::fs::remove_file(d.join(file)).unwrap();
    }
    let out = offline(p.path(), &["migration", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("0 error(s), 1 warning(s)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn completions_load_and_the_man_page_renders() {
    let p = offline_project();
    let out = offline(p.path(), &["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = p.path().join("tenantctl.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p tenantctl",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(stdout(&loaded).contains("tenantctl"));
    for shell in ["zsh", "fish", "powershell"] {
        let out = offline(p.path(), &["completions", shell]);
        assert!(
            out.status.success() && stdout(&out).contains("migrate"),
            "{shell}"
        );
    }
    let out = offline(p.path(), &["man"]);
    assert_eq!(out.status.code(), Some(0));
    let roff = stdout(&out);
    assert!(roff.contains(".TH tenantctl"), "{roff}");
    let page = p.path().join("tenantctl.1");
    std::fs::write(&page, roff).unwrap();
    if Command::new("man").arg("--version").output().is_ok() {
        let rendered = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(&page)
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        assert!(
            stdout(&rendered).contains("migrate"),
            "{}",
            stdout(&rendered)
        );
    }
}

#[test]
fn tenants_from_comma_lists_and_files_and_audit_since_forms() {
    let p = Project::new("selection", 7);
    p.create_tenants(6);
    p.copy_migrations(8, 8);
    let v = p.json(&["migrate", "--tenant", "t0000,t0001", "--json"], 0);
    assert_eq!(v["counts"]["done"], 2);
    std::fs::write(p.path().join("some.txt"), "# a comment\nt0002\n\nt0003\n").unwrap();
    let v = p.json(&["migrate", "--from-file", "some.txt", "--json"], 0);
    assert_eq!(v["counts"]["done"], 2);
    let out = p
        .cmd()
        .args(["status", "--from-file", "-", "--json"])
        .write_stdin("t0004\n")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tenants"].as_array().unwrap().len(), 1);
    std::fs::write(p.path().join("empty.txt"), "# nothing\n").unwrap();
    let out = p.run(&["migrate", "--from-file", "empty.txt"], 2);
    assert!(
        stderr(&out).contains("lists no tenant id"),
        "{}",
        stderr(&out)
    );
    let v = p.json(
        &["rollback", "--to", "7", "--tenant", "t0000,t0002", "--json"],
        0,
    );
    assert_eq!(v["counts"]["done"], 2);
    p.run(&["tenant", "drop", "--from-file", "some.txt", "--yes"], 0);
    assert_eq!(p.tenant_state("t0003"), "dropped");

    for since in [
        "today",
        "yesterday",
        "2020-01-01",
        "2020-01-01T00:00:00Z",
        "1h",
    ] {
        let v = p.json(&["audit", "--since", since, "--json"], 0);
        assert!(!v["runs"].as_array().unwrap().is_empty(), "{since}");
    }
    let out = p.run(&["audit", "--since", "2999-01-01"], 2);
    assert!(
        stderr(&out).contains("is in the future"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&["audit", "--since", "last tuesday"], 2);
    assert!(stderr(&out).contains("is not a time"), "{}", stderr(&out));

    // Global options stand apart in --help; tenant list offers no --actor.
    let help = stdout(&p.run(&["tenant", "list", "--help"], 0));
    assert!(
        help.contains("Global options:") && !help.contains("--actor"),
        "{help}"
    );
}
