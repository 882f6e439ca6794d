//! Writing what tenantctl prints. A closed stdout or stderr (`tenantctl status --json | head`)
//! must never crash the command: the write fails, the command ends as it would have, and
//! nothing panics. Everything printed passes through the password scrubber.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when stdout is the event stream (`--events -`): the command's text goes to stderr, so
/// stdout is NDJSON and nothing else.
static STDOUT_IS_THE_STREAM: AtomicBool = AtomicBool::new(false);

/// From now on, [`stdout`] writes to stderr: stdout belongs to the event stream.
pub fn give_stdout_to_the_stream() {
    STDOUT_IS_THE_STREAM.store(true, Ordering::Relaxed);
}

/// Writes `text` to stdout as it is (scrubbed); a closed pipe is ignored.
pub fn stdout(text: &str) {
    let text = crate::redact::scrub(text);
    if STDOUT_IS_THE_STREAM.load(Ordering::Relaxed) {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Writes a line to stderr (scrubbed); a closed stderr is ignored.
pub fn stderr_line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", crate::redact::scrub(text));
}

/// Stdout written piece by piece as output is produced (a listing streamed from the
/// database), buffered, each piece scrubbed; once the reader has gone (a closed pipe), every
/// write is skipped and [`Out::closed`] tells the writer to stop producing.
pub struct Out {
    out: std::io::BufWriter<Box<dyn std::io::Write + Send>>,
    closed: bool,
}

impl Out {
    /// On stdout (on stderr when stdout is the event stream).
    pub fn new() -> Out {
        let to: Box<dyn std::io::Write + Send> = if STDOUT_IS_THE_STREAM.load(Ordering::Relaxed) {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        Out {
            out: std::io::BufWriter::with_capacity(1 << 16, to),
            closed: false,
        }
    }

    pub fn write(&mut self, text: &str) {
        if !self.closed
            && self
                .out
                .write_all(crate::redact::scrub(text).as_bytes())
                .is_err()
        {
            self.closed = true;
        }
    }

    /// Sends what is buffered (output streamed for a reader that follows it live).
    pub fn flush(&mut self) {
        if !self.closed && self.out.flush().is_err() {
            self.closed = true;
        }
    }

    pub fn closed(&self) -> bool {
        self.closed
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
