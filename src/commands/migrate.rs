//! `tenantctl migrate`: apply pending migrations to registered tenants.

use crate::cli::MigrateArgs;
use crate::config::Settings;
use crate::engine::apply::Mode;
use crate::exit::UsageError;

use super::{load_migrations, parse_ids, run_schemas, scope_of, RunRequest, Session};

pub async fn migrate(settings: &Settings, args: MigrateArgs, quiet: bool) -> anyhow::Result<i32> {
    let migrations = load_migrations(settings)?;
    let wanted = if args.all {
        None
    } else {
        Some(parse_ids(settings, &args.tenant)?)
    };
    let wanted_ids: Option<Vec<String>> = wanted
        .as_ref()
        .map(|ts| ts.iter().map(|t| t.id().to_string()).collect());
    let mut session = Session::open(settings, true).await?;
    let reporter = crate::report::for_stderr(quiet);
    session.fleet_lock(args.wait, reporter.as_ref()).await?;
    let rows = session
        .control
        .tenants(&session.client, wanted_ids.as_deref())
        .await?;
    if let Some(wanted) = &wanted_ids {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|id| {
                !rows
                    .iter()
                    .any(|r| r.tenant.id() == id.as_str() && r.state == "active")
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(UsageError(format!(
                "not registered: {}; nothing was changed (see `tenantctl tenant list`, or create them with `tenantctl tenant create`)",
                missing.join(", ")
            ))
            .into());
        }
    }
    let target = migrations.latest();
    let tenants = rows
        .into_iter()
        .filter(|r| r.state == "active")
        .map(|r| {
            let todo = r.version != target;
            (r.tenant, r.version, todo)
        })
        .collect();
    run_schemas(
        &mut session,
        RunRequest {
            command: "migrate",
            mode: Mode::Migrate,
            migrations: &migrations,
            target,
            scope: scope_of(wanted.as_deref()),
            tenants,
            refused: Vec::new(),
            resume: !args.fresh,
            jobs: settings.jobs,
            fail_fast: args.run.fail_fast,
            json: args.run.json,
        },
        reporter,
    )
    .await
}
