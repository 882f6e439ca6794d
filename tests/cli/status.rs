use crate::support::*;
use predicates::prelude::*;

#[test]
fn status_reports_versions_and_pending() {
    let p = Project::new("status_basic", 6);
    p.create_tenants(5);
    p.copy_migrations(7, 8);
    p.cmd()
        .args(["migrate", "--tenant", "t0000", "--tenant", "t0001"])
        .assert()
        .success();

    let out = p.cmd().args(["status", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["latest_version"], 8);
    let tenants = v["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 5);
    assert_eq!(tenants[0]["id"], "t0000");
    assert_eq!(tenants[0]["schema"], "tenant_t0000");
    assert_eq!(tenants[0]["version"], 8);
    assert_eq!(tenants[0]["pending"], 0);
    assert_eq!(tenants[4]["version"], 6);
    assert_eq!(tenants[4]["pending"], 2);
    // The registry agrees with each schema's own history.
    for t in tenants {
        let schema = t["schema"].as_str().unwrap();
        assert_eq!(
            p.history(schema).last().copied(),
            t["version"].as_i64().map(|v| v as i32)
        );
    }

    p.cmd().args(["status"]).assert().success().stdout(
        predicate::str::contains("latest V8__seed_roles")
            .and(predicate::str::contains(
                "5 registered: 2 up to date, 3 behind",
            ))
            .and(predicate::str::is_match(r"V8 \(latest\)\s+2\s+0").unwrap())
            .and(predicate::str::is_match(r"V6\s+3\s+2").unwrap())
            .and(predicate::str::contains("t0002 (V6)")),
    );
    p.cmd()
        .args(["status", "--tenant", "t0003"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"t0003\s+tenant_t0003\s+V6\s+2").unwrap());
}

#[test]
fn status_on_an_empty_database_changes_nothing() {
    let p = Project::new("status_empty", 8);
    let before = p.fingerprint();
    p.cmd()
        .args(["status"])
        .assert()
        .success()
        .stdout(predicate::str::contains("none registered"));
    let out = p.cmd().args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["latest_version"], 8);
    assert_eq!(v["tenants"].as_array().unwrap().len(), 0);
    p.cmd().args(["tenant", "list"]).assert().success();
    assert_eq!(before, p.fingerprint(), "read-only commands create nothing");
}
