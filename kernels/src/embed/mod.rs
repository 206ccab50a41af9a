//! Sentence embeddings with a BERT-family sentence-transformers model, such as
//! all-MiniLM-L6-v2, computed with libtorch.
//!
//! A model directory contains `config.json` (Hugging Face BERT config),
//! `model.safetensors` (the encoder weights) and `tokenizer.json`. An
//! embedding is what sentence-transformers' `encode` returns for a model made of
//! Transformer, mean Pooling and Normalize modules: the last hidden state
//! averaged over the attention mask, then scaled to unit L2 norm.
//!
//! Texts are truncated to `max_seq_len` tokens, special tokens included. Within
//! one [`EmbedModel::embed`] call the texts are sorted by token count and run in
//! batches of `batch_size`, each padded only to its longest text, and the rows
//! are returned in input order.

pub(crate) mod bert;
mod runtime;
pub(crate) mod tokenize;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, TchError, Tensor};

use bert::{BertConfig, BertEncoder};
pub use runtime::{set_threads, tune_malloc};
use tokenize::{SentenceTokenizer, pad_batch};

/// Maximum sequence length of all-MiniLM-L6-v2, from its `sentence_bert_config.json`.
pub const DEFAULT_MAX_SEQ_LEN: usize = 256;

/// Texts per forward pass, the default `batch_size` of sentence-transformers' `encode`.
pub const DEFAULT_BATCH_SIZE: NonZeroUsize = NonZeroUsize::new(32).unwrap();

