//! Backend `slurm`: workers run as the elements of Slurm array jobs on the GPU pool.
//!
//! A launch submits one array per `MaxArraySize` elements, with a `%N` throttle, the
//! configured partition, account, QOS and time limit, and one GPU request per element
//! from the manifest. The batch script comes from an admin-editable template, so a
//! site can wrap the worker in Apptainer or pyxis. Submitted arrays are recorded in
//! the ledger, and `refresh` polls all of them in one request per reconcile pass.
//! Completion comes from the ledger, because finished jobs vanish from Slurm after
//! `MinJobAge`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spillway_common::digest::Sha256Hex;
use spillway_common::ledger::Ledger;
use spillway_common::manifest::Manifest;
use spillway_common::worker_env as env;
use spillway_slurm::{ArraySubmission, SlurmApi};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::local::WorkerLedger;
use super::{Backend, BackendError, LaunchRequest};
use crate::config::SlurmBackendConfig;
use crate::placement::{BackendKind, BackendSnapshot, WorkerCount};

/// Name of the backend in metrics, logs and worker ids.
const NAME: &str = "slurm";

/// Time from submission to a running element when nothing waits: the scheduler's
/// cycle plus the worker's start. An estimate, not a measurement.
const DEFAULT_STARTUP_SECS: f64 = 30.0;

/// The batch script used when `backend.slurm.script_template_file` is not set.
/// `{worker_binary}`, `{image}` and `{index_offset}` are replaced at submission.
pub const DEFAULT_SCRIPT_TEMPLATE: &str = r#"#!/bin/bash
# Spillway worker array element. Slurm sets SLURM_ARRAY_JOB_ID and SLURM_ARRAY_TASK_ID.
export SPILLWAY_ARRAY_ID="${SLURM_ARRAY_JOB_ID}"
export SPILLWAY_ARRAY_INDEX=$(( {index_offset} + SLURM_ARRAY_TASK_ID ))
exec {worker_binary} run
"#;

/// A submitted array counts as fully alive until a poll has seen it, so a status
/// that lags behind a submission never starts a second fleet.
const UNSEEN_GRACE: Duration = Duration::from_secs(120);

pub struct SlurmBackend {
    api: Arc<dyn SlurmApi>,
    config: SlurmBackendConfig,
    ledger: Ledger,
    worker_ledger: WorkerLedger,
    lease_secs: u64,
    worker_digest: Option<Sha256Hex>,
    script_template: String,
    max_array_size: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Live elements per array id, from the last poll.
    alive: HashMap<u64, u32>,
    /// Elements per array id that the last poll saw waiting for resources.
    pending: HashMap<u64, u32>,
    /// When each array with waiting elements was first seen waiting.
    pending_since: HashMap<u64, Instant>,
    /// GPUs free in the partition at the last poll; `None` when it has no GPUs or the
    /// node listing failed.
    free_gpus: Option<u64>,
    /// Arrays this daemon submitted and no poll has seen yet, with their size.
    unseen: HashMap<u64, (u32, Instant)>,
    /// Array ids per job, from the ledger.
    arrays_by_job: HashMap<String, Vec<u64>>,
}

impl SlurmBackend {
    /// Creates the backend: reads the script template and asks Slurm for its
    /// `MaxArraySize` unless the configuration sets it.
    pub async fn new(
        api: Arc<dyn SlurmApi>,
        config: SlurmBackendConfig,
        ledger: Ledger,
        worker_ledger: WorkerLedger,
        lease_secs: u64,
    ) -> anyhow::Result<Self> {
        let script_template = match &config.script_template_file {
            Some(path) => std::fs::read_to_string(path).map_err(|error| {
                anyhow::anyhow!(
                    "failed to read backend.slurm.script_template_file {}: {error}",
                    path.display()
                )
            })?,
            None => DEFAULT_SCRIPT_TEMPLATE.to_string(),
        };
        anyhow::ensure!(
            script_template.starts_with("#!"),
            "backend.slurm.script_template_file must start with #! and an interpreter"
        );
        // The daemon may not see the compute nodes' file system; without a readable
        // binary, manifests pinned by binary digest are not checked at admission.
        let worker_digest = std::fs::read(&config.worker_binary)
            .ok()
            .map(|bytes| Sha256Hex::of(&bytes));

        let max_array_size = match config.max_array_size {
            Some(size) => size,
            None => api.diag().await.map(|diag| diag.max_array_size).unwrap_or_else(|error| {
                warn!(backend = NAME, error = %error, "failed to read MaxArraySize; assuming Slurm's default");
                spillway_slurm::DEFAULT_MAX_ARRAY_SIZE
            }),
        };
        // Indexes start at 0 and stay below MaxArraySize, so an array holds up to
        // MaxArraySize elements.
        let max_array_size = max_array_size.max(1);

        Ok(Self {
            api,
            config,
            ledger,
            worker_ledger,
            lease_secs,
            worker_digest,
            script_template,
            max_array_size,
            state: Mutex::default(),
        })
    }

