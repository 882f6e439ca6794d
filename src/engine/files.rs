//! Every migration file on disk against what the whole fleet applied, before any change: a
//! file edited after tenants applied it, a file deleted that tenants applied, a new file
//! below the fleet's version. Read from the control schema in one small query (see
//! [`crate::control::FileCheck`]) in the round trip a command already makes, so every
//! command sees it for every tenant, not only for the tenants it has work on.

use crate::control::{Changed, FileCheck};
use crate::db::Session;
use crate::exit::UsageError;
use crate::migrations::MigrationSet;

/// The check on one cluster (on a control schema not yet this version's, which read-only
/// commands do not upgrade: nothing to compare with yet).
pub async fn check(session: &Session<'_>, migrations: &MigrationSet) -> anyhow::Result<FileCheck> {
    if !session.control.is_current(&session.client).await? {
        return Ok(FileCheck::default());
    }
    session
        .control
        .file_check(&session.client, &migrations.checksums())
        .await
}

/// Refuses (exit 2, before any change) what [`check`] found, every problem named with its
/// way out.
pub fn refuse(migrations: &MigrationSet, found: &FileCheck) -> anyhow::Result<()> {
    let lines = problems(migrations, found);
    match lines.as_slice() {
        [] => Ok(()),
        [one] => Err(UsageError(format!("{one}; nothing was changed")).into()),
        many => Err(UsageError(format!(
            "the migration files disagree with what the fleet applied ({} problems); nothing was changed:\n  {}",
            many.len(),
            many.join("\n  ")
        ))
        .into()),
    }
}

/// [`check`] then [`refuse`].
pub async fn refuse_unfaithful(
    session: &Session<'_>,
    migrations: &MigrationSet,
) -> anyhow::Result<()> {
    refuse(migrations, &check(session, migrations).await?)
}

/// Each problem in words, with what to do: out-of-order files, changed files, missing files.
pub fn problems(migrations: &MigrationSet, found: &FileCheck) -> Vec<String> {
    let mut out = Vec::new();
    if !found.late.is_empty() {
        let files: Vec<String> = found
            .late
            .iter()
            .map(|(v, n)| format!("V{v}__{n}"))
            .collect();
        let next = migrations.latest().map_or(1, |v| v + 1);
        out.push(format!(
            "out of order: {} {} new, but tenants are already past {} (their versions only go up: this would be skipped on them, silently). Give it a version above the latest, e.g. V{next}__{}",
            files.join(", "),
            if files.len() == 1 { "is" } else { "are" },
            if files.len() == 1 { "it" } else { "them" },
            found.late[0].1
        ));
    }
    out.extend(found.changed.iter().map(|c| changed_text(migrations, c)));
    out.extend(found.missing.iter().map(|(v, name, n)| {
        let path = migrations.dir.join(format!("V{v}__{name}.sql"));
        format!(
            "{} is missing: {n} tenant(s) applied V{v}, and a migration applied in the fleet stays in the files; restore it (git checkout -- {})",
            path.display(),
            path.display()
        )
    }));
    out
}

/// `V7__x.sql changed after 50 tenant(s) applied it (checksum 1234… then, 5678… now): …`.
pub fn changed_text(migrations: &MigrationSet, c: &Changed) -> String {
    let Some(file) = migrations.get(c.version) else {
        return format!("V{} changed", c.version);
    };
    let now = file.migration.checksum().to_string();
    let then: Vec<&(String, i64)> = c.forms.iter().filter(|f| f.0 != now).collect();
    let then_text = match then.as_slice() {
        [one] => format!("checksum {} then", short(&one.0)),
        more => format!(
            "checksums {} then",
            more.iter()
                .map(|(sum, n)| format!("{} on {n}", short(sum)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let current = c.forms.iter().find(|f| f.0 == now).map_or(0, |f| f.1);
    let now_text = match current {
        0 => format!("{} now", short(&now)),
        n => format!("{} now, which {n} tenant(s) ran", short(&now)),
    };
    let path = file.path.display();
    let split = if then.len() + usize::from(current > 0) > 1 {
        format!(
            "; the fleet ran V{} in {} different forms, which `tenantctl repair --accept {}` shows and will not merge",
            c.version,
            then.len() + usize::from(current > 0),
            c.version
        )
    } else {
        String::new()
    };
    format!(
        "{path} changed after {} tenant(s) applied it ({then_text}, {now_text}): restore it (git checkout -- {path}), or put the change in a new migration; if the edit changes nothing (a comment, whitespace), tenantctl repair --accept {}{split}",
        c.other_than(&now),
        c.version
    )
}

/// A checksum as shown: its first 8 digits.
pub fn short(checksum: &str) -> String {
    match checksum.char_indices().nth(8) {
        Some((at, _)) => format!("{}…", &checksum[..at]),
        None => checksum.to_string(),
    }
}
