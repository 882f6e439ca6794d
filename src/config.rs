//! `tenants.toml` → validated [`Settings`]. Strict: unknown keys are errors, `${VAR}` and
//! `${VAR:-default}` are expanded from the environment, relative paths resolve from the config
//! file's folder, and every error names the file, the line and the key, and says how to fix it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::redact;
use crate::tenant::validate_schema_word;

/// Upper bound for `jobs`: beyond this a single server gains nothing and runs out of slots.
pub const MAX_JOBS: usize = 512;

/// A configuration problem. Always exit code 2: nothing was touched.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    database: RawDatabase,
    clusters: Option<BTreeMap<String, RawCluster>>,
    #[serde(default)]
    migrations: RawMigrations,
    #[serde(default)]
    tenants: RawTenants,
    #[serde(default)]
    run: RawRun,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<Spanned<String>>,
    control_schema: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    url: Spanned<String>,
    jobs: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigrations {
    dir: Option<Spanned<String>>,
    shared_dir: Option<Spanned<String>>,
    shared_schema: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenants {
    schema_prefix: Option<Spanned<String>>,
    role: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    jobs: Option<Spanned<i64>>,
    lock_timeout: Option<Spanned<String>>,
    statement_timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    retry_delay: Option<Spanned<String>>,
    grace_period: Option<Spanned<String>>,
}

/// One PostgreSQL cluster (server + database) holding a share of the tenants, with its own
/// control schema, run ledger and concurrency bound.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `default` for the single `[database]` form, else the `[clusters.<name>]` key.
    pub name: String,
    /// The connection string; contains the password.
    pub url: String,
    /// The connection string with its password replaced by `***`.
    pub display_url: String,
    pub jobs: usize,
}

/// Name of the single cluster of the `[database]` form.
pub const DEFAULT_CLUSTER: &str = "default";

/// Everything a command needs, resolved once from the CLI and the config file. The
/// connection fields describe one cluster: [`Settings::for_cluster`] gives each cluster its own.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: PathBuf,
    /// Every configured cluster, sorted by name.
    pub clusters: Vec<Cluster>,
    /// True when the config uses `[clusters.<name>]` (output then names clusters).
    pub multi_cluster: bool,
    /// The cluster these connection fields belong to.
    pub cluster: String,
    /// The connection string; contains the password. Print [`Settings::display_url`] instead.
    pub database_url: String,
    /// The connection string with its password replaced by `***`.
    pub display_url: String,
    pub control_schema: String,
    pub migrations_dir: PathBuf,
    /// Migrations applied once per cluster into `shared_schema` (before tenant migrations).
    pub shared_dir: PathBuf,
    /// Whether `shared_dir` was configured (then it must exist).
    pub shared_dir_configured: bool,
    pub shared_schema: String,
    pub schema_prefix: String,
    /// Role-per-tenant template (`{schema}` / `{id}`), off when None.
    pub role_template: Option<String>,
    pub jobs: usize,
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
    /// Extra attempts for a schema that hit lock_timeout or lost its connection.
    pub retries: u32,
    /// First delay before a retry; doubles on each further attempt.
    pub retry_delay: Duration,
    /// After SIGINT/SIGTERM, how long in-flight schemas may take before they are cancelled.
    pub grace_period: Duration,
    /// Who is recorded as running the commands (--actor, $TENANTCTL_ACTOR, or the OS user).
    pub actor: String,
}

pub const DEFAULT_CONTROL_SCHEMA: &str = "tenantctl";
pub const DEFAULT_SHARED_SCHEMA: &str = "public";
pub const DEFAULT_PREFIX: &str = "tenant_";
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 3;
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// The default concurrency. Migrations are DDL, bound by the server's CPU: measured with
/// bench/ (`--jobs-sweep`) on a 2-core server, 2 to 4 sessions are fastest and 8 is about
/// twice as slow; 4 also leaves headroom in max_connections. See README "Choosing --jobs".
pub fn default_jobs() -> usize {
    4
}

