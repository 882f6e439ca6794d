//! docs/json.md is the contract of `--json`: every document it shows is printed by a real
//! command here, for one database and for two clusters, and the keys must be exactly the
//! documented ones at every level (a key added, renamed or gone on either side fails).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::*;

/// The structure of a document: which keys, at every level, whatever the values.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// `null`: says nothing about what it is when it is not null.
    Unknown,
    Scalar,
    Object(BTreeMap<String, Shape>),
    /// The merged shape of the elements (Unknown for an empty array).
    Array(Box<Shape>),
}

fn shape(v: &Value) -> Shape {
    match v {
        Value::Null => Shape::Unknown,
        Value::Bool(_) | Value::Number(_) | Value::String(_) => Shape::Scalar,
        Value::Array(items) => Shape::Array(Box::new(
            items
                .iter()
                .map(shape)
                .fold(Shape::Unknown, |a, b| merge(a, b, "[]")),
        )),
        // Labels are a map of the user's keys: a value, not a structure.
        Value::Object(map) => Shape::Object(
            map.iter()
                .map(|(k, v)| {
                    let s = match (k.as_str(), v) {
                        ("labels", Value::Object(_)) => Shape::Scalar,
                        _ => shape(v),
                    };
                    (k.clone(), s)
                })
                .collect(),
        ),
    }
}

/// Two values seen at the same place: what they say together. Objects at the same place
/// must have the same keys (one shape per document).
fn merge(a: Shape, b: Shape, at: &str) -> Shape {
    match (a, b) {
        (Shape::Unknown, x) | (x, Shape::Unknown) => x,
        (Shape::Scalar, Shape::Scalar) => Shape::Scalar,
        (Shape::Array(x), Shape::Array(y)) => Shape::Array(Box::new(merge(*x, *y, at))),
        (Shape::Object(x), Shape::Object(y)) => {
            let (kx, ky): (Vec<&String>, Vec<&String>) = (x.keys().collect(), y.keys().collect());
            assert_eq!(kx, ky, "two documents disagree on the keys at {at}");
            let mut out = BTreeMap::new();
            for (k, v) in x {
                let w = y[&k].clone();
                out.insert(k.clone(), merge(v, w, &format!("{at}.{k}")));
            }
            Shape::Object(out)
        }
        (x, y) => panic!("{at}: {x:?} here, {y:?} there"),
    }
}

/// The documented shape against the printed one: the same keys wherever both say.
fn compare(doc: &Shape, real: &Shape, at: &str) {
    match (doc, real) {
        (Shape::Unknown, _) | (_, Shape::Unknown) => {}
        (Shape::Scalar, Shape::Scalar) => {}
        (Shape::Array(d), Shape::Array(r)) => compare(d, r, &format!("{at}[]")),
        (Shape::Object(d), Shape::Object(r)) => {
            let documented: Vec<&String> = d.keys().collect();
            let printed: Vec<&String> = r.keys().collect();
            assert_eq!(
                documented, printed,
                "{at}: docs/json.md and the printed document disagree on the keys"
            );
            for (k, v) in d {
                compare(v, &r[k], &format!("{at}.{k}"));
            }
        }
        (d, r) => panic!("{at}: documented as {d:?}, printed as {r:?}"),
    }
}

/// `<!-- document: NAME -->` followed by a ```json block, for each documented document.
fn documented() -> BTreeMap<String, Value> {
    examples("<!-- document: ")
}

/// The examples after each `marker` NAME ` -->` in docs/json.md, by name.
fn examples(marker: &str) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json.md"))
        .expect("docs/json.md");
    let mut out = BTreeMap::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(marker) {
        rest = &rest[at + marker.len()..];
        let name = rest[..rest.find(" -->").unwrap()].to_string();
        let start = rest.find("```json\n").unwrap() + "```json\n".len();
        let end = start + rest[start..].find("\n```").unwrap();
        let value: Value = serde_json::from_str(&rest[start..end])
            .unwrap_or_else(|e| panic!("docs/json.md: the {name} example is not JSON: {e}"));
        out.insert(name, value);
        rest = &rest[end..];
    }
    out
}

