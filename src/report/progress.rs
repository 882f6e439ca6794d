//! The terminal reporter: an indicatif bar on stderr with the finished and failed counts and
//! an ETA.
//! Failures print above the bar as they happen (the first few of each cause). The bar
//! appears only once a run has schemas to work on (never an empty bar drawn full at 0/0),
//! its length is the schemas the run works on, and its position the ones finished.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{CauseCap, Reporter};
use crate::engine::events::Event;

pub struct Bar {
    multi: MultiProgress,
    bar: ProgressBar,
    /// `[cluster] ` when the config names clusters, else empty.
    label: String,
    failed: AtomicUsize,
    skipped: AtomicUsize,
    /// Tenants reported past --slow-after (a mark on the bar).
    slow: AtomicUsize,
    causes: CauseCap,
    /// The countdown between waves, while one runs.
    pause: std::sync::Mutex<Option<ProgressBar>>,
    /// Rows and bytes of the table being copied (export, import, clone).
    copy: std::sync::Mutex<Option<ProgressBar>>,
}

impl Bar {
    /// A bar to be drawn under `multi` (which draws on stderr) once its run has work.
    pub fn new(label: String, multi: &MultiProgress) -> Bar {
        let bar = ProgressBar::hidden();
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} {msg} ETA {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        Bar {
            multi: multi.clone(),
            bar,
            label,
            failed: AtomicUsize::new(0),
            skipped: AtomicUsize::new(0),
            slow: AtomicUsize::new(0),
            causes: CauseCap::default(),
            pause: std::sync::Mutex::new(None),
            copy: std::sync::Mutex::new(None),
        }
    }

    /// The position is the count of schemas finished; the message says how many of those
    /// failed (and were dropped meanwhile), so the two can never disagree.
    fn update_msg(&self) {
        let skipped = self.skipped.load(Ordering::Relaxed);
        let slow = self.slow.load(Ordering::Relaxed);
        self.bar.set_message(format!(
            "done ({} failed{}{})",
            self.failed.load(Ordering::Relaxed),
            if skipped > 0 {
                format!(", {skipped} dropped meanwhile")
            } else {
                String::new()
            },
            if slow > 0 {
                format!(", {slow} slow")
            } else {
                String::new()
            }
        ));
    }

    fn end_pause(&self) {
        if let Some(p) = self.pause.lock().unwrap_or_else(|e| e.into_inner()).take() {
            p.finish_and_clear();
            self.multi.remove(&p);
        }
    }

    /// A line above the bars (scrubbed); a closed stderr is ignored.
    fn println(&self, line: &str) {
        let _ = self.multi.println(crate::redact::scrub(line));
    }
}

impl Reporter for Bar {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::RunStarted { command, todo, .. } => {
                self.bar.set_prefix(format!("{}{command}", self.label));
                self.bar.set_length(*todo as u64);
                if let Some(line) = super::notice(event) {
                    self.println(&format!("{}{line}", self.label));
                }
                self.update_msg();
                if *todo > 0 {
                    self.multi.add(self.bar.clone());
                }
            }
            Event::SchemaSucceeded { .. } => self.bar.inc(1),
            Event::SchemaFailed {
                tenant, failure, ..
            } => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(line) = self.causes.line(tenant, failure) {
                    self.println(&format!("{}{line}", self.label));
                }
                self.update_msg();
                self.bar.inc(1);
            }
            Event::SchemaDropped { tenant } => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                self.println(&format!(
                    "{}skip {tenant}: dropped while the run was going on",
                    self.label
                ));
                self.update_msg();
                self.bar.inc(1);
            }
            Event::Copying { table, rows, bytes } => {
                let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
                let bar = copy.get_or_insert_with(|| {
                    let p = self.multi.add(ProgressBar::new_spinner());
                    p.set_prefix(self.label.clone());
                    p.enable_steady_tick(std::time::Duration::from_millis(200));
                    p
                });
                bar.set_message(super::copy_line(table, *rows, *bytes));
            }
            Event::Rows { .. } => {}
            Event::RunFinished => {
                if let Some(p) = self.copy.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    p.finish_and_clear();
                    self.multi.remove(&p);
                }
                self.end_pause();
                self.bar.finish_and_clear();
                self.multi.remove(&self.bar);
            }
            Event::Pausing { .. } => {
                let mut pause = self.pause.lock().unwrap_or_else(|e| e.into_inner());
                let bar = pause.get_or_insert_with(|| {
                    let p = self.multi.add(ProgressBar::new_spinner());
                    p.set_prefix(self.label.clone());
                    p
                });
                if let Some(line) = super::notice(event) {
                    bar.set_message(line);
                    bar.tick();
                }
            }
            Event::SchemaStarted { .. }
            | Event::Retrying { .. }
            | Event::WaveGate { .. }
            | Event::RunEnded { .. } => {}
            other @ (Event::WaveStarted { .. }
            | Event::Interrupting { .. }
            | Event::Waiting { .. }
            | Event::Resuming { .. }
            | Event::Info { .. }
            | Event::Warning { .. }
            | Event::Slow { .. }) => {
                if matches!(other, Event::WaveStarted { .. }) {
                    self.end_pause();
                }
                if matches!(other, Event::Slow { .. }) {
                    // The mark on the bar: how many are past --slow-after (the line says which).
                    self.slow.fetch_add(1, Ordering::Relaxed);
                    self.update_msg();
                }
                if let Some(line) = super::notice(other) {
                    self.println(&format!("{}{line}", self.label));
                }
            }
        }
    }
}
