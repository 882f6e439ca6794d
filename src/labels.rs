//! Tenant labels (`tier=enterprise`) and selectors over them, in the syntax platform engineers
//! know from Kubernetes: `tier=free`, `tier!=free`, `region in (eu,us)`, `region notin (apac)`,
//! `canary` (has the key), `!canary`; a comma means "and".

use std::collections::BTreeMap;
use std::fmt;

/// A tenant's labels, by key.
pub type Labels = BTreeMap<String, String>;

/// Keys and values: lowercase letters, digits, `_`, `-`, `.`; at most this long.
pub const MAX_LEN: usize = 63;

fn valid_word(s: &str) -> bool {
    s.len() <= MAX_LEN
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

const RULE: &str = "keys and values are lowercase letters, digits, `_`, `-` and `.`, at most 63 characters; keys are not empty";

/// `key=value`, checked.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!("label {s:?} is not key=value"));
    };
    if k.is_empty() || !valid_word(k) || !valid_word(v) {
        return Err(format!("label {s:?} is not allowed: {RULE}"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// One change of `tenant label`: `key=value` sets, `key-` removes (as kubectl does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Set(String, String),
    Remove(String),
}

impl Change {
    /// None when `s` is not a change (then it is a tenant id).
    pub fn parse(s: &str) -> Option<Result<Change, String>> {
        if s.contains('=') {
            return Some(parse_label(s).map(|(k, v)| Change::Set(k, v)));
        }
        let key = s.strip_suffix('-')?;
        Some(match !key.is_empty() && valid_word(key) {
            true => Ok(Change::Remove(key.to_string())),
            false => Err(format!("label key {key:?} is not allowed: {RULE}")),
        })
    }
}

/// What one requirement asks of a tenant's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    Missing,
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
}

/// A label selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    reqs: Vec<(String, Op)>,
}

/// A selector that cannot be read: where (0-based character position) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position + 1, self.message)
    }
}

struct Reader<'a> {
    chars: Vec<char>,
    pos: usize,
    text: &'a str,
}

