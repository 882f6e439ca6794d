//! Several clusters as one fleet. Every command runs its single-cluster flow on each selected
//! cluster at once (each with its own connection, control schema, fleet lock, ledger and
//! concurrency bound) and returns a [`Done`] instead of printing; [`finish`] prints the
//! clusters' results in config order with an overall line (or one JSON document) and picks
//! the exit code: a cluster that failed as a whole makes the run partial, not the fleet.

use std::fmt::Write as _;

use crate::config::Target;
use crate::exit;
use crate::output::Out;
use crate::report::json::{document, framed, with_cluster, ClusterResult, Part};
use crate::report::Tally;

use super::listing::Listing;
use super::Ctx;

/// How a command went on one cluster: its text for people and its share of the JSON
/// document (see `report::json`), both built, one printed.
pub struct Done {
    pub code: i32,
    pub text: String,
    pub json: Part,
    /// The cluster itself failed part way (its server went away mid-run): its remaining
    /// tenants were not worked on. Together with errors, this makes a fleet run partial.
    pub down: bool,
    /// Counts summed over clusters for the overall line, e.g. `(Done(Migrate), 30)`.
    pub counts: Vec<(Tally, usize)>,
    /// Rows printed as they are read, after `text` (or into the document's list), then `tail`.
    pub listing: Option<Listing>,
    pub tail: String,
}

impl Done {
    pub fn new(code: i32, text: String, json: Part) -> Done {
        Done {
            code,
            text,
            json,
            down: false,
            counts: Vec::new(),
            listing: None,
            tail: String::new(),
        }
    }

    /// Rows read as they are printed: lines between the text and `tail`, or the items of the
    /// document's list the listing names (left empty in the part).
    pub fn listing(mut self, listing: Listing, tail: String) -> Done {
        self.listing = Some(listing);
        self.tail = tail;
        self
    }

    /// The counts of the overall line, which are the document's `counts` too.
    pub fn counts(mut self, counts: Vec<(Tally, usize)>) -> Done {
        for (tally, n) in &counts {
            self.json.counts.push((tally.key(), *n as i64));
        }
        self.counts = counts;
        self
    }

