//! SIGINT/SIGTERM for the whole process, shared by every cluster's run (so a signal reaches
//! runs that start after it, too). The first signal is handed to every run tied to it with
//! [`Signals::on_signal`] (each stops scheduling and, after its grace period, cancels what is
//! in flight); with no run in flight it stops the process at once. The second signal exits at
//! once (PostgreSQL rolls back the open transactions).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::exit;

#[derive(Clone)]
pub struct Signals {
    rx: tokio::sync::watch::Receiver<Option<&'static str>>,
    /// How many runs are tied to the signals now.
    active: Arc<AtomicUsize>,
}

impl Signals {
    /// Starts listening; call inside the runtime, before any database work.
    pub fn install() -> Signals {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let active = Arc::new(AtomicUsize::new(0));
        let in_flight = active.clone();
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                #[cfg(unix)]
                let name = tokio::select! {
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => "SIGTERM",
                };
                #[cfg(not(unix))]
                let name = {
                    let _ = tokio::signal::ctrl_c().await;
                    "Ctrl-C"
                };
                count += 1;
                // The process's last words, like main's: nothing else is left to print them.
                if count == 1 && in_flight.load(Ordering::SeqCst) == 0 {
                    crate::output::stderr_line(&format!(
                        "{name} received with no schema in flight: stopping; finished work is kept"
                    ));
                    std::process::exit(exit::INTERRUPTED);
                }
                if count > 1 {
                    crate::output::stderr_line(&format!(
                        "{name} again: stopping now; open transactions are rolled back by PostgreSQL"
                    ));
                    std::process::exit(exit::INTERRUPTED);
                }
                let _ = tx.send(Some(name));
            }
        });
        Signals { rx, active }
    }

    /// The signal received so far, if any.
    pub fn received(&self) -> Option<&'static str> {
        *self.rx.borrow()
    }

    /// Waits for the first signal (at once if one came already).
    pub async fn wait(&self) -> &'static str {
        let mut rx = self.rx.clone();
        let got = match rx.wait_for(Option::is_some).await {
            Ok(v) => *v,
            Err(_) => None,
        };
        match got {
            Some(name) => name,
            None => std::future::pending().await,
        }
    }

    /// Ties a run to the signals: on the first one (even if it came before this call),
    /// `handler` runs with the signal's name. Dropping the guard ends the tie (and aborts a
    /// handler still running).
    pub fn on_signal<F, Fut>(&self, handler: F) -> RunGuard
    where
        F: FnOnce(&'static str) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.active.fetch_add(1, Ordering::SeqCst);
        let mut rx = self.rx.clone();
        let task = tokio::spawn(async move {
            let signal = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.unwrap_or("signal"),
                Err(_) => return,
            };
            handler(signal).await;
        });
        RunGuard {
            task,
            active: self.active.clone(),
        }
    }
}

/// One run's tie to [`Signals`].
pub struct RunGuard {
    task: tokio::task::JoinHandle<()>,
    active: Arc<AtomicUsize>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.task.abort();
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}
