//! Backend `batch`: workers run as the elements of AWS Batch array jobs, in one or
//! more job queues and regions.
//!
//! A launch goes to the queue that placement picked (a target from `targets`), or
//! fills the configured queues in order when the request names none of them. It
//! skips a queue whose region's circuit breaker is open, respects `max_workers` and
//! `max_workers_per_region`, and submits one array per `max_array_size` elements (a
//! single worker is a plain job, because Batch arrays have 2 to 10000 elements).
//! Each array runs the job definition of the manifest's image digest (see
//! [`definition`]) with the job id and the array's index offset as overrides.
//! Submissions wait for the region's token bucket and retry throttling with
//! jittered exponential backoff. A region that fails past the retry budget is
//! skipped for `cool_down_secs`, and the launch goes on with the next queue.
//!
//! Arrays are recorded in the ledger as `<region>/<Batch job id>`, so a restarted
//! daemon finds them. `refresh` polls each region once per reconcile pass (one
//! DescribeJobs request per 100 arrays) and reads the element counts from the array
//! status summaries. An array none of whose elements started within
//! `start_timeout_secs` shows that its region has no capacity: it is terminated and
//! the region skipped, so the next launch goes elsewhere. `finish` terminates what is
//! left of a finished job's arrays.

mod arrays;
pub mod definition;
pub mod limits;
mod poll;
mod region;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use spillway_common::ledger::Ledger;
use spillway_common::manifest::Manifest;
use spillway_common::process::error_chain;
use spillway_common::worker_env as env;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::local::WorkerLedger;
use super::{Backend, BackendError, LaunchRequest};
use crate::config::{BatchBackendConfig, BatchQueueConfig};
use crate::placement::{BackendKind, BackendSnapshot, WorkerCount};
use definition::{DefinitionSpec, container_overrides, image_digest, job_name};
use region::{CallError, Region, Submission};

pub use arrays::WorkerCounts;
use arrays::{ArrayRef, State, Unseen};

/// Name of the backend in metrics, logs and worker ids.
const NAME: &str = "batch";

/// A submitted array counts as fully pending until a poll has seen it, so a status
/// that lags behind a submission never starts a second fleet.
const UNSEEN_GRACE: Duration = Duration::from_secs(120);

/// Reason given to TerminateJob for the arrays of a finished job.
const FINISH_REASON: &str = "Spillway job finished";
/// Reason given to TerminateJob for an array that found no capacity.
const NO_CAPACITY_REASON: &str = "Spillway: no element started in time; trying another region";

/// A submission that did not happen.
enum SubmitFailure {
    /// The region failed; the launch goes on with the next queue.
    Region(CallError),
    /// The array was submitted but could not be recorded in the ledger.
    Ledger(BackendError),
}

/// The Batch backend: one client per region, the configured queues, and the
/// arrays it tracks.
pub struct BatchBackend {
    config: BatchBackendConfig,
    /// Configured queues in order, each with the index of its region in `regions`.
    queues: Vec<(BatchQueueConfig, usize)>,
    regions: Vec<Region>,
    ledger: Ledger,
    /// Variables that every worker of every job gets, part of the job definition.
    worker_environment: BTreeMap<String, String>,
    state: Mutex<State>,
}

impl BatchBackend {
    /// Creates the backend: one client per region, reading credential files. Sends
    /// no request, so an unreachable region shows up at the first launch.
    pub async fn new(
        config: BatchBackendConfig,
        ledger: Ledger,
        worker_ledger: WorkerLedger,
        lease_secs: u64,
    ) -> anyhow::Result<Self> {
        let mut regions: Vec<Region> = Vec::new();
        let mut queues = Vec::new();
        for queue in &config.queues {
            let index = match regions
                .iter()
                .position(|region| region.name == queue.region)
            {
                Some(index) => index,
                None => {
                    let region = Region::connect(queue, &config).await.map_err(|error| {
                        anyhow::anyhow!(
                            "failed to set up AWS Batch region {}: {}",
                            queue.region,
                            error_chain(&error)
                        )
                    })?;
                    regions.push(region);
                    regions.len() - 1
                }
            };
            queues.push((queue.clone(), index));
        }
        let worker_environment = worker_environment(&config, &worker_ledger, lease_secs);

        Ok(Self {
            config,
            queues,
            regions,
            ledger,
            worker_environment,
            state: Mutex::default(),
        })
    }

