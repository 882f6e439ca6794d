use crate::support::*;
use predicates::prelude::*;

#[test]
fn bad_tenant_ids_are_refused_before_any_sql() {
    let p = Project::new("bad_ids", 8);
    p.cmd()
        .args(["tenant", "create", "good"])
        .assert()
        .success();
    let before = p.fingerprint();
    let long = "a".repeat(57);
    for bad in [
        "Acme",
        "1acme",
        "a;drop schema public",
        "a\"b",
        "a'b",
        "a--b",
        "a$$b",
        "a b",
        "é",
        "",
        &long,
        "_x",
    ] {
        p.cmd()
            .args(["tenant", "create", "fine", bad])
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains("invalid tenant id")
                    .and(predicate::str::contains("nothing was changed")),
            );
    }
    p.cmd()
        .args(["tenant", "create", "dup", "dup"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("given more than once"));
    // With an empty prefix, reserved schema names are refused too.
    p.write_config("[tenants]\nschema_prefix = \"\"");
    for reserved in ["public", "pg_catalog", "information_schema", "tenantctl"] {
        p.cmd()
            .args(["tenant", "create", reserved])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("is reserved"));
    }
    assert_eq!(before, p.fingerprint(), "database unchanged");
}

#[test]
fn bad_configs_name_file_key_and_fix() {
    let p = Project::new("bad_config", 2);
    let before = p.fingerprint();
    let cases: &[(&str, &[&str])] = &[
        (
            "[run]\njobs = 8\nspeed = 3",
            &["tenants.toml", "speed", "unknown field"],
        ),
        ("[run]\njobs = \"many\"", &["tenants.toml", "jobs"]),
        (
            "[run]\njobs = 0",
            &["tenants.toml", "line", "run.jobs", "1 to 512"],
        ),
        (
            "[run]\nlock_timeout = \"forever\"",
            &["run.lock_timeout", "\"5s\""],
        ),
        (
            "[tenants]\nschema_prefix = \"Tenant-\"",
            &["tenants.schema_prefix", "lowercase"],
        ),
        (
            "[database]\ncontrol_schema = \"pg_ctl\"",
            &["control_schema"],
        ),
    ];
    for (extra, expect) in cases {
        // [database] appears once: put extra keys in their own table after it.
        let text = if extra.starts_with("[database]") {
            extra.replace("[database]", "[database]\nurl = \"${TEST_DB_URL}\"")
        } else {
            format!("[database]\nurl = \"${{TEST_DB_URL}}\"\n{extra}")
        };
        std::fs::write(p.config_path(), text).unwrap();
        let out = p.cmd().args(["tenant", "create", "acme"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra}: {}", stderr(&out));
        let err = stderr(&out);
        for e in *expect {
            assert!(err.contains(e), "{extra}: expected {e:?} in {err}");
        }
    }
    // Unset variable without default.
    std::fs::write(
        p.config_path(),
        "[database]\nurl = \"${TENANTCTL_TEST_UNSET_VAR}\"\n",
    )
    .unwrap();
    p.cmd().args(["status"]).assert().code(2).stderr(
        predicate::str::contains("TENANTCTL_TEST_UNSET_VAR is not set")
            .and(predicate::str::contains("database.url")),
    );
    // Missing config file.
    p.cmd()
        .args(["--config", "nope.toml", "status"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nope.toml not found"));
    assert_eq!(before, p.fingerprint());
}

#[test]
fn bad_migration_sets_are_refused_before_any_database_work() {
    let p = Project::new("bad_migrations", 3);
    p.cmd()
        .args(["tenant", "create", "acme"])
        .assert()
        .success();
    let before = p.fingerprint();
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "V4_missing_underscore.sql",
            b"select 1;",
            "V4_missing_underscore.sql",
        ),
        ("v4__lowercase.sql", b"select 1;", "v4__lowercase.sql"),
        (
            "V2__duplicate.sql",
            b"select 1;",
            "duplicate migration version 2",
        ),
        ("V4__empty.sql", b"  \n", "is empty"),
        ("V4__binary.sql", &[0xff, 0xfe, 0x00], "not valid UTF-8"),
        ("sub/V4__nested.sql", b"select 1;", "subfolder"),
    ];
    for (name, content, expect) in cases {
        let path = p.migrations_dir().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        for args in [&["migrate", "--all"][..], &["tenant", "create", "beta"][..]] {
            p.cmd()
                .args(args)
                .assert()
                .code(2)
                .stderr(predicate::str::contains(*expect));
        }
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(before, p.fingerprint(), "database unchanged");
}

#[test]
fn passwords_never_appear_in_output() {
    let p = Project::new("no_password", 2);
    let secret = "Sup3r-s3cret-pw";
    let port = server().port.max(1);
    for url in [
        format!("postgres://nobody:{secret}@127.0.0.1:{port}/nodb"),
        format!("postgres://nobody:{secret}@127.0.0.1:1/nodb"),
        format!("postgres://nobody:{secret}@127.0.0.1:notaport/nodb"),
    ] {
        for args in [
            &["status"][..],
            &["migrate", "--all", "--json"][..],
            &["tenant", "create", "x"][..],
        ] {
            let out = p
                .cmd()
                .arg("--database-url")
                .arg(&url)
                .args(args)
                .output()
                .unwrap();
            assert!(!out.status.success(), "{url} {args:?}");
            let all = format!("{}{}", stdout(&out), stderr(&out));
            assert!(!all.contains(secret), "password leaked for {args:?}: {all}");
            assert!(all.contains("***"), "the URL is shown redacted: {all}");
        }
    }
}
