//! Keeps passwords out of every message. Secrets are registered once, when the database URL
//! is resolved; everything tenantctl prints (errors, progress, JSON, panics) goes through
//! [`scrub`], so even an error text produced by a driver cannot leak them.

use std::sync::{Mutex, OnceLock};

fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remembers a secret so that [`scrub`] removes it from any text.
pub fn register(secret: &str) {
    if secret.is_empty() {
        return;
    }
    let mut list = secrets().lock().unwrap_or_else(|e| e.into_inner());
    if !list.iter().any(|s| s == secret) {
        list.push(secret.to_string());
        // Longest first, so a secret that contains another is replaced whole.
        list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Replaces every registered secret in `text` with `***`.
pub fn scrub(text: &str) -> String {
    let list = secrets().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in list.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// Registers the password of a connection string (URL or key=value form), both as written
/// and decoded, and returns the string with the password shown as `***`.
pub fn register_url(conn: &str) -> String {
    if let Ok(parsed) = url::Url::parse(conn) {
        if let Some(raw) = parsed.password() {
            register(raw);
            if let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8() {
                register(&decoded);
            }
        }
    }
    // Structural fallback for URLs that do not parse (a bad port, say): the password is
    // whatever sits between the first ':' and the last '@' of the authority.
    if let Some((_, rest)) = conn.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, pw)) = userinfo.split_once(':') {
                register(pw);
                if let Ok(decoded) = percent_encoding::percent_decode_str(pw).decode_utf8() {
                    register(&decoded);
                }
            }
        }
    }
    if let Ok(cfg) = conn.parse::<tokio_postgres::Config>() {
        if let Some(pw) = cfg.get_password() {
            register(&String::from_utf8_lossy(pw));
        }
    }
    // key=value form: password=secret or password='se cret'
    for (i, _) in conn.match_indices("password=") {
        let rest = &conn[i + "password=".len()..];
        let value = if let Some(stripped) = rest.strip_prefix('\'') {
            stripped.split('\'').next().unwrap_or("")
        } else {
            rest.split_whitespace().next().unwrap_or("")
        };
        register(value);
    }
    scrub(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_url_passwords_raw_and_decoded() {
        let shown = register_url("postgres://bob:s%40cr3t-pw@db.example:5432/app");
        assert_eq!(shown, "postgres://bob:***@db.example:5432/app");
        assert_eq!(
            scrub("auth failed for s@cr3t-pw and s%40cr3t-pw"),
            "auth failed for *** and ***"
        );
    }

    #[test]
    fn scrubs_key_value_passwords() {
        let shown = register_url("host=localhost password='kv secret9' user=x");
        assert!(!shown.contains("kv secret9"), "{shown}");
    }
}
