//! `${VAR}` and `${VAR:-default}` in config values, from the environment.

/// Why a value could not be expanded, and where (the byte offset of its `$`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    pub at: usize,
    pub kind: ExpandErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandErrorKind {
    Unterminated,
    /// `${…}` whose inside is not a variable name (with an optional `:-default`).
    NotAName(String),
    Unset(String),
    /// Set to the empty string, with no default.
    Empty(String),
}

impl std::fmt::Display for ExpandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ExpandErrorKind::Unterminated => write!(
                f,
                "unterminated ${{ at character {}; write ${{NAME}} or ${{NAME:-default}}, and a literal $ as $$",
                self.at + 1
            ),
            ExpandErrorKind::NotAName(body) => write!(
                f,
                "${{{body}}} is not a valid variable reference; write ${{NAME}} or ${{NAME:-default}}, and a literal $ as $$"
            ),
            ExpandErrorKind::Unset(name) => write!(
                f,
                "environment variable {name} is not set; export it, or give a default with ${{{name}:-value}}"
            ),
            ExpandErrorKind::Empty(name) => write!(
                f,
                "environment variable {name} is set but empty; give it a value, or a default with ${{{name}:-value}}"
            ),
        }
    }
}

/// Expands `${VAR}` and `${VAR:-default}` (the default also stands in for an empty
/// variable, as in the shell); `$$` is a literal `$`.
pub fn expand_env(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        let at = input.len() - rest.len() + pos;
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body_start) = after.strip_prefix('{') {
            let err = |kind| ExpandError { at, kind };
            let Some(end) = body_start.find('}') else {
                return Err(err(ExpandErrorKind::Unterminated));
            };
            let body = &body_start[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(err(ExpandErrorKind::NotAName(body.to_string())));
            }
            match (lookup(name), default) {
                (Some(v), _) if !v.is_empty() => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (Some(_), None) => return Err(err(ExpandErrorKind::Empty(name.to_string()))),
                (None, None) => return Err(err(ExpandErrorKind::Unset(name.to_string()))),
            }
            rest = &body_start[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables() {
        let env = |n: &str| (n == "HOST").then(|| "db1".to_string());
        assert_eq!(expand_env("a ${HOST} b", env).unwrap(), "a db1 b");
        assert_eq!(expand_env("${PORT:-5432}", env).unwrap(), "5432");
        assert_eq!(expand_env("$$5 and $x", env).unwrap(), "$5 and $x");
        assert!(expand_env("${NOPE}", env)
            .unwrap_err()
            .to_string()
            .contains("NOPE is not set"));
        let empty = |n: &str| (n == "EMPTY").then(String::new);
        assert!(expand_env("${EMPTY}", empty)
            .unwrap_err()
            .to_string()
            .contains("EMPTY is set but empty"));
        assert_eq!(expand_env("${EMPTY:-d}", empty).unwrap(), "d");
        let e = expand_env("postgres://u:Zx9${Qw7@h/db", env).unwrap_err();
        assert_eq!(e.kind, ExpandErrorKind::Unterminated);
        assert!(!e.to_string().contains("Qw7"), "{e}");
        assert_eq!(
            crate::conninfo::password_span("postgres://u:Zx9${Qw7@h/db").map(|r| r.contains(&e.at)),
            Some(true)
        );
        assert!(expand_env("${HOST", env).is_err());
        assert!(expand_env("${}", env).is_err());
    }
}
