//! Fleet benchmark: tenantctl against the physical limit measured in the same run on the same
//! server (the same SQL fed by `psql` in J sessions, one transaction per schema with
//! `SET LOCAL search_path`, no bookkeeping). Prints a Markdown table.
//!
//!   cargo bench --bench fleet                 # N = 1,000 and 10,000
//!   cargo bench --bench fleet -- --quick      # N = 200 and 1,000, fewer repetitions
//!   cargo bench --bench fleet -- --n 500 --jobs 4 --runs 5 --url postgres://...
//!   cargo bench --bench fleet -- --jobs-sweep  # migrate at N = 1,000 for J = 1, 2, 4, 8, 16
//!   cargo bench --bench fleet -- --clusters 3 --n 900  # one cluster vs N spread over three
//!   cargo bench --bench fleet -- --plan --n 10000      # planning a staged rollout (dry run)
//!   cargo bench --bench fleet -- --pool --n 1000,10000 # tenant create with and without a warm pool
//!   cargo bench --bench fleet -- --status [--before OLD_BINARY]  # status, list, no-op at 1k/50k
//!   cargo bench --bench fleet -- --migrate-ab --before OLD_BINARY --n 1000  # migrate, A/B/A
//!   cargo bench --bench fleet -- --memory --n 10000    # worker backends' memory, recycled or not
//!   cargo bench --bench fleet -- --recycle 250,0 --n 10000  # the same, these worker_recycle values
//!   cargo bench --bench fleet -- --latency 0,2 --n 1000 # through a proxy adding RTT (ms), with
//!                                                      # round trips and the batched limit
//!   cargo bench --bench fleet -- --copy [--rows 1000000]  # export/import/clone vs pg_dump/pg_restore
//!   cargo bench --bench fleet -- --copy-scale [--rows 10000]  # one export at 100 vs 10,000 tenants
//!   cargo bench --bench fleet -- --move [--rows 1000000] [--runs 10]  # tenant move: write pause, first copy vs pg_dump | pg_restore
//!   cargo bench --bench fleet -- --sql [--n 1000,10000]  # query and exec vs a psql loop, A/B/A; RSS
//!   cargo bench --bench fleet -- --observe [--n 1000]  # migrate with and without --events, --metrics-file, --slow-after
//!
//! Without --url (or BENCH_DATABASE_URL) it starts a throwaway cluster with
//! scripts/throwaway-pg.sh and removes it afterwards. Timings are medians; machines are shared
//! and noisy, so the ratio to the same-run psql limit is the figure that counts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod copy;
mod moves;
mod observe;
mod proxy;
mod sql;
mod status;

const BIN: &str = env!("CARGO_BIN_EXE_tenantctl");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Opts {
    sizes: Vec<usize>,
    jobs: usize,
    runs: usize,
    url: Option<String>,
    sweep: bool,
    /// Compare one cluster with N tenants spread over this many clusters.
    clusters: usize,
    /// Time planning (dry runs) with and without waves.
    plan: bool,
    /// Time `tenant create` with and without a warm pool, and a burst of creators.
    pool: bool,
    /// Round-trip times (ms) to measure through the latency proxy.
    latency: Vec<f64>,
    /// Worker backends' memory during a migrate, for each of these `worker_recycle` values.
    memory: Vec<usize>,
    /// Time reading the fleet (status, list, no-op migrate) at each size.
    status: bool,
    /// An older tenantctl binary whose no-op migrate --status compares A/B/A.
    before: Option<String>,
    /// With --before: a full migrate of N tenants, this binary against that one, A/B/A.
    migrate_ab: bool,
    /// Export, import and clone of one tenant against pg_dump and pg_restore.
    copy: bool,
    /// One tenant's export with 100 tenants on the cluster and with 10,000.
    copy_scale: bool,
    moves: bool,
    sql: bool,
    /// Migrate with and without --events, --metrics-file and --slow-after.
    observe: bool,
    /// The rows of the copied tenant.
    rows: Option<usize>,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        sizes: vec![1000, 10_000],
        jobs: 4,
        runs: 3,
        url: std::env::var("BENCH_DATABASE_URL")
            .ok()
            .filter(|s| !s.is_empty()),
        sweep: false,
        clusters: 0,
        plan: false,
        pool: false,
        latency: Vec::new(),
        memory: Vec::new(),
        status: false,
        before: None,
        migrate_ab: false,
        copy: false,
        copy_scale: false,
        moves: false,
        sql: false,
        observe: false,
        rows: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = |i: usize| args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--quick" => {
                o.sizes = vec![200, 1000];
                o.runs = 3;
            }
            "--n" => {
                o.sizes = val(i)
                    .split(',')
                    .map(|s| s.parse().expect("--n takes numbers"))
                    .collect();
                i += 1;
            }
            "--jobs" => {
                o.jobs = val(i).parse().expect("--jobs takes a number");
                i += 1;
            }
            "--runs" => {
                o.runs = val(i).parse().expect("--runs takes a number");
                i += 1;
            }
            "--url" => {
                o.url = Some(val(i));
                i += 1;
            }
            "--jobs-sweep" => o.sweep = true,
            "--plan" => o.plan = true,
            "--pool" => o.pool = true,
            "--status" => {
                o.status = true;
                if !args.iter().any(|a| a == "--n") {
                    o.sizes = vec![1000, 50_000];
                }
            }
            "--migrate-ab" => o.migrate_ab = true,
            "--copy" => o.copy = true,
            "--copy-scale" => o.copy_scale = true,
            "--move" => o.moves = true,
            "--sql" => o.sql = true,
            "--observe" => o.observe = true,
            "--rows" => {
                o.rows = Some(val(i).parse().expect("--rows takes a number"));
                i += 1;
            }
            "--before" => {
                o.before = Some(val(i));
                i += 1;
            }
            "--memory" => o.memory = vec![0, 250],
            "--recycle" => {
                o.memory = val(i)
                    .split(',')
                    .map(|s| s.parse().expect("--recycle takes numbers of schemas"))
                    .collect();
                i += 1;
            }
            "--latency" => {
                o.latency = val(i)
                    .split(',')
                    .map(|s| s.parse().expect("--latency takes milliseconds"))
                    .collect();
                i += 1;
            }
            "--clusters" => {
                o.clusters = val(i).parse().expect("--clusters takes a number");
                i += 1;
            }
            "--bench" => {}
            other => panic!("unknown argument {other}; see bench/fleet.rs for usage"),
        }
        i += 1;
    }
    o
}

