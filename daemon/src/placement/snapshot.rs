//! The engine's input, a [`Snapshot`], and its output, a [`Plan`].

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::reason::Reason;

/// Observed state at one instant. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The instant the snapshot describes; the engine reads no clock.
    pub now: f64,
    /// Jobs with tasks left, in any order.
    pub jobs: Vec<JobSnapshot>,
    pub backends: Vec<BackendSnapshot>,
    pub caps: Caps,
}

/// One job with tasks left.
#[derive(Debug, Clone)]
pub struct JobSnapshot {
    pub job_id: String,
    /// Tasks queued or leased.
    pub tasks_left: u64,
    /// Tasks waiting for a worker.
    pub queued: u64,
    /// Estimated time one worker takes per task, in seconds.
    pub task_secs: f64,
    /// Time by which the job should finish.
    pub deadline: Option<f64>,
    /// Time the job was admitted; older jobs are placed first within a priority.
    pub admitted_at: f64,
    /// Time the oldest queued task was queued.
    pub oldest_queued_at: Option<f64>,
    /// Higher is placed first.
    pub priority: i64,
    /// Maximum workers of this job over all backends, if capped.
    pub max_workers: Option<u32>,
}

/// Pool backends run on capacity that is already paid for; burst backends rent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Slurm or local processes.
    Pool,
    /// AWS Batch.
    Burst,
}

/// A job's workers on one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCount {
    /// Workers the backend shows as running.
    pub running: u32,
    /// Workers submitted but not yet visible as running, such as pending array
    /// elements or a submission newer than the last status poll.
    pub requested: u32,
}

impl WorkerCount {
    /// Workers running or requested.
    pub fn current(self) -> u32 {
        self.running.saturating_add(self.requested)
    }
}

/// One backend as observed.
#[derive(Debug, Clone)]
pub struct BackendSnapshot {
    /// Name in logs and metrics: `slurm`, `local`, `batch/us-east-1/queue-a`.
    pub id: String,
    pub kind: BackendKind,
    /// Cloud region, for the per-region cap; `None` for a pool.
    pub region: Option<String>,
    /// Maximum workers this backend runs at once over all jobs.
    pub capacity_workers: u32,
    /// Workers the backend could start now, as it reports them (free GPUs or slots on
    /// Slurm). Requested workers are subtracted by the engine, so a report that does
    /// not yet show them never over-provisions.
    pub free_workers: u32,
    /// Workers per job id, including jobs not in the snapshot whose workers are
    /// still exiting.
    pub workers: HashMap<String, WorkerCount>,
    /// Price of one worker for one hour (GPU price times GPUs per worker, plus any
    /// per-worker price).
    pub price_per_worker_hour: f64,
    /// Estimated time from a request to a running worker: the Slurm queue wait or the
    /// Batch start-up.
    pub startup_secs: f64,
    /// False while the backend is not to receive new requests, such as while its
    /// circuit breaker is open.
    pub available: bool,
}

impl BackendSnapshot {
    /// Returns the job's workers on this backend, or zero counts.
    pub fn job_workers(&self, job_id: &str) -> WorkerCount {
        self.workers.get(job_id).copied().unwrap_or_default()
    }
}

/// Limits on burst workers and spend. `None` means no limit.
#[derive(Debug, Clone, Default)]
pub struct Caps {
    /// Maximum burst workers per region, for the regions listed.
    pub burst_workers_per_region: BTreeMap<String, u32>,
    /// Maximum burst workers per region for regions not in `burst_workers_per_region`.
    pub default_burst_workers_per_region: Option<u32>,
    /// Maximum burst workers over all regions.
    pub burst_workers: Option<u32>,
    /// Maximum burst spend per hour, as the price sum of burst workers running or
    /// requested.
    pub spend_per_hour: Option<f64>,
    /// Maximum burst spend per UTC day; see `PlacementSettings::spend_lookahead_secs`.
    pub spend_per_day: Option<f64>,
    /// Burst spend so far in the current UTC day.
    pub spent_today: f64,
}

impl Caps {
    /// Returns the burst worker cap of `region`, if any.
    pub fn region_cap(&self, region: &str) -> Option<u32> {
        self.burst_workers_per_region
            .get(region)
            .copied()
            .or(self.default_burst_workers_per_region)
    }
}

/// Placement's output for every job in the snapshot, highest priority first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub jobs: Vec<JobPlan>,
}

impl Plan {
    /// Returns every decision that requests workers, with its job id.
    pub fn requests(&self) -> impl Iterator<Item = (&str, &Decision)> {
        self.jobs.iter().flat_map(|job| {
            job.decisions
                .iter()
                .filter(|decision| decision.to_request() > 0)
                .map(move |decision| (job.job_id.as_str(), decision))
        })
    }
}

/// One job's decisions, one per backend in the snapshot's order.
#[derive(Debug, Clone, Serialize)]
pub struct JobPlan {
    pub job_id: String,
    /// True when the planned workers cannot finish the job's tasks by its deadline
    /// with the estimated task duration.
    pub deadline_at_risk: bool,
    pub decisions: Vec<Decision>,
}

/// Workers one job should have on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub backend_id: String,
    /// Workers running or requested now.
    pub current: u32,
    /// Workers the job should have; never below `current`.
    pub desired: u32,
    pub reason: Reason,
}

impl Decision {
    /// Workers to request now.
    pub fn to_request(&self) -> u32 {
        self.desired.saturating_sub(self.current)
    }
}
