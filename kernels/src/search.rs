//! Semantic search over an embeddings artefact.
//!
//! An artefact is a safetensors file with one F32 tensor `embeddings` of shape
//! `[rows, dimension]` and a metadata entry `ids`, a JSON array with the string
//! id of each row in order. An [`Index`] scores every row against a query by
//! cosine similarity and returns the best `k` ids.

use std::collections::HashSet;

use safetensors::{Dtype, SafeTensorError, SafeTensors};
use spillway_common::artefact::{EMBEDDINGS_TENSOR, IDS_METADATA_KEY};
use tch::{Device, Kind, TchError, Tensor};

/// Lower bound on a norm before dividing by it, as in
/// `torch.nn.functional.normalize`, so that a zero vector scores 0.
const MIN_NORM: f64 = 1e-12;

/// Errors from reading an artefact or scoring a query.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The bytes are not a valid safetensors file.
    #[error("invalid safetensors artefact")]
    Format(#[source] SafeTensorError),

    /// The artefact has no tensor named `embeddings`.
    #[error("tensor `{EMBEDDINGS_TENSOR}` not found in the artefact")]
    MissingEmbeddings,

    /// The `embeddings` tensor is not F32.
    #[error("tensor `{EMBEDDINGS_TENSOR}` has dtype {dtype}, expected F32")]
    EmbeddingsDtype { dtype: String },

    /// The `embeddings` tensor is not `[rows, dimension]` with a dimension above 0.
    #[error(
        "tensor `{EMBEDDINGS_TENSOR}` has shape {shape:?}, expected [rows, dimension] with dimension > 0"
    )]
    EmbeddingsShape { shape: Vec<usize> },

    /// The `embeddings` tensor contains NaN or infinite values.
    #[error("tensor `{EMBEDDINGS_TENSOR}` contains NaN or infinite values")]
    NonFiniteEmbeddings,

    /// The artefact header has no `ids` metadata entry.
    #[error("metadata entry `{IDS_METADATA_KEY}` not found in the artefact header")]
    MissingIds,

    /// The `ids` entry is not a JSON array of strings.
    #[error("metadata entry `{IDS_METADATA_KEY}` is not a JSON array of strings")]
    InvalidIds(#[source] serde_json::Error),

    /// The number of ids differs from the number of rows.
    #[error("metadata entry `{IDS_METADATA_KEY}` lists {ids} ids for {rows} embedding rows")]
    IdCountMismatch { ids: usize, rows: usize },

    /// Two rows share one id.
    #[error("id {id:?} occurs more than once in metadata entry `{IDS_METADATA_KEY}`")]
    DuplicateId { id: String },

    /// A query is not a vector of the index's dimension.
    #[error("query has shape {shape:?}, expected [{dimension}]")]
    QueryShape { shape: Vec<i64>, dimension: usize },

    /// A query contains NaN or infinite values.
    #[error("query contains NaN or infinite values")]
    NonFiniteQuery,

    /// libtorch failed on the embeddings or the query.
    #[error("libtorch failed to {operation}")]
    Tensor {
        operation: &'static str,
        #[source]
        source: TchError,
    },
}

/// The rows of an artefact, scaled to unit length, with their ids.
#[derive(Debug)]
pub struct Index {
    ids: Vec<String>,
    /// `[rows, dimension]` f32 on the CPU. A zero row stays zero and scores 0.
    unit_rows: Tensor,
    dimension: usize,
}

impl Index {
    /// Parses an artefact and normalises its rows for cosine scoring.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, SearchError> {
        let ids = read_ids(bytes)?;
        let tensors = SafeTensors::deserialize(bytes).map_err(SearchError::Format)?;
        let view = match tensors.tensor(EMBEDDINGS_TENSOR) {
            Ok(view) => view,
            Err(SafeTensorError::TensorNotFound(_)) => return Err(SearchError::MissingEmbeddings),
            Err(error) => return Err(SearchError::Format(error)),
        };

