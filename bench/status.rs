//! `--status`: what reading the fleet costs as it grows. At each N (default 1,000 and
//! 50,000) tenants of a one-migration set: plain `status`, `status --json`, `tenant list` and
//! a no-op `migrate --all`, median wall time and the process's peak memory (the kernel's
//! `ru_maxrss` for the child, exact however short it runs).
//!
//!   cargo bench --bench fleet -- --status                    # N = 1,000 and 50,000
//!   cargo bench --bench fleet -- --status --n 1000,10000 --runs 7
//!   cargo bench --bench fleet -- --status --before PATH      # also an older tenantctl's
//!                                                            # no-op migrate, A/B/A
//!
//! With `--before PATH` (a tenantctl binary built from an older commit), the no-op migrate of
//! that binary and of this one alternate A/B/A/B… on two fleets of the same size (an older
//! binary may not read a newer control schema), and the ratio of the medians is printed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{median, secs, Project, Server, BIN};

/// Runs `bin args` in `dir` to completion: wall time and peak RSS (KiB) from wait4(2).
// wait4 reaps the child (std's wait would not return its rusage).
#[allow(clippy::zombie_processes)]
pub(crate) fn timed_rusage(bin: &str, dir: &Path, args: &[&str]) -> (Duration, u64) {
    let t0 = Instant::now();
    let child = Command::new(bin)
        .current_dir(dir)
        .args(args)
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be written into by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child, not waited for elsewhere; both pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = t0.elapsed();
    assert!(pid > 0, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "tenantctl {args:?} failed (status {status})"
    );
    (elapsed, usage.ru_maxrss as u64)
}

struct Measure {
    time: Duration,
    kib: u64,
}

fn measure(bin: &str, dir: &Path, args: &[&str], runs: usize) -> Measure {
    let mut kib = 0;
    let times = (0..runs)
        .map(|_| {
            let (t, k) = timed_rusage(bin, dir, args);
            kib = kib.max(k);
            t
        })
        .collect();
    Measure {
        time: median(times),
        kib,
    }
}

/// A database with `n` tenants created by `bin`, at V1 of a one-migration set.
pub(crate) fn fleet(server: &Server, db: &str, n: usize, bin: &str) -> Project {
    let url = server.fresh_db(db);
    let p = Project::new(&url, 4);
    std::fs::write(
        p.dir.path().join("migrations/V1__create_users.sql"),
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n",
    )
    .unwrap();
    let ids: String = (0..n).map(|i| format!("t{i:05}\n")).collect();
    std::fs::write(p.dir.path().join("ids.txt"), ids).unwrap();
    let t0 = Instant::now();
    timed_rusage(
        bin,
        p.dir.path(),
        &["tenant", "create", "--from-file", "ids.txt"],
    );
    eprintln!("  {n} tenants created in {}", secs(t0.elapsed()));
    p
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

pub fn bench_status(server: &Server, sizes: &[usize], runs: usize, before: Option<&str>) {
    println!("| N | status | peak | status --json | peak | tenant list | peak | tenant list --json | peak | no-op migrate | peak |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &n in sizes {
        let p = fleet(server, &format!("bench_status_{n}"), n, BIN);
        let dir = p.dir.path();
        let status = measure(BIN, dir, &["status"], runs);
        let json = measure(BIN, dir, &["status", "--json"], runs);
        let list = measure(BIN, dir, &["tenant", "list"], runs);
        let list_json = measure(BIN, dir, &["tenant", "list", "--json"], runs);
        let noop = measure(BIN, dir, &["migrate", "--all"], runs);
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            secs(status.time),
            mb(status.kib),
            secs(json.time),
            mb(json.kib),
            secs(list.time),
            mb(list.kib),
            secs(list_json.time),
            mb(list_json.kib),
            secs(noop.time),
            mb(noop.kib)
        );
        if let Some(old) = before {
            let q = fleet(server, &format!("bench_status_{n}_before"), n, old);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            // A/B/A/B…: both binaries see the same machine noise.
            for _ in 0..runs.max(5) {
                a.push(timed_rusage(old, q.dir.path(), &["migrate", "--all"]).0);
                b.push(timed_rusage(BIN, dir, &["migrate", "--all"]).0);
            }
            a.push(timed_rusage(old, q.dir.path(), &["migrate", "--all"]).0);
            rows.push((n, median(a), median(b)));
            drop(q);
            server.drop_db(&format!("bench_status_{n}_before"));
        }
        drop(p);
        server.drop_db(&format!("bench_status_{n}"));
    }
    if !rows.is_empty() {
        println!("\n| N | no-op migrate, before | now | now / before |");
        println!("|---:|---:|---:|---:|");
        for (n, a, b) in rows {
            println!(
                "| {n} | {} | {} | {:.2} |",
                secs(a),
                secs(b),
                b.as_secs_f64() / a.as_secs_f64()
            );
        }
    }
}

/// `--before OLD --migrate`: a full migrate of N empty tenants (the example set), this binary
/// against an older one, alternating A/B/A/B… on two databases (rolled back to nothing
/// before each), median of each and the ratio.
pub fn bench_migrate_ab(server: &Server, n: usize, runs: usize, before: &str) {
    let fleets: Vec<(String, Project)> = [(before, "a"), (BIN, "b")]
        .iter()
        .map(|(bin, tag)| {
            let url = server.fresh_db(&format!("bench_ab_{tag}"));
            let p = Project::new(&url, 4);
            let ids: String = (0..n).map(|i| format!("t{i:05}\n")).collect();
            std::fs::write(p.dir.path().join("ids.txt"), ids).unwrap();
            timed_rusage(
                bin,
                p.dir.path(),
                &["tenant", "create", "--from-file", "ids.txt"],
            );
            p.set_migrations(true);
            (bin.to_string(), p)
        })
        .collect();
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..runs.max(5) * 2 + 1 {
        let k = round % 2;
        let (bin, p) = &fleets[k];
        timed_rusage(bin, p.dir.path(), &["rollback", "--to", "0", "--all"]);
        times[k].push(timed_rusage(bin, p.dir.path(), &["migrate", "--all"]).0);
    }
    let [a, b] = times.map(median);
    println!("\n| N | migrate, before | now | now / before |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {n} | {} | {} | {:.3} |",
        secs(a),
        secs(b),
        b.as_secs_f64() / a.as_secs_f64()
    );
    drop(fleets);
    server.drop_db("bench_ab_a");
    server.drop_db("bench_ab_b");
}