/// A database server for the benchmark: given, or a throwaway cluster.
struct Server {
    base: String,
    dir: Option<String>,
}

impl Server {
    fn start(url: Option<String>) -> Server {
        if let Some(url) = url {
            let base = url
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(url);
            return Server { base, dir: None };
        }
        Server::start_with("-c shared_preload_libraries=pg_stat_statements -c max_connections=400")
    }

    /// A throwaway cluster started with these extra server options.
    fn start_with(extra: &str) -> Server {
        let out = Command::new(format!("{ROOT}/scripts/throwaway-pg.sh"))
            .arg("start")
            .env("TENANTCTL_PG_EXTRA", extra)
            .output()
            .expect("running scripts/throwaway-pg.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (dir, url) = line.split_once(' ').expect("DIR URL");
        let base = url.rsplit_once('/').unwrap().0.to_string();
        Server {
            base,
            dir: Some(dir.to_string()),
        }
    }

    fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.base)
    }

    fn fresh_db(&self, name: &str) -> String {
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        self.url(name)
    }

    /// Drops a benchmark's database (the next one should not share a server with its
    /// 10,000 schemas' catalog).
    fn drop_db(&self, name: &str) {
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = Command::new(format!("{ROOT}/scripts/throwaway-pg.sh"))
                .args(["stop", dir])
                .status();
        }
    }
}

