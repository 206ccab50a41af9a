//! The training kernels `contrastive` and `prompt_tune`: one forward and backward pass
//! of in-batch InfoNCE over a task's (anchor, positive) pairs, returning the gradients
//! of the trained parameters as a [`PartialGradient`].
//!
//! Both kernels embed texts as the `embed` kernel does (BERT, mean pooling over the
//! text's tokens, L2 norm), without dropout, so a task's gradient depends only on its
//! pairs and its weights and a retried task computes the same gradient.
//!
//! **Objective.** For a micro-batch of n pairs with anchor embeddings `a` and positive
//! embeddings `p`, the logits are `a·pᵀ / temperature` and the loss is the mean over
//! anchors of the cross-entropy of picking its own positive among the n positives. The
//! other pairs of the same micro-batch are the negatives, never pairs of other tasks.
//! A round's reduced gradient (the sample-weighted mean over tasks) is therefore the
//! gradient of the mean over all pairs of the per-pair losses, each taken within its
//! own micro-batch. [`TrainKernel::backward`] computes exactly that loss for a whole
//! round in one pass when given the micro-batch sizes, which the tests use to check
//! the reduction.
//!
//! **`contrastive`** trains the encoder parameters selected by
//! [`Trainable`]; the others stay frozen, so the backward pass stops at the lowest
//! trained layer.
//!
//! **`prompt_tune`** learns `prompt_length` vectors in the word-embedding space, placed
//! before each text's `[CLS]`. They get the token type embedding but no position
//! embedding, so the text's tokens keep the positions they have without a prompt. They
//! pass through the embedding LayerNorm and the frozen layers with the text. The
//! attention mask covers them, but the mean pooling covers the text's tokens only.

mod objective;
mod weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use spillway_common::digest::Sha256Hex;
use spillway_common::manifest::{Kernel, PromptInit, Trainable};
use spillway_common::train::{F32Tensor, PartialGradient, TensorFileError, initial_prompt};
use tch::{Device, Kind, TchError, Tensor};

use crate::embed::EmbedError;
use crate::embed::bert::{BertConfig, BertEncoder, Parameter};
use crate::embed::tokenize::SentenceTokenizer;

/// Errors from loading a training kernel, loading a round's weights or computing
/// gradients.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model could not be loaded or the texts could not be tokenized.
    #[error(transparent)]
    Model(#[from] EmbedError),

    /// The model's weights file could not be read.
    #[error("failed to read {path}")]
    ReadModel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The job's kernel is not a training kernel.
    #[error("kernel {kernel} does not train; expected contrastive or prompt_tune")]
    NotTraining { kernel: &'static str },

    /// `trainable.top_layers` exceeds the model's layer count.
    #[error(
        "invalid trainable.top_layers {requested}: the model has {layers} layers; \
         set top_layers to at most {layers} or use \"all\""
    )]
    TopLayers { requested: u32, layers: usize },

    /// The initial soft prompt could not be computed from the model's weights.
    #[error("failed to compute the initial prompt from {path}")]
    InitialPrompt {
        path: PathBuf,
        #[source]
        source: TensorFileError,
    },

    /// Round 0 must run on the model's own `model.safetensors`.
    #[error(
        "round 0 must run on the model's model.safetensors (SHA-256 {expected}), \
         but its weights file has SHA-256 {actual}"
    )]
    NotBaseWeights {
        expected: Sha256Hex,
        actual: Sha256Hex,
    },

    /// A weights file is not valid safetensors or lacks its round metadata.
    #[error("invalid weights file for round {round}")]
    WeightsFile {
        round: u32,
        #[source]
        source: TensorFileError,
    },

    /// A weights file was written for another round.
    #[error("weights file is the input of round {found}, but the task is in round {round}")]
    WeightsRound { round: u32, found: String },

    /// A weights file lacks a trained tensor, contains one this job does not train, or
    /// has a tensor of the wrong shape.
    #[error("weights file for round {round} does not fit this job: {reason}")]
    WeightsContent { round: u32, reason: String },

    /// Gradients were requested for another round than the loaded weights belong to.
    #[error(
        "the loaded weights are those of round {loaded}, but the task is in round {requested}; \
         load the round's weights first"
    )]
    RoundMismatch { loaded: u32, requested: u32 },

    /// A task has no pairs, or micro-batch sizes that do not add up to its pairs.
    #[error("invalid batch: {0}")]
    Batch(String),

    /// libtorch failed during a step of the kernel.
    #[error("libtorch failed to {step}")]
    Torch {
        step: &'static str,
        #[source]
        source: TchError,
    },
}

