//! The checks of `tenantctl doctor` on one cluster: each a question to the server (or to
//! the pooler in front of it) and a verdict with the fix. Reads only, except the pooler
//! probe's session-level `SET search_path` on a connection of its own, reset after.

use tokio_postgres::Client;

use crate::config::{Config, Target};
use crate::db::Session;

/// pass, warn or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub area: &'static str,
    pub check: &'static str,
    pub verdict: Verdict,
    /// What was seen.
    pub detail: String,
    /// What to do about it (null when it passed).
    pub fix: Option<String>,
}

pub(super) fn check(
    area: &'static str,
    name: &'static str,
    verdict: Verdict,
    detail: String,
    fix: Option<&str>,
) -> Check {
    Check {
        area,
        check: name,
        verdict,
        detail,
        fix: fix.filter(|_| verdict != Verdict::Pass).map(str::to_string),
    }
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    client: &Client,
    sql: &str,
) -> anyhow::Result<T> {
    Ok(client.query_typed_one(sql, &[]).await?.get(0))
}

/// The server, TLS, primary or standby.
pub async fn connection(session: &Session<'_>, target: &Target) -> anyhow::Result<Vec<Check>> {
    let c = &session.client;
    let mut out = Vec::new();
    let version: String = one(c, "SELECT current_setting('server_version')").await?;
    let verdict = if session.server_major >= 13 {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    out.push(check(
        "connection",
        "version",
        verdict,
        format!("PostgreSQL {version}"),
        Some("tenantctl needs PostgreSQL 13 or later"),
    ));
    let standby: bool = one(c, "SELECT pg_is_in_recovery()").await?;
    out.push(if standby {
        check(
            "connection",
            "primary",
            Verdict::Fail,
            "the server is a standby (read-only, in recovery)".into(),
            Some("point url at the primary: tenantctl changes the database"),
        )
    } else {
        check(
            "connection",
            "primary",
            Verdict::Pass,
            "a primary".into(),
            None,
        )
    });
    let tls: Option<String> = c
        .query_typed_one(
            "SELECT CASE WHEN ssl THEN version END FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    let verified = crate::conninfo::ConnSpec::parse(&target.url)
        .ok()
        .and_then(|s| s.resolve(&|v| std::env::var(v).ok(), &mut |_| {}).ok())
        .is_some_and(|r| r.tls.mode == crate::conninfo::SslMode::VerifyFull);
    let local: bool = one(c, "SELECT coalesce(inet_server_addr() <<= '127.0.0.0/8'::inet OR inet_server_addr() = '::1'::inet, true)").await?;
    out.push(match (&tls, verified, local) {
        (Some(v), true, _) => check("connection", "tls", Verdict::Pass, format!("{v}, the server's certificate verified (sslmode=verify-full)"), None),
        (Some(v), false, _) => check("connection", "tls", Verdict::Warn, format!("{v}, but the server's certificate is not verified"), Some("add sslmode=verify-full (and sslrootcert) to the URL: without it, anyone between tenantctl and the server can pose as it")),
        (None, _, true) => check("connection", "tls", Verdict::Pass, "no TLS, on a local connection (socket or loopback)".into(), None),
        (None, _, false) => check("connection", "tls", Verdict::Warn, "no TLS over the network: passwords and data travel in clear".into(), Some("turn ssl on on the server and add sslmode=verify-full to the URL")),
    });
    Ok(out)
}

/// Whether `url` goes through a pooler in transaction mode, and what it does to a
/// session-level `search_path` (two clients of the pooler, as two application servers).
pub async fn pooler(session: &Session<'_>, target: &Target) -> anyhow::Result<Vec<Check>> {
    let pool = session.pool(2)?;
    let (a, b) = (pool.get().await?, pool.get().await?);
    let session_kept = crate::db::keeps_session(&a, &b).await?;
    b.batch_execute("ROLLBACK").await?;
    let mut out = Vec::new();
    if session_kept {
        out.push(check("pooler", "mode", Verdict::Pass, "each connection keeps its server session (PostgreSQL itself, or a pooler in session mode)".into(), None));
        return Ok(out);
    }
    out.push(match &target.direct_url {
        Some(_) => check("pooler", "mode", Verdict::Pass, "url goes through a pooler in transaction mode; direct_url is set for tenantctl's locks".into(), None),
        None => check("pooler", "mode", Verdict::Fail, "url goes through a pooler in transaction mode, and direct_url is not set: tenantctl's run and fleet locks need a session".into(), Some("set direct_url (under [database] or [clusters.<name>]) to PostgreSQL itself; the workers keep the pooler")),
    });
    // A session-level SET on one client, then what another client sees.
    let probe = format!("tenantctl_doctor_{}", std::process::id());
    a.batch_execute(&format!("SET search_path TO {probe}"))
        .await?;
    let seen: String = one(&b, "SELECT current_setting('search_path')").await?;
    let own: String = one(&a, "SELECT current_setting('search_path')").await?;
    for c in [&a, &b] {
        let _ = c.batch_execute("RESET search_path").await;
    }
    let major = session.server_major;
    out.push(if seen.contains(&probe) {
        check("pooler", "search_path", Verdict::Warn, format!("a session-level SET search_path on one client was seen by another client of the pooler (it saw {seen:?}): an application that sets its tenant's search_path per session can run one tenant's queries in another tenant's schema"), Some("in the application, set search_path with SET LOCAL inside each transaction (or qualify names with the schema), or use the pooler's session mode; PostgreSQL 18+ with PgBouncer's track_extra_parameters = search_path keeps it per client"))
    } else if !own.contains(&probe) {
        check("pooler", "search_path", Verdict::Warn, format!("a session-level SET search_path did not stay with the client that set it (PostgreSQL {major}): the pooler drops it between transactions"), Some("set search_path with SET LOCAL inside each transaction in the application"))
    } else {
        check("pooler", "search_path", Verdict::Pass, "a session-level search_path stayed with its client and did not reach another".into(), None)
    });
    Ok(out)
}

/// The privileges the configured features need.
pub async fn privileges(c: &Client, config: &Config) -> anyhow::Result<Vec<Check>> {
    let row = c
        .query_typed_one(
            "SELECT has_database_privilege(current_database(), 'CREATE'), r.rolsuper, r.rolcreaterole, r.rolreplication, \
                    current_setting('wal_level'), current_user::text \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await?;
    let (create, superuser, createrole, replication, wal, user): (
        bool,
        bool,
        bool,
        bool,
        String,
        String,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    let mut out = vec![if create {
        check(
            "privileges",
            "create",
            Verdict::Pass,
            format!("{user} may create schemas in this database"),
            None,
        )
    } else {
        check(
            "privileges",
            "create",
            Verdict::Fail,
            format!("{user} has no CREATE on this database: tenant create cannot make schemas"),
            Some("GRANT CREATE ON DATABASE <db> TO <user>, or connect as the database's owner"),
        )
    }];
    if config.tenants.role_template.is_some() {
        out.push(if createrole || superuser {
            check("privileges", "createrole", Verdict::Pass, format!("{user} may create the tenants' roles"), None)
        } else {
            check("privileges", "createrole", Verdict::Fail, format!("[tenants] role is set and {user} has no CREATEROLE: tenant create cannot make the tenants' roles"), Some("ALTER ROLE <user> CREATEROLE, or remove [tenants] role"))
        });
    }
    if config.multi_cluster {
        let ok = wal == "logical" && (replication || superuser);
        out.push(if ok {
            check("privileges", "logical_replication", Verdict::Pass, "wal_level = logical and the role may replicate: online moves can start here".into(), None)
        } else {
            check("privileges", "logical_replication", Verdict::Warn, format!("wal_level = {wal}, REPLICATION {}: online moves out of this cluster cannot start (tenant move --offline can)", if replication || superuser { "yes" } else { "no" }), Some("set wal_level = logical (a restart) and ALTER ROLE <user> REPLICATION"))
        });
    }
    Ok(out)
}

/// The server's limits against the fleet's size and tenantctl's sessions.
pub async fn limits(
    session: &Session<'_>,
    target: &Target,
    prefix: &str,
) -> anyhow::Result<Vec<Check>> {
    let free = session.free_slots().await?;
    let row = session
        .client
        .query_typed_one(
            "SELECT current_setting('max_locks_per_transaction')::int * (current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int), \
                    coalesce((SELECT max(n) FROM (SELECT count(*) AS n FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
                                                   WHERE starts_with(s.nspname, $1) GROUP BY s.oid) x), 0)::int, \
                    current_setting('statement_timeout'), current_setting('idle_session_timeout'), \
                    current_setting('idle_in_transaction_session_timeout')",
            &[(&prefix, tokio_postgres::types::Type::TEXT)],
        )
        .await?;
    let (slots, biggest): (i32, i32) = (row.get(0), row.get(1));
    let need = target.jobs as i64 + 1;
    let mut out = vec![if free >= 2 * need {
        check(
            "limits",
            "connections",
            Verdict::Pass,
            format!(
                "{free} connection(s) free, a run takes {need} (jobs {} + 1)",
                target.jobs
            ),
            None,
        )
    } else if free >= need {
        check(
            "limits",
            "connections",
            Verdict::Warn,
            format!(
                "{free} connection(s) free, a run takes {need}: little left for the application"
            ),
            Some("lower jobs, or raise max_connections"),
        )
    } else {
        check(
            "limits",
            "connections",
            Verdict::Fail,
            format!(
                "{free} connection(s) free, a run takes {need} (jobs {} + 1)",
                target.jobs
            ),
            Some("lower jobs ([run] jobs or the cluster's jobs), or raise max_connections"),
        )
    }];
    // Each schema transaction locks every object of its schema it touches (a drop: all of
    // them); `jobs` of them at once share the server's lock table.
    let want = biggest * target.jobs as i32;
    out.push(if want <= slots / 2 {
        check("limits", "locks", Verdict::Pass, format!("the largest tenant schema has {biggest} relation(s); {} at once need up to {want} of {slots} lock slots", target.jobs), None)
    } else if want <= slots {
        check("limits", "locks", Verdict::Warn, format!("the largest tenant schema has {biggest} relation(s); {} at once may take {want} of {slots} lock slots", target.jobs), Some("raise max_locks_per_transaction (a restart), or lower jobs"))
    } else {
        check("limits", "locks", Verdict::Fail, format!("the largest tenant schema has {biggest} relation(s); {} dropped or rolled back at once need {want} lock slots, the server has {slots}: \"out of shared memory\"", target.jobs), Some("raise max_locks_per_transaction (a restart), or lower jobs"))
    });
    for (i, name) in [
        (2, "statement_timeout"),
        (3, "idle_session_timeout"),
        (4, "idle_in_transaction_session_timeout"),
    ] {
        let value: String = row.get(i);
        out.push(if value == "0" {
            check("limits", name, Verdict::Pass, format!("{name} is off for this role"), None)
        } else {
            check("limits", name, Verdict::Warn, format!("{name} = {value} for tenantctl's role: it ends tenantctl's own sessions (a long migration, the coordinator waiting between waves)"), Some("ALTER ROLE <tenantctl's user> SET ... = 0 (keep it for the application's roles: see tenant tiers)"))
        });
    }
    Ok(out)
}

/// The extensions the shared migrations create (`CREATE EXTENSION [IF NOT EXISTS] name`).
pub fn extensions_in(set: &crate::migrations::MigrationSet) -> Vec<String> {
    let mut names = Vec::new();
    for f in set.files() {
        let words: Vec<String> = f
            .sql()
            .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
            .filter(|w| !w.is_empty())
            .map(|w| w.trim_matches('"').to_lowercase())
            .collect();
        for (i, w) in words.iter().enumerate() {
            if w == "extension" && i > 0 && words[i - 1] == "create" {
                let mut j = i + 1;
                if words.get(j).map(String::as_str) == Some("if") {
                    j += 3;
                }
                if let Some(name) = words.get(j) {
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
            }
        }
    }
    names
}

/// Whether tenantctl's role can create the extensions the shared step needs: installed
/// already, or available and (superuser, or trusted with CREATE on the database).
pub async fn extensions(c: &Client, wanted: &[String]) -> anyhow::Result<Vec<Check>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let row = c
        .query_typed_one(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),                     has_database_privilege(current_database(), 'CREATE'),                     coalesce((SELECT array_agg(extname::text) FROM pg_extension), '{}'),                     coalesce((SELECT array_agg(DISTINCT name::text) FROM pg_available_extension_versions), '{}'),                     coalesce((SELECT array_agg(DISTINCT name::text) FROM pg_available_extension_versions WHERE trusted), '{}')",
            &[],
        )
        .await?;
    let (superuser, create): (bool, bool) = (row.get(0), row.get(1));
    let (installed, available, trusted): (Vec<String>, Vec<String>, Vec<String>) =
        (row.get(2), row.get(3), row.get(4));
    let mut problems = Vec::new();
    for name in wanted {
        if installed.contains(name) {
            continue;
        }
        if !available.contains(name) {
            problems.push(format!(
                "{name} is not installed on the server (its package is missing)"
            ));
        } else if !(superuser || (trusted.contains(name) && create)) {
            problems.push(format!(
                "{name} is not trusted: only a superuser may create it"
            ));
        }
    }
    Ok(vec![if problems.is_empty() {
        check(
            "privileges",
            "extensions",
            Verdict::Pass,
            format!(
                "the shared migrations' extensions can be created or are there: {}",
                wanted.join(", ")
            ),
            None,
        )
    } else {
        check("privileges", "extensions", Verdict::Fail, format!("the shared migrations create extensions this role cannot: {}", problems.join("; ")), Some("install the extension's package on the server, or have a superuser CREATE EXTENSION it once in the database (the migration's IF NOT EXISTS then passes)"))
    }])
}
