//! Tiers on tenant roles: the limits hold for a session that logs in as the tenant's role,
//! the way an application connects (statement_timeout cancels, CONNECTION LIMIT refuses),
//! a relabel moves them, drift is seen and repaired, two matching tiers are refused.

use crate::support::{start_cluster, stderr, stdout, Project};

/// A project whose tenant roles are `<db>_<id>`, with an enterprise and a default tier.
fn tiered(name: &str) -> (Project, String) {
    let p = Project::new(name, 2);
    let tag = p.url.rsplit('/').next().unwrap().to_string();
    p.write_config(&format!(
        "[tenants]\nrole = \"{tag}_{{id}}\"\n\
         [tiers.enterprise]\nselect = \"tier=enterprise\"\nstatement_timeout = \"5s\"\nconnection_limit = 10\n\
         [tiers.default]\nstatement_timeout = \"300ms\"\nconnection_limit = 1\nwork_mem = \"8MB\"\n"
    ));
    (p, tag)
}

/// A session logged in as `role`, as an application would connect.
fn login(p: &Project, role: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = p.url.parse().unwrap();
    config.user(role);
    config.connect(postgres::NoTls)
}

/// The role's CONNECTION LIMIT and its settings, from the catalog.
fn role_state(p: &Project, role: &str) -> (bool, i32, Vec<String>) {
    let row = p
        .db()
        .query_one(
            "SELECT r.rolcanlogin, r.rolconnlimit, coalesce(s.setconfig, '{}') FROM pg_roles r \
             LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0 WHERE r.rolname = $1",
            &[&role],
        )
        .unwrap();
    let mut settings: Vec<String> = row.get(2);
    settings.sort();
    (row.get(0), row.get(1), settings)
}

fn sleeps(p: &Project, role: &str) -> Result<(), String> {
    let mut c = login(p, role).map_err(|e| e.to_string())?;
    c.batch_execute("SELECT pg_sleep(0.6)").map_err(|e| {
        e.code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| e.to_string())
    })
}

