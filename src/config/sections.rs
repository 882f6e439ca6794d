//! The sections of `tenants.toml`: the TOML shape (`deny_unknown_fields`, values kept with
//! their spans for errors that name the line), one function per section, and the checks of
//! single values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::env::expand_env;
use super::{
    err_at_line, ConfigError, Databases, Located, MigrationsConfig, Overrides, RunConfig,
    TenantsConfig, Written, DEFAULT_GRACE_PERIOD, DEFAULT_JOBS, DEFAULT_LOCK_TIMEOUT,
    DEFAULT_PREFIX, DEFAULT_RETRIES, DEFAULT_RETRY_DELAY, DEFAULT_SHARED_SCHEMA,
    DEFAULT_SLOW_AFTER, DEFAULT_WORKER_RECYCLE, MAX_JOBS,
};
use crate::tenant::validate_schema_word;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) database: RawDatabase,
    pub(super) clusters: Option<BTreeMap<String, RawCluster>>,
    #[serde(default)]
    pub(super) migrations: RawMigrations,
    #[serde(default)]
    pub(super) tenants: RawTenants,
    #[serde(default)]
    pub(super) run: RawRun,
    pub(super) tiers: Option<BTreeMap<String, super::tiers::RawTier>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    url: Option<Spanned<String>>,
    direct_url: Option<Spanned<String>>,
    pub(super) control_schema: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    url: Spanned<String>,
    direct_url: Option<Spanned<String>>,
    jobs: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMigrations {
    dir: Option<Spanned<String>>,
    shared_dir: Option<Spanned<String>>,
    shared_schema: Option<Spanned<String>>,
    extensions_schema: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenants {
    schema_prefix: Option<Spanned<String>>,
    role: Option<Spanned<String>>,
    pool: Option<Spanned<i64>>,
    seed: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRun {
    jobs: Option<Spanned<i64>>,
    lock_timeout: Option<Spanned<String>>,
    statement_timeout: Option<Spanned<String>>,
    step_statement_timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    retry_delay: Option<Spanned<String>>,
    grace_period: Option<Spanned<String>>,
    worker_recycle: Option<Spanned<i64>>,
    slow_after: Option<Spanned<String>>,
}

/// The file being parsed: for line numbers and error messages.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn line_of(&self, span: std::ops::Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    pub(super) fn err_at(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        msg: impl std::fmt::Display,
    ) -> ConfigError {
        err_at_line(self.path, self.line_of(span), key, msg)
    }

    /// Expands `${VAR}` / `${VAR:-default}` in a string value.
    pub(super) fn expand(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
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
    pub(super) fn string_or(
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

    /// The config's folder; empty for a config in the current folder (paths then read
    /// `migrations/…`, not `./migrations/…`).
    fn base(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
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

/// `[run]`: concurrency, timeouts, retries.
pub(super) fn run_section(
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
    let worker_recycle = match &raw.worker_recycle {
        Some(r) if (0..=1_000_000).contains(r.get_ref()) => *r.get_ref() as usize,
        Some(r) => {
            return Err(src.err_at(
                r.span(),
                "run.worker_recycle",
                format!(
                    "{} is out of range; use the number of schemas a worker connection migrates before it is replaced (1 to 1000000), or 0 for never",
                    r.get_ref()
                ),
            ))
        }
        None => DEFAULT_WORKER_RECYCLE,
    };
    let statement_timeout = src.duration_or(
        &raw.statement_timeout,
        "run.statement_timeout",
        Duration::ZERO,
    )?;
    let step_statement_timeout = src.duration_or(
        &raw.step_statement_timeout,
        "run.step_statement_timeout",
        Duration::ZERO,
    )?;
    let slow_after = match overrides.slow_after {
        Some(d) => d,
        None => src.duration_or(&raw.slow_after, "run.slow_after", DEFAULT_SLOW_AFTER)?,
    };
    Ok(RunConfig {
        jobs,
        slow_after: (!slow_after.is_zero()).then_some(slow_after),
        step_statement_timeout: (!step_statement_timeout.is_zero())
            .then_some(step_statement_timeout),
        lock_timeout: src.duration_or(
            &raw.lock_timeout,
            "run.lock_timeout",
            DEFAULT_LOCK_TIMEOUT,
        )?,
        statement_timeout: (!statement_timeout.is_zero()).then_some(statement_timeout),
        retries,
        worker_recycle,
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
pub(super) fn database_section(
    src: &Source<'_>,
    raw: &RawConfig,
    overrides: &Overrides,
    default_jobs: usize,
) -> Result<Databases, ConfigError> {
    let Some(map) = &raw.clusters else {
        return Ok(Databases::Single {
            url: raw.database.url.as_ref().map(|u| src.locate(u)),
            direct: raw.database.direct_url.as_ref().map(|u| src.locate(u)),
            flag: overrides.database_url.clone(),
        });
    };
    for (value, key) in [
        (&raw.database.url, "database.url"),
        (&raw.database.direct_url, "database.direct_url"),
    ] {
        if let Some(url) = value {
            return Err(src.err_at(
                url.span(),
                key,
                "[database] url and [clusters.<name>] tables cannot be used together; move this URL into a [clusters.<name>] table (keep [database] for control_schema only)",
            ));
        }
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
        let written = Written {
            url: src.locate(&c.url),
            direct: c.direct_url.as_ref().map(|u| src.locate(u)),
        };
        clusters.push((name.clone(), written, jobs));
    }
    Ok(Databases::Clusters {
        clusters,
        flag_given: overrides.database_url.is_some(),
    })
}

/// `[tenants]`: the schema prefix and the role template.
pub(super) fn tenants_section(
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
    let pool = match &raw.pool {
        Some(n) if (0..=10_000).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            return Err(src.err_at(
                n.span(),
                "tenants.pool",
                format!("{} is out of range; use 0 (off) to 10000", n.get_ref()),
            ))
        }
        None => 0,
    };
    // A seed is a file relative to the config, like the migrations folder.
    let seed = src.folder(&raw.seed, "tenants.seed")?;
    Ok(TenantsConfig {
        schema_prefix,
        role_template,
        pool,
        seed,
    })
}

/// `[migrations]`: folders and the shared schema.
pub(super) fn migrations_section(
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
    let extensions_schema = match &raw.extensions_schema {
        Some(_) => Some(src.string_or(&raw.extensions_schema, "migrations.extensions_schema", "", |s| {
            check_shared_schema(s, prefix, control_schema)?;
            if s == "public" || s == shared_schema {
                return Err(format!(
                    "{s:?} is the shared schema (or public); extensions need a schema of their own that tenants can read but not write, e.g. \"extensions\""
                ));
            }
            Ok(())
        })?),
        None => None,
    };
    Ok(MigrationsConfig {
        dir,
        shared_dir,
        shared_dir_configured: raw.shared_dir.is_some(),
        shared_schema,
        extensions_schema,
    })
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
