//! One simulated run: jobs arrive, the placement engine runs every reconcile interval
//! on a snapshot of the simulated backends, and workers lease, run and finish tasks.
//!
//! Worker and task events happen at exact times, in time order; placement runs only
//! at the reconcile ticks, as in the daemon.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::placement::{
    BackendKind, BackendSnapshot, Caps, DurationEstimator, JobSnapshot, Placer, Snapshot,
    WorkerCount,
};

use super::rng::SplitMix64;
use super::trace::{BurstSettings, SimSettings, TraceJob};

const DAY_SECS: f64 = 86_400.0;

/// A run stops this long after the last arrival even if work is left, so a stuck
/// simulation ends; unfinished jobs count as deadline misses.
const GIVE_UP_AFTER_SECS: f64 = 365.0 * DAY_SECS;

/// Measurements of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// Completion time (finish minus arrival) per finished job, in trace order.
    pub completion_secs: Vec<f64>,
    pub deadline_misses: u32,
    pub unfinished: u32,
    /// Time of the last task completion.
    pub last_finish_secs: f64,
    pub burst_cost: f64,
    pub burst_worker_secs: f64,
    /// Maximum burst workers running or starting at once.
    pub peak_burst_workers: u32,
    /// Time pool workers spent running, summed over workers.
    pub pool_worker_secs: f64,
    pub interruptions: u64,
    /// Workers requested per decision reason label.
    pub requests_by_reason: BTreeMap<&'static str, u64>,
    /// Placement passes in which at least one job's deadline was at risk.
    pub passes_at_risk: u64,
    pub passes: u64,
}

/// The backends of one run.
pub struct Backends<'a> {
    pub pool_workers: u32,
    pub bursts: &'a [BurstSettings],
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Arrival(usize),
    Tick,
    Ready(usize),
    TaskDone(usize),
    Interrupt(usize),
    Requeue(usize),
}

/// An event time ordered by `f64::total_cmp`, then by insertion.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scheduled {
    at: f64,
    seq: u64,
    event: Event,
}

impl Eq for Scheduled {}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.total_cmp(&other.at).then(self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Default)]
struct JobState {
    arrived: bool,
    queued: u64,
    leased: u64,
    done: u64,
    oldest_queued_at: Option<f64>,
    finished_at: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum WorkerState {
    Starting,
    Idle,
    Busy,
    Gone,
}

#[derive(Debug, Clone)]
struct Worker {
    job: usize,
    /// 0 is the pool; burst backend `i` is `i + 1`.
    backend: usize,
    requested_at: f64,
    started_at: f64,
    /// Duration of the task it runs, when busy.
    task_secs: f64,
    state: WorkerState,
}

/// Runs the trace's jobs on the given backends and returns what it measured.
pub fn run(settings: &SimSettings, jobs: &[TraceJob], backends: &Backends<'_>) -> RunOutcome {
    let mut world = World::new(settings, jobs, backends);
    world.run();
    world.outcome()
}

struct World<'a> {
    settings: &'a SimSettings,
    specs: &'a [TraceJob],
    backends: &'a Backends<'a>,
    jobs: Vec<JobState>,
    workers: Vec<Worker>,
    live: Vec<usize>,
    events: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    rng: SplitMix64,
    placer: Placer,
    estimator: DurationEstimator,
    /// Burst cost of workers that exited during the current UTC day, and that day.
    spent_closed_today: f64,
    today: u64,
    tick_pending: bool,
    /// Burst workers running or starting.
    live_burst: u32,
    outcome: RunOutcome,
}

impl<'a> World<'a> {
    fn new(settings: &'a SimSettings, specs: &'a [TraceJob], backends: &'a Backends<'a>) -> Self {
        let mut world = Self {
            settings,
            specs,
            backends,
            jobs: vec![JobState::default(); specs.len()],
            workers: Vec::new(),
            live: Vec::new(),
            events: BinaryHeap::new(),
            seq: 0,
            rng: SplitMix64::new(settings.seed),
            placer: Placer::new(settings.placement.clone()),
            estimator: DurationEstimator::new(settings.estimator.clone()),
            spent_closed_today: 0.0,
            today: 0,
            tick_pending: false,
            live_burst: 0,
            outcome: RunOutcome::default(),
        };
        for (index, job) in specs.iter().enumerate() {
            world.schedule(job.arrival_secs, Event::Arrival(index));
        }
        world
    }

