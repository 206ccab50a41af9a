//! The placement rules: fill the pool by priority and age, spill to burst backends
//! only the work that the pool cannot finish in time, and never exceed a cap.

use std::collections::HashMap;

use super::budget::{Budgets, JobBudget};
use super::reason::{Limit, Reason};
use super::settings::PlacementSettings;
use super::snapshot::{
    BackendKind, BackendSnapshot, Decision, JobPlan, JobSnapshot, Plan, Snapshot, WorkerCount,
};

/// The only state the engine keeps between passes: when each burst request was last
/// raised, per job and backend, for the hysteresis hold. A restarted daemon starts
/// with an empty memory, which at most lets one small increase through early.
#[derive(Debug, Clone, Default)]
pub struct PlacementMemory {
    last_increase: HashMap<String, HashMap<String, f64>>,
}

impl PlacementMemory {
    /// Records the burst increases of `plan` at the snapshot's time, and drops jobs
    /// that are no longer in the snapshot.
    pub fn record(&mut self, snapshot: &Snapshot, plan: &Plan) {
        let kinds: HashMap<&str, BackendKind> = snapshot
            .backends
            .iter()
            .map(|backend| (backend.id.as_str(), backend.kind))
            .collect();
        for job in &plan.jobs {
            for decision in &job.decisions {
                let burst = kinds.get(decision.backend_id.as_str()) == Some(&BackendKind::Burst);
                if burst && decision.to_request() > 0 {
                    self.last_increase
                        .entry(job.job_id.clone())
                        .or_default()
                        .insert(decision.backend_id.clone(), snapshot.now);
                }
            }
        }

        if self.last_increase.len() > plan.jobs.len() {
            let live: std::collections::HashSet<&str> =
                plan.jobs.iter().map(|job| job.job_id.as_str()).collect();
            self.last_increase
                .retain(|job_id, _| live.contains(job_id.as_str()));
        }
    }

    fn last_increase(&self, job_id: &str, backend_id: &str) -> Option<f64> {
        self.last_increase.get(job_id)?.get(backend_id).copied()
    }
}

/// The engine with its settings and memory, for callers that run it pass after pass.
#[derive(Debug, Clone, Default)]
pub struct Placer {
    pub settings: PlacementSettings,
    memory: PlacementMemory,
}

impl Placer {
    pub fn new(settings: PlacementSettings) -> Self {
        Self {
            settings,
            memory: PlacementMemory::default(),
        }
    }

    /// Plans one pass and remembers its burst increases for the next.
    pub fn place(&mut self, snapshot: &Snapshot) -> Plan {
        let plan = plan(&self.settings, snapshot, &self.memory);
        self.memory.record(snapshot, &plan);
        plan
    }
}

/// Plans workers for every job in the snapshot. Jobs are served by priority, then by
/// admission time, so earlier jobs take the pool and the caps first.
pub fn plan(settings: &PlacementSettings, snapshot: &Snapshot, memory: &PlacementMemory) -> Plan {
    let mut order: Vec<&JobSnapshot> = snapshot.jobs.iter().collect();
    order.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.admitted_at.total_cmp(&b.admitted_at))
            .then_with(|| a.job_id.cmp(&b.job_id))
    });

    let context = Context {
        settings,
        snapshot,
        memory,
        pools: backends_by_cost(snapshot, BackendKind::Pool),
        bursts: backends_by_cost(snapshot, BackendKind::Burst),
    };
    let mut budgets = Budgets::new(snapshot, settings);
    let jobs = order
        .into_iter()
        .map(|job| JobPlanner::new(&context, job).plan(&mut budgets))
        .collect();
    Plan { jobs }
}

