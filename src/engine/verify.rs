//! `status --verify`: reads every tenant schema's own history table (in batches, a few
//! queries for the whole fleet) and compares it with the registry and the files.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio_postgres::Client;

use crate::control::TenantRow;
use crate::engine::schema_tx::HISTORY_TABLE;
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
type Applied = (i32, String, String);

pub async fn verify(
    client: &Client,
    set: &MigrationSet,
    rows: &[TenantRow],
    prefix: &str,
    control_schema: &str,
) -> anyhow::Result<Verification> {
    // Every schema that looks like a tenant's, and whether it has a history table.
    let like = format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%")
    );
    let catalog = client
        .query(
            "SELECT n.nspname::text, c.oid IS NOT NULL FROM pg_namespace n \
             LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $2 \
             WHERE n.nspname LIKE $1 AND n.nspname NOT LIKE 'pg\\_%' \
               AND n.nspname NOT IN ('information_schema', 'public', $3)",
            &[&like, &HISTORY_TABLE, &control_schema],
        )
        .await
        .map_err(|e| anyhow::anyhow!("listing schemas: {}", describe(&e)))?;
    let schemas: HashMap<String, bool> =
        catalog.into_iter().map(|r| (r.get(0), r.get(1))).collect();

    let with_history: Vec<&str> = rows
        .iter()
        .map(|r| r.tenant.schema())
        .filter(|s| schemas.get(*s).copied().unwrap_or(false))
        .collect();
    let mut histories: HashMap<String, Vec<Applied>> = HashMap::new();
    for chunk in with_history.chunks(BATCH) {
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
            .query(&format!("{sql} ORDER BY 1, 2"), &[])
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

    let files: BTreeMap<i32, (String, String)> = set
        .refinery()
        .iter()
        .map(|m| {
            (
                m.version(),
                (m.name().to_string(), m.checksum().to_string()),
            )
        })
        .collect();
    let mut problems = Vec::new();
    let mut push = |id: Option<&str>, schema: &str, problem: String| {
        problems.push(Problem {
            id: id.map(str::to_string),
            schema: schema.to_string(),
            problem,
        })
    };
    for r in rows {
        let (id, schema) = (r.tenant.id(), r.tenant.schema());
        match schemas.get(schema) {
            None => {
                push(
                    Some(id),
                    schema,
                    "registered, but its schema does not exist".into(),
                );
                continue;
            }
            Some(false) => {
                if r.version.is_some() {
                    push(
                        Some(id),
                        schema,
                        format!(
                            "registry says V{}, but the schema has no {HISTORY_TABLE} table",
                            r.version.unwrap_or_default()
                        ),
                    );
                }
                continue;
            }
            Some(true) => {}
        }
        let applied = histories.get(schema).map(Vec::as_slice).unwrap_or(&[]);
        let history_version = applied.iter().map(|a| a.0).max();
        if history_version != r.version {
            push(
                Some(id),
                schema,
                format!(
                    "registry says {}, the schema's history says {}",
                    r.version
                        .map_or("nothing applied".into(), |v| format!("V{v}")),
                    history_version.map_or("nothing applied".into(), |v| format!("V{v}"))
                ),
            );
        }
        for (version, name, checksum) in applied {
            match files.get(version) {
                None => push(Some(id), schema, format!("drift: V{version}__{name} is applied but has no file")),
                Some((fname, fsum)) if fname != name || fsum != checksum => push(
                    Some(id),
                    schema,
                    format!("drift: V{version}__{name} was changed after it was applied (checksum {checksum} applied, {fsum} on disk)"),
                ),
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
                push(
                    Some(id),
                    schema,
                    format!(
                        "drift: never applied but below the schema's version V{top}: {}",
                        gaps.join(", ")
                    ),
                );
            }
        }
    }
    let registered: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.tenant.schema()).collect();
    // `__` never appears in a tenant's schema: such names are tenantctl's archives.
    let mut strays: Vec<&String> = schemas
        .keys()
        .filter(|s| !registered.contains(s.as_str()) && !s.contains("__"))
        .collect();
    strays.sort();
    for s in strays {
        push(None, s, format!("schema has the tenant prefix {prefix:?} but is not a registered tenant (adopt it with `tenantctl tenant adopt`, or drop it)"));
    }
    Ok(Verification {
        checked: rows.len(),
        problems,
    })
}
