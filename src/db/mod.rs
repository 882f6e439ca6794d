//! Connections: one coordinator connection per cluster and command, plus a deadpool pool for
//! the workers, sized to the concurrency, so a run never holds more than `jobs + 1`
//! connections. An [`Endpoint`] is one connection string made ready (libpq's environment
//! variables and password file applied, TLS settled, see [`crate::conninfo`] and [`tls`]).

mod session;
pub mod tls;

pub use session::{keeps_session, Session, KEEPALIVES};

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{
    ConfigConnectImpl, Connect, Manager, ManagerConfig, Pool, RecyclingMethod,
};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

use crate::config::ConfigError;
use crate::conninfo::{ConnSpec, TlsSpec};
use crate::exit::{UnreachableError, UsageError};
use crate::pgerror::describe;
use tls::Tls;

pub const APPLICATION_NAME: &str = "tenantctl";

/// An open connection and the task that drives it.
pub type Spare = (Client, JoinHandle<()>);

/// A pool's way to connect: the spare connection first (if any, and still open), then new
/// ones.
struct SpareFirst {
    spare: std::sync::Mutex<Option<Spare>>,
    fresh: ConfigConnectImpl<Tls>,
}

impl Connect for SpareFirst {
    fn connect(
        &self,
        pg_config: &Config,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Spare, tokio_postgres::Error>> + Send + '_>,
    > {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .filter(|(client, _)| !client.is_closed());
        match spare {
            Some(spare) => Box::pin(async move { Ok(spare) }),
            None => self.fresh.connect(pg_config),
        }
    }
}

/// One connection string, ready to connect with.
#[derive(Clone)]
pub struct Endpoint {
    pub pg: Config,
    pub tls: Tls,
    tls_spec: TlsSpec,
    /// The connection string as shown to people (no password).
    pub display: String,
}

impl Endpoint {
    /// Resolves `url` (validated by config) with the environment and the password file, and
    /// builds its TLS connector. Problems with what was configured are exit 2.
    pub fn new(url: &str) -> anyhow::Result<Endpoint> {
        let spec = ConnSpec::parse(url).map_err(UsageError)?;
        let display = spec.display();
        let resolved = spec
            .resolve(&|k| std::env::var(k).ok(), &mut warn_once)
            .map_err(|e| UsageError(format!("{display}: {e}")))?;
        let mut pg = resolved.pg;
        if pg.get_application_name().is_none() {
            pg.application_name(APPLICATION_NAME);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        // A peer that vanished without a word (a failover, a NAT or pooler idle timeout) is
        // noticed within about 11 s instead of the system's two hours.
        if pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            pg.keepalives_idle(Duration::from_secs(5));
            pg.keepalives_interval(Duration::from_secs(2));
            pg.keepalives_retries(3);
        }
        Ok(Endpoint {
            pg,
            tls: tls::connector(&resolved.tls)?,
            tls_spec: resolved.tls,
            display,
        })
    }

    /// This connection as a libpq `key=value` string, for the server itself to connect with
    /// (a subscription's `CONNECTION`): host, port, database, user, password, TLS mode and
    /// roots. It holds the password: it is never printed.
    pub fn libpq_conninfo(&self) -> String {
        fn quoted(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let mut parts = Vec::new();
        if let Some(tokio_postgres::config::Host::Tcp(h)) = self.pg.get_hosts().first() {
            parts.push(format!("host={}", quoted(h)));
        }
        if let Some(tokio_postgres::config::Host::Unix(p)) = self.pg.get_hosts().first() {
            parts.push(format!("host={}", quoted(&p.to_string_lossy())));
        }
        if let Some(port) = self.pg.get_ports().first() {
            parts.push(format!("port={port}"));
        }
        if let Some(db) = self.pg.get_dbname() {
            parts.push(format!("dbname={}", quoted(db)));
        }
        if let Some(user) = self.pg.get_user() {
            parts.push(format!("user={}", quoted(user)));
        }
        if let Some(pw) = self.pg.get_password() {
            parts.push(format!("password={}", quoted(&String::from_utf8_lossy(pw))));
        }
        parts.push(format!("sslmode={}", self.tls_spec.mode.as_str()));
        if let crate::conninfo::Roots::File(f) = &self.tls_spec.roots {
            parts.push(format!("sslrootcert={}", quoted(&f.to_string_lossy())));
        }
        parts.join(" ")
    }

    /// Opens a connection, with an error an operator can act on. Refuses a server whose
    /// `standard_conforming_strings` is off: the hot path quotes identifiers into SQL text,
    /// and although only validated identifiers are quoted that way, tenantctl does not bet
    /// on it. Workers connect to the same database as the same role, so they see the same
    /// setting.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(self.connect_with_version().await?.0)
    }

    /// Like [`Endpoint::connect`], with the server's major version.
    pub async fn connect_with_version(&self) -> anyhow::Result<(Client, u32)> {
        let (client, major, _) = self.connect_with_task().await?;
        Ok((client, major))
    }

    /// Like [`Endpoint::connect_with_version`], with the task that drives the connection
    /// (a pool's connection is handed over with it).
    pub async fn connect_with_task(&self) -> anyhow::Result<(Client, u32, JoinHandle<()>)> {
        let (client, connection) = self
            .pg
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.connect_error(&e))?;
        let conforming = connection
            .parameter("standard_conforming_strings")
            .map(str::to_string);
        let major = connection
            .parameter("server_version")
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or(0);
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        if let Some(value) = conforming.filter(|v| v != "on") {
            return Err(UsageError(format!(
                "{}: the server has standard_conforming_strings = {value}; tenantctl needs it on (the default since PostgreSQL 9.1). Set it with ALTER DATABASE <db> SET standard_conforming_strings = on (or for the role); nothing was changed",
                self.display
            ))
            .into());
        }
        Ok((client, major, task))
    }

