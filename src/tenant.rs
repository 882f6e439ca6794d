//! Tenant identifiers: the one place that decides which ids are acceptable, how an id
//! becomes a schema name, and how identifiers are quoted for SQL.

use std::fmt;

/// PostgreSQL silently truncates identifiers longer than this many bytes (NAMEDATALEN - 1).
pub(crate) const MAX_IDENT_BYTES: usize = 63;

/// The name a schema is put out of the way under: `<schema>__<tag>_<UTC yyyymmddhhmmss>`
/// (`tenant drop --archive`: `arch`; the source of a `tenant move`: `moved`), the schema's
/// name cut to fit 63 bytes, the stamp kept. Tenant ids cannot contain `__`, so such a name
/// never collides with a live tenant's schema.
pub fn aside_name(schema: &str, tag: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let suffix = format!(
        "__{tag}_{:04}{:02}{:02}{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let keep = MAX_IDENT_BYTES - suffix.len();
    format!("{}{suffix}", &schema[..schema.len().min(keep)])
}

/// Why an id was refused. Every variant names the rule, so the message teaches the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("tenant id is empty; ids are lowercase letters, digits and underscores, starting with a letter")]
    Empty,
    #[error("tenant id {0:?} is invalid: it must start with a lowercase letter (a-z)")]
    BadStart(String),
    #[error("tenant id {0:?} is invalid: only lowercase letters a-z, digits 0-9 and underscore are allowed (found {1:?})")]
    BadChar(String, char),
    #[error("tenant id {id:?} is too long: its schema name {schema:?} is {len} bytes, PostgreSQL allows at most 63 (would be silently truncated)")]
    TooLong {
        id: String,
        schema: String,
        len: usize,
    },
    #[error("tenant id {0:?} is invalid: a double underscore is reserved for tenantctl's own names (archived and pooled schemas); use single underscores")]
    DoubleUnderscore(String),
    #[error("tenant id {id:?} is reserved: its schema name {schema:?} {why}")]
    Reserved {
        id: String,
        schema: String,
        why: &'static str,
    },
}

/// Checks the shape shared by tenant ids, schema prefixes and the control schema:
/// ASCII lowercase letters, digits and underscores. Returns the offending character.
fn first_bad_char(s: &str) -> Option<char> {
    s.chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
}

/// Why a schema name is reserved, if it is.
pub(crate) fn reserved_reason(schema: &str, control_schema: &str) -> Option<&'static str> {
    if schema == "public" {
        Some("is PostgreSQL's default schema")
    } else if schema == "information_schema" {
        Some("is PostgreSQL's information schema")
    } else if schema.starts_with("pg_") {
        Some("starts with pg_, which PostgreSQL reserves for system schemas")
    } else if schema == control_schema {
        Some("is tenantctl's control schema")
    } else {
        None
    }
}

/// A validated tenant id together with its schema name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant {
    id: String,
    schema: String,
}

impl Tenant {
    /// Validates `id` and derives its schema name `prefix + id`.
    /// `prefix` and `control_schema` must already be validated (see config).
    pub fn parse(id: &str, prefix: &str, control_schema: &str) -> Result<Tenant, IdError> {
        let Some(first) = id.chars().next() else {
            return Err(IdError::Empty);
        };
        if let Some(c) = first_bad_char(id) {
            return Err(IdError::BadChar(id.to_string(), c));
        }
        if !first.is_ascii_lowercase() {
            return Err(IdError::BadStart(id.to_string()));
        }
        if id.contains("__") {
            return Err(IdError::DoubleUnderscore(id.to_string()));
        }
        let schema = format!("{prefix}{id}");
        if schema.len() > MAX_IDENT_BYTES {
            return Err(IdError::TooLong {
                id: id.to_string(),
                len: schema.len(),
                schema,
            });
        }
        if let Some(why) = reserved_reason(&schema, control_schema) {
            return Err(IdError::Reserved {
                id: id.to_string(),
                schema,
                why,
            });
        }
        Ok(Tenant {
            id: id.to_string(),
            schema,
        })
    }

    /// Rebuilds a tenant from the registry (already validated when it was created).
    pub(crate) fn from_registry(id: String, schema: String) -> Tenant {
        Tenant { id, schema }
    }

    /// A pooled schema (see `tenant pool`), worked on like a tenant: its id is its schema's
    /// name, which holds `__` and so can never be a tenant's.
    pub(crate) fn pooled(schema: String) -> Tenant {
        Tenant {
            id: schema.clone(),
            schema,
        }
    }

    /// Whether this is a pooled schema rather than a tenant.
    pub(crate) fn is_pooled(&self) -> bool {
        self.id.contains("__")
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The schema name quoted for SQL.
    pub fn quoted_schema(&self) -> String {
        quote_ident(&self.schema)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.is_pooled() {
            true => write!(f, "pooled schema {}", self.schema),
            false => write!(f, "tenant {} (schema {})", self.id, self.schema),
        }
    }
}

/// Validates a schema prefix (may be empty) or a control schema name (may not).
pub(crate) fn validate_schema_word(value: &str, allow_empty: bool) -> Result<(), String> {
    if value.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err("must not be empty".into())
        };
    }
    if let Some(c) = first_bad_char(value) {
        return Err(format!(
            "{value:?} contains {c:?}; use lowercase letters a-z, digits and underscore"
        ));
    }
    if !value.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        return Err(format!(
            "{value:?} must start with a lowercase letter or underscore"
        ));
    }
    if value.starts_with("pg_") {
        return Err(format!(
            "{value:?} starts with pg_, which PostgreSQL reserves"
        ));
    }
    if value.len() >= MAX_IDENT_BYTES {
        return Err(format!("{value:?} is too long (at most 62 bytes)"));
    }
    Ok(())
}

