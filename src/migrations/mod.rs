//! Reads the migration directory strictly. refinery's own loader skips misnamed files
//! silently and panics on some names; here every `.sql` file must be `V<n>__<name>.sql`
//! or its companion `V<n>__<name>.down.sql`, and any problem stops the command before
//! any database work, naming the file.

pub mod lint;
pub mod risks;
pub mod rules;
pub mod scan;
mod session;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use refinery::Migration;

/// A migration-set problem. Always exit code 2: nothing was touched.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MigrationSetError(pub String);

/// One versioned migration: the up script and, when present, its down companion. The up
/// script's text is held once, inside its refinery `Migration` (which also gives the
/// checksum the history table records).
#[derive(Debug, Clone)]
pub struct MigrationFile {
    pub version: i32,
    pub name: String,
    pub path: PathBuf,
    pub migration: Migration,
    /// The up script runs outside a transaction (`-- tenantctl:no-transaction`).
    pub no_transaction: bool,
    pub down: Option<(PathBuf, String)>,
}

/// The first line that makes a file a no-transaction migration.
pub const NO_TRANSACTION: &str = "-- tenantctl:no-transaction";

/// Whether a script's first line is [`NO_TRANSACTION`] (trailing blanks allowed).
pub fn is_no_transaction(sql: &str) -> bool {
    sql.lines()
        .next()
        .is_some_and(|l| l.trim_end() == NO_TRANSACTION)
}

impl MigrationFile {
    /// `V7__add_invoices`, the way refinery and the history table name it.
    pub fn label(&self) -> String {
        format!("V{}__{}", self.version, self.name)
    }

    /// The up script.
    pub fn sql(&self) -> &str {
        self.migration.sql().unwrap_or_default()
    }

    /// Whether the down script runs outside a transaction.
    pub fn down_no_transaction(&self) -> bool {
        self.down
            .as_ref()
            .is_some_and(|(_, sql)| is_no_transaction(sql))
    }
}

/// The whole migration set, sorted by version.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    pub dir: PathBuf,
    files: Vec<MigrationFile>,
    digest: String,
}

#[derive(Debug, PartialEq, Eq)]
struct ParsedName {
    version: i32,
    name: String,
    down: bool,
}

const NAME_RULE: &str =
    "migration files must be named V<version>__<name>.sql (or V<version>__<name>.down.sql for a rollback script), where <version> is a number and <name> uses letters, digits and underscores";

fn parse_file_name(file_name: &str) -> Result<ParsedName, String> {
    let (stem, down) = if let Some(s) = file_name.strip_suffix(".down.sql") {
        (s, true)
    } else if let Some(s) = file_name.strip_suffix(".sql") {
        (s, false)
    } else {
        return Err(NAME_RULE.to_string());
    };
    let Some(rest) = stem.strip_prefix('V') else {
        let hint = if stem.starts_with('U') || stem.starts_with('R') {
            " (unversioned and repeatable migrations are not supported)"
        } else {
            ""
        };
        return Err(format!("{NAME_RULE}{hint}"));
    };
    let Some((digits, name)) = rest.split_once("__") else {
        return Err(NAME_RULE.to_string());
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{NAME_RULE} (version {digits:?} is not a whole number)"
        ));
    }
    let version: i32 = digits
        .parse()
        .map_err(|_| format!("version {digits} is too large (at most {})", i32::MAX))?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("{NAME_RULE} (name {name:?} is not allowed)"));
    }
    Ok(ParsedName {
        version,
        name: name.to_string(),
        down,
    })
}

fn read_sql(path: &Path) -> Result<String, MigrationSetError> {
    let bytes = std::fs::read(path)
        .map_err(|e| MigrationSetError(format!("cannot read migration {}: {e}", path.display())))?;
    let sql = String::from_utf8(bytes).map_err(|e| {
        MigrationSetError(format!(
            "migration {} is not valid UTF-8 (invalid byte at offset {}); save it as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    // A byte-order mark (some Windows editors write one) is not SQL: PostgreSQL would read
    // it as part of the first word.
    let sql = match sql.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => sql,
    };
    if sql.trim().is_empty() {
        return Err(MigrationSetError(format!(
            "migration {} is empty; put SQL in it or delete it",
            path.display()
        )));
    }
    Ok(sql)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// True when `dir` (recursively) holds any `.sql` file.
fn holds_sql(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            holds_sql(&p)
        } else {
            p.extension().is_some_and(|x| x == "sql")
        }
    })
}

/// The highest version among the files in `dir` whose names follow the rule (the others, and
/// anything else wrong with the set, are `migration check`'s to report). None: no migration.
pub fn highest_version(dir: &Path) -> Result<Option<i32>, MigrationSetError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        MigrationSetError(format!(
            "cannot read migrations directory {}: {e}; `tenantctl init` creates it",
            dir.display()
        ))
    })?;
    Ok(entries
        .flatten()
        .filter_map(|e| parse_file_name(&e.file_name().to_string_lossy()).ok())
        .map(|p| p.version)
        .max())
}

