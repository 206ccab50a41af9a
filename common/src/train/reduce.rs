//! Partial gradients and their reduction into one gradient per round.
//!
//! A **partial gradient** is one task's result in a training round: the gradient of
//! the task's mean loss with respect to every trained parameter. It is a safetensors
//! file with F32 tensors named like the parameters and the metadata entries
//! [`SAMPLES_KEY`], [`ROUND_KEY`], [`WEIGHTS_KEY`] and [`LOSS_KEY`].
//!
//! [`GradientReducer`] averages partial gradients weighted by their sample counts, so
//! the result is the gradient of the mean loss over every sample of the round. It
//! reads one partial at a time and keeps only the running sums (f64, one per value),
//! so its memory does not grow with the number of tasks. Float addition is not
//! associative, so the reducer accepts partials only in increasing task index: the
//! same partials then give the same bits whatever order they were fetched in.

use std::collections::BTreeMap;

use safetensors::tensor::{SafeTensors, TensorView};

use super::tensors::{F32Tensor, TensorFile, TensorFileError, add_weighted, read_metadata};
use crate::digest::Sha256Hex;

/// Metadata key of the number of (anchor, positive) pairs behind a partial gradient.
pub const SAMPLES_KEY: &str = "samples";
/// Metadata key of the round that a partial gradient belongs to.
pub const ROUND_KEY: &str = "round";
/// Metadata key of the SHA-256 of the weights file that a partial gradient was computed on.
pub const WEIGHTS_KEY: &str = "weights_sha256";
/// Metadata key of the task's mean loss, written with Rust's shortest round-trip `f64` format.
pub const LOSS_KEY: &str = "loss";

/// Errors from reading or reducing partial gradients.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    /// A partial gradient file could not be read.
    #[error("invalid partial gradient of task index {task_index}")]
    File {
        task_index: u32,
        #[source]
        source: TensorFileError,
    },

    /// Partial gradients were added out of task index order.
    #[error(
        "partial gradient of task index {task_index} added after task index {previous}; \
         sort the partials by task index before adding them"
    )]
    Order { task_index: u32, previous: u32 },

    /// A partial gradient belongs to another round or was computed on other weights.
    #[error(
        "partial gradient of task index {task_index} is for round {round} on weights \
         {weights_sha256}, but the reducer is reducing round {expected_round} on weights \
         {expected_weights}"
    )]
    WrongRound {
        task_index: u32,
        round: u32,
        weights_sha256: String,
        expected_round: u32,
        expected_weights: Sha256Hex,
    },

    /// A partial gradient has a tensor name or shape that the first one did not have.
    #[error(
        "partial gradient of task index {task_index} does not match the first partial: {reason}"
    )]
    Mismatch { task_index: u32, reason: String },

    /// A partial gradient counts zero samples, so it cannot be weighted.
    #[error("partial gradient of task index {task_index} has 0 samples")]
    NoSamples { task_index: u32 },

    /// A partial gradient contains NaN or an infinity.
    #[error("partial gradient of task index {task_index} has a non-finite value in tensor {name}")]
    NonFinite { task_index: u32, name: String },

    /// [`GradientReducer::finish`] was called before any partial gradient was added.
    #[error("no partial gradient was added, so round {round} has no gradient")]
    Empty { round: u32 },
}

/// One task's gradient, as a kernel writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialGradient {
    /// The round the task belongs to.
    pub round: u32,
    /// SHA-256 of the weights file the task ran on.
    pub weights_sha256: Sha256Hex,
    /// Pairs in the task's micro-batch.
    pub samples: u64,
    /// The task's mean loss.
    pub loss: f64,
    /// Gradient of the mean loss by parameter name.
    pub gradients: BTreeMap<String, F32Tensor>,
}

