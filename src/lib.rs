//! tenantctl: provision and migrate PostgreSQL tenants in the schema-per-tenant model.
//! [`main`] parses the command line, resolves it and the config once, hands off to a command,
//! and turns the outcome into an exit code. See ARCHITECTURE.md for the map of the modules.

mod archive;
mod cli;
mod commands;
mod config;
mod conninfo;
mod control;
mod db;
mod digest;
#[cfg(test)]
mod docs_check;
mod engine;
mod exit;
mod labels;
mod lists;
mod migrations;
mod output;
mod pgerror;
mod redact;
mod report;
mod seed;
mod signals;
pub mod tenant;
mod whoami;

use clap::Parser as _;

use cli::{Cli, Command, MigrationCommand, PoolCommand, TenantCommand};
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
fn command_line_error(mut e: clap::Error) -> i32 {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    // clap lists "similar" names least similar first: the closest goes first here.
    for kind in [
        ContextKind::SuggestedSubcommand,
        ContextKind::SuggestedArg,
        ContextKind::SuggestedValue,
    ] {
        if let Some(ContextValue::Strings(mut names)) = e.get(kind).cloned() {
            names.reverse();
            e.insert(kind, ContextValue::Strings(names));
        }
    }
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
    /// --actor, for commands that change something.
    actor: Option<String>,
    /// --events, --metrics-file, --pushgateway, --slow-after, as given (the commands that
    /// change tenants take them; --slow-after only the fleet runs).
    observe: cli::ObserveOpts,
}

