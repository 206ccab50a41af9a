//! Every metric the daemon exports, in one place. Labels are bounded: queue names,
//! states, kernels and backends, never a job, task or message id.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntakeLabels {
    pub queue: String,
    /// `admitted`, `redelivered`, `dead_lettered` or `error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub kernel: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub kernel: String,
    pub backend: String,
    /// `succeeded`, `duplicate`, `data_error` or `retryable`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub backend: String,
    /// GPU model as workers report it, or `cpu`.
    pub gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeriodLabels {
    /// `hour` or `day`.
    pub period: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    pub backend: String,
    /// The decision's reason, such as `spill_for_deadline` or `pool_full`.
    pub reason: String,
}

/// A counter of fractional amounts, such as seconds or money.
pub type FloatCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// A gauge of fractional amounts.
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub intake_backlog: Family<QueueLabels, Gauge>,
    pub intake_messages: Family<IntakeLabels, Counter>,
    pub admission_seconds: Histogram,
    pub jobs: Family<StateLabels, Gauge>,
    pub jobs_finished: Family<StateLabels, Counter>,
    pub training_rounds: Counter,
    pub round_reduce_seconds: Histogram,
    pub tasks: Family<StateLabels, Gauge>,
    pub workers: Family<BackendLabels, Gauge>,
    pub workers_started: Family<BackendLabels, Counter>,
    pub lease_expiries: Counter,
    pub task_attempts: Family<AttemptLabels, Counter>,
    pub duplicates_suppressed: Counter,
    pub task_runtime_seconds: Family<TaskLabels, Histogram>,
    pub task_wait_seconds: Family<TaskLabels, Histogram>,
    pub worker_seconds: Family<GpuLabels, FloatCounter>,
    pub gpu_seconds: Family<GpuLabels, FloatCounter>,
    pub cost: Family<BackendLabels, FloatCounter>,
    pub cost_budget: Family<PeriodLabels, FloatGauge>,
    pub placement_workers: Family<PlacementLabels, Gauge>,
    pub placement_requests: Family<PlacementLabels, Counter>,
    pub jobs_deadline_at_risk: Gauge,
    pub backend_available: Family<BackendLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 10 ms to about 45 minutes.
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("spillway");
        let metrics = Self {
            registry: Arc::new(Registry::default()),
            intake_backlog: Family::default(),
            intake_messages: Family::default(),
            admission_seconds: latency_histogram(),
            jobs: Family::default(),
            jobs_finished: Family::default(),
            training_rounds: Counter::default(),
            round_reduce_seconds: latency_histogram(),
            tasks: Family::default(),
            workers: Family::default(),
            workers_started: Family::default(),
            lease_expiries: Counter::default(),
            task_attempts: Family::default(),
            duplicates_suppressed: Counter::default(),
            task_runtime_seconds: Family::new_with_constructor(latency_histogram),
            task_wait_seconds: Family::new_with_constructor(latency_histogram),
            worker_seconds: Family::default(),
            gpu_seconds: Family::default(),
            cost: Family::default(),
            cost_budget: Family::default(),
            placement_workers: Family::default(),
            placement_requests: Family::default(),
            jobs_deadline_at_risk: Gauge::default(),
            backend_available: Family::default(),
        };

        registry.register(
            "intake_backlog_messages",
            "Messages waiting in an intake queue or held without acknowledgement",
            metrics.intake_backlog.clone(),
        );
        registry.register(
            "intake_messages",
            "Intake messages handled, by outcome",
            metrics.intake_messages.clone(),
        );
        registry.register(
            "admission_seconds",
            "Time from receiving a message to its job being durable in the ledger",
            metrics.admission_seconds.clone(),
        );
        registry.register(
            "jobs",
            "Jobs in the ledger's active set, by state",
            metrics.jobs.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that reached a final state",
            metrics.jobs_finished.clone(),
        );
        registry.register(
            "training_rounds",
            "Training rounds reduced: partial gradients averaged and one optimizer step taken",
            metrics.training_rounds.clone(),
        );
        registry.register(
            "round_reduce_seconds",
            "Time a training round's reduce step took, from reading the partial gradients \
             to the next round's tasks",
            metrics.round_reduce_seconds.clone(),
        );
        registry.register(
            "tasks",
            "Tasks of active jobs, by state",
            metrics.tasks.clone(),
        );
        registry.register(
            "workers",
            "Workers running, by backend",
            metrics.workers.clone(),
        );
        registry.register(
            "workers_started",
            "Workers started, by backend",
            metrics.workers_started.clone(),
        );
        registry.register(
            "lease_expiries",
            "Leases that expired before their task finished",
            metrics.lease_expiries.clone(),
        );
        registry.register(
            "task_attempts",
            "Finished task attempts, by outcome",
            metrics.task_attempts.clone(),
        );
        registry.register(
            "duplicates_suppressed",
            "Task completions discarded because another attempt completed first",
            metrics.duplicates_suppressed.clone(),
        );
        registry.register(
            "task_runtime_seconds",
            "Time from leasing a task to finishing the attempt",
            metrics.task_runtime_seconds.clone(),
        );
        registry.register(
            "task_wait_seconds",
            "Time a task spent queued before it was leased",
            metrics.task_wait_seconds.clone(),
        );
        registry.register(
            "worker_seconds",
            "Task runtime of workers, every attempt, by backend and GPU model",
            metrics.worker_seconds.clone(),
        );
        registry.register(
            "gpu_seconds",
            "Task runtime times GPUs per worker, every attempt, by backend and GPU model",
            metrics.gpu_seconds.clone(),
        );
        registry.register(
            "cost",
            "Cost of task runtime from the configured price table, in its currency",
            metrics.cost.clone(),
        );
        registry.register(
            "cost_budget",
            "Configured spending budget per period (0: none), in the price table's currency",
            metrics.cost_budget.clone(),
        );
        registry.register(
            "placement_workers",
            "Workers that placement wants per backend, by the reason of each job's decision",
            metrics.placement_workers.clone(),
        );
        registry.register(
            "placement_requests",
            "Workers requested from backends, by backend and placement reason",
            metrics.placement_requests.clone(),
        );
        registry.register(
            "jobs_deadline_at_risk",
            "Running jobs that placement expects to miss their deadline",
            metrics.jobs_deadline_at_risk.clone(),
        );
        registry.register(
            "backend_available",
            "1 when a backend takes requests, 0 while its circuit breaker is open",
            metrics.backend_available.clone(),
        );

        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Creates the series that tools expect to exist before their first event, so that
    /// `increase()` sees the first one and dashboards show 0 instead of no data.
    pub fn preset(&self, queues: &[String], backends: &[&str]) {
        for queue in queues {
            let _ = self.intake_backlog.get_or_create(&QueueLabels {
                queue: queue.clone(),
            });
            for outcome in ["admitted", "redelivered", "dead_lettered", "error"] {
                let labels = IntakeLabels {
                    queue: queue.clone(),
                    outcome: outcome.into(),
                };
                let _ = self.intake_messages.get_or_create(&labels);
            }
        }
        for state in ["succeeded", "failed"] {
            let _ = self.jobs_finished.get_or_create(&StateLabels {
                state: state.into(),
            });
        }
        for state in ["admitting", "preparing", "running", "reducing"] {
            let _ = self.jobs.get_or_create(&StateLabels {
                state: state.into(),
            });
        }
        for state in ["queued", "leased", "succeeded", "failed", "dead"] {
            let _ = self.tasks.get_or_create(&StateLabels {
                state: state.into(),
            });
        }
        for backend in backends {
            let labels = BackendLabels {
                backend: (*backend).into(),
            };
            let _ = self.workers.get_or_create(&labels);
            let _ = self.workers_started.get_or_create(&labels);
            let _ = self.cost.get_or_create(&labels);
        }
    }

    /// Sets the budget gauges from the configuration.
    pub fn set_budgets(&self, per_hour: f64, per_day: f64) {
        for (period, amount) in [("hour", per_hour), ("day", per_day)] {
            self.cost_budget
                .get_or_create(&PeriodLabels {
                    period: period.into(),
                })
                .set(amount);
        }
    }

    /// Encodes every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Content type of the OpenMetrics text format.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of the Prometheus text format 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text into the Prometheus text format 0.0.4, for scrapers that
