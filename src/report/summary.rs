//! The result of a fleet run, for stdout: text for people (identical failures grouped, so a
//! migration broken for everyone is reported once, not ten thousand times) or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;

use crate::engine::fleet::Stop;
use crate::engine::run::RunResult;

use super::Tally;

/// Groups with more tenants than this print as one entry with a tenant list.
const GROUP_FROM: usize = 4;
const LIST_AT_MOST: usize = 10;

/// A run's result as people and pipelines read it.
pub struct RunSummary<'a>(pub &'a RunResult);

impl RunSummary<'_> {
    /// Counts for the overall line across clusters.
    pub fn counts(&self) -> Vec<(Tally, usize)> {
        let r = self.0;
        let o = &r.outcome;
        let unchanged = self.unchanged();
        vec![
            (Tally::Done(r.command), o.succeeded.len() - unchanged),
            (Tally::Failed, o.failed.len()),
            (Tally::Unchanged(r.command), r.skipped + unchanged),
            (Tally::NotStarted, o.not_started.len()),
        ]
    }

    /// A migrate/rollback success that changed nothing (a re-checked schema) is "current".
    fn unchanged(&self) -> usize {
        if self.0.command.is_fleet_command() {
            self.0
                .outcome
                .succeeded
                .iter()
                .filter(|(_, a)| a.count == 0)
                .count()
        } else {
            0
        }
    }

    pub fn to_text(&self) -> String {
        let r = self.0;
        let o = &r.outcome;
        let unchanged = self.unchanged();
        let mut out = format!(
            "{} run {} {} in {:.2}s: {} {}, {} failed, {} {}",
            r.command,
            r.run_id,
            r.state,
            o.elapsed.as_secs_f64(),
            o.succeeded.len() - unchanged,
            Tally::Done(r.command).as_str(),
            o.failed.len(),
            r.skipped + unchanged,
            Tally::Unchanged(r.command).as_str(),
        );
        if !o.dropped.is_empty() {
            let _ = write!(out, ", {} dropped meanwhile", o.dropped.len());
        }
        if !o.not_started.is_empty() {
            let why = match &o.stopped {
                Some(Stop::FailFast) => "--fail-fast",
                Some(Stop::Interrupted) => "interrupted",
                Some(Stop::DatabaseDown(_)) => "the database could not be reached",
                Some(Stop::Fenced(_)) => "this process lost the run",
                None => "never scheduled",
            };
            let _ = write!(
                out,
                ", {} not started ({why}; re-run to continue)",
                o.not_started.len()
            );
        }
        if let Some(done) = r.resumed_from {
            let _ = write!(out, " (resumed; {done} done before)");
        }
        out.push('\n');
        if let Some(why) = o.database_down() {
            let _ = writeln!(
                out,
                "stopped early: the database could not be reached after retries ({why}); re-run once it is back, finished schemas are kept"
            );
        }
        if let Some(why) = o.fenced() {
            let _ = writeln!(
                out,
                "stopped: {why}. The schemas this process committed are whole; the run is the other tenantctl's now (`tenantctl status` shows it), or re-run to continue it"
            );
        }
        if let Some(note) = &r.ledger_note {
            let _ = writeln!(out, "warning: {note}");
        }
        if o.failed.is_empty() {
            return out;
        }
        // Group by what went wrong, independent of the tenant.
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (tenant, failure) in &o.failed {
            groups
                .entry(failure.to_string())
                .or_default()
                .push(format!("{tenant}"));
        }
        out.push_str("failed:\n");
        for (problem, tenants) in &groups {
            if tenants.len() < GROUP_FROM {
                for t in tenants {
                    let _ = writeln!(out, "  {t}: {problem}");
                }
            } else {
                let shown: Vec<&str> = tenants
                    .iter()
                    .take(LIST_AT_MOST)
                    .map(String::as_str)
                    .collect();
                let more = tenants.len().saturating_sub(LIST_AT_MOST);
                let _ = writeln!(out, "  {} tenants: {problem}", tenants.len());
                let _ = writeln!(
                    out,
                    "    {}{}",
                    shown.join(", "),
                    crate::report::and_more(more)
                );
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let r = self.0;
        let o = &r.outcome;
        json!({
            "command": r.command,
            "run_id": r.run_id,
            "state": r.state,
            "target_version": r.target,
            "elapsed_ms": o.elapsed.as_millis() as u64,
            "succeeded": o.succeeded.iter().map(|(t, a)| json!({
                "id": t.id(), "schema": t.schema(), "version_before": a.before, "version": a.after, "applied": a.count,
            })).collect::<Vec<_>>(),
            "failed": o.failed.iter().map(|(t, f)| json!({
                "id": t.id(), "schema": t.schema(), "migration": f.migration, "line": f.line,
                "error": f.message, "version": f.still_at, "attempts": f.attempts, "message": f.to_string(),
            })).collect::<Vec<_>>(),
            "skipped": r.skipped,
            "not_started": o.not_started.iter().map(|t| t.id()).collect::<Vec<_>>(),
            "interrupted": o.interrupted,
            "resumed": r.resumed_from.is_some(),
            "database_down": o.database_down(),
            "fenced": o.fenced(),
            "dropped": o.dropped.iter().map(|t| t.id()).collect::<Vec<_>>(),
            "ledger_warning": r.ledger_note,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{RunCommand, RunState};
    use crate::engine::fleet::FleetOutcome;
    use crate::tenant::Tenant;

    fn result(stopped: Option<Stop>) -> RunResult {
        let t = Tenant::parse("late", "tenant_", "tenantctl").unwrap();
        RunResult {
            command: RunCommand::Migrate,
            run_id: 7,
            state: RunState::Failed,
            target: Some(9),
            skipped: 0,
            outcome: FleetOutcome {
                not_started: vec![t],
                stopped,
                ..FleetOutcome::default()
            },
            resumed_from: None,
            ledger_note: None,
        }
    }

    #[test]
    fn not_started_names_the_real_cause() {
        for (stop, why) in [
            (
                Stop::DatabaseDown("gone".into()),
                "the database could not be reached",
            ),
            (Stop::FailFast, "--fail-fast"),
            (Stop::Interrupted, "interrupted"),
            (
                Stop::Fenced("taken over".into()),
                "this process lost the run",
            ),
        ] {
            let text = RunSummary(&result(Some(stop))).to_text();
            assert!(text.contains(&format!("1 not started ({why};")), "{text}");
        }
        let text = RunSummary(&result(Some(Stop::DatabaseDown("gone".into())))).to_text();
        assert!(!text.contains("--fail-fast"), "{text}");
    }
}
