//! A session with one cluster: its coordinator connection, its control schema, and the
//! driver config the workers' pool is built from.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_postgres::Client;

use crate::config::Target;
use crate::control::Control;
use crate::pgerror::describe;

/// A coordinator connection to one cluster, and that cluster's control schema.
pub struct Session<'a> {
    pub target: &'a Target,
    pub client: Client,
    pub control: Control,
    pg: tokio_postgres::Config,
}

impl<'a> Session<'a> {
    /// Connects the coordinator; with `bootstrap`, creates the control schema if needed.
    pub async fn open(
        target: &'a Target,
        control_schema: &str,
        bootstrap: bool,
    ) -> anyhow::Result<Session<'a>> {
        let pg = super::pg_config(target)?;
        let client = super::connect(&pg, &target.display_url).await?;
        let control = Control::new(control_schema);
        if bootstrap {
            control.bootstrap(&client).await?;
        }
        Ok(Session {
            target,
            client,
            control,
            pg,
        })
    }

    /// A pool of at most `jobs` worker connections to this cluster.
    pub fn pool(&self, jobs: usize) -> anyhow::Result<Pool> {
        super::pool(self.pg.clone(), jobs)
    }

    /// After the coordinator's connection broke (a server restart, say): connect again,
    /// retrying with backoff for up to ~15 s.
    pub async fn reconnect(&mut self) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(250);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match super::connect(&self.pg, &self.target.display_url).await {
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
