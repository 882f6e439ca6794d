//! `status --verify`: reads every tenant schema's own history table (in batches, a few
//! queries for the whole fleet) and compares it with the registry and the files.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::control::TenantRow;
use crate::engine::history::HISTORY_TABLE;
use crate::migrations::MigrationSet;
use crate::pgerror::describe;
use crate::tenant::{quote_ident, quote_literal};

/// Schemas read per query.
const BATCH: usize = 500;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub id: Option<String>,
    pub schema: String,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub checked: usize,
    pub problems: Vec<Problem>,
}

/// One applied row: (version, name, checksum).
pub type Applied = (i32, String, String);

/// Reads the history of every tenant schema in `rows` and compares it with the registry and
/// the files. With `whole_fleet` (`rows` is every registered tenant), also reports schemas
/// with the tenant prefix that are not registered; a narrowed check (`--tenant`) does not.
pub async fn verify(
    client: &Client,
    set: &MigrationSet,
    rows: &[TenantRow],
    whole_fleet: bool,
    prefix: &str,
    control_schema: &str,
) -> anyhow::Result<Verification> {
    let schemas = tenant_like_schemas(client, prefix, control_schema).await?;
    let with_history: Vec<&str> = rows
        .iter()
        .map(|r| r.tenant.schema())
        .filter(|s| schemas.get(*s).copied().unwrap_or(false))
        .collect();
    let histories = read_histories(client, &with_history).await?;
    let files: BTreeMap<i32, (String, String)> = set
        .files()
        .iter()
        .map(|f| {
            (
                f.version,
                (f.name.clone(), f.migration.checksum().to_string()),
            )
        })
        .collect();
    let mut problems = Vec::new();
    for r in rows {
        let (id, schema) = (r.tenant.id(), r.tenant.schema());
        let found = match schemas.get(schema) {
            None => vec!["registered, but its schema does not exist".to_string()],
            Some(false) => r
                .version
                .map(|v| format!("registry says V{v}, but the schema has no {HISTORY_TABLE} table"))
                .into_iter()
                .collect(),
            Some(true) => check_history(
                r.version,
                histories.get(schema).map(Vec::as_slice).unwrap_or(&[]),
                &files,
            ),
        };
        problems.extend(found.into_iter().map(|problem| Problem {
            id: Some(id.to_string()),
            schema: schema.to_string(),
            problem,
        }));
    }
    let registered: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.tenant.schema()).collect();
    // `__` never appears in a tenant's schema: such names are tenantctl's archives.
    let mut strays: Vec<&String> = schemas
        .keys()
        .filter(|s| whole_fleet && !registered.contains(s.as_str()) && !s.contains("__"))
        .collect();
    strays.sort();
    problems.extend(strays.into_iter().map(|s| Problem {
        id: None,
        schema: s.clone(),
        problem: format!("schema has the tenant prefix {prefix:?} but is not a registered tenant (adopt it with `tenantctl tenant adopt`, or drop it)"),
    }));
    Ok(Verification {
        checked: rows.len(),
        problems,
    })
}

/// Every schema that looks like a tenant's, and whether it has a history table.
async fn tenant_like_schemas(
    client: &Client,
    prefix: &str,
    control_schema: &str,
) -> anyhow::Result<HashMap<String, bool>> {
    let like = format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%")
    );
    let catalog = client
        .query_typed(
            "SELECT n.nspname::text, c.oid IS NOT NULL FROM pg_namespace n \
             LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $2 \
             WHERE n.nspname LIKE $1 AND n.nspname NOT LIKE 'pg\\_%' \
               AND n.nspname NOT IN ('information_schema', 'public', $3)",
            &[
                (&like, Type::TEXT),
                (&HISTORY_TABLE, Type::TEXT),
                (&control_schema, Type::TEXT),
            ],
        )
        .await
        .map_err(|e| anyhow::anyhow!("listing schemas: {}", describe(&e)))?;
    Ok(catalog.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The history rows of `schemas`, a few batched queries for the whole fleet.
pub async fn read_histories(
    client: &Client,
    schemas: &[&str],
) -> anyhow::Result<HashMap<String, Vec<Applied>>> {
    let mut histories: HashMap<String, Vec<Applied>> = HashMap::new();
    for chunk in schemas.chunks(BATCH) {
        let sql = chunk
            .iter()
            .map(|s| {
                format!(
                    "SELECT {lit}::text, version, name::text, checksum::text FROM {q}.{HISTORY_TABLE}",
                    lit = quote_literal(s),
                    q = quote_ident(s)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let found = client
            .query_typed(&format!("{sql} ORDER BY 1, 2"), &[])
            .await
            .map_err(|e| anyhow::anyhow!("reading history tables: {}", describe(&e)))?;
        for r in found {
            histories.entry(r.get(0)).or_default().push((
                r.get(1),
                r.get::<_, Option<String>>(2).unwrap_or_default(),
                r.get::<_, Option<String>>(3).unwrap_or_default(),
            ));
        }
    }
    Ok(histories)
}

/// What is wrong with one schema's history against the registry's version and the files.
fn check_history(
    registry: Option<i32>,
    applied: &[Applied],
    files: &BTreeMap<i32, (String, String)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let history_version = applied.iter().map(|a| a.0).max();
    if history_version != registry {
        problems.push(format!(
            "registry says {}, the schema's history says {}",
            registry.map_or("nothing applied".into(), |v| format!("V{v}")),
            history_version.map_or("nothing applied".into(), |v| format!("V{v}"))
        ));
    }
    for (version, name, checksum) in applied {
        match files.get(version) {
            None => problems.push(format!("drift: V{version}__{name} is applied but has no file")),
            Some((fname, fsum)) if fname != name || fsum != checksum => problems.push(format!(
                "drift: V{version}__{name} was changed after it was applied (checksum {checksum} applied, {fsum} on disk)"
            )),
            Some(_) => {}
        }
    }
    if let Some(top) = history_version {
        let gaps: Vec<String> = files
            .iter()
            .filter(|(v, _)| **v < top && !applied.iter().any(|a| a.0 == **v))
            .map(|(v, (n, _))| format!("V{v}__{n}"))
            .collect();
        if !gaps.is_empty() {
            problems.push(format!(
                "drift: never applied but below the schema's version V{top}: {}",
                gaps.join(", ")
            ));
        }
    }
    problems
}
