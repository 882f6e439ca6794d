//! `tenants.toml` → a validated [`Config`] (the file) and, on demand, one [`Target`] per
//! cluster (where to connect). Strict: unknown keys are errors, `${VAR}` and `${VAR:-default}`
//! are expanded from the environment, relative paths resolve from the config file's folder, and
//! every error names the file, the line and the key, and says how to fix it.
//!
//! A leaf: nothing here talks to a database. Database URLs are resolved only by
//! [`Config::targets`], so commands that need no database never ask for one.

mod env;
mod sections;
mod tiers;

pub use tiers::{Tier, Tiers, SETTINGS as TIER_SETTINGS};

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::conninfo::{masked, password_span, ConnSpec};
use crate::redact;
use crate::tenant::{role_name, validate_schema_word, Tenant};
use env::expand_env;
use sections::{
    database_section, migrations_section, run_section, tenants_section, RawConfig, Source,
};

/// Upper bound for `jobs`: beyond this a single server gains nothing and runs out of slots.
pub const MAX_JOBS: usize = 512;

/// A configuration problem. Always exit code 2: nothing was touched.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Name of the single cluster of the `[database]` form.
pub const DEFAULT_CLUSTER: &str = "default";
pub const DEFAULT_CONTROL_SCHEMA: &str = "tenantctl";
pub const DEFAULT_SHARED_SCHEMA: &str = "public";
pub const DEFAULT_PREFIX: &str = "tenant_";
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 3;
/// Schemas a worker connection migrates before it is replaced (see `RunConfig::worker_recycle`):
/// chosen from `cargo bench --bench fleet -- --memory` (README, Performance).
pub const DEFAULT_WORKER_RECYCLE: usize = 250;
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// A schema running longer than this is reported once, with what it is waiting for.
pub const DEFAULT_SLOW_AFTER: Duration = Duration::from_secs(60);
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
    /// `[tiers.<name>]`: role settings by label (empty: none).
    pub tiers: Tiers,
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
    /// Where the shared migrations install extensions; on every tenant transaction's
    /// `search_path` after the tenant's own schema.
    pub extensions_schema: Option<String>,
}

/// `[tenants]`.
#[derive(Debug, Clone)]
pub struct TenantsConfig {
    pub schema_prefix: String,
    /// Role-per-tenant template (`{schema}` / `{id}`), off when None.
    pub role_template: Option<String>,
    /// Schemas kept created and migrated ahead of `tenant create` (0: no pool).
    pub pool: usize,
    /// SQL run in each new tenant's transaction after its migrations.
    pub seed: Option<std::path::PathBuf>,
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
    /// The bound of a statement in a no-transaction migration (long by design); none by default.
    pub step_statement_timeout: Option<Duration>,
    /// Extra attempts for a schema that hit lock_timeout or lost its connection.
    pub retries: u32,
    /// First delay before a retry; doubles on each further attempt.
    pub retry_delay: Duration,
    /// After SIGINT/SIGTERM, how long in-flight schemas may take before they are cancelled.
    pub grace_period: Duration,
    /// Schemas a worker connection migrates before it is closed and replaced (0: never): a
    /// backend keeps the catalog entries of every relation it touched, so a long-lived one
    /// grows with the fleet.
    pub worker_recycle: usize,
    /// A schema still running after this long is reported once, with what it waits for
    /// (None: never).
    pub slow_after: Option<Duration>,
}

/// One PostgreSQL cluster (server + database) holding a share of the tenants, with its own
/// control schema, run ledger and concurrency bound: where one connection goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// `default` for the single `[database]` form, else the `[clusters.<name>]` key.
    pub name: String,
    /// The connection string; contains the password. Print `display_url` instead.
    pub url: String,
    /// The connection string shown to people: built from its parts, the password as `***`.
    pub display_url: String,
    /// A connection straight to PostgreSQL for what needs a session of its own (the run and
    /// fleet locks), when `url` goes through a pooler in transaction mode.
    pub direct_url: Option<String>,
    pub jobs: usize,
}

/// What the command line contributes to the configuration.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub jobs: Option<usize>,
    /// `--slow-after` (zero: off).
    pub slow_after: Option<Duration>,
}

/// A string value and where it was written, kept for errors reported after parsing.
#[derive(Debug, Clone)]
struct Located {
    value: String,
    line: usize,
}

/// One database's connection strings as written.
#[derive(Debug, Clone)]
struct Written {
    url: Located,
    direct: Option<Located>,
}

/// The database section(s), resolved into targets only when a command needs them.
#[derive(Debug, Clone)]
enum Databases {
    /// `[database] url` and `direct_url`, or `--database-url` / `$TENANTCTL_DATABASE_URL`.
    Single {
        url: Option<Located>,
        direct: Option<Located>,
        flag: Option<String>,
    },
    /// `[clusters.<name>]`, sorted by name, with their `jobs` already resolved.
    Clusters {
        clusters: Vec<(String, Written, usize)>,
        /// `--database-url` given anyway: refused when targets are asked for.
        flag_given: bool,
    },
}

fn err_at_line(path: &Path, line: usize, key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{}, line {line}: `{key}`: {msg}", path.display()))
}

