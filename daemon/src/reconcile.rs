//! The reconcile loop: for every active job, reap expired leases, start workers where
//! tasks wait, and reduce jobs whose tasks are all terminal. It reads everything from
//! the ledger on each pass, so a restarted daemon carries on where another stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use spillway_common::ledger::{JobRecord, Ledger};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, LaunchRequest};
use crate::metrics::{AttemptLabels, BackendLabels, Metrics, StateLabels, TaskLabels};
use crate::reduce;
use spillway_common::process::error_chain;

/// Expired leases handled per job and pass.
const REAP_LIMIT: u32 = 1000;

/// Observations drained per pass.
const OBSERVATION_BATCH: usize = 10_000;

/// How long one daemon holds a job's reduce lock.
const REDUCE_LOCK: Duration = Duration::from_secs(300);

pub struct Reconciler {
    pub ledger: Ledger,
    pub backend: Arc<dyn Backend>,
    pub metrics: Metrics,
    /// Identifies this daemon in locks.
    pub daemon_id: String,
}

impl Reconciler {
    /// Runs passes every `interval` until `shutdown`, pinging the systemd watchdog
    /// after each pass, so a wedged pass stops the pings.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut watchdog = crate::service::Watchdog::from_env();
        let interval = watchdog
            .max_sleep()
            .map_or(interval, |max| interval.min(max));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !shutdown.is_cancelled() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.pass().await {
                warn!(error = %error_chain(error.as_ref()), "reconcile pass failed; retrying next interval");
            }
            watchdog.ping();
        }
        info!("reconcile loop stopped");
    }

    /// Runs one pass over every active job.
    pub async fn pass(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.drain_observations().await?;

        let mut jobs_by_state: HashMap<String, i64> = HashMap::new();
        let mut tasks_by_state: HashMap<&'static str, i64> = HashMap::new();
        let mut jobs = Vec::new();
        for job_id in self.ledger.active_jobs().await? {
            match self.ledger.job(&job_id).await? {
                Some(job) => jobs.push(job),
                None => warn!(job_id, "active job has no record in the ledger"),
            }
        }
        // Higher priority first, then older jobs, so scarce workers go where they should.
        jobs.sort_by_key(|job| (-job.priority, job.admitted_at_ms));
        let running: Vec<String> = jobs
            .iter()
            .filter(|job| job.state == "running")
            .map(|job| job.job_id.clone())
            .collect();
        if let Err(error) = self.backend.refresh(&running).await {
            // Without a fresh view, placement counts the arrays it submitted as alive.
            warn!(backend = self.backend.name(), error = %error_chain(&error), "failed to observe the backend");
        }
        let mut free = self.free_slots(&jobs).await?;
        // While draining, leases are still reaped and jobs reduced, but no worker starts.
        if self.ledger.is_draining().await? {
            debug!("draining; no worker is started");
            free = 0;
        }

        for job in &jobs {
            if let Err(error) = self.reconcile_job(job, &mut free).await {
                error!(job_id = %job.job_id, error = %error_chain(error.as_ref()), "failed to reconcile job");
            }
            *jobs_by_state.entry(job.state.clone()).or_default() += 1;
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

        for state in ["admitting", "running", "reducing"] {
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
        let workers = i64::from(self.backend.running_total().await);
        let labels = BackendLabels {
            backend: self.backend.name().into(),
        };
        self.metrics.workers.get_or_create(&labels).set(workers);
        Ok(())
    }

    /// Counts the backend's free worker slots. Workers are counted per job as the larger
    /// of those registered in the ledger and those this daemon started, so workers
    /// that a previous daemon started still count after a restart.
    async fn free_slots(
        &self,
        jobs: &[JobRecord],
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let mut alive_total = 0;
        for job in jobs.iter().filter(|job| job.state == "running") {
            alive_total += self.alive_workers(job).await?;
        }
        Ok(u64::from(self.backend.max_workers()).saturating_sub(alive_total))
    }

    async fn alive_workers(
        &self,
        job: &JobRecord,
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let registered = self.ledger.live_workers(&job.job_id).await?;
        let started_here = u64::from(self.backend.running(&job.job_id).await);
        Ok(registered.max(started_here))
    }

    async fn reconcile_job(
        &self,
        job: &JobRecord,
        free: &mut u64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        match job.state.as_str() {
            "running" => {
                let report = self.ledger.reap(&job.job_id, REAP_LIMIT).await?;
                if report.expired > 0 {
                    self.metrics.lease_expiries.inc_by(report.expired);
                    warn!(job_id = %job.job_id, expired = report.expired, requeued = report.requeued, dead = report.dead, "leases expired");
                }
                // Read the job again: the reaper may have changed its counters or closed it.
                let Some(job) = self.ledger.job(&job.job_id).await? else {
                    return Ok(());
                };
                if job.state == "reducing" {
                    return self.reduce(&job).await;
                }
                self.place(&job, free).await
            }
            "reducing" => self.reduce(job).await,
            "cancelled" => {
                if let Err(error) = self.backend.finish(&job.job_id).await {
                    warn!(job_id = %job.job_id, error = %error_chain(&error), "failed to end a cancelled job's workers");
                }
                self.ledger
                    .finish_job(&job.job_id, "cancelled", None, "")
                    .await?;
                info!(job_id = %job.job_id, "job cancelled");
                Ok(())
            }
            "succeeded" | "failed" => {
                // Finished, but a crash kept it in the active set; finish_job is idempotent.
                self.ledger
                    .finish_job(&job.job_id, &job.state, job.artefact_uri.as_deref(), "")
                    .await?;
                Ok(())
            }
            // `admitting`: the intake finishes it when the message is redelivered.
            _ => Ok(()),
        }
    }

    /// Starts workers so that a job with queued tasks has one worker per open task, up
    /// to the free slots left by jobs placed before it. Workers exit on their own when
    /// no task is left.
    async fn place(
        &self,
        job: &JobRecord,
        free: &mut u64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if job.queued == 0 {
            return Ok(());
        }
        let open_tasks = job.queued + job.leased;
        let alive = self.alive_workers(job).await?;
        let shortfall = open_tasks.saturating_sub(alive);
        let count = shortfall.min(*free) as u32;
        if count == 0 {
            debug!(job_id = %job.job_id, queued = job.queued, alive, free = *free, "no worker to start");
            return Ok(());
        }

        let manifest = job.manifest()?;
        let started = self
            .backend
            .launch(LaunchRequest {
                job_id: &job.job_id,
                manifest: &manifest,
                count,
            })
            .await?;
        let labels = BackendLabels {
            backend: self.backend.name().into(),
        };
        self.metrics
            .workers_started
            .get_or_create(&labels)
            .inc_by(u64::from(started));
        *free = free.saturating_sub(u64::from(started));
        info!(job_id = %job.job_id, backend = self.backend.name(), started, queued = job.queued, alive, "placed workers");
        Ok(())
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
        let reduced = reduce::reduce(&self.ledger, job, self.backend.gpu_sku()).await?;
        if let Err(error) = self.backend.finish(&job.job_id).await {
            warn!(job_id = %job.job_id, backend = self.backend.name(), error = %error_chain(&error), "failed to end the finished job's leftover workers");
        }
        self.metrics
            .jobs_finished
            .get_or_create(&StateLabels {
                state: reduced.state.into(),
            })
            .inc();
        info!(
            job_id = %job.job_id,
            state = reduced.state,
            artefact = ?reduced.artefact_uri,
            run_hash = %reduced.envelope.run_hash,
            failed_tasks = reduced.envelope.failed_tasks.len(),
            "job finished"
        );
        Ok(())
    }

    async fn drain_observations(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
            let attempt = AttemptLabels {
                kernel: observation.kernel,
                backend: observation.backend,
                outcome: observation.outcome,
            };
            self.metrics.task_attempts.get_or_create(&attempt).inc();
        }
        Ok(())
    }
}
