//! `${VAR}` and `${VAR:-default}` in config values, from the environment.

/// Expands `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
pub fn expand_env(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body_start) = after.strip_prefix('{') {
            let Some(end) = body_start.find('}') else {
                return Err(format!(
                    "unterminated ${{ in {input:?}; write ${{NAME}} or ${{NAME:-default}}"
                ));
            };
            let body = &body_start[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "${{{body}}} is not a valid variable reference; write ${{NAME}} or ${{NAME:-default}}"
                ));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set; export it, or give a default with ${{{name}:-value}}"
                    ))
                }
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
            .contains("NOPE is not set"));
        assert!(expand_env("${HOST", env).is_err());
        assert!(expand_env("${}", env).is_err());
    }
}
