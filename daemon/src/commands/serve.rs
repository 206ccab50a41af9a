//! `spillway serve`: the daemon. Runs the intake loop, the reconcile loop and the
//! metrics endpoint until SIGTERM or SIGINT; a second signal exits at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use spillway_common::ledger::Ledger;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admission::{Admitter, run_intake};
use crate::backend::Backend;
use crate::backend::local::LocalBackend;
use crate::config::Config;
use crate::intake::redis_stream::RedisStreamSource;
use crate::metrics::{self, Metrics, QueueLabels};
use crate::reconcile::Reconciler;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let url = config.ledger_url()?;
    let ledger = Ledger::connect(&url, &config.ledger.prefix).await?;
    let daemon_id = format!("{}-{}", hostname(), std::process::id());

    let local = LocalBackend::new(
        config.backend.local.clone(),
        url.clone(),
        config.ledger.prefix.clone(),
        config.daemon.lease_secs,
    )?;
    info!(
        backend = "local",
        worker_binary = %config.backend.local.worker_binary.display(),
        worker_sha256 = %local.worker_digest(),
        max_workers = config.backend.local.max_workers,
        "backend ready"
    );
    let backend: Arc<dyn Backend> = Arc::new(local);

    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    if config.intake.redis_stream.enabled {
        let stream_config = config.intake.redis_stream.clone();
        let source = RedisStreamSource::connect(&url, stream_config, daemon_id.clone()).await?;
        let admitter = Arc::new(Admitter {
            ledger: ledger.clone(),
            backends: vec![backend.clone()],
        });
        tasks.spawn(run_intake(
            source,
            admitter,
            metrics.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(watch_backlog(
            config.clone(),
            url.clone(),
            daemon_id.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }

    let reconciler = Reconciler {
        ledger,
        backend,
        metrics: metrics.clone(),
        daemon_id,
    };
    let interval = Duration::from_secs_f64(config.daemon.reconcile_interval_secs);
    tasks.spawn(reconciler.run(interval, shutdown.clone()));

    if !config.daemon.metrics_listen.is_empty() {
        let listen = config.daemon.metrics_listen.clone();
        let metrics = metrics.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(error) = metrics::serve(&listen, metrics, token.clone()).await {
                error!(error = %format!("{error:#}"), "metrics endpoint failed; stopping the daemon");
                token.cancel();
            }
        });
    }

    info!(daemon_id = %format!("{}-{}", hostname(), std::process::id()), "daemon started");
    wait_for_signal().await?;
    info!("stop requested; draining (a second signal exits at once)");
    shutdown.cancel();

    let deadline = Duration::from_secs(config.daemon.shutdown_timeout_secs);
    tokio::select! {
        () = drain(&mut tasks) => info!("daemon stopped"),
        () = tokio::time::sleep(deadline) => warn!(timeout_secs = deadline.as_secs(), "drain timed out; exiting"),
        _ = wait_for_signal() => warn!("second signal; exiting at once"),
    }
    // Workers are separate processes and keep their leases; they finish on their own.
    Ok(())
}

async fn drain(tasks: &mut JoinSet<()>) {
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            error!(error = %error, "daemon task panicked");
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).context("failed to install the SIGTERM handler")?;
    let mut int =
        signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Samples the intake backlog for the metrics endpoint every few seconds.
async fn watch_backlog(
    config: Config,
    url: String,
    daemon_id: String,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    use crate::intake::IntakeSource;

    let stream_config = config.intake.redis_stream.clone();
    let labels = QueueLabels {
        queue: stream_config.stream.clone(),
    };
    let mut source =
        match RedisStreamSource::connect(&url, stream_config, format!("{daemon_id}-metrics")).await
        {
            Ok(source) => source,
            Err(error) => {
                warn!(error = %error, "backlog sampling disabled");
                return;
            }
        };
    while !shutdown.is_cancelled() {
        match source.backlog().await {
            Ok(backlog) => {
                metrics
                    .intake_backlog
                    .get_or_create(&labels)
                    .set(backlog as i64);
            }
            Err(error) => {
                warn!(queue = %labels.queue, error = %error, "failed to read the intake backlog")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}
