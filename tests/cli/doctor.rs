//! `tenantctl doctor` against the real things it judges: a plain server with a stray
//! schema, a read-only standby, a role without CREATEROLE, a TLS-only server with a verified
//! certificate, and PgBouncer in transaction mode (with and without direct_url), where the
//! search_path leak is seen with two clients.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::external::{Bouncer, Pki};
use crate::support::*;

/// The verdict of `area.check` in a doctor document.
fn verdict<'a>(doc: &'a Value, name: &str) -> &'a str {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            format!(
                "{}.{}",
                c["area"].as_str().unwrap(),
                c["check"].as_str().unwrap()
            ) == name
        })
        .unwrap_or_else(|| panic!("no check {name} in {doc}"))["verdict"]
        .as_str()
        .unwrap()
}

fn doctor(p: &Project, url: Option<&str>, code: i32) -> Value {
    let mut args = vec!["doctor", "--json"];
    if let Some(url) = url {
        args.splice(0..0, ["--database-url", url]);
    }
    p.json(&args, code)
}

#[test]
fn a_healthy_server_passes_and_the_fleet_is_looked_at() {
    let p = Project::new("doctor_plain", 2);
    p.run(&["tenant", "create", "acme"], 0);
    let doc = doctor(&p, None, 0);
    for name in [
        "connection.version",
        "connection.primary",
        "connection.tls",
        "pooler.mode",
        "privileges.create",
        "limits.locks",
        "fleet.behind",
        "fleet.drift",
        "fleet.unregistered",
        "fleet.interrupted",
        "fleet.leftovers",
    ] {
        assert_eq!(verdict(&doc, name), "pass", "{name}: {doc}");
    }
    // The shared test server's free connections vary with the tests running beside this one.
    let connections = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "connections")
        .unwrap();
    assert!(
        connections["detail"]
            .as_str()
            .unwrap()
            .contains("a run takes 5 (jobs 4 + 1)"),
        "{connections}"
    );
    // A schema with the tenant prefix nobody registered, and a tenant behind the files.
    p.db().batch_execute("CREATE SCHEMA tenant_ghost").unwrap();
    p.add_migration("V3__more.sql", "CREATE TABLE more (id int);\n");
    let doc = doctor(&p, None, 0);
    assert_eq!(verdict(&doc, "fleet.unregistered"), "warn", "{doc}");
    assert_eq!(verdict(&doc, "fleet.behind"), "warn", "{doc}");
    // An archived copy of a dropped tenant is kept: said, with its name.
    p.run(&["tenant", "create", "gone"], 0);
    p.run(&["tenant", "drop", "gone", "--archive", "--yes"], 0);
    let doc = doctor(&p, None, 0);
    assert_eq!(verdict(&doc, "fleet.archived"), "warn", "{doc}");
    assert!(doc.to_string().contains("tenant_gone__arch_"), "{doc}");
    let text = stdout(&p.run(&["doctor"], 0));
    assert!(
        text.contains("tenant_ghost") && text.contains("fix: tenantctl migrate --all"),
        "{text}"
    );
}

