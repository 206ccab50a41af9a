//! The JSON audit envelope that every task attempt writes, and the run hash.

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Hex;

/// One input that a run read, pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRef {
    pub uri: String,
    pub sha256: Sha256Hex,
}

/// What a run hash binds. Serialized as canonical JSON (fields in declaration order,
/// inputs in task order) and hashed with SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// `sha256:<hex>` of the worker binary or `repo@sha256:<hex>` of its image.
    pub worker_digest: String,
    pub kernel: String,
    /// The kernel's settings as they appear in the manifest.
    pub kernel_settings: serde_json::Value,
    pub model_sha256: Sha256Hex,
    pub data: Vec<DataRef>,
    /// GPU model name, or `cpu`.
    pub gpu_sku: String,
}

impl RunIdentity {
    /// Computes the run hash.
    pub fn run_hash(&self) -> Sha256Hex {
        let canonical = serde_json::to_vec(self).expect("run identity serializes to JSON");
        Sha256Hex::of(&canonical)
    }
}

/// Exit status of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// The result was written (or already existed) and the task was completed.
    Succeeded,
    /// A data error such as a SHA-256 mismatch; the task is not retried.
    DataError,
    /// An infrastructure or kernel error; the task is retried up to its attempt cap.
    Retryable,
}

/// The audit record of one task attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEnvelope {
    pub job_id: String,
    pub task_id: String,
    pub attempt: u32,
    pub worker_id: String,
    pub backend: String,
    pub identity: RunIdentity,
    pub run_hash: Sha256Hex,
    /// RFC 3339 timestamps of the attempt's start and end.
    pub started_at: String,
    pub finished_at: String,
    pub runtime_secs: f64,
    /// Seconds of `runtime_secs` spent in the kernel's passes (for `embed` the
    /// forward passes, for training forward and backward), without leasing,
    /// fetching, decoding or writing. Absent when the attempt failed before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_secs: Option<f64>,
    pub exit_status: ExitStatus,
    /// The error message when `exit_status` is not `succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// URI of the task's result object when the attempt produced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_uri: Option<String>,
    /// SHA-256 of the result object's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_sha256: Option<Sha256Hex>,
    /// Whether another attempt had already written the result object.
    #[serde(default)]
    pub result_existed: bool,
    pub records: u64,
}

/// The audit record of a finished job, written next to its artefact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnvelope {
    pub job_id: String,
    pub name: String,
    /// `succeeded` or `failed`.
    pub state: String,
    pub identity: RunIdentity,
    pub run_hash: Sha256Hex,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artefact_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artefact_sha256: Option<Sha256Hex>,
    pub records: u64,
    pub tasks_total: u64,
    pub tasks_succeeded: u64,
    /// Tasks that ended failed or dead, with their reasons.
    pub failed_tasks: Vec<FailedTask>,
    pub duplicates_suppressed: u64,
    pub admitted_at: String,
    pub finished_at: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The cost of the job's worker time, from the daemon's price table at reduce time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<JobCost>,
    /// The rounds of a training job; `None` for `embed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingRun>,
}

/// The rounds a training job ran. The artefact is the last round's weights file, and
/// each round names the weights it ran on and the weights it wrote, so the chain from
/// the model to the artefact can be checked digest by digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRun {
    /// Rounds that the manifest sets, directly or through `epochs`.
    pub rounds_total: u64,
    /// Rounds reduced, in order.
    pub rounds: Vec<crate::train::RoundRecord>,
}

/// A job's cost, itemised by kind of worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCost {
    /// Currency code of the price table, such as `USD`.
    pub currency: String,
    pub total: f64,
    pub lines: Vec<CostLine>,
}

/// One kind of worker's share of a job's cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostLine {
    pub backend: String,
    pub gpu_sku: String,
    pub gpus_per_worker: u32,
    /// Task runtime summed over every attempt.
    pub worker_secs: f64,
    /// `worker_secs` times `gpus_per_worker`.
    pub gpu_secs: f64,
    pub cost: f64,
}

/// A task that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTask {
    pub task_id: String,
    pub state: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> RunIdentity {
        RunIdentity {
            worker_digest: "sha256:00".into(),
            kernel: "embed".into(),
            kernel_settings: serde_json::json!({"max_seq_len": 256}),
            model_sha256: Sha256Hex::of(b"model"),
            data: vec![DataRef {
                uri: "file:///a".into(),
                sha256: Sha256Hex::of(b"a"),
            }],
            gpu_sku: "cpu".into(),
        }
    }

    #[test]
    fn run_hash_is_stable() {
        assert_eq!(identity().run_hash(), identity().run_hash());
    }

    #[test]
    fn run_hash_binds_every_field() {
        let base = identity().run_hash();

        let mut other = identity();
        other.gpu_sku = "NVIDIA A100".into();
        assert_ne!(other.run_hash(), base);

        let mut other = identity();
        other.data[0].sha256 = Sha256Hex::of(b"b");
        assert_ne!(other.run_hash(), base);

        let mut other = identity();
        other.worker_digest = "sha256:01".into();
        assert_ne!(other.run_hash(), base);

        let mut other = identity();
        other.kernel_settings = serde_json::json!({"max_seq_len": 128});
        assert_ne!(other.run_hash(), base);
    }
}
