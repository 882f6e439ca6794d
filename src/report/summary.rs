//! The result of a run, for stdout: text for people (failures grouped by cause, so a
//! migration broken for everyone is reported once, not ten thousand times) and the run's
//! share of the JSON document (every tenant it worked on, uncapped; see docs/json.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;

use crate::control::{Halted, RunCommand, RunCounts, SchemaResult, SchemaRow, WaveRow};
use crate::engine::run::RunResult;

use super::json::Part;
use super::{and_more, cause_of, Tally};

/// A cause shared by fewer tenants than this lists them one per line.
const GROUP_FROM: usize = 4;
/// Tenants named per grouped cause.
const NAMES_PER_CAUSE: usize = 10;
/// Failure lines in the text at most (the rest are counted; --json and the ledger list all).
const FAILURE_LINES: usize = 40;

/// `900 migrated, 100 failed, 3 already current`: the done and failed counts always, the
/// others when there are any. The words of `command`, the counts of the ledger.
pub fn counts_text(command: RunCommand, counts: &RunCounts) -> String {
    counts
        .by_result()
        .iter()
        .filter(|(r, n)| *n > 0 || matches!(r, SchemaResult::Done | SchemaResult::Failed))
        .map(|(r, n)| format!("{n} {}", Tally::of(command, *r).as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tallies of a run for the overall line across clusters.
pub fn tallies(command: RunCommand, counts: &RunCounts) -> Vec<(Tally, usize)> {
    counts
        .by_result()
        .iter()
        .map(|(r, n)| (Tally::of(command, *r), *n as usize))
        .collect()
}

/// Tenants that failed the same way: the first one's own words, and each one's (id, schema,
/// own words).
type Cause<'a> = (String, Vec<(&'a str, &'a str, &'a str)>);

/// `error` cut into what happened and the advice (` — ` separates them in every failure's
/// words: see [`crate::engine::failure::Failure`]'s `Display`).
fn split_advice(error: &str) -> (&str, Option<&str>) {
    match error.rfind(" — ") {
        Some(at) => (&error[..at], Some(&error[at + " — ".len()..])),
        None => (error, None),
    }
}

/// Failed tenants grouped by cause (the error with the tenant's schema taken out), each
/// cause with its tenants, the causes shared by most first. A cause of a few tenants lists
/// each one's own words, then the advice once; a cause of more, its words and names. Writes
/// at most [`FAILURE_LINES`] lines and says how many more there are, and where.
pub fn failures_text<'a>(
    out: &mut String,
    failed: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
) {
    use crate::engine::failure::plural_advice;
    // cause -> (the first tenant's own words, each tenant)
    let mut causes: BTreeMap<String, Cause<'_>> = BTreeMap::new();
    let mut total = 0usize;
    for (id, schema, error) in failed {
        total += 1;
        causes
            .entry(cause_of(error, schema))
            .or_insert_with(|| (error.to_string(), Vec::new()))
            .1
            .push((id, schema, error));
    }
    if total == 0 {
        return;
    }
    let mut causes: Vec<(String, Cause<'_>)> = causes.into_iter().collect();
    causes.sort_by(|a, b| b.1 .1.len().cmp(&a.1 .1.len()).then(a.0.cmp(&b.0)));
    let _ = writeln!(out, "failed: {total} tenant(s), {} cause(s):", causes.len());
    let mut lines = 0usize;
    let mut shown = 0usize;
    for (cause, (first, ids)) in &causes {
        if lines >= FAILURE_LINES {
            break;
        }
        if ids.len() == 1 {
            let (id, schema, _) = ids[0];
            let _ = writeln!(out, "  {id} (schema {schema}): {first}");
            lines += 1;
            shown += 1;
        } else if ids.len() < GROUP_FROM {
            for (id, schema, error) in ids {
                if lines >= FAILURE_LINES {
                    break;
                }
                let _ = writeln!(out, "  {id} (schema {schema}): {}", split_advice(error).0);
                lines += 1;
                shown += 1;
            }
            if let Some(advice) = split_advice(cause).1 {
                let _ = writeln!(out, "    {}", plural_advice(advice));
                lines += 1;
            }
        } else {
            let names: Vec<&str> = ids.iter().take(NAMES_PER_CAUSE).map(|t| t.0).collect();
            let _ = writeln!(out, "  {} tenants: {}", ids.len(), plural_advice(cause));
            let _ = writeln!(
                out,
                "    {}{}",
                names.join(", "),
                and_more(ids.len() - names.len())
            );
            lines += 2;
            shown += ids.len();
        }
    }
    if shown < total {
        let _ = writeln!(
            out,
            "  … and {} more failed tenant(s) not shown here: --json lists every one",
            total - shown
        );
    }
}

/// A staged rollout's waves, one line each, and why it halted (the same for `status`).
pub fn waves_text(out: &mut String, waves: &[WaveRow], halted: Option<&Halted>) {
    if waves.is_empty() {
        return;
    }
    out.push_str("waves:\n");
    for w in waves {
        let _ = write!(
            out,
            "  wave {}{}: {}/{} done",
            w.wave,
            if w.wave == 0 { " (canary)" } else { "" },
            w.succeeded,
            w.tenants
        );
        if w.failed > 0 {
            let _ = write!(out, ", {} failed", w.failed);
        }
        let _ = writeln!(out, " — {}", w.state.replace('_', " "));
    }
    if let Some(h) = halted {
        let _ = writeln!(
            out,
            "HALTED after wave {}: {}. Later waves were not started. Fix the cause and run the same command again: it resumes at wave {} (failed tenants first); --fresh starts over",
            h.wave, h.reason, h.wave
        );
    }
}

/// A run's result as people and pipelines read it.
pub struct RunSummary<'a>(pub &'a RunResult);

