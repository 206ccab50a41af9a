//! The optimizers that turn a round's reduced gradient into new weights, and their
//! state as a safetensors file.
//!
//! Both follow the update rules of PyTorch's `torch.optim.SGD` (no dampening, no
//! Nesterov) and `torch.optim.AdamW`, computed in f32 as PyTorch does for f32
//! parameters, with the scalar factors (bias corrections, step size) in f64.
//!
//! An **optimizer state file** contains one F32 tensor per buffer and parameter, named
//! `<buffer>.<parameter>`: `momentum_buffer.` for SGD with momentum, `exp_avg.` and
//! `exp_avg_sq.` for AdamW. Its metadata contains the optimizer's name, the number of
//! steps taken and the optimizer's settings as JSON, so a state is never applied with
//! other settings than those that built it.

use std::collections::BTreeMap;

use super::tensors::{F32Tensor, TensorFile, TensorFileError};
use crate::manifest::Optimizer;

/// Metadata key of the optimizer's name.
pub const OPTIMIZER_KEY: &str = "optimizer";
/// Metadata key of the number of optimizer steps taken.
pub const STEP_KEY: &str = "step";
/// Metadata key of the optimizer's settings as JSON.
pub const SETTINGS_KEY: &str = "settings";

const MOMENTUM_BUFFER: &str = "momentum_buffer";
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";

/// Errors from an optimizer step or from reading optimizer state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// The optimizer state file is not a valid tensor file.
    #[error("invalid optimizer state")]
    State(#[from] TensorFileError),

    /// The state was written by another optimizer or with other settings.
    #[error(
        "optimizer state was written by {found}, but the manifest sets {expected}; \
         resume with the manifest that started the run"
    )]
    Settings { found: String, expected: String },

    /// Parameters, gradients and state do not name the same tensors with the same shapes.
    #[error("optimizer step failed: {0}")]
    Mismatch(String),
}

/// An optimizer's buffers and step count.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OptimizerState {
    /// Steps taken so far; the next step is number `step + 1`.
    pub step: u64,
    /// Buffers named `<buffer>.<parameter>`.
    pub buffers: BTreeMap<String, F32Tensor>,
}

impl OptimizerState {
    /// Serializes the state with the optimizer's name and settings in the metadata.
    pub fn encode(&self, optimizer: &Optimizer) -> Vec<u8> {
        let mut file = TensorFile {
            tensors: self.buffers.clone(),
            metadata: BTreeMap::new(),
        };
        file.metadata
            .insert(OPTIMIZER_KEY.to_owned(), optimizer.name().to_owned());
        file.metadata
            .insert(STEP_KEY.to_owned(), self.step.to_string());
        file.metadata
            .insert(SETTINGS_KEY.to_owned(), settings_json(optimizer));
        file.encode()
    }

    /// Parses a state written by [`OptimizerState::encode`] and checks that
    /// `optimizer` has the same name and settings.
    pub fn decode(bytes: &[u8], optimizer: &Optimizer) -> Result<Self, OptimError> {
        let file = TensorFile::decode(bytes)?;
        let found = file.metadata_value(SETTINGS_KEY)?;
        let expected = settings_json(optimizer);
        if found != expected {
            return Err(OptimError::Settings {
                found: found.to_owned(),
                expected,
            });
        }
        Ok(Self {
            step: file.parsed_metadata(STEP_KEY, "a step count")?,
            buffers: file.tensors,
        })
    }
}

fn settings_json(optimizer: &Optimizer) -> String {
    serde_json::to_string(optimizer).expect("optimizer settings serialize")
}