/// The tenant's role name under a role template (`{schema}` and `{id}` placeholders).
pub(crate) fn role_name(template: &str, tenant: &Tenant) -> String {
    template
        .replace("{schema}", tenant.schema())
        .replace("{id}", tenant.id())
}

/// Quotes an identifier for SQL: `"name"`, doubling any embedded quote.
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a string literal for SQL: `'text'`, doubling any embedded quote; text with a
/// backslash becomes `E'…'` with the backslashes doubled, as PostgreSQL's own
/// `quote_literal()` does, so the literal means the same whatever `standard_conforming_strings`
/// says. Used only for validated identifiers on the hot path; values go in as parameters.
pub(crate) fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aside_names_fit_an_identifier_and_keep_the_stamp() {
        let today = time::OffsetDateTime::now_utc().date();
        let day = format!(
            "{:04}{:02}{:02}",
            today.year(),
            u8::from(today.month()),
            today.day()
        );
        let short = aside_name("tenant_acme", "moved");
        assert!(
            short.starts_with(&format!("tenant_acme__moved_{day}")),
            "{short}"
        );
        let long = aside_name(&"x".repeat(63), "moved");
        assert_eq!(long.len(), 63);
        assert!(long.ends_with(&short[short.len() - 14..]), "{long}");
        let archived = aside_name("tenant_acme", "arch");
        assert!(archived.starts_with("tenant_acme__arch_"), "{archived}");
    }

    fn parse(id: &str) -> Result<Tenant, IdError> {
        Tenant::parse(id, "tenant_", "tenantctl")
    }

    #[test]
    fn accepts_plain_ids() {
        let t = parse("acme_2").unwrap();
        assert_eq!(t.schema(), "tenant_acme_2");
        assert_eq!(t.quoted_schema(), "\"tenant_acme_2\"");
    }

    #[test]
    fn refuses_hostile_ids() {
        for id in [
            "", "Acme", "1acme", "_acme", "a-b", "a b", "a;drop", "a\"b", "a'b", "a--", "a$$", "é",
            "acme\n",
        ] {
            assert!(parse(id).is_err(), "{id:?} must be refused");
        }
    }

    #[test]
    fn refuses_schema_names_over_63_bytes() {
        let ok = "a".repeat(63 - "tenant_".len());
        assert!(parse(&ok).is_ok());
        let long = format!("{ok}b");
        assert!(matches!(
            parse(&long),
            Err(IdError::TooLong { len: 64, .. })
        ));
    }

    #[test]
    fn refuses_reserved_schema_names() {
        for (id, prefix) in [
            ("public", ""),
            ("information_schema", ""),
            ("pg_toast", ""),
            ("tenantctl", ""),
        ] {
            assert!(
                matches!(
                    Tenant::parse(id, prefix, "tenantctl"),
                    Err(IdError::Reserved { .. })
                ),
                "{id:?} with prefix {prefix:?}"
            );
        }
    }

    #[test]
    fn schema_words() {
        assert!(validate_schema_word("", true).is_ok());
        assert!(validate_schema_word("", false).is_err());
        assert!(validate_schema_word("tenant_", true).is_ok());
        assert!(validate_schema_word("pg_x", true).is_err());
        assert!(validate_schema_word("Bad", true).is_err());
        assert!(validate_schema_word("9x", true).is_err());
    }

    proptest::proptest! {
        /// Whatever the input, an accepted id gives a schema name that PostgreSQL stores
        /// exactly as written: ASCII lowercase/digits/underscore (so quoting changes nothing
        /// and case folding cannot apply), at most 63 bytes (no silent truncation), never a
        /// reserved name, and distinct ids give distinct schemas.
        #[test]
        fn accepted_ids_are_safe_identifiers(
            id in proptest::prop_oneof!["\\PC{0,70}", "[a-z_][a-zA-Z0-9_]{0,70}"],
            other in "[a-z][a-z0-9_]{0,60}",
        ) {
            if let Ok(t) = parse(&id) {
                proptest::prop_assert_eq!(t.id(), id.as_str());
                proptest::prop_assert_eq!(t.schema(), format!("tenant_{id}"));
                proptest::prop_assert!(t.schema().len() <= MAX_IDENT_BYTES);
                proptest::prop_assert!(t.schema().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
                proptest::prop_assert_eq!(quote_ident(t.schema()), format!("\"{}\"", t.schema()));
                proptest::prop_assert!(reserved_reason(t.schema(), "tenantctl").is_none());
                if let Ok(o) = parse(&other) {
                    proptest::prop_assert_eq!(o.schema() == t.schema(), other == id);
                }
            }
        }

        #[test]
        fn structured_garbage_is_refused(id in "[a-z][a-z0-9_]{0,10}[^a-z0-9_][\\PC]{0,5}") {
            proptest::prop_assert!(parse(&id).is_err());
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }
}