/// Every document a scenario printed, by the name docs/json.md gives it.
#[derive(Default)]
struct Printed(BTreeMap<&'static str, Vec<Value>>);

impl Printed {
    fn add(&mut self, name: &'static str, v: Value) {
        self.0.entry(name).or_default().push(v);
    }
}

fn tenants_of(doc: &Value) -> &Vec<Value> {
    doc["tenants"].as_array().unwrap()
}

/// Runs each step (document name, arguments, exit code) and keeps what it printed.
fn steps(p: &Project, seen: &mut Printed, steps: &[(&'static str, &[&str], i32)]) {
    for (name, args, code) in steps {
        seen.add(name, p.json(args, *code));
    }
}

/// The scenario on one project: shared migrations, a failing tenant, a plan, a repair,
/// drops, a verify, and errors.
fn scenario(p: &Project, seen: &mut Printed) {
    std::fs::create_dir_all(p.migrations_dir().join("shared")).unwrap();
    std::fs::write(
        p.migrations_dir().join("shared/V1__plans.sql"),
        "CREATE TABLE IF NOT EXISTS plans (id int PRIMARY KEY);\n",
    )
    .unwrap();
    let create: &[&str] = &[
        "tenant", "create", "t0000", "t0001", "t0002", "t0003", "--json",
    ];
    steps(p, seen, &[("run", create, 0)]);
    // t0002 is on the first cluster of two (new tenants go where there are fewest).
    p.db()
        .batch_execute("CREATE TABLE tenant_t0002.blocker (id int)")
        .unwrap();
    p.add_migration("V9__blocker.sql", "CREATE TABLE blocker (id int);\n");
    p.add_migration("V9__blocker.down.sql", "DROP TABLE blocker;\n");
    steps(
        p,
        seen,
        &[
            ("plan", &["migrate", "--all", "--dry-run", "--json"], 0),
            (
                "plan",
                &["rollback", "--to", "7", "--all", "--dry-run", "--json"],
                0,
            ),
            ("run", &["migrate", "--all", "--json"], 1),
            ("status", &["status", "--json"], 0),
            ("status", &["status", "--verify", "--json"], 0),
            (
                "query",
                &[
                    "query",
                    "--all",
                    "-c",
                    "select count(*) as n from blocker",
                    "--json",
                ],
                0,
            ),
            (
                "query",
                &[
                    "query",
                    "--all",
                    "-c",
                    "select * from nope",
                    "--json",
                    "--with-labels",
                ],
                1,
            ),
            (
                "exec-plan",
                &[
                    "exec",
                    "--all",
                    "-c",
                    "insert into blocker values (1)",
                    "--dry-run",
                    "--json",
                ],
                0,
            ),
            (
                "exec-plan",
                &[
                    "exec",
                    "--all",
                    "-c",
                    "insert into nope values (1)",
                    "--dry-run",
                    "--json",
                ],
                1,
            ),
            (
                "run",
                &[
                    "exec",
                    "--all",
                    "-c",
                    "insert into blocker values (1)",
                    "--json",
                ],
                0,
            ),
        ],
    );
    p.add_migration(
        "V9__blocker.sql",
        "-- a comment\nCREATE TABLE blocker (id int);\n",
    );
    steps(
        p,
        seen,
        &[
            (
                "repair-plan",
                &["repair", "--accept", "9", "--all", "--dry-run", "--json"],
                0,
            ),
            (
                "run",
                &["repair", "--accept", "9", "--all", "--yes", "--json"],
                0,
            ),
            (
                "run",
                &["rollback", "--to", "8", "--tenant", "t0000", "--json"],
                0,
            ),
            (
                "run",
                &["tenant", "drop", "t0003", "--archive", "--yes", "--json"],
                0,
            ),
            (
                "run",
                &["tenant", "label", "t0000", "t0001", "tier=free", "--json"],
                0,
            ),
            ("tenant-list", &["tenant", "list", "--json"], 0),
            (
                "tenant-list",
                &["tenant", "list", "--select", "tier=free", "--json"],
                0,
            ),
            ("audit", &["audit", "--json"], 0),
            ("error", &["migrate", "--tenant", "BAD", "--json"], 2),
            ("error", &["migrate", "--bogus-flag", "--json"], 2),
            ("error", &["status", "--tenant", "nobody", "--json"], 2),
        ],
    );
    // The migration files, no database needed.
    steps(
        p,
        seen,
        &[
            ("migration-list", &["migration", "list", "--json"], 0),
            ("migration-check", &["migration", "check", "--json"], 0),
        ],
    );
    p.add_migration(
        "V11__risky.sql",
        "ALTER TABLE tasks ADD COLUMN z int NOT NULL;\n",
    );
    steps(
        p,
        seen,
        &[("migration-check", &["migration", "check", "--json"], 1)],
    );
    std::fs::remove_file(p.migrations_dir().join("V11__risky.sql")).unwrap();
    // The pool: filled, taken by a create (with a seed), moved, shown, drained.
    std::fs::write(
        p.path().join("seed.sql"),
        "INSERT INTO users (email, full_name) VALUES (:'tenant_id', :'name');\n",
    )
    .unwrap();
    let config = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(
        p.config_path(),
        format!("{config}\n[tenants]\npool = 1\nseed = \"seed.sql\"\n"),
    )
    .unwrap();
    steps(
        p,
        seen,
        &[
            ("run", &["tenant", "pool", "fill", "--json"], 0),
            ("pool-status", &["tenant", "pool", "status", "--json"], 0),
            (
                "run",
                &["tenant", "create", "t0004", "--var", "name=N", "--json"],
                0,
            ),
            ("run", &["tenant", "pool", "fill", "--json"], 0),
            ("status", &["status", "--json"], 0),
            ("audit", &["audit", "--json"], 0),
            ("run", &["tenant", "pool", "drain", "--yes", "--json"], 0),
        ],
    );
    std::fs::write(p.config_path(), config).unwrap();
    // A staged rollout, and what status and audit say of it.
    p.add_migration("V10__later.sql", "CREATE TABLE later (id int);\n");
    steps(
        p,
        seen,
        &[
            (
                "plan",
                &["migrate", "--all", "--canary", "1", "--dry-run", "--json"],
                0,
            ),
            ("run", &["migrate", "--all", "--canary", "1", "--json"], 7),
            ("status", &["status", "--json"], 0),
            ("audit", &["audit", "--json"], 0),
        ],
    );
    // A tenant's rows: exported, imported under another id (planned first), cloned, renamed.
    steps(
        p,
        seen,
        &[
            (
                "tenant-export",
                &[
                    "tenant",
                    "export",
                    "t0001",
                    "--output",
                    "t.tenantctl",
                    "--json",
                ],
                0,
            ),
            (
                "tenant-import-plan",
                &[
                    "tenant",
                    "import",
                    "restored",
                    "--input",
                    "t.tenantctl",
                    "--dry-run",
                    "--json",
                ],
                0,
            ),
            (
                "run",
                &[
                    "tenant",
                    "import",
                    "restored",
                    "--input",
                    "t.tenantctl",
                    "--json",
                ],
                0,
            ),
            (
                "run",
                &["tenant", "clone", "restored", "cloned", "--json"],
                0,
            ),
            (
                "tenant-rename",
                &["tenant", "rename", "cloned", "renamed", "--json"],
                0,
            ),
            ("audit", &["audit", "--json"], 0),
        ],
    );
}

#[test]
fn every_document_is_the_documented_one_for_one_database_and_for_several() {
    let docs = documented();
    let mut seen = Printed::default();
    let single = Project::new("json_docs_single", 8);
    scenario(&single, &mut seen);

    let multi = Project::new("json_docs_multi", 8);
    multi.two_clusters("json_docs_multi_b");
    scenario(&multi, &mut seen);
    // Two clusters: one document, tenants from both, one `clusters` entry each.
    let list = multi.json(&["tenant", "list", "--json"], 0);
    let clusters: Vec<&str> = list["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["a", "b"]);
    assert_eq!(
        list["counts"]["active"].as_i64().unwrap() + list["counts"]["dropped"].as_i64().unwrap(),
        7
    );

    // The cluster with a failed tenant is not ok; the other is; the fleet exits 1.
    let migrate = seen.0["run"]
        .iter()
        .find(|d| d["command"] == "migrate" && d["clusters"].as_array().unwrap().len() == 2)
        .expect("the two-cluster migrate");
    assert_eq!(migrate["exit_code"], 1);
    let ok: Vec<(&str, bool, i64)> = migrate["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cluster"].as_str().unwrap(),
                c["ok"].as_bool().unwrap(),
                c["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ok, [("a", false, 1), ("b", true, 0)]);
    assert!(tenants_of(migrate)
        .iter()
        .all(|t| t["cluster"] == "a" || t["cluster"] == "b"));

    check(&docs, &seen);
    let missing: Vec<&String> = docs
        .keys()
        .filter(|k| {
            !seen.0.contains_key(k.as_str())
                && !MOVE_DOCUMENTS.contains(&k.as_str())
                && !["tenant-tiers", "doctor"].contains(&k.as_str())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "documented but never printed here: {missing:?}"
    );
}

/// The event stream (`--events`) against docs/json.md#event-stream: a failing run with a
/// lock timeout retried and a slow tenant, a staged rollout, and a run with nothing to do.
/// Every event printed is documented with exactly its keys.
#[test]
fn every_streamed_event_is_the_documented_one() {
    let p = Project::new("json_docs_events", 5);
    p.run(&["tenant", "create", "a", "b", "c"], 0);
    p.write_config("[run]\nlock_timeout = \"1500ms\"\nretries = 1\nretry_delay = \"100ms\"");
    p.add_migration("V6__note.sql", "ALTER TABLE users ADD COLUMN note text;\n");
    let mut holder = p.db();
    holder
        .batch_execute("BEGIN; LOCK TABLE tenant_b.users IN ACCESS SHARE MODE")
        .unwrap();
    p.run(
        &[
            "migrate",
            "--all",
            "--slow-after",
            "1s",
            "--events",
            "e.ndjson",
        ],
        1,
    );
    holder.batch_execute("COMMIT").unwrap();
    p.add_migration("V7__more.sql", "ALTER TABLE users ADD COLUMN more text;\n");
    let waves = [
        "migrate", "--all", "--canary", "1", "--waves", "100%", "--events", "e.ndjson",
    ];
    p.run(&waves, 0);
    p.run(&["migrate", "--all", "--events", "e.ndjson"], 0);
    let text = std::fs::read_to_string(p.path().join("e.ndjson")).unwrap();
    let mut seen = Printed::default();
    let names: &[&'static str] = &[
        "run_started",
        "tenant_started",
        "tenant_finished",
        "tenant_failed",
        "tenant_dropped",
        "retry",
        "tenant_slow",
        "wave_started",
        "wave_gate",
        "waiting",
        "resuming",
        "interrupting",
        "warning",
        "run_finished",
    ];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let name = names
            .iter()
            .find(|n| v["event"] == **n)
            .unwrap_or_else(|| panic!("an event docs/json.md does not name: {line}"));
        seen.add(name, v);
    }
    for must in [
        "run_started",
        "tenant_started",
        "tenant_finished",
        "tenant_failed",
        "retry",
        "tenant_slow",
        "wave_started",
        "wave_gate",
        "run_finished",
    ] {
        assert!(seen.0.contains_key(must), "no {must} event in\n{text}");
    }
    check(&examples("<!-- event: "), &seen);
    // The stream's contract, snapshot-tested: every event's keys (and its failure's), as the
    // real run printed them. A key removed or renamed shows here as a diff to review.
    let mut keys = String::new();
    for (name, printed) in &seen.0 {
        let mut names = std::collections::BTreeSet::new();
        for v in printed {
            for (k, inner) in v.as_object().unwrap() {
                names.insert(k.clone());
                if let Some(o) = inner.as_object() {
                    names.extend(o.keys().map(|i| format!("{k}.{i}")));
                }
            }
        }
        let names: Vec<String> = names.into_iter().collect();
        keys.push_str(&format!("{name}: {}\n", names.join(", ")));
    }
    insta::assert_snapshot!("event_stream_keys", keys);
}

/// Every printed document against its documented shape.
fn check(docs: &BTreeMap<String, Value>, seen: &Printed) {
    for (name, printed) in &seen.0 {
        let example = docs
            .get(*name)
            .unwrap_or_else(|| panic!("docs/json.md does not document the {name} document"));
        let real = printed
            .iter()
            .map(shape)
            .fold(Shape::Unknown, |a, b| merge(a, b, name));
        compare(&shape(example), &real, name);
    }
}

/// The documents of moves, printed by the test below (it needs clusters with logical
/// replication).
const MOVE_DOCUMENTS: &[&str] = &[
    "tenant-move",
    "tenant-move-abort",
    "tenant-move-cleanup",
    "tenant-stats",
    "rebalance",
];

#[test]
fn the_documents_of_moves_are_the_documented_ones() {
    let docs = documented();
    let mut seen = Printed::default();
    let (a, b) = logical_pair();
    let p = Project::on(a, "json_docs_moves", 2);
    let b_url = fresh_db(b, "json_docs_moves_b");
    p.with_cluster_b(&b_url);
    p.run(&["tenant", "create", "acme", "globex", "--cluster", "a"], 0);
    p.db()
        .batch_execute(
            "INSERT INTO tenant_acme.users (email, full_name) VALUES ('a@x', 'A'), ('b@x', 'B')",
        )
        .unwrap();
    steps(
        &p,
        &mut seen,
        &[
            ("tenant-stats", &["tenant", "stats", "--json"], 0),
            ("rebalance", &["rebalance", "--plan", "--json"], 0),
        ],
    );
    let killed = p
        .cmd()
        .env("TENANTCTL_TEST_KILL_AT", "streaming")
        .args(["tenant", "move", "acme", "--to", "b"])
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None);
    let status = p.json(&["status", "--json"], 0);
    assert_eq!(status["moves"].as_array().unwrap().len(), 2, "{status}");
    seen.add("status", status);
    steps(
        &p,
        &mut seen,
        &[
            (
                "tenant-move-abort",
                &["tenant", "move", "acme", "--abort", "--json"],
                0,
            ),
            (
                "tenant-move",
                &[
                    "tenant",
                    "move",
                    "acme",
                    "--to",
                    "b",
                    "--keep-source",
                    "7d",
                    "--json",
                ],
                0,
            ),
            (
                "tenant-move",
                &[
                    "tenant",
                    "move",
                    "globex",
                    "--to",
                    "b",
                    "--verify",
                    "--offline",
                    "--json",
                ],
                0,
            ),
        ],
    );
    let status = p.json(&["status", "--json"], 0);
    assert_eq!(
        status["old_copies"].as_array().unwrap().len(),
        2,
        "{status}"
    );
    seen.add("status", status);
    steps(
        &p,
        &mut seen,
        &[(
            "tenant-move-cleanup",
            &["tenant", "move", "--cleanup", "acme", "--yes", "--json"],
            0,
        )],
    );
    check(&docs, &seen);
    for name in MOVE_DOCUMENTS {
        assert!(seen.0.contains_key(name), "{name} was not printed");
    }
}

/// `tenant tiers apply` and `status` (a config with roles and tiers of its own).
#[test]
fn the_documents_of_tiers_are_the_documented_ones() {
    let docs = documented();
    let mut seen = Printed::default();
    let p = Project::new("json_docs_tiers", 2);
    let tag = p.url.rsplit('/').next().unwrap().to_string();
    p.write_config(&format!(
        "[tenants]\nrole = \"{tag}_{{id}}\"\n[tiers.enterprise]\nselect = \"tier=enterprise\"\nconnection_limit = 10\n[tiers.default]\nstatement_timeout = \"5s\"\n"
    ));
    p.run(
        &["tenant", "create", "acme", "--label", "tier=enterprise"],
        0,
    );
    p.run(&["tenant", "create", "globex"], 0);
    p.db()
        .batch_execute(&format!(
            "ALTER ROLE \"{tag}_globex\" SET statement_timeout = 1"
        ))
        .unwrap();
    steps(
        &p,
        &mut seen,
        &[
            ("tenant-tiers", &["tenant", "tiers", "status", "--json"], 0),
            (
                "tenant-tiers",
                &["tenant", "tiers", "apply", "--dry-run", "--json"],
                0,
            ),
            ("tenant-tiers", &["tenant", "tiers", "apply", "--json"], 0),
        ],
    );
    steps(&p, &mut seen, &[("doctor", &["doctor", "--json"], 0)]);
    let applied = &seen.0["tenant-tiers"][2];
    assert!(applied["clusters"][0]["run_id"].is_i64(), "{applied}");
    check(&docs, &seen);
}
