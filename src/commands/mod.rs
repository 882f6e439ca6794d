//! Commands: each turns its arguments into requests for the engine (or queries on the control
//! schema) and the results into output; nothing else. The run lifecycle lives in
//! [`crate::engine::run`]; output across clusters in [`clusters`].

pub mod audit;
pub mod clusters;
pub mod doctor;
pub mod exec;
pub mod fleet;
pub mod listing;
pub mod migrate;
mod observed;
pub mod pool;
pub mod query;
pub mod repair;
pub mod rollback;
pub mod scaffold;
pub mod status;
pub mod status_metrics;
mod status_moves;
pub mod tenant;
pub mod tenant_change;
pub mod tenant_data;
pub mod tenant_move;
pub mod tenant_rename;
pub mod tenant_stats;
pub mod tiers;

use std::collections::BTreeSet;
use std::io::Read as _;

use crate::config::{Config, Target};
use crate::db::Session;
pub use crate::engine::checks::{gate, nothing_selected, require_registered, rules_for};
use crate::engine::run::RunEnv;
use crate::exit::UsageError;
use crate::labels::Selector;
use crate::migrations::rules::{self, SetKind};
use crate::migrations::{MigrationSet, MigrationSetError};
use crate::report::Reporters;
use crate::signals::Signals;
use crate::tenant::Tenant;
pub use clusters::Done;

/// What one command needs: the configuration, the clusters it works on, who runs it, and where
/// its progress and signals go.
pub struct Ctx {
    pub config: Config,
    /// The selected clusters (`--cluster`, else all); empty for commands that need no database.
    pub targets: Vec<Target>,
    pub reporters: Reporters,
    pub signals: Signals,
    /// Who is recorded as running the command (--actor, $TENANTCTL_ACTOR, or the OS user).
    pub actor: String,
}

impl Ctx {
    /// Whether output names clusters (the config uses `[clusters.<name>]`).
    pub fn multi(&self) -> bool {
        self.config.multi_cluster
    }

    /// Connects to one cluster; with `bootstrap`, creates its control schema if needed.
    pub async fn session<'a>(
        &self,
        target: &'a Target,
        bootstrap: bool,
    ) -> anyhow::Result<Session<'a>> {
        Session::open(target, &self.config.control_schema, bootstrap).await
    }

    /// The session of a fleet command on `target` (migrate, rollback, repair, pool fill and
    /// drain) and what its run needs (see [`crate::engine::across::fleet_session`]).
    pub async fn fleet_session<'a>(
        &'a self,
        target: &'a Target,
        dry_run: bool,
        wait: Option<std::time::Duration>,
    ) -> anyhow::Result<(Session<'a>, RunEnv<'a>)> {
        crate::engine::across::fleet_session(self, target, dry_run, wait).await
    }

    /// What a run on `target` needs besides its request.
    pub fn run_env(&self, target: &Target) -> RunEnv<'_> {
        RunEnv {
            config: &self.config,
            actor: &self.actor,
            events: self.reporters.for_cluster(&target.name),
            signals: &self.signals,
        }
    }
}

impl crate::engine::across::Host for Ctx {
    fn config(&self) -> &crate::config::Config {
        &self.config
    }

    fn targets(&self) -> &[crate::config::Target] {
        &self.targets
    }

    fn run_env<'a>(&'a self, target: &'a crate::config::Target) -> RunEnv<'a> {
        Ctx::run_env(self, target)
    }
}

/// Reads ids from a file or stdin: one per line, blanks and `#` comments ignored.
pub fn read_id_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| UsageError(format!("cannot read tenant ids from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            UsageError(format!(
                "cannot read tenant ids from {}: {e}",
                path.display()
            ))
        })?
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Ids from the command line and, with `--from-file`, from a file (or stdin).
/// A file that lists no id is an error (it must never widen a command to every tenant).
pub fn ids_from(
    ids: &[String],
    from_file: Option<&std::path::Path>,
) -> anyhow::Result<Vec<String>> {
    let mut all = ids.to_vec();
    if let Some(path) = from_file {
        let listed = read_id_file(path)?;
        if listed.is_empty() {
            return Err(UsageError(format!(
                "{} lists no tenant id; nothing was changed",
                path.display()
            ))
            .into());
        }
        all.extend(listed);
    }
    Ok(all)
}

