//! The arrival trace: a JSON Lines file of jobs, with an optional settings line.
//! `docs/placement.md` documents the format.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::placement::{EstimatorSettings, PlacementSettings};

/// A parsed trace: simulation settings and jobs in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub settings: SimSettings,
    pub jobs: Vec<TraceJob>,
}

/// One job of the trace. Times are seconds from the start of the trace, which the
/// simulator takes as 00:00 UTC of day 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceJob {
    /// Job id, unique in the trace.
    pub id: String,
    pub arrival_secs: f64,
    /// Number of tasks.
    pub tasks: u64,
    /// Mean time one worker takes per task. The simulator varies each task by up to
    /// `task_secs_jitter` either way. Placement gets only the estimate learned from
    /// finished tasks.
    pub task_secs: f64,
    /// Deadline as seconds after arrival, if any.
    #[serde(default)]
    pub deadline_secs: Option<f64>,
    #[serde(default)]
    pub priority: i64,
    /// Kernel name, a key of the duration estimator.
    #[serde(default = "default_kernel")]
    pub kernel: String,
    /// Model digest or name, the other key of the duration estimator.
    #[serde(default = "default_model")]
    pub model: String,
    /// Maximum workers for this job over all backends.
    #[serde(default)]
    pub max_workers: Option<u32>,
}

fn default_kernel() -> String {
    "embed".into()
}

fn default_model() -> String {
    "default".into()
}

/// Settings of a simulation run. Every price is per worker-hour, and in the simulator
/// one worker uses one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// The time the trace stands for, which an owned pool is paid for whether busy or
    /// idle. Default: the last arrival or deadline, rounded up to a whole hour.
    pub period_secs: Option<f64>,
    /// Workers (GPUs) of the pool in the burst scenario. Default: the mean-sized
    /// cluster, total work divided by the period, rounded up.
    pub pool_workers: Option<u32>,
    /// Cost of an owned pool GPU for one hour, busy or idle.
    pub pool_price_per_worker_hour: f64,
    /// Time from a Slurm request to a running pool worker.
    pub slurm_queue_wait_secs: f64,
    /// The burst backends of the burst scenario.
    pub burst: Vec<BurstSettings>,
    /// Time between placement passes.
    pub reconcile_interval_secs: f64,
    /// Time after a spot interruption until the lost task is queued again (the lease
    /// expiry).
    pub lease_timeout_secs: f64,
    /// Each task runs `task_secs` times a uniform factor in [1 - jitter, 1 + jitter].
    pub task_secs_jitter: f64,
    /// Seed of the random numbers: task durations and spot interruptions.
    pub seed: u64,
    pub placement: PlacementSettings,
    pub estimator: EstimatorSettings,
    pub caps: SimCaps,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            period_secs: None,
            pool_workers: None,
            pool_price_per_worker_hour: 1.5,
            slurm_queue_wait_secs: 60.0,
            burst: vec![BurstSettings::default()],
            reconcile_interval_secs: 30.0,
            lease_timeout_secs: 300.0,
            task_secs_jitter: 0.1,
            seed: 1,
            placement: PlacementSettings::default(),
            estimator: EstimatorSettings::default(),
            caps: SimCaps::default(),
        }
    }
}

/// One simulated AWS Batch job queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BurstSettings {
    pub id: String,
    pub region: Option<String>,
    /// Paid from the request until the worker exits, start-up included.
    pub price_per_worker_hour: f64,
    /// Time from a request to a running worker.
    pub startup_secs: f64,
    pub capacity_workers: u32,
    /// Spot interruptions per worker-hour; each worker's interruption time is drawn
    /// from an exponential distribution with this rate.
    pub interruptions_per_worker_hour: f64,
}

impl Default for BurstSettings {
    fn default() -> Self {
        Self {
            id: "batch/us-east-1/spot".into(),
            region: Some("us-east-1".into()),
            price_per_worker_hour: 3.0,
            startup_secs: 240.0,
            capacity_workers: 1000,
            interruptions_per_worker_hour: 0.05,
        }
    }
}

