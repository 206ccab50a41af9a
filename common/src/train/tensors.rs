//! Named f32 tensors and their safetensors encoding, shared by partial gradients,
//! weights files and optimizer state.
//!
//! [`TensorFile::encode`] writes the same bytes for the same tensors and metadata on
//! every run. The header lists `__metadata__` first and then the tensors sorted by
//! name, and it is padded with spaces to a multiple of 8 bytes. The data follows in
//! the same order. The `safetensors` crate's own writer orders the metadata by
//! a `HashMap`, so its bytes (and therefore a file's SHA-256) change from process to
//! process. Any safetensors reader reads these files.

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors};
use serde_json::{Map, Value};

/// Errors from reading or writing a tensor file.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    /// The bytes are not a valid safetensors file.
    #[error("invalid safetensors data")]
    Format(#[from] safetensors::SafeTensorError),

    /// A tensor is stored in a type that cannot be read as f32.
    #[error("tensor {name} has dtype {dtype}, expected F32, F16 or BF16")]
    Dtype { name: String, dtype: String },

    /// A tensor's value count does not match its shape.
    #[error("tensor {name} has {values} values, but its shape {shape:?} needs {expected}")]
    Shape {
        name: String,
        shape: Vec<usize>,
        values: usize,
        expected: usize,
    },

    /// A tensor that the reader needs is not in the file.
    #[error("tensor {name} not found")]
    MissingTensor { name: String },

    /// A metadata entry that the reader needs is not in the header.
    #[error("metadata entry `{key}` not found")]
    MissingMetadata { key: String },

    /// A metadata entry does not parse as the reader expects.
    #[error("invalid metadata entry `{key}` = {value:?}: expected {expected}")]
    InvalidMetadata {
        key: String,
        value: String,
        expected: &'static str,
    },
}

/// One f32 tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    /// Size of each dimension.
    pub shape: Vec<usize>,
    /// The values in row-major order, as many as the shape's product.
    pub values: Vec<f32>,
}

impl F32Tensor {
    /// Builds a tensor, checking that `values` fills `shape`.
    pub fn new(name: &str, shape: Vec<usize>, values: Vec<f32>) -> Result<Self, TensorFileError> {
        let expected = shape.iter().product::<usize>();
        if values.len() != expected {
            return Err(TensorFileError::Shape {
                name: name.to_owned(),
                shape,
                values: values.len(),
                expected,
            });
        }
        Ok(Self { shape, values })
    }

    /// Returns a tensor of zeros with `shape`.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            values: vec![0.0; shape.iter().product()],
        }
    }
}

/// Tensors by name plus string metadata: the content of one safetensors file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: BTreeMap<String, F32Tensor>,
    /// The header's `__metadata__` entries.
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// Reads every tensor of `bytes` whose name `select` accepts, converting F16 and
    /// BF16 to f32, and the whole metadata.
    pub fn decode_selected(
        bytes: &[u8],
        select: impl Fn(&str) -> bool,
    ) -> Result<Self, TensorFileError> {
        let file = SafeTensors::deserialize(bytes)?;
        let mut tensors = BTreeMap::new();
        for name in file.names() {
            if !select(name) {
                continue;
            }
            let view = file.tensor(name)?;
            let values = decode_values(name, view.dtype(), view.data())?;
            let tensor = F32Tensor::new(name, view.shape().to_vec(), values)?;
            tensors.insert(name.to_owned(), tensor);
        }
        Ok(Self {
            tensors,
            metadata: read_metadata(bytes)?,
        })
    }

    /// Reads every tensor and the metadata of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, TensorFileError> {
        Self::decode_selected(bytes, |_| true)
    }

    /// Serializes the file deterministically, as described in the module documentation.
    pub fn encode(&self) -> Vec<u8> {
        let mut header = Map::new();
        if !self.metadata.is_empty() {
            let metadata: Map<String, Value> = self
                .metadata
                .iter()
                .map(|(key, value)| (key.clone(), Value::from(value.as_str())))
                .collect();
            header.insert("__metadata__".to_owned(), Value::Object(metadata));
        }

        let mut offset = 0_usize;
        for (name, tensor) in &self.tensors {
            let end = offset + tensor.values.len() * 4;
            let entry = serde_json::json!({
                "dtype": "F32",
                "shape": tensor.shape,
                "data_offsets": [offset, end],
            });
            header.insert(name.clone(), entry);
            offset = end;
        }

        let mut header_bytes = serde_json::to_vec(&Value::Object(header)).expect("header is JSON");
        let padded_len = header_bytes.len().div_ceil(8) * 8;
        header_bytes.resize(padded_len, b' ');

        let mut bytes = Vec::with_capacity(8 + padded_len + offset);
        bytes.extend_from_slice(&(padded_len as u64).to_le_bytes());
        bytes.extend_from_slice(&header_bytes);
        for tensor in self.tensors.values() {
            append_le_bytes(&mut bytes, &tensor.values);
        }
        bytes
    }

    /// Returns metadata entry `key`.
    pub fn metadata_value(&self, key: &str) -> Result<&str, TensorFileError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| TensorFileError::MissingMetadata {
                key: key.to_owned(),
            })
    }

    /// Returns metadata entry `key` parsed as `T`; `expected` describes `T` in errors.
    pub fn parsed_metadata<T: std::str::FromStr>(
        &self,
        key: &str,
        expected: &'static str,
    ) -> Result<T, TensorFileError> {
        let value = self.metadata_value(key)?;
        value.parse().map_err(|_| TensorFileError::InvalidMetadata {
            key: key.to_owned(),
            value: value.to_owned(),
            expected,
        })
    }
}

