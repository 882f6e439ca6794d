//! The arguments of the commands that place tenants on clusters: tenant move, tenant stats,
//! rebalance.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::DataOpts;

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The tenant to move (with --cleanup: only its old copy; none: every old copy that is
    /// due).
    #[arg(value_name = "ID", required_unless_present = "cleanup")]
    pub id: Option<String>,

    /// The cluster to move it to (a [clusters.<name>] of tenants.toml).
    #[arg(long, value_name = "CLUSTER", required_unless_present_any = ["cleanup", "abort"])]
    pub to: Option<String>,

    /// Copy with writes held on the source for the whole copy, without logical replication
    /// (what a source without wal_level = logical, or without the privileges, allows).
    #[arg(long)]
    pub offline: bool,

    /// The longest the tenant's writes may wait at the cutover; past it the tables are let
    /// go, the target catches up, and the cutover is tried again (up to 5 times).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2s")]
    pub max_pause: Duration,

    /// Keep the source's old copy (<schema>__moved_<UTC>) this long, then `tenant move
    /// --cleanup` drops it (0s: drop it right after the move). Default: keep it until a
    /// `tenant move --cleanup` names it.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_source: Option<Duration>,

    /// Compare a checksum of every table's contents on both sides at the cutover, besides
    /// the row counts (reads every row twice, inside the pause).
    #[arg(long)]
    pub verify: bool,

    /// A command run inside the cutover, before the commit, to point the application at the
    /// new cluster (env: TENANTCTL_TENANT, TENANTCTL_FROM, TENANTCTL_TO); if it fails,
    /// nothing moves.
    #[arg(long, value_name = "CMD")]
    pub on_cutover: Option<String>,

    /// Undo a move that has not cut over: the target's copy, the subscription, the
    /// publication and the slot dropped; the tenant active on its source again.
    #[arg(long, conflicts_with_all = ["to", "cleanup", "offline"])]
    pub abort: bool,

    /// Drop the old copies moves left on the selected clusters (those whose --keep-source
    /// passed or that have none; with ID, that tenant's), and any replication object of a
    /// move that is no longer going on.
    #[arg(long, conflicts_with_all = ["to", "offline"])]
    pub cleanup: bool,

    /// Do not ask for confirmation (--cleanup drops schemas).
    #[arg(long)]
    pub yes: bool,

    #[command(flatten)]
    pub opts: DataOpts,

    #[command(flatten)]
    pub stream: super::StreamOpts,
}

/// How `tenant stats` orders its tenants (largest first).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum StatsSort {
    Size,
    Rows,
    Writes,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only the tenants whose labels match (e.g. 'tier=enterprise').
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub select: Option<String>,

    /// Order: size (tables, indexes, TOAST), rows (estimated), writes (since the statistics
    /// reset).
    #[arg(long, value_enum, default_value = "size")]
    pub sort: StatsSort,

    /// Sizes from the files (pg_relation_size of every relation) instead of the planner's
    /// page counts (kept by VACUUM, ANALYZE and CREATE INDEX; 0 for a table never vacuumed or
    /// analyzed). Slower: about 1 s per 1,000 tenants.
    #[arg(long)]
    pub exact: bool,

    /// Print one JSON document on stdout (see docs/json.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RebalanceArgs {
    /// Print the moves that would balance the clusters; change nothing.
    #[arg(long, required_unless_present = "apply", conflicts_with = "apply")]
    pub plan: bool,

    /// Run the plan's moves, one at a time (each a `tenant move`, online; resumable).
    #[arg(long)]
    pub apply: bool,

    /// How far from the mean size a cluster may be, in percent.
    #[arg(long, value_name = "PCT", default_value_t = 10.0)]
    pub max_skew: f64,

    /// With --apply: the longest a tenant's writes may wait at each cutover.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2s")]
    pub max_pause: Duration,

    /// Do not ask for confirmation before --apply.
    #[arg(long)]
    pub yes: bool,

    #[command(flatten)]
    pub opts: DataOpts,

    #[command(flatten)]
    pub stream: super::StreamOpts,
}