/// The caps of the burst scenario; see `placement::Caps`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimCaps {
    pub burst_workers_per_region: BTreeMap<String, u32>,
    pub default_burst_workers_per_region: Option<u32>,
    pub burst_workers: Option<u32>,
    pub spend_per_hour: Option<f64>,
    pub spend_per_day: Option<f64>,
}

/// Every problem found in a trace, one per line, each with its line number.
#[derive(Debug, thiserror::Error)]
#[error("invalid trace:\n{}", problems.join("\n"))]
pub struct TraceError {
    pub problems: Vec<String>,
}

/// Parses a JSON Lines trace. Blank lines are skipped. A line that is an object with
/// a single `settings` key sets the simulation settings, and a second such line is an
/// error. Every other line is a job.
pub fn parse(text: &str) -> Result<Trace, TraceError> {
    let mut trace = Trace::default();
    let mut problems = Vec::new();
    let mut settings_line = None;
    let mut ids = HashSet::new();

    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(error) => {
                problems.push(format!("line {number}: not JSON: {error}"));
                continue;
            }
        };

        if let Some(settings) = settings_value(&value) {
            if let Some(first) = settings_line {
                problems.push(format!(
                    "line {number}: second settings line (the first is line {first}); merge them"
                ));
                continue;
            }
            settings_line = Some(number);
            match SimSettings::deserialize(settings) {
                Ok(settings) => trace.settings = settings,
                Err(error) => problems.push(format!("line {number}: settings: {error}")),
            }
            continue;
        }

        match TraceJob::deserialize(&value) {
            Ok(job) => {
                for problem in job_problems(&job) {
                    problems.push(format!("line {number}: job {}: {problem}", job.id));
                }
                if !ids.insert(job.id.clone()) {
                    problems.push(format!("line {number}: job id {} is used twice", job.id));
                }
                trace.jobs.push(job);
            }
            Err(error) => problems.push(format!("line {number}: job: {error}")),
        }
    }

    for problem in trace.settings.problems() {
        problems.push(format!("settings: {problem}"));
    }
    if trace.jobs.is_empty() && problems.is_empty() {
        problems.push("no job: add one JSON object per line".into());
    }
    if !problems.is_empty() {
        return Err(TraceError { problems });
    }
    trace
        .jobs
        .sort_by(|a, b| a.arrival_secs.total_cmp(&b.arrival_secs));
    Ok(trace)
}

fn settings_value(value: &serde_json::Value) -> Option<&serde_json::Value> {
    let object = value.as_object()?;
    if object.len() == 1 {
        object.get("settings")
    } else {
        None
    }
}

fn job_problems(job: &TraceJob) -> Vec<String> {
    let mut problems = Vec::new();
    if job.id.is_empty() {
        problems.push("id is empty: give every job a unique id".to_string());
    }
    if !(job.arrival_secs.is_finite() && job.arrival_secs >= 0.0) {
        problems.push(format!(
            "arrival_secs = {}: use 0 or more seconds from the start of the trace",
            job.arrival_secs
        ));
    }
    if job.tasks == 0 {
        problems.push("tasks = 0: use 1 or more".to_string());
    }
    if !(job.task_secs.is_finite() && job.task_secs > 0.0) {
        problems.push(format!(
            "task_secs = {}: use a positive number of seconds",
            job.task_secs
        ));
    }
    if let Some(deadline) = job.deadline_secs
        && !(deadline.is_finite() && deadline > 0.0)
    {
        problems.push(format!(
            "deadline_secs = {deadline}: use a positive number of seconds after arrival, or leave it out"
        ));
    }
    if job.max_workers == Some(0) {
        problems.push("max_workers = 0: use 1 or more, or leave it out".to_string());
    }
    problems
}

impl SimSettings {
    /// Lists every invalid setting with its key, value and the fix.
    pub fn problems(&self) -> Vec<String> {
        settings_problems(self)
    }
}

