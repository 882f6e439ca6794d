//! Connections: one coordinator connection per command plus a deadpool pool for the workers,
//! sized to the concurrency, so a run never holds more than `jobs + 1` connections.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, Config, NoTls};

use crate::config::Settings;
use crate::redact;

pub const APPLICATION_NAME: &str = "tenantctl";

/// Builds the driver config from the settings (already validated in config.rs).
pub fn pg_config(settings: &Settings) -> anyhow::Result<Config> {
    let mut cfg: Config = settings.database_url.parse().map_err(|e| {
        anyhow::anyhow!(
            "invalid database URL {}: {}",
            settings.display_url,
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

/// Opens the coordinator connection, with an error an operator can act on.
pub async fn connect(cfg: &Config, display_url: &str) -> anyhow::Result<Client> {
    let (client, connection) = cfg.connect(NoTls).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {display_url}: {}; check that the server is running and that the URL is right (database.url, clusters.<name>.url or --database-url)",
            describe(&e)
        )
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
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

/// PostgreSQL's own words for an error: `ERROR: message (SQLSTATE 42P01); DETAIL: …; HINT: …`,
/// or the driver's message for connection-level errors. Passwords are scrubbed.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                s.push_str(&format!("; DETAIL: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; HINT: {h}"));
            }
            s
        }
        None => {
            // The driver's Display is terse ("error connecting to server"); add the cause.
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(cause) = src {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s.push_str(&format!(": {c}"));
                }
                src = cause.source();
            }
            s
        }
    };
    redact::scrub(&text)
}
