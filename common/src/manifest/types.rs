//! The manifest's serde types. The JSON Schema in `docs/manifest.schema.json` is
//! generated from these definitions.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::training::{
    DEFAULT_PROMPT_LENGTH, DEFAULT_TEMPERATURE, DEFAULT_TRAIN_MAX_SEQ_LEN, PromptInit, Trainable,
    Training,
};
use crate::digest::Sha256Hex;

/// The only manifest format version this build reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Default cap on attempts per task, counting the first one.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Largest manifest document that `parse` reads, in bytes (4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// One job as a scientist submits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version; must be 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Human-readable job name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub name: String,
    /// The kernel that every task runs, with its settings.
    pub kernel: Kernel,
    /// The training loop; required by `contrastive` and `prompt_tune`, rejected for
    /// `embed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
    /// The model that the kernel loads.
    pub model: ModelRef,
    /// Input shards, in record order. The artefact keeps this order.
    /// 1 to 100000 shards, each URI listed once.
    #[schemars(length(min = 1, max = 100_000), extend("uniqueItems" = true))]
    pub inputs: Vec<ShardRef>,
    /// Records per micro-batch task (1 to 100000). A job slices into at most
    /// 1000000 tasks.
    #[schemars(range(min = 1, max = 100_000))]
    pub records_per_task: u32,
    /// Prefix under which results, envelopes and the artefact are written,
    /// for example `file:///srv/spillway/out/`. Schemes: `file`, `s3`, `gs`.
    #[schemars(regex(pattern = r"^(file|s3|gs)://"))]
    pub output: String,
    /// The worker build that must run this job.
    pub worker: WorkerRef,
    /// GPUs per worker process (0 to 16); 0 runs on the CPU.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub gpus_per_worker: u32,
    /// Time by which the job should finish, RFC 3339 with an offset
    /// (`2026-12-05T06:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub deadline: Option<String>,
    /// Attempts per task before it is marked dead (1 to 20, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: Option<u32>,
    /// Scheduling priority from -100 to 100; higher runs first. Default 0.
    #[serde(default)]
    #[schemars(range(min = -100, max = 100))]
    pub priority: i32,
    /// Makes resubmission explicit: the job id derives from the name and this key
    /// instead of the whole manifest. 1 to 256 characters, no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub idempotency_key: Option<String>,
    /// Free-form labels, copied into envelopes (at most 32, keys up to 63 characters
    /// of `a-z 0-9 _ . -`, values up to 256 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "propertyNames" = { "pattern": "^[a-z0-9_.-]{1,63}$" },
        "additionalProperties" = { "type": "string", "maxLength": 256 }
    ))]
    pub labels: BTreeMap<String, String>,
    /// Where a notice goes when the job succeeds, fails or is cancelled: an SQS queue
    /// as `sqs://` followed by the host and path of its URL, or a Pub/Sub topic as
    /// `pubsub://projects/PROJECT/topics/TOPIC`. The site's configuration lists the
    /// targets it accepts; a manifest naming another is rejected. Without it, the
    /// site's default target, if any, gets the notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 1024),
        regex(pattern = r"^(sqs://[^/\s]+/\S*[^/\s]|pubsub://projects/[^/\s]+/topics/[^/\s]+)$")
    )]
    pub notify: Option<String>,
}

