//! The soft prompt's starting value, which both the kernel (on round 0) and the
//! reduce step (before the first optimizer step) compute from the model's weights and
//! the seed, so that neither has to store it first.

use super::schedule::SplitMix64;
use super::tensors::{F32Tensor, TensorFile, TensorFileError};
use crate::manifest::PromptInit;

/// Name of the soft prompt's tensor in a `prompt_tune` weights file, shape
/// `[prompt_length, hidden_size]`.
pub const PROMPT_TENSOR: &str = "prompt";

/// Names under which a Hugging Face BERT checkpoint stores its word-embedding table.
const WORD_EMBEDDING_NAMES: [&str; 2] = [
    "embeddings.word_embeddings.weight",
    "bert.embeddings.word_embeddings.weight",
];

/// Token ids below this are padding, `[unused]` and special tokens in BERT's uncased
/// WordPiece vocabulary, whose embeddings are barely trained, so `vocab`
/// initialisation skips them when the vocabulary is larger.
const FIRST_WORD_TOKEN_ID: usize = 1000;

/// Domain separator so that the prompt draws a different stream than the task shuffle.
const PROMPT_STREAM: u64 = 0x7072_6f6d_7074_2121;

/// Computes the soft prompt before round 0 from the model's weights file (its
/// `model.safetensors`), the prompt length and the seed.
pub fn initial_prompt(
    model_weights: &[u8],
    prompt_length: usize,
    init: PromptInit,
    seed: u64,
) -> Result<F32Tensor, TensorFileError> {
    let file =
        TensorFile::decode_selected(model_weights, |name| WORD_EMBEDDING_NAMES.contains(&name))?;
    let table =
        file.tensors
            .into_values()
            .next()
            .ok_or_else(|| TensorFileError::MissingTensor {
                name: WORD_EMBEDDING_NAMES[0].to_owned(),
            })?;
    let [vocab_size, hidden_size] = table.shape[..] else {
        return Err(TensorFileError::Shape {
            name: WORD_EMBEDDING_NAMES[0].to_owned(),
            shape: table.shape.clone(),
            values: table.values.len(),
            expected: table.values.len(),
        });
    };

    let mut rng = SplitMix64::new(seed ^ PROMPT_STREAM);
    let values = match init {
        PromptInit::Vocab => vocab_rows(
            &table.values,
            vocab_size,
            hidden_size,
            prompt_length,
            &mut rng,
        ),
        PromptInit::Random => random_rows(&table.values, hidden_size, prompt_length, &mut rng),
    };
    Ok(F32Tensor {
        shape: vec![prompt_length, hidden_size],
        values,
    })
}

/// Copies the embedding rows of `prompt_length` token ids drawn uniformly (with
/// replacement) from the word tokens.
fn vocab_rows(
    table: &[f32],
    vocab_size: usize,
    hidden_size: usize,
    prompt_length: usize,
    rng: &mut SplitMix64,
) -> Vec<f32> {
    let first = if vocab_size > FIRST_WORD_TOKEN_ID {
        FIRST_WORD_TOKEN_ID
    } else {
        0
    };
    let mut values = Vec::with_capacity(prompt_length * hidden_size);
    for _ in 0..prompt_length {
        let token = first + rng.below((vocab_size - first) as u64) as usize;
        values.extend_from_slice(&table[token * hidden_size..(token + 1) * hidden_size]);
    }
    values
}

/// Draws normal values (Box–Muller) with the standard deviation of the table.
fn random_rows(
    table: &[f32],
    hidden_size: usize,
    prompt_length: usize,
    rng: &mut SplitMix64,
) -> Vec<f32> {
    let count = table.len().max(1) as f64;
    let mean = table.iter().map(|&value| f64::from(value)).sum::<f64>() / count;
    let variance = table
        .iter()
        .map(|&value| (f64::from(value) - mean).powi(2))
        .sum::<f64>()
        / count;
    let std = variance.sqrt();

    (0..prompt_length * hidden_size)
        .map(|_| {
            // 1 − u lies in (0, 1], so the logarithm is finite.
            let radius = (-2.0 * (1.0 - rng.unit_f64()).ln()).sqrt();
            let angle = std::f64::consts::TAU * rng.unit_f64();
            (std * radius * angle.cos()) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns model weights with a 1200-token, 4-wide table whose row `i` is
    /// `[i, i, i, i]`.
    fn model_weights() -> Vec<u8> {
        let (vocab, hidden) = (1200, 4);
        let values: Vec<f32> = (0..vocab)
            .flat_map(|row| std::iter::repeat_n(row as f32, hidden))
            .collect();
        let mut file = TensorFile::default();
        file.tensors.insert(
            WORD_EMBEDDING_NAMES[0].to_owned(),
            F32Tensor::new("table", vec![vocab, hidden], values).unwrap(),
        );
        file.encode()
    }

    #[test]
    fn vocab_init_copies_word_rows() {
        let prompt = initial_prompt(&model_weights(), 6, PromptInit::Vocab, 1).unwrap();

        assert_eq!(prompt.shape, vec![6, 4]);
        for row in prompt.values.chunks(4) {
            assert!(row.iter().all(|&value| value == row[0]), "{row:?}");
            assert!(row[0] >= FIRST_WORD_TOKEN_ID as f32, "{row:?}");
        }
    }

    #[test]
    fn init_depends_on_seed_only() {
        let weights = model_weights();
        let first = initial_prompt(&weights, 8, PromptInit::Random, 5).unwrap();

        assert_eq!(
            first,
            initial_prompt(&weights, 8, PromptInit::Random, 5).unwrap()
        );
        assert_ne!(
            first,
            initial_prompt(&weights, 8, PromptInit::Random, 6).unwrap()
        );
    }

    #[test]
    fn random_init_has_table_scale() {
        let prompt = initial_prompt(&model_weights(), 64, PromptInit::Random, 0).unwrap();

        let n = prompt.values.len() as f64;
        let std = (prompt
            .values
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        // The table's values 0..1199 have a standard deviation of about 346.
        assert!((250.0..450.0).contains(&std), "standard deviation {std}");
    }

    #[test]
    fn missing_table_is_named() {
        let error =
            initial_prompt(&TensorFile::default().encode(), 4, PromptInit::Vocab, 0).unwrap_err();

        assert!(error.to_string().contains("word_embeddings"), "{error}");
    }
}
