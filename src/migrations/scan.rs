//! One SQL scanner for every check on migration files: the file cut into top-level
//! statements, each with its line and its significant tokens. Comments, strings, quoted
//! identifiers, `E''` strings and dollar quotes are understood by sqlparser's PostgreSQL
//! tokenizer; this module only adds what PostgreSQL (and psql) do on top of tokens: a `;`
//! inside parentheses or inside a `BEGIN ATOMIC … END` function body does not end a
//! statement. A dollar-quoted function body is one token; [`Statement::bodies`] scans it on
//! request.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// One top-level statement.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The line of its first token (1-based, in the scanned text).
    pub line: usize,
    /// Its significant tokens (no whitespace, no comments) with their lines.
    pub tokens: Vec<(Token, usize)>,
}

/// Text that cannot be scanned (an unterminated string, comment or dollar quote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub line: usize,
    pub message: String,
}

/// The statements of `sql`, in order.
pub fn statements(sql: &str) -> Result<Vec<Statement>, ScanError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| ScanError {
            line: e.location.line as usize,
            message: e.message,
        })?;
    let mut out = Vec::new();
    let mut current: Vec<(Token, usize)> = Vec::new();
    let mut parens = 0i32;
    let mut begin_depth = 0i32;
    for t in tokens {
        let line = t.span.start.line as usize;
        match &t.token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::LParen => parens += 1,
            Token::RParen => parens -= 1,
            Token::SemiColon if parens <= 0 && begin_depth <= 0 => {
                if !current.is_empty() {
                    out.push(Statement {
                        line: current[0].1,
                        tokens: std::mem::take(&mut current),
                    });
                }
                parens = 0;
                continue;
            }
            Token::Word(w) if w.quote_style.is_none() && is_routine(&current) => {
                // psql's rule for SQL-standard function bodies: BEGIN opens a block, CASE
                // opens one inside it, END closes one.
                match w.value.to_ascii_uppercase().as_str() {
                    "BEGIN" => begin_depth += 1,
                    "CASE" if begin_depth > 0 => begin_depth += 1,
                    "END" if begin_depth > 0 => begin_depth -= 1,
                    _ => {}
                }
            }
            _ => {}
        }
        current.push((t.token, line));
    }
    if !current.is_empty() {
        out.push(Statement {
            line: current[0].1,
            tokens: current,
        });
    }
    Ok(out)
}

/// Whether the statement so far is `CREATE [OR REPLACE] FUNCTION|PROCEDURE …`.
fn is_routine(tokens: &[(Token, usize)]) -> bool {
    let words: Vec<String> = tokens
        .iter()
        .take(4)
        .filter_map(|(t, _)| match t {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        })
        .collect();
    words.first().map(String::as_str) == Some("CREATE")
        && words.iter().any(|w| w == "FUNCTION" || w == "PROCEDURE")
}

impl Statement {
    /// The unquoted word at `i` (among all tokens), uppercased.
    pub fn word(&self, i: usize) -> Option<String> {
        match self.tokens.get(i) {
            Some((Token::Word(w), _)) if w.quote_style.is_none() => {
                Some(w.value.to_ascii_uppercase())
            }
            _ => None,
        }
    }

    /// Whether the statement begins with these words (case-insensitive).
    pub fn starts_with(&self, words: &[&str]) -> bool {
        words
            .iter()
            .enumerate()
            .all(|(i, w)| self.word(i).as_deref() == Some(*w))
    }

