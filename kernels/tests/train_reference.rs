//! Compares the training kernels' loss and gradients with PyTorch autograd.
//!
//! The reference values in `tests/fixtures/reference_train_step.json` come from
//! `scripts/reference_train_step.py`: Hugging Face's BertModel with the same loss,
//! every encoder parameter trained for `contrastive`, and a 4-vector prompt drawn with
//! seed 3 for `prompt_tune`.

mod train_support;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use spillway_common::manifest::Trainable;
use spillway_common::train::F32Tensor;
use spillway_worker::train::{TextPair, TrainKernel};
use train_support::{contrastive, load, prompt_tune};

/// Largest accepted relative difference of the loss and of each gradient's L2 norm.
const NORM_TOLERANCE: f64 = 1e-4;

/// Largest accepted difference of a gradient's first values, relative to its norm.
const VALUE_TOLERANCE: f64 = 1e-4;

/// Gradients whose norm is below this share of the largest gradient norm are
/// compared against that floor instead of their own norm. The key biases' gradients,
/// for example, are zero in exact arithmetic (a bias on every key shifts all of a
/// query's scores equally) and about 1e-9 in f32 on either side.
const NORM_FLOOR: f64 = 1e-3;

#[derive(Deserialize)]
struct Fixture {
    max_seq_len: u32,
    pairs: Vec<Pair>,
    contrastive_all: Reference,
    prompt_tune: PromptReference,
}

#[derive(Deserialize)]
struct Pair {
    anchor: String,
    positive: String,
}

#[derive(Deserialize)]
struct Reference {
    loss: f64,
    gradients: BTreeMap<String, GradientSummary>,
}

#[derive(Deserialize)]
struct PromptReference {
    prompt_length: u32,
    seed: u64,
    loss: f64,
    gradients: BTreeMap<String, GradientSummary>,
}

#[derive(Deserialize)]
struct GradientSummary {
    shape: Vec<usize>,
    norm: f64,
    sum: f64,
    first: Vec<f64>,
}

fn fixture() -> Fixture {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference_train_step.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("invalid fixture {}: {error}", path.display()))
}

fn gradients(kernel: &mut TrainKernel, fixture: &Fixture) -> (f64, BTreeMap<String, F32Tensor>) {
    let pairs: Vec<TextPair> = fixture
        .pairs
        .iter()
        .map(|pair| TextPair {
            anchor: &pair.anchor,
            positive: &pair.positive,
        })
        .collect();
    let partial = kernel.gradients(0, &pairs).unwrap();
    (partial.loss, partial.gradients)
}

fn assert_close(label: &str, actual: f64, expected: f64, tolerance: f64) {
    let difference = (actual - expected).abs() / expected.abs().max(1e-12);
    assert!(
        difference <= tolerance,
        "{label}: {actual} vs PyTorch {expected} (relative difference {difference:.2e})"
    );
}

fn assert_matches_reference(
    label: &str,
    loss: f64,
    gradients: &BTreeMap<String, F32Tensor>,
    expected_loss: f64,
    expected: &BTreeMap<String, GradientSummary>,
) {
    assert_close(
        &format!("{label} loss"),
        loss,
        expected_loss,
        NORM_TOLERANCE,
    );
    assert_eq!(
        gradients.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{label}: trained parameter names"
    );

    let largest_norm = expected
        .values()
        .fold(0.0_f64, |max, summary| max.max(summary.norm));
    let mut worst_norm = 0.0_f64;
    for (name, reference) in expected {
        let tensor = &gradients[name];
        assert_eq!(tensor.shape, reference.shape, "{label}: shape of {name}");
        let norm = tensor
            .values
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        let sum: f64 = tensor.values.iter().map(|&v| f64::from(v)).sum();

        let scale = reference.norm.max(NORM_FLOOR * largest_norm);
        let norm_difference = (norm - reference.norm).abs() / scale;
        assert!(
            norm_difference <= NORM_TOLERANCE,
            "{label}: norm of {name} is {norm}, PyTorch {} (difference {norm_difference:.2e} of {scale:.3e})",
            reference.norm
        );
        worst_norm = worst_norm.max(norm_difference);

        assert!(
            (sum - reference.sum).abs() / scale
                <= VALUE_TOLERANCE * (tensor.values.len() as f64).sqrt(),
            "{label}: sum of {name} is {sum}, PyTorch {}",
            reference.sum
        );
        for (index, (&actual, &expected)) in tensor.values.iter().zip(&reference.first).enumerate()
        {
            assert!(
                (f64::from(actual) - expected).abs() / scale <= VALUE_TOLERANCE,
                "{label}: {name}[{index}] is {actual}, PyTorch {expected}"
            );
        }
    }
    eprintln!(
        "{label}: loss {loss:.8}, worst norm difference {worst_norm:.2e} (relative) over {} tensors",
        expected.len()
    );
}

#[test]
fn contrastive_gradients_match_pytorch() {
    let fixture = fixture();
    let mut kernel = load(&contrastive(Trainable::All, fixture.max_seq_len), 0);

    let (loss, gradients) = gradients(&mut kernel, &fixture);

    let reference = &fixture.contrastive_all;
    assert_matches_reference(
        "contrastive",
        loss,
        &gradients,
        reference.loss,
        &reference.gradients,
    );
}

#[test]
fn prompt_gradient_matches_pytorch() {
    let fixture = fixture();
    let reference = &fixture.prompt_tune;
    let kernel = prompt_tune(reference.prompt_length, fixture.max_seq_len);
    let mut kernel = load(&kernel, reference.seed);

    let (loss, gradients) = gradients(&mut kernel, &fixture);

    assert_matches_reference(
        "prompt_tune",
        loss,
        &gradients,
        reference.loss,
        &reference.gradients,
    );
}
