//! `tenants.toml` → a validated [`Config`] (the file) and, on demand, one [`Target`] per
//! cluster (where to connect). Strict: unknown keys are errors, `${VAR}` and `${VAR:-default}`
//! are expanded from the environment, relative paths resolve from the config file's folder, and
//! every error names the file, the line and the key, and says how to fix it.
//!
//! A leaf: nothing here talks to a database. Database URLs are resolved only by
//! [`Config::targets`], so commands that need no database never ask for one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::redact;
use crate::tenant::{role_name, validate_schema_word, Tenant};

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

/// Name of the single cluster of the `[database]` form.
pub const DEFAULT_CLUSTER: &str = "default";
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
pub const DEFAULT_JOBS: usize = 4;

/// The whole configuration file, validated. Where to connect is asked separately, per
/// cluster, with [`Config::targets`].
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// Schema of tenantctl's registry and run ledger, one per cluster.
    pub control_schema: String,
    pub migrations: MigrationsConfig,
    pub tenants: TenantsConfig,
    pub run: RunConfig,
    /// True when the config uses `[clusters.<name>]` (output then names clusters).
    pub multi_cluster: bool,
    databases: Databases,
}

/// `[migrations]`.
#[derive(Debug, Clone)]
pub struct MigrationsConfig {
    pub dir: PathBuf,
    /// Migrations applied once per cluster into `shared_schema` (before tenant migrations).
    pub shared_dir: PathBuf,
    /// Whether `shared_dir` was configured (then it must exist).
    pub shared_dir_configured: bool,
    pub shared_schema: String,
}

/// `[tenants]`.
#[derive(Debug, Clone)]
pub struct TenantsConfig {
    pub schema_prefix: String,
    /// Role-per-tenant template (`{schema}` / `{id}`), off when None.
    pub role_template: Option<String>,
}

impl TenantsConfig {
    /// The tenant's role under the role-per-tenant option.
    pub fn role_for(&self, tenant: &Tenant) -> Option<String> {
        self.role_template.as_deref().map(|t| role_name(t, tenant))
    }
}

/// `[run]`, with `--jobs` applied.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Concurrency of a cluster without its own `jobs` (and of every cluster with `--jobs`).
    pub jobs: usize,
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
    /// Extra attempts for a schema that hit lock_timeout or lost its connection.
    pub retries: u32,
    /// First delay before a retry; doubles on each further attempt.
    pub retry_delay: Duration,
    /// After SIGINT/SIGTERM, how long in-flight schemas may take before they are cancelled.
    pub grace_period: Duration,
}

/// One PostgreSQL cluster (server + database) holding a share of the tenants, with its own
/// control schema, run ledger and concurrency bound: where one connection goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// `default` for the single `[database]` form, else the `[clusters.<name>]` key.
    pub name: String,
    /// The connection string; contains the password. Print `display_url` instead.
    pub url: String,
    /// The connection string with its password replaced by `***`.
    pub display_url: String,
    pub jobs: usize,
}

/// What the command line contributes to the configuration.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub jobs: Option<usize>,
}

/// A string value and where it was written, kept for errors reported after parsing.
#[derive(Debug, Clone)]
struct Located {
    value: String,
    line: usize,
}

/// The database section(s), resolved into targets only when a command needs them.
#[derive(Debug, Clone)]
enum Databases {
    /// `[database] url`, or `--database-url` / `$TENANTCTL_DATABASE_URL`.
    Single {
        url: Option<Located>,
        flag: Option<String>,
    },
    /// `[clusters.<name>]`, sorted by name, with their `jobs` already resolved.
    Clusters {
        clusters: Vec<(String, Located, usize)>,
        /// `--database-url` given anyway: refused when targets are asked for.
        flag_given: bool,
    },
}