        if view.dtype() != Dtype::F32 {
            return Err(SearchError::EmbeddingsDtype {
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let (rows, dimension) = match *view.shape() {
            [rows, dimension] if dimension > 0 => (rows, dimension),
            _ => {
                return Err(SearchError::EmbeddingsShape {
                    shape: view.shape().to_vec(),
                });
            }
        };
        if ids.len() != rows {
            return Err(SearchError::IdCountMismatch {
                ids: ids.len(),
                rows,
            });
        }

        let unit_rows = unit_rows(view.data(), rows, dimension)?;
        Ok(Self {
            ids,
            unit_rows,
            dimension,
        })
    }

    /// Returns the number of rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Returns true when the artefact has no rows.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Returns the length of each row, which a query must match.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Returns the row ids in row order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Returns the `k` rows most similar to `query` (shape `[dimension]`, any
    /// float dtype and device) as `(id, cosine)`, best first.
    ///
    /// Fewer than `k` pairs are returned when the index has fewer rows. Equal
    /// scores are ordered by row.
    ///
    /// # Panics
    ///
    /// Panics when the query has the wrong shape or contains NaN or infinite
    /// values. [`Index::try_top_k`] returns these cases as errors.
    pub fn top_k(&self, query: &Tensor, k: usize) -> Vec<(String, f32)> {
        match self.try_top_k(query, k) {
            Ok(best) => best,
            Err(error) => panic!("top_k on an index of {} rows failed: {error}", self.len()),
        }
    }

    /// Returns what [`Index::top_k`] returns, or an error for an invalid query.
    pub fn try_top_k(&self, query: &Tensor, k: usize) -> Result<Vec<(String, f32)>, SearchError> {
        if query.size() != [self.dimension as i64] {
            return Err(SearchError::QueryShape {
                shape: query.size(),
                dimension: self.dimension,
            });
        }
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }

        let scores = self.cosine_scores(query)?;
        if scores.iter().any(|score| !score.is_finite()) {
            return Err(SearchError::NonFiniteQuery);
        }
        Ok(self.best_rows(&scores, k))
    }

    /// Computes the cosine similarity of `query` with every row.
    fn cosine_scores(&self, query: &Tensor) -> Result<Vec<f32>, SearchError> {
        let tensor_error = |source| SearchError::Tensor {
            operation: "score the query",
            source,
        };

        let query = query
            .f_to_device(Device::Cpu)
            .and_then(|query| query.f_to_kind(Kind::Float))
            .map_err(tensor_error)?;
        let query_norm = query
            .f_norm()
            .and_then(|norm| norm.f_clamp_min(MIN_NORM))
            .map_err(tensor_error)?;
        let scores = self
            .unit_rows
            .f_mv(&query)
            .and_then(|dot| dot.f_div(&query_norm))
            .map_err(tensor_error)?;

        Vec::<f32>::try_from(&scores).map_err(tensor_error)
    }

    /// Picks the `k` highest scores, ties broken by lower row index.
    fn best_rows(&self, scores: &[f32], k: usize) -> Vec<(String, f32)> {
        let by_score_then_row = |left: &usize, right: &usize| {
            scores[*right]
                .total_cmp(&scores[*left])
                .then(left.cmp(right))
        };

        let mut rows: Vec<usize> = (0..scores.len()).collect();
        let k = k.min(rows.len());
        if k < rows.len() {
            rows.select_nth_unstable_by(k - 1, by_score_then_row);
            rows.truncate(k);
        }
        rows.sort_unstable_by(by_score_then_row);

        rows.into_iter()
            .map(|row| (self.ids[row].clone(), scores[row]))
            .collect()
    }
}

/// Reads the `ids` metadata entry and checks that the ids are unique.
fn read_ids(bytes: &[u8]) -> Result<Vec<String>, SearchError> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(SearchError::Format)?;
    let ids_json = header
        .metadata()
        .as_ref()
        .and_then(|entries| entries.get(IDS_METADATA_KEY))
        .ok_or(SearchError::MissingIds)?;
    let ids: Vec<String> = serde_json::from_str(ids_json).map_err(SearchError::InvalidIds)?;

    let mut seen = HashSet::with_capacity(ids.len());
    for id in &ids {
        if !seen.insert(id.as_str()) {
            return Err(SearchError::DuplicateId { id: id.clone() });
        }
    }
    Ok(ids)
}

