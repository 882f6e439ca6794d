//! The arguments of the commands that work on tenants: scopes, runs, waves, and each
//! command's own flags. `cli` parses; the commands read these.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::parse_version;

#[derive(Debug, Args)]
pub struct RunOpts {
    /// Who to record as running this command in the audit trail (default: $TENANTCTL_ACTOR,
    /// else the OS user). Useful in CI: --actor "deploy-bot (pipeline 4242)".
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,

    /// How many tenant schemas to work on at once (connections: this + 1).
    /// Default: `[run] jobs` in the config, else 4 (about 2 x the server's cores is fastest).
    #[arg(long, short, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=512))]
    pub jobs: Option<u16>,

    /// Stop starting new tenants after the first failure (in-flight ones finish).
    #[arg(long)]
    pub fail_fast: bool,

    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub observe: ObserveOpts,
}

/// Watching a run: the event stream, its metrics, slow tenants (docs/observing.md).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Observing a run")]
pub struct ObserveOpts {
    #[command(flatten)]
    pub stream: StreamOpts,

    /// Report a tenant still running after DURATION once, with what it waits for (from
    /// pg_stat_activity and pg_blocking_pids). Default: `[run] slow_after`, else 60s; 0s: never.
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = humantime::parse_duration
    )]
    pub slow_after: Option<std::time::Duration>,
}

/// The event stream and the metrics of a command that changes tenants (docs/observing.md).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Observing a run")]
pub struct StreamOpts {
    /// Write every event of the run (run started, tenant started/finished/failed, retry,
    /// wave gate, slow tenant, run finished) to PATH as NDJSON, one object per line, flushed
    /// as it happens (`tail -f` it, ship it); `-` for stdout when --json is not used (the
    /// command's text then goes to stderr). Appends.
    /// Schema: docs/json.md, "Event stream".
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,

    /// At the end of the run, write its Prometheus metrics to PATH (text exposition, through
    /// a temporary file and a rename: the node_exporter textfile collector's convention).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// At the end of the run, push its metrics to this Prometheus Pushgateway (job
    /// `tenantctl`, grouped by command and cluster). A failed push is a warning, never a
    /// failed run.
    #[arg(long, value_name = "URL")]
    pub pushgateway: Option<String>,
}

/// A staged rollout: a canary, then cumulative waves, halting on failures.
#[derive(Debug, Args, Clone, Default)]
pub struct WaveOpts {
    /// Wave 0, the canary: this many tenants first (picked by a stable hash of their ids,
    /// spread over the fleet, the same every time).
    #[arg(long, value_name = "N", conflicts_with = "canary_select")]
    pub canary: Option<usize>,

    /// Wave 0, the canary: the tenants whose labels match, e.g. canary=true.
    #[arg(long, value_name = "SELECTOR")]
    pub canary_select: Option<String>,

    /// The waves after the canary, each a cumulative share or count of the selected tenants,
    /// ending at 100%: --waves 10%,50%,100%.
    #[arg(long, value_name = "LIST")]
    pub waves: Option<String>,

    /// Failures a wave may have before the rollout halts (later waves are not started, exit
    /// code 7, resumable): a number or a share of the wave, e.g. 2 or 5%. Default 0.
    #[arg(long, value_name = "N|N%")]
    pub max_failures: Option<String>,

    /// Wait this long between waves (e.g. 10m): time to watch the canary. SIGINT during the
    /// pause stops cleanly; the same command resumes at the next wave.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub pause: Option<Duration>,

    /// A shell command run after each wave but the last (before the pause): non-zero halts
    /// the rollout. It gets TENANTCTL_WAVE, TENANTCTL_RUN_ID and TENANTCTL_TENANTS_FILE (the
    /// wave's tenant ids, one per line); its output goes to stderr.
    #[arg(long, value_name = "COMMAND")]
    pub between_waves: Option<String>,
}

impl WaveOpts {
    /// As the engine takes them.
    pub fn ask(&self) -> crate::engine::waves::WaveOpts {
        crate::engine::waves::WaveOpts {
            canary: self.canary,
            canary_select: self.canary_select.clone(),
            waves: self.waves.clone(),
            max_failures: self.max_failures.clone(),
            pause: self.pause,
            between_waves: self.between_waves.clone(),
        }
    }
}