/// The kernel a job runs, tagged by `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Kernel {
    /// Sentence embeddings: BERT forward, mean pooling over the attention mask, L2 norm.
    Embed {
        /// Tokens per text after truncation (1 to 512, default 256 as in all-MiniLM-L6-v2).
        #[serde(default = "default_max_seq_len")]
        #[schemars(range(min = 1, max = 512))]
        max_seq_len: u32,
    },
    /// Contrastive fine-tuning of the encoder with in-batch InfoNCE on (anchor,
    /// positive) pairs. A task writes the gradients of its micro-batch.
    Contrastive {
        /// Tokens per text after truncation (1 to 512, default 128).
        #[serde(default = "default_train_max_seq_len")]
        #[schemars(range(min = 1, max = 512))]
        max_seq_len: u32,
        /// InfoNCE temperature that divides the cosine similarities (0.001 to 1,
        /// default 0.05).
        #[serde(default = "default_temperature")]
        #[schemars(range(min = 0.001, max = 1))]
        temperature: f64,
        /// Parameters that train: `"all"` or `{"top_layers": N}` (default
        /// `{"top_layers": 2}`).
        #[serde(default)]
        trainable: Trainable,
    },
    /// Prompt tuning: soft-prompt vectors prepended to the frozen encoder's token
    /// embeddings, trained with the `contrastive` objective. A task writes the
    /// gradient of the prompt.
    PromptTune {
        /// Tokens per text after truncation, not counting the prompt (1 to 512,
        /// default 128). With the prompt, at most 512 positions.
        #[serde(default = "default_train_max_seq_len")]
        #[schemars(range(min = 1, max = 512))]
        max_seq_len: u32,
        /// InfoNCE temperature (0.001 to 1, default 0.05).
        #[serde(default = "default_temperature")]
        #[schemars(range(min = 0.001, max = 1))]
        temperature: f64,
        /// Number of soft-prompt vectors (1 to 128, default 8).
        #[serde(default = "default_prompt_length")]
        #[schemars(range(min = 1, max = 128))]
        prompt_length: u32,
        /// How the prompt starts: `"vocab"` (default) or `"random"`.
        #[serde(default)]
        prompt_init: PromptInit,
    },
}

fn default_max_seq_len() -> u32 {
    256
}

fn default_train_max_seq_len() -> u32 {
    DEFAULT_TRAIN_MAX_SEQ_LEN
}

fn default_temperature() -> f64 {
    DEFAULT_TEMPERATURE
}

fn default_prompt_length() -> u32 {
    DEFAULT_PROMPT_LENGTH
}

impl Kernel {
    /// The kernel's name as it appears in manifests, metrics and envelopes.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Embed { .. } => "embed",
            Kernel::Contrastive { .. } => "contrastive",
            Kernel::PromptTune { .. } => "prompt_tune",
        }
    }

    /// Returns whether the kernel trains, so that the job runs in rounds.
    pub fn is_training(&self) -> bool {
        !matches!(self, Kernel::Embed { .. })
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
    /// Schemes: `file`, `s3`, `gs`.
    #[schemars(regex(pattern = r"^(file|s3|gs)://.*/$"))]
    pub uri: String,
    /// SHA-256 of the `sha256sum` listing described above.
    pub sha256: Sha256Hex,
}

/// One input shard: a JSONL file of `{"id", "text"}` records, or of
/// `{"id", "anchor", "positive"}` pairs for the training kernels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardRef {
    /// URI of the shard file, for example `file:///srv/data/part-00000.jsonl`.
    /// Schemes: `file`, `s3`, `gs`.
    #[schemars(regex(pattern = r"^(file|s3|gs)://.*[^/]$"))]
    pub uri: String,
    /// SHA-256 of the shard file's bytes.
    pub sha256: Sha256Hex,
    /// Number of records (lines) in the shard, at least 1.
    #[schemars(range(min = 1))]
    pub records: u64,
}

/// The worker build a job is pinned to: exactly one of a container image by digest
/// or a worker binary by SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerRef {
    /// Container image pinned by digest: `registry/repo@sha256:<64 hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^@\s]+@sha256:[0-9a-f]{64}$"))]
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
    /// Generates the JSON Schema of the manifest format, as committed in
    /// `docs/manifest.schema.json`.
    pub fn json_schema() -> schemars::Schema {
        schemars::schema_for!(Manifest)
    }

    /// Returns `max_attempts`, or [`DEFAULT_MAX_ATTEMPTS`] when the manifest leaves it out.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }

    /// Total records across all input shards.
    pub fn total_records(&self) -> u64 {
        self.inputs.iter().map(|shard| shard.records).sum()
    }
}
