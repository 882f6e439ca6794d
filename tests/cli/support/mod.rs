//! Test support: a throwaway PostgreSQL cluster for the whole test binary, one fresh database
//! per test, and a temp project (config + migrations) to run the real binary against.
//!
//! The cluster is started with initdb + postgres in a temp dir on a free port, trust auth, as
//! the `postgres` OS user when the tests run as root. A guardian shell stops it and deletes its
//! files when this process exits (its stdin pipe closes). Set TENANTCTL_TEST_DATABASE_URL to use
//! an existing server instead (the role needs CREATEDB).

#![allow(dead_code)]

pub mod external;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const REPO_MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

/// A running server: where to connect as a superuser.
pub struct Server {
    /// `postgres://postgres@127.0.0.1:PORT` (no database).
    pub base_url: String,
    pub port: u16,
    pub data_dir: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    /// The server options (`-o` of pg_ctl), to start it again the same way.
    start_opts: String,
    // Kept open for the life of the process: closing it stops the cluster.
    _guardian: Option<Mutex<(Child, ChildStdin)>>,
}

/// The PostgreSQL server binaries: TENANTCTL_PG_BIN, else `initdb` on PATH, else the newest
/// /usr/lib/postgresql/<ver>/bin.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TENANTCTL_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return dir;
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let ver: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((ver, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .expect("PostgreSQL server binaries not found: install postgresql (initdb, postgres) or set TENANTCTL_PG_BIN or TENANTCTL_TEST_DATABASE_URL")
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a new throwaway cluster (used once per binary, and by fault tests that need their own).
pub fn start_cluster(extra_conf: &[&str]) -> Server {
    start_cluster_with(extra_conf, "")
}

/// Like [`start_cluster`], with `setup`: shell lines run as the server's OS user after initdb
/// and before the server starts (`$dir/data` is the data directory), e.g. to put TLS
/// certificates in place and rewrite pg_hba.conf.
pub fn start_cluster_with(extra_conf: &[&str], setup: &str) -> Server {
    let bin = pg_bin_dir();
    let init = format!(
        r#""{bin}/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 || {{ cat "$dir/initdb.log" >&2; exit 1; }}"#,
        bin = bin.display()
    );
    start_server(&init, extra_conf, setup)
}

/// A hot standby of `primary` (streaming replication from a base backup), started like
/// [`start_cluster`]: a failover is `pg_ctl stop -m immediate` on the primary and
/// `pg_ctl promote` here.
pub fn start_standby(primary: &Server) -> Server {
    // pg_basebackup is a client program: beside the server's, or on PATH.
    let beside = pg_bin_dir().join("pg_basebackup");
    let bin = match beside.is_file() {
        true => beside,
        false => PathBuf::from("pg_basebackup"),
    };
    let socket = primary.data_dir.as_ref().unwrap().parent().unwrap();
    let init = format!(
        r#""{bin}" -D "$dir/data" -h {socket} -p {port} -U postgres -R -X stream --no-sync >"$dir/initdb.log" 2>&1 || {{ cat "$dir/initdb.log" >&2; exit 1; }}"#,
        bin = bin.display(),
        socket = socket.display(),
        port = primary.port,
    );
    start_server(&init, &["hot_standby=on"], "")
}

fn start_server(init: &str, extra_conf: &[&str], setup: &str) -> Server {
    let bin = pg_bin_dir();
    for attempt in 0..5 {
        let port = free_port();
        let mut conf = vec![
            "listen_addresses=127.0.0.1".to_string(),
            "max_connections=400".to_string(),
            "fsync=off".to_string(),
            "synchronous_commit=off".to_string(),
            "full_page_writes=off".to_string(),
            "shared_buffers=128MB".to_string(),
            "max_locks_per_transaction=256".to_string(),
        ];
        conf.extend(extra_conf.iter().map(|s| s.to_string()));
        let conf_args: String = conf.iter().map(|c| format!(" -c {c}")).collect();
        let script = format!(
            r#"set -e
dir=$(mktemp -d /tmp/tenantctl-test-pg.XXXXXX)
{init}
{setup}
"{bin}/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "-p {port} -k $dir{conf_args}" start >/dev/null 2>&1 || {{ cat "$dir/server.log" >&2; echo "FAILED"; rm -rf "$dir"; exit 1; }}
echo "$dir"
read _ || true
"{bin}/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
rm -rf "$dir"
"#,
            bin = bin.display()
        );
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the test cluster");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() == "FAILED" || line.trim().is_empty() {
            let _ = child.wait();
            eprintln!("test cluster on port {port} did not start (attempt {attempt}); trying another port");
            continue;
        }
        let dir = PathBuf::from(line.trim());
        let base_url = format!("postgres://postgres@127.0.0.1:{port}");
        let server = Server {
            base_url,
            port,
            data_dir: Some(dir.join("data")),
            bin_dir: Some(bin.clone()),
            start_opts: format!("-p {port} -k {}{conf_args}", dir.display()),
            _guardian: Some(Mutex::new((child, stdin))),
        };
        if wait_ready(&server.admin_url("postgres"), Duration::from_secs(30)) {
            return server;
        }
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        eprintln!("test cluster on port {port} did not start (attempt {attempt}):\n{log}");
    }
    panic!("could not start a throwaway PostgreSQL cluster");
}

pub fn wait_ready(url: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if postgres::Client::connect(url, postgres::NoTls).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl Server {
    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.base_url)
    }

    /// A superuser connection over the Unix socket (works whatever pg_hba.conf says about
    /// TCP, e.g. on a TLS-only cluster); the TCP URL for a server not started here.
    pub fn admin_url(&self, db: &str) -> String {
        match &self.data_dir {
            Some(data) => format!(
                "host={} port={} user=postgres dbname={db}",
                data.parent().unwrap().display(),
                self.port
            ),
            None => self.url(db),
        }
    }

    /// Runs pg_ctl against this cluster (as the postgres user when root): `stop`, `start`
    /// and `restart` with the options and log file it was first started with.
    pub fn pg_ctl(&self, args: &[&str]) {
        let bin = self.bin_dir.as_ref().expect("own cluster");
        let data = self.data_dir.as_ref().expect("own cluster");
        let pg_ctl = bin.join("pg_ctl");
        let log = data.parent().unwrap().join("server.log");
        let mut all: Vec<String> = vec![
            pg_ctl.display().to_string(),
            "-D".into(),
            data.display().to_string(),
            "-l".into(),
            log.display().to_string(),
            "-o".into(),
            self.start_opts.clone(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(&all);
            c
        } else {
            let mut c = Command::new(&all[0]);
            c.args(&all[1..]);
            c
        };
        let status = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running pg_ctl");
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            panic!(
                "pg_ctl {args:?} failed; server log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(g) = self._guardian.take() {
            let (mut child, stdin) = g.into_inner().unwrap();
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// The shared server for this test binary.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("TENANTCTL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            let base_url = url
                .trim_end_matches('/')
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(url.clone());
            Server {
                base_url,
                port: 0,
                data_dir: None,
                bin_dir: None,
                start_opts: String::new(),
                _guardian: None,
            }
        }
        _ => start_cluster(&[]),
    })
}