/// Indices of the backends of one kind, cheapest first, then quickest to start.
fn backends_by_cost(snapshot: &Snapshot, kind: BackendKind) -> Vec<usize> {
    let backends = &snapshot.backends;
    let mut indices: Vec<usize> = (0..backends.len())
        .filter(|&index| backends[index].kind == kind)
        .collect();
    indices.sort_by(|&a, &b| {
        let (a, b) = (&backends[a], &backends[b]);
        a.price_per_worker_hour
            .total_cmp(&b.price_per_worker_hour)
            .then(a.startup_secs.total_cmp(&b.startup_secs))
            .then_with(|| a.id.cmp(&b.id))
    });
    indices
}

struct Context<'a> {
    settings: &'a PlacementSettings,
    snapshot: &'a Snapshot,
    memory: &'a PlacementMemory,
    pools: Vec<usize>,
    bursts: Vec<usize>,
}

/// The time a job is planned to finish by, and why.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The job's own deadline.
    Deadline(f64),
    /// No deadline, but the queue wait passed the bound: finish within the drain time.
    QueueWait { wait_secs: f64, by: f64 },
    /// No deadline and the queue wait is within the bound: nothing spills.
    PoolOnly { wait_secs: f64 },
}

/// A horizon and a task duration: what one worker can do before the target.
#[derive(Debug, Clone, Copy)]
struct Horizon {
    secs: f64,
    task_secs: f64,
}

impl Horizon {
    /// Tasks one worker finishes before the horizon if it starts after `startup_secs`.
    fn tasks_per_worker(self, startup_secs: f64) -> u64 {
        let tasks = ((self.secs - startup_secs) / self.task_secs).floor();
        if tasks.is_nan() || tasks <= 0.0 {
            0
        } else {
            tasks as u64
        }
    }

    /// Tasks that a job's running, requested and `new` workers on a backend finish
    /// before the horizon. A running worker's leased task counts as a whole task.
    fn tasks_on(self, backend: &BackendSnapshot, count: WorkerCount, new: u32) -> u64 {
        let started = u64::from(count.running).saturating_mul(self.tasks_per_worker(0.0));
        let starting = u64::from(count.requested) + u64::from(new);
        started.saturating_add(starting.saturating_mul(self.tasks_per_worker(backend.startup_secs)))
    }
}

/// Plans one job against the budgets left by the jobs before it.
struct JobPlanner<'a> {
    context: &'a Context<'a>,
    job: &'a JobSnapshot,
    /// The job's workers per backend index.
    current: Vec<WorkerCount>,
    /// New workers per backend index.
    new: Vec<u32>,
    reasons: Vec<Option<Reason>>,
    budget: JobBudget,
}

impl<'a> JobPlanner<'a> {
    fn new(context: &'a Context<'a>, job: &'a JobSnapshot) -> Self {
        let backends = &context.snapshot.backends;
        let current: Vec<WorkerCount> = backends
            .iter()
            .map(|backend| backend.job_workers(&job.job_id))
            .collect();
        let requested: u32 = current.iter().map(|count| count.requested).sum();
        let total: u32 = current.iter().map(|count| count.current()).sum();
        // A requested worker will lease a queued task, and so will a running worker
        // that holds no lease yet: one worker per task left at most.
        let queue_left = job
            .queued
            .saturating_sub(u64::from(requested))
            .min(job.tasks_left.saturating_sub(u64::from(total)));
        let budget = JobBudget {
            queue_left: u32::try_from(queue_left).unwrap_or(u32::MAX),
            cap_left: job
                .max_workers
                .map_or(u32::MAX, |cap| cap.saturating_sub(total)),
        };
        Self {
            context,
            job,
            new: vec![0; backends.len()],
            reasons: vec![None; backends.len()],
            current,
            budget,
        }
    }

    fn plan(mut self, budgets: &mut Budgets) -> JobPlan {
        let mut deadline_at_risk = false;
        if self.job.queued == 0 {
            for index in 0..self.current.len() {
                let workers = self.current[index].current();
                self.reasons[index] = Some(Reason::NoQueuedTasks { workers });
            }
        } else {
            self.fill_pools(budgets);
            deadline_at_risk = match self.target() {
                Target::PoolOnly { wait_secs } => {
                    self.keep_bursts(Reason::QueueWaitWithinBound {
                        wait_secs,
                        bound_secs: self.context.settings.queue_wait_bound_secs,
                    });
                    false
                }
                target => self.spill(budgets, target),
            };
        }
        self.finish(deadline_at_risk)
    }

