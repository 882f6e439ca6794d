//! Connecting the way production databases are reached: TLS in every sslmode against a
//! TLS-only cluster with a CA made here, client certificates, libpq's PG* variables and
//! password file, key=value strings, hostile passwords; and PgBouncer in session and
//! transaction mode in front of a throwaway cluster.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::external::{Bouncer, Pki};
use crate::support::*;

/// The password role's password: every character a URL has to encode.
const PASSWORD: &str = "p@ss:w/rd%";
const PASSWORD_ENCODED: &str = "p%40ss%3Aw%2Frd%25";

/// Runs tenantctl with `url` given as --database-url and `env` set, checks the exit code and
/// that no form of the password appears anywhere in the output; returns stdout + stderr.
fn run_as(p: &Project, url: &str, env: &[(&str, &str)], args: &[&str], code: i32) -> String {
    let mut cmd = p.cmd();
    cmd.arg("--database-url").arg(url).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(code), "{args:?} with {url}:\n{all}");
    for leak in [PASSWORD, PASSWORD_ENCODED, "p@ss", "w/rd%"] {
        assert!(!all.contains(leak), "{leak:?} printed:\n{all}");
    }
    all
}

/// One TLS-only cluster, every way of reaching it (and of failing to).
#[test]
fn tls_in_every_mode_client_certificates_and_libpq_conventions() {
    let pki = Pki::new();
    let server = pki.tls_cluster();
    let p = Project::on(&server, "tls", 2);
    let db = p.url.rsplit('/').next().unwrap().to_string();
    p.db()
        .batch_execute(&format!(
            "CREATE ROLE pwuser LOGIN PASSWORD '{PASSWORD}'; CREATE ROLE certuser LOGIN; \
             ALTER DATABASE \"{db}\" OWNER TO pwuser; GRANT pwuser TO certuser;"
        ))
        .unwrap();
    let port = server.port;
    let ca = pki.path("ca.crt").display().to_string();
    let other_ca = pki.path("other-ca.crt").display().to_string();
    let url = |host: &str, query: &str| {
        format!("postgres://pwuser:{PASSWORD_ENCODED}@{host}:{port}/{db}?{query}")
    };
    let registered = |id: &str| -> bool {
        p.db()
            .query_opt(
                "SELECT 1 FROM tenantctl.tenants WHERE id = $1 AND state = 'active'",
                &[&id],
            )
            .unwrap()
            .is_some()
    };

    // A refused connection (TLS settings, certificates, passwords) is a configuration
    // error: exit 2, not 6 (nothing is unreachable) and not 1 (no tenant failed).
    // A server that requires TLS, asked without it.
    let out = run_as(
        &p,
        &url("localhost", "sslmode=disable"),
        &[],
        &["status"],
        2,
    );
    assert!(
        out.contains("requires TLS") && out.contains("sslmode=require"),
        "{out}"
    );

    // require: encrypted, the certificate not checked.
    run_as(
        &p,
        &url("127.0.0.1", "sslmode=require"),
        &[],
        &["tenant", "create", "t1"],
        0,
    );
    assert!(registered("t1"));
    // prefer (the default) takes TLS when offered.
    run_as(
        &p,
        &url("127.0.0.1", ""),
        &[],
        &["tenant", "create", "t2"],
        0,
    );
    assert!(registered("t2"));

    // verify-ca: the chain, not the name (127.0.0.1 is not in the certificate).
    let q = format!("sslmode=verify-ca&sslrootcert={ca}");
    run_as(
        &p,
        &url("127.0.0.1", &q),
        &[],
        &["tenant", "create", "t3"],
        0,
    );
    assert!(registered("t3"));

    // verify-full: the right host works, the wrong one is named as the problem.
    let q = format!("sslmode=verify-full&sslrootcert={ca}");
    run_as(
        &p,
        &url("localhost", &q),
        &[],
        &["tenant", "create", "t4"],
        0,
    );
    assert!(registered("t4"));
    let out = run_as(
        &p,
        &url("127.0.0.1", &q),
        &[],
        &["tenant", "create", "t5"],
        2,
    );
    assert!(out.contains("not valid for the host name"), "{out}");
    assert!(!registered("t5"));

    // A CA that did not sign the server's certificate, and the system store.
    let q = format!("sslmode=verify-full&sslrootcert={other_ca}");
    let out = run_as(&p, &url("localhost", &q), &[], &["status"], 2);
    assert!(
        out.contains("not trusted by") && out.contains("other-ca.crt"),
        "{out}"
    );
    let out = run_as(
        &p,
        &url("localhost", "sslmode=verify-full&sslrootcert=system"),
        &[],
        &["status"],
        2,
    );
    assert!(out.contains("operating system's trust store"), "{out}");
    // A root file that is not there: exit 2 before connecting.
    let q = "sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt";
    let out = run_as(&p, &url("localhost", q), &[], &["status"], 2);
    assert!(out.contains("does not exist"), "{out}");

    // Client certificates: accepted, missing, signed by a CA the server does not trust.
    let cert_url = |cert: Option<&str>| {
        let mut u = format!(
            "postgres://certuser@localhost:{port}/{db}?sslmode=verify-full&sslrootcert={ca}"
        );
        if let Some(c) = cert {
            u.push_str(&format!(
                "&sslcert={}&sslkey={}",
                pki.path(&format!("{c}.crt")).display(),
                pki.path(&format!("{c}.key")).display()
            ));
        }
        u
    };
    run_as(
        &p,
        &cert_url(Some("client")),
        &[],
        &["tenant", "create", "t6"],
        0,
    );
    assert!(registered("t6"));
    let out = run_as(&p, &cert_url(None), &[], &["status"], 2);
    assert!(out.contains("requires a client certificate"), "{out}");
    let out = run_as(&p, &cert_url(Some("stranger")), &[], &["status"], 2);
    assert!(
        out.contains("refused") && out.contains("client certificate"),
        "{out}"
    );

    // PGPASSWORD, and everything else from the environment.
    let bare = format!("postgres://pwuser@localhost:{port}/{db}?sslmode=require");
    run_as(
        &p,
        &bare,
        &[("PGPASSWORD", PASSWORD)],
        &["tenant", "create", "t7"],
        0,
    );
    assert!(registered("t7"));
    run_as(
        &p,
        "postgres://",
        &[
            ("PGHOST", "localhost"),
            ("PGPORT", &port.to_string()),
            ("PGUSER", "pwuser"),
            ("PGPASSWORD", PASSWORD),
            ("PGDATABASE", &db),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &ca),
        ],
        &["tenant", "create", "t8"],
        0,
    );
    assert!(registered("t8"));
    // A wrong password says so, and shows none.
    let out = run_as(&p, &bare, &[("PGPASSWORD", "Zx9${Qw7")], &["status"], 2);
    assert!(
        out.contains("password authentication failed") && !out.contains("Qw7"),
        "{out}"
    );

    // The password file: used at 0600; at 0644 ignored, with libpq's warning.
    let pgpass = p.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "localhost:{port}:*:pwuser:{}\n",
            PASSWORD.replace(':', "\\:")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let passfile = pgpass.display().to_string();
    run_as(
        &p,
        &bare,
        &[("PGPASSFILE", &passfile)],
        &["tenant", "create", "t9"],
        0,
    );
    assert!(registered("t9"));
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_as(&p, &bare, &[("PGPASSFILE", &passfile)], &["status"], 2);
    assert!(
        out.contains("group or world access")
            && out.contains("0600")
            && out.contains("none was given"),
        "{out}"
    );

    // key=value, anywhere a URL is accepted.
    let kv = format!(
        "host=localhost port={port} user=pwuser password='{PASSWORD}' dbname={db} sslmode=verify-full sslrootcert={ca}"
    );
    run_as(&p, &kv, &[], &["tenant", "create", "t10"], 0);
    assert!(registered("t10"));

    // A raw '@' (or ':' or '/') in a URL's password: how to write it, not the password.
    let raw = format!("postgres://pwuser:{PASSWORD}@localhost:{port}/{db}");
    let out = run_as(&p, &raw, &[], &["status"], 2);
    assert!(
        out.contains("%40") && out.contains("percent-encode"),
        "{out}"
    );

    // Short passwords that are parts of ordinary words: the words stay whole.
    for pw in ["ss", "tenant"] {
        p.db()
            .batch_execute(&format!("ALTER ROLE pwuser PASSWORD '{pw}'"))
            .unwrap();
        let short = format!("postgres://pwuser:{pw}@localhost:{port}/{db}?sslmode=require");
        let out = run_as(&p, &short, &[], &["status"], 0);
        assert!(
            out.contains("control schema tenantctl")
                && out.contains("tenants:")
                && !out.contains("***ctl"),
            "{out}"
        );
        let wrong = format!("postgres://pwuser:{pw}x@localhost:{port}/{db}?sslmode=require");
        let out = run_as(&p, &wrong, &[], &["status"], 2);
        assert!(
            out.contains("password authentication failed") && !out.contains("pa***word"),
            "{out}"
        );
    }
    p.db()
        .batch_execute(&format!("ALTER ROLE pwuser PASSWORD '{PASSWORD}'"))
        .unwrap();

    // The audit trail holds the command lines without the password.
    let argv: Vec<String> = p
        .db()
        .query("SELECT argv FROM tenantctl.runs", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert!(argv.len() >= 8, "{argv:?}");
    for a in &argv {
        assert!(!a.contains(PASSWORD_ENCODED) && !a.contains("p@ss"), "{a}");
    }
    let shown = argv.iter().find(|a| a.contains("--database-url")).unwrap();
    assert!(shown.contains("pwuser:***@"), "{shown}");
}