    fn schedule(&mut self, at: f64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn run(&mut self) {
        let give_up_at = self.specs.last().map_or(0.0, |job| job.arrival_secs) + GIVE_UP_AFTER_SECS;
        while let Some(Reverse(scheduled)) = self.events.pop() {
            let now = scheduled.at;
            if now > give_up_at {
                break;
            }
            match scheduled.event {
                Event::Arrival(job) => self.arrive(job, now),
                Event::Tick => self.tick(now),
                Event::Ready(worker) => self.ready(worker, now),
                Event::TaskDone(worker) => self.task_done(worker, now),
                Event::Interrupt(worker) => self.interrupt(worker, now),
                Event::Requeue(job) => self.requeue(job, now),
            }
        }
    }

    fn arrive(&mut self, index: usize, now: f64) {
        let job = &mut self.jobs[index];
        job.arrived = true;
        job.queued = self.specs[index].tasks;
        job.oldest_queued_at = Some(now);
        self.schedule_tick_from(now);
    }

    /// Schedules the next tick at the first reconcile instant at or after `now`,
    /// unless one is pending.
    fn schedule_tick_from(&mut self, now: f64) {
        if self.tick_pending {
            return;
        }
        let interval = self.settings.reconcile_interval_secs;
        let at = (now / interval).ceil() * interval;
        self.tick_pending = true;
        self.schedule(at, Event::Tick);
    }

    fn active_jobs(&self) -> impl Iterator<Item = usize> + '_ {
        self.jobs
            .iter()
            .enumerate()
            .filter(|(_, job)| job.arrived && job.finished_at.is_none())
            .map(|(index, _)| index)
    }

    fn tick(&mut self, now: f64) {
        self.tick_pending = false;
        let active: Vec<usize> = self.active_jobs().collect();
        if active.is_empty() {
            return;
        }

        let snapshot = self.snapshot(now, &active);
        let plan = self.placer.place(&snapshot);
        self.outcome.passes += 1;
        if plan.jobs.iter().any(|job| job.deadline_at_risk) {
            self.outcome.passes_at_risk += 1;
        }

        let by_id: HashMap<&str, usize> = active
            .iter()
            .map(|&index| (self.specs[index].id.as_str(), index))
            .collect();
        let mut starts = Vec::new();
        for (job_id, decision) in plan.requests() {
            let backend = snapshot
                .backends
                .iter()
                .position(|backend| backend.id == decision.backend_id)
                .expect("decisions name snapshot backends");
            starts.push((by_id[job_id], backend, decision.to_request()));
            *self
                .outcome
                .requests_by_reason
                .entry(decision.reason.as_label())
                .or_default() += u64::from(decision.to_request());
        }
        for (job, backend, count) in starts {
            for _ in 0..count {
                self.start_worker(job, backend, now);
            }
        }

        self.tick_pending = true;
        self.schedule(now + self.settings.reconcile_interval_secs, Event::Tick);
    }

