//! A move's first copy, as the `apply::Load` of the transaction that creates the tenant on
//! the target (`Mode::Import { from: Move }`, registered incoming): the source's rows read
//! in the transaction the caller opened on `source` (a snapshot aligned with the slot, or
//! the tables held by an offline move), loaded as `tenant clone` loads them; then, online,
//! the subscription that streams what came after, and the move's row, all committed with
//! the schema. A failed transaction leaves nothing on the target.

use futures::FutureExt as _;
use tokio_postgres::Client;

use super::link;
use crate::control::Control;
use crate::engine::apply::Load;
use crate::engine::copy::{self, export};
use crate::engine::events::Events;
use crate::engine::failure::{Failure, FailureKind};
use crate::labels::Labels;
use crate::migrations::MigrationSet;
use crate::tenant::Tenant;

/// What the first copy reads from and what it leaves on the target.
pub struct FirstCopy<'a> {
    /// The source connection, in the transaction whose snapshot is copied.
    pub source: &'a Client,
    pub tenant: &'a Tenant,
    pub labels: &'a Labels,
    pub migrations: &'a MigrationSet,
    /// The target's control schema (the move's row).
    pub control: &'a Control,
    /// The source cluster's name, for the target's move row.
    pub from: &'a str,
    pub link: &'a str,
    pub actor: &'a str,
    /// Online: the source as libpq reads it, for the subscription (None: offline).
    pub subscribe: Option<String>,
    /// The snapshot is read once: a second attempt fails instead of copying another one.
    pub used: std::sync::atomic::AtomicBool,
    /// Rows copied, per table (for the report).
    pub rows: std::sync::Mutex<Vec<(String, u64)>>,
}

impl Load for FirstCopy<'_> {
    fn load<'c>(
        &'c self,
        client: &'c Client,
        tenant: &'c Tenant,
        events: &'c Events,
    ) -> futures::future::LocalBoxFuture<'c, Result<(), Failure>> {
        async move {
            let archive = |m: String| Failure::new(FailureKind::Archive, m, None);
            if self.used.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(archive(
                    "the first copy's snapshot was used by an attempt that failed; run the same tenant move again".into(),
                ));
            }
            let source = export::Source {
                tenant: self.tenant,
                labels: self.labels,
                migrations: self.migrations,
                allow_drift: false,
                registry_drift: None,
            };
            let exported =
                copy::pipe((self.source, source, true), (client, tenant.schema()), events).await?;
            *self.rows.lock().unwrap_or_else(|e| e.into_inner()) = exported
                .manifest
                .tables
                .iter()
                .zip(&exported.footer.tables)
                .map(|(t, s)| (t.name.clone(), s.rows))
                .collect();
            let mut sql = self
                .control
                .move_in_sql(tenant, self.from, self.link, self.actor);
            if let Some(conninfo) = &self.subscribe {
                sql.push_str("; ");
                sql.push_str(&link::create_subscription_sql(self.link, conninfo));
            }
            client.batch_execute(&sql).await.map_err(|e| {
                archive(format!(
                    "subscribing the target to the source: {}",
                    crate::pgerror::describe(&e)
                ))
            })?;
            super::kill_point("copying");
            Ok(())
        }
        .boxed_local()
    }
}
