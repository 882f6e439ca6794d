//! The checks of a request before anything changes, shared by the commands and the fleet
//! orchestration: ids every cluster was asked about, a selector that matched nothing, the
//! `migration check` gate over what is about to run, one cluster's error as the command's.

use crate::config::{Config, Target};
use crate::exit::UsageError;
use crate::labels::Selector;
use crate::migrations::rules::{Rules, SetKind};
use crate::migrations::MigrationSet;

/// In the single `[database]` form, the cluster's error is the command's error (before any
/// check that spans clusters could turn it into a vaguer one).
pub fn single_error<T>(multi: bool, outcomes: &mut Vec<anyhow::Result<T>>) -> anyhow::Result<()> {
    if !multi {
        if let Some(i) = outcomes.iter().position(Result::is_err) {
            return Err(outcomes.swap_remove(i).err().expect("an error"));
        }
    }
    Ok(())
}

/// The clusters whose step failed, each with its error.
pub fn failed_names<T>(clusters: &[Target], outcomes: &[anyhow::Result<T>]) -> Vec<String> {
    clusters
        .iter()
        .zip(outcomes)
        .filter_map(|(s, o)| o.as_ref().err().map(|e| format!("{} ({e:#})", s.name)))
        .collect()
}

/// Refuses (exit 2) ids that no cluster holds as active tenants, naming every one; when some
/// clusters could not be asked, says so instead (exit 6 when none could be reached, else 1).
/// `holds(outcome, id)` tells whether
/// one cluster's lookup found the id.
pub fn require_registered<T>(
    wanted: &[String],
    targets: &[Target],
    outcomes: &[anyhow::Result<T>],
    holds: impl Fn(&T, &str) -> bool,
) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|id| !outcomes.iter().flatten().any(|o| holds(o, id)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let unreachable = failed_names(targets, outcomes);
    if !unreachable.is_empty() {
        let message = format!(
            "not found on the clusters that answered: {}; nothing was changed, because these could not be asked: {}. Re-run once they are back, or narrow the command with --cluster",
            missing.join(", "),
            unreachable.join("; ")
        );
        let all_unreachable = outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|e| crate::exit::Kind::of(e) == crate::exit::Kind::Unreachable);
        return Err(match all_unreachable {
            true => crate::exit::UnreachableError(message).into(),
            false => anyhow::anyhow!(message),
        });
    }
    Err(UsageError(format!(
        "not registered (or dropped): {}; nothing was changed (see `tenantctl tenant list`, or create them with `tenantctl tenant create`)",
        missing.join(", ")
    ))
    .into())
}

/// A selector that matched nothing: for a command that changes tenants, an error (exit 2: a
/// typo must not pass as success).
pub fn nothing_selected(selector: &Selector) -> anyhow::Error {
    UsageError(format!(
        "--select {selector}: no tenant matches it; nothing was changed (`tenantctl tenant list` shows the labels)"
    ))
    .into()
}

/// Refuses (exit 2) the error-level `migration check` findings of the up scripts of the
/// versions `applies` selects and the down scripts `downs` selects: what a command is about
/// to run (see [`crate::migrations::lint::gate`]).
pub fn gate(
    config: &Config,
    set: &MigrationSet,
    applies: impl Fn(i32) -> bool,
    downs: impl Fn(i32) -> bool,
) -> anyhow::Result<()> {
    let rules = rules_for(config, SetKind::Tenant);
    Ok(crate::migrations::lint::gate(set, &rules, applies, downs)?)
}

/// The checks for one kind of migration set under this configuration.
pub fn rules_for(config: &Config, kind: SetKind) -> Rules<'_> {
    let m = &config.migrations;
    Rules {
        kind,
        prefix: &config.tenants.schema_prefix,
        control_schema: &config.control_schema,
        allowed: std::iter::once(m.shared_schema.as_str())
            .chain(m.extensions_schema.as_deref())
            .collect(),
    }
}