    /// A pool of at most `size` worker connections; its first connection is `spare` when
    /// one is given (a connection already open to the same place, idle, not in a
    /// transaction), which saves a connection's setup on short runs.
    pub fn pool(&self, size: usize, spare: Option<Spare>) -> anyhow::Result<Pool> {
        let connect = SpareFirst {
            spare: std::sync::Mutex::new(spare),
            fresh: ConfigConnectImpl {
                tls: self.tls.clone(),
            },
        };
        let manager = Manager::from_connect(
            self.pg.clone(),
            connect,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .build()
            .context("building the connection pool")
    }

    /// A failed connection as an error of its kind: the server could not be reached (down,
    /// refusing, timing out, starting up or shutting down, out of connection slots: exit 6,
    /// worth a retry) or it refused what it was given (password, certificate, TLS settings,
    /// database name: a configuration error, exit 2).
    fn connect_error(&self, e: &tokio_postgres::Error) -> anyhow::Error {
        let message = format!("cannot connect to {}: {}", self.display, self.explain(e));
        let unreachable = match e.as_db_error() {
            Some(db) => matches!(
                db.code().code(),
                // cannot_connect_now, too_many_connections, admin/crash shutdown
                "57P03" | "53300" | "57P01" | "57P02"
            ),
            None => {
                let said = describe(e);
                rustls_error(e).is_none()
                    && !said.contains("TLS")
                    && !said.contains("password missing")
            }
        };
        if unreachable {
            UnreachableError(message).into()
        } else {
            ConfigError(message).into()
        }
    }

    /// Why a connection failed, and what to do: TLS required or refused, a certificate not
    /// trusted or not for this host, a client certificate missing or refused; else
    /// PostgreSQL's (or the driver's) own words and the usual checks.
    fn explain(&self, e: &tokio_postgres::Error) -> String {
        let said = describe(e);
        let mode = self.tls_spec.mode.as_str();
        if let Some(db) = e.as_db_error() {
            let msg = db.message();
            if *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
                if msg.contains("no encryption") {
                    return format!(
                        "{said}; the server requires TLS for this connection: set sslmode=require (or verify-full with sslrootcert) in the URL, or PGSSLMODE"
                    );
                }
                if msg.contains("requires a valid client certificate") {
                    return format!(
                        "{said}; the server requires a client certificate for this user: give sslcert and sslkey (or PGSSLCERT/PGSSLKEY)"
                    );
                }
                if msg.contains("certificate authentication failed") {
                    return format!(
                        "{said}; the client certificate was refused: its common name (CN) must be the user name"
                    );
                }
            }
            if *db.code() == SqlState::INVALID_PASSWORD {
                return format!(
                    "{said}; check the password (URL, PGPASSWORD or the password file)"
                );
            }
            return format!(
                "{said}; check the URL (database.url, clusters.<name>.url or --database-url)"
            );
        }
        if said.contains("password missing") {
            return format!(
                "{said}; the server asks for a password and none was given: put it in the URL (percent-encoded), PGPASSWORD, or a password file (PGPASSFILE or ~/.pgpass, mode 0600)"
            );
        }
        if said.contains("server does not support TLS") {
            return format!(
                "{said}; sslmode={mode} needs TLS, which this server does not offer (ssl = off): turn ssl on in postgresql.conf, or use sslmode=prefer"
            );
        }
        if let Some(tls) = rustls_error(e) {
            return match tls {
                rustls::Error::InvalidCertificate(c) => match c {
                    rustls::CertificateError::UnknownIssuer
                    | rustls::CertificateError::BadSignature => format!(
                        "{said}; the server's certificate is not trusted by {}: give the CA that signed it in sslrootcert",
                        tls::roots_text(&self.tls_spec.roots)
                    ),
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. } => format!(
                        "{said}; the server's certificate is not valid for the host name in the URL (sslmode=verify-full checks it): connect with a name the certificate lists, or use sslmode=verify-ca"
                    ),
                    rustls::CertificateError::Expired
                    | rustls::CertificateError::ExpiredContext { .. } => format!(
                        "{said}; the server's certificate has expired: renew it on the server"
                    ),
                    _ => format!("{said}; the server's certificate was refused (sslmode={mode})"),
                },
                rustls::Error::AlertReceived(alert) => format!(
                    "{said}; the server refused the TLS handshake ({alert:?}){}",
                    if self.tls_spec.client.is_some() {
                        ": the client certificate (sslcert) is not signed by a CA the server trusts (its ssl_ca_file), or has expired"
                    } else {
                        ""
                    }
                ),
                other => format!("{said}; TLS failed ({other})"),
            };
        }
        format!(
            "{said}; check that the server is running and that the URL is right (database.url, clusters.<name>.url or --database-url)"
        )
    }
}

/// The rustls error behind a failed connection, if TLS is what failed.
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = src {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        src = err.source();
    }
    None
}

/// libpq-style warnings about the connection setup (a password file others can read),
/// printed once per process, as libpq prints them.
fn warn_once(message: String) {
    static SHOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    if !shown.contains(&message) {
        crate::output::stderr_line(&format!("warning: {message}"));
        shown.push(message);
    }
}
