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

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub intake_backlog: Family<QueueLabels, Gauge>,
    pub intake_messages: Family<IntakeLabels, Counter>,
    pub admission_seconds: Histogram,
    pub jobs: Family<StateLabels, Gauge>,
    pub jobs_finished: Family<StateLabels, Counter>,
    pub tasks: Family<StateLabels, Gauge>,
    pub workers: Family<BackendLabels, Gauge>,
    pub workers_started: Family<BackendLabels, Counter>,
    pub lease_expiries: Counter,
    pub task_attempts: Family<AttemptLabels, Counter>,
    pub duplicates_suppressed: Counter,
    pub task_runtime_seconds: Family<TaskLabels, Histogram>,
    pub task_wait_seconds: Family<TaskLabels, Histogram>,
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
            tasks: Family::default(),
            workers: Family::default(),
            workers_started: Family::default(),
            lease_expiries: Counter::default(),
            task_attempts: Family::default(),
            duplicates_suppressed: Counter::default(),
            task_runtime_seconds: Family::new_with_constructor(latency_histogram),
            task_wait_seconds: Family::new_with_constructor(latency_histogram),
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

        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Encodes every metric in the Prometheus text format.
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
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));

    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