/// What the command line contributes to the settings.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub jobs: Option<usize>,
    pub actor: Option<String>,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, span: std::ops::Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn err_at(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        msg: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError(format!(
            "{}, line {}: `{key}`: {msg}",
            self.path.display(),
            self.line_of(span)
        ))
    }

    /// Expands `${VAR}` / `${VAR:-default}` in a string value.
    fn expand(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        expand_env(value.get_ref(), |name| std::env::var(name).ok())
            .map_err(|e| self.err_at(value.span(), key, e))
    }
}

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

/// Parses a human duration such as `5s`, `1m 30s` or `250ms`; `0` means "no limit".
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write e.g. \"5s\", \"250ms\" or \"2m\"")
    })
}

impl Settings {
    /// Loads and validates the config file, then applies command-line overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let text = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ConfigError(format!(
                    "config file {} not found; create it (see the commented tenants.toml in the tenantctl repository) or pass --config PATH / set TENANTCTL_CONFIG",
                    path.display()
                ))
            } else {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            }
        })?;
        let text = String::from_utf8(text).map_err(|e| {
            ConfigError(format!(
                "config file {} is not valid UTF-8 (byte {}); save it as UTF-8",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        Settings::from_str(path, &text, overrides)
    }

    pub fn from_str(
        path: &Path,
        text: &str,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            ConfigError(format!(
                "{}: {}",
                path.display(),
                redact::scrub(e.to_string().trim_end())
            ))
        })?;
        let ctx = Ctx { path, text };
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));

        let clusters = match (&raw.clusters, &raw.database.url) {
            (Some(_), Some(url)) => {
                return Err(ctx.err_at(
                    url.span(),
                    "database.url",
                    "[database] url and [clusters.<name>] tables cannot be used together; move this URL into a [clusters.<name>] table (keep [database] for control_schema only)",
                ))
            }
            (Some(_), None) if overrides.database_url.is_some() => {
                return Err(ConfigError(format!(
                    "--database-url (or TENANTCTL_DATABASE_URL) cannot be used with the [clusters.<name>] tables of {}; pick clusters with --cluster NAME instead",
                    path.display()
                )))
            }
            (Some(map), None) => {
                if map.is_empty() {
                    return Err(ConfigError(format!(
                        "{}: [clusters] names no cluster; add [clusters.<name>] tables with a url each",
                        path.display()
                    )));
                }
                let mut out: Vec<(String, String, String, Option<usize>)> =
                    Vec::with_capacity(map.len());
                for (name, c) in map {
                    check_cluster_name(name).map_err(|e| {
                        ctx.err_at(c.url.span(), &format!("clusters.{name}"), e)
                    })?;
                    let key = format!("clusters.{name}.url");
                    let url = ctx.expand(&c.url, &key)?;
                    let display_url = check_url(&url).map_err(|e| ctx.err_at(c.url.span(), &key, e))?;
                    let jobs = match &c.jobs {
                        Some(j) => Some(check_jobs(*j.get_ref()).map_err(|e| {
                            ctx.err_at(j.span(), &format!("clusters.{name}.jobs"), e)
                        })?),
                        None => None,
                    };
                    if let Some((other, ..)) = out.iter().find(|(_, u, ..)| *u == url) {
                        return Err(ctx.err_at(
                            c.url.span(),
                            &key,
                            format!("the same URL as cluster {other}; each cluster must be a database of its own"),
                        ));
                    }
                    out.push((name.clone(), url, display_url, jobs));
                }
                out
            }
            (None, _) => {
                let url = match (&overrides.database_url, &raw.database.url) {
                    (Some(url), _) => url.clone(),
                    (None, Some(url)) => ctx.expand(url, "database.url")?,
                    (None, None) => {
                        return Err(ConfigError(format!(
                            "{}: no database URL: set `url` under [database] (e.g. url = \"${{DATABASE_URL}}\"), name clusters in [clusters.<name>] tables, or pass --database-url",
                            path.display()
                        )))
                    }
                };
                let display_url = check_url(&url).map_err(|msg| {
                    match (&overrides.database_url, &raw.database.url) {
                        (None, Some(u)) => ctx.err_at(u.span(), "database.url", msg),
                        _ => ConfigError(format!("--database-url: {msg}")),
                    }
                })?;
                vec![(DEFAULT_CLUSTER.to_string(), url, display_url, None)]
            }
        };

        let control_schema = match &raw.database.control_schema {
            Some(v) => {
                let s = ctx.expand(v, "database.control_schema")?;
                validate_schema_word(&s, false)
                    .map_err(|e| ctx.err_at(v.span(), "database.control_schema", e))?;
                s
            }
            None => DEFAULT_CONTROL_SCHEMA.to_string(),
        };

        let schema_prefix = match &raw.tenants.schema_prefix {
            Some(v) => {
                let s = ctx.expand(v, "tenants.schema_prefix")?;
                validate_schema_word(&s, true)
                    .map_err(|e| ctx.err_at(v.span(), "tenants.schema_prefix", e))?;
                if !s.is_empty() && control_schema.starts_with(&s) {
                    return Err(ctx.err_at(
                        v.span(),
                        "tenants.schema_prefix",
                        format!(
                            "the control schema {control_schema:?} starts with the prefix {s:?}, so it would look like a tenant schema; choose another prefix or control_schema"
                        ),
                    ));
                }
                s
            }
            None => DEFAULT_PREFIX.to_string(),
        };
        if schema_prefix.is_empty() {
            // An empty prefix is allowed, but then any schema could be a tenant's; ids are
            // still checked against reserved names in `Tenant::parse`.
        }

        let role_template = match &raw.tenants.role {
            Some(v) => {
                let t = ctx.expand(v, "tenants.role")?;
                check_role_template(&t).map_err(|e| ctx.err_at(v.span(), "tenants.role", e))?;
                Some(t)
            }
            None => None,
        };

        // A folder, relative to the config file's folder.
        let folder =
            |v: &Option<Spanned<String>>, key: &str| -> Result<Option<PathBuf>, ConfigError> {
                let Some(v) = v else { return Ok(None) };
                let s = ctx.expand(v, key)?;
                if s.trim().is_empty() {
                    return Err(ctx.err_at(v.span(), key, "must not be empty"));
                }
                Ok(Some(base.join(s)))
            };
        let migrations_dir = folder(&raw.migrations.dir, "migrations.dir")?
            .unwrap_or_else(|| base.join("migrations"));

        let default_jobs = match (overrides.jobs, &raw.run.jobs) {
            (Some(j), _) => {
                check_jobs(j as i64).map_err(|e| ConfigError(format!("--jobs: {e}")))?
            }
            (None, Some(j)) => {
                check_jobs(*j.get_ref()).map_err(|e| ctx.err_at(j.span(), "run.jobs", e))?
            }
            (None, None) => default_jobs(),
        };
        // --jobs overrides every cluster; else a cluster's own `jobs`, else [run] jobs.
        let clusters: Vec<Cluster> = clusters
            .into_iter()
            .map(|(name, url, display_url, jobs)| Cluster {
                name,
                url,
                display_url,
                jobs: match (overrides.jobs, jobs) {
                    (None, Some(j)) => j,
                    _ => default_jobs,
                },
            })
            .collect();

        let shared_schema = match &raw.migrations.shared_schema {
            Some(v) => {
                let s = ctx.expand(v, "migrations.shared_schema")?;
                check_shared_schema(&s, &schema_prefix, &control_schema)
                    .map_err(|e| ctx.err_at(v.span(), "migrations.shared_schema", e))?;
                s
            }
            None => DEFAULT_SHARED_SCHEMA.to_string(),
        };
        let shared_dir = folder(&raw.migrations.shared_dir, "migrations.shared_dir")?
            .unwrap_or_else(|| migrations_dir.join("shared"));

        let retries = match &raw.run.retries {
            Some(r) if (0..=20).contains(r.get_ref()) => *r.get_ref() as u32,
            Some(r) => {
                return Err(ctx.err_at(
                    r.span(),
                    "run.retries",
                    format!("{} is out of range; use 0 to 20", r.get_ref()),
                ))
            }
            None => DEFAULT_RETRIES,
        };
        let duration_key = |v: &Option<Spanned<String>>,
                            key: &str,
                            default: Duration|
         -> Result<Duration, ConfigError> {
            match v {
                Some(v) => {
                    let s = ctx.expand(v, key)?;
                    parse_duration(&s).map_err(|e| ctx.err_at(v.span(), key, e))
                }
                None => Ok(default),
            }
        };
        let lock_timeout = duration_key(
            &raw.run.lock_timeout,
            "run.lock_timeout",
            DEFAULT_LOCK_TIMEOUT,
        )?;
        let statement_timeout = duration_key(
            &raw.run.statement_timeout,
            "run.statement_timeout",
            Duration::ZERO,
        )?;
        let statement_timeout = (!statement_timeout.is_zero()).then_some(statement_timeout);
        let retry_delay =
            duration_key(&raw.run.retry_delay, "run.retry_delay", DEFAULT_RETRY_DELAY)?;
        let grace_period = duration_key(
            &raw.run.grace_period,
            "run.grace_period",
            DEFAULT_GRACE_PERIOD,
        )?;

        let first = clusters[0].clone();
        Ok(Settings {
            config_path: path.to_path_buf(),
            multi_cluster: raw.clusters.is_some(),
            clusters,
            cluster: first.name,
            database_url: first.url,
            display_url: first.display_url,
            control_schema,
            migrations_dir,
            shared_dir,
            shared_dir_configured: raw.migrations.shared_dir.is_some(),
            shared_schema,
            schema_prefix,
            role_template,
            jobs: first.jobs,
            lock_timeout,
            statement_timeout,
            retries,
            retry_delay,
            grace_period,
            actor: crate::control::actor(overrides.actor.as_deref()),
        })
    }
}