/// Reads the header's metadata map, empty when the file has none.
pub fn read_metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>, TensorFileError> {
    let (_, header) = SafeTensors::read_metadata(bytes)?;
    Ok(header
        .metadata()
        .as_ref()
        .map(|metadata| metadata.clone().into_iter().collect())
        .unwrap_or_default())
}

/// Appends `values` as little-endian bytes.
fn append_le_bytes(bytes: &mut Vec<u8>, values: &[f32]) {
    if cfg!(target_endian = "little") {
        // One copy of the whole slice: the in-memory layout is the file's layout.
        bytes.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        for value in values {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
    }
}

/// Converts the little-endian data of tensor `name` to f32 values.
pub fn decode_values(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, TensorFileError> {
    let values = match dtype {
        // The copy works at any alignment of `data`; the file's layout is the
        // in-memory layout on little-endian targets.
        Dtype::F32 if cfg!(target_endian = "little") && data.len().is_multiple_of(4) => {
            bytemuck::pod_collect_to_vec(data)
        }
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|chunk| f32::from_bits(u32::from(u16::from_le_bytes([chunk[0], chunk[1]])) << 16))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|chunk| f16_to_f32(u16::from_le_bytes([chunk[0], chunk[1]])))
            .collect(),
        other => {
            return Err(TensorFileError::Dtype {
                name: name.to_owned(),
                dtype: format!("{other:?}"),
            });
        }
    };
    Ok(values)
}

/// Adds `weight × value` for each value of a tensor's raw `data` to the matching
/// element of `sums`, without first decoding the values into a vector. Returns whether
/// every value was finite. `sums` has one element per value.
pub fn add_weighted(
    name: &str,
    dtype: Dtype,
    data: &[u8],
    weight: f64,
    sums: &mut [f64],
) -> Result<bool, TensorFileError> {
    fn add<const N: usize>(
        data: &[u8],
        weight: f64,
        sums: &mut [f64],
        decode: impl Fn([u8; N]) -> f32,
    ) -> bool {
        debug_assert_eq!(data.len(), sums.len() * N, "one value per sum");
        let mut finite = true;
        for (sum, chunk) in sums.iter_mut().zip(data.chunks_exact(N)) {
            let value = decode(chunk.try_into().expect("chunks_exact gives N bytes"));
            finite &= value.is_finite();
            *sum += weight * f64::from(value);
        }
        finite
    }
    match dtype {
        Dtype::F32 => Ok(add(data, weight, sums, f32::from_le_bytes)),
        Dtype::BF16 => Ok(add(data, weight, sums, |bytes| {
            f32::from_bits(u32::from(u16::from_le_bytes(bytes)) << 16)
        })),
        Dtype::F16 => Ok(add(data, weight, sums, |bytes| {
            f16_to_f32(u16::from_le_bytes(bytes))
        })),
        other => Err(TensorFileError::Dtype {
            name: name.to_owned(),
            dtype: format!("{other:?}"),
        }),
    }
}

