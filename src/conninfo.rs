//! Connection strings the way libpq reads them: `postgres://` URLs and `key=value` strings,
//! `PG*` environment variables for what the string leaves out, the password file
//! (`PGPASSFILE` or `~/.pgpass`), and the TLS keys tokio-postgres does not know (`sslmode`
//! with all of libpq's values, `sslrootcert`, `sslcert`, `sslkey`).
//!
//! Passwords stay out of messages by construction: a connection string is shown from its
//! parts with the password as `***` ([`ConnSpec::display`]), every password found is
//! registered with [`crate::redact`] before any error can be produced, and no error here
//! quotes the string it is about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::redact;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err("sslmode=allow is not supported; use prefer (TLS when the server offers it) or disable".into()),
            other => Err(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// `sslrootcert=<file>` (or libpq's default `~/.postgresql/root.crt` when it exists).
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
    /// No root certificates: the server's certificate is not checked.
    None,
}

/// Everything TLS needs for one connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub mode: SslMode,
    pub roots: Roots,
    /// Client certificate and key (`sslcert` / `sslkey`), for `cert` authentication.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A connection string as written, parsed; nothing from the environment yet.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// libpq keywords and their values, as written (URL parts decoded).
    params: BTreeMap<String, String>,
}

/// Keys tenantctl handles itself rather than tokio-postgres.
const OWN_KEYS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey", "passfile"];

