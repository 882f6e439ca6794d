//! One SQL scanner for every check on migration files: PostgreSQL's lexical rules (comments,
//! nested `/* */`, `'…'` with `''`, `E'…'` with backslash escapes, `U&'…'`, `"…"` identifiers,
//! dollar quotes `$tag$…$tag$`, `$1` parameters), and statements cut where PostgreSQL (and
//! psql) cut them: at a `;` outside parentheses and outside a `BEGIN ATOMIC … END` body.
//!
//! Streaming by design: statements are handed to a callback one at a time, their tokens
//! borrowed from the text, so that checking a 50 MB migration holds no more than one
//! statement's tokens (a general-purpose tokenizer that materialises every token first took
//! over a gigabyte for such a file). A dollar-quoted body is one token; [`Statement::bodies`]
//! scans it on request.

/// A token that matters to the checks; everything else (operators, numbers, prefixed
/// strings) is `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok<'a> {
    /// A word: a keyword or identifier; `quoted` for `"…"` (its text undoubled).
    Word {
        text: std::borrow::Cow<'a, str>,
        quoted: bool,
    },
    Dot,
    Comma,
    LParen,
    RParen,
    /// The inside of a dollar quote (a function body, a DO block).
    Dollar(&'a str),
    /// A plain `'…'` string, its quotes undoubled.
    Str(std::borrow::Cow<'a, str>),
    /// Anything else that is not whitespace or a comment.
    Other,
}

/// One top-level statement.
#[derive(Debug, Clone)]
pub struct Statement<'a> {
    /// The line of its first token (1-based, in the scanned text).
    pub line: usize,
    /// Where it ends in the text: the byte after its `;` (or the end of the text).
    pub end: usize,
    /// Its significant tokens with their lines.
    pub tokens: Vec<(Tok<'a>, usize)>,
}

/// Text that cannot be scanned (an unterminated string, comment or dollar quote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub line: usize,
    pub message: String,
}

/// Hands each statement of `sql` to `each`, in order.
pub fn for_each_statement<'a>(
    sql: &'a str,
    mut each: impl FnMut(Statement<'a>),
) -> Result<(), ScanError> {
    let mut lexer = Lexer {
        src: sql,
        pos: 0,
        line: 1,
    };
    let mut current: Vec<(Tok<'a>, usize)> = Vec::new();
    let mut parens = 0i32;
    let mut begin_depth = 0i32;
    let mut flush = |current: &mut Vec<(Tok<'a>, usize)>, end: usize| {
        if !current.is_empty() {
            let tokens = std::mem::take(current);
            each(Statement {
                line: tokens[0].1,
                end,
                tokens,
            });
        }
    };
    while let Some((tok, line)) = lexer.next()? {
        match &tok {
            Lexed::Semi if parens <= 0 && begin_depth <= 0 => {
                flush(&mut current, lexer.pos);
                parens = 0;
                continue;
            }
            Lexed::Semi => {
                current.push((Tok::Other, line));
                continue;
            }
            Lexed::Tok(Tok::LParen) => parens += 1,
            Lexed::Tok(Tok::RParen) => parens -= 1,
            Lexed::Tok(Tok::Word {
                text,
                quoted: false,
            }) if is_routine(&current) => {
                // psql's rule for SQL-standard function bodies: BEGIN opens a block, CASE
                // opens one inside it, END closes one.
                let opens = text.eq_ignore_ascii_case("BEGIN")
                    || (text.eq_ignore_ascii_case("CASE") && begin_depth > 0);
                if opens {
                    begin_depth += 1;
                } else if text.eq_ignore_ascii_case("END") && begin_depth > 0 {
                    begin_depth -= 1;
                }
            }
            Lexed::Tok(_) => {}
        }
        if let Lexed::Tok(t) = tok {
            current.push((t, line));
        }
    }
    flush(&mut current, sql.len());
    Ok(())
}

/// `sql` cut at statement ends into pieces of about `max` bytes (a statement is never cut),
/// each with the number of lines before it: a very large file is sent a piece at a time
/// instead of being copied whole into the driver's buffers.
pub fn chunks(sql: &str, max: usize) -> Result<Vec<(usize, &str)>, ScanError> {
    if sql.len() <= max {
        return Ok(vec![(0, sql)]);
    }
    let mut out = Vec::new();
    let (mut start, mut lines_before) = (0usize, 0usize);
    for_each_statement(sql, |s| {
        if s.end - start >= max {
            out.push((lines_before, &sql[start..s.end]));
            lines_before += sql[start..s.end].matches('\n').count();
            start = s.end;
        }
    })?;
    match out.last_mut() {
        // What follows the last statement (a newline) goes with it.
        Some((_, last)) if sql[start..].trim().is_empty() => {
            let from = sql.len() - sql[start..].len() - last.len();
            *last = &sql[from..];
        }
        _ if start < sql.len() => out.push((lines_before, &sql[start..])),
        _ => {}
    }
    Ok(out)
}

/// The statements of `sql`, collected (for small texts such as function bodies and tests).
pub fn statements(sql: &str) -> Result<Vec<Statement<'_>>, ScanError> {
    let mut out = Vec::new();
    for_each_statement(sql, |s| out.push(s))?;
    Ok(out)
}