fn psql_bin() -> String {
    if Command::new("psql").arg("--version").output().is_ok() {
        return "psql".into();
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("psql not found").display().to_string()
}

/// A project folder: tenants.toml and a migrations folder we can fill or empty.
struct Project {
    dir: tempfile::TempDir,
    url: String,
}

impl Project {
    fn new(url: &str, jobs: usize) -> Project {
        Project::with_config(
            url,
            &format!("[database]\nurl = \"{url}\"\n[run]\njobs = {jobs}\n"),
        )
    }

    /// A project with this tenants.toml; `url` is the database [`Project::db`] opens.
    fn with_config(url: &str, config: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("migrations")).unwrap();
        std::fs::write(dir.path().join("tenants.toml"), config).unwrap();
        Project {
            dir,
            url: url.to_string(),
        }
    }

    fn set_migrations(&self, full: bool) {
        let m = self.dir.path().join("migrations");
        for e in std::fs::read_dir(&m).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        if full {
            for e in std::fs::read_dir(format!("{ROOT}/migrations")).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), m.join(e.file_name())).unwrap();
            }
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .args(args)
            .arg("--quiet")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// Runs a command to completion; returns wall time and peak RSS in KiB.
    fn timed(&self, args: &[&str]) -> (Duration, u64) {
        let t0 = Instant::now();
        let mut child = self.cmd(args).spawn().unwrap();
        let pid = child.id();
        let mut peak = 0;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kb) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak = peak.max(kb);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let elapsed = t0.elapsed();
        if !status.success() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("tenantctl {args:?} failed: {err}");
        }
        (elapsed, peak)
    }

    fn db(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// A thread that samples the database every `every` with `sample` (its own connection to
/// `url`), folding what it sees into a `T`, until [`Sampler::finish`] returns it.
struct Sampler<T> {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<T>,
}

impl<T: Send + 'static> Sampler<T> {
    fn start(
        url: &str,
        every: Duration,
        mut seen: T,
        mut sample: impl FnMut(&mut postgres::Client, &mut T) + Send + 'static,
    ) -> Sampler<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, url) = (stop.clone(), url.to_string());
        let handle = std::thread::spawn(move || {
            let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            while !s.load(Ordering::SeqCst) {
                sample(&mut db, &mut seen);
                std::thread::sleep(every);
            }
            seen
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> T {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// How many connections tenantctl holds, at most, until finished.
fn conn_sampler(url: &str) -> Sampler<i64> {
    Sampler::start(url, Duration::from_millis(5), 0, |db, max| {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantctl'",
                &[],
            )
            .unwrap()
            .get(0);
        *max = (*max).max(n);
    })
}

/// The limit: the example set's SQL fed by psql in `jobs` sessions, one transaction per
/// schema, into `n` fresh schemas (made through `setup`, then [`settle`]d when asked). Returns
/// the wall time of the psql part only.
fn psql_limit(
    setup: &str,
    url: &str,
    n: usize,
    jobs: usize,
    work: &Path,
    settled: bool,
) -> Duration {
    reset_schemas(setup, "psql", n, true);
    if settled {
        settle(setup);
    }
    let body = example_body();
    let files: Vec<PathBuf> = (0..jobs)
        .map(|j| {
            let p = work.join(format!("psql_{j}.sql"));
            let mut f = std::fs::File::create(&p).unwrap();
            for i in (j..n).step_by(jobs) {
                writeln!(
                    f,
                    "BEGIN;\nSET LOCAL search_path TO psql_{i};\n{body}COMMIT;"
                )
                .unwrap();
            }
            p
        })
        .collect();
    psql_sessions(url, &files)
}

/// One psql session per file, all at once (unaligned output, thrown away), stopping at the
/// first error: their wall time.
fn psql_sessions(url: &str, files: &[PathBuf]) -> Duration {
    let psql = psql_bin();
    let t0 = Instant::now();
    let children: Vec<_> = files
        .iter()
        .map(|f| {
            Command::new(&psql)
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    url,
                    "-f",
                ])
                .arg(f)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "psql failed");
    }
    t0.elapsed()
}

/// The example set's up scripts, in version order, as one text.
fn example_body() -> String {
    let mut ups: Vec<(i32, String)> = std::fs::read_dir(format!("{ROOT}/migrations"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if name.ends_with(".down.sql") {
                return None;
            }
            let v: i32 = name[1..name.find("__")?].parse().ok()?;
            Some((v, std::fs::read_to_string(e.path()).ok()?))
        })
        .collect();
    ups.sort();
    ups.iter().map(|(_, sql)| format!("{sql}\n")).collect()
}

/// Clears what the measurement before left behind, so that the next starts from the same
/// state whatever came before it: the dead catalog rows of the schemas and tables it dropped
/// (which autovacuum would otherwise clear during the next one, on the same cores) and the
/// dirty buffers (which a checkpoint would write meanwhile). Needs a superuser for the
/// checkpoint; without one, the vacuum alone.
fn settle(url: &str) {
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    db.batch_execute("VACUUM").unwrap();
    let _ = db.batch_execute("CHECKPOINT");
}

/// Drops `<prefix>_0` .. `<prefix>_<n-1>`, and with `create` makes them again, empty. 100
/// schemas a transaction: a simple query of many statements is one transaction, and dropping
/// 10,000 migrated schemas in one runs out of lock slots (each object dropped is a lock).
fn reset_schemas(url: &str, prefix: &str, n: usize, create: bool) {
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let ids: Vec<usize> = (0..n).collect();
    for some in ids.chunks(100) {
        let sql: String = some
            .iter()
            .map(|i| {
                let again = if create {
                    format!(" CREATE SCHEMA {prefix}_{i};")
                } else {
                    String::new()
                };
                format!("DROP SCHEMA IF EXISTS {prefix}_{i} CASCADE;{again}\n")
            })
            .collect();
        db.batch_execute(&sql).unwrap();
    }
}

/// The history table as tenantctl makes it (`engine::history::ensure_sql`, refinery's
/// format), for the batched limit "with history".
const HISTORY_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS refinery_schema_history( version int4 PRIMARY KEY, \
                             name VARCHAR(255), applied_on VARCHAR(255), checksum VARCHAR(255));\n";