    /// Returns a job's running and pending workers over all queues.
    pub async fn job_workers(&self, job_id: &str) -> WorkerCounts {
        let state = self.state.lock().await;
        let mut counts = WorkerCounts::default();
        for array in state.arrays_by_job.get(job_id).into_iter().flatten() {
            counts.add(state.array(array).1);
        }
        counts
    }

    /// Starts up to `request.count` workers in the given queues (indexes into the
    /// configured queues), in that order, and returns how many started. Queues whose
    /// region is skipped or full are passed over; when every queue is, it starts none.
    pub async fn launch_in(
        &self,
        queue_order: &[usize],
        request: LaunchRequest<'_>,
    ) -> Result<u32, BackendError> {
        let job_id = request.job_id;
        let spec = self
            .definition_spec(request.manifest)
            .map_err(|problem| self.error("start workers", job_id, NotRunnable { problem }))?;
        let mut offset = self.ledger_offset(job_id).await?;
        let mut remaining = request.count.min(self.room_total().await);
        let mut started = 0;

        for &queue_index in queue_order {
            let Some((queue, region_index)) = self.queues.get(queue_index) else {
                continue;
            };
            let region = &self.regions[*region_index];
            if remaining == 0 {
                break;
            }
            if let Some(reason) = region.unavailable() {
                debug!(job_id, backend = NAME, region = %region.name, queue = %queue.job_queue, reason = reason.as_str(), "queue skipped");
                continue;
            }
            let mut room = remaining.min(self.room_in_region(&region.name).await);
            while room > 0 {
                let size = room.min(self.config.max_array_size);
                let target = Target {
                    queue,
                    queue_index,
                    region,
                };
                match self
                    .submit_array(&target, &request, &spec, offset, size)
                    .await
                {
                    Ok(()) => {}
                    Err(SubmitFailure::Region(error)) => {
                        warn!(job_id, backend = NAME, region = %region.name, queue = %queue.job_queue, error = %error_chain(&error), "failed to submit a worker array");
                        region.trip(error.failure.trip_reason());
                        break;
                    }
                    Err(SubmitFailure::Ledger(error)) => return Err(error),
                }
                started += size;
                offset += size;
                remaining -= size;
                room -= size;
            }
        }
        if remaining > 0 {
            debug!(
                job_id,
                backend = NAME,
                started,
                not_started = remaining,
                "no queue has room for more workers"
            );
        }
        Ok(started)
    }

    fn definition_spec(&self, manifest: &Manifest) -> Result<DefinitionSpec, String> {
        self.check(manifest)?;
        let image = manifest.worker.image.as_deref().unwrap_or_default();
        DefinitionSpec::new(&self.config, image, self.worker_environment.clone())
            .ok_or_else(|| format!("worker.image {image} is not pinned by digest"))
    }