impl RunSummary<'_> {
    pub fn to_text(&self) -> String {
        let r = self.0;
        let o = &r.outcome;
        let mut out = format!(
            "{} run {} {} in {:.2}s: {}",
            r.command,
            r.run_id,
            r.state,
            o.elapsed.as_secs_f64(),
            counts_text(r.command, &r.counts)
        );
        if let (Some(stop), true) = (&o.stopped, r.counts.not_started > 0) {
            let _ = write!(out, " ({}; re-run to continue)", stop.why());
        }
        if let Some(done) = r.resumed_from {
            let _ = write!(out, " (resumed a run that had done {done} before)");
        }
        let from_pool = r
            .tenants
            .iter()
            .filter(|t| t.from_pool == Some(true))
            .count();
        if from_pool > 0 {
            let _ = write!(out, " ({from_pool} from the pool)");
        }
        // migrate/rollback --all move the pool too: say which of the counted schemas are
        // pooled (their ids are their schema names, `<prefix>pool__<n>`).
        let pooled = r.tenants.iter().filter(|t| t.id.contains("__")).count();
        if pooled > 0 && !matches!(r.command, RunCommand::PoolFill | RunCommand::PoolDrain) {
            let _ = write!(out, " (pooled schemas among them: {pooled})");
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
        waves_text(&mut out, &r.waves, r.halted.as_ref());
        let archived: Vec<&SchemaRow> = r
            .tenants
            .iter()
            .filter(|t| t.archived_as.is_some())
            .collect();
        for t in archived.iter().take(FAILURE_LINES) {
            let _ = writeln!(
                out,
                "  {}: data kept in schema {} (`tenantctl tenant list` shows it)",
                t.id,
                t.archived_as.as_deref().unwrap_or_default()
            );
        }
        if archived.len() > FAILURE_LINES {
            let _ = writeln!(
                out,
                "  … and {} more archived (`tenantctl tenant list` shows them all)",
                archived.len() - FAILURE_LINES
            );
        }
        failures_text(
            &mut out,
            r.tenants.iter().filter_map(|t| {
                t.failure
                    .as_ref()
                    .map(|f| (t.id.as_str(), t.schema.as_str(), f.error.as_str()))
            }),
        );
        out
    }

    /// The run's share of the document: `tenants` (every one it worked on), the counts,
    /// and the cluster's run details.
    pub fn to_part(&self) -> Part {
        let r = self.0;
        let o = &r.outcome;
        let tenants = r
            .tenants
            .iter()
            .map(|t| serde_json::to_value(t).expect("plain data"))
            .collect();
        Part::default()
            .top("command", json!(r.command))
            .top("dry_run", json!(false))
            .top("target_version", json!(r.target))
            .list("tenants", tenants)
            .cluster("run_id", json!(r.run_id))
            .cluster("state", json!(r.state))
            .cluster("elapsed_ms", json!(o.elapsed.as_millis() as u64))
            .cluster("resumed_from", json!(r.resumed_from))
            .cluster(
                "stopped",
                match &o.stopped {
                    Some(s) => json!({
                        "reason": s.as_str(),
                        "message": o
                            .database_down()
                            .or(o.fenced())
                            .or(o.halted().map(|h| h.1))
                            .unwrap_or(s.why()),
                    }),
                    None => serde_json::Value::Null,
                },
            )
            .cluster("ledger_warning", json!(r.ledger_note))
            // Set by the commands that have a shared step (migrate, tenant create).
            .cluster("shared", serde_json::Value::Null)
            .top("halted", json!(r.halted))
            .list(
                "waves",
                r.waves
                    .iter()
                    .map(|w| serde_json::to_value(w).expect("plain data"))
                    .collect(),
            )
    }
}