/// Two clusters with logical replication on (`wal_level = logical`), shared by the tests of
/// `tenant move`: each test moves between its own databases on them.
pub fn logical_pair() -> &'static (Server, Server) {
    static PAIR: OnceLock<(Server, Server)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let conf = [
            "wal_level=logical",
            "max_replication_slots=64",
            "max_wal_senders=64",
            "max_logical_replication_workers=64",
            "max_worker_processes=96",
        ];
        (start_cluster(&conf), start_cluster(&conf))
    })
}

/// A fresh database on `server`, named after the test.
pub fn fresh_db(server: &Server, name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let db = format!(
        "t_{}_{}_{}",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = postgres::Client::connect(&server.admin_url("postgres"), postgres::NoTls)
        .expect("connect to test server");
    admin
        .batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .expect("create test database");
    server.url(&db)
}

/// Variables of the caller's environment that would change what the binary connects to
/// (libpq's PG* conventions included): removed for every run of the binary.
pub const CLEARED_ENV: &[&str] = &[
    "DATABASE_URL",
    "TENANTCTL_DATABASE_URL",
    "TENANTCTL_CONFIG",
    "CI",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGPASSFILE",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
];

/// A temp project: tenants.toml + a migrations folder, pointing at its own database.
pub struct Project {
    pub dir: tempfile::TempDir,
    /// What tenantctl connects to (`$TEST_DB_URL` in the config).
    pub url: String,
    /// What the test itself connects to, as a superuser (the Unix socket of a cluster
    /// started here, so that a TLS-only cluster can be checked too).
    pub admin: String,
}

impl Project {
    /// A project on the shared server with a fresh database and the repo's migrations V1..=`upto`.
    pub fn new(name: &str, upto: i32) -> Project {
        Project::on(server(), name, upto)
    }

    pub fn on(server: &Server, name: &str, upto: i32) -> Project {
        let url = fresh_db(server, name);
        let db = url.rsplit('/').next().unwrap();
        let admin = server.admin_url(db);
        let dir = tempfile::tempdir().unwrap();
        let p = Project { dir, url, admin };
        std::fs::create_dir(p.migrations_dir()).unwrap();
        p.write_config("");
        p.copy_migrations(1, upto);
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn migrations_dir(&self) -> PathBuf {
        self.path().join("migrations")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("tenants.toml")
    }

    /// Writes tenants.toml with the database URL from $TEST_DB_URL and `extra` appended.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[database]\nurl = \"${{TEST_DB_URL}}\"\n[migrations]\ndir = \"migrations\"\n{extra}\n"
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Copies the repo's migrations with versions in from..=to (up and down files).
    pub fn copy_migrations(&self, from: i32, to: i32) {
        for entry in std::fs::read_dir(REPO_MIGRATIONS).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let v: i32 = name[1..name.find("__").unwrap()].parse().unwrap();
            if (from..=to).contains(&v) {
                std::fs::copy(entry.path(), self.migrations_dir().join(&name)).unwrap();
            }
        }
    }

    pub fn add_migration(&self, file: &str, sql: &str) {
        std::fs::write(self.migrations_dir().join(file), sql).unwrap();
    }

    /// The real binary, run in the project folder with its config and database.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("tenantctl").unwrap();
        c.current_dir(self.path());
        for var in CLEARED_ENV {
            c.env_remove(var);
        }
        c.env("TEST_DB_URL", &self.url)
            .timeout(Duration::from_secs(300));
        c
    }

    /// Runs the binary to completion, checks its exit code (showing both streams when it is
    /// not the expected one), and returns the output for further checks.
    pub fn run(&self, args: &[&str], code: i32) -> std::process::Output {
        let out = self.cmd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "tenantctl {args:?}\nstdout:\n{}\nstderr:\n{}",
            stdout(&out),
            stderr(&out)
        );
        out
    }

    /// Runs a `--json` command like [`Project::run`] and returns its one JSON document, after
    /// checking what every document carries: `format`, `ok` and `exit_code` agreeing with the
    /// process's exit code, and `error` (null, or `{kind, message}`).
    pub fn json(&self, args: &[&str], code: i32) -> serde_json::Value {
        let out = self.run(args, code);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tenantctl {args:?}: stdout is not one JSON document ({e}):\n{}",
                stdout(&out)
            )
        });
        assert_eq!(v["format"], 1, "{v}");
        assert_eq!(v["exit_code"], code, "{v}");
        assert_eq!(v["ok"], code == 0, "{v}");
        match &v["error"] {
            serde_json::Value::Null => {}
            e => assert!(e["kind"].is_string() && e["message"].is_string(), "{v}"),
        }
        v
    }

    /// A std Command for the binary (for tests that signal or sample while it runs).
    pub fn std_cmd(&self) -> Command {
        self.std_cmd_raw(
            assert_cmd::cargo::cargo_bin("tenantctl")
                .to_str()
                .expect("a UTF-8 path"),
        )
    }

    /// Makes the project two clusters: `a` (its own database) and `b` (a fresh database of
    /// the same server, whose URL is returned).
    pub fn two_clusters(&self, second: &str) -> String {
        let url = fresh_db(server(), second);
        self.with_cluster_b(&url);
        url
    }

    /// Makes the project two clusters: `a` (its own database) and `b` at `url`.
    pub fn with_cluster_b(&self, url: &str) {
        std::fs::write(
            self.config_path(),
            format!(
                "[migrations]\ndir = \"migrations\"\n[clusters.a]\nurl = \"{}\"\n[clusters.b]\nurl = \"{url}\"\n",
                self.url
            ),
        )
        .unwrap();
    }

    /// Another program run like the binary: in the project folder, with the same cleared
    /// environment and $TEST_DB_URL.
    pub fn std_cmd_raw(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.path());
        for var in CLEARED_ENV {
            c.env_remove(var);
        }
        c.env("TEST_DB_URL", &self.url);
        c
    }

    /// A tenant's state in the registry (`active`, `dropped`).
    pub fn tenant_state(&self, id: &str) -> String {
        self.db()
            .query_one("SELECT state FROM tenantctl.tenants WHERE id = $1", &[&id])
            .unwrap()
            .get(0)
    }

    /// Whether `schema` has a table named `table`.
    pub fn schema_has_table(&self, schema: &str, table: &str) -> bool {
        self.db()
            .query_one(
                "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
                &[&schema, &table],
            )
            .unwrap()
            .get(0)
    }

    /// A connection holding the project's fleet lock, as a running migrate would (no run row):
    /// the lock goes when the connection is dropped. The key is `LOCK_FLEET` of
    /// src/control/locks.rs (`LOCK_NAMESPACE + 1`, the control schema's name hashed).
    pub fn hold_fleet_lock(&self) -> postgres::Client {
        let mut holder = self.db();
        holder
            .batch_execute(&format!(
                "SELECT pg_advisory_lock({}, hashtext('tenantctl'))",
                0x0074_6e74 + 1
            ))
            .unwrap();
        holder
    }

    pub fn db(&self) -> postgres::Client {
        postgres::Client::connect(&self.admin, postgres::NoTls).expect("connect to test database")
    }

    /// Whether a schema of that name exists in the project's database.
    pub fn schema_exists(&self, schema: &str) -> bool {
        self.db()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .unwrap()
            .get(0)
    }

    /// Writes ids to a file in the project and returns its path.
    pub fn id_file(&self, ids: &[String]) -> PathBuf {
        let p = self.path().join("ids.txt");
        let mut f = std::fs::File::create(&p).unwrap();
        for id in ids {
            writeln!(f, "{id}").unwrap();
        }
        p
    }

    /// Creates `n` tenants t0000.. with one command.
    pub fn create_tenants(&self, n: usize) -> Vec<String> {
        let ids: Vec<String> = (0..n).map(|i| format!("t{i:04}")).collect();
        let file = self.id_file(&ids);
        self.cmd()
            .args(["tenant", "create", "--from-file"])
            .arg(&file)
            .assert()
            .success();
        ids
    }

    /// A fingerprint of everything in the database outside pg_catalog: schemas, relations,
    /// columns, functions, and the control tables' rows. Equal before/after = nothing changed.
    pub fn fingerprint(&self) -> String {
        fingerprint_at(&self.admin)
    }

    /// Registry version per tenant.
    pub fn versions(&self) -> std::collections::BTreeMap<String, Option<i32>> {
        self.db()
            .query("SELECT id, version FROM tenantctl.tenants", &[])
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Versions in a schema's own history table.
    pub fn history(&self, schema: &str) -> Vec<i32> {
        self.db()
            .query(
                &format!(
                    "SELECT version FROM \"{schema}\".refinery_schema_history ORDER BY version"
                ),
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect()
    }
}

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends a signal (e.g. "INT", "KILL") to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid}");
}

