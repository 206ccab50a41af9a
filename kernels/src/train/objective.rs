//! The forward and backward pass: embedding texts with the trained tensors, the
//! in-batch InfoNCE loss, and embeddings for evaluation.

use tch::{Device, Kind, Reduction, Tensor};

use super::{TextPair, TrainError, TrainKernel, Trained, torch};
use crate::embed::tokenize::pad_batch;
use crate::embed::{longest_first_order, mean_pool_normalize, restore_input_order};

/// Texts per forward pass in [`TrainKernel::embed`].
const EVAL_BATCH: usize = 32;

/// Texts per forward pass when computing the loss. The texts of a micro-batch are
/// sorted by token count and run in passes of this many, each padded to its own
/// longest text, which changes no embedding but pads less. On the benchmark's
/// Debian pairs (32 pairs, 128 tokens, 2 vCPUs) a step took 0.51 s in passes of 8
/// and 0.74 s in one pass of 32; passes of 4 and 6 took about as long as 8.
// NOTE: measured on the CPU only; a GPU likely runs larger passes better.
const TRAIN_PASS_TEXTS: usize = 8;

impl TrainKernel {
    /// Runs the forward and backward pass of the InfoNCE loss over `pairs` and returns
    /// the loss. The gradients accumulate in the trained tensors until
    /// [`TrainKernel::take_gradients`] reads and resets them.
    ///
    /// `micro_batches` splits `pairs` into consecutive groups (their sizes, summing to
    /// `pairs.len()`). Each anchor's negatives are the other positives of its group,
    /// and the loss is the mean over all pairs. One group is one task's micro-batch;
    /// several groups give, in one pass, the loss whose gradient a round's reduction
    /// of those micro-batches equals.
    pub fn backward(
        &mut self,
        pairs: &[TextPair],
        micro_batches: &[usize],
    ) -> Result<f64, TrainError> {
        if pairs.is_empty() {
            return Err(TrainError::Batch("the task has no pairs".into()));
        }
        if micro_batches.contains(&0) || micro_batches.iter().sum::<usize>() != pairs.len() {
            return Err(TrainError::Batch(format!(
                "micro-batch sizes {micro_batches:?} do not split {} pairs",
                pairs.len()
            )));
        }

        let anchors: Vec<&str> = pairs.iter().map(|pair| pair.anchor).collect();
        let positives: Vec<&str> = pairs.iter().map(|pair| pair.positive).collect();
        let anchors = self.encode(&anchors)?;
        let positives = self.encode(&positives)?;

        let loss = self.info_nce(&anchors, &positives, micro_batches)?;
        loss.f_backward().map_err(torch("run the backward pass"))?;
        f64::try_from(&loss).map_err(torch("read the loss"))
    }

