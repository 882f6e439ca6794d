//! The coordinator's heartbeat while a run's schemas are in flight. The run and fleet locks
//! are session locks on the coordinator's connection, which is otherwise idle during the
//! run; if that connection dies (a terminated backend, `idle_session_timeout`, a failover, a
//! NAT or pooler timeout), the locks go with it. Each beat reads the run's epoch: a beat that
//! fails means the connection (and the locks) are gone, so the heartbeat reconnects and takes
//! the run's locks again, proving the run is still this process's (same epoch), or, if it
//! cannot, fences the run: nothing new starts, and the epoch check inside every schema's
//! transaction (see `control::fence`) already keeps anything else from committing once
//! another runner has taken over. Never a silent reconnect.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::db::Session;
use crate::engine::events::{Event, Events};
use crate::engine::fleet::Cancel;

/// How often the coordinator shows it is alive (well under any sensible
/// `idle_session_timeout`).
const INTERVAL: Duration = Duration::from_secs(1);
/// A beat that takes longer than this counts as a dead connection.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long reconnecting may take before the run is given up.
const RECLAIM_FOR: Duration = Duration::from_secs(10);

/// What the heartbeat watches.
pub struct Heartbeat<'a, 's> {
    pub session: &'a Session<'s>,
    pub run_id: i64,
    pub epoch: i64,
    /// The run holds the fleet lock too (migrate, rollback).
    pub fleet_lock: bool,
    pub events: Events,
    pub cancel: Cancel,
}

impl Heartbeat<'_, '_> {
    /// Beats until `done` turns true. Returns the new coordinator connection, if it had to
    /// make one (the caller swaps it in).
    pub async fn run(self, mut done: watch::Receiver<bool>) -> Option<Client> {
        let mut replaced: Option<Client> = None;
        loop {
            tokio::select! {
                _ = done.wait_for(|d| *d) => return replaced,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
            let client = replaced.as_ref().unwrap_or(&self.session.client);
            let beat =
                tokio::time::timeout(TIMEOUT, self.session.control.run_epoch(client, self.run_id))
                    .await;
            match beat {
                Ok(Ok(Some(e))) if e == self.epoch => continue,
                Ok(Ok(_)) => {
                    self.cancel.fence(format!(
                        "run {} was taken over by another tenantctl while this one was running",
                        self.run_id
                    ));
                    return replaced;
                }
                Ok(Err(_)) | Err(_) => match self.reclaim().await {
                    Ok(c) => {
                        self.events.emit(&Event::Warning {
                            message: &format!(
                                "the coordinator's connection was lost; reconnected and took run {}'s locks again",
                                self.run_id
                            ),
                        });
                        replaced = Some(c);
                    }
                    Err(why) => {
                        self.cancel.fence(why);
                        return replaced;
                    }
                },
            }
        }
    }

    /// A new coordinator connection holding the run's locks again, if the run is still this
    /// process's; else why not.
    async fn reclaim(&self) -> Result<Client, String> {
        let deadline = Instant::now() + RECLAIM_FOR;
        let lost = |why: &str| {
            format!(
                "the coordinator's connection (and with it run {}'s locks) was lost, and {why}; this process stopped so as not to run beside another",
                self.run_id
            )
        };
        let client = loop {
            match self.session.connect_again().await {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => return Err(lost(&format!("reconnecting failed ({e:#})"))),
            }
        };
        // The fleet lock first: while another migrate/rollback holds it, the run must not be
        // taken back (that runner reads the registry once it has taken over from this one).
        let control = &self.session.control;
        if self.fleet_lock {
            match control.try_fleet_lock(&client).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(lost(
                        "another migrate/rollback took the fleet lock meanwhile",
                    ))
                }
                Err(e) => return Err(lost(&format!("taking the fleet lock again failed ({e:#})"))),
            }
        }
        match control.reclaim_run(&client, self.run_id, self.epoch).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(lost(
                    "the run now belongs to another tenantctl (or its old session still holds it)",
                ))
            }
            Err(e) => return Err(lost(&format!("taking the run's lock again failed ({e:#})"))),
        }
        Ok(client)
    }
}
