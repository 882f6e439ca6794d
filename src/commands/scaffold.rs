//! The commands that need no database: `init`, `migration new|list|check`, `completions`,
//! `man`. They never resolve a database URL, so they work with no server anywhere.

use std::fmt::Write as _;
use std::path::Path;

use clap::CommandFactory as _;
use serde_json::json;

use crate::cli::{
    Cli, CompletionsArgs, InitArgs, MigrationCheckArgs, MigrationCommand, MigrationListArgs,
    MigrationNewArgs,
};
use crate::config::Config;
use crate::exit::{self, UsageError};
use crate::migrations::lint::{self, Level};
use crate::migrations::rules::SetKind;
use crate::migrations::{highest_version, MigrationSet, NO_TRANSACTION};
use crate::report::json::Part;

/// The commented configuration `init` writes (the repository's own example).
const TEMPLATE: &str = include_str!("../../tenants.toml");

pub fn init(args: &InitArgs) -> anyhow::Result<i32> {
    let dir = args.dir.clone().unwrap_or_else(|| ".".into());
    let config = dir.join("tenants.toml");
    if config.exists() && !args.force {
        return Err(UsageError(format!(
            "{} exists; nothing was changed (--force overwrites it)",
            config.display()
        ))
        .into());
    }
    let made = |e: std::io::Error, what: &Path| {
        UsageError(format!("cannot create {}: {e}", what.display()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| made(e, &dir))?;
    std::fs::write(&config, TEMPLATE).map_err(|e| made(e, &config))?;
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations).map_err(|e| made(e, &migrations))?;
    let cd = match args.dir.as_deref() {
        Some(d) => format!("  cd {}\n", d.display()),
        None => String::new(),
    };
    crate::output::stdout(&format!(
        "created {} (the database URL comes from $DATABASE_URL) and {}/\nnext:\n{cd}  export DATABASE_URL=postgres://user@localhost:5432/app\n  tenantctl migration new create_users\n  tenantctl tenant create acme\n  tenantctl migrate --all\n  tenantctl status\n",
        config.display(),
        migrations.display()
    ));
    Ok(exit::SUCCESS)
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<i32> {
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "tenantctl", &mut buf);
    crate::output::stdout(&String::from_utf8_lossy(&buf));
    Ok(exit::SUCCESS)
}

pub fn man() -> anyhow::Result<i32> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
    crate::output::stdout(&String::from_utf8_lossy(&buf));
    Ok(exit::SUCCESS)
}

pub fn migration(config: &Config, command: MigrationCommand) -> anyhow::Result<i32> {
    match command {
        MigrationCommand::New(args) => new(config, &args),
        MigrationCommand::List(args) => list(config, &args),
        MigrationCommand::Check(args) => check(config, &args),
    }
}

/// `add invoices` → `add_invoices`; anything but letters, digits and `_` is refused.
fn normalise(name: &str) -> anyhow::Result<String> {
    let out: String = name
        .trim()
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if let Some(bad) = out
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(UsageError(format!(
            "migration name {name:?}: {bad:?} is not allowed (letters, digits, `_`, and spaces or `-` which become `_`); nothing was created"
        ))
        .into());
    }
    if out.trim_matches('_').is_empty() {
        return Err(UsageError(
            "the migration needs a name, e.g. add_invoices; nothing was created".into(),
        )
        .into());
    }
    Ok(out)
}

fn new(config: &Config, args: &MigrationNewArgs) -> anyhow::Result<i32> {
    let name = normalise(&args.name)?;
    let dir = &config.migrations.dir;
    let version = highest_version(dir)?.map_or(1, |v| v + 1);
    let label = format!("V{version}__{name}");
    let up = dir.join(format!("{label}.sql"));
    let mut body = String::new();
    if args.no_transaction {
        let _ = writeln!(body, "{NO_TRANSACTION}");
        let _ = writeln!(
            body,
            "-- Runs outside a transaction, statement by statement, and may run again after a crash:\n-- write it to be safe to re-run, e.g.\n-- CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_due_idx ON tasks (due_at);"
        );
    } else {
        let _ = writeln!(
            body,
            "-- {label}: runs in one transaction per tenant, in the tenant's schema."
        );
    }
    let mut made = vec![up.clone()];
    let write = |path: &Path, text: &str| -> anyhow::Result<()> {
        // Never over an existing file (a branch's migration of the same number).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                UsageError(format!(
                    "cannot create {}: {e}; nothing was created",
                    path.display()
                ))
            })?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        Ok(())
    };
    write(&up, &body)?;
    if args.down {
        let down = dir.join(format!("{label}.down.sql"));
        let mut text = String::new();
        if args.no_transaction {
            let _ = writeln!(text, "{NO_TRANSACTION}");
        }
        let _ = writeln!(
            text,
            "-- Reverts {label} (`tenantctl rollback --to {}`).",
            version - 1
        );
        if let Err(e) = write(&down, &text) {
            let _ = std::fs::remove_file(&up);
            return Err(e);
        }
        made.push(down);
    }
    let lines: Vec<String> = made.iter().map(|p| format!("{}\n", p.display())).collect();
    crate::output::stdout(&lines.concat());
    Ok(exit::SUCCESS)
}