impl PartialGradient {
    /// Serializes the partial gradient with `extra` metadata (such as job and task id).
    pub fn encode(&self, extra: &[(&str, String)]) -> Vec<u8> {
        let mut file = TensorFile {
            tensors: self.gradients.clone(),
            metadata: BTreeMap::new(),
        };
        for (key, value) in extra {
            file.metadata.insert((*key).to_owned(), value.clone());
        }
        file.metadata
            .insert(SAMPLES_KEY.to_owned(), self.samples.to_string());
        file.metadata
            .insert(ROUND_KEY.to_owned(), self.round.to_string());
        file.metadata
            .insert(WEIGHTS_KEY.to_owned(), self.weights_sha256.to_string());
        file.metadata
            .insert(LOSS_KEY.to_owned(), self.loss.to_string());
        file.encode()
    }

    /// Parses a partial gradient written by [`PartialGradient::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, TensorFileError> {
        let file = TensorFile::decode(bytes)?;
        let header = PartialHeader::from_metadata(&file.metadata)?;
        Ok(Self {
            round: header.round,
            weights_sha256: header.weights_sha256,
            samples: header.samples,
            loss: header.loss,
            gradients: file.tensors,
        })
    }
}

/// The metadata entries of a partial gradient.
struct PartialHeader {
    round: u32,
    weights_sha256: Sha256Hex,
    samples: u64,
    loss: f64,
}

impl PartialHeader {
    fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<Self, TensorFileError> {
        let file = TensorFile {
            tensors: BTreeMap::new(),
            metadata: metadata.clone(),
        };
        let weights = file.metadata_value(WEIGHTS_KEY)?;
        let weights_sha256 =
            Sha256Hex::parse(weights).map_err(|_| TensorFileError::InvalidMetadata {
                key: WEIGHTS_KEY.to_owned(),
                value: weights.to_owned(),
                expected: "a SHA-256 of 64 hexadecimal characters",
            })?;
        Ok(Self {
            round: file.parsed_metadata(ROUND_KEY, "a round number")?,
            weights_sha256,
            samples: file.parsed_metadata(SAMPLES_KEY, "a sample count")?,
            loss: file.parsed_metadata(LOSS_KEY, "a number")?,
        })
    }
}

/// The sample-weighted mean of a round's partial gradients.
#[derive(Debug, Clone, PartialEq)]
pub struct ReducedGradient {
    /// The reduced round.
    pub round: u32,
    /// SHA-256 of the weights file the round ran on.
    pub weights_sha256: Sha256Hex,
    /// Pairs over all partials.
    pub samples: u64,
    /// Number of partial gradients reduced.
    pub partials: u32,
    /// Sample-weighted mean of the partials' losses.
    pub loss: f64,
    /// The sample-weighted mean gradient by parameter name.
    pub gradients: BTreeMap<String, F32Tensor>,
}

/// Running sums of one tensor: its shape and `samples × value` summed over partials.
struct Accumulator {
    shape: Vec<usize>,
    sums: Vec<f64>,
}

/// Sums partial gradients in task index order; see the module documentation.
pub struct GradientReducer {
    round: u32,
    weights_sha256: Sha256Hex,
    accumulators: BTreeMap<String, Accumulator>,
    samples: u64,
    weighted_loss: f64,
    partials: u32,
    previous: Option<u32>,
}

impl GradientReducer {
    /// Starts reducing `round`, whose tasks ran on the weights file `weights_sha256`.
    pub fn new(round: u32, weights_sha256: Sha256Hex) -> Self {
        Self {
            round,
            weights_sha256,
            accumulators: BTreeMap::new(),
            samples: 0,
            weighted_loss: 0.0,
            partials: 0,
            previous: None,
        }
    }

    /// Adds the partial gradient of the task with `task_index`. Indices must strictly
    /// increase from call to call.
    pub fn add(&mut self, task_index: u32, bytes: &[u8]) -> Result<(), ReduceError> {
        if let Some(previous) = self.previous
            && task_index <= previous
        {
            return Err(ReduceError::Order {
                task_index,
                previous,
            });
        }
        let file_error = |source| ReduceError::File { task_index, source };

        let metadata = read_metadata(bytes).map_err(file_error)?;
        let header = PartialHeader::from_metadata(&metadata).map_err(file_error)?;
        self.check_header(task_index, &header)?;
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|source| file_error(TensorFileError::Format(source)))?;
        self.check_names(task_index, &tensors)?;

