//! The reconcile loop: for every active job, reap expired leases, reduce jobs whose
//! tasks are all terminal, and let the placement engine decide how many workers each
//! running job gets on which backend. It reads everything from the ledger and the
//! backends on each pass, so a restarted daemon carries on where another stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use spillway_common::ledger::{JobRecord, Ledger, TaskObservation};
use spillway_common::process::error_chain;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, LaunchRequest};
use crate::config::Config;
use crate::cost::{self, PriceTable};
use crate::metrics::{
    AttemptLabels, BackendLabels, GpuLabels, Metrics, PlacementLabels, StateLabels, TaskLabels,
};
use crate::notify::Notifiers;
use crate::placement::{
    BackendKind, BackendSnapshot, Caps, DurationEstimator, EstimatorSettings, JobSnapshot,
    PlacementSettings, Placer, Plan, Snapshot, WorkerCount,
};
use crate::reduce;
use crate::rounds::{self, RoundStep};

/// Expired leases handled per job and pass.
const REAP_LIMIT: u32 = 1000;

/// Observations drained per pass.
const OBSERVATION_BATCH: usize = 10_000;

/// How long one daemon holds a job's reduce lock. A daemon that dies holding it
/// delays the job by this much, since its successor has another id.
const REDUCE_LOCK: Duration = Duration::from_secs(300);

/// How long one daemon holds a training job's lock for a round step. The steps can
/// be repeated, so a lock that expires during a long step costs only duplicate work,
/// while a short one keeps a daemon that died in a step from stalling the job.
const ROUND_LOCK: Duration = Duration::from_secs(20);

/// Shortest wait between passes worth a blocking pop; a pass due sooner runs at once.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// Redis checks the timeouts of blocked clients on its timer, 10 times a second by
/// default (`hz`), so a blocking pop can end up to this much after its timeout.
const REDIS_TICK: Duration = Duration::from_millis(100);

/// Settings that a reload changes while the loop runs.
#[derive(Debug, Clone)]
pub struct Tunables {
    pub prices: PriceTable,
    pub placement: PlacementSettings,
    pub estimator: EstimatorSettings,
    /// Burst caps; `spent_today` is filled in from the ledger on each pass.
    pub caps: Caps,
    pub max_workers_per_job: Option<u32>,
}

impl Tunables {
    pub fn from_config(config: &Config) -> Self {
        let batch = &config.backend.batch;
        let mut caps = Caps {
            spend_per_hour: config.placement.max_burst_spend_per_hour,
            spend_per_day: config.placement.max_burst_spend_per_day,
            ..Caps::default()
        };
        if batch.enabled {
            caps.burst_workers = Some(batch.max_workers);
            caps.default_burst_workers_per_region =
                Some(batch.max_workers_per_region).filter(|cap| *cap > 0);
        }
        Self {
            prices: PriceTable::new(config.cost.clone()),
            placement: config.placement.engine(),
            estimator: config.placement.estimator(),
            caps,
            max_workers_per_job: config.placement.max_workers_per_job,
        }
    }
}

/// The parts of a job's manifest that placement reads, parsed once per job.
#[derive(Debug, Clone)]
struct JobTraits {
    kernel: String,
    model_sha256: String,
    deadline: Option<f64>,
}

pub struct Reconciler {
    ledger: Ledger,
    /// Every enabled backend: a pool (Slurm or local) and any burst backend.
    backends: Vec<Arc<dyn Backend>>,
    metrics: Metrics,
    /// Identifies this daemon in locks.
    daemon_id: String,
    tunables: watch::Receiver<Arc<Tunables>>,
    placer: Placer,
    estimator: DurationEstimator,
    traits: HashMap<String, JobTraits>,
    /// The reason label last logged per job and placement target, so that a decision
    /// is logged when it changes rather than on every pass.
    logged: HashMap<(String, String), &'static str>,
    notifiers: Arc<Notifiers>,
    /// A ledger connection of its own that waits for wakes between passes.
    waker: Option<Ledger>,
    /// The last round files of each training job, for its next reduce step.
    round_files: rounds::RoundFiles,
}

