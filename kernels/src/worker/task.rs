//! One task attempt: fetch and verify the shard, run the kernel, write the result
//! create-only, write the envelope, complete the task. The first two steps are
//! [`TaskContext::compute`], the rest [`Finisher::finish`], so that a worker can
//! store one result while its kernel computes the next.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use spillway_common::artefact::EmbeddingBlock;
use spillway_common::digest::Sha256Hex;
use spillway_common::envelope::{DataRef, ExitStatus, TaskEnvelope};
use spillway_common::layout;
use spillway_common::ledger::{Completion, Lease, Ledger, TaskObservation, UsageEntry};
use spillway_common::manifest::Manifest;
use spillway_common::process::error_chain;
use spillway_common::store::{self, PutOutcome, StoreError};
use tracing::{debug, warn};

use super::{LoadedKernel, WorkerConfig, run_identity, train_task};
use crate::embed::EmbedModel;
use crate::train::TrainError;

/// Texts per forward pass inside a task.
const FORWARD_BATCH: usize = 32;

/// Error that ended an attempt.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid record at line {line} of {uri}: {reason}")]
    Record {
        uri: String,
        line: u64,
        reason: String,
    },
    #[error("shard {uri} has {found} records, but the task needs records {first}..{end}")]
    ShortShard {
        uri: String,
        found: u64,
        first: u64,
        end: u64,
    },
    #[error(
        "shard {uri} has {found} records, but the manifest declares {declared}; \
         set inputs[].records to the shard's line count"
    )]
    RecordCount {
        uri: String,
        found: u64,
        declared: u64,
    },
    #[error(
        "model verification failed, so no task of this job can run; check model.uri and model.sha256"
    )]
    ModelUnavailable,
    #[error("kernel failed: {0}")]
    Kernel(String),
    #[error(
        "task {task_id} of a {kernel} job has no training round; \
         a daemon that runs training jobs sets the round and weights of every task"
    )]
    MissingRound {
        task_id: String,
        kernel: &'static str,
    },
    #[error("training kernel failed")]
    Train(#[from] TrainError),
    #[error("ledger failed")]
    Ledger(#[from] spillway_common::ledger::LedgerError),
}

impl TaskError {
    /// Returns whether the input is at fault, so a retry cannot help.
    pub fn is_data_error(&self) -> bool {
        match self {
            TaskError::Store(error) => error.is_data_error(),
            TaskError::Record { .. }
            | TaskError::ShortShard { .. }
            | TaskError::RecordCount { .. }
            | TaskError::ModelUnavailable
            | TaskError::MissingRound { .. } => true,
            TaskError::Train(error) => error.is_data_error(),
            TaskError::Kernel(_) | TaskError::Ledger(_) => false,
        }
    }
}

#[derive(Deserialize)]
struct Record {
    id: String,
    text: String,
}

/// State kept across the tasks of one worker: the kernel and the last shard read. It
/// computes attempts; a [`Finisher`] stores and completes them.
pub struct TaskContext<'a> {
    config: &'a WorkerConfig,
    kernel: Option<&'a mut LoadedKernel>,
    /// The last shard read, because consecutive tasks usually share a shard.
    shard_cache: Option<(Sha256Hex, Bytes)>,
}

impl<'a> TaskContext<'a> {
    pub fn new(config: &'a WorkerConfig, kernel: Option<&'a mut LoadedKernel>) -> Self {
        Self {
            config,
            kernel,
            shard_cache: None,
        }
    }

    /// Fetches the task's shard and runs the kernel on it. The result is not stored
    /// yet: [`Finisher::finish`] does that, while this context computes the next task.
    pub async fn compute(&mut self, lease: Lease) -> Attempt {
        let started_at = now_rfc3339();
        let started = Instant::now();
        let outcome = self.compute_result(&lease).await;
        Attempt {
            lease,
            started_at,
            started,
            outcome,
        }
    }

    async fn compute_result(&mut self, lease: &Lease) -> Result<Computed, TaskError> {
        if self.kernel.is_none() {
            return Err(TaskError::ModelUnavailable);
        }
        let shard = self
            .shard(&lease.spec.shard.uri, &lease.spec.shard.sha256)
            .await?;
        let job_id = &self.config.job_id;

        match self.kernel.as_deref_mut() {
            Some(LoadedKernel::Embed(embed)) => embed_result(embed, &shard, lease, job_id),
            Some(LoadedKernel::Train(train)) => {
                train_task::gradient_result(train, &shard, lease, job_id).await
            }
            None => Err(TaskError::ModelUnavailable),
        }
    }