/// Applies one optimizer step to `parameters` in place, using `gradients` (the same
/// names and shapes) and updating `state`.
pub fn step(
    optimizer: &Optimizer,
    parameters: &mut BTreeMap<String, F32Tensor>,
    gradients: &BTreeMap<String, F32Tensor>,
    state: &mut OptimizerState,
) -> Result<(), OptimError> {
    check_names(parameters, gradients)?;
    let step_number = state.step + 1;

    for (name, parameter) in parameters.iter_mut() {
        let gradient = &gradients[name];
        match *optimizer {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let settings = SgdSettings {
                    lr,
                    momentum,
                    weight_decay,
                };
                sgd_step(&settings, name, parameter, gradient, &mut state.buffers)?;
            }
            Optimizer::AdamW {
                lr,
                betas,
                eps,
                weight_decay,
            } => {
                let settings = AdamWSettings {
                    lr,
                    betas,
                    eps,
                    weight_decay,
                    step: step_number,
                };
                adamw_step(&settings, name, parameter, gradient, &mut state.buffers)?;
            }
        }
    }

    state.step = step_number;
    Ok(())
}

fn check_names(
    parameters: &BTreeMap<String, F32Tensor>,
    gradients: &BTreeMap<String, F32Tensor>,
) -> Result<(), OptimError> {
    if !parameters.keys().eq(gradients.keys()) {
        let missing: Vec<&String> = parameters
            .keys()
            .filter(|name| !gradients.contains_key(*name))
            .collect();
        let extra: Vec<&String> = gradients
            .keys()
            .filter(|name| !parameters.contains_key(*name))
            .collect();
        return Err(OptimError::Mismatch(format!(
            "parameters without a gradient: {missing:?}; gradients without a parameter: {extra:?}"
        )));
    }
    for (name, parameter) in parameters {
        if parameter.shape != gradients[name].shape {
            return Err(OptimError::Mismatch(format!(
                "parameter {name} has shape {:?}, its gradient {:?}",
                parameter.shape, gradients[name].shape
            )));
        }
    }
    Ok(())
}

/// Returns the buffer `<kind>.<name>`, creating it with `initial` on the first step.
/// An existing buffer must have the parameter's shape.
fn buffer<'b>(
    buffers: &'b mut BTreeMap<String, F32Tensor>,
    kind: &str,
    name: &str,
    shape: &[usize],
    initial: impl FnOnce() -> F32Tensor,
) -> Result<(&'b mut F32Tensor, bool), OptimError> {
    let key = format!("{kind}.{name}");
    let created = !buffers.contains_key(&key);
    let tensor = buffers.entry(key).or_insert_with(initial);
    if tensor.shape != shape {
        return Err(OptimError::Mismatch(format!(
            "optimizer buffer {kind}.{name} has shape {:?}, the parameter {shape:?}",
            tensor.shape
        )));
    }
    Ok((tensor, created))
}

struct SgdSettings {
    lr: f64,
    momentum: f64,
    weight_decay: f64,
}

/// `torch.optim.SGD`: d = g + wd·p; with momentum, buf = d on the first step and
/// buf = m·buf + d afterwards, then d = buf; p = p − lr·d.
fn sgd_step(
    settings: &SgdSettings,
    name: &str,
    parameter: &mut F32Tensor,
    gradient: &F32Tensor,
    buffers: &mut BTreeMap<String, F32Tensor>,
) -> Result<(), OptimError> {
    let weight_decay = settings.weight_decay as f32;
    let mut direction: Vec<f32> = gradient
        .values
        .iter()
        .zip(&parameter.values)
        .map(|(g, p)| {
            if weight_decay != 0.0 {
                g + weight_decay * p
            } else {
                *g
            }
        })
        .collect();

    if settings.momentum != 0.0 {
        let momentum = settings.momentum as f32;
        let (momentum_buffer, created) =
            buffer(buffers, MOMENTUM_BUFFER, name, &parameter.shape, || {
                F32Tensor::zeros(&parameter.shape)
            })?;
        if created {
            momentum_buffer.values.copy_from_slice(&direction);
        } else {
            for (buf, d) in momentum_buffer.values.iter_mut().zip(&direction) {
                *buf = *buf * momentum + d;
            }
            direction.copy_from_slice(&momentum_buffer.values);
        }
    }

    let lr = settings.lr as f32;
    for (p, d) in parameter.values.iter_mut().zip(&direction) {
        *p -= lr * d;
    }
    Ok(())
}

