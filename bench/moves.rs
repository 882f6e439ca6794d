//! `--move`: `tenant move` of one tenant of `--rows` rows (default 1,000,000, the copy
//! benchmark's 5 tables) back and forth between two throwaway clusters with `wal_level =
//! logical`, `--runs` times (default 10), while a writer inserts into the tenant every 5 ms
//! on whichever cluster holds it (the source until its schema is gone, then the target):
//!
//! - the writer's longest wait in each move (its longest gap between two commits, less its
//!   own 5 ms pause): the write pause as the application sees it, at the start of the stream
//!   and at the cutover; p99 (the worst of 10) and the median;
//! - tenantctl's own account of the pauses (`start_pause_ms`, `pause_ms`);
//! - the first copy (schema made by the migrations, rows, indexes, keys) against
//!   `pg_dump -Fc -n | pg_restore` of the same schema between the same clusters, A/B/A/B…;
//! - the whole move.
//!
//!   cargo bench --bench fleet -- --move [--rows 1000000] [--runs 10]

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::copy::{fill_sql, SCHEMA};
use crate::{median, secs, Project, Server, BIN};

const LOGICAL: &str =
    "-c wal_level=logical -c max_connections=200 -c max_replication_slots=20 -c max_wal_senders=20";

/// Inserts every 5 ms into the tenant wherever it lives; the commit times.
fn writer(
    urls: [String; 2],
    start_on: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Instant>> {
    std::thread::spawn(move || {
        let mut dbs: Vec<postgres::Client> = urls
            .iter()
            .map(|u| postgres::Client::connect(u, postgres::NoTls).unwrap())
            .collect();
        let (mut on, mut commits) = (start_on, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let sql = "INSERT INTO tenant_big.events (kind) VALUES ('writer')";
            match dbs[on].execute(sql, &[]) {
                Ok(_) => commits.push(Instant::now()),
                Err(e) => {
                    let text = e
                        .as_db_error()
                        .map_or(e.to_string(), |d| d.message().to_string());
                    assert!(text.contains("does not exist"), "the writer failed: {text}");
                    on = 1 - on;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        commits
    })
}

fn longest_wait(commits: &[Instant]) -> Duration {
    commits
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
        .saturating_sub(Duration::from_millis(5))
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

pub fn bench_move(rows: usize, runs: usize) {
    let (sa, sb) = (Server::start_with(LOGICAL), Server::start_with(LOGICAL));
    let (a, b) = (sa.fresh_db("bench_move"), sb.fresh_db("bench_move"));
    let p = Project::with_config(
        &a,
        &format!("[clusters.a]\nurl = \"{a}\"\n[clusters.b]\nurl = \"{b}\"\n[run]\njobs = 4\n"),
    );
    std::fs::write(p.dir.path().join("migrations/V1__shop.sql"), SCHEMA).unwrap();
    p.timed(&["--cluster", "a", "tenant", "create", "big"]);
    let t0 = Instant::now();
    p.db().batch_execute(&fill_sql("tenant_big", rows)).unwrap();
    eprintln!("  {rows} rows made in {}", secs(t0.elapsed()));
    let urls = [a.clone(), b.clone()];
    let (mut waits, mut own, mut starts, mut copies, mut totals, mut dumps) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let last: Mutex<Option<serde_json::Value>> = Mutex::new(None);
    for k in 0..runs {
        let (from, to) = if k % 2 == 0 { (0, 1) } else { (1, 0) };
        // The anchor: PostgreSQL's own tools, the same schema between the same clusters.
        let target = [&sa, &sb][to].fresh_db("bench_move_restore");
        let t = Instant::now();
        let piped = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "pg_dump -Fc -n tenant_big '{}' | pg_restore --no-owner -d '{target}'",
                urls[from]
            ))
            .status()
            .unwrap();
        assert!(piped.success());
        dumps.push(t.elapsed());
        [&sa, &sb][to].drop_db("bench_move_restore");
        // The move, under the writer.
        let stop = Arc::new(AtomicBool::new(false));
        let w = writer(urls.clone(), from, stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let out = Command::new(BIN)
            .current_dir(p.dir.path())
            .args([
                "tenant",
                "move",
                "big",
                "--to",
                ["a", "b"][to],
                "--keep-source",
                "0s",
                "--json",
            ])
            .output()
            .unwrap();
        totals.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let commits = w.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let d = |key: &str| Duration::from_millis(doc[key].as_u64().unwrap_or(0));
        waits.push(longest_wait(&commits));
        own.push(d("pause_ms"));
        starts.push(d("start_pause_ms"));
        copies.push(d("first_copy_ms"));
        eprintln!(
            "  move {k}: {} in all, first copy {}, writer's longest wait {}, pauses (tenantctl) start {} cutover {}; pg_dump | pg_restore {}",
            secs(totals[k]),
            secs(copies[k]),
            ms(waits[k]),
            ms(starts[k]),
            ms(own[k]),
            secs(dumps[k])
        );
        *last.lock().unwrap() = Some(doc);
    }
    let worst = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    // p99 of 10 moves is the worst of them.
    println!("| {rows} rows, 5 tables, {runs} moves | median | p99 (worst) |");
    println!("|---|---:|---:|");
    println!(
        "| writer's longest wait per move (inserts every 5 ms) | {} | {} |",
        ms(median(waits.clone())),
        ms(worst(&waits))
    );
    println!(
        "| tenantctl's cutover pause (tables held) | {} | {} |",
        ms(median(own.clone())),
        ms(worst(&own))
    );
    println!(
        "| tenantctl's start pause (slot made under SHARE locks) | {} | {} |",
        ms(median(starts.clone())),
        ms(worst(&starts))
    );
    let (copy, dump) = (median(copies.clone()), median(dumps.clone()));
    println!(
        "| first copy / `pg_dump -Fc -n \\| pg_restore` | {} / {} (throughput **{:.2}×**) | |",
        secs(copy),
        secs(dump),
        dump.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "| whole move | {} | {} |",
        secs(median(totals.clone())),
        secs(worst(&totals))
    );
}