    /// Submits one array to the target queue and records it.
    async fn submit_array(
        &self,
        target: &Target<'_>,
        request: &LaunchRequest<'_>,
        spec: &DefinitionSpec,
        offset: u32,
        size: u32,
    ) -> Result<(), SubmitFailure> {
        let job_id = request.job_id;
        let region = target.region;
        let definition_arn = region
            .definition_arn(spec)
            .await
            .map_err(SubmitFailure::Region)?;
        let submission = Submission {
            job_name: job_name(job_id),
            job_queue: &target.queue.job_queue,
            definition_arn: &definition_arn,
            size,
            overrides: container_overrides(job_id, offset, request.manifest.gpus_per_worker),
            job_id,
        };
        let batch_job_id = region
            .submit(&submission)
            .await
            .map_err(SubmitFailure::Region)?;

        let array = ArrayRef {
            region: region.name.clone(),
            batch_job_id,
        };
        if let Err(error) = self
            .ledger
            .record_array(job_id, NAME, &array.ledger_id(), size)
            .await
        {
            // An array the ledger does not know would run uncounted and unended.
            if let Err(terminate) = region.terminate(&array.batch_job_id, FINISH_REASON).await {
                warn!(job_id, backend = NAME, batch_job_id = %array.batch_job_id, error = %error_chain(&terminate), "failed to terminate an unrecorded worker array");
            }
            return Err(SubmitFailure::Ledger(self.error(
                "record a worker array",
                job_id,
                error,
            )));
        }

        let mut state = self.state.lock().await;
        let unseen = Unseen {
            queue: target.queue_index,
            size,
            submitted: Instant::now(),
        };
        state.unseen.insert(array.clone(), unseen);
        state
            .arrays_by_job
            .entry(job_id.to_string())
            .or_default()
            .push(array.clone());
        drop(state);

        info!(
            job_id,
            backend = NAME,
            region = %array.region,
            queue = %target.queue.job_queue,
            batch_job_id = %array.batch_job_id,
            job_definition = %definition_arn,
            array_size = size,
            index_offset = offset,
            "worker array submitted"
        );
        Ok(())
    }

    /// Returns the next free array index for a job: the sum of the sizes of its
    /// arrays, so that indexes stay unique across submissions and daemon restarts.
    async fn ledger_offset(&self, job_id: &str) -> Result<u32, BackendError> {
        let arrays = self
            .ledger
            .arrays(job_id, NAME)
            .await
            .map_err(|error| self.error("read worker arrays", job_id, error))?;
        Ok(arrays.iter().map(|(_, size)| size).sum())
    }

    async fn room_total(&self) -> u32 {
        let alive = self.running_total().await;
        self.config.max_workers.saturating_sub(alive)
    }

    async fn room_in_region(&self, region: &str) -> u32 {
        let state = self.state.lock().await;
        let alive: u32 = state
            .all_arrays()
            .filter(|array| array.region == region)
            .map(|array| state.array(array).1.alive())
            .sum();
        self.config.max_workers_per_region.saturating_sub(alive)
    }

    /// Returns the index of the queue whose target id is `target`.
    fn target_queue(&self, target: &str) -> Option<usize> {
        self.queues
            .iter()
            .position(|(queue, _)| target_id(queue) == target)
    }

    fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|region| region.name == name)
    }

    /// Finds the configured queue of a region whose name or ARN matches `arn`.
    fn queue_index(&self, region: &str, arn: &str) -> Option<usize> {
        self.queues.iter().position(|(queue, _)| {
            queue.region == region
                && (queue.job_queue == arn
                    || arn.ends_with(&format!("job-queue/{}", queue.job_queue)))
        })
    }

    /// Terminates an array; a failure is logged, because its elements exit on their
    /// own once they find no task.
    async fn terminate(&self, job_id: &str, array: &ArrayRef, reason: &str) {
        let Some(region) = self.region(&array.region) else {
            warn!(job_id, backend = NAME, region = %array.region, batch_job_id = %array.batch_job_id, "worker array in a region that is no longer configured is not terminated");
            return;
        };
        match region.terminate(&array.batch_job_id, reason).await {
            Ok(()) => {
                info!(job_id, backend = NAME, region = %array.region, batch_job_id = %array.batch_job_id, "worker array terminated")
            }
            Err(error) => {
                warn!(job_id, backend = NAME, region = %array.region, batch_job_id = %array.batch_job_id, error = %error_chain(&error), "failed to terminate a worker array; its elements exit once they find no task")
            }
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

/// Returns the placement target id of a queue: `batch/<region>/<job queue>`.
fn target_id(queue: &BatchQueueConfig) -> String {
    format!("{NAME}/{}/{}", queue.region, queue.job_queue)
}

/// The queue and region that one submission goes to.
struct Target<'a> {
    queue: &'a BatchQueueConfig,
    queue_index: usize,
    region: &'a Region,
}

/// A manifest that this backend cannot run.
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
struct NotRunnable {
    problem: String,
}

#[async_trait::async_trait]
impl Backend for BatchBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, manifest: &Manifest) -> Result<(), String> {
        match (&manifest.worker.image, &manifest.worker.binary_sha256) {
            (Some(image), _) if image_digest(image).is_some() => Ok(()),
            (Some(image), _) => Err(format!(
                "worker.image {image} is not pinned by digest; AWS Batch runs only images \
                 pinned as repo@sha256:<64 hex> (`docker buildx imagetools inspect` prints the digest)"
            )),
            (None, Some(_)) => Err(
                "worker pins only binary_sha256, but AWS Batch runs containers; \
                 pin worker.image as repo@sha256:<64 hex>"
                    .into(),
            ),
            (None, None) => Err("worker names neither image nor binary_sha256".into()),
        }
    }

    fn gpu_sku(&self) -> &str {
        &self.config.gpu_sku
    }

    fn max_workers(&self) -> u32 {
        self.config.max_workers
    }

    /// Starts workers in the queue that `request.target` names (an id from
    /// `targets`), or in the configured queues in order when it names none of them.
    async fn launch(&self, request: LaunchRequest<'_>) -> Result<u32, BackendError> {
        let order: Vec<usize> = match self.target_queue(request.target) {
            Some(index) => vec![index],
            None => (0..self.queues.len()).collect(),
        };
        self.launch_in(&order, request).await
    }

    fn startup_secs(&self) -> f64 {
        self.config.startup_secs
    }

    /// Describes each configured queue as one burst target with the id
    /// `batch/<region>/<job queue>`. Its price is the queue's `price_per_gpu_hour`,
    /// the price of a worker with one GPU.
    async fn targets(&self, _jobs: &[String]) -> Vec<BackendSnapshot> {
        let room_total = self.room_total().await;
        let state = self.state.lock().await;
        let mut workers: Vec<HashMap<String, WorkerCount>> =
            vec![HashMap::new(); self.queues.len()];
        let mut region_alive: HashMap<&str, u32> = HashMap::new();
        for (job_id, arrays) in &state.arrays_by_job {
            for array in arrays {
                let (queue, counts) = state.array(array);
                *region_alive.entry(array.region.as_str()).or_default() += counts.alive();
                let Some(queue) = queue else {
                    continue;
                };
                let count = workers[queue].entry(job_id.clone()).or_default();
                count.running += counts.running;
                count.requested += counts.pending;
            }
        }
        let region_alive: HashMap<String, u32> = region_alive
            .into_iter()
            .map(|(region, alive)| (region.to_string(), alive))
            .collect();
        drop(state);

        self.queues
            .iter()
            .zip(workers)
            .map(|((queue, region_index), workers)| {
                let region = &self.regions[*region_index];
                let alive = region_alive.get(&queue.region).copied().unwrap_or(0);
                let room_region = self.config.max_workers_per_region.saturating_sub(alive);
                // The rooms count this queue's pending elements, which placement
                // subtracts again as requested workers, so they are added back.
                let requested: u32 = workers.values().map(|count| count.requested).sum();
                BackendSnapshot {
                    id: target_id(queue),
                    kind: BackendKind::Burst,
                    region: Some(queue.region.clone()),
                    capacity_workers: self
                        .config
                        .max_workers
                        .min(self.config.max_workers_per_region),
                    free_workers: room_total.min(room_region).saturating_add(requested),
                    workers: workers
                        .into_iter()
                        .filter(|(_, count)| count.current() > 0)
                        .collect(),
                    price_per_worker_hour: queue.price_per_gpu_hour,
                    startup_secs: self.config.startup_secs,
                    available: region.unavailable().is_none(),
                }
            })
            .collect()
    }

    async fn running(&self, job_id: &str) -> u32 {
        self.job_workers(job_id).await.alive()
    }

    async fn running_total(&self) -> u32 {
        let state = self.state.lock().await;
        state
            .all_arrays()
            .map(|array| state.array(array).1.alive())
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
            let arrays: Vec<ArrayRef> = arrays
                .iter()
                .filter_map(|(id, _)| ArrayRef::parse(id))
                .collect();
            if !arrays.is_empty() {
                arrays_by_job.insert(job_id.clone(), arrays);
            }
        }

        let ended = self.state.lock().await.ended.clone();
        let mut by_region: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for array in arrays_by_job.values().flatten() {
            if !ended.contains(array) {
                by_region
                    .entry(array.region.as_str())
                    .or_default()
                    .push(array.batch_job_id.clone());
            }
        }
        let mut polled = Vec::new();
        let mut polls = Vec::new();
        for (region_name, ids) in by_region {
            let Some(region_polls) = self.poll_region(region_name, &ids).await else {
                continue;
            };
            polls.extend(region_polls);
            polled.extend(ids.into_iter().map(|batch_job_id| ArrayRef {
                region: region_name.to_string(),
                batch_job_id,
            }));
        }

        let stuck: Vec<ArrayRef> = polls
            .iter()
            .filter(|poll| poll.stuck)
            .map(|poll| poll.array.clone())
            .collect();
        self.apply_polls(arrays_by_job, polled, polls).await;
        for array in stuck {
            self.end_stuck_array(&array).await;
        }
        Ok(())
    }

    async fn finish(&self, job_id: &str) -> Result<(), BackendError> {
        let arrays = self
            .ledger
            .arrays(job_id, NAME)
            .await
            .map_err(|error| self.error("read worker arrays", job_id, error))?;
        let ended = self.state.lock().await.ended.clone();
        for (id, _) in arrays {
            if let Some(array) = ArrayRef::parse(&id)
                && !ended.contains(&array)
            {
                self.terminate(job_id, &array, FINISH_REASON).await;
            }
            self.ledger
                .forget_array(job_id, NAME, &id)
                .await
                .map_err(|error| self.error("forget a worker array", job_id, error))?;
        }

        let mut state = self.state.lock().await;
        if let Some(arrays) = state.arrays_by_job.remove(job_id) {
            for array in arrays {
                state.observed.remove(&array);
                state.unseen.remove(&array);
                state.ended.remove(&array);
            }
        }
        Ok(())
    }
}

