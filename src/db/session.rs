//! A session with one cluster: its coordinator connection, its control schema, and the
//! endpoint the workers' pool connects to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_postgres::Client;

use super::tls::Tls;
use super::Endpoint;
use crate::config::Target;
use crate::control::Control;
use crate::exit::UsageError;
use crate::pgerror::describe;

/// A coordinator connection to one cluster, and that cluster's control schema.
pub struct Session<'a> {
    pub target: &'a Target,
    pub client: Client,
    pub control: Control,
    /// Where the coordinator connects: `direct_url` when given, else `url`.
    coordinator: Endpoint,
    /// Where the workers connect: `url` (possibly a pooler).
    workers: Endpoint,
    /// The coordinator's connection was shown to keep one server session (see
    /// [`Session::require_session`]).
    pinned: AtomicBool,
    /// The server's major version (14 and up check for a gone client while a statement runs).
    pub server_major: u32,
    /// The second connection [`Session::require_session`] opened, kept for the workers.
    spare: std::sync::Mutex<Option<super::Spare>>,
}

impl<'a> Session<'a> {
    /// Connects the coordinator; with `bootstrap` (commands that change something), checks
    /// that the coordinator keeps a session and creates the control schema if needed.
    pub async fn open(
        target: &'a Target,
        control_schema: &str,
        bootstrap: bool,
    ) -> anyhow::Result<Session<'a>> {
        // A command that changes something checks the session with a second connection (see
        // require_session), which then serves as the first worker: both connect at once.
        let check = bootstrap && target.direct_url.is_none();
        let session = Session::connect_with(target, control_schema, check).await?;
        session.settle(bootstrap).await?;
        Ok(session)
    }

    /// Connects the coordinator and sends nothing: the caller settles the session
    /// ([`Session::settle`]) or works in one transaction that needs no session of its own.
    pub async fn connect(target: &'a Target, control_schema: &str) -> anyhow::Result<Session<'a>> {
        Session::connect_with(target, control_schema, false).await
    }

    /// Connects the coordinator and, with `spare`, the session check's connection at once.
    async fn connect_with(
        target: &'a Target,
        control_schema: &str,
        spare: bool,
    ) -> anyhow::Result<Session<'a>> {
        let workers = Endpoint::new(&target.url)?;
        let coordinator = match &target.direct_url {
            Some(direct) => Endpoint::new(direct)?,
            None => workers.clone(),
        };
        let (first, second) = futures::join!(coordinator.connect_with_version(), async {
            match spare {
                true => Some(workers.connect_with_task().await),
                false => None,
            }
        });
        let (client, server_major) = first?;
        let spare = match second {
            Some(Ok((c, _, task))) => Some((c, task)),
            Some(Err(e)) => return Err(e),
            None => None,
        };
        Ok(Session {
            server_major,
            target,
            client,
            control: Control::new(control_schema),
            pinned: AtomicBool::new(target.direct_url.is_some()),
            coordinator,
            workers,
            spare: std::sync::Mutex::new(spare),
        })
    }

    /// Opens the connection the session check uses (and the pool then starts with), unless
    /// the coordinator connects directly and needs no check.
    pub async fn open_spare(&self) -> anyhow::Result<()> {
        if self.target.direct_url.is_none() && !self.has_spare() {
            let (c, _, task) = self.workers.connect_with_task().await?;
            self.keep_spare((c, task));
        }
        Ok(())
    }

    fn keep_spare(&self, spare: super::Spare) {
        *self
            .spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(spare);
    }

    /// Makes a connected session ready: keepalives for the session locks it will hold and,
    /// with `bootstrap`, the session check and the control schema.
    pub async fn settle(&self, bootstrap: bool) -> anyhow::Result<()> {
        // The coordinator holds session locks: if this process vanishes without closing its
        // connection (a lost network, a frozen VM), the server must notice and free them
        // within seconds, not after the system's two hours of TCP silence. Sent first, it
        // shares a round trip with the session check.
        let keepalives = self.client.batch_execute(KEEPALIVES);
        let checks = async {
            if bootstrap {
                // A command that changes something takes session locks later: refuse a
                // connection that cannot hold them before the first change. Nothing else
                // may be in flight on the coordinator meanwhile: through a pooler in
                // transaction mode, a statement still running on the server connection the
                // check's first statement used would steer the check's transaction to
                // another one, and the check would pass.
                self.require_primary().await?;
                self.require_session().await?;
                self.control.bootstrap(&self.client).await?;
            }
            anyhow::Ok(())
        };
        let (set, checked) = futures::join!(keepalives, checks);
        set.map_err(|e| anyhow::anyhow!("setting up the connection: {}", describe(&e)))?;
        checked
    }

    /// Whether the connection of the session check is kept for the pool.
    pub fn has_spare(&self) -> bool {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// A pool of at most `jobs` worker connections to this cluster.
    /// Its first connection is the one the session check opened, if there is one.
    pub fn pool(&self, jobs: usize) -> anyhow::Result<Pool> {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.workers.pool(jobs, spare)
    }

    /// The TLS connector of the workers' connections (their cancel requests use it too).
    pub fn tls(&self) -> &Tls {
        &self.workers.tls
    }

    /// A new connection to where the coordinator connects (one attempt); the caller decides
    /// what it may do with it (see [`crate::control::Control::reclaim_run`]).
    pub async fn connect_again(&self) -> anyhow::Result<Client> {
        self.coordinator.connect().await
    }

    /// Where the coordinator connects, as libpq reads it (see [`Endpoint::libpq_conninfo`]):
    /// what a subscription on another cluster connects to this one with.
    pub fn libpq_conninfo(&self) -> String {
        self.coordinator.libpq_conninfo()
    }

    /// After the coordinator's connection broke (a server restart, say): connect again,
    /// retrying with backoff for up to ~15 s.
    pub async fn reconnect(&mut self) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(250);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.coordinator.connect().await {
                Ok(c) => {
                    self.client = c;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(4));
                }
            }
        }
    }

    /// A command that changes the database needs the primary: a hot standby (or a session
    /// that defaults to read-only transactions) is named as such, with what to do, before
    /// anything is tried (exit 6, the code for a server that cannot serve the command).
    pub async fn require_primary(&self) -> anyhow::Result<()> {
        let row = self
            .client
            .query_typed_one(
                "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on'",
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!("checking that the server takes writes: {}", describe(&e)))?;
        let (standby, read_only): (bool, bool) = (row.get(0), row.get(1));
        let url = &self.target.display_url;
        let why = match (standby, read_only) {
            (true, _) => format!(
                "{url} is a read-only standby (in recovery): this command changes the database and needs the primary. Point the URL at the primary, or list every host with target_session_attrs=read-write (postgres://host1,host2/db?target_session_attrs=read-write) so that the primary is found, also after a failover; nothing was changed"
            ),
            (false, true) => format!(
                "{url}: default_transaction_read_only is on for this connection (a read-only role or database setting, or a read-only pooler entry): this command changes the database. Connect as a role, or to a database, that may write; nothing was changed"
            ),
            (false, false) => return Ok(()),
        };
        Err(crate::exit::UnreachableError(why).into())
    }

    /// Before taking a session lock: proves that the coordinator's connection keeps one
    /// server session, which a pooler in transaction (or statement) mode does not: a lock
    /// taken there would stay with a server connection other clients then use. A second
    /// connection holds a transaction open (pinning a server connection) while the
    /// coordinator asks for its backend twice: with a session of its own, the coordinator's
    /// backend never changes and is never the one the other transaction holds. Exit 2 with
    /// the fix when it does.
    pub async fn require_session(&self) -> anyhow::Result<()> {
        if self.pinned.load(Ordering::SeqCst) {
            return Ok(());
        }
        let probe = async {
            let kept = self
                .spare
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let (other, task) = match kept {
                Some(spare) => spare,
                None => {
                    let (c, _, task) = self.workers.connect_with_task().await?;
                    (c, task)
                }
            };
            let kept_session = keeps_session(&self.client, &other).await?;
            // Out of its transaction, the connection is a worker's like any other: the
            // run's pool starts with it. The ROLLBACK is not waited for: the worker's first
            // statement queues behind it (and a connection lost meanwhile is replaced).
            if !other.is_closed() {
                use futures::FutureExt;
                let _ = other.batch_execute("ROLLBACK").now_or_never();
                self.control.warm_worker(&other);
                *self
                    .spare
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((other, task));
            }
            anyhow::Ok(kept_session)
        };
        let pinned = probe.await.map_err(|e| {
            anyhow::anyhow!(
                "checking that {} keeps a session for tenantctl's locks: {e:#}",
                self.workers.display
            )
        })?;
        if !pinned {
            return Err(UsageError(format!(
                "{} does not keep one server session per connection (a pooler such as PgBouncer in transaction or statement mode), and tenantctl's run and fleet locks need one; nothing was changed. Give the cluster a direct connection for them: `direct_url` under [database] (or [clusters.<name>]), pointing at PostgreSQL itself; the workers keep using the pooler. Or use the pooler's session mode",
                self.workers.display
            ))
            .into());
        }
        self.pinned.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// How many more connections the server accepts now (for ordinary roles).
    pub async fn free_slots(&self) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_typed_one(
                "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int \
                        - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!("reading the server's connection limits: {}", describe(&e)))?;
        Ok(row.get::<_, i64>(0).max(0))
    }
}

/// The coordinator's keepalives (see [`Session::settle`]); `SET LOCAL` them for a
/// transaction that must not outlive a vanished client.
pub const KEEPALIVES: &str =
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3";

/// The backend process serving `client`'s next statement.
/// Whether connection `a` keeps one server session while connection `b` (to the same
/// place) holds a transaction open: asked for its backend twice, `a` gets the same one, and
/// never the one `b` holds. A pooler in transaction (or statement) mode fails it. `b` is
/// left in its transaction: the caller rolls it back.
pub async fn keeps_session(a: &Client, b: &Client) -> anyhow::Result<bool> {
    let first = pid(a).await?;
    // One round trip: the transaction and the backend it holds.
    let held = match b.simple_query("BEGIN; SELECT pg_backend_pid()").await {
        Ok(messages) => messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                row.get(0).and_then(|p| p.parse::<i32>().ok())
            }
            _ => None,
        }),
        Err(_) => None,
    };
    let second = pid(a).await?;
    Ok(held.is_some_and(|h| h != first) && second == first)
}

async fn pid(client: &Client) -> Result<i32, tokio_postgres::Error> {
    client
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .map(|r| r.get(0))
}
