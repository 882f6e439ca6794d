//! The docs stay true, or the build fails: every relative link (and its `#anchor`) in the
//! README, ARCHITECTURE.md and docs/ resolves; every subcommand and flag that `--help` shows is
//! on the commands page; every example command in them parses with the current CLI.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, Parser as _};

use crate::cli::Cli;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every Markdown page: (path, text).
fn pages() -> Vec<(PathBuf, String)> {
    let mut paths = vec![
        Path::new(ROOT).join("README.md"),
        Path::new(ROOT).join("ARCHITECTURE.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a page");
            (p, text)
        })
        .collect()
}

/// The page's lines outside code fences, and the lines of its code blocks apart.
fn split_fences(text: &str) -> (Vec<&str>, Vec<&str>) {
    let (mut prose, mut code) = (Vec::new(), Vec::new());
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if fenced {
            code.push(line);
        } else {
            prose.push(line);
        }
    }
    (prose, code)
}

/// GitHub's anchor for a heading: lower case, only letters, digits, `-`, `_` and spaces kept,
/// spaces made `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in split_fences(text).0 {
        if let Some(h) = line.strip_prefix('#') {
            let base = slug(h.trim_start_matches('#'));
            let mut name = base.clone();
            let mut n = 0;
            while seen.contains(&name) {
                n += 1;
                name = format!("{base}-{n}");
            }
            seen.insert(name);
        }
    }
    seen
}

#[test]
fn every_relative_link_resolves() {
    let pages = pages();
    let mut broken = Vec::new();
    for (path, text) in &pages {
        for line in split_fences(text).0 {
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                let after = &rest[at + 2..];
                let Some(end) = after.find(')') else { break };
                let target = &after[..end];
                rest = &after[end..];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let dest = match file {
                    "" => path.clone(),
                    f => path.parent().unwrap().join(f),
                };
                if !dest.exists() {
                    broken.push(format!("{}: {target}: no such file", path.display()));
                    continue;
                }
                if !anchor.is_empty() && dest.extension().is_some_and(|e| e == "md") {
                    let text = std::fs::read_to_string(&dest).unwrap();
                    if !anchors(&text).contains(anchor) {
                        broken.push(format!("{}: {target}: no such heading", path.display()));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every subcommand (`tenantctl tenant pool fill`) and every flag of each (`--accept-split`).
fn commands_and_flags() -> (Vec<String>, BTreeSet<String>) {
    fn walk(cmd: &clap::Command, path: &str, cmds: &mut Vec<String>, flags: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() {
                continue;
            }
            if let Some(long) = arg.get_long() {
                if !matches!(long, "help" | "version") {
                    flags.insert(format!("--{long}"));
                }
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" || sub.is_hide_set() {
                continue;
            }
            let p = format!("{path} {}", sub.get_name());
            cmds.push(p.clone());
            walk(sub, &p, cmds, flags);
        }
    }
    let (mut cmds, mut flags) = (Vec::new(), BTreeSet::new());
    walk(&Cli::command(), "tenantctl", &mut cmds, &mut flags);
    (cmds, flags)
}

#[test]
fn every_command_and_flag_is_on_the_commands_page() {
    let page = std::fs::read_to_string(Path::new(ROOT).join("docs/commands.md")).unwrap();
    let (cmds, flags) = commands_and_flags();
    let missing: Vec<String> = cmds
        .into_iter()
        .filter(|c| !page.contains(c.as_str()))
        .chain(flags.into_iter().filter(|f| {
            // As a flag, not inside a longer one (`--to` in `--tops`).
            !page.match_indices(f.as_str()).any(|(i, _)| {
                !page[i + f.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        }))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/commands.md does not document: {}",
        missing.join(", ")
    );
}

/// Shell words of an example line: up to a pipe, `&&`, `;`, a redirection or a comment.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, '|' | ';' | '&' | '>' | '#') => break,
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn every_example_command_parses() {
    let mut bad = Vec::new();
    let mut seen = 0;
    for (path, text) in pages() {
        // Lines continued with `\` joined first.
        let mut joined: Vec<String> = Vec::new();
        let mut open = false;
        for line in split_fences(&text).1 {
            let (body, more) = match line.trim_end().strip_suffix('\\') {
                Some(b) => (b, true),
                None => (line, false),
            };
            match (open, joined.last_mut()) {
                (true, Some(last)) => last.push_str(body),
                _ => joined.push(body.to_string()),
            }
            open = more;
        }
        for line in &joined {
            let line = line.trim().trim_start_matches("$ ");
            if !line.starts_with("tenantctl ") || line.contains('<') || line.contains('…') {
                continue;
            }
            let argv = words(line);
            seen += 1;
            match Cli::try_parse_from(&argv) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayHelp
                            | clap::error::ErrorKind::DisplayVersion
                    ) => {}
                Err(e) => bad.push(format!("{}: {line}\n  {}", path.display(), e.kind())),
            }
        }
    }
    assert!(seen >= 25, "only {seen} example commands found");
    assert!(
        bad.is_empty(),
        "examples that do not parse:\n{}",
        bad.join("\n")
    );
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug(" Lint: what `migration check` finds, and what gates"),
        "lint-what-migration-check-finds-and-what-gates"
    );
    assert_eq!(
        words("tenantctl migrate --all --json | jq .ok # x"),
        ["tenantctl", "migrate", "--all", "--json"]
    );
    assert_eq!(
        words("tenantctl tenant label acme 'tier=gold'"),
        ["tenantctl", "tenant", "label", "acme", "tier=gold"]
    );
}