/// The rows tenantctl wrote into the history of a schema it migrated (its names, checksums
/// and times, as it writes them), as one INSERT, for the batched limit "with history".
fn history_insert(url: &str) -> String {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let schema: String = c
        .query_one(
            "SELECT quote_ident(schemaname) FROM pg_tables \
             WHERE tablename = 'refinery_schema_history' AND schemaname NOT LIKE 'batch%' LIMIT 1",
            &[],
        )
        .expect("a schema tenantctl migrated")
        .get(0);
    c.query_one(
        &format!(
            "SELECT format('INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES %s;\n', \
                    string_agg(format('(%s, %L, %L, %L)', version, name, applied_on, checksum), ', ' ORDER BY version)) \
             FROM {schema}.refinery_schema_history"
        ),
        &[],
    )
    .unwrap()
    .get(0)
}

/// The batched limit: J connections, each sending one schema's whole SQL as one simple query
/// (`BEGIN; SET LOCAL search_path ...; ...; COMMIT`): one round trip per schema, no
/// bookkeeping; `history` (from [`history_insert`]): and the schema's history table made
/// and filled in the same message (what refinery's format costs the server, whoever sends
/// it). `url` is where the work goes (the proxy, say); `setup` where the fresh schemas are
/// made (then [`settle`]d when asked).
fn batched_limit(
    setup: &str,
    url: &str,
    (n, jobs): (usize, usize),
    settled: bool,
    history: Option<&str>,
) -> Duration {
    reset_schemas(setup, "batch", n, true);
    if settled {
        settle(setup);
    }
    let (before, after) = history.map_or(("", ""), |rows| (HISTORY_TABLE, rows));
    let body = Arc::new(format!("{before}{}\n{after}", example_body()));
    let clients: Vec<postgres::Client> = (0..jobs)
        .map(|_| postgres::Client::connect(url, postgres::NoTls).unwrap())
        .collect();
    let t0 = Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(j, mut c)| {
            let body = body.clone();
            std::thread::spawn(move || {
                for i in (j..n).step_by(jobs) {
                    c.batch_execute(&format!(
                        "BEGIN; SET LOCAL search_path TO batch_{i};\n{body}COMMIT;"
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    t0.elapsed()
}

/// tenantctl, the psql limit and the batched limit (without and with the history table)
/// through a proxy that adds each RTT, in the same run on the same server, with the round
/// trips the proxy counted.
fn bench_latency(server: &Server, o: &Opts) {
    let n = *o.sizes.first().unwrap();
    let j = o.jobs;
    println!("N = {n}, J = {j}, through a proxy adding the RTT (half each way)\n");
    println!("| RTT | migrate | psql limit | ratio | batched limit | ratio | batched + history | ratio | round trips per schema: tenantctl / psql / batched | no-op migrate | no-op round trips |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &rtt in &o.latency {
        let (url, p) = empty_fleet(server, &format!("bench_rtt_{}", (rtt * 10.0) as u64), n, j);
        let proxy = proxy::Proxy::start(&url, Duration::from_secs_f64(rtt / 2000.0));
        let via = proxy.url(&url);
        std::fs::write(
            p.dir.path().join("tenants.toml"),
            format!("[database]\nurl = \"{via}\"\n[run]\njobs = {j}\n"),
        )
        .unwrap();
        // The first DDL into a fresh database's catalogs is slower than any after (measured:
        // 2.8 s against 0.8 s for 200 schemas): one untimed migrate and rollback first, so
        // that tenantctl, measured first, is not the one that pays it.
        p.timed(&["migrate", "--all"]);
        let history = history_insert(&url);
        p.timed(&["rollback", "--to", "0", "--all"]);
        proxy.take_trips();
        // The four are measured in turn, `runs` times, and each reported as its median, each
        // starting [`settle`]d: otherwise each paid for the one before it (measured at
        // N = 1,000: tenantctl, timed right after the batched limit's thousand dropped
        // schemas, ran 1-3 s slower at 2 ms than at 0 ms where its round trips account for
        // 0.5 s; settled, 0.36 s). Each measurement writes into catalog space the one before
        // freed (rolled back, dropped).
        let (mut ours, mut noop, mut limit, mut batched) = (vec![], vec![], vec![], vec![]);
        let mut with_history = vec![];
        let (mut ours_trips, mut noop_trips, mut psql_trips, mut batched_trips) = (0, 0, 0, 0);
        for _ in 0..o.runs {
            settle(&url);
            ours.push(p.timed(&["migrate", "--all"]).0);
            ours_trips = proxy.take_trips();
            noop.push(p.timed(&["migrate", "--all"]).0);
            noop_trips = proxy.take_trips();
            p.timed(&["rollback", "--to", "0", "--all"]);
            proxy.take_trips();
            limit.push(psql_limit(&url, &via, n, j, p.dir.path(), true));
            psql_trips = proxy.take_trips();
            reset_schemas(&url, "psql", n, false);
            batched.push(batched_limit(&url, &via, (n, j), true, None));
            batched_trips = proxy.take_trips();
            with_history.push(batched_limit(&url, &via, (n, j), true, Some(&history)));
            proxy.take_trips();
            reset_schemas(&url, "batch", n, false);
        }
        let (ours, noop, limit, batched) =
            (median(ours), median(noop), median(limit), median(batched));
        let with_history = median(with_history);
        let per = |t: u64| t as f64 / n as f64;
        println!(
            "| {rtt} ms | {} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {:.2} / {:.2} / {:.2} | {} | {noop_trips} |",
            secs(ours),
            secs(limit),
            ours.as_secs_f64() / limit.as_secs_f64(),
            secs(batched),
            ours.as_secs_f64() / batched.as_secs_f64(),
            secs(with_history),
            ours.as_secs_f64() / with_history.as_secs_f64(),
            per(ours_trips),
            per(psql_trips),
            per(batched_trips),
            secs(noop),
        );
    }
    println!(
        "\nRound trips include connecting (2 per connection: the TLS request, then the startup), not the goodbye (Terminate: nothing answers it)."
    );
}

/// The largest memory of any backend of `url`'s database other than the sampler's own, seen
/// every 100 ms until finished: (PSS, private) in KiB, from /proc/PID/smaps_rollup (the server
/// runs on this machine; reading another user's needs root).
fn mem_sampler(url: &str) -> Sampler<(u64, u64)> {
    Sampler::start(
        url,
        Duration::from_millis(100),
        (0, 0),
        |db, (pss, private)| {
            let pids: Vec<i32> = db
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            for pid in pids {
                let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
                    continue;
                };
                let kib = |key: &str| -> u64 {
                    text.lines()
                        .find_map(|l| l.strip_prefix(key))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        .unwrap_or(0)
                };
                *pss = (*pss).max(kib("Pss:"));
                *private = (*private).max(kib("Private_Clean:") + kib("Private_Dirty:"));
            }
        },
    )
}

/// Migrating N empty tenants with worker connections never replaced and replaced every K
/// schemas (`[run] worker_recycle`): time and the largest worker backend.
fn bench_memory(server: &Server, o: &Opts) {
    let n = *o.sizes.last().unwrap();
    let j = o.jobs;
    println!("N = {n}, J = {j}: migrate --all of the example set into empty tenants\n");
    println!("| worker_recycle | migrate | largest worker backend: PSS | private |");
    println!("|---:|---:|---:|---:|");
    let mut first = None;
    for &recycle in &o.memory {
        let (url, p) = empty_fleet(server, &format!("bench_mem_{recycle}"), n, j);
        std::fs::write(
            p.dir.path().join("tenants.toml"),
            format!("[database]\nurl = \"{url}\"\n[run]\njobs = {j}\nworker_recycle = {recycle}\n"),
        )
        .unwrap();
        let sampler = mem_sampler(&url);
        let (t, _) = p.timed(&["migrate", "--all"]);
        let (pss, private) = sampler.finish();
        let base = *first.get_or_insert(t);
        println!(
            "| {} | {} ({:.2}) | {:.0} MB | {:.0} MB |",
            if recycle == 0 {
                "0 (never)".to_string()
            } else {
                recycle.to_string()
            },
            secs(t),
            t.as_secs_f64() / base.as_secs_f64(),
            pss as f64 / 1024.0,
            private as f64 / 1024.0
        );
        drop(p);
        server.drop_db(&format!("bench_mem_{recycle}"));
    }
}

/// A fresh database with `n` registered tenants whose schemas are empty, and the example set
/// in place to migrate them.
fn empty_fleet(server: &Server, db: &str, n: usize, jobs: usize) -> (String, Project) {
    let url = server.fresh_db(db);
    let p = Project::new(&url, jobs);
    register_empty(&p, n);
    (url, p)
}

/// Registers `n` tenants with empty schemas (wherever the project places them), then puts
/// the example set in place to migrate them.
fn register_empty(p: &Project, n: usize) {
    let ids: String = (0..n).map(|i| format!("t{i:05}\n")).collect();
    std::fs::write(p.dir.path().join("ids.txt"), ids).unwrap();
    p.set_migrations(false);
    p.timed(&["tenant", "create", "--from-file", "ids.txt"]);
    p.set_migrations(true);
}

/// The median of `runs` timings of `migrate`, rolled back to empty before each.
fn migrate_median(p: &Project, runs: usize, migrate: impl Fn() -> Duration) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                p.timed(&["rollback", "--to", "0", "--all"]);
                migrate()
            })
            .collect(),
    )
}

/// N tenants on one cluster, against the same N spread over `k` clusters (each its own
/// server unless --url is given), migrated by one command and cluster by cluster.
fn bench_clusters(o: &Opts, k: usize) {
    let n = *o.sizes.last().unwrap();
    let servers: Vec<Server> = (0..k).map(|_| Server::start(o.url.clone())).collect();
    let (_, one) = empty_fleet(&servers[0], "bench_one", n, o.jobs);
    let urls: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| s.fresh_db(&format!("bench_c{i}")))
        .collect();
    let config: String = urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("[clusters.c{i}]\nurl = \"{u}\"\njobs = {}\n", o.jobs))
        .collect();
    let many = Project::with_config(&urls[0], &config);
    register_empty(&many, n);
    let t_one = migrate_median(&one, o.runs, || one.timed(&["migrate", "--all"]).0);
    let t_all = migrate_median(&many, o.runs, || many.timed(&["migrate", "--all"]).0);
    let t_each = migrate_median(&many, o.runs, || {
        (0..k)
            .map(|i| {
                many.timed(&["migrate", "--all", "--cluster", &format!("c{i}")])
                    .0
            })
            .sum()
    });
    let status = |p: &Project| median((0..o.runs).map(|_| p.timed(&["status"]).0).collect());
    println!("| N | clusters | jobs each | 1 cluster | {k} clusters, one command | {k} clusters, one by one | one command / one by one | status 1 cluster | status {k} clusters |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {k} | {} | {} | {} | {} | {:.2} | {} | {} |",
        o.jobs,
        secs(t_one),
        secs(t_all),
        secs(t_each),
        t_all.as_secs_f64() / t_each.as_secs_f64(),
        secs(status(&one)),
        secs(status(&many)),
    );
}

