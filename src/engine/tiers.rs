//! Tiers on tenant roles: what a role's settings are (`pg_roles`, `pg_db_role_setting`),
//! what its tier wants, and the `ALTER ROLE` statements between the two. Settings a tier
//! does not manage are never touched. Reading every role is one query; the changes are sent
//! in batches, each one transaction and one round trip.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::config::{Tier, TIER_SETTINGS};
use crate::tenant::{quote_ident, quote_literal};

/// Roles changed per transaction (one round trip each).
pub const BATCH: usize = 500;

/// A role as the server has it.
#[derive(Debug, Clone)]
pub struct RoleState {
    pub login: bool,
    pub connection_limit: i32,
    /// Its settings for every database (`name=value`, as `ALTER ROLE … SET` stored them).
    pub settings: Vec<String>,
}

impl RoleState {
    /// A role just made by `CREATE ROLE … NOLOGIN`.
    pub fn new_role() -> RoleState {
        RoleState {
            login: false,
            connection_limit: -1,
            settings: Vec::new(),
        }
    }
}

/// Every role in `roles` that exists, by name: one query.
pub async fn read_roles(
    client: &Client,
    roles: &[String],
) -> anyhow::Result<HashMap<String, RoleState>> {
    let rows = client
        .query_typed(
            "SELECT r.rolname::text, r.rolcanlogin, r.rolconnlimit, coalesce(s.setconfig, '{}')::text[] \
             FROM pg_roles r LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0 \
             WHERE r.rolname = ANY($1::text[])",
            &[(&roles, tokio_postgres::types::Type::TEXT_ARRAY)],
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading the tenants' roles: {}", crate::pgerror::describe(&e)))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                RoleState {
                    login: r.get(1),
                    connection_limit: r.get(2),
                    settings: r.get(3),
                },
            )
        })
        .collect())
}

/// One difference between a role and its tier: what it is and what the tier wants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub setting: String,
    /// None: not set.
    pub now: Option<String>,
    pub tier: Option<String>,
}

/// What differs between `role` and `tier` (None: no tier, no managed settings, no limit).
/// Every tenant role can log in once tiers are configured: the limits apply to sessions
/// that log in as it.
pub fn changes(state: &RoleState, tier: Option<&Tier>) -> Vec<Change> {
    let mut out = Vec::new();
    if !state.login {
        out.push(Change {
            setting: "login".into(),
            now: Some("false".into()),
            tier: Some("true".into()),
        });
    }
    let limit = tier.map_or(-1, |t| t.connection_limit);
    if state.connection_limit != limit {
        out.push(Change {
            setting: "connection_limit".into(),
            now: Some(state.connection_limit.to_string()),
            tier: Some(limit.to_string()),
        });
    }
    for name in TIER_SETTINGS {
        let now = state.settings.iter().find_map(|s| {
            s.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_string)
        });
        let want = tier.and_then(|t| {
            t.settings
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.clone())
        });
        if now != want {
            out.push(Change {
                setting: name.into(),
                now,
                tier: want,
            });
        }
    }
    out
}

/// The statements that make `role` what its tier wants, from its `changes`.
pub fn alter_sql(role: &str, changes: &[Change]) -> String {
    let q = quote_ident(role);
    let mut sql = String::new();
    for c in changes {
        match (c.setting.as_str(), &c.tier) {
            ("login", _) => sql.push_str(&format!("ALTER ROLE {q} LOGIN; ")),
            ("connection_limit", Some(n)) => {
                sql.push_str(&format!("ALTER ROLE {q} CONNECTION LIMIT {n}; "))
            }
            (name, Some(v)) => sql.push_str(&format!(
                "ALTER ROLE {q} SET {name} = {}; ",
                quote_literal(v)
            )),
            (name, None) => sql.push_str(&format!("ALTER ROLE {q} RESET {name}; ")),
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(limit: i32, timeout: Option<&str>) -> Tier {
        Tier {
            name: "free".into(),
            select: None,
            settings: TIER_SETTINGS
                .iter()
                .map(|n| {
                    let v = (*n == "statement_timeout").then(|| timeout.map(str::to_string));
                    (*n, v.flatten())
                })
                .collect(),
            connection_limit: limit,
        }
    }

    #[test]
    fn only_what_differs_is_changed_and_unmanaged_settings_are_left_alone() {
        let state = RoleState {
            login: true,
            connection_limit: 5,
            settings: vec!["statement_timeout=2000".into(), "search_path=x".into()],
        };
        assert!(changes(&state, Some(&tier(5, Some("2000")))).is_empty());
        let c = changes(&state, Some(&tier(3, None)));
        assert_eq!(
            c.iter().map(|c| c.setting.as_str()).collect::<Vec<_>>(),
            ["connection_limit", "statement_timeout"]
        );
        assert_eq!(
            alter_sql("r", &c),
            r#"ALTER ROLE "r" CONNECTION LIMIT 3; ALTER ROLE "r" RESET statement_timeout; "#
        );
    }
}