        let mut views = BTreeMap::new();
        for name in tensors.names() {
            let view = tensors
                .tensor(name)
                .map_err(|source| file_error(TensorFileError::Format(source)))?;
            self.check_shape(task_index, name, view.shape())?;
            views.insert(name, view);
        }
        let weight = header.samples as f64;
        self.accumulate(task_index, &views, weight)?;

        self.samples += header.samples;
        self.weighted_loss += weight * header.loss;
        self.partials += 1;
        self.previous = Some(task_index);
        Ok(())
    }

    fn check_header(&self, task_index: u32, header: &PartialHeader) -> Result<(), ReduceError> {
        if header.round != self.round || header.weights_sha256 != self.weights_sha256 {
            return Err(ReduceError::WrongRound {
                task_index,
                round: header.round,
                weights_sha256: header.weights_sha256.to_string(),
                expected_round: self.round,
                expected_weights: self.weights_sha256.clone(),
            });
        }
        if header.samples == 0 {
            return Err(ReduceError::NoSamples { task_index });
        }
        Ok(())
    }

    /// Checks that a later partial has exactly the first partial's tensor names.
    fn check_names(&self, task_index: u32, tensors: &SafeTensors) -> Result<(), ReduceError> {
        if self.partials == 0 {
            return Ok(());
        }
        let mut names = tensors.names();
        names.sort_unstable();
        let expected: Vec<&String> = self.accumulators.keys().collect();
        if names.len() != expected.len() || names.iter().zip(&expected).any(|(a, b)| a != b) {
            let missing: Vec<&String> = expected
                .iter()
                .filter(|name| !names.contains(&name.as_str()))
                .copied()
                .collect();
            let extra: Vec<&&str> = names
                .iter()
                .filter(|name| !self.accumulators.contains_key(**name))
                .collect();
            return Err(ReduceError::Mismatch {
                task_index,
                reason: format!("tensors missing: {missing:?}, tensors not expected: {extra:?}"),
            });
        }
        Ok(())
    }

    /// Checks a tensor's shape against the first partial's, or makes its running sums
    /// when this is the first partial.
    fn check_shape(
        &mut self,
        task_index: u32,
        name: &str,
        shape: &[usize],
    ) -> Result<(), ReduceError> {
        let accumulator = self
            .accumulators
            .entry(name.to_owned())
            .or_insert_with(|| Accumulator {
                shape: shape.to_vec(),
                sums: vec![0.0; shape.iter().product()],
            });
        if accumulator.shape != shape {
            return Err(ReduceError::Mismatch {
                task_index,
                reason: format!(
                    "tensor {name} has shape {shape:?}, the first partial has {:?}",
                    accumulator.shape
                ),
            });
        }
        Ok(())
    }

    /// Adds `weight ×` each tensor of `views` to its running sums. The tensors are
    /// split in two halves of about equal size, one per thread: the reduce step runs
    /// while the workers wait for it, so a second core is free. Every sum still adds
    /// the partials in task order, so the result does not depend on the split.
    fn accumulate(
        &mut self,
        task_index: u32,
        views: &BTreeMap<&str, TensorView<'_>>,
        weight: f64,
    ) -> Result<(), ReduceError> {
        let mut work: Vec<(&str, &TensorView<'_>, &mut [f64])> = self
            .accumulators
            .iter_mut()
            .filter_map(|(name, accumulator)| {
                let (name, view) = views.get_key_value(name.as_str())?;
                Some((*name, view, accumulator.sums.as_mut_slice()))
            })
            .collect();
        let total: usize = work.iter().map(|(_, _, sums)| sums.len()).sum();
        let mut first_half = 0;
        let mut split = 0;
        while split < work.len() && 2 * first_half < total {
            first_half += work[split].2.len();
            split += 1;
        }
        let second = work.split_off(split);

        let add_all = |work: Vec<(&str, &TensorView<'_>, &mut [f64])>| {
            for (name, view, sums) in work {
                let finite = add_weighted(name, view.dtype(), view.data(), weight, sums)
                    .map_err(|source| ReduceError::File { task_index, source })?;
                if !finite {
                    return Err(ReduceError::NonFinite {
                        task_index,
                        name: name.to_owned(),
                    });
                }
            }
            Ok(())
        };
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(|| add_all(second));
            (add_all(work), second.join().expect("adding does not panic"))
        });
        first.and(second)
    }

    /// Divides the sums by the total sample count and returns the f32 mean gradient.
    pub fn finish(self) -> Result<ReducedGradient, ReduceError> {
        if self.partials == 0 {
            return Err(ReduceError::Empty { round: self.round });
        }
        let total = self.samples as f64;
        let gradients = self
            .accumulators
            .into_iter()
            .map(|(name, accumulator)| {
                let values = accumulator
                    .sums
                    .iter()
                    .map(|sum| (sum / total) as f32)
                    .collect();
                let tensor = F32Tensor {
                    shape: accumulator.shape,
                    values,
                };
                (name, tensor)
            })
            .collect();

        Ok(ReducedGradient {
            round: self.round,
            weights_sha256: self.weights_sha256,
            samples: self.samples,
            partials: self.partials,
            loss: self.weighted_loss / total,
            gradients,
        })
    }
}