impl Reconciler {
    pub fn new(
        ledger: Ledger,
        backends: Vec<Arc<dyn Backend>>,
        metrics: Metrics,
        daemon_id: String,
        tunables: watch::Receiver<Arc<Tunables>>,
        notifiers: Arc<Notifiers>,
    ) -> Self {
        let current = tunables.borrow().clone();
        Self {
            ledger,
            backends,
            metrics,
            daemon_id,
            placer: Placer::new(current.placement.clone()),
            estimator: DurationEstimator::new(current.estimator.clone()),
            tunables,
            traits: HashMap::new(),
            logged: HashMap::new(),
            notifiers,
            waker: None,
            round_files: rounds::RoundFiles::default(),
        }
    }

    /// Lets workers wake the loop through `waker`, a connection that no other
    /// component uses: a job whose last task completed is then reduced at once,
    /// rather than at the next pass. This matters between training rounds.
    pub fn with_waker(mut self, waker: Ledger) -> Self {
        self.waker = Some(waker);
        self
    }

    /// Runs passes every `interval` until `shutdown`, pinging the systemd watchdog
    /// after each pass, so a wedged pass stops the pings.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut watchdog = crate::service::Watchdog::from_env();
        let interval = watchdog
            .max_sleep()
            .map_or(interval, |max| interval.min(max));
        // The wait for a wake is itself the sleep between passes. Racing it against a
        // timer would drop a blocking pop whose reply Redis had already sent, and so
        // lose the wake, and its job would wait for the next pass. Redis ends a blocking
        // pop on its timer tick, up to 100 ms after the timeout, so the pop stops a
        // tick early and a plain sleep waits out the rest.
        let mut next_pass = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let left = next_pass.saturating_duration_since(tokio::time::Instant::now());
            if left >= MIN_WAIT {
                let waker = self
                    .waker
                    .as_ref()
                    .filter(|_| left >= REDIS_TICK + MIN_WAIT);
                let woken = match waker {
                    Some(waker) => tokio::select! {
                        () = shutdown.cancelled() => break,
                        woken = wait_wake(waker, left - REDIS_TICK) => woken,
                    },
                    None => tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(left) => None,
                    },
                };
                match woken {
                    Some(job_id) => debug!(job_id, "woken: a job's last task completed"),
                    // Waited up to the pass, or less when the wait was capped.
                    None => continue,
                }
            }
            next_pass = tokio::time::Instant::now() + interval;
            if let Err(error) = self.pass().await {
                warn!(error = %error_chain(error.as_ref()), "reconcile pass failed; retrying next interval");
            }
            watchdog.ping();
        }
        info!("reconcile loop stopped");
    }

    /// Runs one pass over every active job.
    pub async fn pass(&mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let tunables = self.tunables.borrow().clone();
        self.drain_observations(&tunables).await?;
        self.end_lost_leases().await;

        let mut jobs = Vec::new();
        for job_id in self.ledger.active_jobs().await? {
            match self.ledger.job(&job_id).await? {
                Some(job) => jobs.push(job),
                None => warn!(job_id, "active job has no record in the ledger"),
            }
        }
        // Higher priority first, then older jobs, so scarce workers go where they should.
        jobs.sort_by_key(|job| (-job.priority, job.admitted_at_ms));

        let mut running = Vec::new();
        for job in &jobs {
            match self.settle(job).await {
                Ok(Some(job)) => running.push(job),
                Ok(None) => {}
                Err(error) => {
                    error!(job_id = %job.job_id, error = %error_chain(error.as_ref()), "failed to reconcile job")
                }
            }
        }
        self.traits
            .retain(|job_id, _| running.iter().any(|job| &job.job_id == job_id));
        let active: Vec<String> = jobs.iter().map(|job| job.job_id.clone()).collect();
        self.round_files.retain(&active);

        let running_ids: Vec<String> = running.iter().map(|job| job.job_id.clone()).collect();
        for backend in &self.backends {
            if let Err(error) = backend.refresh(&running_ids).await {
                // Without a fresh view, placement counts the workers it requested as alive.
                warn!(backend = backend.name(), error = %error_chain(&error), "failed to observe the backend");
            }
        }

        // While draining, leases are still reaped and jobs reduced, but no worker starts.
        if self.ledger.is_draining().await? {
            debug!("draining; no worker is started");
        } else if let Err(error) = self.place(&running, &tunables).await {
            warn!(error = %error_chain(error.as_ref()), "placement failed; retrying next pass");
        }
        self.export_counts(&jobs).await;
        Ok(())
    }

    /// Ends the leases of workers that a backend saw exit with a failure, so that this
    /// pass's reap queues their tasks again now rather than at the lease deadline.
    async fn end_lost_leases(&self) {
        for backend in &self.backends {
            for lost in backend.take_lost().await {
                let ended = self
                    .ledger
                    .end_worker_leases(&lost.job_id, &lost.worker_id, &lost.reason)
                    .await;
                match ended {
                    Ok(0) => {}
                    Ok(leases) => {
                        warn!(job_id = %lost.job_id, worker_id = %lost.worker_id, leases, "a worker exited holding leases; its tasks are queued again now")
                    }
                    Err(error) => {
                        warn!(job_id = %lost.job_id, worker_id = %lost.worker_id, error = %error_chain(&error), "failed to end an exited worker's leases; they expire at their deadline")
                    }
                }
            }
        }
    }

    /// Reaps, reduces, cancels or finishes one job as its state requires, and returns
    /// it as read after reaping when it is still running.
    async fn settle(
        &self,
        job: &JobRecord,
    ) -> Result<Option<JobRecord>, Box<dyn std::error::Error + Send + Sync>> {
        match job.state.as_str() {
            "running" => {
                let report = self.ledger.reap(&job.job_id, REAP_LIMIT).await?;
                if report.expired > 0 {
                    self.metrics.lease_expiries.inc_by(report.expired);
                    warn!(job_id = %job.job_id, expired = report.expired, requeued = report.requeued, dead = report.dead, "leases expired");
                }
                // Read the job again: the reaper may have changed its counters or closed it.
                let Some(job) = self.ledger.job(&job.job_id).await? else {
                    return Ok(None);
                };
                match job.state.as_str() {
                    "reducing" if job.round.is_some() => self.advance_round(&job).await,
                    "reducing" => self.reduce(&job).await.map(|()| None),
                    "running" => Ok(Some(job)),
                    _ => Ok(None),
                }
            }
            "reducing" if job.round.is_some() => self.advance_round(job).await,
            "reducing" => self.reduce(job).await.map(|()| None),
            // A training job before its first round, or whose round's tasks a crash
            // left half created.
            "preparing" => self.advance_round(job).await,
            "admitting" if job.round.is_some() => self.advance_round(job).await,
            "cancelled" => {
                self.finish_backends(&job.job_id, "a cancelled job's").await;
                self.ledger
                    .finish_job(&job.job_id, "cancelled", None, "")
                    .await?;
                info!(job_id = %job.job_id, "job cancelled");
                self.notifiers.job_finished(&job.job_id);
                Ok(None)
            }
            "succeeded" | "failed" => {
                // Finished, but a crash kept it in the active set; finish_job is idempotent.
                self.ledger
                    .finish_job(&job.job_id, &job.state, job.artefact_uri.as_deref(), "")
                    .await?;
                Ok(None)
            }
            // `admitting`: the intake finishes it when the message is redelivered.
            _ => Ok(None),
        }
    }

    /// Builds a snapshot of the running jobs and the backends, runs the placement
    /// engine and requests the workers its plan wants. Workers exit on their own
    /// when no task is left, so placement never stops one.
    async fn place(
        &mut self,
        running: &[JobRecord],
        tunables: &Tunables,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (snapshot, owners) = self.snapshot(running, tunables).await?;
        let mut settings = tunables.placement.clone();
        if !snapshot
            .backends
            .iter()
            .any(|target| target.kind == BackendKind::Pool)
        {
            // A site without a pool sends every job to its burst backends at once,
            // sized by the deadline (or the drain time), within the caps.
            settings.queue_wait_bound_secs = 0.0;
        }
        if self.placer.settings != settings {
            self.placer.settings = settings;
        }
        let plan = self.placer.place(&snapshot);
        self.export_plan(&snapshot, &plan);
        for job in &plan.jobs {
            for decision in &job.decisions {
                let key = (job.job_id.clone(), decision.backend_id.clone());
                let label = decision.reason.as_label();
                if decision.to_request() > 0 || self.logged.get(&key) != Some(&label) {
                    info!(job_id = %job.job_id, backend = %decision.backend_id, current = decision.current, desired = decision.desired, reason = label, "{}", decision.reason);
                    self.logged.insert(key, label);
                }
            }
        }
        self.logged
            .retain(|(job_id, _), _| plan.jobs.iter().any(|job| &job.job_id == job_id));

        for (job_id, decision) in plan.requests() {
            let Some(&owner) = owners.get(&decision.backend_id) else {
                warn!(job_id, backend = %decision.backend_id, "placement chose a target that no backend owns");
                continue;
            };
            let Some(record) = running.iter().find(|job| job.job_id == job_id) else {
                continue;
            };
            let manifest = record.manifest()?;
            let backend = &self.backends[owner];
            let count = decision.to_request();
            match backend
                .launch(LaunchRequest {
                    job_id,
                    manifest: &manifest,
                    count,
                    target: &decision.backend_id,
                })
                .await
            {
                Ok(started) => {
                    let labels = BackendLabels {
                        backend: decision.backend_id.clone(),
                    };
                    self.metrics
                        .workers_started
                        .get_or_create(&labels)
                        .inc_by(u64::from(started));
                    let labels = PlacementLabels {
                        backend: decision.backend_id.clone(),
                        reason: decision.reason.as_label().into(),
                    };
                    self.metrics
                        .placement_requests
                        .get_or_create(&labels)
                        .inc_by(u64::from(started));
                    info!(job_id, backend = %decision.backend_id, requested = count, started, "placed workers");
                }
                Err(error) => {
                    error!(job_id, backend = %decision.backend_id, requested = count, error = %error_chain(&error), "failed to start workers; placement retries next pass");
                }
            }
        }
        Ok(())
    }

    /// Reads what placement needs: the running jobs with tasks left, their estimated
    /// task durations and deadlines, every backend's targets and the burst spend of
    /// the day. Also returns, per target id, the index of the backend that owns it.
    async fn snapshot(
        &mut self,
        running: &[JobRecord],
        tunables: &Tunables,
    ) -> Result<(Snapshot, HashMap<String, usize>), Box<dyn std::error::Error + Send + Sync>> {
        let now = spillway_common::ledger::now_ms() as f64 / 1000.0;
        let ids: Vec<String> = running.iter().map(|job| job.job_id.clone()).collect();

        let mut backends: Vec<BackendSnapshot> = Vec::new();
        let mut owners = HashMap::new();
        for (owner, backend) in self.backends.iter().enumerate() {
            for mut target in backend.targets(&ids).await {
                owners.insert(target.id.clone(), owner);
                // Placement compares targets by the price of a one-GPU worker. A price
                // that the backend's own configuration sets, such as a Batch queue's,
                // is more specific than the price table.
                if target.price_per_worker_hour <= 0.0 {
                    target.price_per_worker_hour =
                        tunables
                            .prices
                            .per_worker_hour(&target.id, backend.gpu_sku(), 1);
                }
                backends.push(target);
            }
        }

        let mut jobs = Vec::new();
        for job in running {
            if job.queued + job.leased == 0 {
                continue;
            }
            let traits = match self.traits.get(&job.job_id) {
                Some(traits) => traits.clone(),
                None => {
                    let traits = job_traits(job)?;
                    self.traits.insert(job.job_id.clone(), traits.clone());
                    traits
                }
            };
            self.count_unseen_workers(job, &mut backends).await?;
            let wait = self.ledger.queue_wait(&job.job_id).await?;
            jobs.push(JobSnapshot {
                job_id: job.job_id.clone(),
                tasks_left: job.queued + job.leased,
                queued: job.queued,
                task_secs: self
                    .estimator
                    .estimate(&traits.kernel, &traits.model_sha256),
                deadline: traits.deadline,
                admitted_at: job.admitted_at_ms as f64 / 1000.0,
                oldest_queued_at: wait.map(|wait| now - wait.as_secs_f64()),
                priority: job.priority,
                max_workers: tunables.max_workers_per_job,
            });
        }

        let mut caps = tunables.caps.clone();
        caps.spent_today = self.ledger.burst_spend(&utc_day(now)).await?;
        let snapshot = Snapshot {
            now,
            jobs,
            backends,
            caps,
        };
        Ok((snapshot, owners))
    }

    /// Counts workers registered in the ledger but reported by no backend, such as local
    /// workers that a previous daemon started, as running on the first pool, so that
    /// placement does not start a second fleet after a restart.
    async fn count_unseen_workers(
        &self,
        job: &JobRecord,
        backends: &mut [BackendSnapshot],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let registered = self.ledger.live_workers(&job.job_id).await?;
        let reported: u64 = backends
            .iter()
            .map(|target| u64::from(target.job_workers(&job.job_id).current()))
            .sum();
        let unseen = registered.saturating_sub(reported) as u32;
        if unseen == 0 {
            return Ok(());
        }
        if let Some(pool) = backends
            .iter_mut()
            .find(|target| target.kind == BackendKind::Pool)
        {
            let count = pool
                .workers
                .entry(job.job_id.clone())
                .or_insert(WorkerCount {
                    running: 0,
                    requested: 0,
                });
            count.running += unseen;
            pool.free_workers = pool.free_workers.saturating_sub(unseen);
        }
        Ok(())
    }

    /// Sets the placement gauges from a plan.
    fn export_plan(&self, snapshot: &Snapshot, plan: &Plan) {
        self.metrics.placement_workers.clear();
        for target in &snapshot.backends {
            let labels = BackendLabels {
                backend: target.id.clone(),
            };
            self.metrics
                .backend_available
                .get_or_create(&labels)
                .set(i64::from(target.available));
        }
        let mut at_risk = 0;
        for job in &plan.jobs {
            at_risk += i64::from(job.deadline_at_risk);
            for decision in &job.decisions {
                let labels = PlacementLabels {
                    backend: decision.backend_id.clone(),
                    reason: decision.reason.as_label().into(),
                };
                self.metrics
                    .placement_workers
                    .get_or_create(&labels)
                    .inc_by(i64::from(decision.desired));
            }
        }
        self.metrics.jobs_deadline_at_risk.set(at_risk);
    }

    /// Sets the job, task and worker gauges.
    async fn export_counts(&self, jobs: &[JobRecord]) {
        let mut jobs_by_state: HashMap<&str, i64> = HashMap::new();
        let mut tasks_by_state: HashMap<&'static str, i64> = HashMap::new();
        for job in jobs {
            *jobs_by_state.entry(job.state.as_str()).or_default() += 1;
            for (state, count) in [
                ("queued", job.queued),
                ("leased", job.leased),
                ("succeeded", job.succeeded),
                ("failed", job.failed),
                ("dead", job.dead),
            ] {
                *tasks_by_state.entry(state).or_default() += count as i64;
            }
        }
        for state in ["admitting", "preparing", "running", "reducing"] {
            let count = jobs_by_state.get(state).copied().unwrap_or(0);
            self.metrics
                .jobs
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(count);
        }
        for (state, count) in tasks_by_state {
            self.metrics
                .tasks
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(count);
        }
        for backend in &self.backends {
            let workers = i64::from(backend.running_total().await);
            let labels = BackendLabels {
                backend: backend.name().into(),
            };
            self.metrics.workers.get_or_create(&labels).set(workers);
        }
    }

    async fn reduce(
        &self,
        job: &JobRecord,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if !self
            .ledger
            .try_lock_reduce(&job.job_id, &self.daemon_id, REDUCE_LOCK)
            .await?
        {
            debug!(job_id = %job.job_id, "another daemon is reducing this job");
            return Ok(());
        }
        let prices = self.tunables.borrow().prices.clone();
        let gpu_sku = self
            .backends
            .first()
            .map_or("cpu", |backend| backend.gpu_sku());
        let reduced = reduce::reduce(&self.ledger, job, gpu_sku, &prices).await?;
        self.job_finished(&job.job_id, &reduced).await;
        Ok(())
    }

    /// Runs a training job's next round step: begins round 0, finishes creating a
    /// round's tasks, or reduces the current round and begins the next. Returns the
    /// job when it runs again, so this pass already places its workers.
    async fn advance_round(
        &self,
        job: &JobRecord,
    ) -> Result<Option<JobRecord>, Box<dyn std::error::Error + Send + Sync>> {
        if !self
            .ledger
            .try_lock_reduce(&job.job_id, &self.daemon_id, ROUND_LOCK)
            .await?
        {
            debug!(job_id = %job.job_id, "another daemon is advancing this job's rounds");
            return Ok(None);
        }
        let prices = self.tunables.borrow().prices.clone();
        let gpu_sku = self
            .backends
            .first()
            .map_or("cpu", |backend| backend.gpu_sku());
        let started = std::time::Instant::now();
        let step = if job.state == "reducing" {
            let step =
                rounds::reduce_round(&self.ledger, &self.round_files, job, gpu_sku, &prices).await;
            if step.is_ok() {
                self.metrics.training_rounds.inc();
                self.metrics
                    .round_reduce_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            step
        } else {
            rounds::prepare(&self.ledger, job, gpu_sku, &prices).await
        };
        // Released at once, so the next round is not held up by this one's lock.
        if let Err(error) = self
            .ledger
            .unlock_reduce(&job.job_id, &self.daemon_id)
            .await
        {
            warn!(job_id = %job.job_id, error = %error_chain(&error), "failed to release the reduce lock; it expires by itself");
        }

        match step? {
            RoundStep::Begun { round, state } => {
                debug!(job_id = %job.job_id, round, "round open for leasing");
                if let Some(state) = state {
                    state.write(&self.round_files).await;
                }
                Ok(self
                    .ledger
                    .job(&job.job_id)
                    .await?
                    .filter(|job| job.state == "running"))
            }
            RoundStep::Concluded(reduced) => {
                self.job_finished(&job.job_id, &reduced).await;
                Ok(None)
            }
            RoundStep::Stale { state } => {
                debug!(job_id = %job.job_id, state, "the job moved on; no round step");
                Ok(None)
            }
        }
    }

    /// Ends a finished job's workers, counts it, logs it and sends its notification.
    async fn job_finished(&self, job_id: &str, reduced: &reduce::Reduced) {
        self.finish_backends(job_id, "the finished job's leftover")
            .await;
        self.metrics
            .jobs_finished
            .get_or_create(&StateLabels {
                state: reduced.state.into(),
            })
            .inc();
        info!(
            job_id,
            state = reduced.state,
            artefact = ?reduced.artefact_uri,
            run_hash = %reduced.envelope.run_hash,
            failed_tasks = reduced.envelope.failed_tasks.len(),
            cost = reduced.envelope.cost.as_ref().map_or(0.0, |cost| cost.total),
            "job finished"
        );
        self.notifiers.job_finished(job_id);
    }

    /// Ends a job's leftover workers on every backend; a failure is logged only.
    async fn finish_backends(&self, job_id: &str, whose: &str) {
        for backend in &self.backends {
            if let Err(error) = backend.finish(job_id).await {
                warn!(job_id, backend = backend.name(), error = %error_chain(&error), "failed to end {whose} workers");
            }
        }
    }

    async fn drain_observations(
        &mut self,
        tunables: &Tunables,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut burst_spend = 0.0;
        for observation in self.ledger.drain_observations(OBSERVATION_BATCH).await? {
            let task = TaskLabels {
                kernel: observation.kernel.clone(),
                backend: observation.backend.clone(),
            };
            self.metrics
                .task_runtime_seconds
                .get_or_create(&task)
                .observe(observation.runtime_secs);
            self.metrics
                .task_wait_seconds
                .get_or_create(&task)
                .observe(observation.wait_secs);
            if observation.outcome == "duplicate" {
                self.metrics.duplicates_suppressed.inc();
            }
            if observation.outcome == "succeeded" {
                // The worker time, not the runtime: the estimate is of how much work
                // a worker gets through, and its attempts overlap.
                self.estimator.observe(
                    &observation.kernel,
                    &observation.model_sha256,
                    observation.worker_secs(),
                );
            }
            let amount = self.count_usage(&observation, &tunables.prices);
            if cost::backend_kind(&observation.backend) == "batch" {
                burst_spend += amount;
            }
            let attempt = AttemptLabels {
                kernel: observation.kernel,
                backend: observation.backend,
                outcome: observation.outcome,
            };
            self.metrics.task_attempts.get_or_create(&attempt).inc();
        }
        if burst_spend > 0.0 {
            let now = spillway_common::ledger::now_ms() as f64 / 1000.0;
            self.ledger
                .add_burst_spend(&utc_day(now), burst_spend)
                .await?;
        }
        Ok(())
    }

    /// Adds one attempt's worker time to the worker time, GPU time and cost counters,
    /// and returns its cost.
    fn count_usage(&self, observation: &TaskObservation, prices: &PriceTable) -> f64 {
        let backend = cost::backend_kind(&observation.backend).to_string();
        let gpu = match observation.gpu_sku.as_str() {
            "" => "cpu".to_string(),
            sku => sku.to_string(),
        };
        let seconds = observation.worker_secs().max(0.0);
        let amount = prices.cost(&observation.backend, &gpu, observation.gpus, seconds);
        let labels = GpuLabels {
            backend: backend.clone(),
            gpu,
        };
        self.metrics
            .worker_seconds
            .get_or_create(&labels)
            .inc_by(seconds);
        self.metrics
            .gpu_seconds
            .get_or_create(&labels)
            .inc_by(seconds * f64::from(observation.gpus));
        self.metrics
            .cost
            .get_or_create(&BackendLabels { backend })
            .inc_by(amount);
        amount
    }
}

