//! `--observe`: what watching a run costs. A migrate of N tenants (the example set) with
//! nothing watching (`--slow-after 0s`) against the same with the event stream, the metrics
//! file and the slow-tenant watch (`--events`, `--metrics-file`, `--slow-after 60s`), in the
//! same run, alternating A/B/A, each from the same rolled-back, settled fleet.
//!
//!   cargo bench --bench fleet -- --observe [--n 1000] [--runs 3]

use crate::{empty_fleet, median, secs, settle, Server};

pub fn bench_observe(server: &Server, n: usize, jobs: usize, runs: usize) {
    let (url, p) = empty_fleet(server, "bench_observe", n, jobs);
    let plain = ["migrate", "--all", "--slow-after", "0s"];
    let watched = [
        "migrate",
        "--all",
        "--events",
        "events.ndjson",
        "--metrics-file",
        "run.prom",
        "--slow-after",
        "60s",
    ];
    // The first DDL into a fresh database's catalogs is the slowest: paid untimed.
    p.timed(&plain);
    let (mut a, mut b) = (vec![], vec![]);
    for round in 0..runs * 2 + 1 {
        p.timed(&["rollback", "--to", "0", "--all"]);
        settle(&url);
        match round % 2 {
            0 => a.push(p.timed(&plain).0),
            _ => b.push(p.timed(&watched).0),
        }
    }
    let lines = std::fs::read_to_string(p.dir.path().join("events.ndjson"))
        .map_or(0, |t| t.lines().count());
    let (a, b) = (median(a), median(b));
    println!(
        "| N | migrate | with --events, --metrics-file, --slow-after | ratio | events written |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {} | {} | {:.3} | {lines} |",
        secs(a),
        secs(b),
        b.as_secs_f64() / a.as_secs_f64()
    );
}