/// The file being parsed: for line numbers and error messages.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
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
        err_at_line(self.path, self.line_of(span), key, msg)
    }

    /// Expands `${VAR}` / `${VAR:-default}` in a string value.
    fn expand(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        expand_env(value.get_ref(), |name| std::env::var(name).ok())
            .map_err(|e| self.err_at(value.span(), key, e))
    }

    fn locate(&self, value: &Spanned<String>) -> Located {
        Located {
            value: value.get_ref().clone(),
            line: self.line_of(value.span()),
        }
    }

    /// An optional string key, expanded, or `default`.
    fn string_or(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<String, ConfigError> {
        match value {
            Some(v) => {
                let s = self.expand(v, key)?;
                check(&s).map_err(|e| self.err_at(v.span(), key, e))?;
                Ok(s)
            }
            None => Ok(default.to_string()),
        }
    }

    /// An optional duration key, or `default`.
    fn duration_or(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            Some(v) => {
                let s = self.expand(v, key)?;
                parse_duration(&s).map_err(|e| self.err_at(v.span(), key, e))
            }
            None => Ok(default),
        }
    }

    /// An optional folder, relative to the config file's folder.
    fn folder(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let Some(v) = value else { return Ok(None) };
        let s = self.expand(v, key)?;
        if s.trim().is_empty() {
            return Err(self.err_at(v.span(), key, "must not be empty"));
        }
        Ok(Some(self.base().join(s)))
    }

    fn base(&self) -> PathBuf {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

fn err_at_line(path: &Path, line: usize, key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{}, line {line}: `{key}`: {msg}", path.display()))
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

impl Config {
    /// Loads and validates the config file, then applies command-line overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
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
        Config::parse(path, &text, overrides)
    }

    /// Validates the text of a config file found at `path`.
    pub fn parse(path: &Path, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            ConfigError(format!(
                "{}: {}",
                path.display(),
                redact::scrub(e.to_string().trim_end())
            ))
        })?;
        let src = Source { path, text };
        let run = run_section(&src, &raw.run, overrides)?;
        let databases = database_section(&src, &raw, overrides, run.jobs)?;
        let control_schema = src.string_or(
            &raw.database.control_schema,
            "database.control_schema",
            DEFAULT_CONTROL_SCHEMA,
            |s| validate_schema_word(s, false),
        )?;
        let tenants = tenants_section(&src, &raw.tenants, &control_schema)?;
        let migrations = migrations_section(
            &src,
            &raw.migrations,
            &tenants.schema_prefix,
            &control_schema,
        )?;
        Ok(Config {
            path: path.to_path_buf(),
            control_schema,
            migrations,
            tenants,
            run,
            multi_cluster: raw.clusters.is_some(),
            databases,
        })
    }

    /// Every configured cluster's name, sorted (the `[database]` form is `default`).
    pub fn cluster_names(&self) -> Vec<&str> {
        match &self.databases {
            Databases::Single { .. } => vec![DEFAULT_CLUSTER],
            Databases::Clusters { clusters, .. } => {
                clusters.iter().map(|(n, ..)| n.as_str()).collect()
            }
        }
    }

    /// Where to connect: every cluster (`names` empty) or those named with `--cluster`, each
    /// URL expanded, checked and its password registered for scrubbing. Only commands that
    /// work on a database call this.
    pub fn targets(&self, names: &[String]) -> Result<Vec<Target>, ConfigError> {
        let all = self.resolve_all()?;
        if names.is_empty() {
            return Ok(all);
        }
        let mut out: Vec<Target> = Vec::new();
        for name in names {
            let Some(t) = all.iter().find(|t| &t.name == name) else {
                return Err(ConfigError(format!(
                    "--cluster {name}: no such cluster in {} (clusters: {}); nothing was changed",
                    self.path.display(),
                    self.cluster_names().join(", ")
                )));
            };
            if !out.iter().any(|o| &o.name == name) {
                out.push(t.clone());
            }
        }
        Ok(out)
    }

    fn resolve_all(&self) -> Result<Vec<Target>, ConfigError> {
        let path = &self.path;
        match &self.databases {
            Databases::Single { flag: Some(url), .. } => {
                let display_url =
                    check_url(url).map_err(|msg| ConfigError(format!("--database-url: {msg}")))?;
                Ok(vec![Target {
                    name: DEFAULT_CLUSTER.into(),
                    url: url.clone(),
                    display_url,
                    jobs: self.run.jobs,
                }])
            }
            Databases::Single { url: Some(u), flag: None } => {
                let url = resolve_url(path, u, "database.url")?;
                Ok(vec![Target {
                    name: DEFAULT_CLUSTER.into(),
                    display_url: check_url(&url)
                        .map_err(|e| err_at_line(path, u.line, "database.url", e))?,
                    url,
                    jobs: self.run.jobs,
                }])
            }
            Databases::Single { url: None, flag: None } => Err(ConfigError(format!(
                "{}: no database URL: set `url` under [database] (e.g. url = \"${{DATABASE_URL}}\"), name clusters in [clusters.<name>] tables, or pass --database-url",
                path.display()
            ))),
            Databases::Clusters { flag_given: true, .. } => Err(ConfigError(format!(
                "--database-url (or TENANTCTL_DATABASE_URL) cannot be used with the [clusters.<name>] tables of {}; pick clusters with --cluster NAME instead",
                path.display()
            ))),
            Databases::Clusters { clusters, flag_given: false } => {
                let mut out: Vec<Target> = Vec::with_capacity(clusters.len());
                for (name, u, jobs) in clusters {
                    let key = format!("clusters.{name}.url");
                    let url = resolve_url(path, u, &key)?;
                    let display_url =
                        check_url(&url).map_err(|e| err_at_line(path, u.line, &key, e))?;
                    if let Some(other) = out.iter().find(|t| t.url == url) {
                        return Err(err_at_line(
                            path,
                            u.line,
                            &key,
                            format!("the same URL as cluster {}; each cluster must be a database of its own", other.name),
                        ));
                    }
                    out.push(Target {
                        name: name.clone(),
                        url,
                        display_url,
                        jobs: *jobs,
                    });
                }
                Ok(out)
            }
        }
    }
}