/// Whether the statement so far is `CREATE [OR REPLACE] FUNCTION|PROCEDURE …`.
fn is_routine(tokens: &[(Tok<'_>, usize)]) -> bool {
    let mut words = tokens.iter().take(4).filter_map(|(t, _)| match t {
        Tok::Word {
            text,
            quoted: false,
        } => Some(text),
        _ => None,
    });
    words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("CREATE"))
        && words.any(|w| w.eq_ignore_ascii_case("FUNCTION") || w.eq_ignore_ascii_case("PROCEDURE"))
}

enum Lexed<'a> {
    Semi,
    Tok(Tok<'a>),
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || !c.is_ascii() && !c.is_whitespace()
}

fn is_ident_char(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self, bytes: usize) {
        let taken = &self.src[self.pos..self.pos + bytes];
        self.line += taken.matches('\n').count();
        self.pos += bytes;
    }

    fn error(&self, line: usize, what: &str) -> ScanError {
        ScanError {
            line,
            message: format!("{what} that starts here never ends"),
        }
    }

    /// The next significant token and its line; None at the end.
    fn next(&mut self) -> Result<Option<(Lexed<'a>, usize)>, ScanError> {
        loop {
            let Some(c) = self.peek() else {
                return Ok(None);
            };
            let line = self.line;
            let rest = self.rest();
            if c.is_whitespace() {
                self.bump(c.len_utf8());
            } else if rest.starts_with("--") {
                let end = rest.find('\n').unwrap_or(rest.len());
                self.bump(end);
            } else if rest.starts_with("/*") {
                self.block_comment(line)?;
            } else if c == ';' {
                self.bump(1);
                return Ok(Some((Lexed::Semi, line)));
            } else if c == '\'' {
                let text = self.quoted('\'', false, line, "a string")?;
                return Ok(Some((Lexed::Tok(Tok::Str(text)), line)));
            } else if c == '"' {
                let text = self.quoted('"', false, line, "a quoted identifier")?;
                return Ok(Some((Lexed::Tok(Tok::Word { text, quoted: true }), line)));
            } else if c == '$' {
                if let Some(tok) = self.dollar(line)? {
                    return Ok(Some((Lexed::Tok(tok), line)));
                }
            } else if is_ident_start(c) {
                return self.word(line).map(Some);
            } else if c.is_ascii_digit() {
                let end = rest
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '.' || ch == '_'))
                    .unwrap_or(rest.len());
                self.bump(end);
                return Ok(Some((Lexed::Tok(Tok::Other), line)));
            } else {
                self.bump(c.len_utf8());
                let tok = match c {
                    '.' => Tok::Dot,
                    '(' => Tok::LParen,
                    ',' => Tok::Comma,
                    ')' => Tok::RParen,
                    _ => Tok::Other,
                };
                return Ok(Some((Lexed::Tok(tok), line)));
            }
        }
    }

    /// `/* … */`, nested as PostgreSQL nests them.
    fn block_comment(&mut self, line: usize) -> Result<(), ScanError> {
        let mut depth = 0usize;
        loop {
            let rest = self.rest();
            if rest.starts_with("/*") {
                depth += 1;
                self.bump(2);
            } else if rest.starts_with("*/") {
                depth -= 1;
                self.bump(2);
                if depth == 0 {
                    return Ok(());
                }
            } else if let Some(c) = rest.chars().next() {
                self.bump(c.len_utf8());
            } else {
                return Err(self.error(line, "a /* comment"));
            }
        }
    }

    /// A `'…'` string (or `"…"` identifier) starting at the quote; doubled quotes stand for
    /// one, and with `backslashes` (an `E'…'` string) a backslash escapes the next character.
    fn quoted(
        &mut self,
        quote: char,
        backslashes: bool,
        line: usize,
        what: &str,
    ) -> Result<std::borrow::Cow<'a, str>, ScanError> {
        let start = self.pos + 1;
        let bytes = self.src.as_bytes();
        let q = quote as u8;
        let mut i = start;
        let mut doubled = false;
        loop {
            match bytes.get(i) {
                None => return Err(self.error(line, what)),
                Some(b'\\') if backslashes => i += 2,
                Some(b) if *b == q => {
                    if bytes.get(i + 1) == Some(&q) {
                        doubled = true;
                        i += 2;
                    } else {
                        break;
                    }
                }
                Some(_) => i += 1,
            }
        }
        let inner = &self.src[start..i.min(self.src.len())];
        self.bump(i + 1 - self.pos);
        Ok(if doubled {
            std::borrow::Cow::Owned(inner.replace(&format!("{quote}{quote}"), &quote.to_string()))
        } else {
            std::borrow::Cow::Borrowed(inner)
        })
    }

    /// A dollar quote (`$$…$$`, `$tag$…$tag$`) or a `$1` parameter.
    fn dollar(&mut self, line: usize) -> Result<Option<Tok<'a>>, ScanError> {
        let rest = self.rest();
        let after = &rest[1..];
        let tag_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let tag_ok = after[..tag_len]
            .chars()
            .next()
            .is_none_or(|c| !c.is_ascii_digit());
        if !tag_ok || !after[tag_len..].starts_with('$') {
            // `$1`, or a lone `$`.
            let len = 1 + after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            self.bump(len);
            return Ok(Some(Tok::Other));
        }
        let delim = &rest[..tag_len + 2];
        let body_start = delim.len();
        let Some(end) = rest[body_start..].find(delim) else {
            return Err(self.error(line, "a dollar-quoted string"));
        };
        let body = &rest[body_start..body_start + end];
        self.bump(body_start + end + delim.len());
        Ok(Some(Tok::Dollar(body)))
    }

    /// A word; `E'…'`, `B'…'`, `X'…'`, `N'…'` and `U&'…'`/`U&"…"` are strings (identifiers)
    /// with a prefix.
    fn word(&mut self, line: usize) -> Result<(Lexed<'a>, usize), ScanError> {
        let rest = self.rest();
        let len = rest.find(|c: char| !is_ident_char(c)).unwrap_or(rest.len());
        let word = &rest[..len];
        let next = rest[len..].chars().next();
        if next == Some('\'') && len == 1 {
            let escapes = word.eq_ignore_ascii_case("e");
            if escapes || matches!(word, "b" | "B" | "x" | "X" | "n" | "N") {
                self.bump(1);
                self.quoted('\'', escapes, line, "a string")?;
                return Ok((Lexed::Tok(Tok::Other), line));
            }
        }
        if word.eq_ignore_ascii_case("u") && rest[len..].starts_with("&'") {
            self.bump(2);
            self.quoted('\'', false, line, "a string")?;
            return Ok((Lexed::Tok(Tok::Other), line));
        }
        if word.eq_ignore_ascii_case("u") && rest[len..].starts_with("&\"") {
            self.bump(2);
            let text = self.quoted('"', false, line, "a quoted identifier")?;
            return Ok((Lexed::Tok(Tok::Word { text, quoted: true }), line));
        }
        self.bump(len);
        Ok((
            Lexed::Tok(Tok::Word {
                text: std::borrow::Cow::Borrowed(word),
                quoted: false,
            }),
            line,
        ))
    }
}

