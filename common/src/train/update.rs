//! One round's update: an optimizer step with the round's reduced gradient turns
//! round k's weights file into round k + 1's, and writes the optimizer state beside it.

use std::collections::BTreeMap;

use super::optim::{self, OptimError, OptimizerState};
use super::prompt::{PROMPT_TENSOR, initial_prompt};
use super::reduce::ReducedGradient;
use super::tensors::{F32Tensor, TensorFile, TensorFileError};
use crate::digest::Sha256Hex;
use crate::manifest::{Kernel, Training};

/// Metadata key of a weights file's kernel name.
pub const KERNEL_KEY: &str = "kernel";
/// Metadata key of the SHA-256 of the weights file that a weights file was computed from.
pub const PARENT_KEY: &str = "parent_weights_sha256";
/// Metadata key of the round that a weights file is the input of.
pub const WEIGHTS_ROUND_KEY: &str = "round";

/// Errors from applying a round's update.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The job's kernel does not train.
    #[error("kernel {kernel} does not train, so it has no rounds")]
    NotTraining { kernel: &'static str },

    /// The weights passed in are not those the round's tasks ran on.
    #[error(
        "round {round} ran on weights {expected}, but the weights file passed to the update \
         has SHA-256 {actual}"
    )]
    WeightsDigest {
        round: u32,
        expected: Sha256Hex,
        actual: Sha256Hex,
    },

    /// The weights file is not a valid tensor file.
    #[error("invalid weights file of round {round}")]
    Weights {
        round: u32,
        #[source]
        source: TensorFileError,
    },

    /// A parameter that the gradient updates is not in the weights file.
    #[error("parameter {name} not found in the weights file of round {round}")]
    MissingParameter { round: u32, name: String },

    /// A round after the first has no optimizer state.
    #[error(
        "round {round} needs the optimizer state written by round {previous}, but none was given",
        previous = .round - 1
    )]
    MissingState { round: u32 },

    /// The optimizer state belongs to another round.
    #[error(
        "optimizer state has taken {steps} steps, but round {round} needs the state after \
         {round} steps"
    )]
    StateRound { round: u32, steps: u64 },

    /// The optimizer step or its state failed.
    #[error("optimizer step of round {round} failed")]
    Optimizer {
        round: u32,
        #[source]
        source: OptimError,
    },
}

/// The result of one round: the next round's weights file and the optimizer state,
/// each with its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundUpdate {
    /// The round whose tasks run on `weights`: the reduced round plus 1.
    pub next_round: u32,
    /// The next round's weights file.
    pub weights: Vec<u8>,
    /// SHA-256 of `weights`, which pins the next round's tasks.
    pub weights_sha256: Sha256Hex,
    /// The optimizer state after this round's step.
    pub state: Vec<u8>,
    /// SHA-256 of `state`.
    pub state_sha256: Sha256Hex,
}

/// Applies the optimizer step of `gradient`'s round to `weights`, the file the round's
/// tasks ran on (round 0: the model's `model.safetensors`). `state` is the optimizer
/// state written by the previous round, `None` for round 0.
pub fn apply_round(
    kernel: &Kernel,
    training: &Training,
    weights: &[u8],
    state: Option<&[u8]>,
    gradient: &ReducedGradient,
) -> Result<RoundUpdate, UpdateError> {
    let round = gradient.round;
    // The step runs while every worker waits for it, so the two cores it may use
    // share the work: the input's digest is checked beside the step, and the two
    // files are encoded and hashed side by side.
    let (actual, stepped) = std::thread::scope(|scope| {
        let digest = scope.spawn(|| Sha256Hex::of(weights));
        let stepped = step_parameters(kernel, training, round, weights, state, gradient);
        (digest.join().expect("hashing does not panic"), stepped)
    });
    if actual != gradient.weights_sha256 {
        return Err(UpdateError::WeightsDigest {
            round,
            expected: gradient.weights_sha256.clone(),
            actual,
        });
    }
    let (parameters, optimizer_state) = stepped?;

    let next_round = round + 1;
    let mut file = TensorFile {
        tensors: parameters,
        metadata: BTreeMap::new(),
    };
    file.metadata
        .insert(KERNEL_KEY.to_owned(), kernel.name().to_owned());
    file.metadata
        .insert(WEIGHTS_ROUND_KEY.to_owned(), next_round.to_string());
    file.metadata
        .insert(PARENT_KEY.to_owned(), gradient.weights_sha256.to_string());
    let ((weights, weights_sha256), (state, state_sha256)) = std::thread::scope(|scope| {
        let state = scope.spawn(|| {
            let state = optimizer_state.encode(&training.optimizer);
            let sha256 = Sha256Hex::of(&state);
            (state, sha256)
        });
        let weights = file.encode();
        let sha256 = Sha256Hex::of(&weights);
        (
            (weights, sha256),
            state.join().expect("encoding does not panic"),
        )
    });

    Ok(RoundUpdate {
        next_round,
        weights_sha256,
        weights,
        state_sha256,
        state,
    })
}