#[test]
fn a_tenants_tier_limits_its_roles_sessions_and_follows_its_labels() {
    let (p, tag) = tiered("tiers");
    p.run(
        &["tenant", "create", "big", "--label", "tier=enterprise"],
        0,
    );
    p.run(&["tenant", "create", "small"], 0);
    let (big, small) = (format!("{tag}_big"), format!("{tag}_small"));

    // Made with the tenant, in its transaction: the catalog says so.
    assert_eq!(
        role_state(&p, &big),
        (true, 10, vec!["statement_timeout=5000".to_string()])
    );
    assert_eq!(
        role_state(&p, &small),
        (
            true,
            1,
            vec!["statement_timeout=300".into(), "work_mem=8MB".into()]
        )
    );

    // The free tier's query is cancelled at its statement_timeout; the enterprise one runs.
    assert_eq!(sleeps(&p, &small), Err("57014".into()), "query_canceled");
    assert_eq!(sleeps(&p, &big), Ok(()));
    // A second session of the free tier's role is refused.
    let held = login(&p, &small).unwrap();
    let refused = login(&p, &small).err().expect("over its connection limit");
    assert_eq!(
        refused.code().map(|c| c.code()),
        Some("53300"),
        "too many connections for role: {refused:?}"
    );
    drop(held);

    // A relabel moves the limits, in the label's transaction.
    p.run(&["tenant", "label", "small", "tier=enterprise"], 0);
    assert_eq!(role_state(&p, &small), role_state(&p, &big));
    assert_eq!(sleeps(&p, &small), Ok(()));

    // Drift: seen by status, shown by --dry-run (nothing changed), repaired by apply.
    p.db()
        .batch_execute(&format!(
            "ALTER ROLE \"{small}\" SET statement_timeout = 1; ALTER ROLE \"{small}\" SET search_path = x"
        ))
        .unwrap();
    let status = p.json(&["tenant", "tiers", "status", "--json"], 0);
    let enterprise = &status["tiers"][0];
    assert_eq!(enterprise["name"], "enterprise", "{status}");
    assert_eq!(enterprise["tenants"], serde_json::json!(["big", "small"]));
    assert_eq!(enterprise["differ"][0]["tenant"], "small", "{status}");
    assert_eq!(
        enterprise["differ"][0]["changes"],
        serde_json::json!([{"setting": "statement_timeout", "now": "1", "tier": "5000"}])
    );
    let out = p.run(&["tenant", "tiers", "apply", "--dry-run"], 0);
    assert!(stdout(&out).contains("small (role"), "{}", stdout(&out));
    assert!(role_state(&p, &small)
        .2
        .contains(&"statement_timeout=1".into()));
    p.run(&["tenant", "tiers", "apply"], 0);
    assert_eq!(
        role_state(&p, &small).2,
        ["search_path=x", "statement_timeout=5000"],
        "what tiers do not manage is left alone"
    );
    let runs: Vec<(String, i64)> = p
        .db()
        .query(
            "SELECT r.command, count(s.*) FROM tenantctl.runs r JOIN tenantctl.run_schemas s ON s.run_id = r.id \
             WHERE r.command = 'tenant tiers apply' GROUP BY r.id, r.command",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        runs,
        [("tenant tiers apply".to_string(), 1)],
        "in the audit"
    );
    // Nothing left to do: nothing changed, nothing recorded.
    let again = p.json(&["tenant", "tiers", "apply", "--json"], 0);
    assert_eq!(
        again["clusters"][0]["run_id"],
        serde_json::Value::Null,
        "{again}"
    );
    assert!(again["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["differ"] == serde_json::json!([])));
}

#[test]
fn a_tenant_two_tiers_select_is_refused_and_tiers_need_roles() {
    let (p, tag) = tiered("tiers_conflict");
    let text = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(
        p.config_path(),
        format!("{text}[tiers.eu]\nselect = \"region=eu\"\nstatement_timeout = \"1s\"\n"),
    )
    .unwrap();
    p.run(
        &["tenant", "create", "acme", "--label", "tier=enterprise"],
        0,
    );
    let before = role_state(&p, &format!("{tag}_acme"));
    let out = p.run(&["tenant", "label", "acme", "region=eu"], 2);
    let err = stderr(&out);
    assert!(
        err.contains("matches tiers") && err.contains("enterprise") && err.contains("eu"),
        "{err}"
    );
    let labels: String = p
        .db()
        .query_one(
            "SELECT labels::text FROM tenantctl.tenants WHERE id = 'acme'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        !labels.contains("region"),
        "the label was not written: {labels}"
    );
    assert_eq!(role_state(&p, &format!("{tag}_acme")), before);
    // A create whose labels two tiers select: refused, nothing made.
    p.run(
        &[
            "tenant",
            "create",
            "both",
            "--label",
            "tier=enterprise",
            "--label",
            "region=eu",
        ],
        1,
    );
    let made: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &[&format!("{tag}_both")],
        )
        .unwrap()
        .get(0);
    assert_eq!(made, 0);

    // Labels that came to match two tiers (a tier added after they were set): status says
    // which tenant and both tiers; apply refuses and changes nothing.
    p.db()
        .batch_execute(
            "UPDATE tenantctl.tenants SET labels = labels || '{\"region\": \"eu\"}' WHERE id = 'acme'",
        )
        .unwrap();
    let status = p.json(&["tenant", "tiers", "status", "--json"], 0);
    let conflict = status["conflicts"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        conflict.contains("acme") && conflict.contains("enterprise") && conflict.contains("eu"),
        "{status}"
    );
    p.run(&["tenant", "tiers", "apply"], 2);
    assert_eq!(role_state(&p, &format!("{tag}_acme")), before);

    // Tiers without roles: a config error that says so.
    p.write_config("[tiers.default]\nstatement_timeout = \"1s\"\n");
    let out = p.run(&["tenant", "tiers", "status"], 2);
    assert!(stderr(&out).contains("[tenants] role"), "{}", stderr(&out));
}

/// `tenant tiers apply` at 1,000 tenants: every role changed, in a few messages to the
/// server (a round trip per 500 roles), not one or two per tenant. Counted by the server
/// itself: with log_statement = all on the database, each message tenantctl sends is one
/// log entry (a simple query, however many statements it holds, or an execute).
#[test]
fn tiers_apply_at_1000_tenants_takes_a_few_round_trips() {
    let server = start_cluster(&[]);
    let p = Project::on(&server, "tiers_1000", 1);
    let db = p.url.rsplit('/').next().unwrap().to_string();
    let config = |timeout: &str| {
        p.write_config(&format!(
            "[tenants]\nrole = \"{db}_{{id}}\"\n[tiers.default]\nstatement_timeout = \"{timeout}\"\n"
        ))
    };
    config("5s");
    let ids: Vec<String> = (0..1000).map(|i| format!("t{i:04}")).collect();
    std::fs::write(p.path().join("ids.txt"), ids.join("\n")).unwrap();
    p.run(
        &["tenant", "create", "--from-file", "ids.txt", "--quiet"],
        0,
    );
    config("6s");
    p.db()
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" SET log_statement = 'all'"
        ))
        .unwrap();
    let log = server
        .data_dir
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .join("server.log");
    let before = std::fs::read_to_string(&log).unwrap().len();
    let doc = p.json(&["tenant", "tiers", "apply", "--json"], 0);
    let changed = doc["tiers"][0]["differ"].as_array().unwrap().len();
    assert_eq!(changed, 1000, "every role was at 5s");
    let text = std::fs::read_to_string(&log).unwrap();
    let messages: Vec<&str> = text[before..]
        .lines()
        .filter(|l| l.contains("LOG:  statement: ") || l.contains("LOG:  execute "))
        .collect();
    assert!(
        messages.len() <= 20,
        "{} messages for 1,000 roles:\n{}",
        messages.len(),
        messages
            .iter()
            .map(|m| m.chars().take(160).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let alters = messages.iter().filter(|m| m.contains("ALTER ROLE")).count();
    assert_eq!(alters, 2, "two batches of 500");
    // And the catalog says so.
    let at_6s: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole \
             WHERE r.rolname LIKE $1 AND 'statement_timeout=6000' = ANY(s.setconfig)",
            &[&format!("{db}\\_t%")],
        )
        .unwrap()
        .get(0);
    assert_eq!(at_6s, 1000);
}
