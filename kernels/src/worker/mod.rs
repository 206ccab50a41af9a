//! The worker loop: load the job's model once, then lease, run and complete tasks
//! until none is left, and exit so that the fleet dissolves.
//!
//! Every backend starts the worker with the same environment (see
//! [`spillway_common::worker_env`]); nothing else tells it what to do.

mod config;
mod heartbeat;
mod model;
mod task;
mod train_task;

pub use config::WorkerConfig;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use spillway_common::envelope::RunIdentity;
use spillway_common::ledger::{FailureKind, Ledger};
use spillway_common::manifest::{Kernel, Manifest};
use spillway_common::train::TrainRound;
use tracing::{error, info, warn};

use crate::embed::EmbedModel;
use crate::train::TrainKernel;
use heartbeat::{Heartbeats, HeldLeases};
use task::{Attempt, Finished, Finisher, TaskContext, TaskError};

/// Exit code when the worker binary does not match the digest the job is pinned to.
pub const EXIT_VERSION_DRIFT: i32 = 3;

/// Runs the worker until the job has no queued task. Returns the process exit code.
pub async fn run(config: WorkerConfig) -> anyhow::Result<i32> {
    let ledger = Ledger::connect(&config.ledger_url, &config.ledger_prefix).await?;
    let Some(job) = ledger.job(&config.job_id).await? else {
        anyhow::bail!("job {} not found in the ledger", config.job_id);
    };
    if job.is_finished() {
        info!(job_id = %config.job_id, state = %job.state, "job already finished; exiting");
        return Ok(0);
    }
    let manifest = Arc::new(job.manifest()?);
    let config = Arc::new(config);

    if let Err(drift) = check_worker_digest(&manifest) {
        error!(job_id = %config.job_id, error = %drift, "worker binary does not match the job");
        return Ok(EXIT_VERSION_DRIFT);
    }

    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone());
    let heartbeats = Heartbeats::start(&config)?;

    let outcome = match model::fetch(&manifest, &config).await {
        Ok(model_dir) => {
            let mut kernel = load_kernel(&manifest, &model_dir).with_context(|| {
                format!("failed to load the model from {}", model_dir.display())
            })?;
            run_tasks(
                &config,
                &ledger,
                &manifest,
                Some(&mut kernel),
                &heartbeats,
                &stop,
            )
            .await
        }
        Err(error) if error.is_data_error() => {
            // A model that does not match its digest makes every task of the job fail,
            // so fail them with that reason instead of leaving the job to stall.
            error!(job_id = %config.job_id, error = %error, "model verification failed");
            run_tasks(&config, &ledger, &manifest, None, &heartbeats, &stop).await
        }
        Err(error) => Err(error.into()),
    };

    heartbeats.stop();
    if let Err(error) = ledger.deregister(&config.job_id, &config.worker_id).await {
        warn!(job_id = %config.job_id, error = %error, "failed to deregister; the registration expires by itself");
    }
    outcome.map(|()| 0)
}

/// The job's kernel, loaded once per worker.
pub enum LoadedKernel {
    /// The `embed` kernel.
    Embed(EmbedModel),
    /// A training kernel, `contrastive` or `prompt_tune`.
    Train(TrainKernel),
}

/// Loads the manifest's kernel from the verified model directory.
fn load_kernel(manifest: &Manifest, model_dir: &Path) -> anyhow::Result<LoadedKernel> {
    let device = tch::Device::cuda_if_available();
    let kernel = match &manifest.kernel {
        Kernel::Embed { max_seq_len } => {
            LoadedKernel::Embed(EmbedModel::load(model_dir, device, *max_seq_len as usize)?)
        }
        training_kernel => {
            let seed = manifest
                .training
                .as_ref()
                .map_or(0, |training| training.seed);
            LoadedKernel::Train(TrainKernel::load(model_dir, device, training_kernel, seed)?)
        }
    };
    Ok(kernel)
}

