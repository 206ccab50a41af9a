//! Rounds of the training kernels against single-process training: the reduced
//! gradient of several micro-batches, one and two rounds against libtorch's own
//! optimizers, and the checks that keep a round's weights apart from another's.
//!
//! Negatives stay within each micro-batch (see `spillway_worker::train`), so the
//! reduced gradient of k micro-batches must equal the gradient of one batch of all
//! their pairs whose InfoNCE contrasts each anchor only with its own micro-batch.

mod train_support;

use spillway_common::digest::Sha256Hex;
use spillway_common::manifest::{Optimizer, Trainable, Training};
use spillway_common::train::{PartialGradient, TensorFile, apply_round, reduce_partials};
use spillway_worker::train::{TextPair, TrainError, TrainKernel};
use tch::COptimizer;
use train_support::{
    contrastive, load, max_absolute_difference, max_relative_difference, model_weights, pairs,
    prompt_tune,
};

/// Largest accepted difference between a reduced gradient and the single-pass
/// gradient, relative to the largest gradient value. The two differ only in
/// padding (each micro-batch pads to its own longest text) and summation order.
const GRADIENT_TOLERANCE: f64 = 1e-4;

/// Largest accepted absolute difference between weights after the same optimizer
/// steps computed by `spillway_common::train` and by libtorch.
const WEIGHT_TOLERANCE: f64 = 1e-6;

const MAX_SEQ_LEN: u32 = 32;

/// Computes each micro-batch's partial gradient as a task would and reduces them.
fn reduced_gradient(
    kernel: &mut TrainKernel,
    micro_batches: &[Vec<TextPair>],
) -> spillway_common::train::ReducedGradient {
    let partials: Vec<(u32, Vec<u8>)> = micro_batches
        .iter()
        .enumerate()
        .map(|(index, batch)| {
            let partial = kernel.gradients(0, batch).unwrap();
            (index as u32, partial.encode(&[]))
        })
        .collect();
    let weights = kernel.base_weights_sha256().clone();
    reduce_partials(0, weights, partials).unwrap()
}

/// Checks that reducing `sizes`-sized micro-batches equals one grouped pass.
fn assert_reduction_matches(kernel: &mut TrainKernel, sizes: &[usize], label: &str) {
    let all = pairs(0..sizes.iter().sum());
    let mut micro_batches = Vec::new();
    let mut start = 0;
    for &size in sizes {
        micro_batches.push(all[start..start + size].to_vec());
        start += size;
    }

    let reduced = reduced_gradient(kernel, &micro_batches);
    let loss = kernel.backward(&all, sizes).unwrap();
    let single_pass = kernel.take_gradients().unwrap();

    let (difference, name) = max_relative_difference(&reduced.gradients, &single_pass);
    eprintln!(
        "{label}: loss {loss:.6} vs reduced {:.6}, max relative difference {difference:.2e} in {name}",
        reduced.loss
    );
    assert!(
        difference <= GRADIENT_TOLERANCE,
        "{label}: reduced gradient differs from the single pass by {difference:.2e} (relative) in {name}"
    );
    assert!(
        (reduced.loss - loss).abs() <= 1e-4 * loss.abs().max(1.0),
        "{label}: reduced loss {} vs single-pass loss {loss}",
        reduced.loss
    );
}

#[test]
fn reduced_equal_micro_batches_match_one_pass() {
    let mut kernel = load(&contrastive(Trainable::All, MAX_SEQ_LEN), 0);

    assert_reduction_matches(&mut kernel, &[4, 4, 4], "contrastive all, 3 × 4 pairs");
}

#[test]
fn reduced_unequal_micro_batches_match_one_pass() {
    let mut kernel = load(&contrastive(Trainable::TopLayers(2), MAX_SEQ_LEN), 0);

    assert_reduction_matches(
        &mut kernel,
        &[5, 3, 4],
        "contrastive top 2, 5 + 3 + 4 pairs",
    );
}

#[test]
fn reduced_prompt_micro_batches_match_one_pass() {
    let mut kernel = load(&prompt_tune(8, MAX_SEQ_LEN), 3);

    assert_reduction_matches(&mut kernel, &[4, 4, 4], "prompt_tune, 3 × 4 pairs");
}

