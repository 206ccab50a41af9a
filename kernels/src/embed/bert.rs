//! BERT encoder (Hugging Face `BertModel` layout) without dropout.
//!
//! The forward pass returns the last hidden state, which is what
//! sentence-transformers pools. The pooler head is not loaded because
//! sentence-transformers does not use it. Dropout is left out entirely, so the
//! results are those of `model.eval()`, also when the training kernels run a
//! backward pass through the encoder.

use std::path::Path;

use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::Deserialize;
use tch::{Device, Kind, TchError, Tensor};

use super::EmbedError;

mod parameters;

pub(crate) use parameters::Parameter;

/// The fields of a Hugging Face BERT `config.json` that the encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BertConfig {
    pub(crate) vocab_size: i64,
    pub(crate) hidden_size: i64,
    pub(crate) num_hidden_layers: usize,
    pub(crate) num_attention_heads: i64,
    pub(crate) intermediate_size: i64,
    pub(crate) hidden_act: String,
    pub(crate) max_position_embeddings: i64,
    pub(crate) type_vocab_size: i64,
    pub(crate) layer_norm_eps: f64,
    #[serde(default)]
    pub(crate) pad_token_id: i64,
    #[serde(default = "absolute_position_embeddings")]
    pub(crate) position_embedding_type: String,
}

fn absolute_position_embeddings() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub(crate) fn load(path: &Path) -> Result<Self, EmbedError> {
        let text = std::fs::read_to_string(path).map_err(|source| EmbedError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        let config: Self =
            serde_json::from_str(&text).map_err(|source| EmbedError::ParseConfig {
                path: path.to_owned(),
                source,
            })?;

        if let Err(reason) = config.validate() {
            return Err(EmbedError::UnsupportedConfig {
                path: path.to_owned(),
                reason,
            });
        }
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (key, value) in positive {
            if value <= 0 {
                return Err(format!("{key} is {value}, expected a positive integer"));
            }
        }

        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported, only \"absolute\" is",
                self.position_embedding_type
            ));
        }
        // Written so that NaN is rejected too.
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(format!(
                "layer_norm_eps is {}, expected a positive number",
                self.layer_norm_eps
            ));
        }
        self.gelu_approximation()?;
        Ok(())
    }

    /// Maps `hidden_act` to the `approximate` argument of `torch.nn.functional.gelu`.
    fn gelu_approximation(&self) -> Result<&'static str, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok("none"),
            "gelu_new" | "gelu_pytorch_tanh" => Ok("tanh"),
            other => Err(format!(
                "hidden_act {other:?} is not supported, expected \"gelu\", \"gelu_new\" or \"gelu_pytorch_tanh\""
            )),
        }
    }
}

/// Weight and bias of a `torch.nn.Linear`, weight stored `[out, in]`.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, input: &Tensor) -> Result<Tensor, TchError> {
        input.f_linear(&self.weight, Some(&self.bias))
    }
}

