//! The embedding block format shared by task results and job artefacts.
//!
//! A block is a safetensors file with one F32 tensor `embeddings` of shape
//! `[rows, dimension]` and a metadata entry `ids`, a JSON array with the id of each
//! row in order. Further metadata entries (job id, run hash) are informational.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};

/// Name of the tensor that holds the vectors.
pub const EMBEDDINGS_TENSOR: &str = "embeddings";
/// Metadata key of the JSON array of row ids.
pub const IDS_METADATA_KEY: &str = "ids";

/// Rows of embeddings with their record ids.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingBlock {
    pub ids: Vec<String>,
    pub dimension: usize,
    /// Row-major values, `ids.len() * dimension` of them.
    pub values: Vec<f32>,
}

/// Errors from reading or writing a block.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("invalid safetensors data")]
    Format(#[from] safetensors::SafeTensorError),
    #[error("invalid embedding block: {0}")]
    Shape(String),
}

impl EmbeddingBlock {
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Appends another block's rows; both must have the same dimension.
    pub fn extend(&mut self, other: EmbeddingBlock) -> Result<(), BlockError> {
        if self.rows() > 0 && other.rows() > 0 && self.dimension != other.dimension {
            return Err(BlockError::Shape(format!(
                "dimension {} does not match {}",
                other.dimension, self.dimension
            )));
        }
        if self.rows() == 0 {
            self.dimension = other.dimension;
        }
        self.ids.extend(other.ids);
        self.values.extend(other.values);
        Ok(())
    }

    /// Serializes the block with `metadata` added to the header.
    pub fn encode(&self, metadata: &[(&str, String)]) -> Result<Vec<u8>, BlockError> {
        if self.values.len() != self.rows() * self.dimension {
            return Err(BlockError::Shape(format!(
                "{} values for {} rows of dimension {}",
                self.values.len(),
                self.rows(),
                self.dimension
            )));
        }
        let bytes: Vec<u8> = self
            .values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::F32, vec![self.rows(), self.dimension], &bytes)?;

        let mut header: HashMap<String, String> = metadata
            .iter()
            .map(|(key, value)| ((*key).to_string(), value.clone()))
            .collect();
        let ids = serde_json::to_string(&self.ids).expect("ids serialize");
        header.insert(IDS_METADATA_KEY.to_string(), ids);

        Ok(safetensors::serialize(
            [(EMBEDDINGS_TENSOR, view)],
            Some(header),
        )?)
    }

    /// Parses a block written by [`EmbeddingBlock::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, BlockError> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
        let ids_json = header
            .metadata()
            .as_ref()
            .and_then(|metadata| metadata.get(IDS_METADATA_KEY))
            .ok_or_else(|| BlockError::Shape("metadata has no `ids` entry".into()))?;
        let ids: Vec<String> = serde_json::from_str(ids_json).map_err(|error| {
            BlockError::Shape(format!("`ids` is not a JSON string array: {error}"))
        })?;

        let tensors = safetensors::SafeTensors::deserialize(bytes)?;
        let view = tensors.tensor(EMBEDDINGS_TENSOR)?;
        if view.dtype() != Dtype::F32 || view.shape().len() != 2 {
            return Err(BlockError::Shape(format!(
                "`embeddings` must be a 2-D F32 tensor, found {:?} {:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let (rows, dimension) = (view.shape()[0], view.shape()[1]);
        if rows != ids.len() {
            return Err(BlockError::Shape(format!(
                "{rows} rows but {} ids",
                ids.len()
            )));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();

        Ok(Self {
            ids,
            dimension,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips() {
        let block = EmbeddingBlock {
            ids: vec!["a".into(), "b".into()],
            dimension: 3,
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let bytes = block.encode(&[("job_id", "j-1".into())]).unwrap();
        assert_eq!(EmbeddingBlock::decode(&bytes).unwrap(), block);
    }

    #[test]
    fn encode_rejects_wrong_value_count() {
        let block = EmbeddingBlock {
            ids: vec!["a".into()],
            dimension: 3,
            values: vec![1.0],
        };
        assert!(block.encode(&[]).is_err());
    }

    #[test]
    fn extend_rejects_other_dimension() {
        let mut block = EmbeddingBlock {
            ids: vec!["a".into()],
            dimension: 1,
            values: vec![1.0],
        };
        let other = EmbeddingBlock {
            ids: vec!["b".into()],
            dimension: 2,
            values: vec![1.0, 2.0],
        };
        assert!(block.extend(other).is_err());
    }
}