    async fn shard(&mut self, uri: &str, sha256: &Sha256Hex) -> Result<Bytes, TaskError> {
        if let Some((cached_sha, bytes)) = &self.shard_cache
            && cached_sha == sha256
        {
            return Ok(bytes.clone());
        }
        let bytes = store::get_verified(uri, sha256).await?;
        self.shard_cache = Some((sha256.clone(), bytes.clone()));
        Ok(bytes)
    }
}

/// A task attempt whose kernel has run (or failed), not yet stored or completed.
pub struct Attempt {
    lease: Lease,
    started_at: String,
    started: Instant,
    outcome: Result<Computed, TaskError>,
}

impl Attempt {
    /// When the attempt started, just after its lease.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

/// An attempt that has ended: its result and envelope are written and the ledger
/// has its completion, or it failed.
pub struct Finished {
    pub lease: Lease,
    pub runtime_secs: f64,
    exit_status: ExitStatus,
    completion: Option<Completion>,
    /// The error that ended the attempt, which the caller reports to the ledger.
    pub error: Option<TaskError>,
    started: Instant,
    ended: Instant,
}

impl Finished {
    /// Returns the worker time to charge to this attempt: from its start to the start
    /// of the worker's next attempt, or to its own end when none followed. Attempts
    /// overlap while one is stored and the next computes, so their runtimes would
    /// count that time twice.
    pub fn worker_secs(&self, next_started: Option<Instant>) -> f64 {
        charged_secs(self.started, self.ended, next_started)
    }
}

/// Worker time of an attempt that ran from `started` to `ended` when the worker's
/// next attempt started at `next_started`.
fn charged_secs(started: Instant, ended: Instant, next_started: Option<Instant>) -> f64 {
    let until = next_started.map_or(ended, |next| next.min(ended));
    until.saturating_duration_since(started).as_secs_f64()
}

/// Stores computed attempts and completes them in the ledger. It owns what it needs,
/// so that an attempt can be finished on a task of its own while the kernel runs the
/// next one.
#[derive(Clone)]
pub struct Finisher {
    config: Arc<WorkerConfig>,
    ledger: Ledger,
    manifest: Arc<Manifest>,
}

impl Finisher {
    pub fn new(config: Arc<WorkerConfig>, ledger: Ledger, manifest: Arc<Manifest>) -> Self {
        Self {
            config,
            ledger,
            manifest,
        }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Writes the result create-only, then the envelope, then completes the task.
    /// The envelope of a failed attempt is written too; reporting the failure is left
    /// to the caller.
    pub async fn finish(self, attempt: Attempt) -> Finished {
        let Attempt {
            lease,
            started_at,
            started,
            outcome,
        } = attempt;
        let outcome = match outcome {
            Ok(computed) => self.put_result(&lease, computed).await,
            Err(error) => Err(error),
        };
        let runtime_secs = started.elapsed().as_secs_f64();

        let (exit_status, reason) = match &outcome {
            Ok(_) => (ExitStatus::Succeeded, None),
            Err(error) if error.is_data_error() => {
                (ExitStatus::DataError, Some(error_chain(error)))
            }
            Err(error) => (ExitStatus::Retryable, Some(error_chain(error))),
        };
        let envelope = self.envelope(
            &lease,
            started_at,
            runtime_secs,
            exit_status,
            reason,
            outcome.as_ref().ok(),
        );
        self.put_envelope(&lease, &envelope).await;

        let (completion, error) = match outcome {
            Ok(written) => match self.complete(&lease, &written).await {
                Ok(completion) => (Some(completion), None),
                Err(error) => (None, Some(error)),
            },
            Err(error) => (None, Some(error)),
        };
        Finished {
            lease,
            runtime_secs,
            exit_status,
            completion,
            error,
            started,
            ended: Instant::now(),
        }
    }

    async fn put_result(&self, lease: &Lease, computed: Computed) -> Result<Written, TaskError> {
        let uri = layout::result_uri(&self.manifest.output, &self.config.job_id, &lease.task_id);
        let bytes = computed.bytes;
        let outcome = store::put_create(&uri, bytes.clone()).await?;

        // Another attempt wrote the result first; its bytes are what the job keeps.
        let stored = match outcome {
            PutOutcome::Created => bytes,
            PutOutcome::AlreadyExisted => store::get(&uri).await?,
        };
        Ok(Written {
            uri,
            sha256: Sha256Hex::of(&stored),
            existed: outcome == PutOutcome::AlreadyExisted,
            kernel_secs: computed.kernel_secs,
        })
    }

    async fn complete(&self, lease: &Lease, written: &Written) -> Result<Completion, TaskError> {
        let completion = self
            .ledger
            .complete(
                &self.config.job_id,
                &lease.task_id,
                &self.config.worker_id,
                lease.attempt,
                &written.uri,
            )
            .await?;
        if completion == Completion::Duplicate {
            debug!(job_id = %self.config.job_id, task_id = %lease.task_id, "duplicate completion suppressed");
        }
        Ok(completion)
    }

    fn envelope(
        &self,
        lease: &Lease,
        started_at: String,
        runtime_secs: f64,
        exit_status: ExitStatus,
        error: Option<String>,
        written: Option<&Written>,
    ) -> TaskEnvelope {
        let data = vec![DataRef {
            uri: lease.spec.shard.uri.clone(),
            sha256: lease.spec.shard.sha256.clone(),
        }];
        let round = lease.spec.round.as_ref();
        let identity = run_identity(&self.manifest, &self.config.gpu_sku, data, round);

        TaskEnvelope {
            job_id: self.config.job_id.clone(),
            task_id: lease.task_id.clone(),
            attempt: lease.attempt,
            worker_id: self.config.worker_id.clone(),
            backend: self.config.backend.clone(),
            run_hash: identity.run_hash(),
            identity,
            started_at,
            finished_at: now_rfc3339(),
            runtime_secs,
            kernel_secs: written.map(|written| written.kernel_secs),
            exit_status,
            error,
            result_uri: written.map(|written| written.uri.clone()),
            result_sha256: written.map(|written| written.sha256.clone()),
            result_existed: written.is_some_and(|written| written.existed),
            records: lease.spec.records,
        }
    }

    /// Writes the attempt's envelope. A failed write is logged and does not fail the
    /// task, because the result is already safe and the reconciler reports the gap.
    async fn put_envelope(&self, lease: &Lease, envelope: &TaskEnvelope) {
        let uri = layout::envelope_uri(
            &self.manifest.output,
            &self.config.job_id,
            &lease.task_id,
            lease.attempt,
        );
        let json = serde_json::to_vec_pretty(envelope).expect("envelope serializes");
        if let Err(error) = store::put_create(&uri, Bytes::from(json)).await {
            warn!(job_id = %self.config.job_id, task_id = %lease.task_id, uri, error = %error, "failed to write envelope");
        }
    }

    /// Records a finished attempt's observation and the worker time it used. An
    /// attempt whose completion failed in the ledger records nothing, as the ledger
    /// is out of reach.
    pub async fn observe(&self, finished: &Finished, worker_secs: f64) {
        let lease = &finished.lease;
        let outcome = match (finished.exit_status, finished.completion) {
            (_, Some(Completion::Duplicate)) => "duplicate",
            (ExitStatus::Succeeded, Some(_)) => "succeeded",
            (ExitStatus::Succeeded, None) => return,
            (ExitStatus::DataError, _) => "data_error",
            (ExitStatus::Retryable, _) => "retryable",
        };
        let observation = TaskObservation {
            kernel: self.manifest.kernel.name().to_string(),
            backend: self.config.backend.clone(),
            outcome: outcome.to_string(),
            runtime_secs: finished.runtime_secs,
            worker_secs: Some(worker_secs),
            wait_secs: (lease.leased_at_ms - lease.queued_at_ms).max(0) as f64 / 1000.0,
            gpu_sku: self.config.gpu_sku.clone(),
            gpus: self.manifest.gpus_per_worker,
            model_sha256: self.manifest.model.sha256.to_string(),
        };
        let usage = UsageEntry {
            backend: self.config.backend.clone(),
            gpu_sku: self.config.gpu_sku.clone(),
            gpus_per_worker: self.manifest.gpus_per_worker,
            worker_secs,
        };
        if let Err(error) = self.ledger.record_usage(&self.config.job_id, &usage).await {
            warn!(job_id = %self.config.job_id, error = %error, "failed to record a task's usage; the job's cost will be low by this attempt");
        }
        if let Err(error) = self.ledger.push_observation(&observation).await {
            debug!(job_id = %self.config.job_id, error = %error, "failed to record a task observation");
        }
    }
}

/// Location and digest of a stored result.
#[derive(Debug, Clone)]
struct Written {
    uri: String,
    sha256: Sha256Hex,
    existed: bool,
    /// Time in the kernel's passes, for the envelope.
    kernel_secs: f64,
}

/// A task's result bytes and the time its kernel passes took.
pub(super) struct Computed {
    pub(super) bytes: Bytes,
    pub(super) kernel_secs: f64,
}

/// Embeds the task's records and encodes them as an embedding block.
fn embed_result(
    embed: &EmbedModel,
    shard: &[u8],
    lease: &Lease,
    job_id: &str,
) -> Result<Computed, TaskError> {
    let spec = &lease.spec;
    let records = select_records(
        shard,
        &spec.shard.uri,
        spec.first_record,
        spec.records,
        spec.shard.records,
    )?;

    let texts: Vec<&str> = records.iter().map(|record| record.text.as_str()).collect();
    let mut values = Vec::with_capacity(texts.len() * embed.dimension());
    let clock = Instant::now();
    for batch in texts.chunks(FORWARD_BATCH) {
        let tensor = embed
            .embed(batch)
            .map_err(|error| TaskError::Kernel(error_chain(&error)))?;
        let flat: Vec<f32> = Vec::<f32>::try_from(tensor.flatten(0, -1))
            .map_err(|error| TaskError::Kernel(error_chain(&error)))?;
        values.extend(flat);
    }
    let kernel_secs = clock.elapsed().as_secs_f64();
    let block = EmbeddingBlock {
        ids: records.into_iter().map(|record| record.id).collect(),
        dimension: embed.dimension(),
        values,
    };

    let bytes = block
        .encode(&[
            ("job_id", job_id.to_owned()),
            ("task_id", lease.task_id.clone()),
        ])
        .map_err(|error| TaskError::Kernel(error_chain(&error)))?;
    Ok(Computed {
        bytes: Bytes::from(bytes),
        kernel_secs,
    })
}

/// Parses lines `first..first + count` of a JSONL shard of `{"id", "text"}` records.
fn select_records(
    shard: &[u8],
    uri: &str,
    first: u64,
    count: u64,
    declared: u64,
) -> Result<Vec<Record>, TaskError> {
    let range = LineRange {
        first,
        count,
        declared,
    };
    select_lines(shard, uri, range, "`id` and `text`")
}

/// Lines `first..first + count` of a shard that should have `declared` lines.
pub(super) struct LineRange {
    pub(super) first: u64,
    pub(super) count: u64,
    pub(super) declared: u64,
}

/// Parses the lines of `range` of a JSONL shard as `T`. `fields` names the string
/// fields each line must have, for the error message.
pub(super) fn select_lines<T: serde::de::DeserializeOwned>(
    shard: &[u8],
    uri: &str,
    range: LineRange,
    fields: &str,
) -> Result<Vec<T>, TaskError> {
    let LineRange {
        first,
        count,
        declared,
    } = range;
    let lines: Vec<&[u8]> = shard
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    let found = lines.len() as u64;
    // The manifest's record count decides the slicing, so a shard with more or fewer
    // lines would silently lose or invent records.
    if found != declared {
        return Err(TaskError::RecordCount {
            uri: uri.to_string(),
            found,
            declared,
        });
    }
    let end = first + count;
    if end > found {
        return Err(TaskError::ShortShard {
            uri: uri.to_string(),
            found,
            first,
            end,
        });
    }

    let mut records = Vec::with_capacity(count as usize);
    for line_number in first..end {
        let line = lines[line_number as usize];
        let line = line
            .strip_prefix(b"\xef\xbb\xbf".as_slice())
            .unwrap_or(line);
        let record: T = serde_json::from_slice(line).map_err(|error| TaskError::Record {
            uri: uri.to_string(),
            line: line_number + 1,
            reason: format!("{error}; each line must be a JSON object with string fields {fields}"),
        })?;
        records.push(record);
    }
    Ok(records)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARD: &[u8] = b"{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"b\",\"text\":\"y\"}\n{\"id\":\"c\",\"text\":\"z\"}\n";

    #[test]
    fn overlapping_attempts_are_charged_once() {
        let start = Instant::now();
        let at = |millis| start + std::time::Duration::from_millis(millis);

        // Stored while the next attempt computed: charged until the next one started.
        let first = charged_secs(at(0), at(150), Some(at(100)));
        let second = charged_secs(at(100), at(260), None);
        assert!((first + second - 0.26).abs() < 1e-9, "{first} + {second}");

        // Stored before the next attempt started: charged until its own end.
        assert!((charged_secs(at(0), at(80), Some(at(100))) - 0.08).abs() < 1e-9);
    }

    #[test]
    fn select_records_takes_the_range() {
        let records = select_records(SHARD, "file:///s", 1, 2, 3).unwrap();
        let ids: Vec<&str> = records.iter().map(|record| record.id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn select_records_rejects_short_shard() {
        let error = select_records(SHARD, "file:///s", 2, 5, 3).err().unwrap();
        assert!(matches!(error, TaskError::ShortShard { found: 3, .. }));
        assert!(error.is_data_error());
    }

    #[test]
    fn select_records_rejects_wrong_declared_count() {
        let error = select_records(SHARD, "file:///s", 0, 2, 2).err().unwrap();
        assert!(matches!(
            error,
            TaskError::RecordCount {
                found: 3,
                declared: 2,
                ..
            }
        ));
        assert!(error.to_string().contains("declares 2"), "{error}");
    }

    #[test]
    fn select_records_names_bad_line() {
        let shard = b"{\"id\":\"a\",\"text\":\"x\"}\nnot json\n";
        let error = select_records(shard, "file:///s", 0, 2, 2).err().unwrap();
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}