/// Expands a URL written in the file.
fn resolve_url(path: &Path, u: &Located, key: &str) -> Result<String, ConfigError> {
    expand_env(&u.value, |name| std::env::var(name).ok())
        .map_err(|e| err_at_line(path, u.line, key, e))
}

/// `[run]`: concurrency, timeouts, retries.
fn run_section(
    src: &Source<'_>,
    raw: &RawRun,
    overrides: &Overrides,
) -> Result<RunConfig, ConfigError> {
    let jobs = match (overrides.jobs, &raw.jobs) {
        (Some(j), _) => check_jobs(j as i64).map_err(|e| ConfigError(format!("--jobs: {e}")))?,
        (None, Some(j)) => {
            check_jobs(*j.get_ref()).map_err(|e| src.err_at(j.span(), "run.jobs", e))?
        }
        (None, None) => DEFAULT_JOBS,
    };
    let retries = match &raw.retries {
        Some(r) if (0..=20).contains(r.get_ref()) => *r.get_ref() as u32,
        Some(r) => {
            return Err(src.err_at(
                r.span(),
                "run.retries",
                format!("{} is out of range; use 0 to 20", r.get_ref()),
            ))
        }
        None => DEFAULT_RETRIES,
    };
    let statement_timeout = src.duration_or(
        &raw.statement_timeout,
        "run.statement_timeout",
        Duration::ZERO,
    )?;
    Ok(RunConfig {
        jobs,
        lock_timeout: src.duration_or(
            &raw.lock_timeout,
            "run.lock_timeout",
            DEFAULT_LOCK_TIMEOUT,
        )?,
        statement_timeout: (!statement_timeout.is_zero()).then_some(statement_timeout),
        retries,
        retry_delay: src.duration_or(&raw.retry_delay, "run.retry_delay", DEFAULT_RETRY_DELAY)?,
        grace_period: src.duration_or(
            &raw.grace_period,
            "run.grace_period",
            DEFAULT_GRACE_PERIOD,
        )?,
    })
}

/// `[database] url` or `[clusters.<name>]`: which form, cluster names and their `jobs`. URLs
/// are kept as written; [`Config::targets`] expands and checks them.
fn database_section(
    src: &Source<'_>,
    raw: &RawConfig,
    overrides: &Overrides,
    default_jobs: usize,
) -> Result<Databases, ConfigError> {
    let Some(map) = &raw.clusters else {
        return Ok(Databases::Single {
            url: raw.database.url.as_ref().map(|u| src.locate(u)),
            flag: overrides.database_url.clone(),
        });
    };
    if let Some(url) = &raw.database.url {
        return Err(src.err_at(
            url.span(),
            "database.url",
            "[database] url and [clusters.<name>] tables cannot be used together; move this URL into a [clusters.<name>] table (keep [database] for control_schema only)",
        ));
    }
    if map.is_empty() {
        return Err(ConfigError(format!(
            "{}: [clusters] names no cluster; add [clusters.<name>] tables with a url each",
            src.path.display()
        )));
    }
    let mut clusters = Vec::with_capacity(map.len());
    for (name, c) in map {
        check_cluster_name(name)
            .map_err(|e| src.err_at(c.url.span(), &format!("clusters.{name}"), e))?;
        // --jobs overrides every cluster; else a cluster's own `jobs`, else [run] jobs.
        let jobs = match (&c.jobs, overrides.jobs) {
            (Some(j), None) => check_jobs(*j.get_ref())
                .map_err(|e| src.err_at(j.span(), &format!("clusters.{name}.jobs"), e))?,
            _ => default_jobs,
        };
        clusters.push((name.clone(), src.locate(&c.url), jobs));
    }
    Ok(Databases::Clusters {
        clusters,
        flag_given: overrides.database_url.is_some(),
    })
}

