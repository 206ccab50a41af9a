//! The burst simulator behind `spillway simulate`: replays an arrival trace through
//! the real placement engine with simulated backends, and compares the cost and
//! deadline misses of an owned pool plus burst backends with two dedicated clusters
//! that never burst.
//!
//! Scenarios:
//! - **burst**: the pool (`pool_workers`, default the mean-sized cluster) plus the
//!   trace's burst backends.
//! - **peak**: a dedicated pool sized for the peak: the smallest size with no deadline
//!   miss on the trace, found by bisection over simulated runs.
//! - **mean**: a dedicated pool with as many workers as the trace's work needs on
//!   average over the period, rounded up.
//!
//! An owned pool costs its size times its price for the whole period, busy or idle,
//! or until its last task if that is later. A burst worker costs its price from
//! request to exit, start-up included.

mod rng;
pub mod trace;
mod world;

use std::collections::BTreeMap;

use serde::Serialize;

#[allow(unused_imports)]
pub use trace::{BurstSettings, SimCaps, SimSettings, Trace, TraceError, TraceJob, parse};
use world::{Backends, RunOutcome};

/// The result of one simulation: the three scenarios on the same trace.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The time the owned pools are paid for.
    pub period_secs: f64,
    pub jobs: usize,
    pub tasks: u64,
    /// Sum over tasks of the mean task duration, in worker-hours.
    pub work_worker_hours: f64,
    pub burst: ScenarioReport,
    pub peak: ScenarioReport,
    pub mean: ScenarioReport,
    /// 1 minus burst cost over peak cost: 0.5 means half the cost.
    pub saving_vs_peak: f64,
    /// 1 minus burst cost over mean cost.
    pub saving_vs_mean: f64,
}

/// Cost and job outcomes of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// `burst`, `peak` or `mean`.
    pub name: &'static str,
    pub pool_workers: u32,
    pub cost: f64,
    pub pool_cost: f64,
    pub burst_cost: f64,
    pub burst_worker_hours: f64,
    /// Maximum burst workers running or starting at once.
    pub peak_burst_workers: u32,
    /// Share of the paid pool worker-hours in which a pool worker ran.
    pub pool_utilisation: f64,
    /// Jobs that finished after their deadline or not at all.
    pub deadline_misses: u32,
    pub unfinished: u32,
    /// Job completion time (finish minus arrival), nearest-rank percentiles.
    pub completion_p50_secs: f64,
    pub completion_p99_secs: f64,
    pub last_finish_secs: f64,
    pub spot_interruptions: u64,
    pub placement_passes: u64,
    /// Passes in which some job's deadline was at risk.
    pub passes_at_risk: u64,
    /// Workers requested per decision reason.
    pub workers_requested_by_reason: BTreeMap<&'static str, u64>,
}

/// Runs the three scenarios on the trace.
pub fn simulate(trace: &Trace) -> Report {
    let settings = &trace.settings;
    let jobs = &trace.jobs;
    let period_secs = settings.period_secs.unwrap_or_else(|| default_period(jobs));
    let work_secs: f64 = jobs
        .iter()
        .map(|job| job.tasks as f64 * job.task_secs)
        .sum();
    let mean_workers = ((work_secs / period_secs).ceil() as u32).max(1);

    let pool_workers = settings.pool_workers.unwrap_or(mean_workers);
    let burst_backends = Backends {
        pool_workers,
        bursts: &settings.burst,
    };
    let burst = world::run(settings, jobs, &burst_backends);
    let burst = scenario("burst", pool_workers, burst, settings, period_secs);

    let (peak_workers, peak) = smallest_dedicated_without_misses(settings, jobs, mean_workers);
    let peak = scenario("peak", peak_workers, peak, settings, period_secs);
    let mean = world::run(settings, jobs, &dedicated(mean_workers));
    let mean = scenario("mean", mean_workers, mean, settings, period_secs);

    Report {
        period_secs,
        jobs: jobs.len(),
        tasks: jobs.iter().map(|job| job.tasks).sum(),
        work_worker_hours: work_secs / 3600.0,
        saving_vs_peak: 1.0 - burst.cost / peak.cost,
        saving_vs_mean: 1.0 - burst.cost / mean.cost,
        burst,
        peak,
        mean,
    }
}

/// Returns the last arrival or deadline, rounded up to a whole hour.
fn default_period(jobs: &[TraceJob]) -> f64 {
    let end = jobs
        .iter()
        .map(|job| job.arrival_secs + job.deadline_secs.unwrap_or(0.0))
        .fold(0.0, f64::max);
    ((end / 3600.0).ceil() * 3600.0).max(3600.0)
}

fn dedicated(pool_workers: u32) -> Backends<'static> {
    Backends {
        pool_workers,
        bursts: &[],
    }
}

/// Finds the smallest dedicated pool whose run misses no deadline: doubling from the
/// mean size, then bisection. Misses need not fall strictly as the pool grows, so
/// this is the smallest size found, not a proven minimum. If even one worker per task
/// misses, returns that size and its misses.
fn smallest_dedicated_without_misses(
    settings: &SimSettings,
    jobs: &[TraceJob],
    mean_workers: u32,
) -> (u32, RunOutcome) {
    let max_workers = u32::try_from(jobs.iter().map(|job| job.tasks).sum::<u64>())
        .unwrap_or(u32::MAX)
        .max(mean_workers);
    let run = |workers: u32| world::run(settings, jobs, &dedicated(workers));

    let mut missing = 0;
    let mut meeting = mean_workers;
    let mut meeting_outcome = run(meeting);
    while meeting_outcome.deadline_misses > 0 {
        if meeting >= max_workers {
            return (meeting, meeting_outcome);
        }
        missing = meeting;
        meeting = meeting.saturating_mul(2).min(max_workers);
        meeting_outcome = run(meeting);
    }

    while meeting - missing > 1 {
        let middle = missing + (meeting - missing) / 2;
        let outcome = run(middle);
        if outcome.deadline_misses == 0 {
            meeting = middle;
            meeting_outcome = outcome;
        } else {
            missing = middle;
        }
    }
    (meeting, meeting_outcome)
}

fn scenario(
    name: &'static str,
    pool_workers: u32,
    outcome: RunOutcome,
    settings: &SimSettings,
    period_secs: f64,
) -> ScenarioReport {
    let paid_secs = period_secs.max(outcome.last_finish_secs);
    let pool_cost =
        f64::from(pool_workers) * settings.pool_price_per_worker_hour * paid_secs / 3600.0;
    let mut completion = outcome.completion_secs.clone();
    completion.sort_by(f64::total_cmp);
    ScenarioReport {
        name,
        pool_workers,
        cost: pool_cost + outcome.burst_cost,
        pool_cost,
        burst_cost: outcome.burst_cost,
        burst_worker_hours: outcome.burst_worker_secs / 3600.0,
        peak_burst_workers: outcome.peak_burst_workers,
        pool_utilisation: outcome.pool_worker_secs / (f64::from(pool_workers) * paid_secs),
        deadline_misses: outcome.deadline_misses,
        unfinished: outcome.unfinished,
        completion_p50_secs: percentile(&completion, 50.0),
        completion_p99_secs: percentile(&completion, 99.0),
        last_finish_secs: outcome.last_finish_secs,
        spot_interruptions: outcome.interruptions,
        placement_passes: outcome.passes,
        passes_at_risk: outcome.passes_at_risk,
        workers_requested_by_reason: outcome.requests_by_reason,
    }
}

/// Nearest-rank percentile of sorted values; 0 for none.
fn percentile(sorted: &[f64], percent: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests;
