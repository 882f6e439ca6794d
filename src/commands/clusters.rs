//! Several clusters as one fleet. Every command runs its single-cluster flow on each selected
//! cluster at once (each with its own connection, control schema, fleet lock, ledger and
//! concurrency bound) and returns a [`Done`] instead of printing; [`finish`] prints the
//! clusters' results in config order with an overall line (or one JSON document) and picks
//! the exit code: a cluster that failed as a whole makes the run partial, not the fleet.

use std::fmt::Write as _;

use serde_json::json;

use crate::config::Target;
use crate::exit;
use crate::redact::scrub;
use crate::report::Tally;

use super::Ctx;

/// A cluster's printed result.
pub enum Output {
    Text(String),
    Json(serde_json::Value),
}

/// How a command went on one cluster.
pub struct Done {
    pub code: i32,
    pub out: Output,
    /// The cluster itself failed part way (its server went away mid-run): its remaining
    /// tenants were not worked on. Together with errors, this makes a fleet run partial.
    pub down: bool,
    /// Counts summed over clusters for the overall line, e.g. `(Done(Migrate), 30)`.
    pub counts: Vec<(Tally, usize)>,
}

impl Done {
    pub fn new(code: i32, out: Output) -> Done {
        Done {
            code,
            out,
            down: false,
            counts: Vec::new(),
        }
    }

    /// Text or JSON, as the command was asked.
    pub fn either(json: bool, text: impl FnOnce() -> String, value: serde_json::Value) -> Done {
        Done::new(
            exit::SUCCESS,
            if json {
                Output::Json(value)
            } else {
                Output::Text(text())
            },
        )
    }

    pub fn counts(mut self, counts: Vec<(Tally, usize)>) -> Done {
        self.counts = counts;
        self
    }

    /// Puts a line before the text, or a key into the JSON object.
    pub fn prepend(mut self, line: &str, key: &str, value: serde_json::Value) -> Done {
        match &mut self.out {
            Output::Text(t) => t.insert_str(0, line),
            Output::Json(v) => {
                if let Some(map) = v.as_object_mut() {
                    map.insert(key.to_string(), value);
                }
            }
        }
        self
    }
}

/// One cluster's outcome, in the order the clusters were given.
pub type Results = Vec<(Target, anyhow::Result<Done>)>;