/// Checks that a connection string parses; returns it with the password hidden.
fn check_url(url: &str) -> Result<String, String> {
    let display_url = redact::register_url(url);
    match url.parse::<tokio_postgres::Config>() {
        Ok(_) => Ok(display_url),
        Err(e) => Err(format!(
            "{display_url:?} is not a valid PostgreSQL connection string ({}); expected postgres://user:password@host:port/dbname",
            redact::scrub(&e.to_string())
        )),
    }
}

/// Cluster names appear in output, JSON and `--cluster`: keep them plain.
fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster name {name:?} is not allowed; use lowercase letters, digits, `_` and `-`, starting with a letter (e.g. [clusters.eu1])"
        ))
    }
}

/// The shared schema must not be a tenant's, the control schema, or a system schema.
fn check_shared_schema(s: &str, prefix: &str, control: &str) -> Result<(), String> {
    if s != "public" {
        validate_schema_word(s, false)?;
    }
    if s == "information_schema" {
        return Err(format!("{s:?} is a system schema; choose another name"));
    }
    if s == control {
        return Err(format!(
            "{s:?} is the control schema; shared tables need a schema of their own (default \"public\")"
        ));
    }
    if !prefix.is_empty() && s.starts_with(prefix) {
        return Err(format!(
            "{s:?} starts with the tenant prefix {prefix:?}, so it would look like a tenant schema; choose another name"
        ));
    }
    Ok(())
}