    /// Puts a line before the text, and a field into the cluster's JSON entry.
    pub fn prepend(mut self, line: &str, key: &str, value: serde_json::Value) -> Done {
        self.text.insert_str(0, line);
        self.json.cluster.insert(key.into(), value);
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

/// In the single `[database]` form, the cluster's error is the command's error.
pub fn single_error<T>(ctx: &Ctx, outcomes: &mut Vec<anyhow::Result<T>>) -> anyhow::Result<()> {
    crate::engine::checks::single_error(ctx.multi(), outcomes)
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

/// [`finish`] over the selected clusters where `outcomes` (one per cluster, in order) has a
/// result: a cluster with nothing to do for the command is left out.
pub async fn finish_some(
    ctx: &Ctx,
    outcomes: Vec<Option<anyhow::Result<Done>>>,
    json: bool,
) -> anyhow::Result<i32> {
    let results = ctx
        .targets
        .iter()
        .cloned()
        .zip(outcomes)
        .filter_map(|(s, o)| o.map(|o| (s, o)))
        .collect();
    finish(ctx, results, json).await
}

/// Prints the results and returns the exit code: with `json`, one document (the same shape
/// for one database and for several clusters); else the text, with one section per cluster
/// and an overall line when the config names clusters. With the single `[database]` form, its
/// error (if any) goes back to `main`. Listings are printed as they are read.
pub async fn finish(ctx: &Ctx, results: Results, json: bool) -> anyhow::Result<i32> {
    if !ctx.multi() {
        if let Some((_, Err(_))) = results.first() {
            let (_, err) = results.into_iter().next().expect("one");
            return Err(err.err().expect("an error"));
        }
    }
    let codes: Vec<(i32, bool)> = results
        .iter()
        .map(|(_, r)| match r {
            Ok(done) => (done.code, done.down),
            Err(e) => (exit::code_for(e), true),
        })
        .collect();
    let code = match (ctx.multi(), results.first()) {
        (false, Some((_, Ok(done)))) => done.code,
        (false, _) => exit::SUCCESS,
        (true, _) => combine(&codes),
    };
    let mut out = Out::new();
    let printed = if json {
        print_document(&mut out, results, &codes, code).await
    } else {
        print_text(&mut out, ctx, results, &codes, code).await
    };
    match printed {
        Ok(()) => Ok(code),
        // Part of the output is out: what follows it cannot be an error document.
        Err(e) => {
            drop(out);
            crate::output::stderr_line(&format!(
                "error: {e:#}\nthe output above stops where the connection was lost{}",
                if json {
                    ": it is not a whole JSON document"
                } else {
                    ""
                }
            ));
            Ok(exit::code_for(&e))
        }
    }
}

/// One document; a listing's rows go into its list as they are read.
async fn print_document(
    out: &mut Out,
    mut results: Results,
    codes: &[(i32, bool)],
    code: i32,
) -> anyhow::Result<()> {
    let mut listings = Vec::new();
    let parts: Vec<ClusterResult<'_>> = results
        .iter_mut()
        .zip(codes)
        .map(|((t, r), (c, _))| {
            if let Ok(done) = r {
                listings.extend(done.listing.take().map(|l| (t.name.clone(), l)));
            }
            ClusterResult {
                name: &t.name,
                code: *c,
                outcome: r
                    .as_mut()
                    .map(|d| std::mem::take(&mut d.json))
                    .map_err(|e| &*e),
            }
        })
        .collect();
    let doc = document(parts, code);
    let framed = listings
        .iter()
        .find_map(|(_, l)| l.json_key())
        .and_then(|key| framed(&doc, key));
    let Some((head, tail)) = framed else {
        out.write(&format!("{doc}\n"));
        return Ok(());
    };
    drop(doc);
    out.write(&head);
    let mut first = true;
    for (name, listing) in &listings {
        listing
            .each(|row| {
                if !std::mem::take(&mut first) {
                    out.write(",");
                }
                out.write(&with_cluster(name, listing.json(row)).to_string());
                !out.closed()
            })
            .await?;
    }
    out.write(&tail);
    out.write("\n");
    Ok(())
}

/// A cluster's text: its text, its listing's lines as they are read, its tail.
async fn print_done(out: &mut Out, done: &Done) -> anyhow::Result<()> {
    out.write(&done.text);
    if let Some(listing) = &done.listing {
        listing
            .each(|row| {
                out.write(&listing.line(row));
                !out.closed()
            })
            .await?;
    }
    out.write(&done.tail);
    Ok(())
}

/// The text: one cluster's as it is, or a section per cluster and the overall line.
async fn print_text(
    out: &mut Out,
    ctx: &Ctx,
    results: Results,
    codes: &[(i32, bool)],
    code: i32,
) -> anyhow::Result<()> {
    if !ctx.multi() {
        if let Some((_, Ok(done))) = results.first() {
            print_done(out, done).await?;
        }
        return Ok(());
    }
    let mut totals: Vec<(Tally, usize)> = Vec::new();
    let mut troubled = Vec::new();
    for ((t, result), (_, whole)) in results.iter().zip(codes) {
        out.write(&format!("== cluster {} ({}) ==\n", t.name, t.display_url));
        if *whole {
            troubled.push(t.name.clone());
        }
        match result {
            Ok(done) => {
                for (k, n) in &done.counts {
                    match totals.iter_mut().find(|(key, _)| key == k) {
                        Some((_, total)) => *total += n,
                        None => totals.push((*k, *n)),
                    }
                }
                print_done(out, done).await?;
            }
            Err(e) => out.write(&format!("error: {e:#}\n")),
        }
        out.write("\n");
    }
    let mut text = String::new();
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
        // As in each cluster's line: the first count and failures always, the rest when any.
        let parts: Vec<String> = totals
            .iter()
            .enumerate()
            .filter(|(i, (k, n))| *i == 0 || *n > 0 || *k == Tally::Failed)
            .map(|(_, (k, n))| format!("{n} {}", k.as_str()))
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
    out.write(&text);
    Ok(())
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
