//! Manifest types of the training kernels: which parameters train, how the soft
//! prompt starts, and the `training` section (rounds, optimizer, seed).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default maximum tokens per text for the training kernels: all-MiniLM-L6-v2 was
/// fine-tuned with sequences limited to 128 tokens (its model card).
pub const DEFAULT_TRAIN_MAX_SEQ_LEN: u32 = 128;

/// Default InfoNCE temperature: the scale of 20 that sentence-transformers'
/// `MultipleNegativesRankingLoss` uses by default, written as 1 / 20.
pub const DEFAULT_TEMPERATURE: f64 = 0.05;

/// Default number of top transformer layers that `contrastive` trains.
pub const DEFAULT_TOP_LAYERS: u32 = 2;

/// Default number of soft-prompt vectors that `prompt_tune` learns.
pub const DEFAULT_PROMPT_LENGTH: u32 = 8;

/// Which encoder parameters a `contrastive` job trains: `"all"` or `{"top_layers": N}`.
///
/// The default is the top 2 layers. For all-MiniLM-L6-v2 that keeps a task's gradient
/// file at about 14 MB instead of 90 MB, and the backward pass runs through 2 of the 6
/// layers only. The 30522 × 384 word-embedding table, whose dense gradient alone is
/// 47 MB per task, stays unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trainable {
    /// Every parameter the encoder uses: embedding tables, LayerNorms and all layers.
    All,
    /// The last N transformer layers (1 to the model's layer count); the embeddings
    /// and the layers below stay frozen.
    TopLayers(#[schemars(range(min = 1, max = 48))] u32),
}

impl Default for Trainable {
    fn default() -> Self {
        Trainable::TopLayers(DEFAULT_TOP_LAYERS)
    }
}

/// The soft prompt's starting value before the first round of `prompt_tune`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptInit {
    /// Copies of word-embedding rows of tokens drawn with the seed, which Lester et al.
    /// (2021, "The Power of Scale for Parameter-Efficient Prompt Tuning") found to
    /// train better than random vectors.
    #[default]
    Vocab,
    /// Normal random vectors with the standard deviation of the word-embedding table.
    Random,
}

/// The training loop of a `contrastive` or `prompt_tune` job.
///
/// The job's tasks (its micro-batches, sliced from `inputs` by `records_per_task`)
/// are shuffled once per epoch with the seed. Each round takes the next
/// `tasks_per_round` of them, and an epoch's remainder that does not fill a round is
/// skipped. A round ends with one optimizer step on the sample-weighted mean gradient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// Number of rounds (optimizer steps), 1 to 1000000. Set exactly one of `rounds`
    /// and `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub rounds: Option<u32>,
    /// Number of passes over the tasks, 1 to 10000. Set exactly one of `rounds` and
    /// `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub epochs: Option<u32>,
    /// Tasks per round, from 1 to the job's task count. A round's global batch is
    /// `tasks_per_round × records_per_task` pairs.
    #[schemars(range(min = 1, max = 100_000))]
    pub tasks_per_round: u32,
    /// The optimizer and its settings.
    pub optimizer: Optimizer,
    /// Seed of the task shuffle and of the soft-prompt initialisation (default 0).
    #[serde(default)]
    pub seed: u64,
}

/// The optimizer that turns a round's gradient into new weights, tagged by `name`.
/// Both follow PyTorch's `torch.optim` definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "name", deny_unknown_fields)]
pub enum Optimizer {
    /// Stochastic gradient descent with momentum, as `torch.optim.SGD` (no dampening,
    /// no Nesterov).
    #[serde(rename = "sgd")]
    Sgd {
        /// Learning rate, greater than 0 and at most 10.
        #[schemars(extend("exclusiveMinimum" = 0), range(max = 10))]
        lr: f64,
        /// Momentum factor, from 0 (plain SGD, the default) to below 1.
        #[serde(default)]
        #[schemars(range(min = 0), extend("exclusiveMaximum" = 1))]
        momentum: f64,
        /// L2 penalty added to the gradient, from 0 (the default) to 1.
        #[serde(default)]
        #[schemars(range(min = 0, max = 1))]
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay, as `torch.optim.AdamW`.
    #[serde(rename = "adamw")]
    AdamW {
        /// Learning rate, greater than 0 and at most 10.
        #[schemars(extend("exclusiveMinimum" = 0), range(max = 10))]
        lr: f64,
        /// Decay rates of the first and second moment estimates, each from 0 to below
        /// 1 (default `[0.9, 0.999]`).
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        /// Term added to the denominator, greater than 0 and at most 1 (default 1e-8).
        #[serde(default = "default_eps")]
        #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
        eps: f64,
        /// Decoupled weight decay, from 0 to 1 (default 0.01).
        #[serde(default = "default_adamw_weight_decay")]
        #[schemars(range(min = 0, max = 1))]
        weight_decay: f64,
    },
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn default_eps() -> f64 {
    1e-8
}

fn default_adamw_weight_decay() -> f64 {
    0.01
}

impl Optimizer {
    /// Returns the optimizer's name as it appears in manifests and optimizer state files.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::AdamW { .. } => "adamw",
        }
    }
}