/// `runs` times: tenantctl migrates the empty fleet, then psql does the same work into fresh
/// schemas (the limit); between runs the fleet is rolled back to empty. Returns the medians,
/// the peak RSS in KiB and the most connections tenantctl held.
fn migrate_vs_limit(
    p: &Project,
    url: &str,
    n: usize,
    jobs: usize,
    runs: usize,
) -> (Duration, Duration, u64, i64) {
    let (mut ours, mut limit, mut rss, mut conns) = (Vec::new(), Vec::new(), 0, 0);
    for r in 0..runs {
        if r > 0 {
            p.timed(&["rollback", "--to", "0", "--all"]);
        }
        let sampler = conn_sampler(url);
        let (t, kib) = p.timed(&["migrate", "--all", "--jobs", &jobs.to_string()]);
        conns = conns.max(sampler.finish());
        rss = rss.max(kib);
        ours.push(t);
        limit.push(psql_limit(url, url, n, jobs, p.dir.path(), false));
    }
    (median(ours), median(limit), rss, conns)
}

/// Planning a staged rollout: the same dry run with and without waves, and the statements
/// the one with waves sends (none per tenant: the plan is the registry read, in memory).
fn bench_plan(server: &Server, o: &Opts) {
    println!("| N | dry run | dry run with --canary 5 --waves 10%,50%,100% | statements sent (with waves) |");
    println!("|---:|---:|---:|---:|");
    for &n in &o.sizes {
        let (_, p) = empty_fleet(server, &format!("bench_plan_{n}"), n, o.jobs);
        let plain = median(
            (0..o.runs)
                .map(|_| p.timed(&["migrate", "--all", "--dry-run"]).0)
                .collect(),
        );
        let waves_args = [
            "migrate",
            "--all",
            "--dry-run",
            "--canary",
            "5",
            "--waves",
            "10%,50%,100%",
        ];
        let waves = median((0..o.runs).map(|_| p.timed(&waves_args).0).collect());
        let mut db = p.db();
        let stmts = db
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()")
            .ok()
            .and_then(|_| {
                p.timed(&waves_args);
                db.query_one(
                    "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query NOT ILIKE '%pg_stat_statements%'",
                    &[],
                )
                .ok()
                .map(|r| r.get::<_, i64>(0))
            });
        println!(
            "| {n} | {} | {} | {} |",
            secs(plain),
            secs(waves),
            stmts.map_or("n/a".into(), |s| s.to_string())
        );
    }
}