/// Runs `f` on every cluster at once and collects the outcomes in order.
pub async fn each<'a, F, Fut>(clusters: &'a [Target], f: F) -> Results
where
    F: Fn(&'a Target) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Done>> + 'a,
{
    let outcomes = futures::future::join_all(clusters.iter().map(&f)).await;
    clusters.iter().cloned().zip(outcomes).collect()
}

/// In the single `[database]` form, the cluster's error is the command's error (before any
/// check that spans clusters could turn it into a vaguer one).
pub fn single_error<T>(ctx: &Ctx, outcomes: &mut Vec<anyhow::Result<T>>) -> anyhow::Result<()> {
    if !ctx.multi() {
        if let Some(i) = outcomes.iter().position(Result::is_err) {
            return Err(outcomes.swap_remove(i).err().expect("an error"));
        }
    }
    Ok(())
}

/// The clusters whose step failed, each with its error.
pub fn failed_names<T>(clusters: &[Target], outcomes: &[anyhow::Result<T>]) -> Vec<String> {
    clusters
        .iter()
        .zip(outcomes)
        .filter_map(|(s, o)| o.as_ref().err().map(|e| format!("{} ({e:#})", s.name)))
        .collect()
}

/// The exit code of a fleet over several clusters. A cluster whose command failed as a
/// whole (unreachable, busy, stopped mid-run) makes the run partial (4) while any other
/// cluster got through; when every cluster failed that way, their common code (or 1).
pub fn combine(outcomes: &[(i32, bool)]) -> i32 {
    if outcomes.iter().any(|(c, _)| *c == exit::INTERRUPTED) {
        return exit::INTERRUPTED;
    }
    let failed: Vec<i32> = outcomes
        .iter()
        .filter(|(_, whole)| *whole)
        .map(|(c, _)| *c)
        .collect();
    if failed.is_empty() {
        return outcomes
            .iter()
            .map(|(c, _)| *c)
            .max()
            .unwrap_or(exit::SUCCESS);
    }
    if failed.len() < outcomes.len() {
        return exit::PARTIAL;
    }
    if failed.iter().all(|c| *c == failed[0]) {
        failed[0]
    } else {
        exit::FAILED
    }
}

/// Prints the results and returns the exit code. With the single `[database]` form this is
/// exactly the one cluster's output (and its error, if any, goes back to `main`).
pub fn finish(ctx: &Ctx, mut results: Results, json: bool) -> anyhow::Result<i32> {
    if !ctx.multi() {
        let Some((_, result)) = results.pop() else {
            return Ok(exit::SUCCESS);
        };
        let done = result?;
        print_output(&done.out);
        return Ok(done.code);
    }
    let mut codes = Vec::new();
    let mut totals: Vec<(Tally, usize)> = Vec::new();
    let mut text = String::new();
    let mut docs = Vec::new();
    let mut troubled = Vec::new();
    for (s, result) in &results {
        let _ = writeln!(text, "== cluster {} ({}) ==", s.name, s.display_url);
        match result {
            Ok(done) => {
                codes.push((done.code, done.down));
                if done.down {
                    troubled.push(s.name.clone());
                }
                for (k, n) in &done.counts {
                    match totals.iter_mut().find(|(key, _)| key == k) {
                        Some((_, total)) => *total += n,
                        None => totals.push((*k, *n)),
                    }
                }
                match &done.out {
                    Output::Text(t) => text.push_str(t),
                    Output::Json(v) => docs.push(json!({
                        "cluster": s.name, "ok": !done.down, "exit_code": done.code, "result": v,
                    })),
                }
            }
            Err(e) => {
                let code = exit::code_for(e);
                codes.push((code, true));
                troubled.push(s.name.clone());
                let _ = writeln!(text, "error: {e:#}");
                docs.push(json!({
                    "cluster": s.name, "ok": false, "exit_code": code, "error": format!("{e:#}"),
                }));
            }
        }
        text.push('\n');
    }
    let code = combine(&codes);
    if json {
        let mut overall = serde_json::Map::new();
        for (k, n) in &totals {
            overall.insert(k.as_str().replace(' ', "_"), json!(n));
        }
        overall.insert("clusters".into(), json!(results.len()));
        overall.insert("failed_clusters".into(), json!(troubled));
        overall.insert("partial".into(), json!(code == exit::PARTIAL));
        overall.insert("exit_code".into(), json!(code));
        println!(
            "{}",
            scrub(&json!({ "clusters": docs, "overall": overall }).to_string())
        );
        return Ok(code);
    }
    let _ = write!(
        text,
        "overall: {} cluster(s), {} ok",
        results.len(),
        results.len() - troubled.len()
    );
    if !troubled.is_empty() {
        let _ = write!(
            text,
            ", {} failed ({})",
            troubled.len(),
            troubled.join(", ")
        );
    }
    if !totals.is_empty() {
        let parts: Vec<String> = totals
            .iter()
            .map(|(k, n)| format!("{n} {}", k.as_str()))
            .collect();
        let _ = write!(text, "; tenants: {}", parts.join(", "));
    }
    text.push('\n');
    if code == exit::INTERRUPTED {
        let _ = writeln!(
            text,
            "interrupted: the same command again resumes each cluster's run where it stopped"
        );
    }
    if code == exit::PARTIAL {
        let _ = writeln!(
            text,
            "partial: cluster(s) {} did not finish; the others did. Re-run the same command once they are back: finished work is kept and not repeated",
            troubled.join(", ")
        );
    }
    print!("{}", scrub(&text));
    Ok(code)
}

fn print_output(out: &Output) {
    match out {
        Output::Text(t) => print!("{}", scrub(t)),
        Output::Json(v) => println!("{}", scrub(&v.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_over_clusters() {
        use exit::*;
        assert_eq!(combine(&[(SUCCESS, false), (SUCCESS, false)]), SUCCESS);
        assert_eq!(combine(&[(SUCCESS, false), (FAILED, false)]), FAILED);
        assert_eq!(combine(&[(SUCCESS, false), (FAILED, true)]), PARTIAL);
        assert_eq!(combine(&[(FAILED, false), (BUSY, true)]), PARTIAL);
        assert_eq!(combine(&[(FAILED, true), (FAILED, true)]), FAILED);
        assert_eq!(combine(&[(BUSY, true), (BUSY, true)]), BUSY);
        assert_eq!(combine(&[(BUSY, true), (FAILED, true)]), FAILED);
        assert_eq!(
            combine(&[(INTERRUPTED, false), (FAILED, true)]),
            INTERRUPTED
        );
    }
}