/// Options of the commands that change many tenants under the fleet lock.
#[derive(Debug, Args)]
pub struct FleetOpts {
    /// Print the plan (which versions apply or revert, per tenant, grouped) and change
    /// nothing, not even the run ledger. With --json, the full per-tenant list.
    #[arg(long)]
    pub dry_run: bool,

    /// If another migrate/rollback/repair is running on this database, wait up to this long
    /// for it (e.g. 30s, 10m) instead of exiting with code 3.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,

    /// Start a new run even if the last one was interrupted (by default an interrupted run
    /// with the same migrations, target and tenants is resumed).
    #[arg(long)]
    pub fresh: bool,

    /// Only tenants whose labels match: 'tier=free', 'tier!=free', 'region in (eu,us)',
    /// 'region notin (apac)', 'canary' (has the key), '!canary'; a comma means "and". With
    /// --all: every tenant that matches; with --tenant: those of them that match.
    #[arg(long, value_name = "SELECTOR")]
    pub select: Option<String>,

    /// Only the tenants whose last change failed (their newest run row, on every cluster);
    /// with --select, those of them that match. None is not an error: nothing to do.
    #[arg(long)]
    pub failed: bool,

    #[command(flatten)]
    pub waves: WaveOpts,

    #[command(flatten)]
    pub run: RunOpts,
}

impl FleetOpts {
    /// A plain run on given tenants (what `tenant import --migrate` runs): no dry run, no
    /// waiting, resumable, no narrowing, one wave.
    pub fn for_tenants(run: RunOpts) -> FleetOpts {
        FleetOpts {
            dry_run: false,
            wait: None,
            fresh: false,
            select: None,
            failed: false,
            waves: WaveOpts::default(),
            run,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Tenant ids to create.
    #[arg(value_name = "ID", required_unless_present = "from_file")]
    pub ids: Vec<String>,

    /// Read tenant ids from a file, one per line (`-` for stdin); blank lines and lines
    /// starting with `#` are ignored.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,

    /// Skip tenants that already exist instead of failing on them (their labels are left as
    /// they are).
    #[arg(long)]
    pub if_not_exists: bool,

    /// A label for the new tenants (repeatable): --label tier=enterprise --label region=eu.
    /// With --from-file, a line may carry its own: `ID key=value ...`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,

    /// A variable for the seed ([tenants] seed), used there as :'KEY' (a string) or :"KEY"
    /// (an identifier); repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,

    /// After creating, start `tenant pool fill` in the background to top the pool up.
    #[arg(long)]
    pub refill: bool,

    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create and migrate pooled schemas until the pool holds its size at the latest version.
    Fill(PoolFillArgs),
    /// The pool's size and versions.
    Status(PoolStatusArgs),
    /// Drop every pooled schema.
    Drain(PoolDrainArgs),
}

#[derive(Debug, Subcommand)]
pub enum TiersCommand {
    /// Bring every tenant role to its tier's settings (one transaction per cluster, a round
    /// trip per 500 roles); recorded in the audit trail.
    Apply(TiersApplyArgs),
    /// Each tier's tenants, and the roles whose settings differ from their tier (drift).
    Status(TiersStatusArgs),
}

#[derive(Debug, Args)]
pub struct TiersApplyArgs {
    /// Say what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub opts: super::DataOpts,
}

#[derive(Debug, Args)]
pub struct TiersStatusArgs {
    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PoolFillArgs {
    /// How many schemas the pool should hold (default: [tenants] pool).
    #[arg(long, value_name = "N")]
    pub size: Option<usize>,

    /// If a migrate/rollback is running, wait up to this long for it (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,

    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Debug, Args)]
pub struct PoolStatusArgs {
    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PoolDrainArgs {
    /// Do not ask: required when not on a terminal.
    #[arg(long)]
    pub yes: bool,

    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Tenant ids, then changes: `key=value` sets a label, `key-` removes one.
    #[arg(value_name = "ID|KEY=VALUE|KEY-", required = true)]
    pub args: Vec<String>,

    #[command(flatten)]
    pub opts: super::DataOpts,

    #[command(flatten)]
    pub stream: StreamOpts,
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// Tenant ids whose schemas (prefix + id) already exist.
    #[arg(value_name = "ID", required_unless_present = "from_file")]
    pub ids: Vec<String>,

    /// Read tenant ids from a file, one per line (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,

    /// The version the schemas are already at: migrations up to it are recorded as applied
    /// without running them.
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub baseline: i32,

    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tenants whose labels match, e.g. 'tier=free', 'region in (eu,us)', '!canary'.
    #[arg(long, value_name = "SELECTOR")]
    pub select: Option<String>,

    /// Only the tenants whose last change failed.
    #[arg(long)]
    pub failed: bool,

    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).multiple(true).args(["all", "tenant", "from_file", "select", "failed", "shared_only"])))]
