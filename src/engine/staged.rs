//! A staged rollout on one cluster: its schemas wave by wave, meeting the other clusters at
//! the gate after each.

use std::collections::HashSet;
use std::time::Instant;

use super::run::RunEnv;
use crate::engine::apply::ApplyCtx;
use crate::engine::events::Event;
use crate::engine::fleet::{run_fleet, Cancel, FleetOpts, FleetOutcome, SchemaJob, Stop};
use crate::engine::waves::{Deciding, Decision, WavePlan};

/// A staged rollout on one cluster: its jobs wave by wave, meeting the other clusters at the
/// gate after each.
pub(super) struct Staged<'a> {
    pub(super) plan: &'a WavePlan,
    pub(super) failed_before: &'a HashSet<String>,
    pub(super) cluster: &'a str,
    pub(super) run_id: i64,
}

impl Staged<'_> {
    pub(super) async fn run(
        &self,
        pool: &deadpool_postgres::Pool,
        ctx: &ApplyCtx<'_>,
        jobs: Vec<SchemaJob>,
        opts: &FleetOpts,
        env: &RunEnv<'_>,
        cancel: &Cancel,
    ) -> FleetOutcome {
        let started = Instant::now();
        let waves = self.plan.waves.len();
        let mut by_wave: Vec<Vec<SchemaJob>> = (0..waves).map(|_| Vec::new()).collect();
        for job in jobs {
            let w = self
                .plan
                .wave_of
                .get(job.tenant.id())
                .copied()
                .unwrap_or(waves - 1);
            by_wave[w].push(job);
        }
        let seat = &self.plan.seat;
        let mut total = FleetOutcome::default();
        let how = Deciding {
            events: &env.events,
            signals: env.signals,
        };
        for (wave, mut wave_jobs) in by_wave.into_iter().enumerate() {
            if total.stopped.is_some() || cancel.stopping() {
                total
                    .not_started
                    .extend(wave_jobs.into_iter().map(|j| j.tenant));
                continue;
            }
            // Failed last time: first this time.
            wave_jobs.sort_by_key(|j| !self.failed_before.contains(j.tenant.id()));
            let worked = !wave_jobs.is_empty();
            if worked {
                env.events.emit(&Event::WaveStarted {
                    wave,
                    waves,
                    tenants: wave_jobs.len(),
                });
            }
            let outcome = run_fleet(pool, ctx, wave_jobs, opts, &env.events, cancel).await;
            let done = outcome.succeeded.len();
            let failed: Vec<String> = outcome
                .failed
                .iter()
                .map(|(t, _)| t.id().to_string())
                .collect();
            total.absorb(outcome);
            if total.stopped.is_some() {
                seat.leave();
                continue;
            }
            let run = (self.cluster.to_string(), self.run_id);
            let failed_here = failed.len();
            let decision = seat.arrive(wave, failed, worked, run, &how).await;
            let (said, reason) = match &decision {
                Decision::Go => ("go", None),
                Decision::Halt(reason) => ("halt", Some(reason.as_str())),
                Decision::Interrupted => ("interrupted", None),
            };
            env.events.emit(&Event::WaveGate {
                wave,
                done,
                failed: failed_here,
                decision: said,
                reason,
            });
            match decision {
                Decision::Go => {}
                Decision::Halt(reason) => total.stopped = Some(Stop::Halted { wave, reason }),
                Decision::Interrupted => {
                    cancel.cancel();
                    total.stopped = Some(Stop::Interrupted);
                    total.interrupted = true;
                }
            }
        }
        total.elapsed = started.elapsed();
        total
    }
}