    pub fn max_array_size(&self) -> u32 {
        self.max_array_size
    }

    fn script(&self, manifest: &Manifest, index_offset: u32) -> String {
        self.script_template
            .replace(
                "{worker_binary}",
                &self.config.worker_binary.display().to_string(),
            )
            .replace("{image}", manifest.worker.image.as_deref().unwrap_or(""))
            .replace("{index_offset}", &index_offset.to_string())
    }

    fn environment(&self, job_id: &str) -> BTreeMap<String, String> {
        let mut environment = BTreeMap::from([
            (env::JOB_ID.to_string(), job_id.to_string()),
            (env::BACKEND.to_string(), NAME.to_string()),
            (env::LEDGER_URL.to_string(), self.worker_ledger.url.clone()),
            (
                env::LEDGER_PREFIX.to_string(),
                self.worker_ledger.prefix.clone(),
            ),
            (
                env::CACHE_DIR.to_string(),
                self.config.cache_dir.display().to_string(),
            ),
            (env::LEASE_SECS.to_string(), self.lease_secs.to_string()),
            (env::GPU_SKU.to_string(), self.config.gpu_sku.clone()),
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            ),
        ]);
        if let Some(path) = &self.worker_ledger.password_file {
            environment.insert(
                env::LEDGER_PASSWORD_FILE.to_string(),
                path.display().to_string(),
            );
        }
        if self.config.threads_per_worker > 0 {
            environment.insert(
                env::THREADS.to_string(),
                self.config.threads_per_worker.to_string(),
            );
        }
        for (name, value) in &self.config.extra_environment {
            environment.insert(name.clone(), value.clone());
        }
        environment
    }

    fn submission(
        &self,
        job_id: &str,
        manifest: &Manifest,
        offset: u32,
        size: u32,
    ) -> ArraySubmission {
        let gpus = manifest.gpus_per_worker;
        ArraySubmission {
            job_name: format!("spillway-{job_id}"),
            script: self.script(manifest, offset),
            indices: 0..=size - 1,
            throttle: self.config.throttle,
            partition: self.config.partition.clone(),
            gpus_per_task: (gpus > 0).then_some(gpus),
            gpu_type: self.config.gpu_type.clone(),
            cpus_per_task: self.config.cpus_per_task,
            memory_per_task_mib: self.config.memory_per_task_mib,
            time_limit: self.config.time_limit_secs.map(Duration::from_secs),
            account: self.config.account.clone(),
            qos: self.config.qos.clone(),
            working_directory: self.config.working_dir.clone(),
            environment: self.environment(job_id),
            output_path: Some(
                self.config
                    .log_dir
                    .join("%x-%A_%a.log")
                    .display()
                    .to_string(),
            ),
            error_path: None,
        }
    }

    fn error(
        &self,
        operation: &'static str,
        job_id: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> BackendError {
        BackendError {
            backend: NAME,
            operation,
            job_id: job_id.to_string(),
            source: Box::new(source),
        }
    }
}