struct AdamWSettings {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    /// The number of this step, from 1.
    step: u64,
}

/// `torch.optim.AdamW`: p = p·(1 − lr·wd); m = m + (1 − β1)(g − m);
/// v = β2·v + (1 − β2)·g²; p = p − lr / (1 − β1^t) · m / (√v / √(1 − β2^t) + ε).
fn adamw_step(
    settings: &AdamWSettings,
    name: &str,
    parameter: &mut F32Tensor,
    gradient: &F32Tensor,
    buffers: &mut BTreeMap<String, F32Tensor>,
) -> Result<(), OptimError> {
    let [beta1, beta2] = settings.betas;
    let exponent = i32::try_from(settings.step).unwrap_or(i32::MAX);
    let bias_correction1 = 1.0 - beta1.powi(exponent);
    let bias_correction2_sqrt = (1.0 - beta2.powi(exponent)).sqrt();

    let decay = (1.0 - settings.lr * settings.weight_decay) as f32;
    let step_size = (settings.lr / bias_correction1) as f32;
    let bias_correction2_sqrt = bias_correction2_sqrt as f32;
    let eps = settings.eps as f32;
    let one_minus_beta1 = (1.0 - beta1) as f32;
    let beta2_f32 = beta2 as f32;
    let one_minus_beta2 = (1.0 - beta2) as f32;

    let zeros = || F32Tensor::zeros(&parameter.shape);
    let (exp_avg, _) = buffer(buffers, EXP_AVG, name, &parameter.shape, zeros)?;
    let mut exp_avg = std::mem::take(&mut exp_avg.values);
    let (exp_avg_sq, _) = buffer(buffers, EXP_AVG_SQ, name, &parameter.shape, zeros)?;

    let moments = exp_avg.iter_mut().zip(exp_avg_sq.values.iter_mut());
    for ((p, g), (m, v)) in parameter
        .values
        .iter_mut()
        .zip(&gradient.values)
        .zip(moments)
    {
        *p *= decay;
        *m += one_minus_beta1 * (g - *m);
        *v = *v * beta2_f32 + one_minus_beta2 * g * g;
        let denominator = v.sqrt() / bias_correction2_sqrt + eps;
        *p -= step_size * (*m / denominator);
    }

    buffers
        .get_mut(&format!("{EXP_AVG}.{name}"))
        .expect("exp_avg buffer was created above")
        .values = exp_avg;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors(values: &[f32]) -> BTreeMap<String, F32Tensor> {
        let mut map = BTreeMap::new();
        map.insert(
            "w".to_owned(),
            F32Tensor::new("w", vec![values.len()], values.to_vec()).unwrap(),
        );
        map
    }

    fn sgd(momentum: f64, weight_decay: f64) -> Optimizer {
        Optimizer::Sgd {
            lr: 0.1,
            momentum,
            weight_decay,
        }
    }

    fn adamw() -> Optimizer {
        Optimizer::AdamW {
            lr: 0.01,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }

    #[test]
    fn sgd_without_momentum_steps_against_gradient() {
        let mut parameters = tensors(&[1.0, -1.0]);
        let mut state = OptimizerState::default();

        step(
            &sgd(0.0, 0.0),
            &mut parameters,
            &tensors(&[0.5, -2.0]),
            &mut state,
        )
        .unwrap();

        assert_eq!(parameters["w"].values, vec![0.95, -0.8]);
        assert_eq!(state.step, 1);
        assert!(state.buffers.is_empty());
    }

    #[test]
    fn sgd_momentum_accumulates() {
        // torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.5) with w = 2 and
        // gradient 1 twice: d1 = 2, w = 1.8; d2 = 0.9·2 + (1 + 0.9) = 3.7, w = 1.43.
        let optimizer = sgd(0.9, 0.5);
        let mut parameters = tensors(&[2.0]);
        let mut state = OptimizerState::default();

        step(&optimizer, &mut parameters, &tensors(&[1.0]), &mut state).unwrap();
        assert!((parameters["w"].values[0] - 1.8).abs() < 1e-6);
        step(&optimizer, &mut parameters, &tensors(&[1.0]), &mut state).unwrap();

        assert!(
            (parameters["w"].values[0] - 1.43).abs() < 1e-6,
            "{:?}",
            parameters["w"]
        );
        assert!((state.buffers["momentum_buffer.w"].values[0] - 3.7).abs() < 1e-6);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        // On step 1 the bias-corrected m / sqrt(v) is sign(g), so each weight moves by
        // lr after the decay p·(1 − lr·wd).
        let mut parameters = tensors(&[1.0, -2.0, 0.5]);
        let mut state = OptimizerState::default();

        step(
            &adamw(),
            &mut parameters,
            &tensors(&[3.0, -0.001, 0.0]),
            &mut state,
        )
        .unwrap();

        let decay = 1.0 - 0.01 * 0.1;
        let expected = [1.0 * decay - 0.01, -2.0 * decay + 0.01, 0.5 * decay];
        for (actual, expected) in parameters["w"].values.iter().zip(expected) {
            assert!((actual - expected).abs() < 1e-6, "{actual} vs {expected}");
        }
        assert_eq!(state.buffers.len(), 2);
    }

    #[test]
    fn adamw_matches_hand_computed_second_step() {
        let optimizer = adamw();
        let mut parameters = tensors(&[1.0]);
        let mut state = OptimizerState::default();
        step(&optimizer, &mut parameters, &tensors(&[2.0]), &mut state).unwrap();
        step(&optimizer, &mut parameters, &tensors(&[-1.0]), &mut state).unwrap();

        let (lr, wd, b1, b2, eps) = (0.01_f64, 0.1, 0.9, 0.999, 1e-8);
        let mut p = 1.0_f64;
        let (mut m, mut v) = (0.0_f64, 0.0_f64);
        for (t, g) in [(1, 2.0_f64), (2, -1.0)] {
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let m_hat = m / (1.0 - b1.powi(t));
            let v_hat = v / (1.0 - b2.powi(t));
            p -= lr * m_hat / (v_hat.sqrt() + eps);
        }

        assert!((f64::from(parameters["w"].values[0]) - p).abs() < 1e-6);
        assert_eq!(state.step, 2);
    }

    #[test]
    fn state_round_trips_with_settings() {
        let optimizer = adamw();
        let mut parameters = tensors(&[1.0, 2.0]);
        let mut state = OptimizerState::default();
        step(
            &optimizer,
            &mut parameters,
            &tensors(&[0.1, 0.2]),
            &mut state,
        )
        .unwrap();

        let decoded = OptimizerState::decode(&state.encode(&optimizer), &optimizer).unwrap();

        assert_eq!(decoded, state);
    }

    #[test]
    fn state_rejects_other_settings() {
        let state = OptimizerState::default().encode(&adamw());

        let error = OptimizerState::decode(&state, &sgd(0.9, 0.0)).unwrap_err();

        assert!(matches!(error, OptimError::Settings { .. }), "{error}");
        assert!(error.to_string().contains("\"adamw\""), "{error}");
    }

    #[test]
    fn step_rejects_missing_gradient() {
        let mut parameters = tensors(&[1.0]);
        let mut gradients = tensors(&[1.0]);
        gradients.insert("b".into(), F32Tensor::zeros(&[1]));

        let error = step(
            &adamw(),
            &mut parameters,
            &gradients,
            &mut OptimizerState::default(),
        )
        .unwrap_err();

        assert!(error.to_string().contains("[\"b\"]"), "{error}");
    }

    #[test]
    fn step_rejects_other_shape() {
        let mut parameters = tensors(&[1.0, 2.0]);
        let gradients = tensors(&[1.0]);

        let error = step(
            &adamw(),
            &mut parameters,
            &gradients,
            &mut OptimizerState::default(),
        )
        .unwrap_err();

        assert!(error.to_string().contains("shape [2]"), "{error}");
    }
}