impl TrainError {
    /// Returns whether the inputs (weights file, pairs) are at fault, so that a retry
    /// cannot help.
    pub fn is_data_error(&self) -> bool {
        matches!(
            self,
            TrainError::NotBaseWeights { .. }
                | TrainError::WeightsFile { .. }
                | TrainError::WeightsRound { .. }
                | TrainError::WeightsContent { .. }
                | TrainError::Batch(_)
        )
    }
}

/// Maps a libtorch error to [`TrainError::Torch`] naming the failed step.
pub(crate) fn torch(step: &'static str) -> impl FnOnce(TchError) -> TrainError {
    move |source| TrainError::Torch { step, source }
}

/// One training record: a text and the text that should embed close to it.
#[derive(Debug, Clone, Copy)]
pub struct TextPair<'a> {
    /// The text whose embedding is compared with every positive of the micro-batch.
    pub anchor: &'a str,
    /// The text that the anchor should be most similar to.
    pub positive: &'a str,
}

/// The tensors that the kernel trains.
enum Trained {
    /// Encoder parameters (`contrastive`), in the encoder's order.
    Encoder { parameters: Vec<Parameter> },
    /// The soft prompt (`prompt_tune`), `[prompt_length, hidden]`, and its value
    /// before round 0.
    Prompt { prompt: Tensor, initial: Tensor },
}

/// A loaded training kernel: tokenizer, encoder and the trained tensors on one device.
pub struct TrainKernel {
    tokenizer: SentenceTokenizer,
    encoder: BertEncoder,
    trained: Trained,
    device: Device,
    pad_token_id: i64,
    temperature: f64,
    kernel: &'static str,
    model_dir: PathBuf,
    /// SHA-256 of the model's `model.safetensors`, the weights file of round 0.
    base_sha256: Sha256Hex,
    /// Round and SHA-256 of the weights file the trained tensors hold now.
    loaded_round: u32,
    loaded_sha256: Sha256Hex,
}

impl TrainKernel {
    /// Loads the model from `model_dir` for `kernel` on `device`, with the trained
    /// tensors set to round 0's values. `seed` is the `training.seed` that draws the
    /// initial soft prompt.
    pub fn load(
        model_dir: &Path,
        device: Device,
        kernel: &Kernel,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let (max_seq_len, temperature) = match kernel {
            Kernel::Contrastive {
                max_seq_len,
                temperature,
                ..
            }
            | Kernel::PromptTune {
                max_seq_len,
                temperature,
                ..
            } => (*max_seq_len as usize, *temperature),
            Kernel::Embed { .. } => {
                return Err(TrainError::NotTraining {
                    kernel: kernel.name(),
                });
            }
        };

        let config = BertConfig::load(&model_dir.join("config.json"))?;
        let max_position_embeddings = config.max_position_embeddings;
        if max_seq_len < 2 || max_seq_len as i64 > max_position_embeddings {
            return Err(EmbedError::InvalidMaxSeqLen {
                max_seq_len,
                max_position_embeddings,
            }
            .into());
        }
        let tokenizer = SentenceTokenizer::load(&model_dir.join("tokenizer.json"), max_seq_len)?;
        let weights_path = model_dir.join("model.safetensors");
        let encoder = BertEncoder::load(&config, &weights_path, device)?;
        let model_bytes = std::fs::read(&weights_path).map_err(|source| TrainError::ReadModel {
            path: weights_path.clone(),
            source,
        })?;
        let base_sha256 = Sha256Hex::of(&model_bytes);

        let trained = match kernel {
            Kernel::Contrastive { trainable, .. } => Trained::Encoder {
                parameters: trained_parameters(&encoder, *trainable)?,
            },
            Kernel::PromptTune {
                prompt_length,
                prompt_init,
                ..
            } => {
                let settings = PromptSettings {
                    length: *prompt_length as usize,
                    init: *prompt_init,
                    seed,
                };
                initial_prompt_tensor(&model_bytes, &weights_path, &settings, device)?
            }
            Kernel::Embed { .. } => unreachable!("rejected above"),
        };

        Ok(Self {
            tokenizer,
            encoder,
            trained,
            device,
            pad_token_id: config.pad_token_id,
            temperature,
            kernel: kernel.name(),
            model_dir: model_dir.to_owned(),
            loaded_round: 0,
            loaded_sha256: base_sha256.clone(),
            base_sha256,
        })
    }

