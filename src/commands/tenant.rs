//! `tenantctl tenant create|list`.

use std::collections::HashMap;
use std::io::Read as _;

use serde_json::json;

use crate::cli::{AdoptArgs, CreateArgs, DropArgs, ListArgs, RunOpts};
use crate::config::Settings;
use crate::engine::apply::{Failure, FailureKind, Mode};
use crate::exit::{UsageError, SUCCESS};
use crate::migrations::MigrationSet;

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
    let request = Registration {
        command: "tenant create",
        mode: Mode::Create,
        target: migrations.latest(),
        if_not_exists: args.if_not_exists,
    };
    register(
        settings,
        &migrations,
        &args.ids,
        args.from_file.as_deref(),
        request,
        &args.run,
        quiet,
    )
    .await
}

pub async fn adopt(settings: &Settings, args: AdoptArgs, quiet: bool) -> anyhow::Result<i32> {
    let migrations = load_migrations(settings)?;
    super::migrate::require_on_disk(&migrations, args.baseline, "--baseline")?;
    let request = Registration {
        command: "tenant adopt",
        mode: Mode::Adopt {
            baseline: args.baseline,
        },
        target: Some(args.baseline),
        if_not_exists: false,
    };
    register(
        settings,
        &migrations,
        &args.ids,
        args.from_file.as_deref(),
        request,
        &args.run,
        quiet,
    )
    .await
}

/// What distinguishes create from adopt.
struct Registration {
    command: &'static str,
    mode: Mode,
    target: Option<i32>,
    if_not_exists: bool,
}

/// create and adopt: validate every id first, then register each tenant in its own
/// transaction, in parallel; ids already registered are refused (or skipped).
async fn register(
    settings: &Settings,
    migrations: &MigrationSet,
    args_ids: &[String],
    from_file: Option<&std::path::Path>,
    request: Registration,
    run: &RunOpts,
    quiet: bool,
) -> anyhow::Result<i32> {
    let mut ids = args_ids.to_vec();
    if let Some(path) = from_file {
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
        .filter(|r| r.state == "active")
        .map(|r| (r.tenant.id().to_string(), r.version))
        .collect();
    let scope = super::scope_of(Some(&tenants));
    let mut in_scope = Vec::new();
    let mut refused = Vec::new();
    for t in tenants {
        match existing.get(t.id()) {
            None => in_scope.push((t, None, true)),
            Some(v) if request.if_not_exists => in_scope.push((t, *v, false)),
            Some(v) => refused.push((
                t,
                Failure::new(
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
            command: request.command,
            mode: request.mode,
            migrations,
            target: request.target,
            scope,
            tenants: in_scope,
            refused,
            resume: false,
            jobs: settings.jobs,
            fail_fast: run.fail_fast,
            json: run.json,
        },
        crate::report::for_stderr(quiet),
    )
    .await
}

pub async fn drop(settings: &Settings, args: DropArgs, quiet: bool) -> anyhow::Result<i32> {
    let migrations =
        load_migrations(settings).unwrap_or_else(|_| MigrationSet::empty(&settings.migrations_dir));
    let tenants = parse_ids(settings, &args.ids)?;
    if !args.yes {
        confirm_drop(&tenants, args.archive)?;
    }
    let mut session = Session::open(settings, true).await?;
    let id_list: Vec<String> = tenants.iter().map(|t| t.id().to_string()).collect();
    let rows = session
        .control
        .tenants(&session.client, Some(&id_list))
        .await?;
    let mut in_scope = Vec::new();
    let mut missing = Vec::new();
    for t in tenants {
        match rows
            .iter()
            .find(|r| r.tenant.id() == t.id() && r.state == "active")
        {
            Some(r) => in_scope.push((t, r.version, true)),
            None => missing.push(t.id().to_string()),
        }
    }
    if !missing.is_empty() {
        return Err(UsageError(format!(
            "not registered (or already dropped): {}; nothing was changed",
            missing.join(", ")
        ))
        .into());
    }
    run_schemas(
        &mut session,
        RunRequest {
            command: if args.archive {
                "tenant drop --archive"
            } else {
                "tenant drop"
            },
            mode: Mode::Drop {
                archive: args.archive,
            },
            migrations: &migrations,
            target: None,
            scope: super::scope_of(Some(
                &in_scope.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
            )),
            tenants: in_scope,
            refused: Vec::new(),
            resume: false,
            jobs: settings.jobs,
            fail_fast: args.run.fail_fast,
            json: args.run.json,
        },
        crate::report::for_stderr(quiet),
    )
    .await
}

/// Without --yes: on a terminal, the operator types `drop <n>`; elsewhere, refuse.
fn confirm_drop(tenants: &[crate::tenant::Tenant], archive: bool) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        return Err(UsageError(
            "refusing to drop tenants without --yes (no terminal to confirm on); nothing was changed".into(),
        )
        .into());
    }
    let names: Vec<&str> = tenants.iter().map(|t| t.schema()).take(10).collect();
    let what = if archive {
        "rename (archive) the schemas"
    } else {
        "DELETE the schemas and all their data"
    };
    let expected = format!("drop {}", tenants.len());
    eprint!(
        "This will {what} of {} tenant(s): {}{}.\nType `{expected}` to confirm: ",
        tenants.len(),
        names.join(", "),
        if tenants.len() > 10 { ", …" } else { "" }
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != expected {
        return Err(UsageError("not confirmed; nothing was changed".into()).into());
    }
    Ok(())
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