/// Ctrl-C cancels an in-flight statement over a TLS connection too.
#[test]
fn ctrl_c_cancels_in_flight_statements_over_tls() {
    let pki = Pki::new();
    let server = pki.tls_cluster();
    let p = Project::on(&server, "tls_cancel", 2);
    let url = format!(
        "postgres://postgres@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        server.port,
        p.url.rsplit('/').next().unwrap(),
        pki.path("ca.crt").display()
    );
    // The superuser has no password on the TCP side: give it one for this test.
    p.db()
        .batch_execute("ALTER ROLE postgres PASSWORD 'cancel-pw-1'")
        .unwrap();
    p.write_config("[run]\ngrace_period = \"1s\"\n");
    let env_url = url.replace("postgres@", "postgres:cancel-pw-1@");
    let mut create = p.cmd();
    create
        .arg("--database-url")
        .arg(&env_url)
        .args(["tenant", "create", "slow"]);
    assert!(create.output().unwrap().status.success());
    p.add_migration("V3__slow.sql", "SELECT pg_sleep(60);\n");
    let child = p
        .std_cmd()
        .arg("--database-url")
        .arg(&env_url)
        .args(["migrate", "--all"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the statement runs, then interrupt.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running: i64 = p
            .db()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.query LIKE '%pg_sleep(60)%' AND s.ssl AND a.pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        if running > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow migration never started over TLS"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    signal(child.id(), "INT");
    let out = wait_with_deadline(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let still: i64 = p
        .db()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND state = 'active' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(still, 0, "the statement was cancelled, not left running");
    assert_eq!(p.versions().get("slow"), Some(&Some(2)));
}

/// Config errors never print a password, whatever the password holds and wherever the
/// config is wrong.
#[test]
fn config_errors_never_print_a_password() {
    let p = Project::new("config_secrets", 1);
    let before = p.fingerprint();
    for (pw, pieces) in [
        ("p@ss:w/rd%", &["p@ss", "w/rd", "ss:w"][..]),
        ("Zx9${Qw7", &["Zx9", "Qw7"][..]),
    ] {
        let enc = pw
            .replace('%', "%25")
            .replace('@', "%40")
            .replace(':', "%3A")
            .replace('/', "%2F")
            .replace('$', "$$");
        let raw_url = format!("postgres://u:{pw}@localhost:1/db");
        let enc_url = format!("postgres://u:{enc}@localhost:1/db");
        let cases = [
            // TOML syntax error on the url line.
            format!("[database]\nurl = \"{enc_url}\" extra\n"),
            // The url key twice.
            format!("[database]\nurl = \"{enc_url}\"\nurl = \"{enc_url}\"\n"),
            // An unknown key holding the password.
            format!("[database]\nurl = \"postgres://u@localhost:1/db\"\npassword = \"{pw}\"\n"),
            // The password written raw in the URL (a `$` unescaped, an '@' unencoded).
            format!("[database]\nurl = \"{raw_url}\"\n"),
            // A bad port after a good password.
            format!("[database]\nurl = \"postgres://u:{enc}@localhost:notaport/db\"\n"),
            // Two clusters with the same URL.
            format!("[clusters.a]\nurl = \"{enc_url}\"\n[clusters.b]\nurl = \"{enc_url}\"\n"),
            // A type error next to it.
            format!("[database]\nurl = \"{enc_url}\"\n[run]\njobs = \"{pw}\"\n"),
        ];
        for text in &cases {
            std::fs::write(p.config_path(), text).unwrap();
            let out = p.cmd().args(["status"]).output().unwrap();
            let all = format!("{}{}", stdout(&out), stderr(&out));
            assert_eq!(out.status.code(), Some(2), "{text}\n{all}");
            assert!(all.contains("tenants.toml"), "{all}");
            for leak in pieces.iter().chain([&pw]) {
                assert!(!all.contains(leak), "{leak:?} printed for\n{text}\n{all}");
            }
        }
    }
    // An empty variable is reported as empty, not as unset.
    p.write_config("");
    std::fs::write(p.config_path(), "[database]\nurl = \"${DATABASE_URL}\"\n").unwrap();
    let out = p
        .cmd()
        .env("DATABASE_URL", "")
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("DATABASE_URL is set but empty"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, p.fingerprint());
}

/// PgBouncer in session mode works as a direct connection; in transaction mode tenantctl
/// refuses before changing anything, and with `direct_url` for its locks it works fully:
/// two concurrent runners and a SIGKILL mid-run still record each migration once per schema,
/// and no session setting reaches another client of the pool.
#[test]
fn pgbouncer_session_mode_and_transaction_mode() {
    let server = start_cluster(&[]);
    let session = Bouncer::start(&server, "session");
    let transaction = Bouncer::start(&server, "transaction");

    // Session mode: as direct.
    let p = Project::on(&server, "bouncer_session", 4);
    let db = p.url.rsplit('/').next().unwrap().to_string();
    std::fs::write(
        p.config_path(),
        format!("[database]\nurl = \"{}\"\n", session.url(&db)),
    )
    .unwrap();
    p.create_tenants(30);
    p.copy_migrations(5, 8);
    p.run(&["migrate", "--all"], 0);
    p.assert_converged(8);

    // Transaction mode, no direct_url: refused, nothing changed.
    let p = Project::on(&server, "bouncer_tx", 4);
    let db = p.url.rsplit('/').next().unwrap().to_string();
    std::fs::write(
        p.config_path(),
        format!("[database]\nurl = \"{}\"\n", transaction.url(&db)),
    )
    .unwrap();
    let before = p.fingerprint();
    for args in [&["tenant", "create", "a1"][..], &["migrate", "--all"][..]] {
        let out = p.run(args, 2);
        let err = stderr(&out);
        assert!(
            err.contains("direct_url") && err.contains("session"),
            "{err}"
        );
    }
    assert_eq!(before, p.fingerprint(), "nothing was changed");

    // Transaction mode with direct_url: works through the pooler.
    std::fs::write(
        p.config_path(),
        format!(
            "[database]\nurl = \"{}\"\ndirect_url = \"{}\"\n[run]\njobs = 6\n",
            transaction.url(&db),
            p.url
        ),
    )
    .unwrap();
    p.create_tenants(200);
    p.copy_migrations(5, 8);
    p.add_migration(
        "V9__slow_marker.sql",
        "SELECT pg_sleep(0.01);\nCREATE TABLE marker (id int);\nINSERT INTO marker VALUES (1);\n",
    );
    // A client of the same pool watching search_path all along.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, url) = (stop.clone(), transaction.url(&db));
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let path: String = c
                    .simple_query("SHOW search_path")
                    .unwrap()
                    .iter()
                    .find_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                        _ => None,
                    })
                    .unwrap();
                seen.insert(path);
                n += 1;
            }
            (seen, n)
        })
    };
    // Two runners at once, one killed mid-run; then the survivor (or a re-run) finishes.
    let first = p.spawn(&["migrate", "--all", "--wait", "60s"]);
    let second = p.spawn(&["migrate", "--all", "--wait", "60s"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.history_counts().iter().filter(|c| c.3 == Some(9)).count() < 20 {
        assert!(Instant::now() < deadline, "no progress through the pooler");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(first.id(), "KILL");
    let _ = wait_with_deadline(first, Duration::from_secs(30));
    let out = wait_with_deadline(second, Duration::from_secs(120));
    assert!(
        matches!(out.status.code(), Some(0) | Some(1) | Some(3)),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    p.run(&["migrate", "--all", "--wait", "60s"], 0);
    stop.store(true, Ordering::SeqCst);
    let (seen, n) = watcher.join().unwrap();
    p.assert_converged(9);
    assert_one_row_everywhere(&p.admin, "marker");
    assert!(n > 10, "the watcher ran {n} times");
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["\"$user\", public"],
        "a tenant's search_path reached another client of the pool"
    );

    // Transaction mode without direct_url again, the fleet current: a migrate with nothing
    // to do needs no session lock (one transaction holds the fleet lock), so it goes through
    // and is recorded; one with work is still refused before any change.
    std::fs::write(
        p.config_path(),
        format!("[database]\nurl = \"{}\"\n", transaction.url(&db)),
    )
    .unwrap();
    let runs = |p: &Project| -> i64 {
        p.db()
            .query_one(
                "SELECT count(*) FROM tenantctl.runs WHERE command = 'migrate' AND state = 'succeeded'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let before = runs(&p);
    let out = p.run(&["migrate", "--all"], 0);
    assert!(
        stdout(&out).contains("200 already current"),
        "{}",
        stdout(&out)
    );
    assert_eq!(runs(&p), before + 1);
    p.add_migration("V10__more.sql", "CREATE TABLE more (id int);\n");
    let before = p.fingerprint();
    let err = stderr(&p.run(&["migrate", "--all"], 2));
    assert!(err.contains("direct_url"), "{err}");
    assert_eq!(before, p.fingerprint(), "nothing was changed");
}