#[test]
fn a_standby_fails_and_exits_1() {
    let primary = start_cluster(&[]);
    let standby = start_standby(&primary);
    let p = Project::on(&primary, "doctor_standby", 1);
    let db = p.url.rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres::Client::connect(&standby.admin_url(&db), postgres::NoTls).is_err() {
        assert!(
            Instant::now() < deadline,
            "the standby never got the database"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let doc = doctor(&p, Some(&standby.url(&db)), 1);
    assert_eq!(verdict(&doc, "connection.primary"), "fail", "{doc}");
    assert_eq!(doc["exit_code"], 1);
}

#[test]
fn a_role_without_createrole_fails_when_tenants_have_roles() {
    let p = Project::new("doctor_norole", 1);
    let db = p.url.rsplit('/').next().unwrap().to_string();
    let user = format!("{db}_plain");
    p.db()
        .batch_execute(&format!(
            "CREATE ROLE \"{user}\" LOGIN; GRANT CREATE ON DATABASE \"{db}\" TO \"{user}\""
        ))
        .unwrap();
    // The shared step creates a trusted extension (CREATE suffices) and an untrusted one.
    std::fs::create_dir_all(p.path().join("shared")).unwrap();
    std::fs::write(
        p.path().join("shared/V1__ext.sql"),
        "CREATE EXTENSION IF NOT EXISTS pg_trgm;\ncreate extension \"pg_stat_statements\";\n",
    )
    .unwrap();
    p.write_config(&format!(
        "shared_dir = \"shared\"\n[tenants]\nrole = \"{db}_{{id}}\"\n"
    ));
    let mut config: postgres::Config = p.url.parse().unwrap();
    config.user(&user);
    let url = p.url.replacen("postgres@", &format!("{user}@"), 1);
    assert!(url.contains(&user), "{url}");
    let doc = doctor(&p, Some(&url), 1);
    assert_eq!(verdict(&doc, "privileges.createrole"), "fail", "{doc}");
    assert_eq!(verdict(&doc, "privileges.create"), "pass", "{doc}");
    assert_eq!(verdict(&doc, "privileges.extensions"), "fail", "{doc}");
    let text = doc.to_string();
    assert!(
        text.contains("pg_stat_statements is not trusted") && !text.contains("pg_trgm is"),
        "{doc}"
    );
    // As the superuser, both can be made.
    let doc = doctor(&p, None, 0);
    assert_eq!(verdict(&doc, "privileges.extensions"), "pass", "{doc}");
}

#[test]
fn tls_with_a_verified_certificate_passes() {
    let pki = Pki::new();
    let server = pki.tls_cluster();
    let p = Project::on(&server, "doctor_tls", 1);
    p.db()
        .batch_execute("ALTER ROLE postgres PASSWORD 'doctor-pw-1'")
        .unwrap();
    let db = p.url.rsplit('/').next().unwrap();
    let verified = format!(
        "postgres://postgres:doctor-pw-1@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
        server.port,
        pki.path("ca.crt").display()
    );
    let doc = doctor(&p, Some(&verified), 0);
    assert_eq!(verdict(&doc, "connection.tls"), "pass", "{doc}");
    let unverified = format!(
        "postgres://postgres:doctor-pw-1@localhost:{}/{db}?sslmode=require",
        server.port
    );
    let doc = doctor(&p, Some(&unverified), 0);
    assert_eq!(verdict(&doc, "connection.tls"), "warn", "{doc}");
    assert!(
        !doc.to_string().contains("doctor-pw-1"),
        "a password printed: {doc}"
    );
}

#[test]
fn through_pgbouncer_in_transaction_mode_the_search_path_leak_is_seen() {
    let server = start_cluster(&[]);
    let bouncer = Bouncer::start(&server, "transaction");
    let p = Project::on(&server, "doctor_bouncer", 1);
    let db = p.url.rsplit('/').next().unwrap().to_string();
    let doc = doctor(&p, Some(&bouncer.url(&db)), 1);
    assert_eq!(verdict(&doc, "pooler.mode"), "fail", "no direct_url: {doc}");
    assert_eq!(verdict(&doc, "pooler.search_path"), "warn", "{doc}");
    let detail = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "search_path")
        .unwrap()["detail"]
        .to_string();
    assert!(detail.contains("was seen by another client"), "{detail}");
    // With direct_url for tenantctl's locks, the mode passes; the leak is still the app's.
    std::fs::write(
        p.config_path(),
        format!(
            "[database]\nurl = \"{}\"\ndirect_url = \"{}\"\n",
            bouncer.url(&db),
            server.url(&db)
        ),
    )
    .unwrap();
    let doc = doctor(&p, None, 0);
    assert_eq!(verdict(&doc, "pooler.mode"), "pass", "{doc}");
    assert_eq!(verdict(&doc, "pooler.search_path"), "warn", "{doc}");
}
