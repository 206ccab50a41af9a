//! Training in rounds: the file formats and the pure math of the reduce step, without
//! libtorch, so that the daemon can reduce gradients and step the optimizer.
//!
//! Terms used across the module:
//! - **round**: one optimizer step. Round k's tasks run forward and backward passes on
//!   the same weights file, and their partial gradients reduce to one gradient;
//! - **weights file**: a safetensors file of F32 tensors pinned by SHA-256. Round 0's
//!   is the model's own `model.safetensors`. Round k + 1's contains only the trained
//!   tensors (the trained parameters of `contrastive`, under their names in
//!   `model.safetensors`, or the `prompt` tensor of `prompt_tune`), which overlay the
//!   model's weights;
//! - **partial gradient**: one task's result, see [`reduce`];
//! - **optimizer state**: the optimizer's buffers after a round, see [`optim`].
//!
//! The reduce step of round k is [`reduce_partials`] (or [`GradientReducer`]) over the
//! round's partial gradients, then [`apply_round`] on round k's weights file and the
//! optimizer state of round k − 1. Given the same files, it produces the same bytes,
//! and therefore the same SHA-256, whatever order the partials arrive in.

pub mod optim;
pub mod prompt;
pub mod reduce;
pub mod schedule;
pub mod tensors;
pub mod update;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Hex;
use crate::manifest::{Kernel, Training};

pub use optim::{OptimError, OptimizerState};
pub use prompt::{PROMPT_TENSOR, initial_prompt};
pub use reduce::{GradientReducer, PartialGradient, ReduceError, ReducedGradient, reduce_partials};
pub use schedule::{epoch_order, round_tasks, rounds_per_epoch, total_rounds};
pub use tensors::{F32Tensor, TensorFile, TensorFileError};
pub use update::{RoundUpdate, UpdateError, apply_round, round_parameters};

/// The round a training task belongs to and the weights file it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrainRound {
    /// Round number, from 0.
    pub round: u32,
    /// URI of the round's weights file; round 0 names the model's `model.safetensors`.
    pub weights_uri: String,
    /// SHA-256 of the weights file's bytes.
    pub weights_sha256: Sha256Hex,
}

/// One reduced round, as the ledger keeps it and the job envelope lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number, from 0.
    pub round: u32,
    /// SHA-256 of the weights file the round's tasks ran on.
    pub weights_sha256: Sha256Hex,
    /// Partial gradients reduced (the round's tasks).
    pub tasks: u32,
    /// Pairs over the round's tasks.
    pub samples: u64,
    /// Sample-weighted mean of the tasks' losses, before the step.
    pub loss: f64,
    /// The weights file the round's step wrote: the next round's input, or the job's
    /// artefact after the last round.
    pub next_weights_uri: String,
    pub next_weights_sha256: Sha256Hex,
    /// The optimizer state after the round's step.
    pub optimizer_state_uri: String,
    pub optimizer_state_sha256: Sha256Hex,
    /// Time from the round's start (its tasks created) to its reduction.
    pub round_secs: f64,
    /// Time the reduce step took: reading partials, the optimizer step and writing the
    /// next weights file. The optimizer state is written after the next round began,
    /// so only the last round's time includes that write.
    pub reduce_secs: f64,
}

/// Returns the settings that a training task's run hash binds: the kernel's settings,
/// the `training` section (optimizer, seed, rounds) and the round number. The weights
/// file belongs in the run identity's data list, with its SHA-256.
pub fn run_settings(kernel: &Kernel, training: &Training, round: u32) -> serde_json::Value {
    serde_json::json!({
        "kernel": kernel,
        "training": training,
        "round": round,
    })
}
