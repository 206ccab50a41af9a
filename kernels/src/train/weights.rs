//! Loading a round's weights file into the trained tensors.
//!
//! Round 0 runs on the model's own `model.safetensors`, which the kernel already
//! loaded. A later round's file contains exactly the trained tensors and the metadata
//! entry `round`, as `spillway_common::train::apply_round` writes them. Each tensor
//! replaces the trained tensor's values in place. Before switching, the
//! kernel checks every name, shape and the round, so it never computes with a mix of
//! two rounds' weights.

use std::collections::BTreeSet;

use safetensors::SafeTensors;
use spillway_common::digest::Sha256Hex;
use spillway_common::train::tensors::read_metadata;
use spillway_common::train::update::WEIGHTS_ROUND_KEY;
use spillway_common::train::{F32Tensor, PROMPT_TENSOR, TensorFileError};
use tch::Tensor;

use super::{TrainError, TrainKernel, Trained, from_f32_tensor, torch};

impl TrainKernel {
    /// Returns whether the kernel already computes with the weights of `round` that
    /// have `sha256`.
    pub fn has_weights(&self, round: u32, sha256: &Sha256Hex) -> bool {
        self.loaded_round == round && &self.loaded_sha256 == sha256
    }

    /// Switches to round 0's weights (the model's own), re-reading them from the
    /// model directory when a later round's weights are loaded.
    pub fn load_base_weights(&mut self) -> Result<(), TrainError> {
        if self.has_weights(0, &self.base_sha256.clone()) {
            return Ok(());
        }
        let path = self.model_dir.join("model.safetensors");
        let bytes = std::fs::read(&path).map_err(|source| TrainError::ReadModel {
            path: path.clone(),
            source,
        })?;
        self.load_weights(0, &bytes)
    }

    /// Loads the weights file of `round`, whose bytes the caller has verified against
    /// the task's pinned SHA-256.
    pub fn load_weights(&mut self, round: u32, bytes: &[u8]) -> Result<(), TrainError> {
        self.load_verified_weights(round, bytes, Sha256Hex::of(bytes))
    }

    /// Loads the weights file of `round` whose SHA-256 the caller computed while
    /// verifying it, which saves hashing the file twice (about 10 ms for 14 MB).
    pub fn load_verified_weights(
        &mut self,
        round: u32,
        bytes: &[u8],
        sha256: Sha256Hex,
    ) -> Result<(), TrainError> {
        if self.has_weights(round, &sha256) {
            return Ok(());
        }

        let file_error = |source| TrainError::WeightsFile { round, source };
        let file = SafeTensors::deserialize(bytes)
            .map_err(|source| file_error(TensorFileError::Format(source)))?;
        if round == 0 {
            if sha256 != self.base_sha256 {
                return Err(TrainError::NotBaseWeights {
                    expected: self.base_sha256.clone(),
                    actual: sha256,
                });
            }
        } else {
            check_round(round, &read_metadata(bytes).map_err(file_error)?)?;
        }

        let updates = self.weights_updates(round, &file)?;
        let _no_grad = tch::no_grad_guard();
        for (target, values) in updates {
            let source = from_f32_tensor(&values, self.device)?;
            let mut target = target;
            target
                .f_copy_(&source)
                .map_err(torch("copy weights into a trained tensor"))?;
        }

        self.loaded_round = round;
        self.loaded_sha256 = sha256;
        Ok(())
    }

    /// Reads the new value of every trained tensor from `file`, paired with the
    /// tensor (or rows of a tensor) it replaces.
    fn weights_updates(
        &self,
        round: u32,
        file: &SafeTensors,
    ) -> Result<Vec<(Tensor, F32Tensor)>, TrainError> {
        let targets = self.trained_tensors(|leaf| leaf.shallow_clone())?;
        let expected: BTreeSet<&str> = targets.iter().map(|(name, _)| name.as_str()).collect();

        let mut updates = Vec::with_capacity(targets.len());
        for (name, target) in &targets {
            let values = match read_tensor(file, name) {
                Ok(values) => values,
                Err(_) if round == 0 && name == PROMPT_TENSOR => {
                    // The model's own weights contain no prompt, so round 0 starts
                    // from the initial prompt.
                    let Trained::Prompt { initial, .. } = &self.trained else {
                        unreachable!("only prompt_tune trains the prompt");
                    };
                    super::to_f32_tensor(initial)?
                }
                Err(reason) => return Err(TrainError::WeightsContent { round, reason }),
            };
            let target_shape: Vec<usize> = target.size().iter().map(|&dim| dim as usize).collect();
            if values.shape != target_shape {
                return Err(TrainError::WeightsContent {
                    round,
                    reason: format!(
                        "tensor {name} has shape {:?}, the job trains shape {target_shape:?}",
                        values.shape
                    ),
                });
            }
            updates.push((target.shallow_clone(), values));
        }

        // Round 0's file is the whole model, which contains frozen tensors too.
        if round > 0
            && let Some(extra) = file
                .names()
                .into_iter()
                .find(|name| !expected.contains(name))
        {
            return Err(TrainError::WeightsContent {
                round,
                reason: format!("tensor {extra} is not trained by this job"),
            });
        }
        Ok(updates)
    }
}

/// Checks the weights file's `round` metadata against the task's round.
fn check_round(
    round: u32,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<(), TrainError> {
    let found = metadata.get(WEIGHTS_ROUND_KEY).cloned().unwrap_or_default();
    if found != round.to_string() {
        return Err(TrainError::WeightsRound { round, found });
    }
    Ok(())
}

/// Reads tensor `name` of `file` as f32, or explains why it cannot.
fn read_tensor(file: &SafeTensors, name: &str) -> Result<F32Tensor, String> {
    let view = file
        .tensor(name)
        .map_err(|_| format!("tensor {name} is missing"))?;
    let values = spillway_common::train::tensors::decode_values(name, view.dtype(), view.data())
        .map_err(|error| error.to_string())?;
    Ok(F32Tensor {
        shape: view.shape().to_vec(),
        values,
    })
}
