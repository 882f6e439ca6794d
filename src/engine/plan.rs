//! Pure planning: which versions each tenant applies or reverts, which rollback scripts a
//! rollback needs, and the grouped view of a plan for large fleets. No database here; the
//! inputs are the migration set and registry versions.

use std::collections::BTreeMap;

use crate::migrations::MigrationSet;
use crate::tenant::Tenant;

/// Which way a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Up to a version on disk (the latest unless `--to`).
    Forward { target: Option<i32> },
    /// Down to a version (0 = nothing applied).
    Backward { to: i32 },
}

/// What one tenant would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub tenant: Tenant,
    pub from: Option<i32>,
    pub to: Option<i32>,
    /// Migration labels in the order they would run (`V7__x` up, or `V7__x` down).
    pub migrations: Vec<String>,
    /// The same, as they would be recorded: runs of ordinary migrations in one transaction
    /// each, and each no-transaction migration alone.
    pub segments: Vec<PlannedSegment>,
}

/// (in a transaction, migration labels).
pub type PlannedSegment = (bool, Vec<String>);

/// Labels cut into segments at the no-transaction ones.
fn segments(items: impl Iterator<Item = (String, bool)>) -> Vec<PlannedSegment> {
    let mut out: Vec<PlannedSegment> = Vec::new();
    for (label, no_tx) in items {
        match out.last_mut() {
            Some((true, run)) if !no_tx => run.push(label),
            _ => out.push((!no_tx, vec![label])),
        }
    }
    out
}

/// Whether a tenant at `version` has work in `direction`. Forward to the latest also picks
/// tenants *ahead* of the files, so that their drift is reported rather than hidden.
pub fn needs_work(set: &MigrationSet, version: Option<i32>, direction: Direction) -> bool {
    match direction {
        Direction::Forward { target } => match (version, target) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(v), Some(t)) => v < t || (Some(t) == set.latest() && v > t),
        },
        Direction::Backward { to } => version.is_some_and(|v| v > to),
    }
}

/// [`needs_work`] as a SQL condition over the SQL expression `version` (NULL: nothing
/// applied), for the server to decide on the registry's rows.
pub fn needs_work_sql(set: &MigrationSet, version: &str, direction: Direction) -> String {
    match direction {
        Direction::Forward { target: None } => "false".into(),
        Direction::Forward { target: Some(t) } if Some(t) == set.latest() => {
            format!("({version} IS NULL OR {version} <> {t})")
        }
        Direction::Forward { target: Some(t) } => format!("({version} IS NULL OR {version} < {t})"),
        Direction::Backward { to } => format!("coalesce({version} > {to}, false)"),
    }
}

/// The step for one tenant, or None when it has nothing to do.
pub fn step(
    set: &MigrationSet,
    tenant: &Tenant,
    version: Option<i32>,
    direction: Direction,
) -> Option<Step> {
    if !needs_work(set, version, direction) {
        return None;
    }
    let (to, items): (Option<i32>, Vec<(String, bool)>) = match direction {
        Direction::Forward { target } => {
            let labels = set
                .files()
                .iter()
                .filter(|f| {
                    version.is_none_or(|v| f.version > v) && target.is_none_or(|t| f.version <= t)
                })
                .map(|f| (f.label(), f.no_transaction))
                .collect();
            (target, labels)
        }
        Direction::Backward { to } => {
            let labels = set
                .files()
                .iter()
                .rev()
                .filter(|f| f.version > to && version.is_some_and(|v| f.version <= v))
                .map(|f| (f.label(), f.down_no_transaction()))
                .collect();
            let below = set
                .files()
                .iter()
                .map(|f| f.version)
                .filter(|v| *v <= to)
                .max();
            (below, labels)
        }
    };
    Some(Step {
        tenant: tenant.clone(),
        from: version,
        to,
        migrations: items.iter().map(|(l, _)| l.clone()).collect(),
        segments: segments(items.into_iter()),
    })
}

/// Rollback scripts a rollback to `to` needs for tenants at `versions`, and does not have:
/// the expected `.down.sql` paths.
pub fn missing_downs(
    set: &MigrationSet,
    versions: impl IntoIterator<Item = Option<i32>>,
    to: i32,
) -> Vec<String> {
    let Some(highest) = versions.into_iter().flatten().max() else {
        return Vec::new();
    };
    set.files()
        .iter()
        .filter(|f| f.version > to && f.version <= highest && f.down.is_none())
        .map(|f| {
            f.path
                .with_file_name(format!("{}.down.sql", f.label()))
                .display()
                .to_string()
        })
        .collect()
}