    fn backend(&self, index: usize) -> &'a BackendSnapshot {
        &self.context.snapshot.backends[index]
    }

    /// Gives the job pool workers, one per queued task without a worker, as far as
    /// the pool has room.
    fn fill_pools(&mut self, budgets: &mut Budgets) {
        for &index in &self.context.pools {
            let backend = self.backend(index);
            if !backend.available {
                self.reasons[index] = Some(Reason::BackendUnavailable);
                continue;
            }

            let (count, limit) = budgets.allowed(index, backend, self.budget, u32::MAX);
            budgets.take(index, backend, count);
            self.budget.take(count);
            self.new[index] = count;

            let reason = if count > 0 {
                Reason::PoolFill {
                    started: count,
                    queued: self.job.queued,
                }
            } else {
                match limit {
                    Some(Limit::QueuedTasks) => Reason::WorkersCoverQueue {
                        workers: self.workers_on(&self.all_backends()),
                        queued: self.job.queued,
                    },
                    Some(Limit::JobCap) => Reason::JobCap {
                        cap: self.job.max_workers.unwrap_or(u32::MAX),
                    },
                    _ => Reason::PoolFull {
                        queued: self.job.queued,
                    },
                }
            };
            self.reasons[index] = Some(reason);
        }
    }

    fn all_backends(&self) -> Vec<usize> {
        (0..self.current.len()).collect()
    }

    fn target(&self) -> Target {
        let settings = self.context.settings;
        let now = self.context.snapshot.now;
        let wait_secs = self
            .job
            .oldest_queued_at
            .map_or(0.0, |queued_at| (now - queued_at).max(0.0));
        match self.job.deadline {
            Some(deadline) => Target::Deadline(deadline),
            None if wait_secs > settings.queue_wait_bound_secs => Target::QueueWait {
                wait_secs,
                by: now + settings.no_deadline_drain_secs,
            },
            None => Target::PoolOnly { wait_secs },
        }
    }

    /// Returns the horizon for sizing workers: the estimate times the safety factor,
    /// and the margin kept free before the target.
    fn planning_horizon(&self, by: f64) -> Horizon {
        let settings = self.context.settings;
        Horizon {
            secs: by - settings.deadline_margin_secs - self.context.snapshot.now,
            task_secs: self.task_secs() * settings.task_secs_safety_factor,
        }
    }

    /// Returns the horizon for judging whether the deadline is met: the bare
    /// estimate, no margin.
    fn deadline_horizon(&self, by: f64) -> Horizon {
        Horizon {
            secs: by - self.context.snapshot.now,
            task_secs: self.task_secs(),
        }
    }

    fn task_secs(&self) -> f64 {
        // f64::max also turns NaN into the floor.
        self.job.task_secs.max(1e-3)
    }

    /// Tasks the job's workers finish before the horizon, over the given backends.
    fn tasks_by(&self, horizon: Horizon, indices: &[usize]) -> u64 {
        indices
            .iter()
            .map(|&index| {
                horizon.tasks_on(self.backend(index), self.current[index], self.new[index])
            })
            .sum()
    }

    fn all_tasks_by(&self, horizon: Horizon) -> u64 {
        self.tasks_by(horizon, &self.all_backends())
    }

    /// Sizes burst workers for the share of the job that the pool cannot finish by
    /// the target, and returns whether the deadline is at risk.
    fn spill(&mut self, budgets: &mut Budgets, target: Target) -> bool {
        let by = match target {
            Target::Deadline(deadline) => deadline,
            Target::QueueWait { by, .. } => by,
            Target::PoolOnly { .. } => unreachable!("PoolOnly is handled by the caller"),
        };
        let planning = self.planning_horizon(by);
        let hard = self.deadline_horizon(by);
        let tasks_left = self.job.tasks_left;
        let pool_tasks = self.tasks_by(planning, &self.context.pools);
        let bursts = self.context.bursts.clone();
        let mut shortfall = tasks_left.saturating_sub(self.all_tasks_by(planning));

        let mut capped: HashMap<usize, Limit> = HashMap::new();
        let mut too_slow = Vec::new();
        for &index in &bursts {
            let backend = self.backend(index);
            if !backend.available || shortfall == 0 {
                continue;
            }
            let per_worker = planning.tasks_per_worker(backend.startup_secs);
            if per_worker == 0 {
                too_slow.push(index);
                continue;
            }

            let want = u32::try_from(shortfall.div_ceil(per_worker)).unwrap_or(u32::MAX);
            let (mut count, limit) = budgets.allowed(index, backend, self.budget, want);
            if count > 0 && self.hold(index, count, hard) {
                count = 0;
            }
            if count < want && !matches!(self.reasons[index], Some(Reason::Held { .. })) {
                capped.insert(index, limit.unwrap_or(Limit::BackendCapacity));
            }
            budgets.take(index, backend, count);
            self.budget.take(count);
            self.new[index] = count;
            shortfall = shortfall.saturating_sub(u64::from(count).saturating_mul(per_worker));
        }

        let mut finishable = self.all_tasks_by(hard);
        let at_risk = finishable < tasks_left;
        if at_risk {
            self.request_most_allowed(budgets, &bursts, &mut capped);
            finishable = self.all_tasks_by(hard);
        }

        let spill = Spill {
            target,
            tasks_left,
            pool_tasks: pool_tasks.min(tasks_left),
            pool_workers: self.workers_on(&self.context.pools),
            finishable,
            at_risk,
            bound_secs: self.context.settings.queue_wait_bound_secs,
        };
        self.explain_bursts(&spill, planning, &capped, &too_slow);
        at_risk
    }

    /// Returns whether hysteresis defers an increase of `count` workers on a burst
    /// backend: a small step soon after the last increase, while the deadline is met
    /// without it. Sets the reason when it does.
    fn hold(&mut self, index: usize, count: u32, hard: Horizon) -> bool {
        let settings = self.context.settings;
        if count >= settings.burst_min_step_workers {
            return false;
        }
        let backend_id = &self.backend(index).id;
        let Some(last) = self
            .context
            .memory
            .last_increase(&self.job.job_id, backend_id)
        else {
            return false;
        };
        let age_secs = self.context.snapshot.now - last;
        if age_secs >= settings.burst_hold_secs || self.all_tasks_by(hard) < self.job.tasks_left {
            return false;
        }
        self.reasons[index] = Some(Reason::Held {
            increase: count,
            step: settings.burst_min_step_workers,
            age_secs,
        });
        true
    }

    /// Requests the maximum workers the caps allow on every available burst backend,
    /// for a job whose deadline is at risk.
    fn request_most_allowed(
        &mut self,
        budgets: &mut Budgets,
        bursts: &[usize],
        capped: &mut HashMap<usize, Limit>,
    ) {
        for &index in bursts {
            let backend = self.backend(index);
            if !backend.available {
                continue;
            }
            let (count, limit) = budgets.allowed(index, backend, self.budget, u32::MAX);
            budgets.take(index, backend, count);
            self.budget.take(count);
            self.new[index] += count;
            if let Some(limit) = limit {
                capped.insert(index, limit);
            }
        }
    }

    fn workers_on(&self, indices: &[usize]) -> u32 {
        indices
            .iter()
            .map(|&index| self.current[index].current() + self.new[index])
            .sum()
    }

    /// Sets the reason of every burst decision that has none yet.
    fn explain_bursts(
        &mut self,
        spill: &Spill,
        planning: Horizon,
        capped: &HashMap<usize, Limit>,
        too_slow: &[usize],
    ) {
        let bursts = self.context.bursts.clone();
        let any_burst = self.workers_on(&bursts) > 0;
        for &index in &bursts {
            if self.reasons[index].is_some() {
                continue;
            }
            let backend = self.backend(index);
            let workers = self.current[index].current() + self.new[index];
            let reason = if !backend.available {
                Reason::BackendUnavailable
            } else if spill.at_risk {
                Reason::DeadlineAtRisk {
                    tasks: spill.tasks_left,
                    finishable: spill.finishable.min(spill.tasks_left),
                    workers,
                    limit: capped.get(&index).copied(),
                }
            } else if self.new[index] > 0 {
                spill.spill_reason(&backend.id, workers)
            } else if let Some(limit) = capped.get(&index) {
                Reason::Capped { limit: *limit }
            } else if too_slow.contains(&index) {
                Reason::TooSlowToStart {
                    startup_secs: backend.startup_secs,
                    task_secs: planning.task_secs,
                }
            } else if workers > 0 && self.surplus(index, planning) {
                Reason::ScaleInByExit { workers }
            } else if any_burst {
                Reason::SpillCovered { workers }
            } else {
                Reason::PoolMeetsDeadline {
                    tasks: spill.tasks_left,
                    pool_workers: spill.pool_workers,
                }
            };
            self.reasons[index] = Some(reason);
        }
    }

    /// Returns whether the job finishes in time without its workers on backend
    /// `index`.
    fn surplus(&self, index: usize, planning: Horizon) -> bool {
        let all = self.all_tasks_by(planning);
        let on_backend =
            planning.tasks_on(self.backend(index), self.current[index], self.new[index]);
        all.saturating_sub(on_backend) >= self.job.tasks_left
    }

    /// Keeps every burst decision at its current workers with `reason`.
    fn keep_bursts(&mut self, reason: Reason) {
        for &index in &self.context.bursts {
            self.reasons[index] = Some(if self.backend(index).available {
                reason.clone()
            } else {
                Reason::BackendUnavailable
            });
        }
    }

    fn finish(self, deadline_at_risk: bool) -> JobPlan {
        let backends = &self.context.snapshot.backends;
        let decisions = self
            .reasons
            .into_iter()
            .enumerate()
            .map(|(index, reason)| {
                let current = self.current[index].current();
                Decision {
                    backend_id: backends[index].id.clone(),
                    current,
                    desired: current.saturating_add(self.new[index]),
                    reason: reason.unwrap_or(Reason::NoQueuedTasks { workers: current }),
                }
            })
            .collect();
        JobPlan {
            job_id: self.job.job_id.clone(),
            deadline_at_risk,
            decisions,
        }
    }
}

/// One job's spill, for the reasons of its burst decisions.
struct Spill {
    target: Target,
    tasks_left: u64,
    /// Tasks the pool finishes by the target, as planned.
    pool_tasks: u64,
    pool_workers: u32,
    /// Tasks all planned workers finish by the target, with the bare estimate.
    finishable: u64,
    at_risk: bool,
    /// The queue wait bound, for the reason of a spill without a deadline.
    bound_secs: f64,
}

impl Spill {
    fn spill_reason(&self, backend: &str, workers: u32) -> Reason {
        let spilled_tasks = self.tasks_left - self.pool_tasks;
        match self.target {
            Target::QueueWait { wait_secs, .. } => Reason::SpillForQueueWait {
                wait_secs,
                bound_secs: self.bound_secs,
                spilled_tasks,
                backend: backend.to_owned(),
                workers,
            },
            _ => Reason::SpillForDeadline {
                pool_tasks: self.pool_tasks,
                pool_workers: self.pool_workers,
                spilled_tasks,
                backend: backend.to_owned(),
                workers,
            },
        }
    }
}
