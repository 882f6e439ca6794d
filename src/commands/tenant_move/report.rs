//! What a finished move says: its text and its JSON document.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::MoveArgs;
use crate::control::MovePhase;
use crate::engine::mover::cutover;
use crate::migrations::version_label;
use crate::report::json::Part;
use crate::tenant::Tenant;

use super::super::clusters::Done;
use super::Side;

/// What the move did, for its report.
#[derive(Default)]
pub(super) struct Report {
    /// The move's run in the source's ledger, recorded at the cutover (None: a resumed move
    /// that cut over in an earlier process).
    pub run_id: Option<i64>,
    pub resumed: Option<MovePhase>,
    pub online: bool,
    pub version: Option<i32>,
    pub rows: Vec<(String, u64)>,
    pub checks: Vec<cutover::TableCheck>,
    pub first_copy: Option<Duration>,
    pub start_pause: Option<Duration>,
    pub pause: Option<Duration>,
    pub attempts: u32,
    pub old_schema: Option<String>,
    pub keep: Option<Duration>,
    pub dropped_old: bool,
}

impl Report {
    pub(super) fn done(
        &self,
        tenant: &Tenant,
        (source, target): (&Side<'_>, &Side<'_>),
        args: &MoveArgs,
        started: Instant,
    ) -> Done {
        let (from, to) = (&source.target.name, &target.target.name);
        let rows: u64 = self.checks.iter().map(|c| c.rows as u64).sum();
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        let mut text = format!(
            "moved tenant {} from {from} to {to} ({}, {}): {rows} row(s) in {} table(s)",
            tenant.id(),
            if self.online { "online" } else { "offline" },
            version_label(self.version),
            self.checks.len()
        );
        if let Some(d) = self.first_copy {
            text.push_str(&format!("; first copy {:.1}s", d.as_secs_f64()));
        }
        if let Some(p) = self.pause {
            text.push_str(&format!(
                "; writes paused {} ms at the cutover ({} attempt(s))",
                p.as_millis(),
                self.attempts
            ));
        }
        if let Some(phase) = self.resumed {
            text.push_str(&format!("; resumed from phase {phase}"));
        }
        text.push('\n');
        match (&self.old_schema, self.dropped_old, self.keep) {
            (Some(old), true, _) => text.push_str(&format!("the old copy {old} on {from} was dropped (--keep-source 0s)\n")),
            (Some(old), false, Some(k)) => text.push_str(&format!(
                "the old copy {old} stays on {from} for {}; then `tenantctl tenant move --cleanup` drops it\n",
                humantime::format_duration(k)
            )),
            (Some(old), false, None) => text.push_str(&format!(
                "the old copy {old} stays on {from} until `tenantctl tenant move --cleanup {}`\n",
                tenant.id()
            )),
            (None, _, _) => {}
        }
        let part = Part::default()
            .top("command", json!("tenant move"))
            .top("tenant", json!({"id": tenant.id(), "schema": tenant.schema()}))
            .top("from", json!(from))
            .top("to", json!(to))
            .top("online", json!(self.online))
            .top("version", json!(self.version))
            .top("resumed_from", json!(self.resumed))
            .top("attempts", json!(self.attempts))
            .top("first_copy_ms", json!(ms(self.first_copy)))
            .top("start_pause_ms", json!(ms(self.start_pause)))
            .top("pause_ms", json!(ms(self.pause)))
            .top("verified", json!(args.verify))
            .top("old_schema", json!(self.old_schema))
            .top("old_schema_dropped", json!(self.dropped_old))
            .top("keep_source_s", json!(self.keep.map(|k| k.as_secs())))
            .top("elapsed_ms", json!(started.elapsed().as_millis() as u64))
            .list(
                "tables",
                self.checks
                    .iter()
                    .map(|c| {
                        let copied = self.rows.iter().find(|(t, _)| *t == c.table).map(|r| r.1);
                        json!({"table": c.table, "rows": c.rows, "copied": copied, "checksum": c.checksum})
                    })
                    .collect(),
            );
        Done::new(crate::exit::SUCCESS, text, part)
    }
}
