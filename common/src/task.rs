//! Job and task identities and the slicing of a manifest into micro-batch tasks.
//!
//! Both ids are pure functions of the manifest, so a redelivered message maps to the
//! job and tasks that already exist in the ledger.

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Hex;
use crate::manifest::{Manifest, ShardRef};

/// Prefix of every job id; the rest is 20 hex characters of a SHA-256.
pub const JOB_ID_PREFIX: &str = "j-";

/// Computes the job id: a digest of the name and idempotency key when the manifest
/// has a key, otherwise of the manifest's canonical JSON.
pub fn job_id(manifest: &Manifest) -> String {
    let identity = match &manifest.idempotency_key {
        Some(key) => format!("name={}\nidempotency_key={}", manifest.name, key),
        // serde_json writes struct fields in declaration order and BTreeMap keys
        // sorted, so equal manifests serialize to equal bytes.
        None => serde_json::to_string(manifest).expect("manifest serializes to JSON"),
    };
    let digest = Sha256Hex::of(identity.as_bytes());
    format!("{JOB_ID_PREFIX}{}", digest.prefix(20))
}

/// Returns whether `text` has the shape of a job id.
pub fn is_job_id(text: &str) -> bool {
    text.strip_prefix(JOB_ID_PREFIX)
        .is_some_and(|rest| rest.len() == 20 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Formats the id of task number `index` within a job: `t000042`.
pub fn task_id(index: u32) -> String {
    format!("t{index:06}")
}

/// One micro-batch: a contiguous range of records inside one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    /// Position of the task in the job, which is also its order in the artefact.
    pub index: u32,
    pub shard: ShardRef,
    /// Zero-based line number of the first record in the shard.
    pub first_record: u64,
    pub records: u64,
    /// The training round and its weights file, for `contrastive` and `prompt_tune`
    /// tasks; `None` for `embed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<crate::train::TrainRound>,
}

/// Slices a manifest into tasks of at most `records_per_task` records each.
///
/// A task never spans two shards, so each task fetches exactly one shard. The result is
/// ordered by shard and record, which is the artefact's record order.
pub fn slice(manifest: &Manifest) -> Vec<TaskSpec> {
    let per_task = u64::from(manifest.records_per_task.max(1));
    let mut tasks = Vec::new();

    for shard in &manifest.inputs {
        let mut first_record = 0;
        while first_record < shard.records {
            let records = per_task.min(shard.records - first_record);
            let index = u32::try_from(tasks.len()).expect("task count fits in u32");
            tasks.push(TaskSpec {
                task_id: task_id(index),
                index,
                shard: shard.clone(),
                first_record,
                records,
                round: None,
            });
            first_record += records;
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_is_zero_padded() {
        assert_eq!(task_id(42), "t000042");
    }

    #[test]
    fn job_id_shape_is_recognised() {
        assert!(is_job_id("j-0123456789abcdef0123"));
        assert!(!is_job_id("j-0123"));
        assert!(!is_job_id("x-0123456789abcdef0123"));
    }
}