/// A document of a command that needs no database: the common keys, then its own (no
/// `clusters`: there are none).
fn local_document(part: Part, code: i32) -> serde_json::Value {
    let mut doc = serde_json::Map::new();
    doc.insert("format".into(), json!(crate::report::json::FORMAT));
    doc.insert("ok".into(), json!(code == 0));
    doc.insert("exit_code".into(), json!(code));
    doc.insert("error".into(), serde_json::Value::Null);
    doc.extend(part.top);
    for (key, items) in part.lists {
        doc.insert(key.into(), serde_json::Value::Array(items));
    }
    let counts: serde_json::Map<String, serde_json::Value> = part
        .counts
        .into_iter()
        .map(|(k, n)| (k.into(), json!(n)))
        .collect();
    doc.insert("counts".into(), serde_json::Value::Object(counts));
    serde_json::Value::Object(doc)
}

fn list(config: &Config, args: &MigrationListArgs) -> anyhow::Result<i32> {
    let set = super::load_migrations(config)?;
    let rows: Vec<serde_json::Value> = set
        .files()
        .iter()
        .map(|f| {
            json!({
                "version": f.version,
                "name": f.name,
                "file": f.path,
                "checksum": f.migration.checksum().to_string(),
                "down": f.down.is_some(),
                "no_transaction": f.no_transaction,
            })
        })
        .collect();
    if args.json {
        let part = Part::default()
            .top("command", json!("migration list"))
            .top("dir", json!(set.dir))
            .list("migrations", rows)
            .count("migrations", set.files().len() as i64);
        crate::output::stdout(&format!("{}\n", local_document(part, exit::SUCCESS)));
        return Ok(exit::SUCCESS);
    }
    let mut out = String::new();
    if set.files().is_empty() {
        let _ = writeln!(
            out,
            "no migrations in {} (`tenantctl migration new NAME` starts one)",
            set.dir.display()
        );
    } else {
        let _ = writeln!(
            out,
            "{:<8} {:<40} {:>20}  DOWN  NO-TX",
            "VERSION", "NAME", "CHECKSUM"
        );
        for f in set.files() {
            let _ = writeln!(
                out,
                "{:<8} {:<40} {:>20}  {:<4}  {}",
                format!("V{}", f.version),
                f.name,
                f.migration.checksum(),
                if f.down.is_some() { "yes" } else { "-" },
                if f.no_transaction { "yes" } else { "-" }
            );
        }
        let _ = writeln!(
            out,
            "{} migration(s) in {}",
            set.files().len(),
            set.dir.display()
        );
    }
    crate::output::stdout(&out);
    Ok(exit::SUCCESS)
}

fn check(config: &Config, args: &MigrationCheckArgs) -> anyhow::Result<i32> {
    let m = &config.migrations;
    // What the loader refuses (names, duplicate versions, empty or non-UTF-8 files) is exit 2.
    let set = MigrationSet::load_skipping(&m.dir, Some(&m.shared_dir))?;
    let shared = match (m.shared_dir.exists(), m.shared_dir_configured) {
        (true, _) | (false, true) => Some(MigrationSet::load(&m.shared_dir).map_err(|e| {
            crate::migrations::MigrationSetError(format!(
                "shared migrations ([migrations] shared_dir): {}",
                e.0
            ))
        })?),
        (false, false) => None,
    };
    let tenant_rules = super::rules_for(config, SetKind::Tenant);
    let shared_rules = super::rules_for(config, SetKind::Shared);
    let findings = lint::check(
        &set,
        &tenant_rules,
        shared.as_ref().map(|s| (s, &shared_rules)),
    );
    let errors = findings.iter().filter(|f| f.level == Level::Error).count();
    let warnings = findings.len() - errors;
    let code = if errors > 0 {
        exit::FAILED
    } else {
        exit::SUCCESS
    };
    if args.json {
        let part = Part::default()
            .top("command", json!("migration check"))
            .top("dir", json!(set.dir))
            .list(
                "findings",
                findings
                    .iter()
                    .map(|f| serde_json::to_value(f).expect("plain data"))
                    .collect(),
            )
            .count("errors", errors as i64)
            .count("warnings", warnings as i64)
            .count("migrations", set.files().len() as i64);
        crate::output::stdout(&format!("{}\n", local_document(part, code)));
        return Ok(code);
    }
    let mut out = String::new();
    for f in &findings {
        out.push_str(&f.show());
    }
    let _ = writeln!(
        out,
        "{} migration(s) checked: {errors} error(s), {warnings} warning(s){}",
        set.files().len() + shared.as_ref().map_or(0, |s| s.files().len()),
        if findings.iter().any(|f| f.rule != "missing-down") {
            " (a finding that is right for this fleet is accepted by `-- tenantctl:allow RULE` on the line before the statement)"
        } else {
            ""
        }
    );
    crate::output::stdout(&out);
    Ok(code)
}