/// `tenant create` of one tenant, process start to exit, on a fleet of N migrated tenants:
/// the median of `creates` without a pool and with a warm one (`[tenants] pool` larger than
/// `creates`, filled first). Then, on the largest fleet, a burst: `burst` creators at once
/// for `burst` ids with a pool of half that, checked (every id once, every pooled schema
/// taken once, half from the pool).
fn bench_pool(server: &Server, o: &Opts, creates: usize, burst: usize) {
    println!("| N | create 1, no pool (median of {creates}) | create 1, warm pool (median of {creates}) | pool / no pool |");
    println!("|---:|---:|---:|---:|");
    let mut last = None;
    for &n in &o.sizes {
        let (url, p) = empty_fleet(server, &format!("bench_pool_{n}"), n, o.jobs);
        p.timed(&["migrate", "--all"]);
        let cold = median(
            (0..creates)
                .map(|i| p.timed(&["tenant", "create", &format!("cold_{i}")]).0)
                .collect(),
        );
        let config = format!(
            "[database]\nurl = \"{url}\"\n[run]\njobs = {}\n[tenants]\npool = {}\n",
            o.jobs,
            creates + 5
        );
        std::fs::write(p.dir.path().join("tenants.toml"), config).unwrap();
        p.timed(&["tenant", "pool", "fill"]);
        let warm = median(
            (0..creates)
                .map(|i| p.timed(&["tenant", "create", &format!("warm_{i}")]).0)
                .collect(),
        );
        let from_pool: i64 = p
            .db()
            .query_one(
                "SELECT count(*) FROM tenantctl.run_schemas WHERE from_pool AND tenant_id LIKE 'warm\\_%'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            from_pool as usize, creates,
            "every warm create took a pooled schema"
        );
        println!(
            "| {n} | {} | {} | {:.2} |",
            secs(cold),
            secs(warm),
            warm.as_secs_f64() / cold.as_secs_f64()
        );
        last = Some(p);
    }
    let p = last.expect("a size");
    p.timed(&["tenant", "pool", "drain", "--yes"]);
    p.timed(&["tenant", "pool", "fill", "--size", &(burst / 2).to_string()]);
    let pooled: Vec<String> = pool_names(&p);
    let t0 = Instant::now();
    let children: Vec<_> = (0..burst)
        .map(|i| {
            p.cmd(&["tenant", "create", &format!("burst_{i}")])
                .spawn()
                .unwrap()
        })
        .collect();
    let failed = children
        .into_iter()
        .map(|mut c| c.wait().unwrap())
        .filter(|s| !s.success())
        .count();
    let took = t0.elapsed();
    let mut db = p.db();
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT schema_name), \
                    (SELECT count(*) FROM tenantctl.run_schemas s WHERE s.from_pool AND s.tenant_id LIKE 'burst\\_%'), \
                    (SELECT count(*) FROM tenantctl.run_schemas s WHERE s.tenant_id LIKE 'burst\\_%'), \
                    (SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)) \
             FROM tenantctl.tenants WHERE id LIKE 'burst\\_%' AND state = 'active'",
            &[&pooled],
        )
        .unwrap();
    let (tenants, schemas, from_pool, ledger, left): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    println!(
        "\n{burst} simultaneous `tenant create` processes, pool of {}: {failed} failed, {tenants} tenants ({schemas} distinct schemas, {ledger} ledger rows), {from_pool} from the pool, {left} pooled schema(s) left under their pool names; {}",
        burst / 2,
        secs(took)
    );
    assert_eq!(
        (failed, tenants, schemas, ledger, from_pool, left),
        (
            0,
            burst as i64,
            burst as i64,
            burst as i64,
            (burst / 2) as i64,
            0
        ),
        "the burst"
    );
}

