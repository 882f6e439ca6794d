//! The arguments of the commands that move a tenant's rows: export, import, clone, rename.

use std::path::PathBuf;

use clap::Args;

/// What every data command takes: who runs it (the audit trail) and the output format.
#[derive(Debug, Args, Clone)]
pub struct DataOpts {
    /// Who to record as running this command in the audit trail (default: $TENANTCTL_ACTOR,
    /// else the OS user).
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,

    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The tenant to export.
    #[arg(value_name = "ID")]
    pub id: String,

    /// The archive file to write (`-` for stdout). Default: <ID>.tenantctl in the current
    /// folder. Written under a temporary name and renamed when complete, so a failed export
    /// leaves no partial archive.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,

    /// Export a tenant whose schema differs from the migration files (recorded in the
    /// archive's manifest; an import rebuilds the schema from the files, so what differs is
    /// not carried over).
    #[arg(long)]
    pub allow_drift: bool,

    #[command(flatten)]
    pub opts: DataOpts,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The new tenant's id (any id: the archive's rows go into its schema).
    #[arg(value_name = "ID")]
    pub id: String,

    /// The archive to import (`-` for stdin).
    #[arg(long, short, value_name = "FILE")]
    pub input: PathBuf,

    /// A label for the new tenant (repeatable; the archive's labels are not carried over
    /// unless given again).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,

    /// After importing, migrate the tenant to the latest version on disk.
    #[arg(long)]
    pub migrate: bool,

    /// Check the archive and say what would be created, at which version; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub opts: DataOpts,

    #[command(flatten)]
    pub observe: super::args::ObserveOpts,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The tenant to copy.
    #[arg(value_name = "SOURCE")]
    pub source: String,

    /// The new tenant's id.
    #[arg(value_name = "NEW")]
    pub new: String,

    /// Create the new tenant's schema at the source's version, without its rows.
    #[arg(long)]
    pub schema_only: bool,

    /// A label for the new tenant (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,

    #[command(flatten)]
    pub opts: DataOpts,

    #[command(flatten)]
    pub observe: super::args::ObserveOpts,
}

#[derive(Debug, Args)]
pub struct RenameArgs {
    /// The tenant's id now.
    #[arg(value_name = "OLD")]
    pub old: String,

    /// Its new id (its schema and role are renamed to match).
    #[arg(value_name = "NEW")]
    pub new: String,

    #[command(flatten)]
    pub opts: DataOpts,

    #[command(flatten)]
    pub stream: super::StreamOpts,
}
