//! Tokenization of sentences for the BERT encoder.
//!
//! The tokenizer comes from the model's `tokenizer.json`. Its stored truncation
//! and padding settings are replaced: every text is truncated to the maximum
//! sequence length (special tokens included, longest-first as in
//! sentence-transformers) and left unpadded, because [`pad_batch`] pads each
//! batch only to its longest sequence.

use std::path::{Path, PathBuf};

use tch::{Device, TchError, Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::EmbedError;

/// A `tokenizer.json` tokenizer that truncates to a fixed maximum sequence length.
pub(crate) struct SentenceTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
}

impl SentenceTokenizer {
    /// Loads `path` and sets truncation to `max_seq_len` tokens with no padding.
    pub(crate) fn load(path: &Path, max_seq_len: usize) -> Result<Self, EmbedError> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|source| EmbedError::Tokenizer {
            path: path.to_owned(),
            source,
        })?;

        let truncation = TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_seq_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        tokenizer
            .with_truncation(Some(truncation))
            .map_err(|source| EmbedError::Tokenizer {
                path: path.to_owned(),
                source,
            })?;
        tokenizer.with_padding(None);

        Ok(Self {
            tokenizer,
            path: path.to_owned(),
        })
    }

    /// Encodes each text into token ids, `[CLS]` and `[SEP]` included.
    pub(crate) fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<i64>>, EmbedError> {
        // The fast variant skips character offsets, which pooling does not need.
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|source| EmbedError::Tokenize {
                path: self.path.clone(),
                source,
            })?;

        let token_ids = encodings
            .iter()
            .map(|encoding| encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
            .collect();
        Ok(token_ids)
    }
}

/// Token ids and attention mask of one batch, both `[batch, max_len]` int64.
pub(crate) struct PaddedBatch {
    pub(crate) input_ids: Tensor,
    pub(crate) attention_mask: Tensor,
}

/// Right-pads `sequences` with `pad_id` to the length of the longest one and
/// moves the result to `device`.
pub(crate) fn pad_batch(
    sequences: &[&[i64]],
    pad_id: i64,
    device: Device,
) -> Result<PaddedBatch, TchError> {
    let batch_len = sequences.len();
    let max_len = sequences.iter().map(|ids| ids.len()).max().unwrap_or(0);

    let mut input_ids = vec![pad_id; batch_len * max_len];
    let mut attention_mask = vec![0_i64; batch_len * max_len];
    for (row, ids) in sequences.iter().enumerate() {
        let start = row * max_len;
        input_ids[start..start + ids.len()].copy_from_slice(ids);
        attention_mask[start..start + ids.len()].fill(1);
    }

    let shape = [batch_len as i64, max_len as i64];
    let input_ids = Tensor::f_from_slice(&input_ids)?
        .f_view(shape)?
        .f_to_device(device)?;
    let attention_mask = Tensor::f_from_slice(&attention_mask)?
        .f_view(shape)?
        .f_to_device(device)?;

    Ok(PaddedBatch {
        input_ids,
        attention_mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_batch_pads_to_longest() {
        let first: &[i64] = &[101, 7, 102];
        let second: &[i64] = &[101, 102];

        let batch = pad_batch(&[first, second], 0, Device::Cpu).unwrap();

        assert_eq!(batch.input_ids.size(), vec![2, 3]);
        let ids: Vec<i64> = Vec::try_from(batch.input_ids.flatten(0, -1)).unwrap();
        assert_eq!(ids, vec![101, 7, 102, 101, 102, 0]);
        let mask: Vec<i64> = Vec::try_from(batch.attention_mask.flatten(0, -1)).unwrap();
        assert_eq!(mask, vec![1, 1, 1, 1, 1, 0]);
    }
}
