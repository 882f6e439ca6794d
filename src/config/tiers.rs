//! `[tiers.<name>]`: the role settings a tenant gets by its labels (docs/tiers.md). A tier
//! is a label selector and the settings of the tenant's role; `[tiers.default]` (no
//! selector) is for the tenants no other tier selects. A tenant two selectors match is an
//! error naming both, found when its tier is asked for: never a silent pick.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::sections::Source;
use super::ConfigError;
use crate::labels::{Labels, Selector};

/// The name of the tier of tenants no selector matches.
pub const DEFAULT_TIER: &str = "default";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTier {
    select: Option<Spanned<String>>,
    statement_timeout: Option<Spanned<String>>,
    lock_timeout: Option<Spanned<String>>,
    idle_in_transaction_session_timeout: Option<Spanned<String>>,
    work_mem: Option<Spanned<String>>,
    temp_file_limit: Option<Spanned<String>>,
    connection_limit: Option<Spanned<i64>>,
}

/// One tier, validated.
#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    /// None: the default tier.
    pub select: Option<Selector>,
    /// Every setting tiers manage, in [`SETTINGS`] order: the value (as PostgreSQL stores
    /// it in the role's settings), or None for "not set" (the role's setting is reset).
    pub settings: Vec<(&'static str, Option<String>)>,
    /// The role's CONNECTION LIMIT (-1: none).
    pub connection_limit: i32,
}

/// The role settings a tier manages: any of them a tier leaves out is reset on the role.
pub const SETTINGS: [&str; 5] = [
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "work_mem",
    "temp_file_limit",
];

/// Every configured tier, the default one last.
#[derive(Debug, Clone, Default)]
pub struct Tiers(pub Vec<Tier>);

impl Tiers {
    /// No tiers (for the runs that make no roles).
    pub const NONE: Tiers = Tiers(Vec::new());

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tier of a tenant with `labels`: the one tier whose selector matches, else the
    /// default tier; None when neither (its role keeps no managed settings). Two matching
    /// selectors: an error naming both.
    pub fn of(&self, id: &str, labels: &Labels) -> Result<Option<&Tier>, String> {
        let matching: Vec<&Tier> = self
            .0
            .iter()
            .filter(|t| t.select.as_ref().is_some_and(|s| s.matches(labels)))
            .collect();
        match matching.as_slice() {
            [] => Ok(self.0.iter().find(|t| t.select.is_none())),
            [one] => Ok(Some(one)),
            [a, b, ..] => Err(format!(
                "tenant {id} ({}) matches tiers {} ({}) and {} ({}): a tenant is in one tier; make the selectors exclusive in [tiers], or change its labels",
                crate::labels::show(labels),
                a.name,
                a.select.as_ref().map(|s| s.to_string()).unwrap_or_default(),
                b.name,
                b.select.as_ref().map(|s| s.to_string()).unwrap_or_default(),
            )),
        }
    }
}

pub(super) fn tiers_section(
    src: &Source<'_>,
    raw: &Option<BTreeMap<String, RawTier>>,
    roles: bool,
) -> Result<Tiers, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Tiers::default());
    };
    if !raw.is_empty() && !roles {
        return Err(ConfigError(format!(
            "{}: [tiers] set the settings of each tenant's role, and tenants have no roles: set [tenants] role (e.g. role = \"{{schema}}_app\"), or remove [tiers]",
            src.path.display()
        )));
    }
    let mut tiers = Vec::new();
    for (name, t) in raw {
        let key = |k: &str| format!("tiers.{name}.{k}");
        if crate::tenant::validate_schema_word(name, false).is_err() {
            return Err(ConfigError(format!(
                "{}: [tiers.{name}]: a tier's name is lowercase letters, digits and _",
                src.path.display()
            )));
        }
        let select = match (&t.select, name.as_str()) {
            (Some(s), DEFAULT_TIER) => {
                return Err(src.err_at(
                    s.span(),
                    &key("select"),
                    "the default tier is for the tenants no other tier selects: remove its select",
                ))
            }
            (None, DEFAULT_TIER) => None,
            (None, _) => {
                return Err(ConfigError(format!(
                    "{}: [tiers.{name}] has no select: give the labels of its tenants (select = \"tier={name}\"), or name it [tiers.default]",
                    src.path.display()
                )))
            }
            (Some(s), _) => {
                let text = src.expand(s, &key("select"))?;
                Some(Selector::parse(&text).map_err(|e| src.err_at(s.span(), &key("select"), e))?)
            }
        };
        let raws = [
            &t.statement_timeout,
            &t.lock_timeout,
            &t.idle_in_transaction_session_timeout,
            &t.work_mem,
            &t.temp_file_limit,
        ];
        let mut settings = Vec::new();
        for (setting, raw) in SETTINGS.into_iter().zip(raws) {
            let value = match raw {
                None => None,
                Some(v) => {
                    let text = src.expand(v, &key(setting))?;
                    let checked = if setting.ends_with("timeout") {
                        timeout(&text)
                    } else {
                        size(&text, setting == "temp_file_limit")
                    };
                    Some(checked.map_err(|e| src.err_at(v.span(), &key(setting), e))?)
                }
            };
            settings.push((setting, value));
        }
        let connection_limit = match &t.connection_limit {
            None => -1,
            Some(n) if (-1..=100_000).contains(n.get_ref()) => *n.get_ref() as i32,
            Some(n) => {
                return Err(src.err_at(
                    n.span(),
                    &key("connection_limit"),
                    format!(
                        "{} is out of range: the sessions a tenant's role may have at once (0 to 100000), or -1 for no limit",
                        n.get_ref()
                    ),
                ))
            }
        };
        tiers.push(Tier {
            name: name.clone(),
            select,
            settings,
            connection_limit,
        });
    }
    // The default tier last: it is the fallback.
    tiers.sort_by_key(|t| t.select.is_none());
    Ok(Tiers(tiers))
}

/// A timeout as the role's setting stores it: milliseconds (`30s` → `30000`).
fn timeout(text: &str) -> Result<String, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}): write e.g. 30s, 500ms, 5m, or 0s for none")
    })?;
    let ms = d.as_millis();
    if ms > i32::MAX as u128 {
        return Err(format!(
            "{text} is longer than PostgreSQL allows (about 24 days)"
        ));
    }
    Ok(ms.to_string())
}

/// A size as PostgreSQL writes it: a number of kB, or with kB, MB, GB, TB (`-1`: none, for
/// temp_file_limit).
fn size(text: &str, unlimited: bool) -> Result<String, String> {
    let t = text.trim();
    if unlimited && t == "-1" {
        return Ok(t.into());
    }
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &t[digits.len()..];
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["", "kB", "MB", "GB", "TB"].contains(&unit);
    if !ok {
        return Err(format!(
            "{text:?} is not a size: write e.g. 64MB, 512kB, 1GB (PostgreSQL's units, case as written){}",
            if unlimited { ", or -1 for none" } else { "" }
        ));
    }
    Ok(format!("{digits}{unit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_timeouts_are_written_as_postgresql_reads_them() {
        assert_eq!(timeout("30s").unwrap(), "30000");
        assert_eq!(timeout("500ms").unwrap(), "500");
        assert!(timeout("30 parsecs").is_err());
        assert_eq!(size("64MB", false).unwrap(), "64MB");
        assert_eq!(size("1024", false).unwrap(), "1024");
        assert!(size("64mb", false).is_err());
        assert!(size("-1", false).is_err());
        assert_eq!(size("-1", true).unwrap(), "-1");
    }
}
