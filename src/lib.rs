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
mod labels;
mod migrations;
mod output;
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
/// chain, passwords scrubbed; with `--json`, also as a JSON document on stdout.
pub fn main() -> i32 {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return command_line_error(e),
    };
    let json = needs(&cli.command).json;
    let name = command_name(&cli.command);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let kind = exit::Kind::of(&err);
            output::stderr_line(&format!("error: {err:#}"));
            if json {
                output::stdout(&format!(
                    "{}\n",
                    report::json::error_document(&err, Some(name))
                ));
            }
            kind.code()
        }
    }
}

/// A command line clap refused (or `--help`, `--version`): clap prints it as usual; with
/// `--json` among the arguments, a usage error is also a JSON document on stdout.
fn command_line_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    let _ = e.print();
    if informational {
        return e.exit_code();
    }
    if std::env::args_os().skip(1).any(|a| a == "--json") {
        let err = anyhow::Error::new(exit::UsageError(
            e.render().to_string().trim_end().to_string(),
        ));
        output::stdout(&format!("{}\n", report::json::error_document(&err, None)));
    }
    exit::USAGE
}

/// Panics print through the scrubber too, so not even a bug can print a password.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        output::stderr_line(&format!(
            "tenantctl crashed (a bug; please report it): {info}"
        ));
    }));
}

/// What a command asks of the process: a `--jobs` override, whether it connects to a
/// database at all (those that do not never need a URL), and whether it prints JSON.
struct Needs {
    jobs: Option<u16>,
    database: bool,
    json: bool,
}

fn needs(command: &Command) -> Needs {
    let run = |r: &cli::RunOpts| Needs {
        jobs: r.jobs,
        database: true,
        json: r.json,
    };
    let read = |json: bool| Needs {
        jobs: None,
        database: true,
        json,
    };
    match command {
        Command::Migrate(a) => run(&a.fleet.run),
        Command::Rollback(a) => run(&a.fleet.run),
        Command::Repair(a) => run(&a.run),
        Command::Status(a) => read(a.json),
        Command::Audit(a) => read(a.json),
        Command::Tenant(t) => match t {
            TenantCommand::Create(a) => run(&a.run),
            TenantCommand::Adopt(a) => run(&a.run),
            TenantCommand::Drop(a) => run(&a.run),
            TenantCommand::Label(a) => run(&a.run),
            TenantCommand::List(a) => read(a.json),
        },
    }
}

/// The command's name as documents give it (`migrate`, `tenant create`, …).
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Migrate(_) => "migrate",
        Command::Rollback(_) => "rollback",
        Command::Repair(_) => "repair",
        Command::Status(_) => "status",
        Command::Audit(_) => "audit",
        Command::Tenant(t) => match t {
            TenantCommand::Create(_) => "tenant create",
            TenantCommand::Adopt(_) => "tenant adopt",
            TenantCommand::Drop(_) => "tenant drop",
            TenantCommand::Label(_) => "tenant label",
            TenantCommand::List(_) => "tenant list",
        },
    }
}

/// Runs the parsed command line and returns the exit code.
fn run(cli: Cli) -> anyhow::Result<i32> {
    let needs = needs(&cli.command);
    let overrides = Overrides {
        database_url: cli.global.database_url.clone(),
        jobs: needs.jobs.map(usize::from),
    };
    let config = Config::load(&cli.global.config, &overrides)?;
    let targets = if needs.database {
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
            Command::Tenant(TenantCommand::Label(args)) => commands::tenant::label(ctx, args).await,
            Command::Migrate(args) => commands::migrate::migrate(ctx, args).await,
            Command::Rollback(args) => commands::rollback::rollback(ctx, args).await,
            Command::Repair(args) => commands::repair::repair(ctx, args).await,
            Command::Status(args) => commands::status::status(ctx, args).await,
            Command::Audit(args) => commands::audit::audit(ctx, args).await,
        }
    })
}