/// Reads the round's parameters and optimizer state and runs one optimizer step on
/// them with `gradient`.
fn step_parameters(
    kernel: &Kernel,
    training: &Training,
    round: u32,
    weights: &[u8],
    state: Option<&[u8]>,
    gradient: &ReducedGradient,
) -> Result<(BTreeMap<String, F32Tensor>, OptimizerState), UpdateError> {
    let names: Vec<&str> = gradient.gradients.keys().map(String::as_str).collect();
    let mut parameters = round_parameters(kernel, training.seed, round, weights, &names)?;
    let mut optimizer_state = previous_state(training, round, state)?;

    optim::step(
        &training.optimizer,
        &mut parameters,
        &gradient.gradients,
        &mut optimizer_state,
    )
    .map_err(|source| UpdateError::Optimizer { round, source })?;
    Ok((parameters, optimizer_state))
}

/// Reads the values of the parameters `names` that round `round` ran with.
///
/// For `prompt_tune`, a file without a `prompt` tensor is only valid as round 0's
/// input (the model's own weights); the prompt is then [`initial_prompt`].
pub fn round_parameters(
    kernel: &Kernel,
    seed: u64,
    round: u32,
    weights: &[u8],
    names: &[&str],
) -> Result<BTreeMap<String, F32Tensor>, UpdateError> {
    let weights_error = |source| UpdateError::Weights { round, source };

    if let Kernel::PromptTune {
        prompt_length,
        prompt_init,
        ..
    } = kernel
    {
        let file = TensorFile::decode_selected(weights, |name| name == PROMPT_TENSOR)
            .map_err(weights_error)?;
        let prompt = match file.tensors.into_values().next() {
            Some(prompt) => prompt,
            None if round == 0 => {
                initial_prompt(weights, *prompt_length as usize, *prompt_init, seed)
                    .map_err(weights_error)?
            }
            None => {
                return Err(UpdateError::MissingParameter {
                    round,
                    name: PROMPT_TENSOR.to_owned(),
                });
            }
        };
        return Ok(BTreeMap::from([(PROMPT_TENSOR.to_owned(), prompt)]));
    }
    if !kernel.is_training() {
        return Err(UpdateError::NotTraining {
            kernel: kernel.name(),
        });
    }

    let file = TensorFile::decode_selected(weights, |name| names.contains(&name))
        .map_err(weights_error)?;
    if let Some(missing) = names.iter().find(|name| !file.tensors.contains_key(**name)) {
        return Err(UpdateError::MissingParameter {
            round,
            name: (*missing).to_owned(),
        });
    }
    Ok(file.tensors)
}