/// do not ask for OpenMetrics (promtool, older Prometheus, curl). The two differ in
/// counter families: OpenMetrics names `# HELP` and `# TYPE` without the `_total`
/// suffix that the samples carry, and ends with `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();

    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// Serves `/metrics` and `/healthz` until `shutdown` is cancelled.
pub async fn serve(
    listen: &str,
    metrics: Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| {
            anyhow::anyhow!("failed to listen on daemon.metrics_listen {listen}: {error}")
        })?;
    tracing::info!(address = %listener.local_addr()?, "metrics endpoint listening");

    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let metrics = metrics.clone();
                async move {
                    let openmetrics = headers
                        .get(axum::http::header::ACCEPT)
                        .and_then(|accept| accept.to_str().ok())
                        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
                    let text = metrics.encode();
                    if openmetrics {
                        ([("content-type", OPENMETRICS_CONTENT_TYPE)], text)
                    } else {
                        (
                            [("content-type", PROMETHEUS_CONTENT_TYPE)],
                            to_prometheus_text(&text),
                        )
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));

    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let metrics = Metrics::new();
        metrics.lease_expiries.inc();
        let text = to_prometheus_text(&metrics.encode());

        assert!(
            text.contains("# TYPE spillway_lease_expiries_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP spillway_lease_expiries_total "),
            "{text}"
        );
        assert!(text.contains("spillway_lease_expiries_total 1\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn prometheus_text_keeps_gauges_and_histograms() {
        let metrics = Metrics::new();
        metrics.preset(&["q".into()], &["local"]);
        let text = to_prometheus_text(&metrics.encode());

        assert!(text.contains("# TYPE spillway_workers gauge\n"), "{text}");
        assert!(
            text.contains("spillway_workers{backend=\"local\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE spillway_admission_seconds histogram\n"),
            "{text}"
        );
        let expected = "spillway_intake_messages_total{queue=\"q\",outcome=\"dead_lettered\"} 0\n";
        assert!(text.contains(expected), "{text}");
    }
}
