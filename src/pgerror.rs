//! PostgreSQL's own words for an error, the way every message of tenantctl quotes them.

use crate::redact;

/// PostgreSQL's own words for an error: `ERROR: message (SQLSTATE 42P01); DETAIL: …; HINT: …`,
/// or the driver's message for connection-level errors. Passwords are scrubbed.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                s.push_str(&format!("; DETAIL: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; HINT: {h}"));
            }
            s
        }
        None => {
            // The driver's Display is terse ("error connecting to server"); add the cause.
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(cause) = src {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s.push_str(&format!(": {c}"));
                }
                src = cause.source();
            }
            s
        }
    };
    redact::scrub(&text)
}