impl<'a> Statement<'a> {
    /// The unquoted word at `i` (among all tokens), uppercased.
    pub fn word(&self, i: usize) -> Option<String> {
        match self.tokens.get(i) {
            Some((
                Tok::Word {
                    text,
                    quoted: false,
                },
                _,
            )) => Some(text.to_ascii_uppercase()),
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
    /// Unquoted names fold to lower case.
    pub fn qualifiers(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for win in self.tokens.windows(3) {
            if let [(Tok::Word { text, quoted }, line), (Tok::Dot, _), (Tok::Word { .. }, _)] = win
            {
                let name = match quoted {
                    true => text.to_string(),
                    false => text.to_lowercase(),
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
        let end = (0..self.tokens.len())
            .position(|i| {
                matches!(self.tokens[i].0, Tok::LParen)
                    || matches!(
                        self.word(i).as_deref(),
                        Some("AS" | "REFERENCES" | "EXECUTE" | "FROM" | "USING")
                    )
            })
            .unwrap_or(self.tokens.len());
        let head = Statement {
            line: self.line,
            end: self.end,
            tokens: self.tokens[..end].to_vec(),
        };
        head.qualifiers().into_iter().next()
    }

    /// The statements of every dollar-quoted body in this statement (function bodies, DO
    /// blocks), with lines counted in the file. Bodies that are not SQL (or do not scan)
    /// are left out.
    pub fn bodies(&self) -> Vec<Statement<'a>> {
        let mut out = Vec::new();
        for (t, line) in &self.tokens {
            if let Tok::Dollar(body) = t {
                if let Ok(found) = statements(body) {
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
                   INSERT INTO a VALUES (E'it\\'s; fine'), ($$;$$), (U&'d\\0061t;'), ($1);\n\
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
        // Identifiers may hold `$`; `a$b$` is not a dollar quote.
        assert_eq!(heads("SELECT a$b$ FROM t; SELECT 2").len(), 2);
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
        // Numbers are not qualified names.
        assert!(statements("SELECT 3.14, 1e5").unwrap()[0]
            .qualifiers()
            .is_empty());
    }

    #[test]
    fn large_texts_are_cut_at_statement_ends() {
        let sql = "CREATE TABLE a (x text);\nINSERT INTO a VALUES ('1;\n2');\n-- c\nINSERT INTO a VALUES ('3');\n";
        let pieces = chunks(sql, 10).unwrap();
        let joined: String = pieces.iter().map(|(_, p)| *p).collect();
        assert_eq!(joined, sql);
        // Lines before each piece (the second starts with the newline after the first).
        assert_eq!(
            pieces.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            [0, 0, 2]
        );
        assert!(pieces[1].1.ends_with("'1;\n2');"), "{pieces:?}");
        assert_eq!(chunks(sql, 1000).unwrap(), [(0, sql)]);
    }

    #[test]
    fn unterminated_text_is_an_error_with_its_line() {
        let e = statements("SELECT 1;\nSELECT 'oops;\n").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert!(statements("SELECT $x$ never closed").is_err());
        assert!(statements("/* /* */").is_err());
        assert!(statements("SELECT E'\\'").is_err());
    }
}