/// Validates ids (all of them, reporting every bad one) and refuses duplicates.
pub fn parse_ids(config: &Config, ids: &[String]) -> anyhow::Result<Vec<Tenant>> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let mut tenants = Vec::with_capacity(ids.len());
    for id in ids {
        match Tenant::parse(id, &config.tenants.schema_prefix, &config.control_schema) {
            Ok(t) => match config.tenants.role_for(&t) {
                Some(role) if role.len() > crate::tenant::MAX_IDENT_BYTES => errors.push(format!(
                    "tenant id {id:?} is too long for its role name {role:?} (at most 63 bytes; see [tenants] role)"
                )),
                _ if !seen.insert(t.id().to_string()) => {
                    errors.push(format!("tenant id {id:?} is given more than once"))
                }
                _ => tenants.push(t),
            },
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        return Ok(tenants);
    }
    let shown: Vec<String> = errors.iter().take(20).map(|e| format!("  {e}")).collect();
    let more = if errors.len() > 20 {
        format!("\n  … and {} more", errors.len() - 20)
    } else {
        String::new()
    };
    Err(UsageError(format!(
        "{} invalid tenant id(s); nothing was changed:\n{}{more}",
        errors.len(),
        shown.join("\n")
    ))
    .into())
}

/// `--select`: parsed (exit 2, naming the position, when it cannot be read).
pub fn selector(text: Option<&str>) -> anyhow::Result<Option<Selector>> {
    text.map(|t| {
        Selector::parse(t).map_err(|e| {
            UsageError(format!(
                "--select {t:?}: {e}; the syntax: tier=free, tier!=free, 'region in (eu,us)', 'region notin (apac)', canary, !canary, with a comma for \"and\""
            ))
            .into()
        })
    })
    .transpose()
}

/// Asks the operator to type `expected` after `what` (on stderr), for a change that cannot be
/// undone. Without a terminal to ask on, refuses (exit 2): such commands need `--yes` there.
pub fn confirm(what: &str, expected: &str, doing: &str) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        return Err(UsageError(format!(
            "refusing to {doing} without --yes (no terminal to confirm on); nothing was changed"
        ))
        .into());
    }
    let mut err = std::io::stderr().lock();
    if !what.is_empty() {
        let _ = writeln!(err, "{what}");
    }
    let _ = write!(err, "Type `{expected}` to confirm: ");
    let _ = err.flush();
    std::mem::drop(err);
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != expected {
        return Err(UsageError("not confirmed; nothing was changed".into()).into());
    }
    Ok(())
}

/// Loads the tenant migration set and checks that no file escapes its transaction or its
/// tenant, failing with exit code 2 before any database work.
pub fn load_migrations(config: &Config) -> anyhow::Result<MigrationSet> {
    let m = &config.migrations;
    let set = MigrationSet::load_skipping(&m.dir, Some(&m.shared_dir))?;
    rules::check_set(&set, &rules_for(config, SetKind::Tenant))?;
    Ok(set)
}

/// Loads the shared migration set: None when there is none (the default folder is absent or
/// holds no migrations); a configured `shared_dir` must exist.
pub fn load_shared(config: &Config) -> anyhow::Result<Option<MigrationSet>> {
    let m = &config.migrations;
    if !m.shared_dir.exists() && !m.shared_dir_configured {
        return Ok(None);
    }
    let set = MigrationSet::load(&m.shared_dir).map_err(|e| {
        MigrationSetError(format!(
            "shared migrations ([migrations] shared_dir): {}",
            e.0
        ))
    })?;
    rules::check_set(&set, &rules_for(config, SetKind::Shared))?;
    Ok((!set.files().is_empty()).then_some(set))
}

/// A run's result as one cluster's output: its summary text and share of the JSON document,
/// its exit code and counts, and whether the cluster went away mid-run.
pub fn run_output(result: &crate::engine::run::RunResult) -> Done {
    use crate::report::summary::{tallies, RunSummary};
    let summary = RunSummary(result);
    let mut done = Done::new(result.exit_code(), summary.to_text(), summary.to_part())
        .counts(tallies(result.command, &result.counts));
    done.down = result.outcome.database_down().is_some() || result.outcome.fenced().is_some();
    done
}