/// `[tenants]`: the schema prefix and the role template.
fn tenants_section(
    src: &Source<'_>,
    raw: &RawTenants,
    control_schema: &str,
) -> Result<TenantsConfig, ConfigError> {
    // An empty prefix is allowed, but then any schema could be a tenant's; ids are still
    // checked against reserved names in `Tenant::parse`.
    let schema_prefix = src.string_or(
        &raw.schema_prefix,
        "tenants.schema_prefix",
        DEFAULT_PREFIX,
        |s| {
            validate_schema_word(s, true)?;
            if !s.is_empty() && control_schema.starts_with(s) {
                return Err(format!(
                    "the control schema {control_schema:?} starts with the prefix {s:?}, so it would look like a tenant schema; choose another prefix or control_schema"
                ));
            }
            Ok(())
        },
    )?;
    let role_template = match &raw.role {
        Some(v) => {
            let t = src.expand(v, "tenants.role")?;
            check_role_template(&t).map_err(|e| src.err_at(v.span(), "tenants.role", e))?;
            Some(t)
        }
        None => None,
    };
    Ok(TenantsConfig {
        schema_prefix,
        role_template,
    })
}

/// `[migrations]`: folders and the shared schema.
fn migrations_section(
    src: &Source<'_>,
    raw: &RawMigrations,
    prefix: &str,
    control_schema: &str,
) -> Result<MigrationsConfig, ConfigError> {
    let dir = src
        .folder(&raw.dir, "migrations.dir")?
        .unwrap_or_else(|| src.base().join("migrations"));
    let shared_schema = src.string_or(
        &raw.shared_schema,
        "migrations.shared_schema",
        DEFAULT_SHARED_SCHEMA,
        |s| check_shared_schema(s, prefix, control_schema),
    )?;
    let shared_dir = src
        .folder(&raw.shared_dir, "migrations.shared_dir")?
        .unwrap_or_else(|| dir.join("shared"));
    Ok(MigrationsConfig {
        dir,
        shared_dir,
        shared_dir_configured: raw.shared_dir.is_some(),
        shared_schema,
    })
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

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("/etc/app/tenants.toml"),
            text,
            &Overrides::default(),
        )
    }

    /// The config and its every target, as one result (as a command that connects sees it).
    fn load_targets(text: &str) -> Result<(Config, Vec<Target>), ConfigError> {
        let c = load(text)?;
        let t = c.targets(&[])?;
        Ok((c, t))
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
        let (s, t) = load_targets("[database]\nurl = \"postgres://u@localhost/db\"\n").unwrap();
        assert_eq!(s.control_schema, "tenantctl");
        assert_eq!(s.tenants.schema_prefix, "tenant_");
        assert_eq!(s.migrations.dir, Path::new("/etc/app/migrations"));
        assert_eq!(t[0].jobs, DEFAULT_JOBS);
        assert_eq!(s.run.lock_timeout, Duration::from_secs(10));
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
        let e = load_targets("[database]\nurl = \"${TENANTCTL_SURELY_UNSET_VAR}\"\n").unwrap_err();
        assert!(
            e.0.contains("TENANTCTL_SURELY_UNSET_VAR is not set") && e.0.contains("database.url"),
            "{e}"
        );
    }

    #[test]
    fn bad_url_does_not_print_password() {
        let e = load_targets("[database]\nurl = \"postgres://u:hunter2secret@h:notaport/db\"\n")
            .unwrap_err();
        assert!(!e.0.contains("hunter2secret"), "{e}");
        assert!(e.0.contains("database.url"), "{e}");
    }

    #[test]
    fn a_config_without_a_database_loads_until_a_target_is_asked_for() {
        // Commands that need no database (scaffolding, lint) work without a URL, even one
        // whose variable is unset; commands that connect get the error.
        for text in [
            "[run]\njobs = 2\n",
            "[database]\nurl = \"${TENANTCTL_SURELY_UNSET_VAR}\"\n",
        ] {
            let c = load(text).unwrap();
            assert_eq!(c.cluster_names(), [DEFAULT_CLUSTER]);
            let e = c.targets(&[]).unwrap_err();
            assert!(e.0.contains("URL") || e.0.contains("not set"), "{e}");
        }
    }

    #[test]
    fn clusters_resolve_with_their_own_jobs() {
        let (s, targets) = load_targets(
            "[clusters.eu2]\nurl = \"postgres://u:pw9secret@h2/db\"\njobs = 8\n[clusters.eu1]\nurl = \"postgres://u@h1/db\"\n[run]\njobs = 3\n",
        )
        .unwrap();
        assert!(s.multi_cluster);
        let names: Vec<(&str, usize)> = targets.iter().map(|c| (c.name.as_str(), c.jobs)).collect();
        assert_eq!(names, [("eu1", 3), ("eu2", 8)]);
        assert!(!targets[1].display_url.contains("pw9secret"));
        let eu2 = s.targets(&["eu2".into()]).unwrap();
        assert_eq!((eu2.len(), eu2[0].jobs), (1, 8));
        assert_eq!(eu2[0].url, "postgres://u:pw9secret@h2/db");
        let e = s.targets(&["eu3".into()]).unwrap_err();
        assert!(e.0.contains("eu3") && e.0.contains("eu1, eu2"), "{e}");
        // --jobs overrides every cluster's.
        let s = Config::parse(
            Path::new("t.toml"),
            "[clusters.a]\nurl = \"postgres://h/db\"\njobs = 8\n",
            &Overrides {
                jobs: Some(2),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.targets(&[]).unwrap()[0].jobs, 2);
    }

    #[test]
    fn cluster_config_errors_name_the_key() {
        let e = load_targets(
            "[database]\nurl = \"postgres://h/db\"\n[clusters.a]\nurl = \"postgres://h/db\"\n",
        )
        .unwrap_err();
        assert!(
            e.0.contains("cannot be used together") && e.0.contains("line 2"),
            "{e}"
        );
        let e = load_targets("[clusters.Bad]\nurl = \"postgres://h/db\"\n").unwrap_err();
        assert!(
            e.0.contains("clusters.Bad") && e.0.contains("line 2"),
            "{e}"
        );
        let e = load_targets("[clusters.a]\nurl = \"postgres://h:nope/db\"\n").unwrap_err();
        assert!(e.0.contains("clusters.a.url"), "{e}");
        let e = load_targets("[clusters.a]\nurl = \"postgres://h/db\"\njobs = 0\n").unwrap_err();
        assert!(e.0.contains("clusters.a.jobs"), "{e}");
        let e = load_targets(
            "[clusters.a]\nurl = \"postgres://h/db\"\n[clusters.b]\nurl = \"postgres://h/db\"\n",
        )
        .unwrap_err();
        assert!(
            e.0.contains("clusters.b.url") && e.0.contains("same URL as cluster a"),
            "{e}"
        );
        let e = load_targets("[clusters.a]\njobs = 2\n").unwrap_err();
        assert!(e.0.contains("url"), "{e}");
        let e = Config::parse(
            Path::new("t.toml"),
            "[clusters.a]\nurl = \"postgres://h/db\"\n",
            &Overrides {
                database_url: Some("postgres://other/db".into()),
                ..Overrides::default()
            },
        )
        .and_then(|c| c.targets(&[]))
        .unwrap_err();
        assert!(e.0.contains("--cluster NAME"), "{e}");
    }

    #[test]
    fn shared_schema_and_dir() {
        let s = load("[database]\nurl = \"postgres://h/db\"\n").unwrap();
        assert_eq!(s.migrations.shared_schema, "public");
        assert_eq!(
            s.migrations.shared_dir,
            Path::new("/etc/app/migrations/shared")
        );
        assert!(!s.migrations.shared_dir_configured && !s.multi_cluster);
        assert_eq!(s.targets(&[]).unwrap()[0].name, DEFAULT_CLUSTER);
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
        let s = Config::parse(
            Path::new("tenants.toml"),
            text,
            &Overrides {
                database_url: Some("postgres://localhost/x".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.tenants.schema_prefix, "tenant_");
        assert_eq!(s.targets(&[]).unwrap()[0].url, "postgres://localhost/x");
    }
}
