//! Seed data for a new tenant: SQL run once in the tenant's creating transaction, after its
//! migrations, with psql-style variables that are quoted for you: `:'name'` becomes a string
//! literal, `:"name"` an identifier. Built in: `tenant_id`, `schema`, `role` (with role per
//! tenant); the rest come from `--var key=value`. Variables are found with PostgreSQL's
//! lexical rules (never inside strings, quoted identifiers, comments or dollar quotes), and
//! every one must be known before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::exit::UsageError;
use crate::tenant::{quote_ident, quote_literal};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `:'name'`
    Literal(String),
    /// `:"name"`
    Ident(String),
}

/// A seed file, read and checked.
#[derive(Debug, Clone)]
pub struct Seed {
    pub path: PathBuf,
    pieces: Vec<Piece>,
    vars: BTreeMap<String, String>,
    /// A fingerprint of the text and the variables, for the audit trail.
    pub digest: String,
}

/// The variables every tenant gets.
const BUILT_IN: [&str; 3] = ["tenant_id", "schema", "role"];

impl Seed {
    /// Reads `path` and checks that every variable it uses is known (`roles`: role per
    /// tenant is on, so `:"role"` has a value). Exit 2 otherwise, naming each.
    pub fn load(
        path: &Path,
        vars: BTreeMap<String, String>,
        roles: bool,
    ) -> Result<Seed, UsageError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UsageError(format!(
                "cannot read the seed {} ([tenants] seed): {e}; nothing was changed",
                path.display()
            ))
        })?;
        for key in vars.keys() {
            if BUILT_IN.contains(&key.as_str()) {
                return Err(UsageError(format!(
                    "--var {key}: {key} is set by tenantctl for each tenant; pick another name; nothing was changed"
                )));
            }
        }
        let pieces = split(&text);
        let mut unknown: Vec<String> = Vec::new();
        for p in &pieces {
            if let Piece::Literal(name) | Piece::Ident(name) = p {
                let known = match name.as_str() {
                    "tenant_id" | "schema" => true,
                    "role" => roles,
                    other => vars.contains_key(other),
                };
                if !known && !unknown.contains(name) {
                    unknown.push(name.clone());
                }
            }
        }
        if !unknown.is_empty() {
            let role_hint = if unknown.iter().any(|u| u == "role") && !roles {
                " (:\"role\" needs role per tenant, [tenants] role)"
            } else {
                ""
            };
            return Err(UsageError(format!(
                "the seed {} uses {} that no --var gives{role_hint}: pass --var NAME=VALUE for each; nothing was changed",
                path.display(),
                unknown
                    .iter()
                    .map(|u| format!(":{u}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let digest = crate::digest::fnv1a_hex(
            text.bytes()
                .chain(vars.iter().flat_map(|(k, v)| k.bytes().chain(v.bytes()))),
        );
        Ok(Seed {
            path: path.to_path_buf(),
            pieces,
            vars,
            digest,
        })
    }

    /// The seed as the audit trail records it: its path and fingerprint (the variables'
    /// values are on the recorded command line).
    pub fn describe(&self) -> String {
        format!("{} ({})", self.path.display(), self.digest)
    }

    /// The seed's SQL for one tenant.
    pub fn render(&self, tenant_id: &str, schema: &str, role: Option<&str>) -> String {
        let value = |name: &str| -> String {
            match name {
                "tenant_id" => tenant_id.to_string(),
                "schema" => schema.to_string(),
                "role" => role.unwrap_or_default().to_string(),
                other => self.vars.get(other).cloned().unwrap_or_default(),
            }
        };
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.clone(),
                Piece::Literal(name) => quote_literal(&value(name)),
                Piece::Ident(name) => quote_ident(&value(name)),
            })
            .collect()
    }
}

/// `--var KEY=VALUE` arguments: every bad one named at once (exit 2). A name is letters,
/// digits and underscores, as the seed spells it; the value is anything, taken as data.
pub fn parse_vars(args: &[String]) -> Result<BTreeMap<String, String>, UsageError> {
    let mut vars = BTreeMap::new();
    let mut errors = Vec::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v))
                if !k.is_empty() && k.bytes().all(|x| x.is_ascii_alphanumeric() || x == b'_') =>
            {
                if vars.insert(k.to_string(), v.to_string()).is_some() {
                    errors.push(format!("--var {k} is given more than once"));
                }
            }
            _ => errors.push(format!(
                "--var {:?}: write it as NAME=VALUE (a name of letters, digits and _; used in the seed as :'NAME' or :\"NAME\")",
                a.split_once('=').map_or(a.as_str(), |(k, _)| k)
            )),
        }
    }
    if errors.is_empty() {
        Ok(vars)
    } else {
        Err(UsageError(format!(
            "{}; nothing was changed",
            errors.join("; ")
        )))
    }
}

