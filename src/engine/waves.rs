//! Staged rollouts: a canary (wave 0), then cumulative waves over the selected tenants, in a
//! stable, spread order (a hash of the id), halting when a wave fails more than allowed or the
//! between-waves command says no. With several clusters a wave spans all of them: each
//! cluster's run works on its share of the wave, then waits at the [`Gate`] for the others;
//! the last to arrive decides for all (failures over the whole wave, the between-waves command,
//! the pause).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::events::{Event, Events};
use crate::exit::UsageError;
use crate::labels::{Labels, Selector};
use crate::signals::Signals;

/// How many failures a wave may have before the rollout halts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Count(usize),
    Percent(f64),
}

impl Limit {
    fn parse(s: &str) -> Result<Limit, String> {
        let bad =
            || format!("--max-failures {s:?}: write a number (2) or a share of the wave (5%)");
        match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .map(Limit::Percent)
                .ok_or_else(bad),
            None => s.trim().parse().map(Limit::Count).map_err(|_| bad()),
        }
    }

    /// Whether `failed` of a wave of `size` is within the limit.
    pub fn allows(self, failed: usize, size: usize) -> bool {
        match self {
            Limit::Count(n) => failed <= n,
            Limit::Percent(p) => (failed as f64) <= (p / 100.0 * size as f64).floor(),
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Where a wave ends: a cumulative share or count of the selected tenants.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mark {
    Percent(f64),
    Count(usize),
}

/// Wave 0.
#[derive(Debug, Clone)]
enum Canary {
    None,
    Count(usize),
    Select(Selector),
}

/// The rollout asked for on the command line.
#[derive(Debug, Clone)]
pub struct WaveSpec {
    canary: Canary,
    marks: Vec<Mark>,
    pub rules: WaveRules,
}

/// What happens between waves.
#[derive(Debug, Clone)]
pub struct WaveRules {
    pub max_failures: Limit,
    pub pause: Option<Duration>,
    pub between: Option<String>,
}

/// The wave options as given (`--canary`, `--canary-select`, `--waves`, `--max-failures`,
/// `--pause`, `--between-waves`).
#[derive(Debug, Clone, Default)]
pub struct WaveOpts {
    pub canary: Option<usize>,
    pub canary_select: Option<String>,
    pub waves: Option<String>,
    pub max_failures: Option<String>,
    pub pause: Option<Duration>,
    pub between_waves: Option<String>,
}

impl WaveSpec {
    /// None when no wave option is given (one wave, as before).
    pub fn parse(o: &WaveOpts) -> Result<Option<WaveSpec>, UsageError> {
        let any = o.canary.is_some()
            || o.canary_select.is_some()
            || o.waves.is_some()
            || o.max_failures.is_some()
            || o.pause.is_some()
            || o.between_waves.is_some();
        if !any {
            return Ok(None);
        }
        let usage = |m: String| UsageError(format!("{m}; nothing was changed"));
        let canary = match (&o.canary, &o.canary_select) {
            (Some(0), _) => {
                return Err(usage(
                    "--canary 0: give at least one tenant, or leave --canary out".into(),
                ))
            }
            (Some(n), _) => Canary::Count(*n),
            (None, Some(s)) => Canary::Select(
                Selector::parse(s).map_err(|e| usage(format!("--canary-select {s:?}: {e}")))?,
            ),
            (None, None) => Canary::None,
        };
        let marks = match &o.waves {
            None => vec![Mark::Percent(100.0)],
            Some(list) => list
                .split(',')
                .map(|w| {
                    let w = w.trim();
                    let parsed = match w.strip_suffix('%') {
                        Some(p) => p
                            .parse::<f64>()
                            .ok()
                            .filter(|p| *p > 0.0 && *p <= 100.0)
                            .map(Mark::Percent),
                        None => w.parse::<usize>().ok().filter(|n| *n > 0).map(Mark::Count),
                    };
                    parsed.ok_or_else(|| {
                        usage(format!(
                            "--waves {list:?}: {w:?} is not a share (10%) or a count (50) of the tenants"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if !matches!(marks.last(), Some(Mark::Percent(p)) if *p == 100.0) {
            return Err(usage(format!(
                "--waves {:?}: the last wave must be 100% (every selected tenant); a rollout that stops short is the same command with --select",
                o.waves.as_deref().unwrap_or_default()
            )));
        }
        let max_failures = match &o.max_failures {
            None => Limit::Count(0),
            Some(s) => Limit::parse(s).map_err(usage)?,
        };
        Ok(Some(WaveSpec {
            canary,
            marks,
            rules: WaveRules {
                max_failures,
                pause: o.pause,
                between: o.between_waves.clone(),
            },
        }))
    }

    /// Assigns the selected tenants (fleet-wide) to waves: the canary first, then the others
    /// in a stable, spread order (a hash of the id). Returns each wave's ids, in that order.
    pub fn assign(&self, tenants: &[(String, Labels)]) -> Result<Vec<Vec<String>>, UsageError> {
        type Ids<'a> = Vec<&'a (String, Labels)>;
        let mut order: Ids<'_> = tenants.iter().collect();
        order.sort_by_key(|(id, _)| (crate::digest::fnv1a(id.bytes()), id.clone()));
        let (canary, rest): (Ids<'_>, Ids<'_>) = match &self.canary {
            Canary::None => (Vec::new(), order),
            Canary::Count(n) => {
                let n = (*n).min(order.len());
                (order[..n].to_vec(), order[n..].to_vec())
            }
            Canary::Select(sel) => order.into_iter().partition(|(_, l)| sel.matches(l)),
        };
        if let (Canary::Select(sel), true) = (&self.canary, canary.is_empty()) {
            return Err(UsageError(format!(
                "--canary-select {sel}: no selected tenant matches it, so there would be no canary; nothing was changed"
            )));
        }
        let total = tenants.len();
        let mut waves: Vec<Vec<String>> = vec![canary.iter().map(|(id, _)| id.clone()).collect()];
        let mut taken = canary.len();
        let mut rest = rest.into_iter();
        for mark in &self.marks {
            let until = match mark {
                Mark::Percent(p) => ((p / 100.0) * total as f64).ceil() as usize,
                Mark::Count(n) => *n,
            }
            .min(total);
            let n = until.saturating_sub(taken);
            waves.push(rest.by_ref().take(n).map(|(id, _)| id.clone()).collect());
            taken += n;
        }
        Ok(waves)
    }
}

/// A staged rollout over clusters: each cluster's tenants in scope (None: the cluster is
/// out) → each one's [`WavePlan`], its seat at one gate taken before any starts, and every
/// wave's tenants fleet-wide. Pooled schemas go with the last wave: no tenant waits on them,
/// and none is created from a pooled schema ahead of the fleet.
#[allow(clippy::type_complexity)]
pub fn stage(
    spec: &WaveSpec,
    clusters: &[Option<Vec<(&crate::tenant::Tenant, &Labels)>>],
) -> Result<(Vec<Option<WavePlan>>, Option<Arc<Vec<Vec<String>>>>), UsageError> {
    let fleet: Vec<(String, Labels)> = clusters
        .iter()
        .flatten()
        .flatten()
        .filter(|(t, _)| !t.is_pooled())
        .map(|(t, l)| (t.id().to_string(), (*l).clone()))
        .collect();
    let waves = Arc::new(spec.assign(&fleet)?);
    let gate = Gate::new(spec.rules.clone(), waves.clone());
    let last = waves.len().saturating_sub(1);
    let plans = clusters
        .iter()
        .map(|c| {
            let c = c.as_ref()?;
            let mine: std::collections::HashSet<&str> = c.iter().map(|(t, _)| t.id()).collect();
            let wave_of = waves
                .iter()
                .enumerate()
                .flat_map(|(w, ids)| {
                    ids.iter()
                        .filter(|id| mine.contains(id.as_str()))
                        .map(move |id| (id.clone(), w))
                })
                .chain(
                    c.iter()
                        .filter(|(t, _)| t.is_pooled())
                        .map(|(t, _)| (t.id().to_string(), last)),
                )
                .collect();
            Some(WavePlan {
                wave_of,
                waves: waves.clone(),
                seat: gate.seat(),
            })
        })
        .collect();
    Ok((plans, Some(waves)))
}

/// A cluster's part of a rollout.
pub struct WavePlan {
    /// The wave of each of this cluster's tenants in scope.
    pub wave_of: HashMap<String, usize>,
    /// Every wave's tenants over the whole fleet.
    pub waves: Arc<Vec<Vec<String>>>,
    /// This cluster's place at the gate, taken before any cluster starts (dropping it, on
    /// any early return, lets the others go on).
    pub seat: Seat,
}

impl WavePlan {
    /// Tenants of this cluster in each wave.
    pub fn sizes_here(&self) -> Vec<i32> {
        let mut sizes = vec![0i32; self.waves.len()];
        for w in self.wave_of.values() {
            sizes[*w] += 1;
        }
        sizes
    }
}

/// What the gate decided after a wave.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Go,
    Halt(String),
    Interrupted,
}

#[derive(Default)]
struct GateState {
    parties: usize,
    arrived: usize,
    failed: Vec<String>,
    worked: bool,
    runs: Vec<(String, i64)>,
    leading: bool,
    decisions: Vec<Decision>,
}

/// Where every cluster's run meets after each wave.
pub struct Gate {
    state: Mutex<GateState>,
    tick: tokio::sync::watch::Sender<u64>,
    rules: WaveRules,
    waves: Arc<Vec<Vec<String>>>,
}

/// One cluster's place at the gate; leaving (dropping it) lets the others go on without it.
pub struct Seat {
    gate: Arc<Gate>,
    left: std::sync::atomic::AtomicBool,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Gate {
    /// A gate with no seats yet: take one per cluster with [`Gate::seat`] before any starts.
    pub fn new(rules: WaveRules, waves: Arc<Vec<Vec<String>>>) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(GateState::default()),
            tick: tokio::sync::watch::channel(0).0,
            rules,
            waves,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.tick.send_modify(|t| *t += 1);
    }

    /// A seat for a cluster whose run takes part.
    pub fn seat(self: &Arc<Gate>) -> Seat {
        self.lock().parties += 1;
        Seat {
            gate: self.clone(),
            left: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn leave(&self) {
        let mut s = self.lock();
        s.parties = s.parties.saturating_sub(1);
        drop(s);
        self.bump();
    }
}

/// What the leader needs to decide.
pub struct Deciding<'a> {
    pub events: &'a Events,
    pub signals: &'a Signals,
}

impl Seat {
    /// This cluster is done with `wave`: its failed tenants, whether it worked on any, and
    /// its run. Waits for every other cluster still running; the last to arrive decides.
    pub async fn arrive(
        &self,
        wave: usize,
        failed: Vec<String>,
        worked: bool,
        run: (String, i64),
        how: &Deciding<'_>,
    ) -> Decision {
        let gate = self.gate.clone();
        let mut rx = gate.tick.subscribe();
        {
            let mut s = gate.lock();
            s.arrived += 1;
            s.failed.extend(failed);
            s.worked |= worked;
            s.runs.push(run);
        }
        gate.bump();
        loop {
            let lead = {
                let mut s = gate.lock();
                if let Some(d) = s.decisions.get(wave) {
                    return d.clone();
                }
                if s.arrived >= s.parties && !s.leading {
                    s.leading = true;
                    Some((
                        std::mem::take(&mut s.failed),
                        s.worked,
                        std::mem::take(&mut s.runs),
                    ))
                } else {
                    None
                }
            };
            if let Some((failed, worked, runs)) = lead {
                let d = gate.decide(wave, failed, worked, &runs, how).await;
                {
                    let mut s = gate.lock();
                    s.decisions.push(d.clone());
                    s.arrived = 0;
                    s.worked = false;
                    s.leading = false;
                }
                gate.bump();
                return d;
            }
            if rx.changed().await.is_err() {
                return Decision::Interrupted;
            }
        }
    }

    /// Leaves the gate for good (the run stopped).
    pub fn leave(&self) {
        if !self.left.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.gate.leave();
        }
    }
}

impl Gate {
    async fn decide(
        &self,
        wave: usize,
        failed: Vec<String>,
        worked: bool,
        runs: &[(String, i64)],
        how: &Deciding<'_>,
    ) -> Decision {
        if how.signals.received().is_some() {
            return Decision::Interrupted;
        }
        let size = self.waves[wave].len();
        let limit = self.rules.max_failures;
        if !limit.allows(failed.len(), size) {
            let mut ids = failed;
            ids.sort();
            let shown: Vec<&str> = ids.iter().take(10).map(String::as_str).collect();
            return Decision::Halt(format!(
                "{} of {size} tenant(s) failed in wave {wave}, more than --max-failures {limit} allows: {}{}",
                ids.len(),
                shown.join(", "),
                crate::lists::and_more(ids.len() - shown.len())
            ));
        }
        let last = wave + 1 == self.waves.len();
        if last || !worked {
            // Nothing to watch after the last wave, or after a wave that had nothing to do
            // (a resumed rollout passing waves that are done).
            return Decision::Go;
        }
        if let Some(cmd) = &self.rules.between {
            match self.between(cmd, wave, runs, how).await {
                Ok(()) => {}
                Err(d) => return d,
            }
        }
        if let Some(pause) = self.rules.pause {
            return pause_before(wave + 1, pause, how).await;
        }
        Decision::Go
    }

    /// Runs the between-waves command; Err with the decision when it says no (or a signal).
    async fn between(
        &self,
        cmd: &str,
        wave: usize,
        runs: &[(String, i64)],
        how: &Deciding<'_>,
    ) -> Result<(), Decision> {
        let file = std::env::temp_dir().join(format!(
            "tenantctl-wave-{}-{wave}-{}.txt",
            std::process::id(),
            runs.first().map_or(0, |r| r.1)
        ));
        let ids = self.waves[wave].join("\n") + "\n";
        if let Err(e) = std::fs::write(&file, ids) {
            return Err(Decision::Halt(format!(
                "could not write the wave's tenant list {} for --between-waves: {e}",
                file.display()
            )));
        }
        let run_id = match runs {
            [(_, id)] => id.to_string(),
            many => many
                .iter()
                .map(|(c, id)| format!("{c}:{id}"))
                .collect::<Vec<_>>()
                .join(","),
        };
        how.events.emit(&Event::Info {
            message: &format!("wave {wave} done; running --between-waves: {cmd}"),
        });
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("TENANTCTL_WAVE", wave.to_string())
            .env("TENANTCTL_RUN_ID", run_id)
            .env("TENANTCTL_TENANTS_FILE", &file)
            .stdin(std::process::Stdio::null())
            // Its output is for people: stderr, never into a --json document.
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .kill_on_drop(true)
            .spawn();
        let result = match child {
            Err(e) => Err(Decision::Halt(format!(
                "the --between-waves command could not be started: {e}"
            ))),
            Ok(mut child) => {
                tokio::select! {
                    status = child.wait() => match status {
                        Ok(s) if s.success() => Ok(()),
                        Ok(s) => Err(Decision::Halt(format!(
                            "the --between-waves command exited with {} after wave {wave}",
                            s.code().map_or("a signal".to_string(), |c| format!("status {c}"))
                        ))),
                        Err(e) => Err(Decision::Halt(format!("the --between-waves command failed: {e}"))),
                    },
                    _ = wait_for_signal(how.signals) => Err(Decision::Interrupted),
                }
            }
        };
        let _ = std::fs::remove_file(&file);
        result
    }
}

/// Waits `pause` before `next`, saying so (a countdown on a terminal); a signal ends it.
async fn pause_before(next: usize, pause: Duration, how: &Deciding<'_>) -> Decision {
    let start = tokio::time::Instant::now();
    loop {
        let left = pause.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Decision::Go;
        }
        how.events.emit(&Event::Pausing {
            next_wave: next,
            left,
        });
        tokio::select! {
            _ = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
            _ = wait_for_signal(how.signals) => return Decision::Interrupted,
        }
    }
}

async fn wait_for_signal(signals: &Signals) {
    signals.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(canary: Option<usize>, waves: &str) -> WaveSpec {
        WaveSpec::parse(&WaveOpts {
            canary,
            waves: Some(waves.into()),
            ..WaveOpts::default()
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn waves_are_cumulative_stable_and_spread() {
        let tenants: Vec<(String, Labels)> = (0..300)
            .map(|i| (format!("t{i:04}"), Labels::new()))
            .collect();
        let w = spec(Some(5), "10%,50%,100%").assign(&tenants).unwrap();
        let sizes: Vec<usize> = w.iter().map(Vec::len).collect();
        assert_eq!(sizes, [5, 25, 120, 150]);
        // Every tenant once; the same every time; not in id order.
        let mut all: Vec<&String> = w.iter().flatten().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 300);
        assert_eq!(w, spec(Some(5), "10%,50%,100%").assign(&tenants).unwrap());
        assert_ne!(w[0], ["t0000", "t0001", "t0002", "t0003", "t0004"]);
        // Counts, and a canary by label.
        let w = spec(None, "100,100%").assign(&tenants).unwrap();
        assert_eq!(w.iter().map(Vec::len).collect::<Vec<_>>(), [0, 100, 200]);
        let labelled: Vec<(String, Labels)> = (0..10)
            .map(|i| {
                let mut l = Labels::new();
                if i % 5 == 0 {
                    l.insert("canary".into(), "true".into());
                }
                (format!("t{i}"), l)
            })
            .collect();
        let s = WaveSpec::parse(&WaveOpts {
            canary_select: Some("canary=true".into()),
            ..WaveOpts::default()
        })
        .unwrap()
        .unwrap();
        let w = s.assign(&labelled).unwrap();
        let mut canary = w[0].clone();
        canary.sort();
        assert_eq!(canary, ["t0", "t5"]);
        assert_eq!(w[1].len(), 8);
    }

    #[test]
    fn bad_wave_options_are_usage_errors() {
        let bad = |o: WaveOpts| WaveSpec::parse(&o).unwrap_err().0;
        assert!(bad(WaveOpts {
            waves: Some("10%,50%".into()),
            ..WaveOpts::default()
        })
        .contains("the last wave must be 100%"));
        assert!(bad(WaveOpts {
            waves: Some("10%,x".into()),
            ..WaveOpts::default()
        })
        .contains("\"x\" is not a share"));
        assert!(bad(WaveOpts {
            max_failures: Some("lots".into()),
            ..WaveOpts::default()
        })
        .contains("--max-failures"));
        assert!(WaveSpec::parse(&WaveOpts::default()).unwrap().is_none());
    }

    #[test]
    fn limits() {
        assert!(Limit::Count(0).allows(0, 10));
        assert!(!Limit::Count(0).allows(1, 10));
        assert!(Limit::Percent(10.0).allows(1, 10));
        assert!(!Limit::Percent(10.0).allows(2, 10));
        assert!(!Limit::Percent(5.0).allows(1, 10));
    }
}