/// Waits for a child with a deadline; panics (after killing it) when it runs over.
pub fn wait_with_deadline(mut child: Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tenantctl ran over {limit:?}\nstdout:\n{}\nstderr:\n{}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child with a deadline and asserts it exited 0.
pub fn wait_ok(child: Child, limit: Duration) -> std::process::Output {
    let out = wait_with_deadline(child, limit);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Waits for a child with a deadline, asserts it exited 0 and returns its stdout as JSON.
pub fn wait_json(child: Child, limit: Duration) -> serde_json::Value {
    let out = wait_ok(child, limit);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(&out)))
}

impl Project {
    /// Starts the binary in the background with piped output.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.std_cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Every tenant schema: (history rows, distinct versions, max version). Exactly-once
    /// means rows == distinct == the expected count everywhere.
    pub fn history_counts(&self) -> Vec<(String, i64, i64, Option<i32>)> {
        history_counts_at(&self.admin)
    }

    /// Asserts every tenant is at `version` with exactly one history row per version, and the
    /// registry agrees.
    pub fn assert_converged(&self, version: i32) {
        let counts = self.history_counts();
        assert!(!counts.is_empty());
        for (schema, rows, distinct, max) in &counts {
            assert_eq!(
                (*rows, *distinct, *max),
                (version as i64, version as i64, Some(version)),
                "{schema}: history rows, distinct versions, max version"
            );
        }
        let versions = self.versions();
        assert!(
            versions.values().all(|v| *v == Some(version)),
            "registry: {versions:?}"
        );
    }