/// Scale and shift of a `torch.nn.LayerNorm` over the last dimension.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, input: &Tensor) -> Result<Tensor, TchError> {
        let width = self.weight.size()[0];
        input.f_layer_norm(
            [width],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// One transformer block: self-attention, then the feed-forward network, each
/// followed by a residual connection and a post-LayerNorm.
struct EncoderLayer {
    /// Query, key and value projections stacked into one `[3 * hidden, hidden]` matrix.
    query_key_value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The BERT embeddings and encoder stack with weights on one device.
pub(crate) struct BertEncoder {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    /// The token type table. Only row 0 is used, because every input is a single segment.
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    hidden_size: i64,
    num_heads: i64,
    gelu_approximation: &'static str,
    /// `""` or `"bert."`: the prefix of the tensor names in the weights file.
    name_prefix: &'static str,
}

impl BertEncoder {
    /// Loads the weights named as Hugging Face's `BertModel` saves them, with or
    /// without a `bert.` prefix, converts them to f32 and moves them to `device`.
    pub(crate) fn load(
        config: &BertConfig,
        weights_path: &Path,
        device: Device,
    ) -> Result<Self, EmbedError> {
        let bytes = std::fs::read(weights_path).map_err(|source| EmbedError::ReadFile {
            path: weights_path.to_owned(),
            source,
        })?;
        let tensors =
            SafeTensors::deserialize(&bytes).map_err(|source| EmbedError::ParseWeights {
                path: weights_path.to_owned(),
                source,
            })?;
        let weights = WeightFile::new(tensors, weights_path, device);

        let hidden = config.hidden_size;
        let embeddings_norm = weights.layer_norm("embeddings.LayerNorm", hidden, config)?;
        let token_type_embeddings = weights.tensor(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, hidden],
        )?;

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            layers.push(weights.encoder_layer(index, config)?);
        }

        Ok(Self {
            word_embeddings: weights.tensor(
                "embeddings.word_embeddings.weight",
                &[config.vocab_size, hidden],
            )?,
            position_embeddings: weights.tensor(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, hidden],
            )?,
            token_type_embeddings,
            embeddings_norm,
            layers,
            hidden_size: hidden,
            num_heads: config.num_attention_heads,
            gelu_approximation: config
                .gelu_approximation()
                .expect("BertConfig::load validated hidden_act"),
            name_prefix: weights.prefix,
        })
    }

    /// Runs the encoder on `input_ids` and `attention_mask` (both `[batch, len]`
    /// int64, mask 1 for a token and 0 for padding) and returns the last hidden
    /// state, `[batch, len, hidden]` f32.
    pub(crate) fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor, TchError> {
        let embeddings = self.token_embeddings(input_ids)?;
        self.forward_embeddings(&embeddings, attention_mask)
    }

    /// Sums the word, position and token type embeddings of `input_ids`
    /// (`[batch, len]`) into `[batch, len, hidden]`, before the embedding LayerNorm.
    pub(crate) fn token_embeddings(&self, input_ids: &Tensor) -> Result<Tensor, TchError> {
        let seq_len = input_ids.size()[1];

        let positions = self.position_embeddings.f_narrow(0, 0, seq_len)?;
        Tensor::f_embedding(&self.word_embeddings, input_ids, -1, false, false)?
            .f_add_(&positions)?
            .f_add_(&self.token_type_embedding()?)
    }

    /// Returns row 0 of the token type table, `[hidden]`.
    pub(crate) fn token_type_embedding(&self) -> Result<Tensor, TchError> {
        self.token_type_embeddings.f_select(0, 0)
    }

    /// Runs the embedding LayerNorm and the layers on summed embeddings
    /// (`[batch, len, hidden]`, as [`BertEncoder::token_embeddings`] returns them)
    /// and returns the last hidden state.
    pub(crate) fn forward_embeddings(
        &self,
        embeddings: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor, TchError> {
        let mut hidden = self.embeddings_norm.forward(embeddings)?;

        // Boolean mask for scaled_dot_product_attention, true where a key is a
        // real token, broadcast over heads and query positions.
        let key_mask = attention_mask.f_ne(0)?.f_unsqueeze(1)?.f_unsqueeze(1)?;

        for layer in &self.layers {
            hidden = self.layer_forward(layer, &hidden, &key_mask)?;
        }
        Ok(hidden)
    }

    fn layer_forward(
        &self,
        layer: &EncoderLayer,
        hidden: &Tensor,
        key_mask: &Tensor,
    ) -> Result<Tensor, TchError> {
        let size = hidden.size();
        let (batch, seq_len) = (size[0], size[1]);
        let head_dim = self.hidden_size / self.num_heads;

        // [batch, len, 3 * hidden] -> [3, batch, heads, len, head_dim]
        let query_key_value = layer
            .query_key_value
            .forward(hidden)?
            .f_view([batch, seq_len, 3, self.num_heads, head_dim])?
            .f_permute([2, 0, 3, 1, 4])?;
        let query = query_key_value.f_select(0, 0)?;
        let key = query_key_value.f_select(0, 1)?;
        let value = query_key_value.f_select(0, 2)?;

        // The default scale is 1 / sqrt(head_dim), as in BertSelfAttention.
        let context = Tensor::f_scaled_dot_product_attention(
            &query,
            &key,
            &value,
            Some(key_mask),
            0.0,
            false,
            None,
            false,
        )?;
        let context = context
            .f_transpose(1, 2)?
            .f_reshape([batch, seq_len, self.hidden_size])?;

        // The residual additions and GELU run in place on freshly computed
        // tensors, which saves an allocation each.
        let attended = layer.attention_output.forward(&context)?.f_add_(hidden)?;
        let attended = layer.attention_norm.forward(&attended)?;

        // GELU's backward pass needs its input, so it runs in place only when no
        // gradient flows through it.
        let mut intermediate = layer.intermediate.forward(&attended)?;
        let intermediate = if intermediate.requires_grad() {
            intermediate.f_gelu(self.gelu_approximation)?
        } else {
            intermediate.f_gelu_(self.gelu_approximation)?
        };
        let output = layer.output.forward(&intermediate)?.f_add_(&attended)?;
        layer.output_norm.forward(&output)
    }
}

