//! tenantctl: provision and migrate PostgreSQL tenants in the schema-per-tenant model.
//! `run` resolves the command line and config once, then hands off to a command.

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod db;
pub mod digest;
pub mod engine;
pub mod exit;
pub mod migrations;
pub mod redact;
pub mod report;
pub mod tenant;

use cli::{Cli, Command, TenantCommand};
use config::{Overrides, Settings};

/// Panics print through the scrubber too, so not even a bug can print a password.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "tenantctl crashed (a bug; please report it): {}",
            redact::scrub(&info.to_string())
        );
    }));
}

/// Runs the parsed command line and returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let jobs = match &cli.command {
        Command::Migrate(a) => a.fleet.run.jobs,
        Command::Rollback(a) => a.fleet.run.jobs,
        Command::Tenant(TenantCommand::Create(a)) => a.run.jobs,
        Command::Tenant(TenantCommand::Adopt(a)) => a.run.jobs,
        Command::Tenant(TenantCommand::Drop(a)) => a.run.jobs,
        _ => None,
    };
    let overrides = Overrides {
        database_url: cli.global.database_url.clone(),
        jobs: jobs.map(usize::from),
        actor: cli.global.actor.clone(),
    };
    let settings = Settings::load(&cli.global.config, &overrides)?;
    let clusters = settings.select(&cli.global.cluster)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let ctx = &commands::Ctx {
            reporters: report::Reporters::new(cli.global.quiet, settings.multi_cluster),
            signals: commands::Signals::install(),
            clusters,
            settings,
        };
        match cli.command {
            Command::Tenant(TenantCommand::Create(args)) => {
                commands::tenant::create(ctx, args).await
            }
            Command::Tenant(TenantCommand::Adopt(args)) => commands::tenant::adopt(ctx, args).await,
            Command::Tenant(TenantCommand::List(args)) => commands::tenant::list(ctx, args).await,
            Command::Tenant(TenantCommand::Drop(args)) => commands::tenant::drop(ctx, args).await,
            Command::Migrate(args) => commands::migrate::migrate(ctx, args).await,
            Command::Rollback(args) => commands::rollback::rollback(ctx, args).await,
            Command::Status(args) => commands::status::status(ctx, args).await,
            Command::Audit(args) => commands::audit::audit(ctx, args).await,
        }
    })
}