fn needs(command: &Command) -> Needs {
    let run = |r: &cli::RunOpts| Needs {
        jobs: r.jobs,
        database: true,
        json: r.json,
        actor: r.actor.clone(),
        observe: r.observe.clone(),
    };
    // Not fleet runs: their changes are observed as runs of their own (commands/observed.rs).
    let data = |d: &cli::DataOpts, stream: Option<&cli::StreamOpts>| Needs {
        jobs: None,
        database: true,
        json: d.json,
        actor: d.actor.clone(),
        observe: cli::ObserveOpts {
            stream: stream.cloned().unwrap_or_default(),
            slow_after: None,
        },
    };
    let read = |json: bool| Needs {
        jobs: None,
        database: true,
        json,
        actor: None,
        observe: cli::ObserveOpts::default(),
    };
    let local = |json: bool| Needs {
        database: false,
        ..read(json)
    };
    match command {
        Command::Init(_) | Command::Completions(_) | Command::Man => local(false),
        Command::Migration(m) => match m {
            MigrationCommand::New(_) => local(false),
            MigrationCommand::List(a) => local(a.json),
            MigrationCommand::Check(a) => local(a.json),
        },
        Command::Migrate(a) => run(&a.fleet.run),
        Command::Rollback(a) => run(&a.fleet.run),
        Command::Repair(a) => run(&a.run),
        Command::Status(a) => read(a.json),
        Command::Audit(a) => read(a.json),
        Command::Doctor(a) => read(a.json),
        Command::Rebalance(a) => data(&a.opts, Some(&a.stream)),
        Command::Query(a) => Needs {
            jobs: a.jobs,
            json: a.json || a.format == Some(report::rows::Format::Json),
            ..read(false)
        },
        Command::Exec(a) => run(&a.run),
        Command::Tenant(t) => match t {
            TenantCommand::Create(a) => run(&a.run),
            TenantCommand::Adopt(a) => run(&a.run),
            TenantCommand::Drop(a) => run(&a.run),
            TenantCommand::Label(a) => data(&a.opts, Some(&a.stream)),
            TenantCommand::List(a) => read(a.json),
            TenantCommand::Export(a) => data(&a.opts, None),
            TenantCommand::Import(a) => Needs {
                observe: a.observe.clone(),
                ..data(&a.opts, None)
            },
            TenantCommand::Clone(a) => Needs {
                observe: a.observe.clone(),
                ..data(&a.opts, None)
            },
            TenantCommand::Rename(a) => data(&a.opts, Some(&a.stream)),
            TenantCommand::Move(a) => data(&a.opts, Some(&a.stream)),
            TenantCommand::Stats(a) => read(a.json),
            TenantCommand::Tiers(cli::TiersCommand::Apply(a)) => data(&a.opts, None),
            TenantCommand::Tiers(cli::TiersCommand::Status(a)) => read(a.json),
            TenantCommand::Pool(p) => match p {
                PoolCommand::Fill(a) => run(&a.run),
                PoolCommand::Drain(a) => run(&a.run),
                PoolCommand::Status(a) => read(a.json),
            },
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
        Command::Doctor(_) => "doctor",
        Command::Rebalance(_) => "rebalance",
        Command::Query(_) => "query",
        Command::Exec(_) => "exec",
        Command::Init(_) => "init",
        Command::Completions(_) => "completions",
        Command::Man => "man",
        Command::Migration(m) => match m {
            MigrationCommand::New(_) => "migration new",
            MigrationCommand::List(_) => "migration list",
            MigrationCommand::Check(_) => "migration check",
        },
        Command::Tenant(t) => match t {
            TenantCommand::Create(_) => "tenant create",
            TenantCommand::Adopt(_) => "tenant adopt",
            TenantCommand::Drop(_) => "tenant drop",
            TenantCommand::Label(_) => "tenant label",
            TenantCommand::List(_) => "tenant list",
            TenantCommand::Export(_) => "tenant export",
            TenantCommand::Import(_) => "tenant import",
            TenantCommand::Clone(_) => "tenant clone",
            TenantCommand::Rename(_) => "tenant rename",
            TenantCommand::Move(_) => "tenant move",
            TenantCommand::Stats(_) => "tenant stats",
            TenantCommand::Tiers(cli::TiersCommand::Apply(_)) => "tenant tiers apply",
            TenantCommand::Tiers(cli::TiersCommand::Status(_)) => "tenant tiers status",
            TenantCommand::Pool(p) => match p {
                PoolCommand::Fill(_) => "tenant pool fill",
                PoolCommand::Status(_) => "tenant pool status",
                PoolCommand::Drain(_) => "tenant pool drain",
            },
        },
    }
}

/// Runs the parsed command line and returns the exit code.
fn run(cli: Cli) -> anyhow::Result<i32> {
    // Commands that need no configuration at all.
    match &cli.command {
        Command::Init(args) => return commands::scaffold::init(args),
        Command::Completions(args) => return commands::scaffold::completions(args),
        Command::Man => return commands::scaffold::man(),
        _ => {}
    }
    let needs = needs(&cli.command);
    let overrides = Overrides {
        database_url: cli.global.database_url.clone(),
        jobs: needs.jobs.map(usize::from),
        slow_after: needs.observe.slow_after,
    };
    let path = &cli.global.config;
    let config = match &cli.command {
        // Migration files need no database: without a config, `migrations/` here.
        Command::Migration(_) if !path.exists() && path == std::path::Path::new("tenants.toml") => {
            Config::parse(path, "", &overrides)?
        }
        _ => Config::load(path, &overrides)?,
    };
    if let Command::Migration(command) = cli.command {
        return commands::scaffold::migration(&config, command);
    }
    let targets = if needs.database {
        config.targets(&cli.global.cluster)?
    } else {
        Vec::new()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stream, metrics) = observing(&needs)?;
    let deliveries = (
        needs.observe.stream.metrics_file.clone(),
        needs.observe.stream.pushgateway.clone(),
    );
    let gathered = metrics.clone();
    let outcome = runtime.block_on(async move {
        let ctx = &commands::Ctx {
            reporters: report::Reporters::new(cli.global.quiet, config.multi_cluster)
                .observed(stream, gathered),
            signals: signals::Signals::install(),
            actor: whoami::actor(needs.actor.as_deref()),
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
            Command::Tenant(TenantCommand::Export(args)) => {
                commands::tenant_data::export(ctx, args).await
            }
            Command::Tenant(TenantCommand::Import(args)) => {
                commands::tenant_data::import(ctx, args).await
            }
            Command::Tenant(TenantCommand::Clone(args)) => {
                commands::tenant_data::clone(ctx, args).await
            }
            Command::Tenant(TenantCommand::Rename(args)) => {
                commands::tenant_rename::rename(ctx, args).await
            }
            Command::Tenant(TenantCommand::Move(args)) => {
                commands::tenant_move::move_tenant(ctx, args).await
            }
            Command::Tenant(TenantCommand::Stats(args)) => {
                commands::tenant_stats::stats(ctx, args).await
            }
            Command::Rebalance(args) => commands::tenant_stats::rebalance(ctx, args).await,
            Command::Tenant(TenantCommand::Tiers(command)) => {
                commands::tiers::tiers(ctx, command).await
            }
            Command::Tenant(TenantCommand::Pool(command)) => {
                commands::pool::pool(ctx, command).await
            }
            Command::Migrate(args) => commands::migrate::migrate(ctx, args).await,
            Command::Rollback(args) => commands::rollback::rollback(ctx, args).await,
            Command::Repair(args) => commands::repair::repair(ctx, args).await,
            Command::Status(args) if args.metrics => {
                commands::status_metrics::metrics(ctx, args.metrics_file.as_deref()).await
            }
            Command::Status(args) => commands::status::status(ctx, args).await,
            Command::Audit(args) => commands::audit::audit(ctx, args).await,
            Command::Doctor(args) => commands::doctor::doctor(ctx, args).await,
            Command::Query(args) => commands::query::query(ctx, args).await,
            Command::Exec(args) => commands::exec::exec(ctx, args).await,
            Command::Init(_) | Command::Completions(_) | Command::Man | Command::Migration(_) => {
                unreachable!("handled before the runtime")
            }
        }
    });
    // A command that ended in an error (a refused rename, a failed move) still delivers the
    // metrics of what it observed.
    if let Some(m) = metrics.filter(|m| !m.is_empty()) {
        deliver(&m, deliveries);
    }
    outcome
}

/// The event stream and the metrics collector of a run, if asked for.
type Observers = (
    Option<std::sync::Arc<report::stream::Stream>>,
    Option<std::sync::Arc<report::metrics::Metrics>>,
);

/// `--events`, `--metrics-file`, `--pushgateway`: the stream opened and the metrics
/// collector made. Exit 2 before anything is done when they do not fit.
fn observing(needs: &Needs) -> anyhow::Result<Observers> {
    let g = &needs.observe.stream;
    if g.events.as_deref() == Some(std::path::Path::new("-")) && needs.json {
        return Err(exit::UsageError(
            "--events - and --json both write to stdout: give --events a file".into(),
        )
        .into());
    }
    if let Some(url) = &g.pushgateway {
        // A Pushgateway behind basic auth: its password is never printed (warnings scrub it).
        let parsed = url::Url::parse(url).ok();
        if let Some(password) = parsed.as_ref().and_then(|u| u.password()) {
            redact::register(password);
            redact::register(&percent_encoding::percent_decode_str(password).decode_utf8_lossy());
        }
    }
    if g.events.as_deref() == Some(std::path::Path::new("-")) {
        output::give_stdout_to_the_stream();
    }
    let stream = match &g.events {
        Some(path) => Some(report::stream::Stream::open(path)?),
        None => None,
    };
    let metrics =
        (g.metrics_file.is_some() || g.pushgateway.is_some()).then(report::metrics::Metrics::new);
    Ok((stream, metrics))
}

/// The run's metrics to `--metrics-file` and `--pushgateway`; a failure is a warning (the
/// run's outcome stands).
fn deliver(
    metrics: &report::metrics::Metrics,
    (file, pushgateway): (Option<std::path::PathBuf>, Option<String>),
) {
    if let Some(path) = &file {
        if let Err(e) = metrics.write_file(path) {
            output::stderr_line(&format!("warning: metrics not written: {e:#}"));
        }
    }
    if let Some(url) = &pushgateway {
        if let Err(e) = metrics.push(url) {
            output::stderr_line(&format!(
                "warning: metrics not pushed to the Pushgateway ({e}); the run's outcome stands"
            ));
        }
    }
}