/// Sorts `partials` (task index and file bytes) by task index and reduces them.
pub fn reduce_partials(
    round: u32,
    weights_sha256: Sha256Hex,
    mut partials: Vec<(u32, Vec<u8>)>,
) -> Result<ReducedGradient, ReduceError> {
    partials.sort_by_key(|(task_index, _)| *task_index);
    let mut reducer = GradientReducer::new(round, weights_sha256);
    for (task_index, bytes) in &partials {
        reducer.add(*task_index, bytes)?;
    }
    reducer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights() -> Sha256Hex {
        Sha256Hex::of(b"round 0 weights")
    }

    fn partial(samples: u64, loss: f64, values: [f32; 4], bias: f32) -> Vec<u8> {
        let mut gradients = BTreeMap::new();
        gradients.insert(
            "layer.weight".to_owned(),
            F32Tensor::new("layer.weight", vec![2, 2], values.to_vec()).unwrap(),
        );
        gradients.insert(
            "layer.bias".to_owned(),
            F32Tensor::new("layer.bias", vec![1], vec![bias]).unwrap(),
        );
        PartialGradient {
            round: 0,
            weights_sha256: weights(),
            samples,
            loss,
            gradients,
        }
        .encode(&[("task_id", "t000000".to_owned())])
    }

    #[test]
    fn partial_gradient_round_trips() {
        let bytes = partial(3, 1.25, [1.0, 2.0, 3.0, 4.0], 0.5);

        let decoded = PartialGradient::decode(&bytes).unwrap();

        assert_eq!(decoded.samples, 3);
        assert_eq!(decoded.loss, 1.25);
        assert_eq!(decoded.round, 0);
        assert_eq!(decoded.weights_sha256, weights());
        assert_eq!(decoded.gradients["layer.bias"].values, vec![0.5]);
    }

    #[test]
    fn reducer_weights_by_samples() {
        let partials = vec![
            (0, partial(1, 3.0, [4.0, 0.0, 0.0, 0.0], 1.0)),
            (1, partial(3, 1.0, [0.0, 4.0, 0.0, 0.0], -1.0)),
        ];

        let reduced = reduce_partials(0, weights(), partials).unwrap();

        assert_eq!(reduced.samples, 4);
        assert_eq!(reduced.partials, 2);
        assert_eq!(reduced.loss, 1.5);
        assert_eq!(
            reduced.gradients["layer.weight"].values,
            vec![1.0, 3.0, 0.0, 0.0]
        );
        assert_eq!(reduced.gradients["layer.bias"].values, vec![-0.5]);
    }

    #[test]
    fn reduce_partials_ignores_fetch_order() {
        let make = |index: u32| {
            let x = index as f32;
            (
                index,
                partial(
                    u64::from(index) + 1,
                    0.1 * f64::from(x),
                    [0.1 * x, 1.0 / (x + 3.0), -x, 1e-7 * x],
                    x / 7.0,
                ),
            )
        };
        let in_order: Vec<(u32, Vec<u8>)> = (0..9).map(make).collect();
        let mut shuffled = in_order.clone();
        shuffled.reverse();
        shuffled.swap(2, 6);

        let first = reduce_partials(0, weights(), in_order).unwrap();
        let second = reduce_partials(0, weights(), shuffled).unwrap();

        assert_eq!(first, second);
    }

    #[test]
    fn reducer_rejects_out_of_order_index() {
        let mut reducer = GradientReducer::new(0, weights());
        reducer.add(4, &partial(1, 0.0, [0.0; 4], 0.0)).unwrap();

        let error = reducer.add(2, &partial(1, 0.0, [0.0; 4], 0.0)).unwrap_err();

        assert!(matches!(
            error,
            ReduceError::Order {
                task_index: 2,
                previous: 4
            }
        ));
    }

    #[test]
    fn reducer_rejects_duplicate_index() {
        let mut reducer = GradientReducer::new(0, weights());
        reducer.add(1, &partial(1, 0.0, [0.0; 4], 0.0)).unwrap();

        let error = reducer.add(1, &partial(1, 0.0, [0.0; 4], 0.0)).unwrap_err();

        assert!(matches!(error, ReduceError::Order { .. }));
    }

    #[test]
    fn reducer_rejects_other_round() {
        let mut reducer = GradientReducer::new(1, weights());

        let error = reducer.add(0, &partial(1, 0.0, [0.0; 4], 0.0)).unwrap_err();

        assert!(matches!(
            error,
            ReduceError::WrongRound {
                round: 0,
                expected_round: 1,
                ..
            }
        ));
    }

    #[test]
    fn reducer_rejects_other_weights() {
        let mut reducer = GradientReducer::new(0, Sha256Hex::of(b"other"));

        let error = reducer.add(0, &partial(1, 0.0, [0.0; 4], 0.0)).unwrap_err();

        assert!(error.to_string().contains("on weights"), "{error}");
    }

    #[test]
    fn reducer_rejects_zero_samples() {
        let mut reducer = GradientReducer::new(0, weights());

        let error = reducer.add(0, &partial(0, 0.0, [0.0; 4], 0.0)).unwrap_err();

        assert!(matches!(error, ReduceError::NoSamples { task_index: 0 }));
    }

    #[test]
    fn reducer_rejects_non_finite_value() {
        let mut reducer = GradientReducer::new(0, weights());

        let error = reducer
            .add(0, &partial(1, 0.0, [f32::NAN, 0.0, 0.0, 0.0], 0.0))
            .unwrap_err();

        assert!(matches!(error, ReduceError::NonFinite { .. }));
    }

    #[test]
    fn reducer_rejects_missing_tensor() {
        let mut reducer = GradientReducer::new(0, weights());
        reducer.add(0, &partial(1, 0.0, [0.0; 4], 0.0)).unwrap();
        let mut only_bias = PartialGradient::decode(&partial(1, 0.0, [0.0; 4], 0.0)).unwrap();
        only_bias.gradients.remove("layer.weight");

        let error = reducer.add(1, &only_bias.encode(&[])).unwrap_err();

        assert!(error.to_string().contains("layer.weight"), "{error}");
    }

    #[test]
    fn reducer_rejects_other_shape() {
        let mut reducer = GradientReducer::new(0, weights());
        reducer.add(0, &partial(1, 0.0, [0.0; 4], 0.0)).unwrap();
        let mut reshaped = PartialGradient::decode(&partial(1, 0.0, [0.0; 4], 0.0)).unwrap();
        reshaped.gradients.get_mut("layer.weight").unwrap().shape = vec![4, 1];

        let error = reducer.add(1, &reshaped.encode(&[])).unwrap_err();

        assert!(error.to_string().contains("shape [4, 1]"), "{error}");
    }

    #[test]
    fn finish_rejects_empty_round() {
        let error = GradientReducer::new(2, weights()).finish().unwrap_err();

        assert!(matches!(error, ReduceError::Empty { round: 2 }));
    }
}