/// Builds the variables that every worker gets, whatever the job.
fn worker_environment(
    config: &BatchBackendConfig,
    worker_ledger: &WorkerLedger,
    lease_secs: u64,
) -> BTreeMap<String, String> {
    let ledger_url = config
        .ledger_url
        .clone()
        .unwrap_or_else(|| worker_ledger.url.clone());
    let mut environment = BTreeMap::from([
        (env::BACKEND.to_string(), NAME.to_string()),
        (env::LEDGER_URL.to_string(), ledger_url),
        (env::LEDGER_PREFIX.to_string(), worker_ledger.prefix.clone()),
        (
            env::CACHE_DIR.to_string(),
            config.cache_dir.display().to_string(),
        ),
        (env::LEASE_SECS.to_string(), lease_secs.to_string()),
        (env::GPU_SKU.to_string(), config.gpu_sku.clone()),
    ]);
    if let Some(path) = &worker_ledger.password_file {
        // NOTE: the containers read the password from this path, so the job
        // definition's image or a mounted volume must provide the file there.
        environment.insert(
            env::LEDGER_PASSWORD_FILE.to_string(),
            path.display().to_string(),
        );
    }
    if config.threads_per_worker > 0 {
        environment.insert(
            env::THREADS.to_string(),
            config.threads_per_worker.to_string(),
        );
    }
    for (name, value) in &config.extra_environment {
        environment.insert(name.clone(), value.clone());
    }
    environment
}