#[test]
fn negatives_across_micro_batches_change_gradient() {
    // The property that does not hold: one batch whose anchors see every positive
    // as a negative has another loss, so another gradient.
    let mut kernel = load(&contrastive(Trainable::TopLayers(2), MAX_SEQ_LEN), 0);
    let all = pairs(0..12);
    let micro_batches = vec![all[0..6].to_vec(), all[6..12].to_vec()];

    let reduced = reduced_gradient(&mut kernel, &micro_batches);
    kernel.backward(&all, &[12]).unwrap();
    let whole_batch = kernel.take_gradients().unwrap();

    let (difference, _) = max_relative_difference(&reduced.gradients, &whole_batch);
    eprintln!("whole-batch negatives: max relative difference {difference:.2e}");
    assert!(
        difference > 100.0 * GRADIENT_TOLERANCE,
        "gradients with and without cross-micro-batch negatives agree to {difference:.2e}"
    );
}

#[test]
fn retried_task_writes_same_gradient() {
    let mut kernel = load(&contrastive(Trainable::TopLayers(2), MAX_SEQ_LEN), 0);
    let batch = pairs(0..6);

    let first = kernel
        .gradients(0, &batch)
        .unwrap()
        .encode(&[("task_id", "t000001".into())]);
    let second = kernel
        .gradients(0, &batch)
        .unwrap()
        .encode(&[("task_id", "t000001".into())]);

    assert!(first == second, "two computations of the same task differ");
}

fn adamw() -> Optimizer {
    Optimizer::AdamW {
        lr: 1e-3,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
    }
}

fn sgd_momentum() -> Optimizer {
    Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.01,
    }
}

fn training(optimizer: Optimizer) -> Training {
    Training {
        rounds: Some(2),
        epochs: None,
        tasks_per_round: 1,
        optimizer,
        seed: 3,
    }
}

/// libtorch's own optimizer (the C++ frontend's `torch::optim`) over the kernel's
/// trained tensors.
fn libtorch_optimizer(kernel: &TrainKernel, optimizer: &Optimizer) -> COptimizer {
    let mut built = match *optimizer {
        Optimizer::AdamW {
            lr,
            betas,
            eps,
            weight_decay,
        } => COptimizer::adamw(lr, betas[0], betas[1], weight_decay, eps, false).unwrap(),
        Optimizer::Sgd {
            lr,
            momentum,
            weight_decay,
        } => COptimizer::sgd(lr, momentum, 0.0, weight_decay, false).unwrap(),
    };
    for leaf in kernel.trained_leaves() {
        built.add_parameters(&leaf, 0).unwrap();
    }
    built
}

/// Runs `rounds` rounds of one task each through kernel, reducer and optimizer
/// update, and the same steps in one process with libtorch's optimizer, and
/// compares the weights after every round.
fn assert_rounds_match_plain_steps(
    kernel: &spillway_common::manifest::Kernel,
    optimizer: Optimizer,
    rounds: u32,
) {
    let training = training(optimizer.clone());
    let batch = pairs(0..8);
    let mut distributed = load(kernel, training.seed);
    let mut plain = load(kernel, training.seed);
    let plain_optimizer = libtorch_optimizer(&plain, &optimizer);

    let mut weights = model_weights();
    let mut state: Option<Vec<u8>> = None;
    for round in 0..rounds {
        let partial = distributed.gradients(round, &batch).unwrap();
        let weights_sha256 = Sha256Hex::of(&weights);
        let reduced =
            reduce_partials(round, weights_sha256, vec![(0, partial.encode(&[]))]).unwrap();
        let update = apply_round(kernel, &training, &weights, state.as_deref(), &reduced).unwrap();
        distributed
            .load_weights(round + 1, &update.weights)
            .unwrap();

        plain.backward(&batch, &[batch.len()]).unwrap();
        plain_optimizer.step().unwrap();
        plain_optimizer.zero_grad().unwrap();

        let stored = TensorFile::decode(&update.weights).unwrap().tensors;
        let (difference, name) = max_absolute_difference(&stored, &plain.trained_values().unwrap());
        eprintln!(
            "{} {}: round {round} weights differ by at most {difference:.2e} ({name})",
            kernel.name(),
            optimizer.name()
        );
        assert!(
            difference <= WEIGHT_TOLERANCE,
            "round {round}: weights differ from libtorch's {} step by {difference:.2e} in {name}",
            optimizer.name()
        );
        assert_eq!(
            distributed.trained_values().unwrap(),
            stored,
            "round {round}: the kernel did not load the weights file exactly"
        );

        weights = update.weights;
        state = Some(update.state);
    }
}