    /// The newest run's state in the ledger.
    pub fn last_run_state(&self) -> (i64, String) {
        let r = self
            .db()
            .query_one(
                "SELECT id, state FROM tenantctl.runs ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    }
}

/// Every registered tenant schema in the database at `url`: (schema, history rows, distinct
/// versions, max version).
pub fn history_counts_at(url: &str) -> Vec<(String, i64, i64, Option<i32>)> {
    let mut db = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    let schemas: Vec<String> = db
        .query("SELECT schema_name FROM tenantctl.tenants ORDER BY 1", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    schemas
        .into_iter()
        .map(|s| {
            let r = db
                .query_one(
                    &format!("SELECT count(*), count(DISTINCT version), max(version) FROM \"{s}\".refinery_schema_history"),
                    &[],
                )
                .unwrap();
            (s, r.get(0), r.get(1), r.get(2))
        })
        .collect()
}

/// The registry, runs and ledger rows of a database's control schema ("" when it has none).
pub fn ledger_fingerprint(db: &mut postgres::Client) -> String {
    let has_control: bool = db
        .query_one("SELECT to_regclass('tenantctl.runs') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    let mut out = String::new();
    if has_control {
        for q in [
            "SELECT coalesce(string_agg(t::text, ';' ORDER BY id), '') FROM tenantctl.tenants t",
            "SELECT coalesce(string_agg(r::text, ';' ORDER BY id), '') FROM tenantctl.runs r",
            "SELECT coalesce(string_agg(rs::text, ';' ORDER BY run_id, tenant_id), '') FROM tenantctl.run_schemas rs",
        ] {
            let v: String = db.query_one(q, &[]).unwrap().get(0);
            out.push_str(&v);
            out.push('\n');
        }
    }
    out
}

/// Starts `args`, sends SIGINT after `delay`, and checks the run ends with exit code 130.
/// Returns the output and how long it took to stop after the signal.
pub fn interrupt_after(
    p: &Project,
    args: &[&str],
    delay: Duration,
) -> (std::process::Output, Duration) {
    let child = p.spawn(args);
    std::thread::sleep(delay);
    let t0 = Instant::now();
    signal(child.id(), "INT");
    let out = wait_with_deadline(child, Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    (out, t0.elapsed())
}

/// Every registered tenant schema at `url` has exactly one row in `table`: a migration that
/// inserts one row was applied exactly once everywhere.
pub fn assert_one_row_everywhere(url: &str, table: &str) {
    let mut db = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    for (schema, ..) in history_counts_at(url) {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM \"{schema}\".{table}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{schema}.{table} at {url}");
    }
}

/// A fingerprint of everything in the database at `url` outside pg_catalog: schemas,
/// relations, columns, functions, and the control tables' rows. Equal before/after = nothing
/// changed.
pub fn fingerprint_at(url: &str) -> String {
    let mut db = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    let mut out = String::new();
    for q in [
        "SELECT string_agg(nspname::text, ',' ORDER BY nspname) FROM pg_namespace",
        "SELECT string_agg(x, ',' ORDER BY x) FROM (SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text AS x FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')) s",
        "SELECT string_agg(x, ',' ORDER BY x) FROM (SELECT table_schema || '.' || table_name || '.' || column_name || ':' || data_type AS x FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')) s",
        "SELECT string_agg(x, ',' ORDER BY x) FROM (SELECT n.nspname || '.' || p.proname || ':' || md5(p.prosrc) AS x FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')) s",
    ] {
        let v: Option<String> = db.query_one(q, &[]).unwrap().get(0);
        out.push_str(&v.unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&ledger_fingerprint(&mut db));
    out
}