impl Config {
    /// Loads and validates the config file, then applies command-line overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ConfigError(format!(
                    "config file {} not found; `tenantctl init` creates a commented one (and migrations/), or pass --config PATH / set TENANTCTL_CONFIG",
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
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
        let tiers = tiers::tiers_section(&src, &raw.tiers, tenants.role_template.is_some())?;
        Ok(Config {
            path: path.to_path_buf(),
            control_schema,
            migrations,
            tenants,
            run,
            tiers,
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
        let target = |name: &str, (url, display_url): (String, String), direct| Target {
            name: name.to_string(),
            url,
            display_url,
            direct_url: direct,
            jobs: self.run.jobs,
        };
        match &self.databases {
            Databases::Single {
                flag: Some(_),
                direct: Some(d),
                ..
            } => Err(err_at_line(
                path,
                d.line,
                "database.direct_url",
                "--database-url (or TENANTCTL_DATABASE_URL) replaces [database] url, and this direct_url belongs with that url; remove one of them",
            )),
            Databases::Single { flag: Some(url), .. } => {
                let display = check_conn(url)
                    .map_err(|msg| ConfigError(format!("--database-url: {msg}")))?;
                Ok(vec![target(DEFAULT_CLUSTER, (url.clone(), display), None)])
            }
            Databases::Single {
                url: Some(u),
                direct,
                flag: None,
            } => {
                let url = resolve_conn(path, u, "database.url")?;
                let direct = direct
                    .as_ref()
                    .map(|d| resolve_conn(path, d, "database.direct_url"))
                    .transpose()?
                    .map(|(url, _)| url);
                Ok(vec![target(DEFAULT_CLUSTER, url, direct)])
            }
            Databases::Single {
                url: None,
                flag: None,
                ..
            } => Err(ConfigError(format!(
                "{}: no database URL: set `url` under [database] (e.g. url = \"${{DATABASE_URL}}\"), name clusters in [clusters.<name>] tables, or pass --database-url",
                path.display()
            ))),
            Databases::Clusters {
                flag_given: true, ..
            } => Err(ConfigError(format!(
                "--database-url (or TENANTCTL_DATABASE_URL) cannot be used with the [clusters.<name>] tables of {}; pick clusters with --cluster NAME instead",
                path.display()
            ))),
            Databases::Clusters {
                clusters,
                flag_given: false,
            } => {
                let mut out: Vec<Target> = Vec::with_capacity(clusters.len());
                for (name, written, jobs) in clusters {
                    let key = format!("clusters.{name}.url");
                    let (url, display_url) = resolve_conn(path, &written.url, &key)?;
                    if let Some(other) = out.iter().find(|t| t.url == url) {
                        return Err(err_at_line(
                            path,
                            written.url.line,
                            &key,
                            format!(
                                "the same URL as cluster {}; each cluster must be a database of its own",
                                other.name
                            ),
                        ));
                    }
                    let direct_url = written
                        .direct
                        .as_ref()
                        .map(|d| resolve_conn(path, d, &format!("clusters.{name}.direct_url")))
                        .transpose()?
                        .map(|(url, _)| url);
                    out.push(Target {
                        name: name.clone(),
                        url,
                        display_url,
                        direct_url,
                        jobs: *jobs,
                    });
                }
                Ok(out)
            }
        }
    }
}

/// A TOML error as file, line and column, and what is wrong, without the source line toml
/// would quote (it may hold a password: the URL's line, an unknown `password = …` key), and
/// with every quoted value in the message hidden.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let mut message = String::new();
    for (i, part) in e.message().trim_end().split('"').enumerate() {
        match i % 2 {
            0 => message.push_str(part),
            _ => message.push_str("\"…\""),
        }
    }
    let at = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rsplit('\n').next().unwrap_or("");
            let column = line_start.chars().count() + 1;
            // The key whose value is at fault: what stands before `=` on that line, under
            // the last [table] header above it.
            let key = line_start
                .trim_end()
                .strip_suffix('=')
                .map(str::trim)
                .filter(|k| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                });
            let table = before
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix('['))
                .map(|t| t.trim_matches(['[', ']', ' ']));
            match (key, table) {
                (Some(k), Some(t)) => format!(", line {line}: `{t}.{k}`"),
                (Some(k), None) => format!(", line {line}: `{k}`"),
                (None, _) => format!(", line {line}, column {column}"),
            }
        }
        None => String::new(),
    };
    ConfigError(format!(
        "{}{at}: {}",
        path.display(),
        redact::scrub(&message)
    ))
}

/// Expands a connection string written in the file and checks it: (the string, how it is
/// shown). A `${` inside the password is reported without quoting any of it.
fn resolve_conn(path: &Path, u: &Located, key: &str) -> Result<(String, String), ConfigError> {
    let url = expand_env(&u.value, |name| std::env::var(name).ok()).map_err(|e| {
        match password_span(&u.value).filter(|r| r.contains(&e.at)) {
            Some(r) => {
                redact::register(&u.value[r]);
                err_at_line(
                    path,
                    u.line,
                    key,
                    "the password contains `$`, which starts a ${VAR} reference in this file; write a literal $ as $$",
                )
            }
            None => err_at_line(path, u.line, key, e),
        }
    })?;
    let display = check_conn(&url).map_err(|e| err_at_line(path, u.line, key, e))?;
    Ok((url, display))
}

/// Checks that a connection string parses (its password registered for scrubbing first);
/// returns how it is shown, the password as `***`.
fn check_conn(url: &str) -> Result<String, String> {
    ConnSpec::parse(url)
        .map(|spec| spec.display())
        .map_err(|e| {
            format!(
                "{:?} is not a valid PostgreSQL connection string: {e}",
                masked(url)
            )
        })
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
                slow_after: None,
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
                slow_after: None,
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
        let text = include_str!("../../tenants.toml");
        let s = Config::parse(
            Path::new("tenants.toml"),
            text,
            &Overrides {
                slow_after: None,
                database_url: Some("postgres://localhost/x".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.tenants.schema_prefix, "tenant_");
        assert_eq!(s.targets(&[]).unwrap()[0].url, "postgres://localhost/x");
    }
}