impl MigrationSet {
    /// Reads and validates every migration in `dir`.
    pub fn load(dir: &Path) -> Result<MigrationSet, MigrationSetError> {
        MigrationSet::load_skipping(dir, None)
    }

    /// Like [`MigrationSet::load`], but the subfolder `skip` (the shared migrations, which
    /// live in `migrations/shared/` by default) is not part of this set.
    pub fn load_skipping(
        dir: &Path,
        skip: Option<&Path>,
    ) -> Result<MigrationSet, MigrationSetError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            MigrationSetError(format!(
                "cannot read migrations directory {}: {e}; set [migrations] dir in the config (relative to the config file)",
                dir.display()
            ))
        })?;
        let mut ups: BTreeMap<i32, MigrationFile> = BTreeMap::new();
        let mut downs: BTreeMap<i32, (String, PathBuf, String)> = BTreeMap::new();
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if file_name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                if skip.is_some_and(|skip| same_dir(skip, &path)) {
                    continue;
                }
                if holds_sql(&path) {
                    return Err(MigrationSetError(format!(
                        "{} is a subfolder holding .sql files; tenantctl reads migrations only from the top level of {}: move them up or out",
                        path.display(),
                        dir.display()
                    )));
                }
                continue;
            }
            let is_sql = path
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("sql"));
            if !is_sql {
                continue; // READMEs and the like are fine beside the migrations
            }
            let parsed = parse_file_name(&file_name)
                .map_err(|e| MigrationSetError(format!("{}: {e}", path.display())))?;
            let sql = read_sql(&path)?;
            if parsed.down {
                if let Some((_, other, _)) = downs.get(&parsed.version) {
                    return Err(duplicate(parsed.version, other, &path));
                }
                downs.insert(parsed.version, (parsed.name, path, sql));
            } else {
                if let Some(other) = ups.get(&parsed.version) {
                    return Err(duplicate(parsed.version, &other.path, &path));
                }
                let label = format!("V{}__{}", parsed.version, parsed.name);
                // refinery keeps its own copy; ours is dropped here, so the text is held once.
                let migration = Migration::unapplied(&label, &sql).map_err(|e| {
                    MigrationSetError(format!("{}: refinery refused it: {e}", path.display()))
                })?;
                let no_transaction = is_no_transaction(&sql);
                drop(sql);
                ups.insert(
                    parsed.version,
                    MigrationFile {
                        version: parsed.version,
                        name: parsed.name,
                        path,
                        migration,
                        no_transaction,
                        down: None,
                    },
                );
            }
        }
        for (version, (name, path, sql)) in downs {
            match ups.get_mut(&version) {
                Some(up) if up.name == name => up.down = Some((path, sql)),
                Some(up) => {
                    return Err(MigrationSetError(format!(
                        "{}: rollback script does not match its migration {} (names differ); rename it to {}.down.sql",
                        path.display(),
                        up.path.display(),
                        up.label()
                    )))
                }
                None => {
                    return Err(MigrationSetError(format!(
                        "{}: rollback script without a migration V{version}__{name}.sql; add the migration or delete the script",
                        path.display()
                    )))
                }
            }
        }
        let files: Vec<MigrationFile> = ups.into_values().collect();
        let digest = digest(&files);
        Ok(MigrationSet {
            dir: dir.to_path_buf(),
            files,
            digest,
        })
    }

    /// A set with no migrations (for commands that do not need the files, like drop).
    pub fn empty(dir: &Path) -> MigrationSet {
        MigrationSet {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            digest: digest(&[]),
        }
    }

    pub fn files(&self) -> &[MigrationFile] {
        &self.files
    }

    /// The highest version on disk.
    pub fn latest(&self) -> Option<i32> {
        self.files.last().map(|f| f.version)
    }

    pub fn get(&self, version: i32) -> Option<&MigrationFile> {
        self.files
            .binary_search_by_key(&version, |f| f.version)
            .ok()
            .map(|i| &self.files[i])
    }

    /// How many migrations on disk are above `version` (all of them for `None`), up to `target`.
    pub fn pending_count(&self, version: Option<i32>, target: Option<i32>) -> usize {
        self.files
            .iter()
            .filter(|f| version.is_none_or(|v| f.version > v))
            .filter(|f| target.is_none_or(|t| f.version <= t))
            .count()
    }

    /// (version, name, checksum as the history table records it) of every file, in order.
    pub fn checksums(&self) -> Vec<(i32, String, String)> {
        self.files
            .iter()
            .map(|f| {
                (
                    f.version,
                    f.name.clone(),
                    f.migration.checksum().to_string(),
                )
            })
            .collect()
    }

    /// A short fingerprint of the whole set (versions, names, contents), recorded per run.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The digest of the files up to `version` (as [`MigrationSet::digest`] of that set).
    pub fn digest_upto(&self, version: Option<i32>) -> String {
        let upto = self
            .files
            .iter()
            .take_while(|f| version.is_some_and(|v| f.version <= v))
            .count();
        digest(&self.files[..upto])
    }

    /// `V7__add_invoices` for a version, or `V7` when no file has it.
    pub fn label(&self, version: i32) -> String {
        self.get(version)
            .map(MigrationFile::label)
            .unwrap_or_else(|| format!("V{version}"))
    }
}