/// Named tensors of a safetensors file, read one at a time with shape checks.
struct WeightFile<'data> {
    tensors: SafeTensors<'data>,
    path: &'data Path,
    /// `""` or `"bert."`, whichever the file uses for its embedding table.
    prefix: &'static str,
    device: Device,
}

impl<'data> WeightFile<'data> {
    fn new(tensors: SafeTensors<'data>, path: &'data Path, device: Device) -> Self {
        let prefixed = tensors
            .names()
            .contains(&"bert.embeddings.word_embeddings.weight");
        let prefix = if prefixed { "bert." } else { "" };
        Self {
            tensors,
            path,
            prefix,
            device,
        }
    }

    /// Reads `name`, checks its shape against `shape`, converts it to f32 and
    /// moves it to the device.
    fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor, EmbedError> {
        let full_name = format!("{}{name}", self.prefix);
        let view = match self.tensors.tensor(&full_name) {
            Ok(view) => view,
            Err(SafeTensorError::TensorNotFound(_)) => {
                return Err(EmbedError::MissingWeight {
                    path: self.path.to_owned(),
                    name: full_name,
                });
            }
            Err(source) => {
                return Err(EmbedError::ParseWeights {
                    path: self.path.to_owned(),
                    source,
                });
            }
        };

        let actual: Vec<i64> = view.shape().iter().map(|&dim| dim as i64).collect();
        if actual != shape {
            return Err(EmbedError::WeightShape {
                path: self.path.to_owned(),
                name: full_name,
                expected: shape.to_vec(),
                actual,
            });
        }
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(EmbedError::WeightDtype {
                    path: self.path.to_owned(),
                    name: full_name,
                    dtype: format!("{other:?}"),
                });
            }
        };

        // Copies the little-endian bytes of the file into a new tensor.
        Tensor::f_from_data_size(view.data(), &actual, kind)
            .and_then(|tensor| tensor.f_to_kind(Kind::Float))
            .and_then(|tensor| tensor.f_to_device(self.device))
            .map_err(|source| self.load_error(&full_name, source))
    }

    fn linear(
        &self,
        prefix: &str,
        out_features: i64,
        in_features: i64,
    ) -> Result<Linear, EmbedError> {
        Ok(Linear {
            weight: self.tensor(&format!("{prefix}.weight"), &[out_features, in_features])?,
            bias: self.tensor(&format!("{prefix}.bias"), &[out_features])?,
        })
    }

    fn layer_norm(
        &self,
        prefix: &str,
        width: i64,
        config: &BertConfig,
    ) -> Result<LayerNorm, EmbedError> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{prefix}.weight"), &[width])?,
            bias: self.tensor(&format!("{prefix}.bias"), &[width])?,
            eps: config.layer_norm_eps,
        })
    }

    fn encoder_layer(&self, index: usize, config: &BertConfig) -> Result<EncoderLayer, EmbedError> {
        let hidden = config.hidden_size;
        let intermediate = config.intermediate_size;
        let prefix = format!("encoder.layer.{index}");

        let query = self.linear(&format!("{prefix}.attention.self.query"), hidden, hidden)?;
        let key = self.linear(&format!("{prefix}.attention.self.key"), hidden, hidden)?;
        let value = self.linear(&format!("{prefix}.attention.self.value"), hidden, hidden)?;
        // One matrix product in place of three. The rows stay in query, key,
        // value order, which layer_forward relies on when it splits them.
        let query_key_value = Linear {
            weight: Tensor::f_cat(&[&query.weight, &key.weight, &value.weight], 0)
                .map_err(|source| self.load_error(&format!("{prefix}.attention.self"), source))?,
            bias: Tensor::f_cat(&[&query.bias, &key.bias, &value.bias], 0)
                .map_err(|source| self.load_error(&format!("{prefix}.attention.self"), source))?,
        };

        Ok(EncoderLayer {
            query_key_value,
            attention_output: self.linear(
                &format!("{prefix}.attention.output.dense"),
                hidden,
                hidden,
            )?,
            attention_norm: self.layer_norm(
                &format!("{prefix}.attention.output.LayerNorm"),
                hidden,
                config,
            )?,
            intermediate: self.linear(
                &format!("{prefix}.intermediate.dense"),
                intermediate,
                hidden,
            )?,
            output: self.linear(&format!("{prefix}.output.dense"), hidden, intermediate)?,
            output_norm: self.layer_norm(&format!("{prefix}.output.LayerNorm"), hidden, config)?,
        })
    }

    fn load_error(&self, name: &str, source: TchError) -> EmbedError {
        EmbedError::LoadWeight {
            path: self.path.to_owned(),
            name: name.to_owned(),
            source,
        }
    }
}