/// The document's part for a run command on a cluster where no run was opened (only the
/// shared migrations ran, or they failed): the same keys as [`RunSummary::to_part`], with no
/// tenants, zero counts and no run.
pub fn no_run_part(command: RunCommand, target: Option<i32>) -> Part {
    let mut part = Part::default()
        .top("command", json!(command))
        .top("dry_run", json!(false))
        .top("target_version", json!(target))
        .top("halted", serde_json::Value::Null)
        .list("tenants", Vec::new())
        .list("waves", Vec::new());
    for key in [
        "run_id",
        "state",
        "elapsed_ms",
        "resumed_from",
        "stopped",
        "ledger_warning",
        "shared",
    ] {
        part = part.cluster(key, serde_json::Value::Null);
    }
    for (tally, n) in tallies(command, &RunCounts::default()) {
        part = part.count(tally.key(), n as i64);
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{RunCommand, RunState};
    use crate::engine::fleet::{FleetOutcome, Stop};

    fn result(stopped: Option<Stop>) -> RunResult {
        RunResult {
            command: RunCommand::Migrate,
            run_id: 7,
            state: RunState::Failed,
            target: Some(9),
            outcome: FleetOutcome {
                stopped,
                ..FleetOutcome::default()
            },
            resumed_from: None,
            ledger_note: None,
            counts: RunCounts {
                not_started: 1,
                ..RunCounts::default()
            },
            tenants: Vec::new(),
            waves: Vec::new(),
            halted: None,
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

    #[test]
    fn counts_show_done_and_failed_always_and_the_rest_when_there_are_any() {
        let counts = RunCounts {
            done: 0,
            failed: 1,
            ..RunCounts::default()
        };
        assert_eq!(
            counts_text(RunCommand::TenantCreate, &counts),
            "0 created, 1 failed"
        );
        let counts = RunCounts {
            done: 900,
            failed: 100,
            unchanged: 3,
            ..RunCounts::default()
        };
        assert_eq!(
            counts_text(RunCommand::Migrate, &counts),
            "900 migrated, 100 failed, 3 already current"
        );
    }

    #[test]
    fn failures_group_by_cause_with_the_schema_taken_out() {
        let errors: Vec<(String, String, String)> = (0..30)
            .map(|i| {
                let schema = format!("tenant_t{i}");
                (
                    format!("t{i}"),
                    schema.clone(),
                    format!("V2__x failed at line 1: relation \"{schema}.gone\" does not exist — rolled back"),
                )
            })
            .chain(std::iter::once((
                "odd".into(),
                "tenant_odd".into(),
                "V2__x failed at line 3: division by zero — rolled back".into(),
            )))
            .collect();
        let mut out = String::new();
        failures_text(
            &mut out,
            errors
                .iter()
                .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())),
        );
        assert!(
            out.starts_with("failed: 31 tenant(s), 2 cause(s):\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "  30 tenants: V2__x failed at line 1: relation \"<schema>.gone\" does not exist"
            ),
            "{out}"
        );
        assert!(out.contains("… and 20 more"), "{out}");
        assert!(
            out.contains("  odd (schema tenant_odd): V2__x failed at line 3: division by zero"),
            "{out}"
        );
        assert_eq!(out.lines().count(), 4, "{out}");
    }
}
