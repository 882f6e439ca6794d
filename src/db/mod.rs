//! Connections: one coordinator connection per cluster and command, plus a deadpool pool for
//! the workers, sized to the concurrency, so a run never holds more than `jobs + 1`
//! connections. Setup takes one cluster's [`Target`].

mod session;

pub use session::Session;

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, Config, NoTls};

use crate::config::Target;
use crate::exit::UsageError;
use crate::pgerror::describe;
use crate::redact;

pub const APPLICATION_NAME: &str = "tenantctl";

/// Builds the driver config for one cluster (its URL was validated by config).
pub fn pg_config(target: &Target) -> anyhow::Result<Config> {
    let mut cfg: Config = target.url.parse().map_err(|e| {
        anyhow::anyhow!(
            "invalid database URL {}: {}",
            target.display_url,
            redact::scrub(&format!("{e}"))
        )
    })?;
    if cfg.get_application_name().is_none() {
        cfg.application_name(APPLICATION_NAME);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    Ok(cfg)
}

/// Opens the coordinator connection, with an error an operator can act on. Refuses a server
/// whose `standard_conforming_strings` is off: the hot path quotes identifiers into SQL text,
/// and although only validated identifiers are quoted that way, tenantctl does not bet on it.
/// Workers connect to the same database as the same role, so they see the same setting.
pub async fn connect(cfg: &Config, display_url: &str) -> anyhow::Result<Client> {
    let (client, connection) = cfg.connect(NoTls).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {display_url}: {}; check that the server is running and that the URL is right (database.url, clusters.<name>.url or --database-url)",
            describe(&e)
        )
    })?;
    let conforming = connection
        .parameter("standard_conforming_strings")
        .map(str::to_string);
    tokio::spawn(async move {
        let _ = connection.await;
    });
    if let Some(value) = conforming.filter(|v| v != "on") {
        return Err(UsageError(format!(
            "{display_url}: the server has standard_conforming_strings = {value}; tenantctl needs it on (the default since PostgreSQL 9.1). Set it with ALTER DATABASE <db> SET standard_conforming_strings = on (or for the role); nothing was changed"
        ))
        .into());
    }
    Ok(client)
}

/// A pool of at most `size` worker connections.
pub fn pool(cfg: Config, size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .context("building the connection pool")
}