/// Converts an IEEE 754 binary16 value to f32, subnormals, infinities and NaN included.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);

    let magnitude = match (exponent, mantissa) {
        (0, 0) => 0,
        // Subnormal: mantissa × 2^-24, exact in f32.
        (0, _) => (mantissa as f32 * 2f32.powi(-24)).to_bits(),
        (0x1f, 0) => 0x7f80_0000,
        (0x1f, _) => 0x7fc0_0000 | (mantissa << 13),
        _ => ((exponent + 127 - 15) << 23) | (mantissa << 13),
    };
    f32::from_bits(sign | magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TensorFile {
        let mut file = TensorFile::default();
        file.tensors.insert(
            "b.weight".into(),
            F32Tensor::new("b.weight", vec![2, 2], vec![1.0, -2.0, 3.5, 0.25]).unwrap(),
        );
        file.tensors.insert(
            "a.bias".into(),
            F32Tensor::new("a.bias", vec![3], vec![0.5, 0.0, -1.0]).unwrap(),
        );
        file.metadata.insert("round".into(), "3".into());
        file.metadata.insert("kernel".into(), "contrastive".into());
        file
    }

    #[test]
    fn tensor_file_round_trips() {
        let file = sample();

        let decoded = TensorFile::decode(&file.encode()).unwrap();

        assert_eq!(decoded, file);
    }

    #[test]
    fn encode_is_byte_stable() {
        let first = sample().encode();

        let mut reordered = TensorFile::default();
        for (name, tensor) in sample().tensors.into_iter().rev() {
            reordered.tensors.insert(name, tensor);
        }
        for (key, value) in sample().metadata.into_iter().rev() {
            reordered.metadata.insert(key, value);
        }

        assert_eq!(reordered.encode(), first);
        assert_eq!(first.len() % 4, 0);
    }

    #[test]
    fn safetensors_crate_reads_encoded_file() {
        let bytes = sample().encode();

        let parsed = SafeTensors::deserialize(&bytes).unwrap();

        let view = parsed.tensor("b.weight").unwrap();
        assert_eq!(view.shape(), &[2, 2]);
        assert_eq!(view.dtype(), Dtype::F32);
        assert_eq!(read_metadata(&bytes).unwrap()["round"], "3");
    }

    #[test]
    fn decode_selected_skips_other_tensors() {
        let bytes = sample().encode();

        let only_bias = TensorFile::decode_selected(&bytes, |name| name == "a.bias").unwrap();

        assert_eq!(only_bias.tensors.len(), 1);
        assert!(only_bias.tensors.contains_key("a.bias"));
    }

    #[test]
    fn new_rejects_wrong_value_count() {
        let error = F32Tensor::new("w", vec![2, 3], vec![0.0; 5]).unwrap_err();

        assert!(error.to_string().contains("needs 6"), "{error}");
    }

    #[test]
    fn half_precision_converts_exactly() {
        // 1.0, -2.0, 65504 (largest f16), 2^-24 (smallest subnormal), +inf.
        let cases = [
            (0x3c00_u16, 1.0_f32),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 2f32.powi(-24)),
            (0x7c00, f32::INFINITY),
        ];
        for (bits, expected) in cases {
            assert_eq!(f16_to_f32(bits), expected, "f16 bits {bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());

        let bf16 = decode_values("x", Dtype::BF16, &0x3f80_u16.to_le_bytes()).unwrap();
        assert_eq!(bf16, vec![1.0]);
    }

    #[test]
    fn metadata_errors_name_the_key() {
        let file = sample();

        let missing = file.metadata_value("samples").unwrap_err();
        assert!(missing.to_string().contains("`samples`"), "{missing}");

        let invalid = file
            .parsed_metadata::<u64>("kernel", "an integer")
            .unwrap_err();
        assert!(invalid.to_string().contains("an integer"), "{invalid}");
    }
}
