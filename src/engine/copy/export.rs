//! Export: one tenant's rows in one snapshot, as archive frames. The application keeps
//! writing meanwhile; what it writes after the snapshot is not in the archive.

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio_postgres::Client;

use super::{catalog, FrameSender};
use crate::archive::{Footer, Frame, HistoryEntry, Manifest, Summing, CHUNK, FORMAT};
use crate::engine::events::{Event, Events};
use crate::engine::history;
use crate::exit::UsageError;
use crate::labels::Labels;
use crate::migrations::MigrationSet;
use crate::tenant::{quote_ident, Tenant};

/// The tenant to export and what it is checked against.
pub struct Source<'a> {
    pub tenant: &'a Tenant,
    pub labels: &'a Labels,
    pub migrations: &'a MigrationSet,
    /// Export a schema whose history differs from the files anyway (recorded in the manifest).
    pub allow_drift: bool,
    /// The registry's drift mark, if an earlier run set one.
    pub registry_drift: Option<&'a str>,
}

/// What was exported: the manifest's head and tail.
pub struct Exported {
    pub manifest: Manifest,
    pub footer: Footer,
}

impl Exported {
    /// A fingerprint of the rows (their tables' SHA-256s), for the audit trail's digest.
    pub fn digest(&self) -> String {
        crate::digest::fnv1a_hex(
            self.footer
                .tables
                .iter()
                .flat_map(|t| t.sha256.bytes().collect::<Vec<_>>()),
        )
    }
}

/// Sends the tenant's archive frames to `out`, in a `REPEATABLE READ, READ ONLY` transaction
/// of its own on `client` (ended before returning). Refuses (exit 2) a schema that drifted
/// from the files, unless `allow_drift`, and tables holding large-object references.
pub async fn export(
    client: &Client,
    src: Source<'_>,
    out: &FrameSender,
    events: &Events,
) -> anyhow::Result<Exported> {
    client
        .batch_execute("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    let result = in_snapshot(client, src, out, events).await;
    // Read only: nothing to keep; a broken connection ends it anyway.
    let _ = client.batch_execute("ROLLBACK").await;
    result
}

/// Like [`export`], in the transaction already open on `client` (a move's: a snapshot
/// aligned with its replication slot, or the tables held against writes), which the caller
/// ends.
pub async fn in_snapshot(
    client: &Client,
    src: Source<'_>,
    out: &FrameSender,
    events: &Events,
) -> anyhow::Result<Exported> {
    let schema = src.tenant.schema();
    let replies = client
        .simple_query(&history::read_sql(&history::table(src.tenant)))
        .await
        .with_context(|| format!("reading the history of schema {schema}"))?;
    let applied = history::parse(&replies, None).map_err(|f| anyhow::anyhow!("{f}"))?;
    let version = applied.last().map(refinery::Migration::version);
    let mut drift = src.registry_drift.map(str::to_string);
    if let Err(f) = history::check(&applied, src.migrations, true) {
        drift = Some(f.message);
    }
    if let (Some(why), false) = (&drift, src.allow_drift) {
        return Err(UsageError(format!(
            "tenant {} differs from the migration files: {why}. Its schema is not what the files make at its version, so an import could not rebuild it; fix the drift (tenantctl status --verify), or export anyway with --allow-drift (recorded in the archive)",
            src.tenant.id()
        ))
        .into());
    }
    let catalog = || format!("reading the catalog of schema {schema}");
    let tables = catalog::tables(client, schema)
        .await
        .with_context(catalog)?;
    if !tables.large_objects.is_empty() {
        return Err(UsageError(format!(
            "tenant {} has large-object references ({}): their data lives outside the schema, in pg_largeobject, and tenantctl does not copy it; store the bytes in a bytea column, or copy the objects with pg_dump --large-objects",
            src.tenant.id(),
            tables.large_objects.join(", ")
        ))
        .into());
    }
    // Sequences are not transactional: read after the snapshot began, each is at least
    // where the rows in it had taken it.
    let sequences = catalog::sequences(client, schema)
        .await
        .with_context(catalog)?;
    let matviews = catalog::matviews(client, schema)
        .await
        .with_context(catalog)?;
    let manifest = Manifest {
        format: FORMAT,
        tenantctl: env!("CARGO_PKG_VERSION").into(),
        tenant: src.tenant.id().into(),
        schema: schema.into(),
        labels: src.labels.clone(),
        version,
        history: applied
            .iter()
            .map(|m| HistoryEntry {
                version: m.version(),
                name: m.name().to_string(),
                checksum: m.checksum().to_string(),
            })
            .collect(),
        migrations_digest: src.migrations.digest_upto(version),
        exported_at: now(),
        drift,
        tables: tables.tables,
        sequences,
        matviews,
    };
    send(out, Frame::Head(Box::new(manifest.clone()))).await?;
    let mut footer = Footer::default();
    for (i, table) in manifest.tables.iter().enumerate() {
        let sum = copy_out(client, schema, (i as u32, table), out, events).await?;
        footer.chunks += sum.1;
        footer.tables.push(sum.0.done());
    }
    send(out, Frame::Tail(footer.clone())).await?;
    Ok(Exported { manifest, footer })
}

async fn send(out: &FrameSender, frame: Frame) -> anyhow::Result<()> {
    out.send(Ok(frame))
        .await
        .map_err(|_| anyhow::anyhow!("the archive's writer stopped"))
}

/// One table's rows, in chunks of whole rows of about [`CHUNK`] bytes.
async fn copy_out(
    client: &Client,
    schema: &str,
    (index, table): (u32, &crate::archive::Table),
    out: &FrameSender,
    events: &Events,
) -> anyhow::Result<(Summing, u64)> {
    let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
    let sql = format!(
        "COPY {}.{} ({}) TO STDOUT",
        quote_ident(schema),
        quote_ident(&table.name),
        columns.join(", ")
    );
    let what = || format!("copying table {schema}.{} out", table.name);
    let rows = client.copy_out(&sql).await.with_context(what)?;
    let mut rows = std::pin::pin!(rows);
    let (mut sum, mut chunks) = (Summing::default(), 0u64);
    let mut chunk = bytes::BytesMut::with_capacity(CHUNK + (CHUNK >> 2));
    let mut flush = |chunk: &mut bytes::BytesMut, sum: &mut Summing| {
        let bytes = chunk.split().freeze();
        sum.add(&bytes);
        chunks += 1;
        bytes
    };
    loop {
        let row = rows.next().await;
        let end = row.is_none();
        // PostgreSQL sends each row of COPY text as one message: a chunk never splits one.
        if let Some(row) = row {
            chunk.extend_from_slice(&row.with_context(what)?);
        }
        if chunk.len() >= CHUNK || (end && !chunk.is_empty()) {
            let bytes = flush(&mut chunk, &mut sum);
            let frame = Frame::Data {
                table: index,
                bytes,
            };
            send(out, frame).await?;
            progress(events, &table.name, &sum);
        }
        if end {
            break;
        }
    }
    progress(events, &table.name, &sum);
    Ok((sum, chunks))
}

pub(super) fn progress(events: &Events, table: &str, sum: &Summing) {
    events.emit(&Event::Copying {
        table,
        rows: sum.rows,
        bytes: sum.bytes,
    });
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
