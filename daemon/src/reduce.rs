//! Reduction: once every task of a job is terminal, join the task results into the
//! artefact in record order and write the job envelope.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use spillway_common::artefact::EmbeddingBlock;
use spillway_common::digest::Sha256Hex;
use spillway_common::envelope::{DataRef, FailedTask, JobEnvelope, RunIdentity, TrainingRun};
use spillway_common::layout;
use spillway_common::ledger::{JobRecord, Ledger, TaskRecord};
use spillway_common::manifest::Manifest;
use spillway_common::store::{self, PutOutcome};
use tracing::{info, warn};

use crate::cost::PriceTable;

/// Result files read at once.
const READ_CONCURRENCY: usize = 16;

/// The outcome of reducing one job.
#[derive(Debug)]
pub struct Reduced {
    pub state: &'static str,
    pub artefact_uri: Option<String>,
    pub envelope: JobEnvelope,
}

/// Errors that stop a reduction; the job stays `reducing` and is tried again.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    #[error(transparent)]
    Ledger(#[from] spillway_common::ledger::LedgerError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("result of task {task_id} at {uri} is invalid")]
    Block {
        task_id: String,
        uri: String,
        #[source]
        source: spillway_common::artefact::BlockError,
    },
}

/// Reduces a job whose tasks are all terminal and records its final state. The run
/// identity names the GPU models that ran the job's attempts, or `gpu_sku` when no
/// worker recorded its usage.
pub async fn reduce(
    ledger: &Ledger,
    job: &JobRecord,
    gpu_sku: &str,
    prices: &PriceTable,
) -> Result<Reduced, ReduceError> {
    let manifest = job.manifest()?;
    let tasks = ledger.tasks(&job.job_id, job.tasks_total).await?;
    let failed = failed_tasks(&tasks);

    let conclusion = if failed.is_empty() {
        let artefact = write_artefact(job, &manifest, &tasks).await?;
        Conclusion::succeeded(artefact)
    } else {
        warn!(job_id = %job.job_id, failed_tasks = failed.len(), "job failed; no artefact is written");
        Conclusion::failed(failed)
    };
    conclude(ledger, job, &manifest, conclusion, gpu_sku, prices).await
}

/// The outcome of a job before its envelope is written: artefact, failed tasks and
/// training rounds.
#[derive(Debug, Default)]
pub struct Conclusion {
    /// The artefact's URI and SHA-256, when the job succeeded.
    pub artefact: Option<(String, Sha256Hex)>,
    /// Tasks that ended failed or dead; the job failed when any did.
    pub failed: Vec<FailedTask>,
    /// The rounds of a training job.
    pub training: Option<TrainingRun>,
}

impl Conclusion {
    pub fn succeeded(artefact: (String, Sha256Hex)) -> Self {
        Self {
            artefact: Some(artefact),
            ..Self::default()
        }
    }

    pub fn failed(failed: Vec<FailedTask>) -> Self {
        Self {
            failed,
            ..Self::default()
        }
    }

    fn state(&self) -> &'static str {
        if self.failed.is_empty() && self.artefact.is_some() {
            "succeeded"
        } else {
            "failed"
        }
    }
}

/// Lists the tasks that did not succeed, with their reasons.
pub fn failed_tasks(tasks: &[TaskRecord]) -> Vec<FailedTask> {
    tasks
        .iter()
        .filter(|task| task.state != "succeeded")
        .map(|task| FailedTask {
            task_id: task.spec.task_id.clone(),
            state: task.state.clone(),
            reason: task
                .reason
                .clone()
                .unwrap_or_else(|| "no reason recorded".into()),
        })
        .collect()
}

/// Writes the job envelope (create-only) and records the job's final state.
pub async fn conclude(
    ledger: &Ledger,
    job: &JobRecord,
    manifest: &Manifest,
    conclusion: Conclusion,
    gpu_sku: &str,
    prices: &PriceTable,
) -> Result<Reduced, ReduceError> {
    let state = conclusion.state();
    let Conclusion {
        artefact,
        failed,
        training,
    } = conclusion;
    let usage = ledger.usage(&job.job_id).await?;
    let mut skus: Vec<&str> = usage.iter().map(|entry| entry.gpu_sku.as_str()).collect();
    skus.sort_unstable();
    skus.dedup();
    let gpu_sku = if skus.is_empty() {
        gpu_sku.to_string()
    } else {
        skus.join("+")
    };
    let identity = job_identity(manifest, &gpu_sku);
    let envelope = JobEnvelope {
        job_id: job.job_id.clone(),
        name: job.name.clone(),
        state: state.to_string(),
        run_hash: identity.run_hash(),
        identity,
        artefact_uri: artefact.as_ref().map(|(uri, _)| uri.clone()),
        artefact_sha256: artefact.as_ref().map(|(_, sha256)| sha256.clone()),
        records: manifest.total_records(),
        tasks_total: job.tasks_total,
        tasks_succeeded: job.succeeded,
        failed_tasks: failed,
        duplicates_suppressed: job.duplicates,
        admitted_at: rfc3339_from_ms(job.admitted_at_ms),
        finished_at: rfc3339_from_ms(spillway_common::ledger::now_ms()),
        labels: manifest.labels.clone(),
        cost: Some(prices.job_cost(&usage)),
        training,
    };

    let envelope_uri = layout::job_envelope_uri(&manifest.output, &job.job_id);
    let json = serde_json::to_vec_pretty(&envelope).expect("job envelope serializes");
    if store::put_create(&envelope_uri, Bytes::from(json)).await? == PutOutcome::AlreadyExisted {
        info!(job_id = %job.job_id, uri = envelope_uri, "job envelope exists from an earlier reduction; kept");
    }

    let summary = serde_json::json!({
        "records": envelope.records,
        "run_hash": envelope.run_hash,
        "artefact_sha256": envelope.artefact_sha256,
        "envelope_uri": envelope_uri,
        "failed_tasks": envelope.failed_tasks.len(),
        "first_failure": envelope.failed_tasks.first(),
        "rounds": envelope.training.as_ref().map(|training| training.rounds.len()),
    });
    let artefact_uri = envelope.artefact_uri.clone();
    ledger
        .finish_job(
            &job.job_id,
            state,
            artefact_uri.as_deref(),
            &summary.to_string(),
        )
        .await?;

    Ok(Reduced {
        state,
        artefact_uri,
        envelope,
    })
}

