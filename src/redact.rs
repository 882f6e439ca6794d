//! The last line of defence for secrets. Passwords are kept out of messages by construction
//! (connection strings are shown from their parts, see `conninfo`), and every password found
//! is registered here; everything tenantctl prints (errors, progress, JSON, panics, the audit
//! trail) passes through [`scrub`], so even an error text produced by a driver cannot leak one.
//!
//! A registered secret is replaced where it stands as a token of its own, not where it is
//! part of a longer word: a password `ss` must not turn "password" into "pa***word", nor a
//! password `tenant` turn "tenantctl" into "***ctl" (which would reveal it).

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

/// Replaces every registered secret in `text` with `***`, where it is not part of a longer
/// word.
pub fn scrub(text: &str) -> String {
    let list = secrets().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in list.iter() {
        if out.contains(secret.as_str()) {
            out = replace_tokens(&out, secret);
        }
    }
    out
}

/// `text` with each occurrence of `secret` replaced by `***`, unless the occurrence is glued
/// to a letter or digit on a side where the secret itself begins or ends with one.
fn replace_tokens(text: &str, secret: &str) -> String {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let starts_word = secret.chars().next().is_some_and(word);
    let ends_word = secret.chars().last().is_some_and(word);
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (i, _) in text.match_indices(secret) {
        if i < last {
            continue;
        }
        let before = text[..i].chars().last();
        let after = text[i + secret.len()..].chars().next();
        let glued =
            (starts_word && before.is_some_and(word)) || (ends_word && after.is_some_and(word));
        if glued {
            continue;
        }
        out.push_str(&text[last..i]);
        out.push_str("***");
        last = i + secret.len();
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_secrets_standing_alone_but_not_inside_words() {
        assert_eq!(
            replace_tokens("auth failed for s@cr3t-pw and s@cr3t-pw.", "s@cr3t-pw"),
            "auth failed for *** and ***."
        );
        assert_eq!(
            replace_tokens("password authentication failed: ss", "ss"),
            "password authentication failed: ***"
        );
        assert_eq!(
            replace_tokens("control schema tenantctl; user tenant", "tenant"),
            "control schema tenantctl; user ***"
        );
        assert_eq!(
            replace_tokens("postgres://u:p@ss:w/rd%@h/db", "p@ss:w/rd%"),
            "postgres://u:***@h/db"
        );
        assert_eq!(replace_tokens("xZx9${Qw7", "Zx9${Qw7"), "xZx9${Qw7");
        assert_eq!(replace_tokens("=Zx9${Qw7 ", "Zx9${Qw7"), "=*** ");
    }
}