/// Copies little-endian f32 bytes into a `[rows, dimension]` tensor and scales
/// each nonzero row to unit L2 norm.
fn unit_rows(data: &[u8], rows: usize, dimension: usize) -> Result<Tensor, SearchError> {
    let tensor_error = |source| SearchError::Tensor {
        operation: "load the embeddings",
        source,
    };

    let shape = [rows as i64, dimension as i64];
    let embeddings = Tensor::f_from_data_size(data, &shape, Kind::Float).map_err(tensor_error)?;
    let all_finite = embeddings
        .f_isfinite()
        .and_then(|finite| finite.f_all())
        .map_err(tensor_error)?;
    if !bool::try_from(&all_finite).map_err(tensor_error)? {
        return Err(SearchError::NonFiniteEmbeddings);
    }

    let norms = embeddings
        .f_norm_scalaropt_dim(2, 1, true)
        .and_then(|norms| norms.f_clamp_min(MIN_NORM))
        .map_err(tensor_error)?;
    embeddings.f_div(&norms).map_err(tensor_error)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::TensorView;

    use super::*;

    /// Serialises `rows` (each of the same length) and `ids_json` as an artefact.
    fn artefact(rows: &[&[f32]], ids_json: Option<&str>) -> Vec<u8> {
        let dimension = rows.first().map_or(0, |row| row.len());
        let bytes: Vec<u8> = rows
            .iter()
            .flat_map(|row| row.iter())
            .flat_map(|value| value.to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::F32, vec![rows.len(), dimension], &bytes).unwrap();
        let metadata =
            ids_json.map(|ids| HashMap::from([(IDS_METADATA_KEY.to_owned(), ids.to_owned())]));
        safetensors::serialize([(EMBEDDINGS_TENSOR, view)], metadata).unwrap()
    }

    fn four_row_index() -> Index {
        let bytes = artefact(
            &[
                &[1.0, 0.0, 0.0],
                &[0.0, 2.0, 0.0],
                &[3.0, 3.0, 0.0],
                &[0.0, 0.0, -1.0],
            ],
            Some(r#"["east", "north", "north-east", "down"]"#),
        );
        Index::from_safetensors(&bytes).unwrap()
    }

    #[test]
    fn index_reads_ids_and_shape() {
        let index = four_row_index();

        assert_eq!(index.len(), 4);
        assert_eq!(index.dimension(), 3);
        assert_eq!(index.ids(), ["east", "north", "north-east", "down"]);
    }

    #[test]
    fn top_k_ranks_by_cosine() {
        let index = four_row_index();
        // Unnormalised on purpose: scores must not depend on the query's length.
        let query = Tensor::from_slice(&[2.0_f32, 1.0, 0.0]);

        let best = index.top_k(&query, 2);

        let ids: Vec<&str> = best.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["north-east", "east"]);
        let expected = [
            3.0 / (5.0_f32.sqrt() * 2.0_f32.sqrt()),
            2.0 / 5.0_f32.sqrt(),
        ];
        for ((_, score), expected) in best.iter().zip(expected) {
            assert!(
                (score - expected).abs() < 1e-6,
                "score {score}, expected {expected}"
            );
        }
    }

    #[test]
    fn top_k_caps_at_row_count() {
        let index = four_row_index();
        let query = Tensor::from_slice(&[0.0_f32, 0.0, 1.0]);

        let best = index.top_k(&query, 10);

        assert_eq!(best.len(), 4);
        assert_eq!(best[3].0, "down");
        assert!(
            (best[3].1 + 1.0).abs() < 1e-6,
            "cosine with the opposite row is {}",
            best[3].1
        );
    }

    #[test]
    fn top_k_breaks_ties_by_row() {
        let bytes = artefact(
            &[&[1.0, 0.0], &[0.0, 1.0], &[2.0, 0.0]],
            Some(r#"["a", "b", "c"]"#),
        );
        let index = Index::from_safetensors(&bytes).unwrap();

        let best = index.top_k(&Tensor::from_slice(&[1.0_f32, 0.0]), 2);

        assert_eq!(best[0].0, "a");
        assert_eq!(best[1].0, "c");
    }

    #[test]
    fn top_k_accepts_f64_query() {
        let index = four_row_index();

        let best = index.top_k(&Tensor::from_slice(&[0.0_f64, 1.0, 0.0]), 1);

        assert_eq!(best[0].0, "north");
    }

    #[test]
    fn top_k_zero_k_is_empty() {
        let index = four_row_index();

        assert!(
            index
                .top_k(&Tensor::from_slice(&[1.0_f32, 0.0, 0.0]), 0)
                .is_empty()
        );
    }

    #[test]
    fn try_top_k_rejects_wrong_dimension() {
        let index = four_row_index();

        let result = index.try_top_k(&Tensor::from_slice(&[1.0_f32, 0.0]), 1);

        assert!(matches!(
            result,
            Err(SearchError::QueryShape { dimension: 3, .. })
        ));
    }

    #[test]
    fn try_top_k_rejects_nan_query() {
        let index = four_row_index();

        let result = index.try_top_k(&Tensor::from_slice(&[f32::NAN, 0.0, 0.0]), 1);

        assert!(matches!(result, Err(SearchError::NonFiniteQuery)));
    }

    #[test]
    fn empty_artefact_returns_no_rows() {
        let view = TensorView::new(Dtype::F32, vec![0, 3], &[]).unwrap();
        let metadata = HashMap::from([(IDS_METADATA_KEY.to_owned(), "[]".to_owned())]);
        let bytes = safetensors::serialize([(EMBEDDINGS_TENSOR, view)], Some(metadata)).unwrap();

        let index = Index::from_safetensors(&bytes).unwrap();

        assert!(index.is_empty());
        assert!(
            index
                .top_k(&Tensor::from_slice(&[1.0_f32, 0.0, 0.0]), 3)
                .is_empty()
        );
    }

    #[test]
    fn from_safetensors_rejects_missing_ids() {
        let bytes = artefact(&[&[1.0, 0.0]], None);

        let result = Index::from_safetensors(&bytes);

        assert!(matches!(result, Err(SearchError::MissingIds)));
    }

    #[test]
    fn from_safetensors_rejects_id_count_mismatch() {
        let bytes = artefact(&[&[1.0, 0.0], &[0.0, 1.0]], Some(r#"["only-one"]"#));

        let result = Index::from_safetensors(&bytes);

        assert!(matches!(
            result,
            Err(SearchError::IdCountMismatch { ids: 1, rows: 2 })
        ));
    }

    #[test]
    fn from_safetensors_rejects_duplicate_ids() {
        let bytes = artefact(&[&[1.0, 0.0], &[0.0, 1.0]], Some(r#"["same", "same"]"#));

        let result = Index::from_safetensors(&bytes);

        assert!(matches!(result, Err(SearchError::DuplicateId { id }) if id == "same"));
    }

    #[test]
    fn from_safetensors_rejects_non_string_ids() {
        let bytes = artefact(&[&[1.0, 0.0]], Some("[7]"));

        let result = Index::from_safetensors(&bytes);

        assert!(matches!(result, Err(SearchError::InvalidIds(_))));
    }

    #[test]
    fn from_safetensors_rejects_nan_rows() {
        let bytes = artefact(&[&[f32::NAN, 0.0]], Some(r#"["x"]"#));

        let result = Index::from_safetensors(&bytes);

        assert!(matches!(result, Err(SearchError::NonFiniteEmbeddings)));
    }

    #[test]
    fn from_safetensors_rejects_wrong_dtype() {
        let bytes: Vec<u8> = [1.0_f64, 0.0]
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::F64, vec![1, 2], &bytes).unwrap();
        let metadata = HashMap::from([(IDS_METADATA_KEY.to_owned(), r#"["x"]"#.to_owned())]);
        let bytes = safetensors::serialize([(EMBEDDINGS_TENSOR, view)], Some(metadata)).unwrap();

        let result = Index::from_safetensors(&bytes);

        assert!(matches!(result, Err(SearchError::EmbeddingsDtype { .. })));
    }

    #[test]
    fn from_safetensors_rejects_missing_tensor() {
        let view = TensorView::new(Dtype::F32, vec![1, 1], &[0, 0, 128, 63]).unwrap();
        let metadata = HashMap::from([(IDS_METADATA_KEY.to_owned(), r#"["x"]"#.to_owned())]);
        let bytes = safetensors::serialize([("vectors", view)], Some(metadata)).unwrap();

        let result = Index::from_safetensors(&bytes);

        assert!(matches!(result, Err(SearchError::MissingEmbeddings)));
    }

    #[test]
    fn from_safetensors_rejects_garbage() {
        let result = Index::from_safetensors(b"not a safetensors file");

        assert!(matches!(result, Err(SearchError::Format(_))));
    }
}