#[async_trait::async_trait]
impl Backend for SlurmBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, manifest: &Manifest) -> Result<(), String> {
        match (&manifest.worker.binary_sha256, &manifest.worker.image) {
            (Some(pinned), _) => match &self.worker_digest {
                Some(digest) if digest == pinned => Ok(()),
                Some(digest) => Err(format!(
                    "worker.binary_sha256 is {pinned}, but this site's worker binary {} is {digest}; \
                     pin the installed build (`spillway-worker digest` prints it)",
                    self.config.worker_binary.display()
                )),
                // The worker checks its own digest at start and refuses a mismatch.
                None => Ok(()),
            },
            (None, Some(image)) if self.script_template.contains("{image}") => {
                debug!(image, "image-pinned job accepted by the script template");
                Ok(())
            }
            (None, Some(image)) => Err(format!(
                "worker.image {image} needs a batch script template that runs containers \
                 (backend.slurm.script_template_file with an {{image}} placeholder)"
            )),
            (None, None) => Err("worker names neither image nor binary_sha256".into()),
        }
    }

    fn gpu_sku(&self) -> &str {
        &self.config.gpu_sku
    }

    fn max_workers(&self) -> u32 {
        self.config.max_workers
    }

    async fn launch(&self, request: LaunchRequest<'_>) -> Result<u32, BackendError> {
        let mut started = 0;
        let mut offset = self.ledger_offset(request.job_id).await?;

        while started < request.count {
            let size = (request.count - started).min(self.max_array_size);
            let submission = self.submission(request.job_id, request.manifest, offset, size);
            let submitted = self
                .api
                .submit_array(&submission)
                .await
                .map_err(|error| self.error("submit a worker array", request.job_id, error))?;

            self.ledger
                .record_array(request.job_id, NAME, &submitted.job_id.to_string(), size)
                .await
                .map_err(|error| self.error("record a worker array", request.job_id, error))?;
            let mut state = self.state.lock().await;
            state
                .unseen
                .insert(submitted.job_id, (size, Instant::now()));
            state
                .arrays_by_job
                .entry(request.job_id.to_string())
                .or_default()
                .push(submitted.job_id);
            drop(state);

            info!(
                job_id = request.job_id,
                backend = NAME,
                slurm_job_id = submitted.job_id,
                array_size = size,
                index_offset = offset,
                "worker array submitted"
            );
            started += size;
            offset += size;
        }
        Ok(started)
    }

    async fn running(&self, job_id: &str) -> u32 {
        let state = self.state.lock().await;
        let Some(arrays) = state.arrays_by_job.get(job_id) else {
            return 0;
        };
        arrays.iter().map(|array| state.live_elements(*array)).sum()
    }

    async fn running_total(&self) -> u32 {
        let state = self.state.lock().await;
        state
            .arrays_by_job
            .values()
            .flatten()
            .map(|array| state.live_elements(*array))
            .sum()
    }

    async fn refresh(&self, running_jobs: &[String]) -> Result<(), BackendError> {
        let mut arrays_by_job = HashMap::new();
        for job_id in running_jobs {
            let arrays = self
                .ledger
                .arrays(job_id, NAME)
                .await
                .map_err(|error| self.error("read worker arrays", job_id, error))?;
            let ids: Vec<u64> = arrays
                .iter()
                .filter_map(|(id, _)| id.parse().ok())
                .collect();
            if !ids.is_empty() {
                arrays_by_job.insert(job_id.clone(), ids);
            }
        }
        let all: Vec<u64> = arrays_by_job.values().flatten().copied().collect();
        // One request for every array of every job.
        let records = self
            .api
            .jobs(&all)
            .await
            .map_err(|error| self.error("poll worker arrays", "*", error))?;

        let mut alive: HashMap<u64, u32> = HashMap::new();
        let mut pending: HashMap<u64, u32> = HashMap::new();
        for record in records.iter().filter(|record| record.state.is_active()) {
            let elements = match record.pending_indices() {
                Some(indices) => indices.len() as u32,
                None => 1,
            };
            *alive.entry(record.tracking_id()).or_default() += elements;
            if record.state.is_pending() {
                *pending.entry(record.tracking_id()).or_default() += elements;
            }
        }
        // A second request per pass: the free GPUs of the partition, so that placement
        // sees a pool that other users fill.
        let free_gpus = match self.api.nodes().await {
            Ok(nodes) => free_gpus(&nodes, self.config.partition.as_deref()),
            Err(error) => {
                debug!(error = %error, "failed to list nodes; free GPUs unknown this pass");
                None
            }
        };

        let mut state = self.state.lock().await;
        let seen: Vec<u64> = records.iter().map(|record| record.tracking_id()).collect();
        let now = Instant::now();
        let mut since = HashMap::new();
        for array in pending.keys() {
            let first = state
                .pending_since
                .get(array)
                .copied()
                .or_else(|| state.unseen.get(array).map(|(_, submitted)| *submitted))
                .unwrap_or(now);
            since.insert(*array, first);
        }
        state.unseen.retain(|array, (_, submitted)| {
            !seen.contains(array) && submitted.elapsed() < UNSEEN_GRACE
        });
        state.alive = alive;
        state.pending = pending;
        state.pending_since = since;
        state.free_gpus = free_gpus;
        state.arrays_by_job = arrays_by_job;
        Ok(())
    }

    fn startup_secs(&self) -> f64 {
        DEFAULT_STARTUP_SECS
    }

    /// Returns one pool target. Pending and unseen elements count as requested. The
    /// start-up estimate grows with the age of the oldest waiting element, so a pool
    /// that others keep full makes placement spill.
    async fn targets(&self, jobs: &[String]) -> Vec<BackendSnapshot> {
        let state = self.state.lock().await;
        let mut workers = HashMap::new();
        let mut running_total = 0;
        for job_id in jobs {
            let Some(arrays) = state.arrays_by_job.get(job_id) else {
                continue;
            };
            let mut count = WorkerCount::default();
            for array in arrays {
                let live = state.live_elements(*array);
                let waiting = match state.unseen.get(array) {
                    Some((size, _)) => *size,
                    None => state.pending.get(array).copied().unwrap_or(0),
                };
                count.requested += waiting.min(live);
                count.running += live.saturating_sub(waiting);
            }
            running_total += count.running;
            if count.current() > 0 {
                workers.insert(job_id.clone(), count);
            }
        }
        let oldest_wait = state
            .pending_since
            .values()
            .map(|since| since.elapsed().as_secs_f64())
            .fold(0.0, f64::max);
        // Placement subtracts the requested (pending) elements itself, so only running
        // ones count against the free slots here.
        let mut free = self.config.max_workers.saturating_sub(running_total);
        if let Some(gpus) = state.free_gpus {
            free = free.min(u32::try_from(gpus).unwrap_or(u32::MAX));
        }
        vec![BackendSnapshot {
            id: NAME.to_string(),
            kind: BackendKind::Pool,
            region: None,
            capacity_workers: self.config.max_workers,
            free_workers: free,
            workers,
            price_per_worker_hour: 0.0,
            startup_secs: DEFAULT_STARTUP_SECS.max(oldest_wait),
            available: true,
        }]
    }

    async fn finish(&self, job_id: &str) -> Result<(), BackendError> {
        let arrays = self
            .ledger
            .arrays(job_id, NAME)
            .await
            .map_err(|error| self.error("read worker arrays", job_id, error))?;
        for (array_id, _) in arrays {
            let Ok(slurm_job_id) = array_id.parse::<u64>() else {
                continue;
            };
            // Elements still pending have nothing to do; running ones exit on their own.
            if let Err(error) = self.api.cancel(slurm_job_id).await {
                debug!(job_id, slurm_job_id, error = %error, "cancel of a finished job's array failed; it may have ended");
            }
            self.ledger
                .forget_array(job_id, NAME, &array_id)
                .await
                .map_err(|error| self.error("forget a worker array", job_id, error))?;
        }
        let mut state = self.state.lock().await;
        state.arrays_by_job.remove(job_id);
        Ok(())
    }
}