pub struct MigrateArgs {
    /// Migrate every registered tenant.
    #[arg(long, conflicts_with_all = ["tenant", "from_file"])]
    pub all: bool,

    /// Migrate only these tenants (repeatable, or a comma list: --tenant a,b,c).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub tenant: Vec<String>,

    /// Migrate only the tenants listed in a file, one id per line (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,

    /// Apply only the shared migrations (`[migrations] shared_dir`, once per cluster into
    /// `shared_schema`), no tenant migrations.
    #[arg(long, conflicts_with_all = ["tenant", "tenants_only", "to"])]
    pub shared_only: bool,

    /// Apply only tenant migrations, not the shared ones.
    #[arg(long)]
    pub tenants_only: bool,

    /// Apply forward only up to this version (default: the latest on disk).
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub to: Option<i32>,

    #[command(flatten)]
    pub fleet: FleetOpts,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).multiple(true).args(["all", "tenant", "from_file", "select", "failed"])))]
pub struct RollbackArgs {
    /// The version to go back to (0 reverts everything).
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub to: i32,

    /// Roll back every registered tenant.
    #[arg(long, conflicts_with_all = ["tenant", "from_file"])]
    pub all: bool,

    /// Roll back only these tenants (repeatable, or a comma list: --tenant a,b,c).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub tenant: Vec<String>,

    /// Roll back only the tenants listed in a file, one id per line (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,

    #[command(flatten)]
    pub fleet: FleetOpts,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["all", "tenant"])))]
pub struct RepairArgs {
    /// The migration version whose file, as it is now, is to be recorded where it is applied.
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub accept: i32,

    /// Every registered tenant that has the version applied.
    #[arg(long)]
    pub all: bool,

    /// Only these tenants (repeatable, or a comma list: --tenant a,b,c).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub tenant: Vec<String>,

    /// Do not ask for confirmation (required when there is no terminal to ask on).
    #[arg(long)]
    pub yes: bool,

    /// Show what would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Record the checksum even where tenants applied the version in different forms (their
    /// schemas may differ: repair refuses that by default and shows the groups).
    #[arg(long)]
    pub accept_split: bool,

    /// If another migrate/rollback/repair is running on this database, wait up to this long
    /// for it (e.g. 30s, 10m) instead of exiting with code 3.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,

    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show only these tenants (repeatable, or a comma list: --tenant a,b,c).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub tenant: Vec<String>,

    /// Show only the tenants listed in a file, one id per line (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,

    /// Show only tenants whose labels match, e.g. 'tier=free', 'region in (eu,us)', '!canary'.
    #[arg(long, value_name = "SELECTOR")]
    pub select: Option<String>,

    /// Show only the tenants whose last change failed.
    #[arg(long)]
    pub failed: bool,

    /// Also read every tenant schema's own history table and report where the registry
    /// disagrees with it, drifted schemas, registered tenants whose schema is gone, and
    /// schemas with the prefix that are not registered. Exit 1 when anything is found.
    #[arg(long)]
    pub verify: bool,

    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,

    /// Print the fleet's state as Prometheus metrics instead (per cluster: tenants per
    /// version, pending, drifted, pooled schemas ready, when each command last succeeded),
    /// for a cron feeding the node_exporter textfile collector; with --metrics-file PATH,
    /// written there atomically. Exit 4 (the metrics still written, the cluster `up` 0) when
    /// a cluster cannot be reached. Names: docs/metrics.md.
    #[arg(long, conflicts_with_all = ["json", "verify", "failed", "select", "tenant", "from_file"])]
    pub metrics: bool,

    /// With --metrics: write them to PATH (through a temporary file and a rename) instead
    /// of stdout.
    #[arg(long, value_name = "PATH", requires = "metrics")]
    pub metrics_file: Option<PathBuf>,
}