impl Settings {
    /// These settings pointed at one cluster.
    pub fn for_cluster(&self, cluster: &Cluster) -> Settings {
        Settings {
            cluster: cluster.name.clone(),
            database_url: cluster.url.clone(),
            display_url: cluster.display_url.clone(),
            jobs: cluster.jobs,
            ..self.clone()
        }
    }

    /// The clusters a command works on: all, or those named with `--cluster`.
    pub fn select(&self, names: &[String]) -> Result<Vec<Settings>, ConfigError> {
        if names.is_empty() {
            return Ok(self.clusters.iter().map(|c| self.for_cluster(c)).collect());
        }
        let mut out: Vec<Settings> = Vec::new();
        for name in names {
            let Some(c) = self.clusters.iter().find(|c| &c.name == name) else {
                let known: Vec<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
                return Err(ConfigError(format!(
                    "--cluster {name}: no such cluster in {} (clusters: {}); nothing was changed",
                    self.config_path.display(),
                    known.join(", ")
                )));
            };
            if !out.iter().any(|s| &s.cluster == name) {
                out.push(self.for_cluster(c));
            }
        }
        Ok(out)
    }
}

/// A role template may use `{schema}` and `{id}`; the rest must be identifier characters.
fn check_role_template(t: &str) -> Result<(), String> {
    let literal = t.replace("{schema}", "").replace("{id}", "");
    if let Some(bad) = literal
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        let hint = if bad == '{' || bad == '}' {
            format!("{t:?} has an unknown placeholder; use {{schema}} or {{id}}")
        } else {
            format!("{t:?} contains {bad:?}; use lowercase letters, digits, underscores, {{schema}} and {{id}}")
        };
        return Err(hint);
    }
    if !t.contains("{schema}") && !t.contains("{id}") {
        return Err(format!("{t:?} names one role for every tenant; include {{schema}} or {{id}}, e.g. \"{{schema}}_app\""));
    }
    if t.starts_with("pg_") || t.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("{t:?} must not start with pg_ or a digit"));
    }
    Ok(())
}

