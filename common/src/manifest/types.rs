//! The manifest's serde types. The JSON Schema in `docs/manifest.schema.json` is
//! generated from these definitions.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Hex;

/// The only manifest format version this build reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Default cap on attempts per task, counting the first one.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// One job as a scientist submits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version; must be 1.
    pub version: u32,
    /// Human-readable job name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// The kernel that every task runs, with its settings.
    pub kernel: Kernel,
    /// The model that the kernel loads.
    pub model: ModelRef,
    /// Input shards, in record order. The artefact keeps this order.
    pub inputs: Vec<ShardRef>,
    /// Records per micro-batch task (1 to 100000).
    pub records_per_task: u32,
    /// Prefix under which results, envelopes and the artefact are written,
    /// for example `file:///srv/spillway/out/`.
    pub output: String,
    /// The worker build that must run this job.
    pub worker: WorkerRef,
    /// GPUs per worker process; 0 runs on the CPU.
    #[serde(default)]
    pub gpus_per_worker: u32,
    /// Time by which the job should finish, RFC 3339 (`2026-12-05T06:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Attempts per task before it is marked dead (1 to 20, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Scheduling priority from -100 to 100; higher runs first. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Makes resubmission explicit: the job id derives from the name and this key
    /// instead of the whole manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Free-form labels, copied into envelopes (at most 32, keys up to 63 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The kernel a job runs, tagged by `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Kernel {
    /// Sentence embeddings: BERT forward, mean pooling over the attention mask, L2 norm.
    Embed {
        /// Tokens per text after truncation (1 to 512, default 256 as in all-MiniLM-L6-v2).
        #[serde(default = "default_max_seq_len")]
        max_seq_len: u32,
    },
}

fn default_max_seq_len() -> u32 {
    256
}

impl Kernel {
    /// The kernel's name as it appears in manifests, metrics and envelopes.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Embed { .. } => "embed",
        }
    }
}

/// A model directory and the digest of its file listing.
///
/// `sha256` is the SHA-256 of the listing that `sha256sum config.json model.safetensors
/// tokenizer.json` prints (one `<hex>  <name>` line per file, sorted by name), so one
/// digest pins every file the kernel reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// Directory URI ending in `/`, for example `file:///opt/models/all-MiniLM-L6-v2/`.
    pub uri: String,
    pub sha256: Sha256Hex,
}

/// One input shard: a JSONL file of `{"id", "text"}` records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardRef {
    pub uri: String,
    pub sha256: Sha256Hex,
    /// Number of records (lines) in the shard.
    pub records: u64,
}

/// The worker build a job is pinned to: exactly one of a container image by digest
/// or a worker binary by SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerRef {
    /// Container image pinned by digest: `registry/repo@sha256:<64 hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// SHA-256 of the `spillway-worker` binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<Sha256Hex>,
}

impl WorkerRef {
    /// The digest that identifies this worker build in run hashes and envelopes.
    pub fn digest(&self) -> String {
        match (&self.image, &self.binary_sha256) {
            (Some(image), _) => image.clone(),
            (None, Some(binary)) => format!("sha256:{binary}"),
            (None, None) => String::new(),
        }
    }
}

impl Manifest {
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }

    /// Total records across all input shards.
    pub fn total_records(&self) -> u64 {
        self.inputs.iter().map(|shard| shard.records).sum()
    }
}
