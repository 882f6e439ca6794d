//! tenant export, import, clone and rename on real PostgreSQL: every kind of row a tenant's
//! tables hold comes back identical, under another id; bad archives change nothing.

use crate::support::*;

/// A schema with what a tenant's rows need: foreign keys (a self-reference, a cycle), a
/// trigger that stamps rows, a generated column, identity and serial columns, an enum,
/// arrays, jsonb, bytea, numeric, timestamptz, text with tabs, newlines and backslashes, NULL
/// and empty strings, a partitioned table, an unlogged table, a materialized view.
const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE users (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email text NOT NULL UNIQUE,
  manager_id bigint REFERENCES users(id),
  mood mood,
  tags text[],
  profile jsonb,
  avatar bytea,
  balance numeric(20,6),
  seen_at timestamptz,
  note text,
  email_upper text GENERATED ALWAYS AS (upper(email)) STORED,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER users_stamp BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id), total numeric(12,2), created_at timestamptz NOT NULL);
CREATE TABLE a (id int PRIMARY KEY, b_id int);
CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a(id));
ALTER TABLE a ADD CONSTRAINT a_b FOREIGN KEY (b_id) REFERENCES b(id);
CREATE TABLE events (id bigint, at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE UNLOGGED TABLE cache (k text PRIMARY KEY, v text);
CREATE MATERIALIZED VIEW order_totals AS SELECT user_id, sum(total) AS total FROM orders GROUP BY user_id;
CREATE TABLE plans (name text PRIMARY KEY, price int);
INSERT INTO plans VALUES ('free', 0);
"#;

const ROWS: &str = r#"
INSERT INTO users (email, mood, tags, profile, avatar, balance, seen_at, note) VALUES
 ('a@x', 'happy', '{x,"y z",NULL}', '{"k": [1, 2], "s": "t\"q"}', '\x00ff10', 12345678.123456, '2026-01-02 03:04:05+02', E'tab\there\nnew line \\ back'),
 ('b@x', NULL, '{}', NULL, '', 0, NULL, ''),
 ('c@x', 'sad', NULL, 'null', NULL, -1.5, 'infinity', NULL);
UPDATE users SET manager_id = 1 WHERE id > 1;
INSERT INTO orders (user_id, total, created_at) SELECT 1 + g % 3, g * 1.5, '2026-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 500) g;
INSERT INTO a VALUES (1, NULL); INSERT INTO b VALUES (1, 1); UPDATE a SET b_id = 1;
INSERT INTO events VALUES (1, '2025-05-05', 'x'), (2, '2026-06-06', NULL);
INSERT INTO cache VALUES ('k', 'v');
REFRESH MATERIALIZED VIEW order_totals;
UPDATE plans SET price = 5; INSERT INTO plans VALUES ('pro', 10);
ALTER TABLE users DISABLE TRIGGER users_stamp;
UPDATE users SET updated_at = '2020-01-01 00:00:00+00';
ALTER TABLE users ENABLE TRIGGER users_stamp;
"#;

const TABLES: &[&str] = &[
    "users",
    "orders",
    "a",
    "b",
    "events_2025",
    "events_2026",
    "cache",
    "order_totals",
    "plans",
];

fn project(name: &str) -> Project {
    let p = Project::new(name, 0);
    p.add_migration("V1__schema.sql", SCHEMA);
    p.run(&["tenant", "create", "acme"], 0);
    p.db()
        .batch_execute(&format!("SET search_path TO tenant_acme; {ROWS}"))
        .unwrap();
    p
}

/// Every table's rows as one text (ordered), for comparing two tenants.
fn contents(p: &Project, schema: &str) -> Vec<String> {
    let mut db = p.db();
    TABLES
        .iter()
        .map(|t| {
            db.query_one(
                &format!(
                    "SELECT coalesce(string_agg(x::text, '|' ORDER BY x::text), '') FROM {schema}.{t} x"
                ),
                &[],
            )
            .unwrap()
            .get(0)
        })
        .collect()
}

fn sequences(p: &Project, schema: &str) -> Vec<(String, Option<i64>)> {
    p.db()
        .query(
            "SELECT sequencename::text, last_value FROM pg_sequences WHERE schemaname = $1 ORDER BY 1",
            &[&schema],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn count(p: &Project, sql: &str) -> i64 {
    p.db().query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn an_exported_tenant_imports_under_another_id_with_every_row_as_it_was() {
    let p = project("data_roundtrip");
    let before = contents(&p, "tenant_acme");
    assert!(before[0].contains("2020-01-01"), "{}", before[0]);
    let doc = p.json(&["tenant", "export", "acme", "--json"], 0);
    assert_eq!(doc["rows"], 3 + 500 + 1 + 1 + 2 + 1 + 2);
    assert!(p.path().join("acme.tenantctl").is_file());
    assert!(!p.path().join("acme.tenantctl.partial").exists());
    // Rows written after the export are not in it.
    p.db()
        .batch_execute("INSERT INTO tenant_acme.cache VALUES ('later', 'x')")
        .unwrap();
    let run = p.json(
        &[
            "tenant",
            "import",
            "acme_copy",
            "--input",
            "acme.tenantctl",
            "--label",
            "tier=restored",
            "--json",
        ],
        0,
    );
    assert_eq!(run["command"], "tenant import");
    assert_eq!(run["counts"]["done"], 1);
    let after = contents(&p, "tenant_acme_copy");
    assert_eq!(after, before, "the rows differ after the round trip");
    assert_eq!(
        sequences(&p, "tenant_acme_copy"),
        vec![
            ("orders_id_seq".to_string(), Some(500)),
            ("users_id_seq".to_string(), Some(3))
        ]
    );
    // Indexes (built again after the rows), constraints and triggers are back; the next rows
    // get the next ids.
    let indexes = |schema: &str| -> Vec<(String, String)> {
        p.db()
            .query(
                "SELECT indexname::text, replace(indexdef, schemaname, 'S') FROM pg_indexes WHERE schemaname = $1 ORDER BY 1",
                &[&schema],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    assert_eq!(indexes("tenant_acme_copy"), indexes("tenant_acme"));
    assert!(indexes("tenant_acme").len() >= 8);
    assert_eq!(
        count(&p, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'tenant_acme_copy'::regnamespace"),
        4
    );
    assert_eq!(
        count(&p, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tenant_acme_copy.users'::regclass AND NOT tgisinternal AND tgenabled = 'O'"),
        1
    );
    assert_eq!(
        count(
            &p,
            "INSERT INTO tenant_acme_copy.users (email) VALUES ('d@x') RETURNING id"
        ),
        4
    );
    p.db()
        .batch_execute(
            "INSERT INTO tenant_acme_copy.orders (user_id, total, created_at) VALUES (4, 1, now())",
        )
        .unwrap();
    assert_eq!(
        count(&p, "SELECT max(id) FROM tenant_acme_copy.orders"),
        501
    );
    // Registered with its labels at V1; both commands in the audit trail.
    let list = p.json(&["tenant", "list", "--json"], 0);
    let copy = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "acme_copy")
        .unwrap();
    assert_eq!(
        (copy["version"].clone(), copy["labels"]["tier"].clone()),
        (1.into(), "restored".into())
    );
    assert_eq!(
        count(&p, "SELECT count(*) FROM tenantctl.runs WHERE command IN ('tenant export', 'tenant import') AND state = 'succeeded'"),
        2
    );
    p.run(&["status", "--verify"], 0);
}

#[test]
fn an_archive_streams_through_stdout_and_stdin() {
    let p = project("data_pipe");
    let out = p.run(&["tenant", "export", "acme", "--output", "-"], 0);
    assert!(
        stderr(&out).contains("exported tenant acme"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.starts_with(b"TENANTCTL ARCHIVE\n"));
    p.cmd()
        .args(["tenant", "import", "piped", "--input", "-"])
        .write_stdin(out.stdout)
        .assert()
        .success();
    assert_eq!(contents(&p, "tenant_piped"), contents(&p, "tenant_acme"));
    // The file is the tenant's data: its owner's only.
    p.run(&["tenant", "export", "acme"], 0);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(p.path().join("acme.tenantctl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_interrupted_export_leaves_no_archive() {
    let p = project("data_interrupted");
    // The export waits on the last table's lock: a moment to interrupt it mid-archive.
    let mut holder = p.db();
    holder
        .batch_execute("BEGIN; LOCK TABLE tenant_acme.users IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let child = p.spawn(&["tenant", "export", "acme"]);
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                   WHERE c.relname = 'users' AND NOT l.granted";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count(&p, waiting) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the export never waited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(p.path().join("acme.tenantctl.partial").exists());
    signal(child.id(), "INT");
    let out = wait_with_deadline(child, std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no archive was written"),
        "{}",
        stderr(&out)
    );
    assert!(!p.path().join("acme.tenantctl.partial").exists());
    assert!(!p.path().join("acme.tenantctl").exists());
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM tenantctl.runs WHERE command = 'tenant export'"
        ),
        0
    );
}

#[test]
fn an_import_behind_the_files_says_so_or_migrates_with_migrate() {
    let p = project("data_behind");
    p.run(&["tenant", "export", "acme"], 0);
    p.add_migration(
        "V2__more.sql",
        "ALTER TABLE cache ADD COLUMN n int NOT NULL DEFAULT 7;\n",
    );
    let out = p.run(&["tenant", "import", "old", "--input", "acme.tenantctl"], 0);
    assert!(
        stderr(&out).contains("old is at V1; the files go to V2: `tenantctl migrate --tenant old`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(p.tenant_state("old"), "active");
    assert_eq!(p.versions()["old"], Some(1));
    p.run(
        &[
            "tenant",
            "import",
            "newer",
            "--input",
            "acme.tenantctl",
            "--migrate",
        ],
        0,
    );
    assert_eq!(p.versions()["newer"], Some(2));
    assert_eq!(count(&p, "SELECT sum(n) FROM tenant_newer.cache"), 7);
}

#[test]
fn clone_copies_rows_or_only_the_schema_and_rename_moves_everything() {
    let p = project("data_clone");
    let before = contents(&p, "tenant_acme");
    let run = p.json(&["tenant", "clone", "acme", "twin", "--json"], 0);
    assert_eq!(run["command"], "tenant clone");
    assert_eq!(contents(&p, "tenant_twin"), before);
    p.run(&["tenant", "clone", "acme", "empty", "--schema-only"], 0);
    assert_eq!(count(&p, "SELECT count(*) FROM tenant_empty.orders"), 0);
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM tenantctl.runs WHERE command = 'tenant export'"
        ),
        1,
        "the clone with rows is recorded on the source"
    );

    let doc = p.json(&["tenant", "rename", "twin", "twin_renamed", "--json"], 0);
    assert_eq!(doc["tenant"]["was_schema"], "tenant_twin");
    assert!(!p.schema_exists("tenant_twin"));
    assert_eq!(contents(&p, "tenant_twin_renamed"), before);
    assert_eq!(p.history("tenant_twin_renamed"), vec![1]);
    assert_eq!(p.versions().get("twin"), None);
    assert_eq!(p.versions()["twin_renamed"], Some(1));
    p.run(&["status", "--verify"], 0);
    assert_eq!(
        count(&p, "SELECT count(*) FROM tenantctl.run_schemas s JOIN tenantctl.runs r ON r.id = s.run_id \
                   WHERE r.command = 'tenant rename' AND s.tenant_id = 'twin_renamed' AND s.state = 'succeeded'"),
        1
    );

    // Refused, nothing changed: a new id that exists; an object that spells the old name.
    let out = p.run(&["tenant", "rename", "acme", "empty"], 2);
    assert!(
        stderr(&out).contains("tenant empty already exists"),
        "{}",
        stderr(&out)
    );
    p.db()
        .batch_execute("CREATE VIEW tenant_empty.follows AS SELECT * FROM tenant_empty.cache")
        .unwrap();
    // A view follows a rename (it refers to its tables, not to their names).
    p.run(&["tenant", "rename", "empty", "empty2"], 0);
    assert_eq!(count(&p, "SELECT count(*) FROM tenant_empty2.follows"), 0);
    p.db()
        .batch_execute(
            "CREATE FUNCTION tenant_acme.spells() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM tenant_acme.cache $$",
        )
        .unwrap();
    let out = p.run(&["tenant", "rename", "acme", "acme2"], 2);
    assert!(
        stderr(&out).contains("function spells()"),
        "{}",
        stderr(&out)
    );
    assert!(!p.schema_exists("tenant_acme2"));
    assert!(p.schema_exists("tenant_acme"));
    assert_eq!(p.tenant_state("acme"), "active");
}

/// An archive whose frames are written here: the manifest (as JSON) and data chunks.
fn forge(
    path: &std::path::Path,
    manifest: &serde_json::Value,
    data: &[(u32, &str)],
    footer: &serde_json::Value,
) {
    let mut out = b"TENANTCTL ARCHIVE\n".to_vec();
    let mut frame = |kind: u8, table: u32, raw: &[u8]| {
        let mut enc = zstd::bulk::Compressor::new(3).unwrap();
        enc.include_checksum(true).unwrap();
        let packed = enc.compress(raw).unwrap();
        out.push(kind);
        out.extend(table.to_le_bytes());
        out.extend((packed.len() as u32).to_le_bytes());
        out.extend(packed);
    };
    frame(b'H', 0, manifest.to_string().as_bytes());
    for (t, rows) in data {
        frame(b'D', *t, rows.as_bytes());
    }
    frame(b'F', 0, footer.to_string().as_bytes());
    std::fs::write(path, out).unwrap();
}

#[test]
fn bad_archives_are_refused_and_nothing_is_created() {
    let p = project("data_bad");
    p.run(
        &["tenant", "export", "acme", "--output", "good.tenantctl"],
        0,
    );
    let good = std::fs::read(p.path().join("good.tenantctl")).unwrap();
    let fingerprint = p.fingerprint();
    let refused = |file: &str, bytes: &[u8], says: &str| {
        std::fs::write(p.path().join(file), bytes).unwrap();
        let out = p.run(&["tenant", "import", "x", "--input", file], 2);
        assert!(stderr(&out).contains(says), "{file}: {}", stderr(&out));
        assert!(!p.schema_exists("tenant_x"), "{file}");
    };
    refused("cut.tenantctl", &good[..good.len() * 2 / 3], "cut short");
    let mut flipped = good.clone();
    let at = good.len() - 80;
    flipped[at] ^= 0x5a;
    refused("flipped.tenantctl", &flipped, "damaged");
    refused("text.tenantctl", b"hello\n", "not a tenantctl archive");
    // An id that exists, a cluster that does not.
    let out = p.run(
        &["tenant", "import", "acme", "--input", "good.tenantctl"],
        2,
    );
    assert!(
        stderr(&out).contains("tenant acme already exists"),
        "{}",
        stderr(&out)
    );
    p.run(
        &[
            "--cluster",
            "nope",
            "tenant",
            "import",
            "x",
            "--input",
            "good.tenantctl",
        ],
        2,
    );
    assert_eq!(
        p.fingerprint(),
        fingerprint,
        "a refused import changed something"
    );

    // Forged manifests: a newer format; a version above the files; a table the files do not
    // make (spelled to escape its schema): refused, nothing written anywhere.
    let manifest = |format: u32, version: i32, table: &str| {
        serde_json::json!({
            "format": format, "tenantctl": "9", "tenant": "evil", "schema": "public",
            "version": version, "history": [], "migrations_digest": "-", "exported_at": "now",
            "tables": [{"name": table, "columns": ["k"]}], "sequences": [], "matviews": [],
        })
    };
    let footer = |rows: &str| {
        use sha2::Digest as _;
        let sha: String = sha2::Sha256::digest(rows.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        serde_json::json!({"tables": [{"rows": rows.lines().count(), "bytes": rows.len(), "sha256": sha}], "chunks": 1})
    };
    let path = p.path().join("newer.tenantctl");
    forge(
        &path,
        &manifest(2, 1, "cache"),
        &[(0, "k\n")],
        &footer("k\n"),
    );
    let out = p.run(&["tenant", "import", "x", "--input", "newer.tenantctl"], 2);
    assert!(stderr(&out).contains("format 2"), "{}", stderr(&out));
    forge(
        &path,
        &manifest(1, 9, "cache"),
        &[(0, "k\n")],
        &footer("k\n"),
    );
    let out = p.run(&["tenant", "import", "x", "--input", "newer.tenantctl"], 2);
    assert!(
        stderr(&out).contains("at V9, which the migration files here do not have"),
        "{}",
        stderr(&out)
    );
    let hostile = "cache\" (k) FROM STDIN; DROP TABLE tenant_acme.orders; --";
    forge(
        &path,
        &manifest(1, 1, hostile),
        &[(0, "k\n")],
        &footer("k\n"),
    );
    let runs = count(&p, "SELECT count(*) FROM tenantctl.runs");
    let out = p.run(&["tenant", "import", "x", "--input", "newer.tenantctl"], 2);
    assert!(
        stderr(&out).contains("which the migrations do not make at V1"),
        "{}",
        stderr(&out)
    );
    assert!(!p.schema_exists("tenant_x"));
    assert_eq!(count(&p, "SELECT count(*) FROM tenant_acme.orders"), 500);
    assert_eq!(
        count(&p, "SELECT count(*) FROM tenantctl.runs"),
        runs,
        "a run was recorded"
    );
    // A column the files do not make: the same, and the dry run says so too.
    let mut ghost = manifest(1, 1, "cache");
    ghost["tables"][0]["columns"] = serde_json::json!(["k", "ghost"]);
    forge(&path, &ghost, &[(0, "k\tg\n")], &footer("k\tg\n"));
    let out = p.run(
        &[
            "tenant",
            "import",
            "x",
            "--input",
            "newer.tenantctl",
            "--dry-run",
        ],
        2,
    );
    assert!(
        stderr(&out).contains("has column \"ghost\""),
        "{}",
        stderr(&out)
    );
    // Counts that do not match the tail.
    forge(
        &path,
        &manifest(1, 1, "cache"),
        &[(0, "k\tv\n")],
        &footer("k\tv\nk2\tv\n"),
    );
    let out = p.run(&["tenant", "import", "x", "--input", "newer.tenantctl"], 2);
    assert!(
        stderr(&out).contains("table cache: 1 row(s)"),
        "{}",
        stderr(&out)
    );

    // A history whose file was edited since: named.
    p.add_migration("V1__schema.sql", &format!("{SCHEMA}\n-- edited\n"));
    let out = p.run(&["tenant", "import", "x", "--input", "good.tenantctl"], 2);
    assert!(
        stderr(&out).contains("V1__schema.sql differs from the file the archive's tenant applied"),
        "{}",
        stderr(&out)
    );
    assert!(!p.schema_exists("tenant_x"));
}

#[test]
fn export_refuses_drift_and_large_objects_unless_told() {
    let p = project("data_refusals");
    p.db()
        .batch_execute("UPDATE tenant_acme.refinery_schema_history SET checksum = '1'")
        .unwrap();
    let out = p.run(&["tenant", "export", "acme"], 2);
    assert!(
        stderr(&out).contains("differs from the migration files"),
        "{}",
        stderr(&out)
    );
    assert!(!p.path().join("acme.tenantctl").exists());
    let doc = p.json(&["tenant", "export", "acme", "--allow-drift", "--json"], 0);
    assert!(doc["drift"].as_str().unwrap().contains("V1"), "{doc}");
    let out = p.run(&["tenant", "export", "acme"], 2);
    assert!(
        stderr(&out).contains("exists; nothing was written"),
        "{}",
        stderr(&out)
    );
    p.db()
        .batch_execute("ALTER TABLE tenant_acme.cache ADD COLUMN blob oid")
        .unwrap();
    let out = p.run(&["tenant", "export", "acme", "--allow-drift", "--force"], 2);
    assert!(
        stderr(&out).contains("large-object references (cache.blob)"),
        "{}",
        stderr(&out)
    );
}