/// Leases and runs tasks until none is left. The kernel computes one task while the
/// previous one's result is stored and completed on a task of its own. So the write
/// overlaps the next pass: tens of milliseconds for a 14 MB gradient on a local disk,
/// longer to an object store. At most one result is in flight: a worker holds at
/// most two leases, and waits for the stored result before it stores the next.
async fn run_tasks(
    config: &Arc<WorkerConfig>,
    ledger: &Ledger,
    manifest: &Arc<Manifest>,
    kernel: Option<&mut LoadedKernel>,
    heartbeats: &Heartbeats,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut context = TaskContext::new(config, kernel);
    let finisher = Finisher::new(config.clone(), ledger.clone(), manifest.clone());
    let mut in_flight: Option<InFlight> = None;
    let mut tasks_run = 0u64;

    let mut waiting = RoundWait::new(config, manifest);
    while !stop.load(Ordering::Relaxed) {
        let leased = ledger
            .lease(&config.job_id, &config.worker_id, config.lease)
            .await;
        let leased = match leased {
            Ok(leased) => leased,
            Err(error) => {
                // Let the result in flight finish before the worker gives up, so
                // that its task need not wait for its lease to expire.
                let _ = settle(&finisher, in_flight.take(), None).await;
                return Err(error.into());
            }
        };
        let Some(lease) = leased else {
            // The held result may be the round's last; the round cannot end before
            // it is completed.
            settle(&finisher, in_flight.take(), None).await?;
            if waiting.next_round(ledger, &config.job_id, stop).await? {
                continue;
            }
            break;
        };
        waiting.reset();
        heartbeats.hold(&lease.task_id, lease.attempt);

        let attempt = context.compute(lease).await;
        let started = attempt.started();
        settle(&finisher, in_flight.take(), Some(started)).await?;
        in_flight = Some(InFlight::spawn(&finisher, heartbeats.leases(), attempt));
        tasks_run += 1;
    }
    settle(&finisher, in_flight.take(), None).await?;

    info!(
        job_id = %config.job_id,
        worker_id = %config.worker_id,
        tasks_run,
        stopped = stop.load(Ordering::Relaxed),
        "no task left for this worker; exiting"
    );
    Ok(())
}

/// Keeps a training worker between rounds: while the reduce step runs, no task is
/// queued, but the next round's tasks will be, on weights the worker fetches in
/// place of reloading the model. The daemon leaves a token per task when a round
/// opens, and the worker blocks on them in the ledger.
struct RoundWait {
    /// `None` for `embed`, whose workers exit when no task is queued.
    limit: Option<Duration>,
    since: Option<std::time::Instant>,
}

impl RoundWait {
    /// Maximum time of one blocking wait. It stays under the ledger connection's
    /// response timeout, and the worker checks for a finished job or a stop signal
    /// between waits.
    const MAX_BLOCK: Duration = Duration::from_secs(2);

    fn new(config: &WorkerConfig, manifest: &Manifest) -> Self {
        Self {
            limit: manifest.kernel.is_training().then_some(config.round_wait),
            since: None,
        }
    }

    fn reset(&mut self) {
        self.since = None;
    }

    /// Returns whether to lease again: the job trains, has not finished and the wait
    /// is within its limit. Waits for a round to open before returning `true`.
    async fn next_round(
        &mut self,
        ledger: &Ledger,
        job_id: &str,
        stop: &AtomicBool,
    ) -> anyhow::Result<bool> {
        let Some(limit) = self.limit else {
            return Ok(false);
        };
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        let left = limit.saturating_sub(since.elapsed());
        if left.is_zero() || stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let Some(job) = ledger.job(job_id).await? else {
            return Ok(false);
        };
        if job.is_finished() {
            return Ok(false);
        }
        // A token left from an earlier round only costs one more lease attempt.
        ledger.wait_round(job_id, left.min(Self::MAX_BLOCK)).await?;
        Ok(true)
    }
}

/// An attempt being stored and completed, or its failure reported, on a task of its
/// own. That task stops the attempt's heartbeats once the ledger has its outcome.
struct InFlight {
    task_id: String,
    attempt: u32,
    leases: HeldLeases,
    handle: tokio::task::JoinHandle<(Finished, anyhow::Result<()>)>,
}