fn previous_state(
    training: &Training,
    round: u32,
    state: Option<&[u8]>,
) -> Result<OptimizerState, UpdateError> {
    let Some(bytes) = state else {
        if round == 0 {
            return Ok(OptimizerState::default());
        }
        return Err(UpdateError::MissingState { round });
    };

    let state = OptimizerState::decode(bytes, &training.optimizer)
        .map_err(|source| UpdateError::Optimizer { round, source })?;
    if state.step != u64::from(round) {
        return Err(UpdateError::StateRound {
            round,
            steps: state.step,
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Optimizer, PromptInit, Trainable};
    use crate::train::reduce::PartialGradient;
    use crate::train::reduce_partials;

    fn contrastive() -> Kernel {
        Kernel::Contrastive {
            max_seq_len: 128,
            temperature: 0.05,
            trainable: Trainable::All,
        }
    }

    fn training() -> Training {
        Training {
            rounds: Some(3),
            epochs: None,
            tasks_per_round: 1,
            optimizer: Optimizer::Sgd {
                lr: 0.5,
                momentum: 0.9,
                weight_decay: 0.0,
            },
            seed: 0,
        }
    }

    /// Model weights with a trained tensor `w`, a frozen tensor `frozen` and a
    /// word-embedding table for prompt initialisation.
    fn model_weights() -> Vec<u8> {
        let mut file = TensorFile::default();
        file.tensors.insert(
            "w".into(),
            F32Tensor::new("w", vec![2], vec![1.0, 2.0]).unwrap(),
        );
        file.tensors.insert("frozen".into(), F32Tensor::zeros(&[3]));
        file.tensors.insert(
            "embeddings.word_embeddings.weight".into(),
            F32Tensor::new("table", vec![2, 2], vec![0.5, 0.5, 1.5, 1.5]).unwrap(),
        );
        file.encode()
    }

    fn reduced(round: u32, weights: &[u8], name: &str, values: Vec<f32>) -> ReducedGradient {
        let shape = if name == PROMPT_TENSOR {
            vec![values.len() / 2, 2]
        } else {
            vec![values.len()]
        };
        let partial = PartialGradient {
            round,
            weights_sha256: Sha256Hex::of(weights),
            samples: 4,
            loss: 1.0,
            gradients: BTreeMap::from([(
                name.to_owned(),
                F32Tensor::new(name, shape, values).unwrap(),
            )]),
        };
        reduce_partials(
            round,
            Sha256Hex::of(weights),
            vec![(0, partial.encode(&[]))],
        )
        .unwrap()
    }

    #[test]
    fn rounds_chain_weights_and_state() {
        let model = model_weights();
        let first = apply_round(
            &contrastive(),
            &training(),
            &model,
            None,
            &reduced(0, &model, "w", vec![1.0, -1.0]),
        )
        .unwrap();
        assert_eq!(first.next_round, 1);

        let second = apply_round(
            &contrastive(),
            &training(),
            &first.weights,
            Some(&first.state),
            &reduced(1, &first.weights, "w", vec![1.0, -1.0]),
        )
        .unwrap();

        // SGD with momentum 0.9 and lr 0.5: w − 0.5·1 − 0.5·1.9 per element.
        let weights = TensorFile::decode(&second.weights).unwrap();
        let expected = [1.0 - 1.45, 2.0 + 1.45];
        for (actual, expected) in weights.tensors["w"].values.iter().zip(expected) {
            assert!((actual - expected).abs() < 1e-6, "{actual} vs {expected}");
        }
        assert_eq!(weights.tensors.len(), 1, "only trained tensors are written");
        assert_eq!(weights.metadata[WEIGHTS_ROUND_KEY], "2");
        assert_eq!(
            weights.metadata[PARENT_KEY],
            first.weights_sha256.to_string()
        );
    }

    #[test]
    fn same_inputs_give_same_digest() {
        let model = model_weights();
        let gradient = reduced(0, &model, "w", vec![0.25, 0.5]);

        let first = apply_round(&contrastive(), &training(), &model, None, &gradient).unwrap();
        let second = apply_round(&contrastive(), &training(), &model, None, &gradient).unwrap();

        assert_eq!(first.weights_sha256, second.weights_sha256);
        assert_eq!(first.state_sha256, second.state_sha256);
    }

    #[test]
    fn update_rejects_other_weights() {
        let model = model_weights();
        let gradient = reduced(0, b"other weights", "w", vec![0.0, 0.0]);

        let error = apply_round(&contrastive(), &training(), &model, None, &gradient).unwrap_err();

        assert!(
            matches!(error, UpdateError::WeightsDigest { round: 0, .. }),
            "{error}"
        );
    }

    #[test]
    fn later_round_needs_state() {
        let model = model_weights();
        let gradient = reduced(1, &model, "w", vec![0.0, 0.0]);

        let error = apply_round(&contrastive(), &training(), &model, None, &gradient).unwrap_err();

        assert!(
            matches!(error, UpdateError::MissingState { round: 1 }),
            "{error}"
        );
    }

    #[test]
    fn state_of_other_round_is_rejected() {
        let model = model_weights();
        let first = apply_round(
            &contrastive(),
            &training(),
            &model,
            None,
            &reduced(0, &model, "w", vec![0.0, 0.0]),
        )
        .unwrap();
        let gradient = reduced(2, &first.weights, "w", vec![0.0, 0.0]);

        let error = apply_round(
            &contrastive(),
            &training(),
            &first.weights,
            Some(&first.state),
            &gradient,
        )
        .unwrap_err();

        assert!(
            matches!(error, UpdateError::StateRound { round: 2, steps: 1 }),
            "{error}"
        );
    }

    #[test]
    fn missing_parameter_is_named() {
        let model = model_weights();
        let gradient = reduced(0, &model, "absent", vec![0.0]);

        let error = apply_round(&contrastive(), &training(), &model, None, &gradient).unwrap_err();

        assert!(error.to_string().contains("absent"), "{error}");
    }

    #[test]
    fn prompt_round_zero_starts_from_initial_prompt() {
        let kernel = Kernel::PromptTune {
            max_seq_len: 128,
            temperature: 0.05,
            prompt_length: 3,
            prompt_init: PromptInit::Vocab,
        };
        let model = model_weights();
        let gradient = reduced(0, &model, PROMPT_TENSOR, vec![0.0; 6]);

        let update = apply_round(&kernel, &training(), &model, None, &gradient).unwrap();

        let expected = initial_prompt(&model, 3, PromptInit::Vocab, 0).unwrap();
        let weights = TensorFile::decode(&update.weights).unwrap();
        assert_eq!(weights.tensors[PROMPT_TENSOR], expected);
    }
}
