//! Configuration of burst placement: the `[placement]` section with the engine's
//! knobs, the task duration estimator and the spend caps.

use serde::Deserialize;

use crate::placement::{EstimatorSettings, PlacementSettings};

/// Knobs of placement. Every key is optional; the defaults are in `docs/placement.md`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    pub queue_wait_bound_secs: Option<f64>,
    pub no_deadline_drain_secs: Option<f64>,
    pub task_secs_safety_factor: Option<f64>,
    pub deadline_margin_secs: Option<f64>,
    pub burst_min_step_workers: Option<u32>,
    pub burst_hold_secs: Option<f64>,
    pub spend_lookahead_secs: Option<f64>,
    pub prior_task_secs: Option<f64>,
    pub prior_weight: Option<f64>,
    pub decay: Option<f64>,
    /// Most burst spend per hour, as the price sum of burst workers running or
    /// requested; unset for no cap.
    pub max_burst_spend_per_hour: Option<f64>,
    /// Most burst spend per UTC day; unset for no cap.
    pub max_burst_spend_per_day: Option<f64>,
    /// Most workers one job may have over every backend; unset for no cap.
    pub max_workers_per_job: Option<u32>,
}

impl PlacementConfig {
    /// Returns the engine's settings: the defaults overridden by the keys that are set.
    pub fn engine(&self) -> PlacementSettings {
        let defaults = PlacementSettings::default();
        PlacementSettings {
            queue_wait_bound_secs: self
                .queue_wait_bound_secs
                .unwrap_or(defaults.queue_wait_bound_secs),
            no_deadline_drain_secs: self
                .no_deadline_drain_secs
                .unwrap_or(defaults.no_deadline_drain_secs),
            task_secs_safety_factor: self
                .task_secs_safety_factor
                .unwrap_or(defaults.task_secs_safety_factor),
            deadline_margin_secs: self
                .deadline_margin_secs
                .unwrap_or(defaults.deadline_margin_secs),
            burst_min_step_workers: self
                .burst_min_step_workers
                .unwrap_or(defaults.burst_min_step_workers),
            burst_hold_secs: self.burst_hold_secs.unwrap_or(defaults.burst_hold_secs),
            spend_lookahead_secs: self
                .spend_lookahead_secs
                .unwrap_or(defaults.spend_lookahead_secs),
        }
    }

    /// Returns the task duration estimator's settings.
    pub fn estimator(&self) -> EstimatorSettings {
        let defaults = EstimatorSettings::default();
        EstimatorSettings {
            prior_task_secs: self.prior_task_secs.unwrap_or(defaults.prior_task_secs),
            prior_weight: self.prior_weight.unwrap_or(defaults.prior_weight),
            decay: self.decay.unwrap_or(defaults.decay),
        }
    }
}

/// Lists every invalid value of the section with its key and the fix.
pub(super) fn problems(placement: &PlacementConfig) -> Vec<String> {
    let mut problems: Vec<String> = placement
        .engine()
        .problems()
        .into_iter()
        .chain(placement.estimator().problems())
        .map(|problem| format!("  placement.{problem}"))
        .collect();
    for (key, value) in [
        (
            "max_burst_spend_per_hour",
            placement.max_burst_spend_per_hour,
        ),
        ("max_burst_spend_per_day", placement.max_burst_spend_per_day),
    ] {
        if let Some(value) = value
            && !(value.is_finite() && value >= 0.0)
        {
            problems.push(format!(
                "  placement.{key} = {value}: use 0 (no burst spend) or a positive amount, or remove the key for no cap"
            ));
        }
    }
    if placement.max_workers_per_job == Some(0) {
        problems.push(
            "  placement.max_workers_per_job = 0: use at least 1, or remove the key for no cap"
                .into(),
        );
    }
    problems
}