/// Environment variables libpq reads for keys the string leaves out.
const ENV_KEYS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("dbname", "PGDATABASE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("passfile", "PGPASSFILE"),
    ("application_name", "PGAPPNAME"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
];

impl ConnSpec {
    /// Parses a `postgres://` URL or a `key=value` string. Passwords are registered for
    /// scrubbing first; errors name what is wrong, never the string.
    pub fn parse(conn: &str) -> Result<ConnSpec, String> {
        let trimmed = conn.trim();
        let params = if let Some(rest) = trimmed
            .strip_prefix("postgres://")
            .or_else(|| trimmed.strip_prefix("postgresql://"))
        {
            parse_url(rest)?
        } else if trimmed.contains('=') {
            parse_key_values(trimmed)?
        } else if trimmed.is_empty() {
            return Err("it is empty".into());
        } else {
            return Err(
                "it is neither a postgres:// URL nor key=value pairs (e.g. postgres://user:password@host:5432/dbname or host=... dbname=...)".into(),
            );
        };
        let spec = ConnSpec { params };
        if let Some(mode) = spec.params.get("sslmode") {
            SslMode::parse(mode)?;
        }
        spec.to_pg_config(&spec.params)?;
        Ok(spec)
    }

    /// The connection string as shown to people: a URL built from its parts, the password
    /// as `***`.
    pub fn display(&self) -> String {
        let p = &self.params;
        let mut out = String::from("postgres://");
        if let Some(user) = p.get("user") {
            out.push_str(&percent_encode(user));
            if p.contains_key("password") {
                out.push_str(":***");
            }
            out.push('@');
        } else if p.contains_key("password") {
            out.push_str(":***@");
        }
        let hosts: Vec<&str> = p.get("host").map_or(Vec::new(), |h| h.split(',').collect());
        let ports: Vec<&str> = p.get("port").map_or(Vec::new(), |h| h.split(',').collect());
        let shown: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = if h.starts_with('/') {
                    percent_encode(h)
                } else if h.contains(':') {
                    format!("[{h}]")
                } else {
                    h.to_string()
                };
                match ports.get(i).or(ports.first()).filter(|p| !p.is_empty()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            })
            .collect();
        out.push_str(&shown.join(","));
        if hosts.is_empty() {
            if let Some(port) = ports.first() {
                out.push_str(&format!(":{port}"));
            }
        }
        out.push('/');
        if let Some(db) = p.get("dbname") {
            out.push_str(&percent_encode(db));
        }
        let rest: Vec<String> = p
            .iter()
            .filter(|(k, _)| !["user", "password", "host", "port", "dbname"].contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        if !rest.is_empty() {
            out.push('?');
            out.push_str(&rest.join("&"));
        }
        out
    }

    /// The connection with libpq's environment variables and defaults applied, the password
    /// looked up in the password file when none is given, and TLS settled. `env` reads an
    /// environment variable; `warn` receives libpq-style warnings (a password file others can
    /// read is ignored, with a warning, as libpq does).
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        warn: &mut dyn FnMut(String),
    ) -> Result<Resolved, String> {
        let mut p = self.params.clone();
        for (key, var) in ENV_KEYS {
            if !p.contains_key(*key) {
                if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                    if *key == "password" {
                        redact::register(&v);
                    }
                    p.insert(key.to_string(), v);
                }
            }
        }
        let home = env("HOME").map(PathBuf::from);
        if !p.contains_key("host") && !p.contains_key("hostaddr") {
            let port = p.get("port").cloned().unwrap_or_else(|| "5432".into());
            p.insert("host".into(), default_host(&port));
        }
        if !p.contains_key("user") {
            p.insert(
                "user".into(),
                crate::whoami::os_user().unwrap_or_else(|| "postgres".into()),
            );
        }
        if !p.contains_key("dbname") {
            let user = p["user"].clone();
            p.insert("dbname".into(), user);
        }
        if !p.contains_key("password") {
            let file = p
                .get("passfile")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".pgpass")));
            if let Some(file) = file {
                if let Some(pw) = password_from_file(&file, &p, warn) {
                    redact::register(&pw);
                    p.insert("password".into(), pw);
                }
            }
        }
        let tls = tls_spec(&p, home.as_deref())?;
        let pg = self.to_pg_config(&p)?;
        Ok(Resolved { pg, tls })
    }

    /// tokio-postgres' config for `params`, without the keys handled here.
    fn to_pg_config(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<tokio_postgres::Config, String> {
        let mut kv = String::new();
        for (k, v) in params {
            if OWN_KEYS.contains(&k.as_str()) {
                continue;
            }
            kv.push_str(&format!(
                "{k}='{}' ",
                v.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
        // What tokio-postgres does with TLS: attempt it or not. The checks are ours.
        let mode = match params
            .get("sslmode")
            .map(|m| SslMode::parse(m))
            .transpose()?
        {
            None | Some(SslMode::Prefer) => "prefer",
            Some(SslMode::Disable) => "disable",
            Some(SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => "require",
        };
        kv.push_str(&format!("sslmode={mode}"));
        kv.parse::<tokio_postgres::Config>()
            .map_err(|e| redact::scrub(&e.to_string()))
    }
}

/// A connection ready to be made.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub pg: tokio_postgres::Config,
    pub tls: TlsSpec,
}

/// libpq's default host: its Unix socket directory when the server's socket is there,
/// else localhost.
fn default_host(port: &str) -> String {
    let port = port.split(',').next().unwrap_or("5432");
    ["/var/run/postgresql", "/tmp"]
        .iter()
        .find(|dir| Path::new(dir).join(format!(".s.PGSQL.{port}")).exists())
        .map_or_else(|| "localhost".to_string(), |d| d.to_string())
}

/// TLS settings from the (merged) parameters: sslmode (libpq's default `prefer`), the roots
/// (`sslrootcert`, else `~/.postgresql/root.crt` when it exists, as libpq does), the client
/// certificate (`sslcert`/`sslkey`, else `~/.postgresql/postgresql.{crt,key}` when both exist).
fn tls_spec(p: &BTreeMap<String, String>, home: Option<&Path>) -> Result<TlsSpec, String> {
    let mode = match p.get("sslmode") {
        Some(m) => SslMode::parse(m)?,
        None => SslMode::Prefer,
    };
    let dot = home.map(|h| h.join(".postgresql"));
    let roots = match p.get("sslrootcert").map(String::as_str) {
        Some("system") => Roots::System,
        Some(file) => Roots::File(PathBuf::from(file)),
        None => match dot.as_ref().map(|d| d.join("root.crt")) {
            Some(f) if f.is_file() => Roots::File(f),
            _ => Roots::None,
        },
    };
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots == Roots::None {
        return Err(format!(
            "sslmode={} checks the server's certificate, but no root certificate is given: set sslrootcert to the CA's certificate file (or sslrootcert=system for the operating system's trust store), or put it in ~/.postgresql/root.crt",
            mode.as_str()
        ));
    }
    let client = match (p.get("sslcert"), p.get("sslkey")) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (Some(c), None) => Some((PathBuf::from(c), PathBuf::from(c).with_extension("key"))),
        (None, Some(_)) => {
            return Err(
                "sslkey is given without sslcert; give both (the client certificate and its key)"
                    .into(),
            )
        }
        (None, None) => match &dot {
            Some(d) if d.join("postgresql.crt").is_file() && d.join("postgresql.key").is_file() => {
                Some((d.join("postgresql.crt"), d.join("postgresql.key")))
            }
            _ => None,
        },
    };
    Ok(TlsSpec {
        mode,
        roots,
        client,
    })
}

/// The password for the connection in `p` from a libpq password file, if one matches.
/// Lines are `hostname:port:database:username:password`, `*` matches anything, `\:` and
/// `\\` are escapes; the first match wins. A file others can read is ignored with a warning.
fn password_from_file(
    file: &Path,
    p: &BTreeMap<String, String>,
    warn: &mut dyn FnMut(String),
) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            warn(format!(
                "password file {} has group or world access; permissions should be u=rw (0600) or less, so it is ignored (fix: chmod 0600 {})",
                file.display(),
                file.display()
            ));
            return None;
        }
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = p
        .get("host")
        .map_or("localhost", |h| h.split(',').next().unwrap_or(""));
    // libpq matches a Unix-socket connection against "localhost".
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    let port = p
        .get("port")
        .and_then(|s| s.split(',').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("5432");
    let want = [host, port, p["dbname"].as_str(), p["user"].as_str()];
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = want.iter().zip(&fields).all(|(w, f)| f == "*" || f == w);
        if matches {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

/// Splits a password-file line at unescaped `:`, undoing `\:` and `\\`.
fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().expect("one field").push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

/// `postgres://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]` after the
/// scheme, with libpq's meaning.
fn parse_url(rest: &str) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    // The credentials end at the last '@': a raw '@' in a password then shows up as one
    // before it, and gets an error that says how to write it.
    let (userinfo, hostpath) = match main.rfind('@') {
        Some(i) => (Some(&main[..i]), &main[i + 1..]),
        None => (None, main),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if let Some(pw) = password {
            redact::register(pw);
            if let Ok(decoded) = percent_encoding::percent_decode_str(pw).decode_utf8() {
                redact::register(&decoded);
            }
            for (c, enc) in [('@', "%40"), (':', "%3A"), ('/', "%2F")] {
                if pw.contains(c) {
                    return Err(format!(
                        "the password contains a raw {c:?}, which a URL cannot hold; percent-encode it: write {c:?} as {enc} (every '@' as %40, ':' as %3A, '/' as %2F, '%' as %25), or give the password in PGPASSWORD or a password file"
                    ));
                }
            }
            params.insert("password".into(), decode(pw, "password")?);
        }
        if user.contains('/') {
            return Err("a '/' comes before the '@' that ends the user name: percent-encode '/' in the user name (%2F) or '@' in the database name (%40)".into());
        }
        if !user.is_empty() {
            params.insert("user".into(), decode(user, "user")?);
        }
    }
    let (hosts, path) = match hostpath.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (hostpath, None),
    };
    if !hosts.is_empty() {
        let mut names = Vec::new();
        let mut ports = Vec::new();
        for chunk in hosts.split(',') {
            let (host, port) = if let Some(v6) = chunk.strip_prefix('[') {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or("an IPv6 host lacks its closing ']'")?;
                (h, after.strip_prefix(':'))
            } else {
                match chunk.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (chunk, None),
                }
            };
            let port = port.unwrap_or("");
            if !port.is_empty() && port.parse::<u16>().is_err() {
                return Err(format!("the port {port:?} is not a number from 1 to 65535"));
            }
            names.push(decode(host, "host")?);
            ports.push(port.to_string());
        }
        params.insert("host".into(), names.join(","));
        if ports.iter().any(|p| !p.is_empty()) {
            params.insert("port".into(), ports.join(","));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        params.insert("dbname".into(), decode(db, "database name")?);
    }
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("the parameter {pair:?} has no value; write key=value"))?;
        let key = decode(k, "parameter name")?;
        if key == "password" {
            redact::register(v);
        }
        let value = decode(v, &key)?;
        if key == "password" {
            redact::register(&value);
        }
        params.insert(key, value);
    }
    Ok(params)
}