/// The pool's schema names now.
fn pool_names(p: &Project) -> Vec<String> {
    p.db()
        .query("SELECT schema_name FROM tenantctl.pool", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Statements per migrated schema from pg_stat_statements, when the server has it.
fn statements_per_schema(p: &Project, n: usize) -> Option<f64> {
    let mut db = p.db();
    db.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .ok()?;
    db.batch_execute("SELECT pg_stat_statements_reset()").ok()?;
    p.timed(&["migrate", "--all"]);
    let calls: i64 = db
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query NOT ILIKE '%pg_stat_statements%'",
            &[],
        )
        .ok()?
        .get(0);
    Some(calls as f64 / n as f64)
}

struct Row {
    n: usize,
    migrate: Duration,
    limit: Duration,
    noop: Duration,
    status: Duration,
    status_json: Duration,
    create_one: Duration,
    create_1000: Duration,
    rss_kib: u64,
    max_conns: i64,
    stmts: Option<f64>,
}

fn bench_size(server: &Server, n: usize, jobs: usize, runs: usize) -> Row {
    let (url, p) = empty_fleet(server, &format!("bench_{n}"), n, jobs);
    let (migrate, limit, mut rss, max_conns) = migrate_vs_limit(&p, &url, n, jobs, runs);
    let noop = median(
        (0..runs)
            .map(|_| p.timed(&["migrate", "--all"]).0)
            .collect(),
    );
    let status = median((0..runs).map(|_| p.timed(&["status"]).0).collect());
    let status_json = median(
        (0..runs)
            .map(|_| p.timed(&["status", "--json"]).0)
            .collect(),
    );
    let create_one = median(
        (0..runs.max(5))
            .map(|i| p.timed(&["tenant", "create", &format!("one_{i}")]).0)
            .collect(),
    );
    let bulk: String = (0..1000).map(|i| format!("bulk_{i}\n")).collect();
    std::fs::write(p.dir.path().join("bulk.txt"), bulk).unwrap();
    let (create_1000, kib) = p.timed(&["tenant", "create", "--from-file", "bulk.txt"]);
    rss = rss.max(kib);
    // Counting statements needs one more full migrate: only where that is cheap.
    let stmts = if n <= 2000 {
        p.timed(&["rollback", "--to", "0", "--all"]);
        statements_per_schema(&p, n + 1000 + runs.max(5))
    } else {
        None
    };
    Row {
        n,
        migrate,
        limit,
        noop,
        status,
        status_json,
        create_one,
        create_1000,
        rss_kib: rss,
        max_conns,
        stmts,
    }
}

/// Whether `--n` was given.
fn args_has_n() -> bool {
    std::env::args().any(|a| a == "--n")
}

fn main() {
    let o = parse_args();
    let server = Server::start(o.url.clone());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "tenantctl fleet benchmark: {cpus} CPU(s), jobs {}, median of {} run(s)\n",
        o.jobs, o.runs
    );
    if o.clusters > 0 {
        bench_clusters(&o, o.clusters);
        return;
    }
    if o.plan {
        bench_plan(&server, &o);
        return;
    }
    if o.copy {
        copy::bench_copy(&server, o.rows.unwrap_or(1_000_000), o.runs);
        return;
    }
    if o.sql {
        let sizes = if args_has_n() {
            o.sizes.clone()
        } else {
            vec![1000, 10_000]
        };
        sql::bench_sql(&server, &sizes, o.jobs, o.runs);
        return;
    }
    if o.observe {
        let n = if args_has_n() { o.sizes[0] } else { 1000 };
        observe::bench_observe(&server, n, o.jobs, o.runs);
        return;
    }
    if o.moves {
        moves::bench_move(o.rows.unwrap_or(1_000_000), o.runs);
        return;
    }
    if o.copy_scale {
        copy::bench_copy_scale(&server, o.rows.unwrap_or(10_000), o.runs);
        return;
    }
    if o.pool {
        bench_pool(&server, &o, 20, 100);
        return;
    }
    if o.status {
        status::bench_status(&server, &o.sizes, o.runs, o.before.as_deref());
    }
    if let (true, Some(before)) = (o.migrate_ab, o.before.as_deref()) {
        status::bench_migrate_ab(&server, o.sizes[0], o.runs, before);
    }
    if o.status || o.migrate_ab {
        return;
    }
    if !o.latency.is_empty() {
        bench_latency(&server, &o);
        return;
    }
    if !o.memory.is_empty() {
        bench_memory(&server, &o);
        return;
    }
    if o.sweep {
        let n = *o.sizes.last().unwrap();
        println!("| jobs | migrate N={n} | psql limit | ratio |");
        println!("|---:|---:|---:|---:|");
        for j in [1, 2, 4, 8, 16] {
            let (url, p) = empty_fleet(&server, "bench_sweep", n, j);
            let (a, b, _, _) = migrate_vs_limit(&p, &url, n, j, o.runs);
            println!(
                "| {j} | {} | {} | {:.2} |",
                secs(a),
                secs(b),
                a.as_secs_f64() / b.as_secs_f64()
            );
        }
        return;
    }
    let rows: Vec<Row> = o
        .sizes
        .iter()
        .map(|n| bench_size(&server, *n, o.jobs, o.runs))
        .collect();
    println!("| N | migrate | psql limit | ratio | no-op migrate | status | status --json | create 1 | create 1,000 | peak RSS | max conns | statements/schema |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {:.1} MB | {} | {} |",
            r.n,
            secs(r.migrate),
            secs(r.limit),
            r.migrate.as_secs_f64() / r.limit.as_secs_f64(),
            secs(r.noop),
            secs(r.status),
            secs(r.status_json),
            secs(r.create_one),
            secs(r.create_1000),
            r.rss_kib as f64 / 1024.0,
            r.max_conns,
            r.stmts.map_or("n/a".into(), |s| format!("{s:.1}")),
        );
    }
    if rows.len() >= 2 {
        let (a, b) = (&rows[0], &rows[rows.len() - 1]);
        let k = b.n as f64 / a.n as f64;
        let g = |x: Duration, y: Duration| y.as_secs_f64() / x.as_secs_f64();
        println!(
            "\nscale {}→{} (×{k:.0} tenants): migrate ×{:.1}, psql limit ×{:.1}, no-op ×{:.1}, status ×{:.1}, peak RSS ×{:.1}",
            a.n,
            b.n,
            g(a.migrate, b.migrate),
            g(a.limit, b.limit),
            g(a.noop, b.noop),
            g(a.status, b.status),
            b.rss_kib as f64 / a.rss_kib.max(1) as f64
        );
    }
}