impl SlurmBackend {
    /// The next free array index for a job: the sum of the sizes of its arrays, so
    /// that indexes stay unique across submissions and daemon restarts.
    async fn ledger_offset(&self, job_id: &str) -> Result<u32, BackendError> {
        let arrays = self
            .ledger
            .arrays(job_id, NAME)
            .await
            .map_err(|error| self.error("read worker arrays", job_id, error))?;
        Ok(arrays.iter().map(|(_, size)| size).sum())
    }
}

/// GPUs free on the nodes of `partition` (every node without one) that take jobs, or
/// `None` when those nodes have no GPUs.
fn free_gpus(nodes: &[spillway_slurm::NodeInfo], partition: Option<&str>) -> Option<u64> {
    let in_partition = |node: &&spillway_slurm::NodeInfo| {
        partition.is_none_or(|name| node.partitions.iter().any(|p| p == name))
    };
    let nodes: Vec<_> = nodes.iter().filter(in_partition).collect();
    let total: u64 = nodes.iter().map(|node| node.gpus).sum();
    if total == 0 {
        return None;
    }
    Some(
        nodes
            .iter()
            .filter(|node| node.state.accepts_jobs())
            .map(|node| node.gpus.saturating_sub(node.allocated_gpus))
            .sum(),
    )
}

impl State {
    fn live_elements(&self, array: u64) -> u32 {
        if let Some((size, _)) = self.unseen.get(&array) {
            return *size;
        }
        self.alive.get(&array).copied().unwrap_or(0)
    }
}