/// `key=value key='quoted value'` pairs, libpq's other form (`\'` and `\\` escapes).
fn parse_key_values(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!(
                "the parameter {key:?} has no value; write key=value"
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                if key == "password" {
                    redact::register(&value);
                }
                return Err(format!("the value of {key} has no closing quote"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if key == "password" {
            redact::register(&value);
        }
        params.insert(key, value);
    }
    Ok(params)
}

/// Where the password of a URL-shaped value sits (between the `:` after the user name and
/// the last `@` of the authority), so that an error about a `${` inside it can avoid
/// quoting it.
pub fn password_span(raw: &str) -> Option<std::ops::Range<usize>> {
    let scheme = raw.find("://")? + 3;
    let end_main = raw[scheme..].find('?').map_or(raw.len(), |i| scheme + i);
    let at = raw[scheme..end_main].rfind('@')? + scheme;
    let colon = raw[scheme..at].find(':')? + scheme;
    Some(colon + 1..at)
}

/// A connection string that did not parse, shown with its password hidden: the URL's
/// password span, or the value of every `password=` in the key=value form.
pub fn masked(raw: &str) -> String {
    if let Some(r) = password_span(raw) {
        return format!("{}***{}", &raw[..r.start], &raw[r.end..]);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find("password") {
        let (head, tail) = rest.split_at(i + "password".len());
        out.push_str(head);
        let after_key = tail.trim_start();
        let Some(value) = after_key.strip_prefix('=').map(str::trim_start) else {
            rest = tail;
            continue;
        };
        out.push_str("=***");
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|(_, c)| {
                    let stop = *c == '\'' && !escaped;
                    escaped = *c == '\\' && !escaped;
                    stop
                })
                .map_or(value.len(), |(i, _)| i + 2)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

fn decode(text: &str, what: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("the {what} is not valid UTF-8 once percent-decoded"))
}

fn percent_encode(text: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn urls_and_key_values_mean_the_same() {
        let a = ConnSpec::parse(
            "postgres://app:s%40c@db.example:6432/app?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        let b = ConnSpec::parse("host=db.example port=6432 user=app password='s@c' dbname=app sslmode=verify-full sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(a.params, b.params);
        assert_eq!(a.params["password"], "s@c");
        assert_eq!(
            a.display(),
            "postgres://app:***@db.example:6432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
        );
        let r = a.resolve(&env(&[]), &mut |_| {}).unwrap();
        assert_eq!(r.tls.mode, SslMode::VerifyFull);
        assert_eq!(r.tls.roots, Roots::File("/etc/ca.pem".into()));
        assert_eq!(
            r.pg.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn raw_reserved_characters_in_a_password_are_refused_without_showing_it() {
        for (url, enc) in [
            ("postgres://u:p@ss@h/db", "%40"),
            ("postgres://u:p:ss@h/db", "%3A"),
            ("postgres://u:p/ss@h/db", "%2F"),
        ] {
            let e = ConnSpec::parse(url).unwrap_err();
            assert!(
                e.contains(enc) && !e.contains("p@ss") && !e.contains("ss@"),
                "{e}"
            );
        }
    }

    #[test]
    fn environment_fills_what_the_string_leaves_out() {
        let spec = ConnSpec::parse("postgres:///app").unwrap();
        let r = spec
            .resolve(
                &env(&[
                    ("PGHOST", "pg.internal"),
                    ("PGPORT", "6543"),
                    ("PGUSER", "deploy"),
                    ("PGPASSWORD", "from-env-9"),
                    ("PGSSLMODE", "require"),
                ]),
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(r.pg.get_user(), Some("deploy"));
        assert_eq!(r.pg.get_ports(), [6543]);
        assert_eq!(r.pg.get_dbname(), Some("app"));
        assert_eq!(r.pg.get_password(), Some(&b"from-env-9"[..]));
        assert_eq!(r.tls.mode, SslMode::Require);
        // What the string says wins over the environment.
        let spec = ConnSpec::parse("postgres://own@h/app?sslmode=disable").unwrap();
        let r = spec
            .resolve(
                &env(&[("PGUSER", "x"), ("PGSSLMODE", "require")]),
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(
            (r.pg.get_user(), r.tls.mode),
            (Some("own"), SslMode::Disable)
        );
    }

    #[test]
    fn password_file_format_and_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:nope\nh:5432:app:u:first\\:part\\\\x\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let spec = ConnSpec::parse("postgres://u@h/app").unwrap();
        let vars = [("PGPASSFILE", file.to_str().unwrap())];
        let r = spec.resolve(&env(&vars), &mut |_| {}).unwrap();
        assert_eq!(r.pg.get_password(), Some(&b"first:part\\x"[..]));
        let spec = ConnSpec::parse("postgres://v@h:5433/other").unwrap();
        let r = spec.resolve(&env(&vars), &mut |_| {}).unwrap();
        assert_eq!(r.pg.get_password(), Some(&b"fallback"[..]));
        // Readable by others: ignored, with libpq's warning.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut warnings = Vec::new();
        let r = spec
            .resolve(&env(&vars), &mut |w| warnings.push(w))
            .unwrap();
        assert_eq!(r.pg.get_password(), None);
        assert!(warnings[0].contains("0600"), "{warnings:?}");
    }

    #[test]
    fn masked_strings_hide_the_password() {
        assert_eq!(
            masked("postgres://u:p@ss:w@h:x/db"),
            "postgres://u:***@h:x/db"
        );
        assert_eq!(
            masked("host=h password='a b\\' c' port=x"),
            "host=h password=*** port=x"
        );
        assert_eq!(
            masked("host=h password = s3 port=x"),
            "host=h password=*** port=x"
        );
    }

    #[test]
    fn verify_modes_need_roots_and_bad_values_are_named() {
        let spec = ConnSpec::parse("host=h user=u dbname=d sslmode=verify-ca").unwrap();
        let e = spec.resolve(&env(&[]), &mut |_| {}).unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = ConnSpec::parse("postgres://h/d?sslmode=always").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let e = ConnSpec::parse("postgres://h:99999/d").unwrap_err();
        assert!(e.contains("port"), "{e}");
        let spec =
            ConnSpec::parse("postgres://h/d?sslrootcert=system&sslmode=verify-full").unwrap();
        let r = spec.resolve(&env(&[]), &mut |_| {}).unwrap();
        assert_eq!(r.tls.roots, Roots::System);
    }
}
