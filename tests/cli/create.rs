use crate::support::*;
use predicates::prelude::*;

#[test]
fn create_makes_schema_tables_history_and_registry() {
    let p = Project::new("create_basic", 8);
    p.cmd()
        .args(["tenant", "create", "acme", "globex"])
        .assert()
        .success()
        .stdout(predicate::str::contains("2 created"));
    let mut db = p.db();
    for schema in ["tenant_acme", "tenant_globex"] {
        let tables: i64 = db
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name IN ('users','projects','tasks','roles','refinery_schema_history')",
                &[&schema],
            )
            .unwrap()
            .get(0);
        assert_eq!(tables, 5, "{schema}");
        assert_eq!(p.history(schema), (1..=8).collect::<Vec<_>>());
        let roles: i64 = db
            .query_one(&format!("SELECT count(*) FROM {schema}.roles"), &[])
            .unwrap()
            .get(0);
        assert_eq!(roles, 3, "the data migration ran once in {schema}");
    }
    let versions = p.versions();
    assert_eq!(versions.get("acme"), Some(&Some(8)));
    assert_eq!(versions.get("globex"), Some(&Some(8)));
    // The trigger function from V6 (dollar-quoted plpgsql) works.
    db.batch_execute(
        "INSERT INTO tenant_acme.users (email, full_name) VALUES ('a@x', 'A');
         INSERT INTO tenant_acme.projects (owner_id, name) VALUES (1, 'p');
         INSERT INTO tenant_acme.tasks (project_id, title, updated_at) VALUES (1, 't', '2000-01-01');
         UPDATE tenant_acme.tasks SET title = 'u';",
    )
    .unwrap();
    let touched: bool = db
        .query_one(
            "SELECT updated_at > '2000-01-02' FROM tenant_acme.tasks",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(touched);
    // Nothing leaked into public.
    let public: i64 = db
        .query_one("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'", &[])
        .unwrap()
        .get(0);
    assert_eq!(public, 0);
}

#[test]
fn existing_tenant_is_an_error_unless_if_not_exists() {
    let p = Project::new("create_existing", 3);
    p.cmd()
        .args(["tenant", "create", "acme"])
        .assert()
        .success();
    let out = p.run(&["tenant", "create", "acme", "beta"], 1);
    let text = stdout(&out);
    // Said once, with where it is and what to do; counts that do not contradict it.
    assert!(
        text.contains(
            "  acme (schema tenant_acme): already registered, at V3 — nothing changed; pass --if-not-exists to skip existing tenants\n"
        ),
        "{text}"
    );
    assert!(text.contains(": 1 created, 1 failed\n"), "{text}");
    assert_eq!(text.matches("already registered").count(), 1, "{text}");
    let v = p.json(&["tenant", "create", "acme", "--json"], 1);
    let acme = &v["tenants"][0];
    assert_eq!(acme["result"], "failed");
    assert_eq!(acme["failure"]["kind"], "already_exists");
    assert_eq!(acme["failure"]["version"], 3);
    // The other tenant was still created; acme untouched; the ledger says why.
    assert_eq!(p.versions().len(), 2);
    let (state, error): (String, String) = p
        .db()
        .query_one(
            "SELECT state, error FROM tenantctl.run_schemas WHERE tenant_id = 'acme' AND run_id = (SELECT max(id) FROM tenantctl.runs)",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(state, "failed");
    assert!(error.contains("already registered"), "{error}");
    p.cmd()
        .args(["tenant", "create", "acme", "gamma", "--if-not-exists"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("1 created").and(predicate::str::contains(
                "1 already registered (--if-not-exists)",
            )),
        );
    assert_eq!(p.versions().len(), 3);
}

#[test]
fn failed_create_leaves_nothing_behind() {
    let p = Project::new("create_fail", 3);
    p.add_migration(
        "V4__broken.sql",
        "CREATE TABLE ok_table (id int);\nSELECT * FROM no_such_table;\n",
    );
    let out = p.run(&["tenant", "create", "acme"], 1);
    let text = stdout(&out);
    assert!(text.contains("V4__broken failed at line 2"), "{text}");
    assert!(
        text.contains("relation \"no_such_table\" does not exist"),
        "{text}"
    );
    let mut db = p.db();
    let schemas: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "no half-made schema");
    assert!(p.versions().is_empty(), "no registry row");
    let (state, err): (String, Option<String>) = db
        .query_one("SELECT state, error FROM tenantctl.run_schemas", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(state, "failed");
    assert!(err.unwrap().contains("no_such_table"));
}

#[test]
fn unregistered_schema_with_that_name_is_refused() {
    let p = Project::new("create_schema_exists", 2);
    p.db()
        .batch_execute("CREATE SCHEMA tenant_acme; CREATE TABLE tenant_acme.keep (x int)")
        .unwrap();
    p.cmd()
        .args(["tenant", "create", "acme"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "schema exists but is not a registered tenant",
        ));
    assert!(p.versions().is_empty());
    let keep: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'tenant_acme'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(keep, 1, "the existing schema is untouched");
}

#[test]
fn create_from_file_and_stdin_in_parallel() {
    let p = Project::new("create_file", 8);
    let ids: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    let file = p.id_file(&ids);
    p.cmd()
        .args(["tenant", "create", "--jobs", "4", "--from-file"])
        .arg(&file)
        .assert()
        .success();
    p.cmd()
        .args(["tenant", "create", "--from-file", "-"])
        .write_stdin("# new signups\nd1\n\nd2\n")
        .assert()
        .success();
    let versions = p.versions();
    assert_eq!(versions.len(), 42);
    assert!(versions.values().all(|v| *v == Some(8)));
    let out = p.cmd().args(["tenant", "list", "--json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = &list["tenants"];
    assert_eq!(list.as_array().unwrap().len(), 42);
    assert_eq!(list[0]["id"], "c0");
    assert_eq!(list[0]["schema"], "tenant_c0");
    assert_eq!(list[0]["version"], 8);
}
