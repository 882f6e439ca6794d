//! `--copy`: a tenant's data leaving and entering its schema, against PostgreSQL's own tools
//! in the same run on the same server. A tenant of `--rows` rows (default 1,000,000) over 5
//! tables (indexes, foreign keys, jsonb and text columns):
//!
//! - `tenant export` against `pg_dump -Fc -n <schema>`, A/B/A/B…; the archive's size beside
//!   the dump's;
//! - `tenant import` against `pg_restore` of that dump into a fresh database, A/B/A/B…;
//! - `tenant clone` on one cluster and across two (two databases of the server, as
//!   `[clusters.*]`);
//! - tenantctl's peak RSS in each.
//!
//! `--copy-scale`: the export of one tenant with 100 tenants on the cluster, then with 10,000
//! (it reads its own schema's catalog only).
//!
//!   cargo bench --bench fleet -- --copy [--rows 1000000] [--runs 3]
//!   cargo bench --bench fleet -- --copy-scale [--rows 10000]

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{median, secs, Project, Server};

pub const SCHEMA: &str = "
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text NOT NULL, meta jsonb, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX customers_email ON customers (email);
CREATE TABLE products (id bigserial PRIMARY KEY, sku text NOT NULL UNIQUE, title text, price numeric(12,2));
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id), placed_at timestamptz NOT NULL, status text NOT NULL, note text);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX orders_placed ON orders (placed_at);
CREATE TABLE order_items (id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders(id), product_id bigint NOT NULL REFERENCES products(id), qty int NOT NULL, price numeric(12,2));
CREATE INDEX order_items_order ON order_items (order_id);
CREATE TABLE events (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers(id), kind text, payload jsonb, at timestamptz);
CREATE INDEX events_customer_at ON events (customer_id, at);
";

/// Rows for a tenant of `rows` rows: 10 % customers, 1 % products, 30 % orders, 40 % order
/// items, 19 % events.
pub fn fill_sql(schema: &str, rows: usize) -> String {
    let (c, p, o, i) = (rows / 10, (rows / 100).max(1), rows * 3 / 10, rows * 4 / 10);
    let e = rows - c - p - o - i;
    format!(
        "SET search_path TO {schema};
INSERT INTO customers (name, email, meta) SELECT 'customer ' || g, 'c' || g || '@example.com', jsonb_build_object('plan', g % 3, 'tags', jsonb_build_array('a', g)) FROM generate_series(1, {c}) g;
INSERT INTO products (sku, title, price) SELECT 'sku-' || g, 'product number ' || g, (g % 1000) / 10.0 FROM generate_series(1, {p}) g;
INSERT INTO orders (customer_id, placed_at, status, note) SELECT 1 + g % {c}, '2026-01-01'::timestamptz + g * interval '1 second', (ARRAY['new','paid','shipped'])[1 + g % 3], CASE WHEN g % 5 = 0 THEN 'note with\ttab ' || g END FROM generate_series(1, {o}) g;
INSERT INTO order_items (order_id, product_id, qty, price) SELECT 1 + g % {o}, 1 + g % {p}, 1 + g % 4, (g % 500) / 10.0 FROM generate_series(1, {i}) g;
INSERT INTO events (customer_id, kind, payload, at) SELECT 1 + g % {c}, 'kind' || (g % 7), jsonb_build_object('n', g, 'text', repeat('x', g % 40)), now() FROM generate_series(1, {e}) g;
ANALYZE customers, products, orders, order_items, events;"
    )
}

