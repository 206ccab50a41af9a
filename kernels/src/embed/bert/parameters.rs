//! The encoder's parameters by their names in the weights file, for the training
//! kernels, which set gradients on them, read their gradients and replace their values.

use tch::{TchError, Tensor};

use super::BertEncoder;

/// One tensor of the weights file as the encoder holds it: `leaf` is the tensor the
/// encoder computes with, and the parameter is rows `rows` of it when the leaf
/// stacks several parameters (the query, key and value projections).
pub(crate) struct Parameter {
    /// Name in the weights file, prefix included.
    pub(crate) name: String,
    /// The encoder's tensor, sharing its storage and gradient.
    pub(crate) leaf: Tensor,
    /// Start and length of the parameter's rows within `leaf`, or `None` for all of it.
    pub(crate) rows: Option<(i64, i64)>,
    /// The transformer layer that uses the parameter; `None` for the embeddings.
    pub(crate) layer: Option<usize>,
}

impl Parameter {
    /// Returns the parameter's part of `tensor`, which has the leaf's shape (the leaf
    /// itself or its gradient).
    pub(crate) fn part_of(&self, tensor: &Tensor) -> Result<Tensor, TchError> {
        match self.rows {
            Some((start, length)) => tensor.f_narrow(0, start, length),
            None => Ok(tensor.shallow_clone()),
        }
    }
}

impl BertEncoder {
    /// Returns the number of transformer layers.
    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Returns the width of the hidden state.
    pub(crate) fn hidden_size(&self) -> i64 {
        self.hidden_size
    }

    /// Lists every parameter the forward pass uses, named as in the weights file,
    /// embeddings first and then layer by layer.
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        let prefix = self.name_prefix;
        let mut parameters = Vec::new();
        let mut push = |name: String, leaf: &Tensor, rows, layer| {
            parameters.push(Parameter {
                name: format!("{prefix}{name}"),
                leaf: leaf.shallow_clone(),
                rows,
                layer,
            });
        };

        let embeddings = [
            ("word_embeddings.weight", &self.word_embeddings),
            ("position_embeddings.weight", &self.position_embeddings),
            ("token_type_embeddings.weight", &self.token_type_embeddings),
            ("LayerNorm.weight", &self.embeddings_norm.weight),
            ("LayerNorm.bias", &self.embeddings_norm.bias),
        ];
        for (name, leaf) in embeddings {
            push(format!("embeddings.{name}"), leaf, None, None);
        }

        let hidden = self.hidden_size;
        for (index, layer) in self.layers.iter().enumerate() {
            let base = format!("encoder.layer.{index}");
            let at = Some(index);
            for (part, projection) in ["query", "key", "value"].iter().enumerate() {
                let rows = Some((part as i64 * hidden, hidden));
                let name = format!("{base}.attention.self.{projection}");
                let query_key_value = &layer.query_key_value;
                push(format!("{name}.weight"), &query_key_value.weight, rows, at);
                push(format!("{name}.bias"), &query_key_value.bias, rows, at);
            }
            let linears = [
                ("attention.output.dense", &layer.attention_output),
                ("intermediate.dense", &layer.intermediate),
                ("output.dense", &layer.output),
            ];
            for (name, linear) in linears {
                push(format!("{base}.{name}.weight"), &linear.weight, None, at);
                push(format!("{base}.{name}.bias"), &linear.bias, None, at);
            }
            let norms = [
                ("attention.output.LayerNorm", &layer.attention_norm),
                ("output.LayerNorm", &layer.output_norm),
            ];
            for (name, norm) in norms {
                push(format!("{base}.{name}.weight"), &norm.weight, None, at);
                push(format!("{base}.{name}.bias"), &norm.bias, None, at);
            }
        }
        parameters
    }
}