/// Reads the kernel, model digest and deadline of a job's manifest.
fn job_traits(job: &JobRecord) -> Result<JobTraits, Box<dyn std::error::Error + Send + Sync>> {
    let manifest = job.manifest()?;
    let deadline = match &manifest.deadline {
        Some(text) => match OffsetDateTime::parse(text, &Rfc3339) {
            Ok(time) => Some(time.unix_timestamp_nanos() as f64 / 1e9),
            Err(error) => {
                // Admission validated it, so only a manifest from another version gets here.
                warn!(job_id = %job.job_id, deadline = %text, error = %error, "unreadable deadline; placing the job as if it had none");
                None
            }
        },
        None => None,
    };
    Ok(JobTraits {
        kernel: manifest.kernel.name().to_string(),
        model_sha256: manifest.model.sha256.to_string(),
        deadline,
    })
}

/// Returns the UTC day of a Unix time as `YYYY-MM-DD`.
fn utc_day(unix_secs: f64) -> String {
    let time =
        OffsetDateTime::from_unix_timestamp(unix_secs as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}",
        time.year(),
        u8::from(time.month()),
        time.day()
    )
}

/// Waits for a wake on `waker` for up to `timeout`. Returns the woken job.
async fn wait_wake(waker: &Ledger, timeout: Duration) -> Option<String> {
    // Under the connection's 10 s response timeout; a longer wait ends early and
    // the loop runs a pass sooner.
    let timeout = timeout.min(Duration::from_secs(5));
    match waker.wait_wake(timeout).await {
        Ok(woken) => woken,
        Err(error) => {
            debug!(error = %error_chain(&error), "waiting for a wake failed");
            tokio::time::sleep(timeout).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_day_formats_dates() {
        assert_eq!(utc_day(0.0), "1970-01-01");
        assert_eq!(utc_day(1_796_428_800.0), "2026-12-05");
    }
}