fn settings_problems(settings: &SimSettings) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, key: &str, value: String, fix: &str| {
        if !ok {
            problems.push(format!("{key} = {value}: {fix}"));
        }
    };
    let positive = |value: f64| value.is_finite() && value > 0.0;
    let non_negative = |value: f64| value.is_finite() && value >= 0.0;

    if let Some(period) = settings.period_secs {
        check(
            positive(period),
            "period_secs",
            period.to_string(),
            "use a positive number of seconds",
        );
    }
    check(
        settings.pool_workers != Some(0),
        "pool_workers",
        "0".into(),
        "use 1 or more, or leave it out for the mean-sized pool",
    );
    for (key, value) in [
        (
            "pool_price_per_worker_hour",
            settings.pool_price_per_worker_hour,
        ),
        ("slurm_queue_wait_secs", settings.slurm_queue_wait_secs),
        ("lease_timeout_secs", settings.lease_timeout_secs),
    ] {
        check(
            non_negative(value),
            key,
            value.to_string(),
            "use 0 or a positive number",
        );
    }
    check(
        positive(settings.reconcile_interval_secs),
        "reconcile_interval_secs",
        settings.reconcile_interval_secs.to_string(),
        "use a positive number of seconds",
    );
    check(
        (0.0..1.0).contains(&settings.task_secs_jitter),
        "task_secs_jitter",
        settings.task_secs_jitter.to_string(),
        "use a fraction from 0 up to (not including) 1",
    );

    let mut ids = HashSet::new();
    for (index, burst) in settings.burst.iter().enumerate() {
        let key = |field: &str| format!("burst[{index}].{field}");
        check(
            !burst.id.is_empty(),
            &key("id"),
            "\"\"".into(),
            "name the backend",
        );
        check(
            ids.insert(burst.id.as_str()),
            &key("id"),
            burst.id.clone(),
            "use each id once",
        );
        for (field, value) in [
            ("price_per_worker_hour", burst.price_per_worker_hour),
            ("startup_secs", burst.startup_secs),
            (
                "interruptions_per_worker_hour",
                burst.interruptions_per_worker_hour,
            ),
        ] {
            check(
                non_negative(value),
                &key(field),
                value.to_string(),
                "use 0 or a positive number",
            );
        }
    }

    for problem in settings.placement.problems() {
        problems.push(format!("placement.{problem}"));
    }
    for problem in settings.estimator.problems() {
        problems.push(format!("estimator.{problem}"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_settings_and_jobs() {
        let text = r#"{"settings": {"pool_workers": 4, "seed": 9}}

{"id": "b", "arrival_secs": 60, "tasks": 10, "task_secs": 30, "deadline_secs": 3600}
{"id": "a", "arrival_secs": 0, "tasks": 5, "task_secs": 20, "priority": 2, "model": "m"}
"#;
        let trace = parse(text).unwrap();
        assert_eq!(trace.settings.pool_workers, Some(4));
        assert_eq!(trace.settings.seed, 9);
        assert_eq!(trace.settings.burst.len(), 1);
        let ids: Vec<&str> = trace.jobs.iter().map(|job| job.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(trace.jobs[0].kernel, "embed");
        assert_eq!(trace.jobs[0].model, "m");
        assert_eq!(trace.jobs[1].deadline_secs, Some(3600.0));
    }

    #[test]
    fn parse_lists_every_problem_with_line() {
        let text = r#"{"id": "a", "arrival_secs": -1, "tasks": 0, "task_secs": 30}
{"id": "a", "arrival_secs": 0, "tasks": 1, "task_secs": 30}
not json
{"id": "c", "arrival_secs": 0, "tasks": 1, "task_secs": 30, "colour": "red"}
{"settings": {"task_secs_jitter": 2}}
"#;
        let error = parse(text).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("line 1: job a: arrival_secs = -1"), "{text}");
        assert!(text.contains("line 1: job a: tasks = 0"), "{text}");
        assert!(text.contains("line 2: job id a is used twice"), "{text}");
        assert!(text.contains("line 3: not JSON"), "{text}");
        assert!(
            text.contains("line 4: job: unknown field `colour`"),
            "{text}"
        );
        assert!(text.contains("settings: task_secs_jitter = 2"), "{text}");
    }

    #[test]
    fn parse_rejects_empty_trace() {
        let error = parse("\n\n").unwrap_err();
        assert!(error.to_string().contains("no job"));
    }
}
