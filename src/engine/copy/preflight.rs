//! Before an import creates anything: does the archive fit the schema the migration files
//! make at its version? The files are run in a schema of their own, in a transaction that is
//! always rolled back, and the archive's tables, columns, sequences and materialized views
//! are looked up there. A misfit (a drifted source, a forged manifest) is then a usage error
//! (exit 2) with nothing written, not a failed run.

use tokio_postgres::Client;

use super::catalog;
use crate::archive::{Manifest, Table};
use crate::migrations::{version_label, MigrationSet};
use crate::tenant::quote_ident;

/// What in the archive the schema does not have (tables and their columns), if anything.
pub fn misfit(manifest: &Manifest, here: &[Table]) -> Option<String> {
    let at = version_label(manifest.version);
    for t in &manifest.tables {
        let Some(mine) = here.iter().find(|m| m.name == t.name) else {
            return Some(format!(
                "the archive holds table {:?}, which the migrations do not make at {at}: it was not made by them (drift), or the files changed; nothing was imported",
                t.name
            ));
        };
        if let Some(c) = t.columns.iter().find(|c| !mine.columns.contains(c)) {
            return Some(format!(
                "the archive's table {:?} has column {c:?}, which the migrations do not make at {at} (or make generated); nothing was imported",
                t.name
            ));
        }
    }
    None
}

/// Runs the files up to the archive's version in a scratch schema (rolled back) and says
/// what of the archive does not fit it. None: it fits, or the files could not be run here
/// on their own (the shared migrations not applied yet, say): the import's own transaction
/// checks again, and reports that properly.
pub async fn check(
    client: &Client,
    migrations: &MigrationSet,
    manifest: &Manifest,
    also_on_path: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let scratch = format!("tenantctl_preflight_{}", std::process::id());
    let path = std::iter::once(scratch.as_str())
        .chain(also_on_path)
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(", ");
    client
        .batch_execute(&format!(
            "BEGIN; CREATE SCHEMA {}; SET LOCAL search_path TO {path}; SET LOCAL client_min_messages = warning",
            quote_ident(&scratch)
        ))
        .await?;
    let result = async {
        for file in migrations.files() {
            if manifest.version.is_none_or(|v| file.version > v) {
                break;
            }
            if file.no_transaction
                || client
                    .batch_execute(file.migration.sql().unwrap_or_default())
                    .await
                    .is_err()
            {
                return Ok(None);
            }
        }
        let tables = catalog::tables(client, &scratch).await?;
        if let Some(problem) = misfit(manifest, &tables.tables) {
            return Ok(Some(problem));
        }
        let sequences = catalog::sequences(client, &scratch).await?;
        let at = version_label(manifest.version);
        if let Some(s) = manifest
            .sequences
            .iter()
            .find(|s| !sequences.iter().any(|m| m.name == s.name))
        {
            return Ok(Some(format!(
                "the archive holds sequence {:?}, which the migrations do not make at {at}; nothing was imported",
                s.name
            )));
        }
        anyhow::Ok(None)
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    result
}
