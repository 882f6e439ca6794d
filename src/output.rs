//! Writing what tenantctl prints. A closed stdout or stderr (`tenantctl status --json | head`)
//! must never crash the command: the write fails, the command ends as it would have, and
//! nothing panics. Everything printed passes through the password scrubber.

use std::io::Write as _;

/// Writes `text` to stdout as it is (scrubbed); a closed pipe is ignored.
pub fn stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(crate::redact::scrub(text).as_bytes());
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
    out: std::io::BufWriter<std::io::Stdout>,
    closed: bool,
}

impl Out {
    pub fn new() -> Out {
        Out {
            out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
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