/// Tenants that do the same thing, for a readable plan at 10,000 tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub from: Option<i32>,
    pub to: Option<i32>,
    pub migrations: Vec<String>,
    pub segments: Vec<PlannedSegment>,
    pub tenants: Vec<String>,
}

/// What makes tenants alike in a plan: from, to, and the migrations in between (their
/// segments follow from them).
type GroupKey = (Option<i32>, Option<i32>, Vec<String>);

pub fn group(steps: &[Step]) -> Vec<Group> {
    let mut groups: BTreeMap<GroupKey, (Vec<PlannedSegment>, Vec<String>)> = BTreeMap::new();
    for s in steps {
        groups
            .entry((s.from, s.to, s.migrations.clone()))
            .or_insert_with(|| (s.segments.clone(), Vec::new()))
            .1
            .push(s.tenant.id().to_string());
    }
    groups
        .into_iter()
        .map(|((from, to, migrations), (segments, tenants))| Group {
            from,
            to,
            migrations,
            segments,
            tenants,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, bool)]) -> (tempfile::TempDir, MigrationSet) {
        let dir = tempfile::tempdir().unwrap();
        for (name, down) in files {
            std::fs::write(dir.path().join(format!("{name}.sql")), "select 1;").unwrap();
            if *down {
                std::fs::write(dir.path().join(format!("{name}.down.sql")), "select 2;").unwrap();
            }
        }
        let s = MigrationSet::load(dir.path()).unwrap();
        (dir, s)
    }

    fn t(id: &str) -> Tenant {
        Tenant::parse(id, "tenant_", "tenantctl").unwrap()
    }

    #[test]
    fn forward_steps() {
        let (_d, s) = set(&[("V1__a", true), ("V2__b", true), ("V3__c", true)]);
        let latest = Direction::Forward { target: Some(3) };
        assert_eq!(
            step(&s, &t("a"), Some(1), latest).unwrap().migrations,
            ["V2__b", "V3__c"]
        );
        assert_eq!(step(&s, &t("a"), None, latest).unwrap().migrations.len(), 3);
        assert!(step(&s, &t("a"), Some(3), latest).is_none());
        // Ahead of the files: planned, so refinery reports the drift.
        assert!(needs_work(&s, Some(4), latest));
        let to2 = Direction::Forward { target: Some(2) };
        assert_eq!(
            step(&s, &t("a"), Some(1), to2).unwrap().migrations,
            ["V2__b"]
        );
        assert!(
            step(&s, &t("a"), Some(3), to2).is_none(),
            "--to never goes down"
        );
    }

    #[test]
    fn backward_steps_newest_first() {
        let (_d, s) = set(&[("V1__a", true), ("V2__b", true), ("V5__c", true)]);
        let st = step(&s, &t("a"), Some(5), Direction::Backward { to: 1 }).unwrap();
        assert_eq!(st.migrations, ["V5__c", "V2__b"]);
        assert_eq!(st.to, Some(1));
        let st = step(&s, &t("a"), Some(2), Direction::Backward { to: 0 }).unwrap();
        assert_eq!((st.migrations.len(), st.to), (2, None));
        assert!(step(&s, &t("a"), Some(1), Direction::Backward { to: 1 }).is_none());
        assert!(step(&s, &t("a"), None, Direction::Backward { to: 0 }).is_none());
    }

    #[test]
    fn missing_downs_only_for_the_range_in_use() {
        let (_d, s) = set(&[
            ("V1__a", false),
            ("V2__b", false),
            ("V3__c", true),
            ("V4__d", false),
        ]);
        let missing = missing_downs(&s, [Some(3), Some(2)], 1);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].ends_with("V2__b.down.sql"), "{missing:?}");
        assert!(missing_downs(&s, [Some(1), None], 1).is_empty());
        assert_eq!(missing_downs(&s, [Some(4)], 0).len(), 3);
    }

    #[test]
    fn groups_by_what_tenants_do() {
        let (_d, s) = set(&[("V1__a", true), ("V2__b", true)]);
        let dir = Direction::Forward { target: Some(2) };
        let steps: Vec<Step> = [("a", Some(1)), ("b", None), ("c", Some(1))]
            .iter()
            .filter_map(|(id, v)| step(&s, &t(id), *v, dir))
            .collect();
        let g = group(&steps);
        assert_eq!(g.len(), 2);
        let at1 = g.iter().find(|g| g.from == Some(1)).unwrap();
        assert_eq!(at1.tenants, ["a", "c"]);
        assert_eq!(at1.migrations, ["V2__b"]);
    }
}
