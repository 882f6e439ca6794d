//! `--sql`: fleet SQL against a psql loop that sends the same statements over J sessions, in
//! the same run, alternating A/B/A (tenantctl, psql, tenantctl, …):
//!
//! - `query --all -c 'select count(*) from users'` (CSV to /dev/null), and its peak RSS with
//!   `--format ndjson`, against `SET search_path TO <schema>; select count(*) from users;`
//!   per tenant;
//! - `exec --all --again` of a one-row UPDATE, against `BEGIN; SET LOCAL search_path …;
//!   UPDATE …; COMMIT;` per tenant;
//! - a no-op re-run of a finished exec (every tenant done: nothing runs).
//!
//!   cargo bench --bench fleet -- --sql [--n 1000,10000] [--jobs 4] [--runs 3]

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::status::{fleet, timed_rusage};
use crate::{median, psql_bin, psql_sessions, secs, Server, BIN};

const QUERY: &str = "select count(*) from users";
const UPDATE: &str = "update users set email = email where id = 1";

/// J psql sessions, each fed its share of `per_tenant(schema)` from a file.
fn psql_loop(
    url: &str,
    n: usize,
    jobs: usize,
    work: &Path,
    per_tenant: &dyn Fn(&str) -> String,
) -> Duration {
    let files: Vec<_> = (0..jobs)
        .map(|j| {
            let p = work.join(format!("loop_{j}.sql"));
            let mut f = std::fs::File::create(&p).unwrap();
            for i in (j..n).step_by(jobs) {
                writeln!(f, "{}", per_tenant(&format!("tenant_t{i:05}"))).unwrap();
            }
            p
        })
        .collect();
    psql_sessions(url, &files)
}

pub fn bench_sql(server: &Server, sizes: &[usize], jobs: usize, runs: usize) {
    println!("| N | query | psql loop | ratio | query --format ndjson peak RSS | exec (1-row UPDATE) | psql loop | ratio | no-op exec re-run |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let db = format!("bench_sql_{n}");
        let p = fleet(server, &db, n, BIN);
        let dir = p.dir.path();
        let url = p.url.clone();
        // One row per tenant, for the UPDATE to find.
        let rows: String = (0..n)
            .map(|i| format!("INSERT INTO tenant_t{i:05}.users VALUES (1, 'x');\n"))
            .collect();
        let file = dir.join("rows.sql");
        std::fs::write(&file, rows).unwrap();
        let ok = Command::new(psql_bin())
            .args(["-X", "-q", "-d", &url, "-f"])
            .arg(&file)
            .status()
            .unwrap();
        assert!(ok.success());
        let j = jobs.to_string();
        let query = [
            "query", "--all", "-c", QUERY, "--format", "csv", "--jobs", &j,
        ];
        let ndjson = [
            "query", "--all", "-c", QUERY, "--format", "ndjson", "--jobs", &j,
        ];
        let exec = ["exec", "--all", "--again", "-c", UPDATE, "--jobs", &j];
        let (mut q, mut ql, mut e, mut el, mut rss) = (vec![], vec![], vec![], vec![], 0u64);
        let query_loop = |s: &str| format!("SET search_path TO {s}; {QUERY};");
        let exec_loop = |s: &str| format!("BEGIN; SET LOCAL search_path TO {s}; {UPDATE}; COMMIT;");
        // A/B/A: tenantctl first and last.
        for round in 0..runs {
            q.push(timed_rusage(BIN, dir, &query).0);
            ql.push(psql_loop(&url, n, jobs, dir, &query_loop));
            rss = rss.max(timed_rusage(BIN, dir, &ndjson).1);
            e.push(timed_rusage(BIN, dir, &exec).0);
            el.push(psql_loop(&url, n, jobs, dir, &exec_loop));
            if round + 1 == runs {
                q.push(timed_rusage(BIN, dir, &query).0);
                e.push(timed_rusage(BIN, dir, &exec).0);
            }
        }
        // A finished exec run again: every tenant done, nothing runs.
        let once = ["exec", "--all", "-c", UPDATE, "--jobs", &j];
        timed_rusage(BIN, dir, &once);
        let noop: Vec<Duration> = (0..runs.max(3))
            .map(|_| timed_rusage(BIN, dir, &once).0)
            .collect();
        let (q, ql, e, el) = (median(q), median(ql), median(e), median(el));
        println!(
            "| {n} | {} | {} | {:.2} | {:.1} MB | {} | {} | {:.2} | {} |",
            secs(q),
            secs(ql),
            q.as_secs_f64() / ql.as_secs_f64(),
            rss as f64 / 1024.0,
            secs(e),
            secs(el),
            e.as_secs_f64() / el.as_secs_f64(),
            secs(median(noop)),
        );
        drop(p);
        server.drop_db(&db);
    }
}