/// Errors from loading a model or embedding texts.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model file could not be read.
    #[error("failed to read model file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `config.json` is not valid JSON or lacks a required BERT field.
    #[error("invalid model config {path}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// `config.json` describes a model that this encoder does not implement.
    #[error("unsupported model config {path}: {reason}")]
    UnsupportedConfig { path: PathBuf, reason: String },

    /// The requested maximum sequence length does not fit the model.
    #[error(
        "invalid max_seq_len {max_seq_len}: expected 2 to {max_position_embeddings} \
         (the model's max_position_embeddings)"
    )]
    InvalidMaxSeqLen {
        max_seq_len: usize,
        max_position_embeddings: i64,
    },

    /// The weights file is not a valid safetensors file.
    #[error("invalid safetensors file {path}")]
    ParseWeights {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A tensor that the encoder needs is not in the weights file.
    #[error("weight {name} not found in {path}")]
    MissingWeight { path: PathBuf, name: String },

    /// A weight's shape does not match the shape that `config.json` implies.
    #[error("weight {name} in {path} has shape {actual:?}, expected {expected:?} from config.json")]
    WeightShape {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        actual: Vec<i64>,
    },

    /// A weight is not stored as a floating-point type.
    #[error("weight {name} in {path} has dtype {dtype}, expected F32, F16, BF16 or F64")]
    WeightDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    /// libtorch failed to convert a weight or move it to the device.
    #[error("failed to load weight {name} from {path} into libtorch")]
    LoadWeight {
        path: PathBuf,
        name: String,
        #[source]
        source: TchError,
    },

    /// `tokenizer.json` could not be loaded or configured.
    #[error("failed to load tokenizer {path}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },

    /// The tokenizer failed on the input texts.
    #[error("failed to tokenize texts with {path}")]
    Tokenize {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },

    /// libtorch failed during the forward pass, for example out of device memory.
    #[error("forward pass failed on a batch of {batch_len} texts")]
    Forward {
        batch_len: usize,
        #[source]
        source: TchError,
    },

    /// Collecting the pooled rows into the output tensor failed.
    #[error("failed to assemble the output embeddings of {text_count} texts")]
    Output {
        text_count: usize,
        #[source]
        source: TchError,
    },

    /// [`set_threads`] was called with a count below 1.
    #[error("invalid thread count {0}: expected at least 1")]
    InvalidThreadCount(i32),

    /// glibc's `mallopt` rejected an option that [`tune_malloc`] sets.
    #[error("mallopt rejected {option} = {value}")]
    MallocOption { option: &'static str, value: i32 },
}

/// A loaded sentence-embedding model: tokenizer and encoder weights on one device.
///
/// The model is `Send` but not `Sync`, because `tch::Tensor` is not `Sync`.
pub struct EmbedModel {
    tokenizer: SentenceTokenizer,
    encoder: BertEncoder,
    device: Device,
    dimension: usize,
    max_seq_len: usize,
    pad_token_id: i64,
    batch_size: NonZeroUsize,
}

impl EmbedModel {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from
    /// `model_dir` and places the weights on `device`.
    ///
    /// `max_seq_len` counts tokens including `[CLS]` and `[SEP]` and must lie
    /// between 2 and the model's `max_position_embeddings`. The batch size is
    /// [`DEFAULT_BATCH_SIZE`] until [`EmbedModel::with_batch_size`] changes it.
    pub fn load(model_dir: &Path, device: Device, max_seq_len: usize) -> Result<Self, EmbedError> {
        let config = BertConfig::load(&model_dir.join("config.json"))?;
        let max_position_embeddings = config.max_position_embeddings;
        if max_seq_len < 2 || max_seq_len as i64 > max_position_embeddings {
            return Err(EmbedError::InvalidMaxSeqLen {
                max_seq_len,
                max_position_embeddings,
            });
        }

        let tokenizer = SentenceTokenizer::load(&model_dir.join("tokenizer.json"), max_seq_len)?;
        let encoder = BertEncoder::load(&config, &model_dir.join("model.safetensors"), device)?;

        Ok(Self {
            tokenizer,
            encoder,
            device,
            dimension: config.hidden_size as usize,
            max_seq_len,
            pad_token_id: config.pad_token_id,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Sets the maximum number of texts in one forward pass.
    pub fn with_batch_size(mut self, batch_size: NonZeroUsize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Returns the length of each embedding (384 for all-MiniLM-L6-v2).
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Returns the maximum number of tokens per text, special tokens included.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Returns the maximum number of texts in one forward pass.
    pub fn batch_size(&self) -> NonZeroUsize {
        self.batch_size
    }

    /// Returns the device of the weights.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Counts the tokens of each text after truncation, `[CLS]` and `[SEP]` included.
    pub fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, EmbedError> {
        let token_ids = self.tokenizer.encode(texts)?;
        Ok(token_ids.iter().map(Vec::len).collect())
    }

    /// Embeds `texts` and returns one L2-normalised row per text, in input
    /// order, as a `[texts.len(), dimension]` f32 tensor on the CPU.
    ///
    /// The texts are sorted by token count and split into forward passes of at
    /// most `batch_size` texts. sentence-transformers sorts by character count,
    /// which pads more. An empty `texts` returns a `[0, dimension]` tensor.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor, EmbedError> {
        let text_count = texts.len();
        if text_count == 0 {
            return Ok(Tensor::zeros(
                [0, self.dimension as i64],
                (Kind::Float, Device::Cpu),
            ));
        }

        let token_ids = self.tokenizer.encode(texts)?;
        let order = longest_first_order(&token_ids);

        let _no_grad = tch::no_grad_guard();
        let mut batches = Vec::with_capacity(text_count.div_ceil(self.batch_size.get()));
        for batch_indices in order.chunks(self.batch_size.get()) {
            let sequences: Vec<&[i64]> = batch_indices
                .iter()
                .map(|&index| token_ids[index].as_slice())
                .collect();
            batches.push(self.embed_batch(&sequences)?);
        }

        restore_input_order(&batches, &order)
            .map_err(|source| EmbedError::Output { text_count, source })
    }

    /// Runs one forward pass and pools it into `[sequences.len(), dimension]` rows.
    fn embed_batch(&self, sequences: &[&[i64]]) -> Result<Tensor, EmbedError> {
        let forward = || -> Result<Tensor, TchError> {
            let batch = pad_batch(sequences, self.pad_token_id, self.device)?;
            let hidden = self
                .encoder
                .forward(&batch.input_ids, &batch.attention_mask)?;
            mean_pool_normalize(&hidden, &batch.attention_mask)
        };
        forward().map_err(|source| EmbedError::Forward {
            batch_len: sequences.len(),
            source,
        })
    }
}

/// Concatenates the batch outputs, whose rows follow `order`, moves them to
/// the CPU and puts row `i` back at position `order[i]`.
pub(crate) fn restore_input_order(batches: &[Tensor], order: &[usize]) -> Result<Tensor, TchError> {
    let sorted = Tensor::f_cat(batches, 0)?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?;

    let mut sorted_row_of_text = vec![0_i64; order.len()];
    for (row, &text_index) in order.iter().enumerate() {
        sorted_row_of_text[text_index] = row as i64;
    }
    let index = Tensor::f_from_slice(&sorted_row_of_text)?;
    sorted.f_index_select(0, &index)
}

/// Returns text indices ordered by decreasing token count, ties in input order,
/// so that each batch contains texts of similar length and needs little padding.
pub(crate) fn longest_first_order(token_ids: &[Vec<i64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..token_ids.len()).collect();
    order.sort_by_key(|&index| std::cmp::Reverse(token_ids[index].len()));
    order
}

/// Averages `hidden` (`[batch, len, dim]`) over the positions where
/// `attention_mask` is 1 and scales each row to unit L2 norm.
///
/// The clamps match sentence-transformers: the token count is at least 1e-9
/// (Pooling) and the norm at least 1e-12 (`torch.nn.functional.normalize`).
pub(crate) fn mean_pool_normalize(
    hidden: &Tensor,
    attention_mask: &Tensor,
) -> Result<Tensor, TchError> {
    let mask = attention_mask.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;

    let summed = hidden
        .f_mul(&mask)?
        .f_sum_dim_intlist(1, false, Kind::Float)?;
    let token_counts = mask
        .f_sum_dim_intlist(1, false, Kind::Float)?
        .f_clamp_min(1e-9)?;
    let mean = summed.f_div(&token_counts)?;

    let norms = mean.f_norm_scalaropt_dim(2, 1, true)?.f_clamp_min(1e-12)?;
    mean.f_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_first_order_is_stable() {
        let token_ids = vec![vec![1; 3], vec![1; 5], vec![1; 3], vec![1; 7]];

        assert_eq!(longest_first_order(&token_ids), vec![3, 1, 0, 2]);
    }

    #[test]
    fn mean_pool_ignores_padding() {
        // One row of two real tokens and one padded position with a large value.
        let hidden = Tensor::from_slice(&[3.0_f32, 0.0, 1.0, 0.0, 100.0, 100.0]).view([1, 3, 2]);
        let mask = Tensor::from_slice(&[1_i64, 1, 0]).view([1, 3]);

        let pooled = mean_pool_normalize(&hidden, &mask).unwrap();

        let values: Vec<f32> = Vec::try_from(pooled.flatten(0, -1)).unwrap();
        assert_eq!(values, vec![1.0, 0.0]);
    }
}
