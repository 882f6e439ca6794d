//! `--events PATH`: the run's events as NDJSON, one object per line, written and flushed as
//! they happen, so `tail -f` and log shippers see them live. Drawn from the same engine
//! events as the bar and the plain lines. The schema is in docs/json.md#event-stream.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use crate::engine::events::Event;

/// The event stream's version: an event's keys are only ever added to within it.
pub const EVENTS_FORMAT: u32 = 1;

/// Where the events go (a file, appended to, or stdout).
pub struct Stream {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Stream {
    /// Opens `path` for appending (`-`: stdout).
    pub fn open(path: &Path) -> anyhow::Result<Arc<Stream>> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "--events {}: cannot open it for writing ({e}); give a file in a folder that exists, or - for stdout",
                        path.display()
                    )
                })?;
            Box::new(file)
        };
        Ok(Arc::new(Stream {
            out: Mutex::new(out),
        }))
    }

    /// A cluster's writer: it knows the cluster and learns the run id from the run's start.
    pub fn for_cluster(self: &Arc<Stream>, cluster: &str) -> ClusterStream {
        ClusterStream {
            stream: self.clone(),
            cluster: cluster.to_string(),
            run_id: AtomicI64::new(0),
        }
    }

    fn write(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A stream that cannot be written (a full disk, a closed pipe) must not fail the run.
        let _ = writeln!(out, "{line}").and_then(|_| out.flush());
    }
}

/// One cluster's share of the stream.
pub struct ClusterStream {
    stream: Arc<Stream>,
    cluster: String,
    run_id: AtomicI64,
}

impl ClusterStream {
    pub fn event(&self, event: &Event<'_>) {
        if let Event::RunStarted { run_id, .. } | Event::RunEnded { run_id, .. } = event {
            self.run_id.store(*run_id, Ordering::Relaxed);
        }
        let Some((name, fields)) = fields(event) else {
            return;
        };
        let run_id = self.run_id.load(Ordering::Relaxed);
        let mut object = Map::new();
        object.insert("format".into(), json!(EVENTS_FORMAT));
        object.insert("ts".into(), json!(now()));
        object.insert("event".into(), json!(name));
        object.insert("cluster".into(), json!(self.cluster));
        object.insert("run_id".into(), json!((run_id != 0).then_some(run_id)));
        if let Value::Object(more) = fields {
            object.extend(more);
        }
        let line = crate::redact::scrub(&Value::Object(object).to_string());
        self.stream.write(&line);
    }
}

/// RFC 3339 in UTC, to the millisecond.
fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An event's name and fields; None for what the stream leaves out (countdowns, copy
/// progress, query rows, notes for people).
fn fields(event: &Event<'_>) -> Option<(&'static str, Value)> {
    let ms = |d: &std::time::Duration| d.as_millis() as u64;
    Some(match event {
        Event::RunStarted {
            command,
            total,
            todo,
            refused,
            jobs,
            target,
            scope,
            ..
        } => (
            "run_started",
            json!({
                "command": command, "target_version": target,
                "scope": (!scope.is_empty()).then_some(scope),
                "total": total, "todo": todo, "refused": refused, "jobs": jobs,
            }),
        ),
        Event::Waiting { what } => ("waiting", json!({ "for": what })),
        Event::Resuming { run } => ("resuming", json!({ "resumed_run": run.id })),
        Event::SchemaStarted { tenant } => (
            "tenant_started",
            json!({ "tenant": tenant.id(), "schema": tenant.schema() }),
        ),
        Event::SchemaSucceeded {
            tenant,
            applied,
            elapsed,
            attempts,
        } => (
            "tenant_finished",
            json!({
                "tenant": tenant.id(), "schema": tenant.schema(),
                "version_before": applied.before, "version": applied.after,
                "applied": applied.count, "rows": applied.rows,
                "duration_ms": ms(elapsed), "attempts": attempts,
            }),
        ),
        Event::SchemaFailed {
            tenant,
            failure,
            elapsed,
        } => (
            "tenant_failed",
            json!({
                "tenant": tenant.id(), "schema": tenant.schema(),
                "duration_ms": ms(elapsed), "attempts": failure.attempts,
                "failure": failure.row(),
            }),
        ),
        Event::SchemaDropped { tenant } => ("tenant_dropped", json!({ "tenant": tenant.id() })),
        Event::Retrying {
            tenant,
            failure,
            attempt,
            pause,
        } => (
            "retry",
            json!({
                "tenant": tenant.id(), "attempt": attempt, "pause_ms": ms(pause),
                "kind": failure.kind.as_str(), "sqlstate": failure.sqlstate.as_deref(),
                "message": failure.message,
            }),
        ),
        Event::Slow {
            tenant,
            from,
            to,
            elapsed,
            waiting,
        } => (
            "tenant_slow",
            json!({
                "tenant": tenant.id(), "version_before": from, "target_version": to,
                "running_ms": ms(elapsed), "waiting": waiting,
            }),
        ),
        Event::WaveStarted {
            wave,
            waves,
            tenants,
        } => (
            "wave_started",
            json!({ "wave": wave, "waves": waves, "tenants": tenants }),
        ),
        Event::WaveGate {
            wave,
            done,
            failed,
            decision,
            reason,
        } => (
            "wave_gate",
            json!({ "wave": wave, "done": done, "failed": failed, "decision": decision, "reason": reason }),
        ),
        Event::Interrupting { signal, grace } => (
            "interrupting",
            json!({ "signal": signal, "grace_ms": ms(grace) }),
        ),
        Event::Warning { message } => ("warning", json!({ "message": message })),
        Event::RunEnded {
            state,
            counts,
            exit_code,
            elapsed,
            ..
        } => (
            "run_finished",
            json!({
                "state": state, "exit_code": exit_code,
                "duration_ms": ms(elapsed), "counts": counts,
            }),
        ),
        Event::Info { .. }
        | Event::Pausing { .. }
        | Event::Copying { .. }
        | Event::Rows { .. }
        | Event::RunFinished => return None,
    })
}