    /// Returns the mean cross-entropy of each anchor picking its own positive among
    /// the positives of its micro-batch.
    fn info_nce(
        &self,
        anchors: &Tensor,
        positives: &Tensor,
        micro_batches: &[usize],
    ) -> Result<Tensor, TrainError> {
        let compute = || -> Result<Tensor, tch::TchError> {
            let count = anchors.size()[0];
            let mut logits = anchors
                .f_matmul(&positives.f_tr()?)?
                .f_div_scalar(self.temperature)?;
            if micro_batches.len() > 1 {
                let outside = outside_blocks(micro_batches, self.device)?;
                logits = logits.f_masked_fill(&outside, f64::NEG_INFINITY)?;
            }
            let targets = Tensor::f_arange(count, (Kind::Int64, self.device))?;
            logits.f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0)
        };
        compute().map_err(torch("compute the InfoNCE loss"))
    }

    /// Embeds `texts` with gradients flowing to the trained tensors:
    /// `[texts.len(), hidden]`, L2-normalised, in input order.
    fn encode(&self, texts: &[&str]) -> Result<Tensor, TrainError> {
        let token_ids = self.tokenizer.encode(texts)?;
        let order = longest_first_order(&token_ids);

        let forward = || -> Result<Tensor, tch::TchError> {
            let mut chunks = Vec::with_capacity(texts.len().div_ceil(TRAIN_PASS_TEXTS));
            for indices in order.chunks(TRAIN_PASS_TEXTS) {
                let sequences: Vec<&[i64]> = indices
                    .iter()
                    .map(|&index| token_ids[index].as_slice())
                    .collect();
                chunks.push(self.encode_tokens(&sequences)?);
            }
            let sorted = Tensor::f_cat(&chunks, 0)?;

            let mut sorted_row_of_text = vec![0_i64; order.len()];
            for (row, &text_index) in order.iter().enumerate() {
                sorted_row_of_text[text_index] = row as i64;
            }
            let rows = Tensor::f_from_slice(&sorted_row_of_text)?.f_to_device(self.device)?;
            sorted.f_index_select(0, &rows)
        };
        forward().map_err(torch("run the forward pass"))
    }

    fn encode_tokens(&self, sequences: &[&[i64]]) -> Result<Tensor, tch::TchError> {
        let batch = pad_batch(sequences, self.pad_token_id, self.device)?;
        match &self.trained {
            Trained::Encoder { .. } => {
                let hidden = self
                    .encoder
                    .forward(&batch.input_ids, &batch.attention_mask)?;
                mean_pool_normalize(&hidden, &batch.attention_mask)
            }
            Trained::Prompt { prompt, .. } => {
                self.encode_with_prompt(prompt, &batch.input_ids, &batch.attention_mask)
            }
        }
    }

    /// Prepends the prompt to each text's summed token embeddings, runs the encoder
    /// and mean-pools over the text's tokens only.
    fn encode_with_prompt(
        &self,
        prompt: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor, tch::TchError> {
        let batch = input_ids.size()[0];
        let prompt_length = prompt.size()[0];
        let hidden_size = self.encoder.hidden_size();

        // The prompt gets the token type embedding but no position embedding.
        let prompt_embeddings = prompt
            .f_add(&self.encoder.token_type_embedding()?)?
            .f_unsqueeze(0)?
            .f_expand([batch, prompt_length, hidden_size], false)?;
        let text_embeddings = self.encoder.token_embeddings(input_ids)?;
        let embeddings = Tensor::f_cat(&[&prompt_embeddings, &text_embeddings], 1)?;

        let mask_kind = (attention_mask.kind(), attention_mask.device());
        let prompt_mask = Tensor::f_ones([batch, prompt_length], mask_kind)?;
        let attention = Tensor::f_cat(&[&prompt_mask, attention_mask], 1)?;
        let hidden = self.encoder.forward_embeddings(&embeddings, &attention)?;

        let text_hidden = hidden.f_narrow(1, prompt_length, input_ids.size()[1])?;
        mean_pool_normalize(&text_hidden, attention_mask)
    }

    /// Embeds `texts` with the loaded weights, without gradients, as a
    /// `[texts.len(), hidden]` f32 tensor on the CPU in input order. Texts are sorted
    /// by token count and run in batches of 32, as the `embed` kernel does.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor, TrainError> {
        let _no_grad = tch::no_grad_guard();
        let token_ids = self.tokenizer.encode(texts)?;
        let order = longest_first_order(&token_ids);

        let mut batches = Vec::with_capacity(texts.len().div_ceil(EVAL_BATCH));
        for batch_indices in order.chunks(EVAL_BATCH) {
            let sequences: Vec<&[i64]> = batch_indices
                .iter()
                .map(|&index| token_ids[index].as_slice())
                .collect();
            let rows = self
                .encode_tokens(&sequences)
                .map_err(torch("run the forward pass"))?;
            batches.push(rows);
        }
        if batches.is_empty() {
            let hidden = self.encoder.hidden_size();
            return Ok(Tensor::zeros([0, hidden], (Kind::Float, Device::Cpu)));
        }
        restore_input_order(&batches, &order).map_err(torch("assemble the embeddings"))
    }
}

/// Returns a `[n, n]` boolean mask that is true outside the diagonal blocks of
/// `micro_batches`, where n is their sum.
fn outside_blocks(micro_batches: &[usize], device: Device) -> Result<Tensor, tch::TchError> {
    let group_of: Vec<i64> = micro_batches
        .iter()
        .enumerate()
        .flat_map(|(group, &size)| std::iter::repeat_n(group as i64, size))
        .collect();
    let groups = Tensor::f_from_slice(&group_of)?.f_to_device(device)?;
    groups.f_unsqueeze(1)?.f_ne_tensor(&groups.f_unsqueeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_blocks_marks_cross_group_pairs() {
        let mask = outside_blocks(&[2, 1], Device::Cpu).unwrap();

        let values: Vec<bool> = Vec::try_from(mask.flatten(0, -1)).unwrap();
        assert_eq!(
            values,
            vec![false, false, true, false, false, true, true, true, false]
        );
    }
}
