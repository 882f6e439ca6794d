//! `tenantctl tenant create|list`.

use std::collections::HashMap;
use std::io::Read as _;

use serde_json::json;

use crate::cli::{CreateArgs, ListArgs};
use crate::config::Settings;
use crate::engine::apply::{Failure, FailureKind, Mode};
use crate::exit::{UsageError, SUCCESS};

use super::{load_migrations, parse_ids, redact_json, run_schemas, RunRequest, Session};

/// Reads ids from a file or stdin: one per line, blanks and `#` comments ignored.
fn read_id_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| UsageError(format!("cannot read tenant ids from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            UsageError(format!(
                "cannot read tenant ids from {}: {e}",
                path.display()
            ))
        })?
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

pub async fn create(settings: &Settings, args: CreateArgs, quiet: bool) -> anyhow::Result<i32> {
    let migrations = load_migrations(settings)?;
    let mut ids = args.ids.clone();
    if let Some(path) = &args.from_file {
        ids.extend(read_id_file(path)?);
    }
    if ids.is_empty() {
        return Err(UsageError(
            "no tenant ids given; pass ids as arguments or with --from-file".into(),
        )
        .into());
    }
    let tenants = parse_ids(settings, &ids)?;
    let mut session = Session::open(settings, true).await?;
    let id_list: Vec<String> = tenants.iter().map(|t| t.id().to_string()).collect();
    let existing: HashMap<String, Option<i32>> = session
        .control
        .tenants(&session.client, Some(&id_list))
        .await?
        .into_iter()
        .map(|r| (r.tenant.id().to_string(), r.version))
        .collect();
    let scope = super::scope_of(Some(&tenants));
    let mut in_scope = Vec::new();
    let mut refused = Vec::new();
    for t in tenants {
        match existing.get(t.id()) {
            None => in_scope.push((t, None, true)),
            Some(v) if args.if_not_exists => in_scope.push((t, *v, false)),
            Some(v) => refused.push((
                t,
                Failure::plain(
                    FailureKind::AlreadyExists,
                    "is already registered".into(),
                    *v,
                ),
            )),
        }
    }
    run_schemas(
        &mut session,
        RunRequest {
            command: "tenant create",
            mode: Mode::Create,
            migrations: &migrations,
            target: migrations.latest(),
            scope,
            tenants: in_scope,
            refused,
            resume: false,
            jobs: settings.jobs,
            fail_fast: args.run.fail_fast,
            json: args.run.json,
        },
        crate::report::for_stderr(quiet),
    )
    .await
}

pub async fn list(settings: &Settings, args: ListArgs) -> anyhow::Result<i32> {
    let session = Session::open(settings, false).await?;
    let rows = if session.control.exists(&session.client).await? {
        session.control.tenants(&session.client, None).await?
    } else {
        Vec::new()
    };
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "id": r.tenant.id(), "schema": r.tenant.schema(), "state": r.state,
                    "version": r.version, "created_at": r.created_at,
                })
            })
            .collect();
        println!("{}", redact_json(&serde_json::Value::Array(list)));
        return Ok(SUCCESS);
    }
    if rows.is_empty() {
        println!("no tenants registered (create one with `tenantctl tenant create <ID>`)");
        return Ok(SUCCESS);
    }
    let w_id = rows
        .iter()
        .map(|r| r.tenant.id().len())
        .max()
        .unwrap_or(2)
        .max(2);
    let w_schema = rows
        .iter()
        .map(|r| r.tenant.schema().len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<w_id$}  {:<w_schema$}  {:<7}  {:>7}  CREATED",
        "ID", "SCHEMA", "STATE", "VERSION"
    );
    for r in &rows {
        let v = r.version.map_or("-".to_string(), |v| format!("V{v}"));
        println!(
            "{:<w_id$}  {:<w_schema$}  {:<7}  {:>7}  {}",
            r.tenant.id(),
            r.tenant.schema(),
            r.state,
            v,
            r.created_at
        );
    }
    println!("{} tenant(s)", rows.len());
    Ok(SUCCESS)
}
