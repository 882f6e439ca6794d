//! The README's Quick start, run as written (only the database URL is this suite's) against
//! the throwaway cluster, with `tenantctl` on PATH.

use std::process::Command;

use crate::support::*;

#[test]
fn the_readme_quick_start_works_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- quick-start -->")
        .expect("a quick-start block in the README");
    let block = &readme[start..];
    let begin = block.find("```sh\n").unwrap() + "```sh\n".len();
    let end = begin + block[begin..].find("```").unwrap();
    let url = fresh_db(server(), "quick_start");
    let script: Vec<String> = block[begin..end]
        .lines()
        .map(|l| match l.starts_with("export DATABASE_URL=") {
            true => format!("export DATABASE_URL='{url}'"),
            false => l.to_string(),
        })
        .collect();
    assert!(
        script.iter().any(|l| l.starts_with("tenantctl init")),
        "{script:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("tenantctl");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\n{}", script.join("\n")))
        .current_dir(dir.path())
        .env("PATH", path);
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "the Quick start failed:\n{}\nstdout:\n{}\nstderr:\n{}",
        script.join("\n"),
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("3 registered: 3 up to date"),
        "{}",
        stdout(&out)
    );
    // What it did, in the database.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows = db
        .query("SELECT id, version FROM tenantctl.tenants ORDER BY id", &[])
        .unwrap();
    let got: Vec<(String, Option<i32>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        [
            ("acme".to_string(), Some(2)),
            ("globex".to_string(), Some(2)),
            ("initech".to_string(), Some(2))
        ]
    );
    let has_name: bool = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'tenant_initech' AND table_name = 'users' AND column_name = 'name')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(has_name);
}