    /// Returns the SHA-256 of the model's `model.safetensors`, which pins round 0.
    pub fn base_weights_sha256(&self) -> &Sha256Hex {
        &self.base_sha256
    }

    /// Returns the round and SHA-256 of the weights the kernel computes with now.
    pub fn loaded_weights(&self) -> (u32, &Sha256Hex) {
        (self.loaded_round, &self.loaded_sha256)
    }

    /// Returns the kernel's name, `contrastive` or `prompt_tune`.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel
    }

    /// Returns the device of the weights.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Computes the gradients of the mean InfoNCE loss over `pairs` (one micro-batch)
    /// on the loaded weights, which must be those of `round`.
    pub fn gradients(
        &mut self,
        round: u32,
        pairs: &[TextPair],
    ) -> Result<PartialGradient, TrainError> {
        if round != self.loaded_round {
            return Err(TrainError::RoundMismatch {
                loaded: self.loaded_round,
                requested: round,
            });
        }
        let loss = self.backward(pairs, &[pairs.len()])?;
        let gradients = self.take_gradients()?;
        Ok(PartialGradient {
            round,
            weights_sha256: self.loaded_sha256.clone(),
            samples: pairs.len() as u64,
            loss,
            gradients,
        })
    }

    /// Returns the trained tensors' current values by name, as a weights file of a
    /// later round stores them.
    pub fn trained_values(&self) -> Result<BTreeMap<String, F32Tensor>, TrainError> {
        let mut values = BTreeMap::new();
        for (name, tensor) in self.trained_tensors(|leaf| leaf.shallow_clone())? {
            values.insert(name, to_f32_tensor(&tensor)?);
        }
        Ok(values)
    }

    /// Returns the distinct tensors that receive gradients (the fused query, key and
    /// value projections once), for an optimizer that steps them in place.
    pub fn trained_leaves(&self) -> Vec<Tensor> {
        match &self.trained {
            Trained::Encoder { parameters } => {
                let mut leaves: Vec<Tensor> = Vec::new();
                for parameter in parameters {
                    let seen = leaves
                        .iter()
                        .any(|leaf| leaf.data_ptr() == parameter.leaf.data_ptr());
                    if !seen {
                        leaves.push(parameter.leaf.shallow_clone());
                    }
                }
                leaves
            }
            Trained::Prompt { prompt, .. } => vec![prompt.shallow_clone()],
        }
    }

    /// Reads each trained tensor's gradient (zeros where none flowed) by name and
    /// resets the gradients to zero.
    pub fn take_gradients(&mut self) -> Result<BTreeMap<String, F32Tensor>, TrainError> {
        let tensors = self.trained_tensors(|leaf| {
            let grad = leaf.grad();
            if grad.defined() {
                grad
            } else {
                leaf.zeros_like()
            }
        })?;
        let mut gradients = BTreeMap::new();
        for (name, tensor) in tensors {
            gradients.insert(name, to_f32_tensor(&tensor)?);
        }

        for mut leaf in self.trained_leaves() {
            leaf.zero_grad();
        }
        Ok(gradients)
    }

    /// Applies `of_leaf` to each trained leaf and returns each trained tensor's part
    /// of the result, by name.
    fn trained_tensors(
        &self,
        of_leaf: impl Fn(&Tensor) -> Tensor,
    ) -> Result<Vec<(String, Tensor)>, TrainError> {
        match &self.trained {
            Trained::Encoder { parameters } => parameters
                .iter()
                .map(|parameter| {
                    let part = parameter
                        .part_of(&of_leaf(&parameter.leaf))
                        .map_err(torch("select a parameter's rows"))?;
                    Ok((parameter.name.clone(), part))
                })
                .collect(),
            Trained::Prompt { prompt, .. } => Ok(vec![(
                spillway_common::train::PROMPT_TENSOR.to_owned(),
                of_leaf(prompt),
            )]),
        }
    }
}