impl Settings {
    /// The tenant's role under the role-per-tenant option.
    pub fn role_for(&self, tenant: &crate::tenant::Tenant) -> Option<String> {
        self.role_template
            .as_deref()
            .map(|t| crate::tenant::role_name(t, tenant))
    }
}

fn check_jobs(j: i64) -> Result<usize, String> {
    if (1..=MAX_JOBS as i64).contains(&j) {
        Ok(j as usize)
    } else {
        Err(format!(
            "{j} is out of range; use a number from 1 to {MAX_JOBS}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_str(
            Path::new("/etc/app/tenants.toml"),
            text,
            &Overrides::default(),
        )
    }

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

    #[test]
    fn defaults_and_relative_paths() {
        let s = load("[database]\nurl = \"postgres://u@localhost/db\"\n").unwrap();
        assert_eq!(s.control_schema, "tenantctl");
        assert_eq!(s.schema_prefix, "tenant_");
        assert_eq!(s.migrations_dir, Path::new("/etc/app/migrations"));
        assert_eq!(s.jobs, default_jobs());
        assert_eq!(s.lock_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = load("[database]\nurl = \"postgres://u@h/db\"\nurll = 1\n").unwrap_err();
        assert!(e.0.contains("/etc/app/tenants.toml"), "{e}");
        assert!(e.0.contains("urll"), "{e}");
        assert!(e.0.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let e = load("[database]\nurl = \"postgres://u@h/db\"\n[run]\njobs = 0\n").unwrap_err();
        assert!(e.0.contains("line 4") && e.0.contains("run.jobs"), "{e}");
        let e = load("[database]\nurl = \"postgres://u@h/db\"\n[run]\nlock_timeout = \"soon\"\n")
            .unwrap_err();
        assert!(
            e.0.contains("run.lock_timeout") && e.0.contains("\"5s\""),
            "{e}"
        );
        let e =
            load("[database]\nurl = \"postgres://u@h/db\"\n[tenants]\nschema_prefix = \"Bad-\"\n")
                .unwrap_err();
        assert!(
            e.0.contains("tenants.schema_prefix") && e.0.contains("line 4"),
            "{e}"
        );
    }

    #[test]
    fn unset_variable_is_an_error() {
        let e = load("[database]\nurl = \"${TENANTCTL_SURELY_UNSET_VAR}\"\n").unwrap_err();
        assert!(
            e.0.contains("TENANTCTL_SURELY_UNSET_VAR is not set") && e.0.contains("database.url"),
            "{e}"
        );
    }

    #[test]
    fn bad_url_does_not_print_password() {
        let e =
            load("[database]\nurl = \"postgres://u:hunter2secret@h:notaport/db\"\n").unwrap_err();
        assert!(!e.0.contains("hunter2secret"), "{e}");
        assert!(e.0.contains("database.url"), "{e}");
    }

    #[test]
    fn clusters_resolve_with_their_own_jobs() {
        let s = load(
            "[clusters.eu2]\nurl = \"postgres://u:pw9secret@h2/db\"\njobs = 8\n[clusters.eu1]\nurl = \"postgres://u@h1/db\"\n[run]\njobs = 3\n",
        )
        .unwrap();
        assert!(s.multi_cluster);
        let names: Vec<(&str, usize)> = s
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.jobs))
            .collect();
        assert_eq!(names, [("eu1", 3), ("eu2", 8)]);
        assert!(!s.clusters[1].display_url.contains("pw9secret"));
        let eu2 = s.select(&["eu2".into()]).unwrap();
        assert_eq!((eu2.len(), eu2[0].jobs), (1, 8));
        assert_eq!(eu2[0].database_url, "postgres://u:pw9secret@h2/db");
        let e = s.select(&["eu3".into()]).unwrap_err();
        assert!(e.0.contains("eu3") && e.0.contains("eu1, eu2"), "{e}");
        // --jobs overrides every cluster's.
        let s = Settings::from_str(
            Path::new("t.toml"),
            "[clusters.a]\nurl = \"postgres://h/db\"\njobs = 8\n",
            &Overrides {
                jobs: Some(2),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.clusters[0].jobs, 2);
    }

    #[test]
    fn cluster_config_errors_name_the_key() {
        let e = load(
            "[database]\nurl = \"postgres://h/db\"\n[clusters.a]\nurl = \"postgres://h/db\"\n",
        )
        .unwrap_err();
        assert!(
            e.0.contains("cannot be used together") && e.0.contains("line 2"),
            "{e}"
        );
        let e = load("[clusters.Bad]\nurl = \"postgres://h/db\"\n").unwrap_err();
        assert!(
            e.0.contains("clusters.Bad") && e.0.contains("line 2"),
            "{e}"
        );
        let e = load("[clusters.a]\nurl = \"postgres://h:nope/db\"\n").unwrap_err();
        assert!(e.0.contains("clusters.a.url"), "{e}");
        let e = load("[clusters.a]\nurl = \"postgres://h/db\"\njobs = 0\n").unwrap_err();
        assert!(e.0.contains("clusters.a.jobs"), "{e}");
        let e = load(
            "[clusters.a]\nurl = \"postgres://h/db\"\n[clusters.b]\nurl = \"postgres://h/db\"\n",
        )
        .unwrap_err();
        assert!(
            e.0.contains("clusters.b.url") && e.0.contains("same URL as cluster a"),
            "{e}"
        );
        let e = load("[clusters.a]\njobs = 2\n").unwrap_err();
        assert!(e.0.contains("url"), "{e}");
        let e = Settings::from_str(
            Path::new("t.toml"),
            "[clusters.a]\nurl = \"postgres://h/db\"\n",
            &Overrides {
                database_url: Some("postgres://other/db".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(e.0.contains("--cluster NAME"), "{e}");
    }

    #[test]
    fn shared_schema_and_dir() {
        let s = load("[database]\nurl = \"postgres://h/db\"\n").unwrap();
        assert_eq!(s.shared_schema, "public");
        assert_eq!(s.shared_dir, Path::new("/etc/app/migrations/shared"));
        assert!(!s.shared_dir_configured && !s.multi_cluster);
        assert_eq!(s.clusters[0].name, DEFAULT_CLUSTER);
        for bad in [
            "tenantctl",
            "tenant_shared",
            "pg_x",
            "information_schema",
            "Sh",
        ] {
            let e = load(&format!(
                "[database]\nurl = \"postgres://h/db\"\n[migrations]\nshared_schema = \"{bad}\"\n"
            ))
            .unwrap_err();
            assert!(e.0.contains("migrations.shared_schema"), "{bad}: {e}");
        }
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../tenants.toml");
        let s = Settings::from_str(
            Path::new("tenants.toml"),
            text,
            &Overrides {
                database_url: Some("postgres://localhost/x".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.schema_prefix, "tenant_");
    }
}