/// Splits SQL text at `:'name'` and `:"name"`, outside strings, quoted identifiers, comments
/// and dollar quotes.
fn split(sql: &str) -> Vec<Piece> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut text_start = 0usize;
    let mut i = 0usize;
    let skip_quoted = |mut j: usize, q: u8, backslash: bool| -> usize {
        j += 1;
        while j < b.len() {
            if backslash && b[j] == b'\\' {
                j += 2;
                continue;
            }
            if b[j] == q {
                if b.get(j + 1) == Some(&q) {
                    j += 2;
                    continue;
                }
                return j + 1;
            }
            j += 1;
        }
        b.len()
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == b'-' && next == Some(b'-') {
            i = sql[i..].find('\n').map_or(b.len(), |n| i + n);
        } else if c == b'/' && next == Some(b'*') {
            let mut depth = 0usize;
            while i < b.len() {
                if sql[i..].starts_with("/*") {
                    depth += 1;
                    i += 2;
                } else if sql[i..].starts_with("*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'\'' {
            let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E');
            i = skip_quoted(i, b'\'', escapes);
        } else if c == b'"' {
            i = skip_quoted(i, b'"', false);
        } else if c == b'$' {
            let tag_end = sql[i + 1..]
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                .map(|n| i + 1 + n);
            match tag_end {
                Some(e)
                    if b[e] == b'$' && !sql[i + 1..e].starts_with(|c: char| c.is_ascii_digit()) =>
                {
                    let delim = &sql[i..=e];
                    i = sql[e + 1..]
                        .find(delim)
                        .map_or(b.len(), |n| e + 1 + n + delim.len());
                }
                _ => i += 1,
            }
        } else if c == b':'
            && matches!(next, Some(b'\'') | Some(b'"'))
            && (i == 0 || b[i - 1] != b':')
        {
            let q = next.expect("checked");
            let name_start = i + 2;
            let end = sql[name_start..].find(q as char).map(|n| name_start + n);
            match end {
                Some(e)
                    if e > name_start
                        && sql[name_start..e]
                            .bytes()
                            .all(|x| x.is_ascii_alphanumeric() || x == b'_') =>
                {
                    out.push(Piece::Text(sql[text_start..i].to_string()));
                    let name = sql[name_start..e].to_string();
                    out.push(match q {
                        b'\'' => Piece::Literal(name),
                        _ => Piece::Ident(name),
                    });
                    i = e + 1;
                    text_start = i;
                }
                _ => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out.push(Piece::Text(sql[text_start..].to_string()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_are_name_equals_value_and_values_are_anything() {
        let vars = parse_vars(&["plan=pro".into(), "note=a=b; '$$".into()]).unwrap();
        assert_eq!(vars["plan"], "pro");
        assert_eq!(vars["note"], "a=b; '$$");
        let err = parse_vars(&[
            "=x".into(),
            "bad name=1".into(),
            "plan".into(),
            "a=1".into(),
            "a=2".into(),
        ])
        .unwrap_err()
        .0;
        assert!(err.contains("\"bad name\""), "{err}");
        assert!(err.contains("\"plan\""), "{err}");
        assert!(err.contains("--var a is given more than once"), "{err}");
    }

    #[test]
    fn variables_are_found_only_where_sql_would_read_them() {
        let sql = "INSERT INTO t VALUES (:'tenant_id', ':''not', $$ :'nope' $$, E'\\':''x');\n-- :'comment'\nGRANT SELECT ON :\"schema\".t TO :\"role\"; SELECT 1::int, :'plan';";
        let pieces = split(sql);
        let vars: Vec<&Piece> = pieces
            .iter()
            .filter(|p| !matches!(p, Piece::Text(_)))
            .collect();
        assert_eq!(
            vars,
            [
                &Piece::Literal("tenant_id".into()),
                &Piece::Ident("schema".into()),
                &Piece::Ident("role".into()),
                &Piece::Literal("plan".into())
            ]
        );
    }

    #[test]
    fn hostile_values_stay_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.sql");
        std::fs::write(&path, "INSERT INTO notes VALUES (:'note', :'tenant_id');").unwrap();
        let vars = BTreeMap::from([(
            "note".to_string(),
            "it's; $$ DROP TABLE x; $$ \\".to_string(),
        )]);
        let seed = Seed::load(&path, vars, false).unwrap();
        assert_eq!(
            seed.render("acme", "tenant_acme", None),
            "INSERT INTO notes VALUES (E'it''s; $$ DROP TABLE x; $$ \\\\', 'acme');"
        );
        // Unknown variables are named; :"role" needs roles.
        std::fs::write(&path, "SELECT :'plan', :\"role\";").unwrap();
        let e = Seed::load(&path, BTreeMap::new(), false).unwrap_err().0;
        assert!(
            e.contains(":plan, :role") && e.contains("role per tenant"),
            "{e}"
        );
    }
}
