//! tenantctl: provision and migrate PostgreSQL tenants in the schema-per-tenant model.
//! [`main`] parses the command line, resolves it and the config once, hands off to a command,
//! and turns the outcome into an exit code. See ARCHITECTURE.md for the map of the modules.

mod cli;
mod commands;
mod config;
mod conninfo;
mod control;
mod db;
mod digest;
mod engine;
mod exit;
mod migrations;
mod pgerror;
mod redact;
mod report;
mod signals;
pub mod tenant;
mod whoami;

use clap::Parser as _;

use cli::{Cli, Command, TenantCommand};
use config::{Config, Overrides};

/// The whole program: parse, run, and the exit code. Errors print with their whole cause
/// chain, passwords scrubbed.
pub fn main() -> i32 {
    install_panic_hook();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", redact::scrub(&format!("{err:#}")));
            exit::code_for(&err)
        }
    }
}

/// Panics print through the scrubber too, so not even a bug can print a password.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "tenantctl crashed (a bug; please report it): {}",
            redact::scrub(&info.to_string())
        );
    }));
}

/// What the command line asks of the configuration: a `--jobs` override, and whether the
/// command connects to a database at all (those that do not never need a URL).
fn needs(command: &Command) -> (Option<u16>, bool) {
    match command {
        Command::Migrate(a) => (a.fleet.run.jobs, true),
        Command::Rollback(a) => (a.fleet.run.jobs, true),
        Command::Status(_) | Command::Audit(_) => (None, true),
        Command::Tenant(t) => match t {
            TenantCommand::Create(a) => (a.run.jobs, true),
            TenantCommand::Adopt(a) => (a.run.jobs, true),
            TenantCommand::Drop(a) => (a.run.jobs, true),
            TenantCommand::List(_) => (None, true),
        },
    }
}

/// Runs the parsed command line and returns the exit code.
fn run(cli: Cli) -> anyhow::Result<i32> {
    let (jobs, needs_database) = needs(&cli.command);
    let overrides = Overrides {
        database_url: cli.global.database_url.clone(),
        jobs: jobs.map(usize::from),
    };
    let config = Config::load(&cli.global.config, &overrides)?;
    let targets = if needs_database {
        config.targets(&cli.global.cluster)?
    } else {
        Vec::new()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let ctx = &commands::Ctx {
            reporters: report::Reporters::new(cli.global.quiet, config.multi_cluster),
            signals: signals::Signals::install(),
            actor: whoami::actor(cli.global.actor.as_deref()),
            targets,
            config,
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
