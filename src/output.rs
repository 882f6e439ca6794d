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
