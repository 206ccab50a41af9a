//! The knobs of the placement engine, with their defaults.

use serde::{Deserialize, Serialize};

/// Knobs of the placement engine. Every duration is in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementSettings {
    /// A job without a deadline spills once its oldest queued task has waited longer
    /// than this.
    pub queue_wait_bound_secs: f64,
    /// A job without a deadline that spills is planned as if its deadline were this
    /// long after now.
    pub no_deadline_drain_secs: f64,
    /// Factor applied to the estimated task duration when sizing workers, to absorb
    /// tasks that run longer than the estimate.
    pub task_secs_safety_factor: f64,
    /// Time kept free before a deadline when sizing workers.
    pub deadline_margin_secs: f64,
    /// An increase of a burst request by fewer workers than this is deferred while
    /// the last increase on the same job and backend is younger than
    /// `burst_hold_secs`, unless the deadline needs it.
    pub burst_min_step_workers: u32,
    /// See `burst_min_step_workers`.
    pub burst_hold_secs: f64,
    /// The daily spend cap admits a new burst worker only if the spend so far today,
    /// plus the burst spend rate with that worker held for this long, fits in it.
    pub spend_lookahead_secs: f64,
}

impl Default for PlacementSettings {
    fn default() -> Self {
        Self {
            queue_wait_bound_secs: 900.0,
            no_deadline_drain_secs: 3600.0,
            task_secs_safety_factor: 1.2,
            deadline_margin_secs: 120.0,
            burst_min_step_workers: 4,
            burst_hold_secs: 300.0,
            spend_lookahead_secs: 3600.0,
        }
    }
}

impl PlacementSettings {
    /// Lists every invalid knob with its value and the fix, or nothing when all are
    /// valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let non_negative = [
            ("queue_wait_bound_secs", self.queue_wait_bound_secs),
            ("deadline_margin_secs", self.deadline_margin_secs),
            ("burst_hold_secs", self.burst_hold_secs),
        ];
        for (key, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                problems.push(format!("{key} = {value}: use 0 or a positive number"));
            }
        }
        let positive = [
            ("no_deadline_drain_secs", self.no_deadline_drain_secs),
            ("spend_lookahead_secs", self.spend_lookahead_secs),
        ];
        for (key, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                problems.push(format!("{key} = {value}: use a positive number"));
            }
        }
        let factor = self.task_secs_safety_factor;
        if !(factor.is_finite() && factor >= 1.0) {
            problems.push(format!(
                "task_secs_safety_factor = {factor}: use 1 or more (1.2 plans with 20% longer tasks)"
            ));
        }
        problems
    }
}