async fn write_artefact(
    job: &JobRecord,
    manifest: &Manifest,
    tasks: &[TaskRecord],
) -> Result<(String, Sha256Hex), ReduceError> {
    // Each read owns its inputs, so the buffered stream holds no borrows across awaits.
    let reads = tasks.iter().cloned().map(|task| {
        let job_id = job.job_id.clone();
        let output = manifest.output.clone();
        async move { read_block(&job_id, &output, &task).await }
    });
    let blocks: Vec<EmbeddingBlock> = futures::stream::iter(reads)
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;

    let mut artefact = EmbeddingBlock {
        ids: Vec::new(),
        dimension: 0,
        values: Vec::new(),
    };
    for (task, block) in tasks.iter().zip(blocks) {
        artefact
            .extend(block)
            .map_err(|source| ReduceError::Block {
                task_id: task.spec.task_id.clone(),
                uri: task.result_uri.clone().unwrap_or_default(),
                source,
            })?;
    }

    let identity = job_identity(manifest, "");
    let metadata = [
        ("job_id", job.job_id.clone()),
        ("model_sha256", manifest.model.sha256.to_string()),
        ("worker_digest", identity.worker_digest.clone()),
    ];
    let bytes = artefact
        .encode(&metadata)
        .map_err(|source| ReduceError::Block {
            task_id: "(artefact)".into(),
            uri: String::new(),
            source,
        })?;

    let uri = layout::artefact_uri(&manifest.output, &job.job_id);
    let stored = match store::put_create(&uri, Bytes::from(bytes.clone())).await? {
        PutOutcome::Created => Bytes::from(bytes),
        // An earlier reduction wrote it and stopped before recording the job's state.
        PutOutcome::AlreadyExisted => store::get(&uri).await?,
    };
    info!(job_id = %job.job_id, uri, rows = artefact.rows(), "artefact written");
    Ok((uri, Sha256Hex::of(&stored)))
}

async fn read_block(
    job_id: &str,
    output: &str,
    task: &TaskRecord,
) -> Result<EmbeddingBlock, ReduceError> {
    let uri = task
        .result_uri
        .clone()
        .unwrap_or_else(|| layout::result_uri(output, job_id, &task.spec.task_id));
    let bytes = store::get(&uri).await?;
    let block = EmbeddingBlock::decode(&bytes).map_err(|source| ReduceError::Block {
        task_id: task.spec.task_id.clone(),
        uri: uri.clone(),
        source,
    })?;
    if block.rows() as u64 != task.spec.records {
        return Err(ReduceError::Block {
            task_id: task.spec.task_id.clone(),
            uri,
            source: spillway_common::artefact::BlockError::Shape(format!(
                "{} rows, expected {}",
                block.rows(),
                task.spec.records
            )),
        });
    }
    Ok(block)
}

/// Builds the run identity of a whole job over every input shard, in order.
pub fn job_identity(manifest: &Manifest, gpu_sku: &str) -> RunIdentity {
    let data = manifest
        .inputs
        .iter()
        .map(|shard| DataRef {
            uri: shard.uri.clone(),
            sha256: shard.sha256.clone(),
        })
        .collect();
    // A training job's settings include the `training` section: optimizer, seed and
    // rounds. Each round's weights are bound by the envelope's round records.
    let kernel_settings = match &manifest.training {
        Some(training) => serde_json::json!({
            "kernel": manifest.kernel,
            "training": training,
        }),
        None => serde_json::to_value(&manifest.kernel).expect("kernel serializes"),
    };
    RunIdentity {
        worker_digest: manifest.worker.digest(),
        kernel: manifest.kernel.name().to_string(),
        kernel_settings,
        model_sha256: manifest.model.sha256.clone(),
        data,
        gpu_sku: gpu_sku.to_string(),
    }
}

fn rfc3339_from_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|moment| {
            moment
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
