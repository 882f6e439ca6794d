//! Plain progress lines for CI logs: one line per schema on small runs, a progress line
//! every few seconds on large ones, and every failure at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{CauseCap, Reporter};
use crate::control::RunCommand;
use crate::engine::events::Event;

/// Runs with at most this many schemas get one line per schema.
const PER_SCHEMA_LINES_UP_TO: usize = 50;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

struct State {
    command: String,
    run: Option<(RunCommand, Option<i32>)>,
    todo: usize,
    done: usize,
    failed: usize,
    started: Instant,
    last_line: Instant,
    /// When the last line about a pause between waves was printed.
    pause_line: Option<Instant>,
}

pub struct Plain {
    state: Mutex<State>,
    causes: CauseCap,
    /// `[cluster] ` when the config names clusters, else empty.
    label: String,
}

impl Plain {
    pub fn new(label: String) -> Plain {
        Plain {
            label,
            causes: CauseCap::default(),
            state: Mutex::new(State {
                command: String::new(),
                run: None,
                todo: 0,
                done: 0,
                failed: 0,
                started: Instant::now(),
                last_line: Instant::now(),
                pause_line: None,
            }),
        }
    }
}

impl Plain {
    /// On a run too large for a line per schema, the `N/M done` line at its interval, however
    /// the schemas end.
    fn progress(&self, s: &mut State) {
        if s.todo <= PER_SCHEMA_LINES_UP_TO || s.last_line.elapsed() < PROGRESS_EVERY {
            return;
        }
        s.last_line = Instant::now();
        crate::output::stderr_line(&format!(
            "{}{}: {}/{} done, {} failed, {:.1}s elapsed",
            self.label,
            s.command,
            s.done + s.failed,
            s.todo,
            s.failed,
            s.started.elapsed().as_secs_f64()
        ));
    }
}

impl Reporter for Plain {
    fn event(&self, event: &Event<'_>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::RunStarted {
                command,
                todo,
                target,
                ..
            } => {
                s.command = command.to_string();
                s.run = Some((*command, *target));
                s.todo = *todo;
                s.started = Instant::now();
                s.last_line = Instant::now();
                if let Some(line) = super::notice(event) {
                    crate::output::stderr_line(&format!("{}{line}", self.label));
                }
            }
            Event::SchemaSucceeded {
                tenant,
                applied,
                elapsed,
                ..
            } => {
                s.done += 1;
                if s.todo <= PER_SCHEMA_LINES_UP_TO {
                    let (command, target) = s.run.unwrap_or((RunCommand::Migrate, None));
                    crate::output::stderr_line(&format!(
                        "{}{}: ok   {tenant}: {} ({} ms)",
                        self.label,
                        s.command,
                        super::schema_done(command, target, applied),
                        elapsed.as_millis()
                    ));
                }
                self.progress(&mut s);
            }
            Event::SchemaFailed {
                tenant, failure, ..
            } => {
                s.failed += 1;
                if let Some(line) = self.causes.line(tenant, failure) {
                    crate::output::stderr_line(&format!("{}{}: {line}", self.label, s.command));
                }
                self.progress(&mut s);
            }
            Event::SchemaDropped { tenant } => {
                s.done += 1;
                crate::output::stderr_line(&format!(
                    "{}{}: skip {tenant}: dropped while the run was going on",
                    self.label, s.command
                ));
                self.progress(&mut s);
            }
            Event::Rows { .. } => {}
            Event::RunFinished => {}
            Event::Copying { table, rows, bytes } => {
                if s.last_line.elapsed() >= PROGRESS_EVERY {
                    s.last_line = Instant::now();
                    let line = super::copy_line(table, *rows, *bytes);
                    crate::output::stderr_line(&format!("{}{line}", self.label));
                }
            }
            Event::Pausing { left, .. } => {
                // A line when the pause starts, then one a minute.
                let first = s.pause_line.is_none();
                let due = s
                    .pause_line
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                if first || due {
                    s.pause_line = Some(Instant::now());
                    if let Some(line) = super::notice(event) {
                        crate::output::stderr_line(&format!("{}{line}", self.label));
                    }
                }
                let _ = left;
            }
            Event::WaveStarted { .. } => {
                s.pause_line = None;
                if let Some(line) = super::notice(event) {
                    crate::output::stderr_line(&format!("{}{line}", self.label));
                }
            }
            Event::SchemaStarted { .. }
            | Event::Retrying { .. }
            | Event::WaveGate { .. }
            | Event::RunEnded { .. } => {}
            other @ (Event::Interrupting { .. }
            | Event::Waiting { .. }
            | Event::Resuming { .. }
            | Event::Info { .. }
            | Event::Warning { .. }
            | Event::Slow { .. }) => {
                if let Some(line) = super::notice(other) {
                    crate::output::stderr_line(&format!("{}{line}", self.label));
                }
            }
        }
    }
}
