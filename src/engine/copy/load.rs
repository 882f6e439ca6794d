//! Load: archive frames into a new tenant's schema, inside the transaction that created it
//! (so a failed load leaves nothing). Every table and column is looked up in the schema the
//! migrations made, and every statement names that schema: an archive cannot write anywhere
//! else, whatever its manifest says.

use futures::SinkExt as _;
use tokio_postgres::Client;

use super::{catalog, Frames};
use crate::archive::{Frame, Summing};
use crate::engine::events::Events;
use crate::engine::failure::{Failure, FailureKind};
use crate::tenant::quote_ident;

/// One table's COPY as it is fed.
type Sink = std::pin::Pin<Box<tokio_postgres::CopyInSink<bytes::Bytes>>>;

fn bad(message: String) -> Failure {
    Failure::new(FailureKind::Archive, message, None)
}

fn pg(e: tokio_postgres::Error) -> Failure {
    Failure::from_pg(&e, None)
}

/// The next frame, or why there is none.
async fn next(frames: &mut Frames) -> Result<Frame, Failure> {
    match frames.recv().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(bad(e)),
        None => Err(bad(
            "the archive ended before its manifest's tail (cut short, or its export failed)".into(),
        )),
    }
}

pub async fn load(
    client: &Client,
    schema: &str,
    frames: &mut Frames,
    events: &Events,
) -> Result<(), Failure> {
    let Frame::Head(manifest) = next(frames).await? else {
        return Err(bad("the archive does not start with its manifest".into()));
    };
    let q = quote_ident(schema);
    let here = catalog::tables(client, schema).await.map_err(pg)?;
    let at = crate::migrations::version_label(manifest.version);
    if let Some(problem) = super::preflight::misfit(&manifest, &here.tables) {
        return Err(bad(problem));
    }
    // The load is as long as the rows: [run] statement_timeout bounds migrations, not this.
    let mut before = String::from("SET LOCAL statement_timeout = 0;");
    let keys = catalog::foreign_keys(client, schema).await.map_err(pg)?;
    for k in &keys {
        before.push_str(&format!(
            " ALTER TABLE {q}.{} DROP CONSTRAINT {};",
            quote_ident(&k.table),
            quote_ident(&k.name)
        ));
    }
    // Indexes are built again after the rows (of the archive's tables only): once, from
    // sorted data, instead of row by row.
    let loaded: std::collections::HashSet<&str> =
        manifest.tables.iter().map(|t| t.name.as_str()).collect();
    let indexes: Vec<catalog::Index> = catalog::indexes(client, schema)
        .await
        .map_err(pg)?
        .into_iter()
        .filter(|i| loaded.contains(i.table.as_str()))
        .collect();
    for i in &indexes {
        before.push_str(&match i.constraint {
            true => format!(
                " ALTER TABLE {q}.{} DROP CONSTRAINT {};",
                quote_ident(&i.table),
                quote_ident(&i.name)
            ),
            false => format!(" DROP INDEX {q}.{};", quote_ident(&i.name)),
        });
    }
    for t in &here.triggered {
        before.push_str(&format!(
            " ALTER TABLE {q}.{} DISABLE TRIGGER USER;",
            quote_ident(t)
        ));
    }
    // The archive holds every row of its tables, those the migrations inserted (reference
    // data, perhaps changed since) too: what the migrations put there makes way for it.
    if !manifest.tables.is_empty() {
        let all: Vec<String> = manifest
            .tables
            .iter()
            .map(|t| format!("{q}.{}", quote_ident(&t.name)))
            .collect();
        before.push_str(&format!(" TRUNCATE {};", all.join(", ")));
    }
    client.batch_execute(&before).await.map_err(pg)?;
    // The bytes' SHA-256 was checked by the file's reader (or never left the process, in a
    // clone): here, rows and bytes against the tail and PostgreSQL's counts.
    let mut sums = vec![Summing::counting(); manifest.tables.len()];
    let mut open: Option<(usize, Sink)> = None;
    let footer = loop {
        match next(frames).await? {
            Frame::Data { table, bytes } => {
                let i = table as usize;
                let Some(t) = manifest.tables.get(i) else {
                    return Err(bad(format!(
                        "a data chunk names table #{table}, which the manifest does not list"
                    )));
                };
                if open.as_ref().is_none_or(|(at, _)| *at != i) {
                    if let Some((at, sink)) = open.take() {
                        close(sink, &manifest.tables[at].name, &sums[at]).await?;
                    }
                    let columns: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
                    // FREEZE (the table was truncated in this transaction): the rows are
                    // written frozen and visible to all, so the new tenant needs no
                    // anti-wraparound vacuum and index-only scans work at once.
                    let sql = format!(
                        "COPY {q}.{} ({}) FROM STDIN (FREEZE)",
                        quote_ident(&t.name),
                        columns.join(", ")
                    );
                    open = Some((i, Box::pin(client.copy_in(&sql).await.map_err(pg)?)));
                }
                sums[i].add(&bytes);
                let (_, sink) = open.as_mut().expect("opened above");
                sink.send(bytes).await.map_err(pg)?;
                super::export::progress(events, &t.name, &sums[i]);
            }
            Frame::Tail(footer) => break footer,
            Frame::Head(_) => return Err(bad("the archive has a second manifest".into())),
        }
    };
    if let Some((at, sink)) = open.take() {
        close(sink, &manifest.tables[at].name, &sums[at]).await?;
    }
    for ((t, sum), want) in manifest.tables.iter().zip(sums).zip(&footer.tables) {
        let got = sum.done();
        if (got.rows, got.bytes) != (want.rows, want.bytes) {
            return Err(bad(format!(
                "table {:?}: {} row(s), {} bytes loaded, the manifest says {} row(s), {} bytes; nothing was imported",
                t.name, got.rows, got.bytes, want.rows, want.bytes
            )));
        }
    }
    if footer.tables.len() != manifest.tables.len() {
        return Err(bad("the manifest's tail does not list every table".into()));
    }
    for s in &manifest.sequences {
        let found = client
            .query_typed(
                "SELECT CASE WHEN $3::int8 IS NULL THEN 0 ELSE setval(c.oid, $3::int8) END \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S'",
                &[
                    (&schema, tokio_postgres::types::Type::TEXT),
                    (&s.name, tokio_postgres::types::Type::TEXT),
                    (&s.value, tokio_postgres::types::Type::INT8),
                ],
            )
            .await
            .map_err(pg)?;
        if found.is_empty() {
            return Err(bad(format!(
                "the archive holds sequence {:?}, which the migrations do not make at {at}; nothing was imported",
                s.name
            )));
        }
    }
    let mut after = String::new();
    for t in &here.triggered {
        after.push_str(&format!(
            " ALTER TABLE {q}.{} ENABLE TRIGGER USER;",
            quote_ident(t)
        ));
    }
    for i in &indexes {
        after.push_str(&match i.constraint {
            true => format!(
                " ALTER TABLE {q}.{} ADD CONSTRAINT {} {};",
                quote_ident(&i.table),
                quote_ident(&i.name),
                i.definition
            ),
            false => format!(" {};", i.definition),
        });
    }
    // Added back, each checks every row: a row that breaks a key fails the import.
    for k in &keys {
        after.push_str(&format!(
            " ALTER TABLE {q}.{} ADD CONSTRAINT {} {};",
            quote_ident(&k.table),
            quote_ident(&k.name),
            k.definition
        ));
    }
    for m in &manifest.matviews {
        after.push_str(&format!(
            " REFRESH MATERIALIZED VIEW {q}.{};",
            quote_ident(m)
        ));
    }
    if !after.is_empty() {
        client.batch_execute(&after).await.map_err(pg)?;
    }
    Ok(())
}

/// Ends one table's COPY: PostgreSQL's count of rows must be the archive's.
async fn close(mut sink: Sink, table: &str, sum: &Summing) -> Result<(), Failure> {
    let rows = sink.as_mut().finish().await.map_err(pg)?;
    if rows != sum.rows {
        return Err(bad(format!(
            "table {table:?}: PostgreSQL loaded {rows} row(s) where the archive holds {}",
            sum.rows
        )));
    }
    Ok(())
}