/// Selects the parameters that `trainable` names and makes them require gradients.
fn trained_parameters(
    encoder: &BertEncoder,
    trainable: Trainable,
) -> Result<Vec<Parameter>, TrainError> {
    let layers = encoder.num_layers();
    let lowest_trained_layer = match trainable {
        Trainable::All => None,
        Trainable::TopLayers(requested) => {
            if requested == 0 || requested as usize > layers {
                return Err(TrainError::TopLayers { requested, layers });
            }
            Some(layers - requested as usize)
        }
    };

    let parameters: Vec<Parameter> = encoder
        .parameters()
        .into_iter()
        .filter(|parameter| match (lowest_trained_layer, parameter.layer) {
            (None, _) => true,
            (Some(lowest), Some(layer)) => layer >= lowest,
            (Some(_), None) => false,
        })
        .collect();
    for parameter in &parameters {
        let _ = parameter.leaf.set_requires_grad(true);
    }
    Ok(parameters)
}

struct PromptSettings {
    length: usize,
    init: PromptInit,
    seed: u64,
}

/// Builds the soft prompt leaf from the model's weights and the seed.
fn initial_prompt_tensor(
    model_bytes: &[u8],
    weights_path: &Path,
    settings: &PromptSettings,
    device: Device,
) -> Result<Trained, TrainError> {
    let values = initial_prompt(model_bytes, settings.length, settings.init, settings.seed)
        .map_err(|source| TrainError::InitialPrompt {
            path: weights_path.to_owned(),
            source,
        })?;
    let initial = from_f32_tensor(&values, device)?;
    let prompt = initial.copy().set_requires_grad(true);
    Ok(Trained::Prompt { prompt, initial })
}

/// Copies an f32 tensor into libtorch on `device`.
pub(crate) fn from_f32_tensor(tensor: &F32Tensor, device: Device) -> Result<Tensor, TrainError> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&dim| dim as i64).collect();
    Tensor::f_from_slice(&tensor.values)
        .and_then(|flat| flat.f_view(shape.as_slice()))
        .and_then(|shaped| shaped.f_to_device(device))
        .map_err(torch("copy a tensor into libtorch"))
}

/// Copies a libtorch tensor to the CPU as f32 values.
pub(crate) fn to_f32_tensor(tensor: &Tensor) -> Result<F32Tensor, TrainError> {
    let shape: Vec<usize> = tensor.size().iter().map(|&dim| dim as usize).collect();
    let flat = tensor
        .f_detach()
        .and_then(|detached| detached.f_to_device(Device::Cpu))
        .and_then(|cpu| cpu.f_to_kind(Kind::Float))
        .and_then(|float| float.f_contiguous())
        .and_then(|contiguous| contiguous.f_flatten(0, -1))
        .map_err(torch("copy a tensor out of libtorch"))?;
    let values = Vec::<f32>::try_from(&flat).map_err(torch("copy a tensor out of libtorch"))?;
    Ok(F32Tensor { shape, values })
}