    fn snapshot(&mut self, now: f64, active: &[usize]) -> Snapshot {
        let mut counts: Vec<HashMap<String, WorkerCount>> =
            vec![HashMap::new(); 1 + self.backends.bursts.len()];
        let mut running = vec![0u32; counts.len()];
        for &index in &self.live {
            let worker = &self.workers[index];
            let count = counts[worker.backend]
                .entry(self.specs[worker.job].id.clone())
                .or_default();
            if worker.state == WorkerState::Starting {
                count.requested += 1;
            } else {
                count.running += 1;
                running[worker.backend] += 1;
            }
        }

        let mut counts = counts.into_iter();
        let pool_workers = self.backends.pool_workers;
        let mut backends = vec![BackendSnapshot {
            id: "slurm".into(),
            kind: BackendKind::Pool,
            region: None,
            capacity_workers: pool_workers,
            free_workers: pool_workers.saturating_sub(running[0]),
            workers: counts.next().unwrap_or_default(),
            price_per_worker_hour: self.settings.pool_price_per_worker_hour,
            startup_secs: self.settings.slurm_queue_wait_secs,
            available: true,
        }];
        for (index, (burst, workers)) in self.backends.bursts.iter().zip(counts).enumerate() {
            backends.push(BackendSnapshot {
                id: burst.id.clone(),
                kind: BackendKind::Burst,
                region: burst.region.clone(),
                capacity_workers: burst.capacity_workers,
                free_workers: burst.capacity_workers.saturating_sub(running[index + 1]),
                workers,
                price_per_worker_hour: burst.price_per_worker_hour,
                startup_secs: burst.startup_secs,
                // NOTE: no throttling or capacity shortage is simulated, so the
                // circuit breaker never opens.
                available: true,
            });
        }

        let jobs = active
            .iter()
            .map(|&index| self.job_snapshot(index))
            .collect();
        let caps = &self.settings.caps;
        Snapshot {
            now,
            jobs,
            backends,
            caps: Caps {
                burst_workers_per_region: caps.burst_workers_per_region.clone(),
                default_burst_workers_per_region: caps.default_burst_workers_per_region,
                burst_workers: caps.burst_workers,
                spend_per_hour: caps.spend_per_hour,
                spend_per_day: caps.spend_per_day,
                spent_today: self.spent_today(now),
            },
        }
    }

    fn job_snapshot(&self, index: usize) -> JobSnapshot {
        let spec = &self.specs[index];
        let job = &self.jobs[index];
        JobSnapshot {
            job_id: spec.id.clone(),
            tasks_left: job.queued + job.leased,
            queued: job.queued,
            task_secs: self.estimator.estimate(&spec.kernel, &spec.model),
            deadline: spec.deadline_secs.map(|secs| spec.arrival_secs + secs),
            admitted_at: spec.arrival_secs,
            oldest_queued_at: job.oldest_queued_at,
            priority: spec.priority,
            max_workers: spec.max_workers,
        }
    }

    /// Burst spend since 00:00 UTC of the current day, running workers included.
    fn spent_today(&mut self, now: f64) -> f64 {
        let day_start = self.roll_day(now);
        let mut spent = self.spent_closed_today;
        for &index in &self.live {
            let worker = &self.workers[index];
            if worker.backend > 0 {
                let price = self.backends.bursts[worker.backend - 1].price_per_worker_hour;
                spent += price * (now - worker.requested_at.max(day_start)) / 3600.0;
            }
        }
        spent
    }

    /// Starts a new UTC day's spend when `now` is in a later day, and returns the
    /// start of `now`'s day.
    fn roll_day(&mut self, now: f64) -> f64 {
        let day = (now / DAY_SECS).floor() as u64;
        if day != self.today {
            self.today = day;
            self.spent_closed_today = 0.0;
        }
        day as f64 * DAY_SECS
    }

    fn start_worker(&mut self, job: usize, backend: usize, now: f64) {
        let (startup, interruptions_per_hour) = match backend {
            0 => (self.settings.slurm_queue_wait_secs, 0.0),
            _ => {
                let burst = &self.backends.bursts[backend - 1];
                (burst.startup_secs, burst.interruptions_per_worker_hour)
            }
        };
        let index = self.workers.len();
        self.workers.push(Worker {
            job,
            backend,
            requested_at: now,
            started_at: now + startup,
            task_secs: 0.0,
            state: WorkerState::Starting,
        });
        self.live.push(index);
        if backend > 0 {
            self.live_burst += 1;
            self.outcome.peak_burst_workers = self.outcome.peak_burst_workers.max(self.live_burst);
        }
        self.schedule(now + startup, Event::Ready(index));
        if interruptions_per_hour > 0.0 {
            let after = self.rng.exponential(interruptions_per_hour / 3600.0);
            self.schedule(now + after, Event::Interrupt(index));
        }
    }