impl InFlight {
    fn spawn(finisher: &Finisher, leases: HeldLeases, attempt: Attempt) -> Self {
        let task_id = attempt.lease().task_id.clone();
        let attempt_number = attempt.lease().attempt;
        let finisher = finisher.clone();
        let task_leases = leases.clone();
        let handle = tokio::spawn(async move {
            let finished = finisher.clone().finish(attempt).await;
            let lease = &finished.lease;
            let reported = match &finished.error {
                Some(error) => {
                    let (config, ledger) = (finisher.config(), finisher.ledger());
                    report_failure(config, ledger, &lease.task_id, lease.attempt, error).await
                }
                None => Ok(()),
            };
            task_leases.release(&lease.task_id, lease.attempt);
            (finished, reported)
        });
        Self {
            task_id,
            attempt: attempt_number,
            leases,
            handle,
        }
    }
}

/// Waits for the attempt in flight, if any, and records its usage and observation.
/// `next_started` is when the worker's next attempt started, which ends the worker
/// time charged to this one. Returns the error of a failure that could not be
/// reported.
async fn settle(
    finisher: &Finisher,
    in_flight: Option<InFlight>,
    next_started: Option<std::time::Instant>,
) -> anyhow::Result<()> {
    let Some(in_flight) = in_flight else {
        return Ok(());
    };
    let (finished, reported) = match in_flight.handle.await {
        Ok(joined) => joined,
        Err(error) => {
            // Without heartbeats the lease expires, and the task is retried.
            in_flight
                .leases
                .release(&in_flight.task_id, in_flight.attempt);
            error!(task_id = %in_flight.task_id, error = %error, "storing a task's result panicked");
            return Ok(());
        }
    };
    finisher
        .observe(&finished, finished.worker_secs(next_started))
        .await;
    reported
}

async fn report_failure(
    config: &WorkerConfig,
    ledger: &Ledger,
    task_id: &str,
    attempt: u32,
    error: &TaskError,
) -> anyhow::Result<()> {
    let kind = if error.is_data_error() {
        FailureKind::Data
    } else {
        FailureKind::Retryable
    };
    let reason = spillway_common::process::error_chain(error);
    let state = ledger
        .fail(
            &config.job_id,
            task_id,
            &config.worker_id,
            attempt,
            kind,
            &reason,
        )
        .await?;
    warn!(
        job_id = %config.job_id,
        task_id,
        attempt,
        error = %reason,
        task_state = %state,
        "task attempt failed"
    );
    Ok(())
}

/// Checks that this binary is the one the job is pinned to, when it is pinned by
/// binary digest. Image-pinned jobs are checked by the container runtime.
fn check_worker_digest(manifest: &Manifest) -> anyhow::Result<()> {
    let Some(expected) = &manifest.worker.binary_sha256 else {
        return Ok(());
    };
    let actual = own_digest()?;
    anyhow::ensure!(
        &actual == expected,
        "the job requires worker binary sha256:{expected}, but this binary is sha256:{actual}; \
         install the pinned build or resubmit the manifest with the new digest"
    );
    Ok(())
}

/// Computes the SHA-256 of the running executable.
pub fn own_digest() -> anyhow::Result<spillway_common::digest::Sha256Hex> {
    let path = std::env::current_exe().context("failed to locate the worker executable")?;
    let bytes =
        std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?;
    Ok(spillway_common::digest::Sha256Hex::of(&bytes))
}

/// Builds the run identity of a task or a job over `data`. A training task's identity
/// also binds its round, the training settings and the round's weights file.
pub fn run_identity(
    manifest: &Manifest,
    gpu_sku: &str,
    mut data: Vec<spillway_common::envelope::DataRef>,
    round: Option<&TrainRound>,
) -> RunIdentity {
    let settings = match (&manifest.training, round) {
        (Some(training), Some(round)) => {
            data.push(spillway_common::envelope::DataRef {
                uri: round.weights_uri.clone(),
                sha256: round.weights_sha256.clone(),
            });
            spillway_common::train::run_settings(&manifest.kernel, training, round.round)
        }
        _ => serde_json::to_value(&manifest.kernel).expect("kernel serializes"),
    };
    RunIdentity {
        worker_digest: manifest.worker.digest(),
        kernel: manifest.kernel.name().to_string(),
        kernel_settings: settings,
        model_sha256: manifest.model.sha256.clone(),
        data,
        gpu_sku: gpu_sku.to_string(),
    }
}

/// Sets `stop` on SIGTERM or SIGINT: the worker finishes its current task and exits.
fn watch_signals(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("failed to install signal handlers; SIGTERM will end the worker at once");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("stop requested; finishing the current task");
        stop.store(true, Ordering::Relaxed);
    });
}