fn run(cmd: &mut Command) -> Duration {
    let t0 = Instant::now();
    let out = cmd.output().expect("a tool that runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t0.elapsed()
}

fn size(path: &std::path::Path) -> String {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

pub fn bench_copy(server: &Server, rows: usize, runs: usize) {
    let url = server.fresh_db("bench_copy");
    let second = server.fresh_db("bench_copy_b");
    let p = Project::with_config(
        &url,
        &format!(
            "[clusters.a]\nurl = \"{url}\"\n[clusters.b]\nurl = \"{second}\"\n[run]\njobs = 4\n"
        ),
    );
    std::fs::write(p.dir.path().join("migrations/V1__shop.sql"), SCHEMA).unwrap();
    p.timed(&["--cluster", "a", "tenant", "create", "big"]);
    let t0 = Instant::now();
    p.db().batch_execute(&fill_sql("tenant_big", rows)).unwrap();
    eprintln!("  {rows} rows made in {}", secs(t0.elapsed()));
    let dir = p.dir.path();
    let (archive, dump) = (dir.join("big.tenantctl"), dir.join("big.dump"));

    // Export against pg_dump, alternating.
    let (mut ours, mut theirs, mut peak_export) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let (t, kib) = p.timed(&[
            "tenant",
            "export",
            "big",
            "--output",
            "big.tenantctl",
            "--force",
        ]);
        ours.push(t);
        peak_export = peak_export.max(kib);
        theirs.push(run(Command::new("pg_dump")
            .args(["-Fc", "-n", "tenant_big", "-f"])
            .arg(&dump)
            .arg(&url)));
    }
    let (export, dumped) = (median(ours), median(theirs));

    // Import against pg_restore into a fresh database, alternating.
    let (mut ours, mut theirs, mut peak_import) = (Vec::new(), Vec::new(), 0);
    for k in 0..runs {
        let id = format!("imp{k}");
        let (t, kib) = p.timed(&[
            "--cluster",
            "a",
            "tenant",
            "import",
            &id,
            "--input",
            "big.tenantctl",
        ]);
        ours.push(t);
        peak_import = peak_import.max(kib);
        p.timed(&["tenant", "drop", &id, "--yes"]);
        let target = server.fresh_db("bench_copy_restore");
        theirs.push(run(Command::new("pg_restore")
            .args(["--no-owner", "-d", &target])
            .arg(&dump)));
        server.drop_db("bench_copy_restore");
    }
    let (import, restored) = (median(ours), median(theirs));

    // Clone on one cluster and across two.
    let (clone_here, peak_clone) = p.timed(&["--cluster", "a", "tenant", "clone", "big", "twin_a"]);
    let (clone_across, _) = p.timed(&["--cluster", "b", "tenant", "clone", "big", "twin_b"]);

    println!(
        "| {rows} rows, 5 tables | tenantctl | PostgreSQL's tool | ratio | tenantctl peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| export / `pg_dump -Fc -n` | {} | {} | **{:.2}** | {} |",
        secs(export),
        secs(dumped),
        export.as_secs_f64() / dumped.as_secs_f64(),
        mb(peak_export)
    );
    println!(
        "| import / `pg_restore` (fresh database) | {} | {} | **{:.2}** | {} |",
        secs(import),
        secs(restored),
        import.as_secs_f64() / restored.as_secs_f64(),
        mb(peak_import)
    );
    println!(
        "| clone, one cluster | {} | | | {} |",
        secs(clone_here),
        mb(peak_clone)
    );
    println!(
        "| clone, across two clusters (same server) | {} | | | |",
        secs(clone_across)
    );
    println!(
        "| size: archive / `pg_dump -Fc` | {} | {} | | |",
        size(&archive),
        size(&dump)
    );
    server.drop_db("bench_copy");
    server.drop_db("bench_copy_b");
}

/// One tenant's export on a cluster of 100 tenants and on one of 10,000 (two databases of
/// the server, the same tenant in each), alternating A/B/A/B… once both have settled.
pub fn bench_copy_scale(server: &Server, rows: usize, runs: usize) {
    let fleet = |db: &str, n: usize| {
        let url = server.fresh_db(db);
        let p = Project::new(&url, 4);
        std::fs::write(p.dir.path().join("migrations/V1__shop.sql"), SCHEMA).unwrap();
        let ids: String = (0..n).map(|i| format!("t{i:05}\n")).collect();
        std::fs::write(p.dir.path().join("ids.txt"), ids).unwrap();
        let t0 = Instant::now();
        p.timed(&["tenant", "create", "--from-file", "ids.txt"]);
        eprintln!("  {n} tenants created in {}", secs(t0.elapsed()));
        p.db()
            .batch_execute(&fill_sql("tenant_t00000", rows))
            .unwrap();
        p.db().batch_execute("CHECKPOINT").unwrap();
        p
    };
    let (small, large) = (
        fleet("bench_scale_100", 100),
        fleet("bench_scale_10k", 10_000),
    );
    let args = [
        "tenant",
        "export",
        "t00000",
        "--output",
        "t.tenantctl",
        "--force",
    ];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(5) * 3 {
        a.push(small.timed(&args).0);
        b.push(large.timed(&args).0);
    }
    let (small_t, large_t) = (median(a), median(b));
    println!(
        "| export of one tenant ({rows} rows) | 100 tenants on the cluster | 10,000 | ratio |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| `tenant export` | {} | {} | **{:.2}** |",
        secs(small_t),
        secs(large_t),
        large_t.as_secs_f64() / small_t.as_secs_f64()
    );
    server.drop_db("bench_scale_100");
    server.drop_db("bench_scale_10k");
}
