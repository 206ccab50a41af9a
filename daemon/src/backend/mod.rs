//! Backends start workers for a job and report how many are running. They differ
//! only in how they start N workers and observe them: every worker gets the same
//! environment contract and finds its work in the ledger.

pub mod batch;
pub mod local;
pub mod slurm;

use std::collections::HashMap;

use spillway_common::manifest::Manifest;

use crate::placement::{BackendKind, BackendSnapshot, WorkerCount};

/// Errors from a backend, naming the job.
#[derive(Debug, thiserror::Error)]
#[error("backend {backend} failed to {operation} for job {job_id}")]
pub struct BackendError {
    pub backend: &'static str,
    pub operation: &'static str,
    pub job_id: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Request to start workers for one job.
#[derive(Debug, Clone)]
pub struct LaunchRequest<'a> {
    pub job_id: &'a str,
    pub manifest: &'a Manifest,
    /// Workers to start.
    pub count: u32,
    /// The placement target to start them on: an `id` that `targets` returned.
    pub target: &'a str,
}

/// A worker that exited with a failure, as its backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWorker {
    pub job_id: String,
    pub worker_id: String,
    /// The end of the process, such as `worker local-7-1-node-4242 exited with
    /// signal: 9 (SIGKILL)`.
    pub reason: String,
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// `local`, `slurm` or `batch`, as in metrics and worker ids.
    fn name(&self) -> &'static str;

    /// Returns why this backend cannot run the manifest's worker build, if it cannot.
    fn check(&self, manifest: &Manifest) -> Result<(), String>;

    /// GPU model name reported for its workers, or `cpu`.
    fn gpu_sku(&self) -> &str;

    /// Workers this backend may run at once over all jobs.
    fn max_workers(&self) -> u32;

    /// Starts `count` workers for a job and returns how many started.
    async fn launch(&self, request: LaunchRequest<'_>) -> Result<u32, BackendError>;

    /// Workers of a job that this backend started and that have not exited, including
    /// ones still starting up.
    async fn running(&self, job_id: &str) -> u32;

    /// Workers of all jobs that are running.
    async fn running_total(&self) -> u32;

    /// Observes the backend once per reconcile pass, for the running jobs given, so
    /// that `running` answers from one poll instead of one request per job.
    async fn refresh(&self, _running_jobs: &[String]) -> Result<(), BackendError> {
        Ok(())
    }

    /// Takes the workers seen to exit with a failure since the last call, so that
    /// their leases end now instead of at their deadline. A backend that cannot see a
    /// worker's exit returns none, and the leases expire as usual.
    async fn take_lost(&self) -> Vec<LostWorker> {
        Vec::new()
    }

    /// Ends what is left of a finished job's workers, such as pending array elements.
    async fn finish(&self, _job_id: &str) -> Result<(), BackendError> {
        Ok(())
    }

    /// Estimated time from a request to a running worker, such as the queue wait on
    /// Slurm or a container's start on Batch.
    fn startup_secs(&self) -> f64 {
        30.0
    }

    /// Describes this backend to placement as of the last `refresh`: one entry per
    /// place that can start workers, such as one per Batch job queue. The caller
    /// fills in the prices. This default describes one pool whose workers all count
    /// as running.
    async fn targets(&self, jobs: &[String]) -> Vec<BackendSnapshot> {
        let mut workers = HashMap::new();
        for job_id in jobs {
            let running = self.running(job_id).await;
            if running > 0 {
                let count = WorkerCount {
                    running,
                    requested: 0,
                };
                workers.insert(job_id.clone(), count);
            }
        }
        let total = self.running_total().await;
        vec![BackendSnapshot {
            id: self.name().to_string(),
            kind: BackendKind::Pool,
            region: None,
            capacity_workers: self.max_workers(),
            free_workers: self.max_workers().saturating_sub(total),
            workers,
            price_per_worker_hour: 0.0,
            startup_secs: self.startup_secs(),
            available: true,
        }]
    }
}
