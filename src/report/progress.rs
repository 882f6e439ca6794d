//! The terminal reporter: an indicatif bar on stderr with done/failed counts and ETA.
//! Failures print above the bar as they happen.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{failure_line, Reporter};
use crate::engine::events::Event;

pub struct Bar {
    bar: ProgressBar,
    /// `[cluster] ` when the config names clusters, else empty.
    label: String,
    ok: AtomicUsize,
    failed: AtomicUsize,
}

impl Bar {
    /// A bar drawn under `multi` (which draws on stderr).
    pub fn new(label: String, multi: &MultiProgress) -> Bar {
        let bar = multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} {msg} ETA {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        Bar {
            bar,
            label,
            ok: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        }
    }

    fn update_msg(&self) {
        self.bar.set_message(format!(
            "ok {} failed {}",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        ));
    }
}

impl Reporter for Bar {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::RunStarted { command, todo, .. } => {
                self.bar.set_prefix(format!("{}{command}", self.label));
                self.bar.set_length(*todo as u64);
                if let Some(line) = super::notice(event) {
                    self.bar.println(format!("{}{line}", self.label));
                }
                self.update_msg();
            }
            Event::SchemaSucceeded { .. } => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.bar.inc(1);
                self.update_msg();
            }
            Event::SchemaFailed { tenant, failure } => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.bar.println(format!(
                    "{}FAIL {}",
                    self.label,
                    failure_line(tenant, failure)
                ));
                self.bar.inc(1);
                self.update_msg();
            }
            Event::SchemaDropped { tenant } => {
                self.bar.println(format!(
                    "{}skip {tenant}: dropped while the run was going on",
                    self.label
                ));
                self.bar.inc(1);
            }
            Event::RunFinished => self.bar.finish_and_clear(),
            other @ (Event::Interrupting { .. }
            | Event::Waiting { .. }
            | Event::Resuming { .. }
            | Event::Warning { .. }) => {
                if let Some(line) = super::notice(other) {
                    self.bar.println(format!("{}{line}", self.label));
                }
            }
        }
    }
}
