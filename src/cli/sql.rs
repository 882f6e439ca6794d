//! The arguments of `query` and `exec`: SQL run in every tenant.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{RunOpts, WaveOpts};
use crate::report::rows::Format;

/// Which tenants, and the SQL: shared by `query` and `exec`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).multiple(true).args(["all", "tenant", "select"])))]
#[command(group(clap::ArgGroup::new("sql").required(true).args(["command", "file"])))]
pub struct SqlScope {
    /// Every registered tenant.
    #[arg(long, conflicts_with = "tenant")]
    pub all: bool,

    /// Only these tenants (repeatable, or a comma list: --tenant a,b,c).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub tenant: Vec<String>,

    /// Only tenants whose labels match: 'tier=free', 'region in (eu,us)', '!canary'.
    #[arg(long, value_name = "SELECTOR")]
    pub select: Option<String>,

    /// The SQL, on the command line. Several statements run in order; for `query`, the last
    /// one's rows are returned (as psql -c does).
    #[arg(short = 'c', long, value_name = "SQL")]
    pub command: Option<String>,

    /// The SQL, from a file (`-` for stdin).
    #[arg(short = 'f', long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Cancel a tenant's statement after this long (e.g. 30s; 0 for none). Default: `[run]
    /// statement_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub statement_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub scope: SqlScope,

    /// table (the default on a terminal), csv (the default otherwise), json, ndjson.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// The same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,

    /// Each row also carries its tenant's labels.
    #[arg(long)]
    pub with_labels: bool,

    /// How many tenants to query at once (connections: this + 1). Default: `[run] jobs`.
    #[arg(long, short, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=512))]
    pub jobs: Option<u16>,

    /// Stop starting new tenants after the first failure (the rows so far are printed).
    #[arg(long)]
    pub fail_fast: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub scope: SqlScope,

    /// Run each tenant's transaction and roll it back: the rows it would change, the
    /// errors it would meet; nothing is kept, nothing recorded.
    #[arg(long)]
    pub dry_run: bool,

    /// A backfill: run the statement again, each time in a transaction of its own, until it
    /// affects no row (for `UPDATE … WHERE id IN (SELECT id … LIMIT 5000)`). One statement
    /// only. Every batch commits; an interrupted run carries on with the next.
    #[arg(long)]
    pub until_zero: bool,

    /// With --until-zero: wait this long between a tenant's batches (e.g. 200ms), so that
    /// the server is never saturated. Default 0.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "until_zero")]
    pub batch_pause: Option<Duration>,

    /// Run it again in tenants where an earlier exec of the same SQL already ran (by default
    /// an exec runs exactly once per tenant).
    #[arg(long)]
    pub again: bool,

    /// Only the tenants whose last change failed (with --select: those of them that match).
    #[arg(long)]
    pub failed: bool,

    /// If a migrate/rollback/exec holds the fleet lock, wait up to this long (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,

    /// Start a new run even if the last exec of this SQL was interrupted (by default it is
    /// resumed: the tenants not done yet).
    #[arg(long)]
    pub fresh: bool,

    #[command(flatten)]
    pub waves: WaveOpts,

    #[command(flatten)]
    pub run: RunOpts,
}