impl Reader<'_> {
    fn skip_spaces(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError {
            position: self.pos.min(self.chars.len()),
            message: message.into(),
        })
    }

    /// A key or value (possibly empty).
    fn word(&mut self) -> String {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_spaces();
        let at = self.pos;
        let key = self.word();
        if key.is_empty() {
            return self.err(match self.peek() {
                Some(c) => format!("expected a label key, found {c:?}"),
                None => "expected a label key, found the end".to_string(),
            });
        }
        if !valid_word(&key) {
            self.pos = at;
            return self.err(format!("label key {key:?} is not allowed: {RULE}"));
        }
        Ok(key)
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        self.skip_spaces();
        let at = self.pos;
        let value = self.word();
        if !valid_word(&value) {
            self.pos = at;
            return self.err(format!("label value {value:?} is not allowed: {RULE}"));
        }
        Ok(value)
    }

    /// `(a, b, c)`.
    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.skip_spaces();
        if self.peek() != Some('(') {
            return self.err("expected `(` and a list of values, e.g. region in (eu,us)");
        }
        self.pos += 1;
        let mut values = Vec::new();
        loop {
            values.push(self.value()?);
            self.skip_spaces();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    return Ok(values);
                }
                Some(c) => return self.err(format!("expected `,` or `)`, found {c:?}")),
                None => return self.err("the list of values is not closed with `)`"),
            }
        }
    }

    fn requirement(&mut self) -> Result<(String, Op), SelectorError> {
        self.skip_spaces();
        if self.peek() == Some('!') {
            self.pos += 1;
            return Ok((self.key()?, Op::Missing));
        }
        let key = self.key()?;
        self.skip_spaces();
        let rest: String = self.chars[self.pos..].iter().collect();
        if rest.starts_with("!=") {
            self.pos += 2;
            return Ok((key, Op::Ne(self.value()?)));
        }
        if rest.starts_with("==") {
            self.pos += 2;
            return Ok((key, Op::Eq(self.value()?)));
        }
        if rest.starts_with('=') {
            self.pos += 1;
            return Ok((key, Op::Eq(self.value()?)));
        }
        let at = self.pos;
        let word = self.word();
        match word.as_str() {
            "in" => Ok((key, Op::In(self.set()?))),
            "notin" => Ok((key, Op::NotIn(self.set()?))),
            "" => Ok((key, Op::Exists)),
            other => {
                self.pos = at;
                self.err(format!(
                    "expected `=`, `!=`, `in`, `notin`, `,` or the end after the key {key:?}, found {other:?}"
                ))
            }
        }
    }
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut r = Reader {
            chars: text.chars().collect(),
            pos: 0,
            text,
        };
        let mut reqs = Vec::new();
        loop {
            reqs.push(r.requirement()?);
            r.skip_spaces();
            match r.peek() {
                Some(',') => r.pos += 1,
                None => break,
                Some(c) => return r.err(format!("expected `,` or the end, found {c:?}")),
            }
        }
        Ok(Selector {
            text: r.text.to_string(),
            reqs,
        })
    }

    /// Whether a tenant with these labels is selected. A tenant without the key matches
    /// `key!=v` and `key notin (…)`, as in Kubernetes.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|(key, op)| {
            let value = labels.get(key);
            match op {
                Op::Exists => value.is_some(),
                Op::Missing => value.is_none(),
                Op::Eq(v) => value == Some(v),
                Op::Ne(v) => value != Some(v),
                Op::In(vs) => value.is_some_and(|x| vs.contains(x)),
                Op::NotIn(vs) => !value.is_some_and(|x| vs.contains(x)),
            }
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `tier=free,region=eu`, for text output (`-` when there are none).
pub fn show(labels: &Labels) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator() {
        let eu_free = labels(&[("tier", "free"), ("region", "eu"), ("canary", "true")]);
        let us_ent = labels(&[("tier", "enterprise"), ("region", "us")]);
        let none = Labels::new();
        let sel = |s: &str| Selector::parse(s).unwrap();
        let m = |s: &str| {
            [&eu_free, &us_ent, &none]
                .iter()
                .map(|l| sel(s).matches(l))
                .collect::<Vec<_>>()
        };
        assert_eq!(m("tier=free"), [true, false, false]);
        assert_eq!(m("tier==free"), [true, false, false]);
        assert_eq!(m("tier!=free"), [false, true, true]);
        assert_eq!(m("region in (eu, us)"), [true, true, false]);
        assert_eq!(m("region notin (apac,us)"), [true, false, true]);
        assert_eq!(m("canary"), [true, false, false]);
        assert_eq!(m("!canary"), [false, true, true]);
        assert_eq!(m("tier!=free,region"), [false, true, false]);
        assert_eq!(m(" tier = free , !nope "), [true, false, false]);
    }

    #[test]
    fn bad_selectors_name_the_position() {
        let e = |s: &str| Selector::parse(s).unwrap_err();
        assert_eq!(e("tier=free,").position, 10);
        assert_eq!(e("region in eu").position, 10);
        assert_eq!(e("region in (eu").position, 13);
        assert_eq!(e("tier=Free").position, 5);
        assert!(e("tier=Free").message.contains("\"Free\" is not allowed"));
        assert_eq!(e("tier ~ x").position, 5);
        assert_eq!(e("").position, 0);
        assert_eq!(e("region likes (eu)").position, 7);
        assert_eq!(e("a=b c").position, 4);
    }

    #[test]
    fn labels_and_changes() {
        assert_eq!(parse_label("tier=free"), Ok(("tier".into(), "free".into())));
        assert!(parse_label("Tier=free").is_err());
        assert!(parse_label("tier").is_err());
        assert!(parse_label(&format!("k={}", "a".repeat(64))).is_err());
        assert!(parse_label("=x").is_err());
        assert_eq!(Change::parse("acme"), None);
        assert_eq!(
            Change::parse("tier-"),
            Some(Ok(Change::Remove("tier".into())))
        );
        assert!(Change::parse("Tier-").unwrap().is_err());
        assert_eq!(
            Change::parse("a.b=c_d"),
            Some(Ok(Change::Set("a.b".into(), "c_d".into())))
        );
    }
}
