//! The command line (clap derive). Doc comments here are the `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod args;
mod data;
mod moves;
mod sql;
mod tenant;
pub use args::*;
pub use data::*;
pub use moves::*;
pub use sql::*;
pub use tenant::*;

/// Provision and migrate PostgreSQL tenants in the schema-per-tenant model.
///
/// Each tenant gets its own schema (`<schema_prefix><id>`) with identical tables. tenantctl
/// creates those schemas and applies versioned SQL migrations (refinery) across all of them in
/// parallel: every schema migrates in one transaction (fully at the new version, or untouched),
/// a failing tenant never stops the others, and progress is recorded in the database.
///
/// Tenants may live on several PostgreSQL clusters (`[clusters.<name>]` in the config): every
/// command then spans all of them at once, each cluster with its own control schema and
/// concurrency bound; `--cluster NAME` narrows a command to some.
///
/// Exit codes: 0 success; 1 one or more tenants failed; 2 usage, configuration or
/// migration-set error (nothing was touched); 3 another migrate/rollback/repair is running on
/// this database; 4 partial: one or more clusters could not be reached or stopped early while
/// the others finished; 5 fenced: the run lost its locks to another runner and stopped;
/// 6 the database could not be reached (or went away during the run); 7 a staged rollout
/// (--canary, --waves) halted at a wave; 130 interrupted.
///
/// With --json, every command prints one JSON document on stdout, errors included
/// (`{"format": 1, "ok": false, "error": {"kind": …, "message": …}, …}`); see docs/json.md.
#[derive(Debug, Parser)]
#[command(name = "tenantctl", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Configuration file. Relative paths inside it resolve from its folder.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TENANTCTL_CONFIG",
        hide_env_values = true,
        default_value = "tenants.toml",
        value_name = "PATH"
    )]
    pub config: PathBuf,

    /// PostgreSQL URL (postgres://user:password@host:port/db); overrides `database.url`.
    /// The password is never printed.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TENANTCTL_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// Work only on this cluster (repeatable; names are the `[clusters.<name>]` tables of the
    /// config; the `[database]` form is the cluster `default`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "NAME"
    )]
    pub cluster: Vec<String>,

    /// No progress output on stderr (results still go to stdout).
    #[arg(long, short, global = true, help_heading = "Global options")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, adopt, list and drop tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),

    /// Apply pending migrations to every tenant (--all) or to some (--tenant).
    ///
    /// Each tenant schema migrates in its own transaction (a file whose first line is
    /// `-- tenantctl:no-transaction`, for CREATE INDEX CONCURRENTLY, runs outside it and is
    /// recorded on its own), at most --jobs at once. A tenant whose
    /// migration fails is rolled back to where it was and reported; the others carry on (unless
    /// --fail-fast). Tenants already at the target version are not touched. Before a schema is
    /// changed its history is compared with the files: a schema whose applied migrations were
    /// edited, deleted, or that is ahead of the files is not touched and is reported as drift.
    ///
    /// Every run is recorded in the control schema. If the last run was interrupted (Ctrl-C,
    /// a killed CI job), the next one with the same migrations and tenants resumes it. Only
    /// one migrate/rollback runs per database at a time: a second one exits with code 3, or
    /// waits with --wait. A schema that hits lock_timeout or loses its connection is retried.
    ///
    /// Examples:
    ///   tenantctl migrate --all
    ///   tenantctl migrate --all --dry-run
    ///   tenantctl migrate --all --jobs 16 --fail-fast --wait 10m
    ///   tenantctl migrate --tenant acme --tenant globex --to 7
    ///   tenantctl migrate --all --cluster eu1            (one cluster of several)
    ///   tenantctl migrate --shared-only                   (only migrations/shared)
    ///   tenantctl migrate --all --select 'tier=free'       (tenants with that label)
    ///   tenantctl migrate --all --canary 5 --waves 10%,50%,100% --pause 10m \
    ///       --between-waves ./check-error-rates.sh        (a staged rollout; exit 7 if halted)
    ///
    /// With several clusters, all of them migrate at once, each at most its own `jobs` at a
    /// time. Shared migrations (migrations/shared/, if present) apply once per cluster into
    /// the shared schema, in their own transaction, before that cluster's tenants; if they
    /// fail, that cluster's tenants are not started.
    #[command(verbatim_doc_comment)]
    Migrate(MigrateArgs),

    /// Revert migrations down to a version with their .down.sql scripts.
    ///
    /// For each tenant, in one transaction: the down scripts of every applied version above
    /// --to, newest first, with their history rows; the tenant is either fully at --to or
    /// untouched. Refuses (exit 2, nothing touched) when a needed V<n>__<name>.down.sql is
    /// missing, listing every one. Recorded, resumable and parallel like migrate.
    ///
    /// Examples:
    ///   tenantctl rollback --to 7 --all --dry-run
    ///   tenantctl rollback --to 7 --tenant acme
    ///   tenantctl rollback --to 0 --tenant scratch     (revert everything)
    #[command(verbatim_doc_comment)]
    Rollback(RollbackArgs),

    /// Show the latest version on disk and where every tenant stands.
    ///
    /// Reads the registry in one query, so it stays fast and readable at 10,000 tenants: a
    /// summary by version, the tenants that are behind or drifted, and the last run. With
    /// several clusters: one section per cluster and an overall line (exit 4 if one cannot be
    /// reached).
    /// --verify also reads every schema's own history and reports disagreements (exit 1).
    Status(StatusArgs),

    /// Accept an applied migration file as it is now, after an edit made on purpose.
    ///
    /// A migration file edited after it was applied is drift: tenants that have it are not
    /// touched again until the file is restored. When the edit is meant (a comment, whitespace,
    /// a fix with the same effect), `repair --accept V` records the file's current checksum
    /// in the history of every tenant that has V applied. It runs nothing. It shows what it
    /// will change first, asks for confirmation (on a terminal; elsewhere it needs --yes), and
    /// is recorded in the audit trail like any run.
    ///
    /// Do not use it to make a changed migration "count": tenants that applied the old text
    /// keep what it did. A change in effect belongs in a new migration.
    ///
    /// Examples:
    ///   tenantctl repair --accept 10 --all --dry-run
    ///   tenantctl repair --accept 10 --all --yes
    ///   tenantctl repair --accept 10 --tenant acme
    #[command(verbatim_doc_comment)]
    Repair(RepairArgs),

    /// Start a project: a commented tenants.toml and an empty migrations/ folder.
    ///
    /// The config reads the database URL from ${DATABASE_URL}; nothing is contacted. Refuses
    /// to overwrite an existing tenants.toml unless --force.
    ///
    /// Examples:
    ///   tenantctl init
    ///   tenantctl init my-service
    #[command(verbatim_doc_comment)]
    Init(InitArgs),

    /// Write, list and check migration files (no database needed).
    #[command(subcommand)]
    Migration(MigrationCommand),

    /// Print a shell completion script.
    ///
    /// Examples:
    ///   tenantctl completions bash > ~/.local/share/bash-completion/completions/tenantctl
    ///   tenantctl completions zsh > "${fpath[1]}/_tenantctl"
    ///   tenantctl completions fish > ~/.config/fish/completions/tenantctl.fish
    #[command(verbatim_doc_comment)]
    Completions(CompletionsArgs),

    /// Print the manual page (roff).
    ///
    /// Example:
    ///   tenantctl man > /usr/local/share/man/man1/tenantctl.1 && man tenantctl
    #[command(verbatim_doc_comment)]
    Man,

    /// Show the audit trail of every change: who, where, what, when, and the outcome.
    ///
    /// Every create, adopt, migrate, rollback and drop: who ran it (OS user or --actor), on
    /// which host, the command line (secrets redacted), when, and the outcome with counts.
    ///
    /// Examples:
    ///   tenantctl audit --since 24h
    ///   tenantctl audit --json --limit 1000
    #[command(verbatim_doc_comment)]
    Audit(AuditArgs),

    /// Check a cluster before (and while) tenantctl works on it: pass / warn / fail, each
    /// with the fix. Exit 1 when a check fails.
    ///
    /// Per cluster: the connection (server version, primary or standby, TLS and whether the
    /// certificate is verified), a pooler in front of it (transaction mode and direct_url;
    /// whether a session-level search_path leaks from one client to another, tried with two
    /// clients), the privileges the config needs (CREATE, CREATEROLE for roles, logical
    /// replication for moves), the limits (free connections against jobs, lock slots
    /// against the largest schema, server timeouts that would end tenantctl's sessions),
    /// and the fleet (tenants behind, drift, unregistered schemas, a run waiting to be
    /// resumed, what moves left behind). Changes nothing.
    ///
    /// Examples:
    ///   tenantctl doctor
    ///   tenantctl doctor --cluster eu1 --json
    #[command(verbatim_doc_comment)]
    Doctor(DoctorArgs),

    /// Plan (and run) the tenant moves that even out the clusters' sizes.
    ///
    /// Reads every selected cluster's tenant sizes (one catalog query each, as `tenant
    /// stats`) and plans moves from the largest cluster to the smallest until each is within
    /// --max-skew percent of the mean: largest tenants first, never one labelled `pin`.
    /// --apply records the plan in the audit trail and runs its moves one at a time, each a
    /// `tenant move` (online; run again after an interruption, it carries on).
    ///
    /// Examples:
    ///   tenantctl rebalance --plan
    ///   tenantctl rebalance --plan --max-skew 20 --json
    ///   tenantctl rebalance --apply --yes
    #[command(verbatim_doc_comment)]
    Rebalance(RebalanceArgs),

    /// Run a read-only query in every tenant: one merged result, each row with its tenant.
    ///
    /// Each tenant in a READ ONLY transaction with search_path set to its schema, at most
    /// --jobs at once per cluster. The SQL is checked first like a migration (no session SET,
    /// nothing that names another tenant, `public` or the control schema): refused, nothing
    /// runs. With several statements, the last one's rows are returned. A tenant that fails
    /// (a missing table in a tenant behind, a timeout) is reported with PostgreSQL's message
    /// and exit 1; the others' rows are still printed. A tenant whose rows have other
    /// columns than the first tenant's is reported, not printed under the wrong names.
    /// Nothing is recorded: a read-only standby serves it.
    ///
    /// Examples:
    ///   tenantctl query --all -c 'select count(*) as users from users'
    ///   tenantctl query --all -f report.sql --format csv > report.csv
    ///   tenantctl query --select 'tier=enterprise' -c 'select * from plans' --with-labels
    ///   tenantctl query --all --format ndjson -c 'select id from orders where customer_id is null'
    #[command(verbatim_doc_comment)]
    Query(QueryArgs),

    /// Run a data change in every tenant, exactly once each, recorded and resumable.
    ///
    /// Each tenant in one transaction (its schema's lock, search_path, the SQL, the session
    /// guard, its ledger row, COMMIT), at most --jobs at once, recorded as a run of `exec`
    /// (the SQL's digest, who, when: see `tenantctl audit`). An exec runs once per tenant:
    /// the same SQL again runs only where it has not (new tenants, failed ones), unless
    /// --again; after a kill, the same command carries on with the tenants not done. Rows
    /// affected are reported per tenant. The SQL is checked first like a migration. Holds the
    /// fleet lock: no migrate or rollback changes the tenants' tables meanwhile.
    ///
    /// --until-zero: a backfill in batches, each its own short transaction, until a batch
    /// changes nothing; --canary and --waves stage it like a migration.
    ///
    /// Examples:
    ///   tenantctl exec --all -c "update users set email = lower(email) where email <> lower(email)" --dry-run
    ///   tenantctl exec --all -f fix-orphans.sql --canary 5 --waves 25%,100%
    ///   tenantctl exec --all --until-zero --batch-pause 200ms \
    ///       -c 'update orders set total_cents = total * 100 where id in (select id from orders where total_cents is null limit 5000)'
    #[command(verbatim_doc_comment)]
    Exec(ExecArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where (default: the current folder; created if missing).
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Overwrite an existing tenants.toml.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum MigrationCommand {
    /// Create the next migration file: V<highest + 1>__<name>.sql.
    ///
    /// The name is lowercased, spaces and dashes become underscores; other characters are
    /// refused. Prints the paths of the files made.
    ///
    /// Examples:
    ///   tenantctl migration new add_invoices --down
    ///   tenantctl migration new "index invoices by due date" --no-transaction
    #[command(verbatim_doc_comment)]
    New(MigrationNewArgs),

    /// List the migration files: version, name, checksum, rollback script, no-transaction.
    List(MigrationListArgs),

    /// Check the migration files before they meet a database.
    ///
    /// Everything `migrate` refuses (names, duplicates, transaction control, objects outside
    /// the tenant), plus what is risky on a fleet of live tenants, each finding with its file,
    /// line, rule, level and fix: statements that cannot run in a transaction, CREATE INDEX
    /// without CONCURRENTLY, ADD COLUMN ... NOT NULL without a default, ALTER COLUMN ... TYPE,
    /// DROP TABLE/COLUMN, RENAME, a missing rollback script. A warning can be silenced for one
    /// statement with `-- tenantctl:allow RULE` on the line before it.
    ///
    /// Exit codes: 0 no error-level finding (warnings are printed); 1 error-level findings;
    /// 2 the set cannot be read.
    #[command(verbatim_doc_comment)]
    Check(MigrationCheckArgs),
}

#[derive(Debug, Args)]
pub struct MigrationNewArgs {
    /// What the migration does: add_invoices, "add invoices".
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Also create the rollback script V<n>__<name>.down.sql.
    #[arg(long)]
    pub down: bool,

    /// A no-transaction migration (for CREATE INDEX CONCURRENTLY and the like).
    #[arg(long)]
    pub no_transaction: bool,
}

#[derive(Debug, Args)]
pub struct MigrationListArgs {
    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MigrationCheckArgs {
    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, powershell or elvish.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only runs started since: a duration ago (24h, 7d, 30m), `today`, `yesterday`, a date
    /// (2026-11-26, UTC) or an RFC 3339 time (2026-11-26T15:00:00Z).
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<Duration>,

    /// At most this many runs (the newest).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: i64,

    /// Print one JSON document on stdout (see docs/json.md), errors included.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DropArgs {
    /// Tenant ids to drop.
    #[arg(value_name = "ID", required_unless_present_any = ["select", "from_file"])]
    pub ids: Vec<String>,

    /// Drop the tenants listed in a file, one id per line (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,

    /// Only tenants whose labels match (with ids: those of them that match).
    #[arg(long, value_name = "SELECTOR")]
    pub select: Option<String>,

    /// Rename the schema out of the way instead of dropping it (the safe choice).
    #[arg(long)]
    pub archive: bool,

    /// Do not ask: required when not on a terminal.
    #[arg(long)]
    pub yes: bool,

    #[command(flatten)]
    pub run: RunOpts,
}

/// `--since`: how long ago, from a duration, `today`, `yesterday`, a date or an RFC 3339 time.
pub fn parse_since(s: &str) -> Result<Duration, String> {
    use time::format_description::well_known::Rfc3339;
    use time::{Date, OffsetDateTime, Time};
    let now = OffsetDateTime::now_utc();
    let ago = |t: OffsetDateTime| -> Result<Duration, String> {
        let d = now - t;
        if d.is_negative() {
            return Err(format!("{s:?} is in the future"));
        }
        Ok(Duration::from_secs_f64(d.as_seconds_f64()))
    };
    let midnight = |d: Date| d.with_time(Time::MIDNIGHT).assume_utc();
    match s {
        "today" => return ago(midnight(now.date())),
        "yesterday" => return ago(midnight(now.date() - time::Duration::days(1))),
        _ => {}
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return ago(t);
    }
    let date = || -> Option<Date> {
        let mut parts = s.splitn(3, '-').map(|p| p.parse::<u32>().ok());
        let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
        let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
        Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?).ok()
    };
    if let Some(d) = date() {
        return ago(midnight(d));
    }
    humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is not a time: write a duration (24h, 7d), today, yesterday, a date (2026-11-26) or an RFC 3339 time (2026-11-26T15:00:00Z)")
    })
}

/// Parses `7` or `V7`.
pub fn parse_version(s: &str) -> Result<i32, String> {
    let digits = s.strip_prefix(['V', 'v']).unwrap_or(s);
    digits
        .parse::<i32>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            format!("{s:?} is not a migration version; write a number such as 7 (or V7)")
        })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command's `--help`, so that a change in what users read is a reviewed diff.
    #[test]
    fn help_of_every_command() {
        let mut root = super::Cli::command().term_width(100);
        root.build();
        let mut stack = vec![root];
        while let Some(mut cmd) = stack.pop() {
            let name = cmd
                .get_bin_name()
                .unwrap_or(cmd.get_name())
                .replace(' ', "_");
            let help = cmd.render_long_help().to_string();
            let mut settings = insta::Settings::clone_current();
            // The help shows an environment variable's value when it is set: not ours to pin.
            settings.add_filter(r"\[env: (\w+)=[^\]]*\]", "[env: $1]");
            settings.bind(|| insta::assert_snapshot!(format!("help_{name}"), help));
            stack.extend(
                cmd.get_subcommands()
                    .filter(|s| s.get_name() != "help")
                    .cloned(),
            );
        }
    }
}