#[test]
fn adamw_rounds_match_libtorch_steps() {
    let kernel = contrastive(Trainable::TopLayers(2), MAX_SEQ_LEN);

    assert_rounds_match_plain_steps(&kernel, adamw(), 2);
}

#[test]
fn sgd_momentum_rounds_match_libtorch_steps() {
    let kernel = contrastive(Trainable::TopLayers(1), MAX_SEQ_LEN);

    assert_rounds_match_plain_steps(&kernel, sgd_momentum(), 2);
}

#[test]
fn prompt_round_matches_libtorch_step() {
    let kernel = prompt_tune(4, MAX_SEQ_LEN);

    assert_rounds_match_plain_steps(&kernel, adamw(), 1);
}

/// Round 1's weights file of a `contrastive` top-1 job, computed from a real round.
fn round_one_weights(kernel: &mut TrainKernel) -> Vec<u8> {
    let manifest_kernel = contrastive(Trainable::TopLayers(1), MAX_SEQ_LEN);
    let weights = model_weights();
    let partial: PartialGradient = kernel.gradients(0, &pairs(0..4)).unwrap();
    let reduced =
        reduce_partials(0, Sha256Hex::of(&weights), vec![(0, partial.encode(&[]))]).unwrap();
    apply_round(
        &manifest_kernel,
        &training(adamw()),
        &weights,
        None,
        &reduced,
    )
    .unwrap()
    .weights
}

#[test]
fn gradients_refuse_other_round() {
    let mut kernel = load(&contrastive(Trainable::TopLayers(1), MAX_SEQ_LEN), 0);
    let round_one = round_one_weights(&mut kernel);
    kernel.load_weights(1, &round_one).unwrap();

    let error = kernel.gradients(0, &pairs(0..4)).unwrap_err();

    assert!(
        matches!(
            error,
            TrainError::RoundMismatch {
                loaded: 1,
                requested: 0
            }
        ),
        "{error}"
    );
    kernel.load_base_weights().unwrap();
    kernel.gradients(0, &pairs(0..4)).unwrap();
}

#[test]
fn weights_of_other_round_are_rejected() {
    let mut kernel = load(&contrastive(Trainable::TopLayers(1), MAX_SEQ_LEN), 0);
    let round_one = round_one_weights(&mut kernel);
    let before = kernel.trained_values().unwrap();

    let error = kernel.load_weights(2, &round_one).unwrap_err();

    assert!(
        matches!(error, TrainError::WeightsRound { round: 2, .. }),
        "{error}"
    );
    assert!(error.is_data_error());
    assert_eq!(
        kernel.trained_values().unwrap(),
        before,
        "a rejected file changed the weights"
    );
    assert_eq!(kernel.loaded_weights().0, 0);
}

#[test]
fn weights_of_other_job_are_rejected() {
    // A top-2 job's kernel must not accept a top-1 job's weights: the layer below
    // would keep round 0's values while the top layer moves on.
    let mut top_one = load(&contrastive(Trainable::TopLayers(1), MAX_SEQ_LEN), 0);
    let round_one = round_one_weights(&mut top_one);
    let mut top_two = load(&contrastive(Trainable::TopLayers(2), MAX_SEQ_LEN), 0);

    let error = top_two.load_weights(1, &round_one).unwrap_err();

    assert!(
        matches!(error, TrainError::WeightsContent { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("encoder.layer.4"), "{error}");
}

#[test]
fn round_zero_needs_model_weights() {
    let mut kernel = load(&contrastive(Trainable::TopLayers(1), MAX_SEQ_LEN), 0);
    let round_one = round_one_weights(&mut kernel);

    let error = kernel.load_weights(0, &round_one).unwrap_err();

    assert!(
        matches!(error, TrainError::NotBaseWeights { .. }),
        "{error}"
    );
}

#[test]
fn top_layers_beyond_model_are_rejected() {
    let error = TrainKernel::load(
        &train_support::model_dir(),
        tch::Device::Cpu,
        &contrastive(Trainable::TopLayers(7), MAX_SEQ_LEN),
        0,
    )
    .err()
    .expect("all-MiniLM-L6-v2 has 6 layers");

    assert!(error.to_string().contains("at most 6"), "{error}");
}
