//! The data copier: a tenant's rows out of its schema and into a new tenant's schema, on
//! PostgreSQL's COPY. Export reads one snapshot (`REPEATABLE READ, READ ONLY`) and sends the
//! archive's frames (`crate::archive`): the manifest's head, chunks of each table's rows as
//! COPY text, the tail with counts and checksums. Load takes frames in the transaction that
//! creates the new tenant (`apply::Mode::Import`): every table checked against the schema the
//! migrations made, foreign keys dropped and added back after the rows (checked then, as
//! `pg_restore` does), user triggers off during the load, sequences set, materialized views
//! refreshed, counts and checksums compared with the tail. Frames travel over a channel, so
//! the same load takes them from a file read on a thread (import) or from an export running
//! at the same time (clone). No printing: progress is `Event::Copying`.

pub mod catalog;
pub mod export;
pub mod files;
pub mod load;
pub mod preflight;

use crate::archive::Frame;
use crate::engine::events::Events;
use crate::engine::failure::{Failure, FailureKind};

/// Frames as they come, or why they stopped (the reader's or the exporter's error).
pub type Frames = tokio::sync::mpsc::Receiver<Result<Frame, String>>;
pub type FrameSender = tokio::sync::mpsc::Sender<Result<Frame, String>>;

/// Frames in flight between an export (or a file) and a load: a few chunks, so that memory
/// stays flat however large the tenant.
pub const IN_FLIGHT: usize = 4;

pub fn channel() -> (FrameSender, Frames) {
    tokio::sync::mpsc::channel(IN_FLIGHT)
}

/// An export piped into a load, at the same time, over a channel: `tenant clone` and a move's
/// first copy. `in_open`: the source connection is already in the transaction to read (a
/// move's snapshot), which the caller ends; otherwise the export opens and ends its own.
pub async fn pipe(
    (from, src, in_open): (&tokio_postgres::Client, export::Source<'_>, bool),
    (to, schema): (&tokio_postgres::Client, &str),
    events: &Events,
) -> Result<export::Exported, Failure> {
    let (tx, mut rx) = channel();
    let exporting = async {
        let result = match in_open {
            true => export::in_snapshot(from, src, &tx, events).await,
            false => export::export(from, src, &tx, events).await,
        };
        if let Err(e) = &result {
            let _ = tx.send(Err(format!("reading the source: {e:#}"))).await;
        }
        drop(tx);
        result
    };
    let (exported, loaded) = futures::join!(exporting, load::load(to, schema, &mut rx, events));
    let exported = exported.map_err(|e| {
        Failure::new(
            FailureKind::Archive,
            format!("reading the source: {e:#}"),
            None,
        )
    })?;
    loaded?;
    Ok(exported)
}
