//! Task duration estimates, learned from observed runtimes per kernel and model.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Knobs of the task duration estimator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EstimatorSettings {
    /// Estimate in seconds for a kernel never observed with any model.
    pub prior_task_secs: f64,
    /// How many observations the prior counts as when the first ones arrive.
    pub prior_weight: f64,
    /// Share of its weight that the history keeps at each new observation, from 0 to
    /// 1: 0.95 lets about the last 20 observations dominate.
    pub decay: f64,
}

impl Default for EstimatorSettings {
    fn default() -> Self {
        Self {
            prior_task_secs: 60.0,
            prior_weight: 2.0,
            decay: 0.95,
        }
    }
}

impl EstimatorSettings {
    /// Lists every invalid knob with its value and the fix.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.prior_task_secs.is_finite() && self.prior_task_secs > 0.0) {
            problems.push(format!(
                "prior_task_secs = {}: use a positive number of seconds",
                self.prior_task_secs
            ));
        }
        if !(self.prior_weight.is_finite() && self.prior_weight > 0.0) {
            problems.push(format!(
                "prior_weight = {}: use a positive number",
                self.prior_weight
            ));
        }
        if !(self.decay > 0.0 && self.decay <= 1.0) {
            problems.push(format!(
                "decay = {}: use a number above 0 and at most 1",
                self.decay
            ));
        }
        problems
    }
}

/// A decaying mean that starts from the prior as `prior_weight` pseudo-observations,
/// so the prior fades as real observations arrive.
#[derive(Debug, Clone, Copy)]
struct DecayingMean {
    weighted_sum: f64,
    weight: f64,
}

impl DecayingMean {
    fn from_prior(settings: &EstimatorSettings, prior_secs: f64) -> Self {
        Self {
            weighted_sum: prior_secs * settings.prior_weight,
            weight: settings.prior_weight,
        }
    }

    fn add(&mut self, value: f64, decay: f64) {
        self.weighted_sum = self.weighted_sum * decay + value;
        self.weight = self.weight * decay + 1.0;
    }

    fn value(self) -> f64 {
        self.weighted_sum / self.weight
    }
}

/// Estimated seconds per task per worker, per (kernel, model digest).
///
/// A pair never observed falls back to the kernel's mean over all its models, then to
/// the prior. The caller feeds it runtimes of finished attempts; it reads no clock and
/// does no I/O.
#[derive(Debug, Clone, Default)]
pub struct DurationEstimator {
    settings: EstimatorSettings,
    by_kernel: HashMap<String, DecayingMean>,
    by_model: HashMap<String, HashMap<String, DecayingMean>>,
}

impl DurationEstimator {
    pub fn new(settings: EstimatorSettings) -> Self {
        Self {
            settings,
            by_kernel: HashMap::new(),
            by_model: HashMap::new(),
        }
    }

    /// Adds one attempt's runtime. Returns false, and ignores it, when the runtime is
    /// not a positive finite number.
    pub fn observe(&mut self, kernel: &str, model_digest: &str, runtime_secs: f64) -> bool {
        if !(runtime_secs.is_finite() && runtime_secs > 0.0) {
            return false;
        }
        let decay = self.settings.decay;

        // A new model of a known kernel starts from the kernel's mean, not the prior.
        let kernel_prior = self.estimate(kernel, model_digest);
        self.by_model
            .entry(kernel.to_owned())
            .or_default()
            .entry(model_digest.to_owned())
            .or_insert_with(|| DecayingMean::from_prior(&self.settings, kernel_prior))
            .add(runtime_secs, decay);

        let prior = self.settings.prior_task_secs;
        self.by_kernel
            .entry(kernel.to_owned())
            .or_insert_with(|| DecayingMean::from_prior(&self.settings, prior))
            .add(runtime_secs, decay);
        true
    }

    /// Returns the estimated seconds per task for a kernel and model digest.
    pub fn estimate(&self, kernel: &str, model_digest: &str) -> f64 {
        if let Some(mean) = self
            .by_model
            .get(kernel)
            .and_then(|models| models.get(model_digest))
        {
            return mean.value();
        }
        match self.by_kernel.get(kernel) {
            Some(mean) => mean.value(),
            None => self.settings.prior_task_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_key_returns_prior() {
        let estimator = DurationEstimator::new(EstimatorSettings::default());
        assert_eq!(estimator.estimate("embed", "abc"), 60.0);
    }

    #[test]
    fn estimate_converges_to_observations() {
        let mut estimator = DurationEstimator::new(EstimatorSettings::default());
        for _ in 0..200 {
            assert!(estimator.observe("embed", "abc", 30.0));
        }
        let estimate = estimator.estimate("embed", "abc");
        assert!((estimate - 30.0).abs() < 0.01, "estimate {estimate}");
    }

    #[test]
    fn first_observation_moves_estimate_partly() {
        let mut estimator = DurationEstimator::new(EstimatorSettings::default());
        estimator.observe("embed", "abc", 30.0);
        // Prior 60 with weight 2 (decayed to 1.9) and one observation of 30.
        let expected = (60.0 * 2.0 * 0.95 + 30.0) / (2.0 * 0.95 + 1.0);
        assert!((estimator.estimate("embed", "abc") - expected).abs() < 1e-9);
    }

    #[test]
    fn new_model_starts_from_kernel_mean() {
        let mut estimator = DurationEstimator::new(EstimatorSettings::default());
        for _ in 0..200 {
            estimator.observe("embed", "abc", 30.0);
        }
        let other = estimator.estimate("embed", "def");
        assert!((other - 30.0).abs() < 0.01, "estimate {other}");
        assert_eq!(estimator.estimate("train", "abc"), 60.0);
    }

    #[test]
    fn invalid_runtimes_are_ignored() {
        let mut estimator = DurationEstimator::new(EstimatorSettings::default());
        for runtime in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(!estimator.observe("embed", "abc", runtime));
        }
        assert_eq!(estimator.estimate("embed", "abc"), 60.0);
    }

    #[test]
    fn models_are_kept_apart() {
        let mut estimator = DurationEstimator::new(EstimatorSettings::default());
        for _ in 0..200 {
            estimator.observe("embed", "small", 10.0);
            estimator.observe("embed", "large", 100.0);
        }
        assert!((estimator.estimate("embed", "small") - 10.0).abs() < 0.01);
        assert!((estimator.estimate("embed", "large") - 100.0).abs() < 0.01);
    }
}