    /// The first words as written in a message: `CREATE EXTENSION`.
    pub fn head(&self, n: usize) -> String {
        (0..n)
            .map_while(|i| self.word(i))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every `qualifier.name` in the statement: (qualifier as PostgreSQL sees it, line).
    /// Unquoted names fold to lower case; a qualifier followed by two dots' worth of names
    /// (`db.schema.table`) yields its middle part too.
    pub fn qualifiers(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for win in self.tokens.windows(3) {
            if let [(Token::Word(q), line), (Token::Period, _), (Token::Word(_), _)] = win {
                let name = match q.quote_style {
                    Some(_) => q.value.clone(),
                    None => q.value.to_ascii_lowercase(),
                };
                out.push((name, *line));
            }
        }
        out
    }

    /// For DDL (`CREATE`/`ALTER`/`DROP`/`TRUNCATE`/`COMMENT`), the qualifier of the object it
    /// acts on: the first qualified name before the statement's body begins (a parenthesis,
    /// or `AS`, `REFERENCES`, `EXECUTE`, `FROM`, `USING`). `CREATE INDEX i ON public.t (x)`
    /// acts on `public`; `CREATE TABLE t (p int REFERENCES public.plans)` does not.
    pub fn ddl_target_qualifier(&self) -> Option<(String, usize)> {
        let verb = self.word(0)?;
        if !matches!(
            verb.as_str(),
            "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "COMMENT"
        ) {
            return None;
        }
        let end = self
            .tokens
            .iter()
            .enumerate()
            .position(|(i, (t, _))| {
                matches!(t, Token::LParen)
                    || matches!(
                        self.word(i).as_deref(),
                        Some("AS" | "REFERENCES" | "EXECUTE" | "FROM" | "USING")
                    )
            })
            .unwrap_or(self.tokens.len());
        let head = Statement {
            line: self.line,
            tokens: self.tokens[..end].to_vec(),
        };
        head.qualifiers().into_iter().next()
    }

    /// The statements of every dollar-quoted body in this statement (function bodies, DO
    /// blocks), with lines counted in the file. Bodies that are not SQL (or do not scan)
    /// are left out.
    pub fn bodies(&self) -> Vec<Statement> {
        let mut out = Vec::new();
        for (t, line) in &self.tokens {
            if let Token::DollarQuotedString(d) = t {
                if let Ok(found) = statements(&d.value) {
                    out.extend(found.into_iter().map(|mut s| {
                        s.line += line - 1;
                        for (_, l) in &mut s.tokens {
                            *l += line - 1;
                        }
                        s
                    }));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(sql: &str) -> Vec<(String, usize)> {
        statements(sql)
            .unwrap()
            .iter()
            .map(|s| (s.head(2), s.line))
            .collect()
    }

    #[test]
    fn splits_where_postgresql_does() {
        let sql = "-- COMMIT; in a comment\nCREATE TABLE a (x text DEFAULT ';');\n/* COMMIT; /* nested */ */\n\
                   CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $body$ BEGIN COMMIT; END $body$;\n\
                   INSERT INTO a VALUES (E'it\\'s; fine'), ($$;$$);\n\
                   CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO a VALUES ('1'); SELECT CASE WHEN true THEN 1 END; END;\n\
                   COMMIT";
        assert_eq!(
            heads(sql),
            [
                ("CREATE TABLE".to_string(), 2),
                ("CREATE FUNCTION".to_string(), 4),
                ("INSERT INTO".to_string(), 5),
                ("CREATE PROCEDURE".to_string(), 6),
                ("COMMIT".to_string(), 7),
            ]
        );
    }

    #[test]
    fn qualifiers_and_bodies() {
        let s = statements(
            "INSERT INTO \"Public\".t SELECT x.a FROM public.u x;\nCREATE FUNCTION f() RETURNS int AS $$\nSELECT 1 FROM tenantctl.runs\n$$ LANGUAGE sql;",
        )
        .unwrap();
        let q: Vec<String> = s[0].qualifiers().into_iter().map(|(q, _)| q).collect();
        assert_eq!(q, ["Public", "x", "public"]);
        let body = s[1].bodies();
        assert_eq!(body[0].qualifiers(), [("tenantctl".to_string(), 3)]);
    }

    #[test]
    fn unterminated_text_is_an_error_with_its_line() {
        let e = statements("SELECT 1;\nSELECT 'oops;\n").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert!(statements("SELECT $x$ never closed").is_err());
    }
}