    fn ready(&mut self, index: usize, now: f64) {
        if self.workers[index].state != WorkerState::Starting {
            return;
        }
        self.workers[index].state = WorkerState::Idle;
        self.lease_or_exit(index, now);
    }

    fn lease_or_exit(&mut self, index: usize, now: f64) {
        let job_index = self.workers[index].job;
        let job = &mut self.jobs[job_index];
        if job.queued == 0 {
            self.exit(index, now);
            return;
        }
        job.queued -= 1;
        job.leased += 1;
        if job.queued == 0 {
            job.oldest_queued_at = None;
        }

        let jitter = self.settings.task_secs_jitter;
        let factor = 1.0 + jitter * (2.0 * self.rng.next_f64() - 1.0);
        let duration = self.specs[job_index].task_secs * factor;
        self.workers[index].state = WorkerState::Busy;
        self.workers[index].task_secs = duration;
        self.schedule(now + duration, Event::TaskDone(index));
    }

    fn task_done(&mut self, index: usize, now: f64) {
        let worker = &self.workers[index];
        if worker.state != WorkerState::Busy {
            return;
        }
        let job_index = worker.job;
        let spec = &self.specs[job_index];
        let job = &mut self.jobs[job_index];
        job.leased -= 1;
        job.done += 1;
        if job.done == spec.tasks {
            job.finished_at = Some(now);
        }
        self.estimator
            .observe(&spec.kernel, &spec.model, worker.task_secs);
        self.lease_or_exit(index, now);
    }

    fn interrupt(&mut self, index: usize, now: f64) {
        let state = self.workers[index].state;
        if state == WorkerState::Gone {
            return;
        }
        self.outcome.interruptions += 1;
        if state == WorkerState::Busy {
            let job = self.workers[index].job;
            let at = now + self.settings.lease_timeout_secs;
            self.schedule(at, Event::Requeue(job));
        }
        self.exit(index, now);
    }

    fn requeue(&mut self, index: usize, now: f64) {
        let job = &mut self.jobs[index];
        job.leased -= 1;
        job.queued += 1;
        job.oldest_queued_at.get_or_insert(now);
        self.schedule_tick_from(now);
    }

    fn exit(&mut self, index: usize, now: f64) {
        let day_start = self.roll_day(now);
        let worker = &mut self.workers[index];
        let previous = worker.state;
        worker.state = WorkerState::Gone;
        if let Some(position) = self.live.iter().position(|&live| live == index) {
            self.live.swap_remove(position);
        }

        if worker.backend == 0 {
            if previous != WorkerState::Starting {
                self.outcome.pool_worker_secs += now - worker.started_at;
            }
            return;
        }
        self.live_burst -= 1;
        let price = self.backends.bursts[worker.backend - 1].price_per_worker_hour;
        let secs = now - worker.requested_at;
        self.outcome.burst_worker_secs += secs;
        self.outcome.burst_cost += price * secs / 3600.0;
        self.spent_closed_today += price * (now - worker.requested_at.max(day_start)) / 3600.0;
    }

    fn outcome(mut self) -> RunOutcome {
        for (spec, job) in self.specs.iter().zip(&self.jobs) {
            let Some(finished_at) = job.finished_at else {
                self.outcome.unfinished += 1;
                self.outcome.deadline_misses += 1;
                continue;
            };
            self.outcome
                .completion_secs
                .push(finished_at - spec.arrival_secs);
            self.outcome.last_finish_secs = self.outcome.last_finish_secs.max(finished_at);
            if let Some(deadline) = spec.deadline_secs
                && finished_at > spec.arrival_secs + deadline
            {
                self.outcome.deadline_misses += 1;
            }
        }
        self.outcome
    }
}