/// `V7`, or `none` when nothing is applied.
pub fn version_label(version: Option<i32>) -> String {
    version.map_or("none".into(), |v| format!("V{v}"))
}

fn duplicate(version: i32, a: &Path, b: &Path) -> MigrationSetError {
    MigrationSetError(format!(
        "duplicate migration version {version}: {} and {}; give one of them a new version",
        a.display(),
        b.display()
    ))
}

/// A fingerprint of refinery's per-migration versions and checksums.
fn digest(files: &[MigrationFile]) -> String {
    crate::digest::fnv1a_hex(files.iter().flat_map(|f| {
        (f.migration.version() as i64)
            .to_le_bytes()
            .into_iter()
            .chain(f.migration.checksum().to_le_bytes())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        let p = parse_file_name("V12__add_invoices.sql").unwrap();
        assert_eq!(
            (p.version, p.name.as_str(), p.down),
            (12, "add_invoices", false)
        );
        let p = parse_file_name("V3__x.down.sql").unwrap();
        assert_eq!((p.version, p.down), (3, true));
        for bad in [
            "v1__x.sql",
            "V1_x.sql",
            "V__x.sql",
            "Vx__y.sql",
            "V1__.sql",
            "V1__a-b.sql",
            "V1__a.b.sql",
            "U1__x.sql",
            "V99999999999__x.sql",
            "1__x.sql",
            "V1.5__x.sql",
        ] {
            assert!(parse_file_name(bad).is_err(), "{bad} must be refused");
        }
    }

    fn set(files: &[(&str, &str)]) -> Result<MigrationSet, MigrationSetError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, sql) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, sql).unwrap();
        }
        MigrationSet::load(dir.path())
    }

    #[test]
    fn loads_sorted_with_downs() {
        let s = set(&[
            ("V10__ten.sql", "select 10;"),
            ("V2__two.sql", "select 2;"),
            ("V2__two.down.sql", "select -2;"),
            ("README.md", "notes"),
        ])
        .unwrap();
        let versions: Vec<i32> = s.files().iter().map(|f| f.version).collect();
        assert_eq!(versions, [2, 10]);
        assert!(s.get(2).unwrap().down.is_some());
        assert_eq!(s.latest(), Some(10));
        assert_eq!(s.pending_count(Some(2), None), 1);
        assert_eq!(s.pending_count(None, None), 2);
        assert_eq!(s.pending_count(None, Some(5)), 1);
    }

    #[test]
    fn refuses_bad_sets() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("V1__a.sql", "x"), ("V01__b.sql", "y")],
                "duplicate migration version 1",
            ),
            (&[("V1__a.sql", "x"), ("V1_b.sql", "y")], "V1_b.sql"),
            (&[("V1__a.sql", "  \n")], "is empty"),
            (&[("V1__a.sql", "x"), ("sub/V2__b.sql", "y")], "subfolder"),
            (&[("V1__a.down.sql", "x")], "without a migration"),
            (
                &[("V1__a.sql", "x"), ("V1__b.down.sql", "x")],
                "names differ",
            ),
        ];
        for (files, expect) in cases {
            let e = set(files).unwrap_err();
            assert!(e.0.contains(expect), "{files:?}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("V1__bin.sql"), [0xff, 0xfe, b'x']).unwrap();
        let e = MigrationSet::load(dir.path()).unwrap_err();
        assert!(e.0.contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn digest_changes_with_content() {
        let a = set(&[("V1__a.sql", "select 1;")]).unwrap();
        let b = set(&[("V1__a.sql", "select 2;")]).unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(
            a.digest(),
            set(&[("V1__a.sql", "select 1;")]).unwrap().digest()
        );
    }
}
