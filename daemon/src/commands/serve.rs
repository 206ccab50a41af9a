//! `spillway serve`: the daemon. Runs one intake loop per source (the Redis stream,
//! each SQS queue and each Pub/Sub subscription), the reconcile loop, the notification
//! outbox and the metrics endpoint. SIGHUP reloads the configuration; SIGTERM or SIGINT stops intake
//! and drains within `daemon.shutdown_timeout_secs`, and a second signal exits at
//! once. Workers are separate processes: they keep their leases and finish on their
//! own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use spillway_common::ledger::Ledger;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admission::{Admitter, run_intake};
use crate::backend::Backend;
use crate::backend::local::{LocalBackend, Settings};
use crate::config::Config;
use crate::intake::IntakeSource;
use crate::intake::pubsub::PubsubSource;
use crate::intake::redis_stream::RedisStreamSource;
use crate::intake::sqs::{SqsQueue, SqsSource};
use crate::metrics::{self, Metrics, QueueLabels};
use crate::reconcile::{Reconciler, Tunables};
use crate::service;
use spillway_common::process::error_chain;

pub async fn run(config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let url = config.ledger_url()?;
    let ledger = Ledger::connect(&url, &config.ledger.prefix).await?;
    let daemon_id = format!(
        "{}-{}",
        spillway_common::process::hostname(),
        std::process::id()
    );

    // Workers get the password file's path, never the password itself.
    let worker_ledger = crate::backend::local::WorkerLedger {
        url: config.ledger.url.clone(),
        password_file: config.ledger.password_file.clone(),
        prefix: config.ledger.prefix.clone(),
    };
    let local = match config.backend.local.enabled {
        true => Some(Arc::new(LocalBackend::new(
            config.backend.local.clone(),
            worker_ledger.clone(),
            config.daemon.lease_secs,
        )?)),
        false => None,
    };
    // The pool is Slurm when it is enabled, else the local backend. AWS Batch, when
    // enabled, takes the overflow, and placement decides what goes where.
    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
    if config.backend.slurm.enabled {
        let slurm = slurm_backend(&config, ledger.clone(), worker_ledger.clone()).await?;
        info!(
            backend = "slurm",
            max_array_size = slurm.max_array_size(),
            max_workers = config.backend.slurm.max_workers,
            "backend ready"
        );
        backends.push(Arc::new(slurm));
    } else if let Some(local) = &local {
        info!(
            backend = "local",
            worker_binary = %config.backend.local.worker_binary.display(),
            worker_sha256 = %local.worker_digest(),
            max_workers = config.backend.local.max_workers,
            "backend ready"
        );
        backends.push(local.clone());
    }
    if config.backend.batch.enabled {
        let batch = crate::backend::batch::BatchBackend::new(
            config.backend.batch.clone(),
            ledger.clone(),
            worker_ledger,
            config.daemon.lease_secs,
        )
        .await?;
        info!(
            backend = "batch",
            queues = config.backend.batch.queues.len(),
            max_workers = config.backend.batch.max_workers,
            "backend ready"
        );
        backends.push(Arc::new(batch));
    }
    if backends.is_empty() {
        anyhow::bail!(
            "no backend is enabled; set backend.local.enabled, backend.slurm.enabled or backend.batch.enabled to true"
        );
    }

    let metrics = Metrics::new();
    let mut queues = Vec::new();
    if config.intake.redis_stream.enabled {
        queues.push(config.intake.redis_stream.stream.clone());
    }
    queues.extend(
        config
            .intake
            .sqs
            .iter()
            .map(|queue| queue.queue_url.clone()),
    );
    queues.extend(
        config
            .intake
            .pubsub
            .iter()
            .map(|subscription| subscription.subscription_name()),
    );
    let names: Vec<&str> = backends.iter().map(|backend| backend.name()).collect();
    metrics.preset(&queues, &names);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let intake = Intake {
        admitter: Arc::new(Admitter {
            ledger: ledger.clone(),
            backends: backends.clone(),
            notify_targets: crate::notify::AllowedTargets::from_config(&config.notify),
        }),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    };
    intake.start(&config, &url, &daemon_id, &mut tasks).await?;

    // The outbox sends the notices of finished jobs, which it finds in the ledger.
    let (notifiers, outbox) =
        crate::notify::Notifiers::connect(&config.notify, ledger.clone()).await?;
    if notifiers.is_enabled() {
        tasks.spawn(outbox.run(shutdown.clone()));
    }

    let (tunables, tunables_rx) = watch::channel(Arc::new(Tunables::from_config(&config)));
    let reconciler = Reconciler::new(
        ledger,
        backends,
        metrics.clone(),
        daemon_id.clone(),
        tunables_rx,
        notifiers,
    )
    .with_waker(Ledger::connect(&url, &config.ledger.prefix).await?);
    metrics.set_budgets(config.cost.budget_per_hour, config.cost.budget_per_day);
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

    info!(daemon_id, "daemon started");
    service::ready();
    let mut current = config;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = signals.next() => event,
        };
        match event {
            SignalEvent::Stop => break,
            SignalEvent::Reload => {
                current = reload(&config_path, current, local.as_deref());
                // Prices, budgets, caps and placement knobs apply from the next pass.
                tunables.send_replace(Arc::new(Tunables::from_config(&current)));
                metrics.set_budgets(current.cost.budget_per_hour, current.cost.budget_per_day);
            }
        }
    }

    info!("stop requested; draining (a second signal exits at once)");
    service::stopping();
    shutdown.cancel();
    let deadline = Duration::from_secs(current.daemon.shutdown_timeout_secs);
    tokio::select! {
        () = drain(&mut tasks) => info!("daemon stopped"),
        () = tokio::time::sleep(deadline) => warn!(timeout_secs = deadline.as_secs(), "drain timed out; exiting"),
        () = signals.stop() => warn!("second signal; exiting at once"),
    }
    Ok(())
}

/// Loads the configuration again and applies what can change while running. A file
/// that does not load or validate is rejected and the running configuration stays.
fn reload(path: &std::path::Path, current: Config, local: Option<&LocalBackend>) -> Config {
    service::reloading();
    let next = match Config::load(path) {
        Ok(next) => next,
        Err(error) => {
            error!(path = %path.display(), error = %format!("{:#}", anyhow::Error::from(error)), "reload rejected; keeping the running configuration");
            service::ready();
            return current;
        }
    };

    let settings = Settings {
        max_workers: next.backend.local.max_workers,
        threads_per_worker: next.backend.local.threads_per_worker,
        lease_secs: next.daemon.lease_secs,
    };
    if let Some(local) = local {
        local.apply(settings);
    }
    let restart_keys = keys_needing_restart(&current, &next);
    if !restart_keys.is_empty() {
        warn!(keys = ?restart_keys, "these changed keys take effect only after a restart");
    }
    info!(
        max_workers = settings.max_workers,
        threads_per_worker = settings.threads_per_worker,
        lease_secs = settings.lease_secs,
        "configuration reloaded"
    );
    service::ready();

    // Keep the running values of keys that a reload cannot change, so that the
    // warning above repeats on every reload until the daemon restarts.
    Config {
        backend: crate::config::BackendConfig {
            local: crate::config::LocalBackendConfig {
                max_workers: next.backend.local.max_workers,
                threads_per_worker: next.backend.local.threads_per_worker,
                ..current.backend.local.clone()
            },
            slurm: current.backend.slurm.clone(),
            batch: crate::config::BatchBackendConfig {
                max_workers: next.backend.batch.max_workers,
                max_workers_per_region: next.backend.batch.max_workers_per_region,
                ..current.backend.batch.clone()
            },
        },
        daemon: crate::config::DaemonConfig {
            lease_secs: next.daemon.lease_secs,
            shutdown_timeout_secs: next.daemon.shutdown_timeout_secs,
            ..current.daemon.clone()
        },
        cost: next.cost.clone(),
        placement: next.placement.clone(),
        ..current
    }
}

/// Lists keys whose new value needs a restart.
fn keys_needing_restart(current: &Config, next: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut changed = |key, differs: bool| {
        if differs {
            keys.push(key);
        }
    };
    changed(
        "ledger",
        format!("{:?}", current.ledger) != format!("{:?}", next.ledger),
    );
    changed(
        "intake",
        format!("{:?}", current.intake) != format!("{:?}", next.intake),
    );
    changed(
        "notify",
        format!("{:?}", current.notify) != format!("{:?}", next.notify),
    );
    changed(
        "daemon.metrics_listen",
        current.daemon.metrics_listen != next.daemon.metrics_listen,
    );
    changed(
        "daemon.reconcile_interval_secs",
        current.daemon.reconcile_interval_secs != next.daemon.reconcile_interval_secs,
    );
    let (old, new) = (&current.backend.local, &next.backend.local);
    changed(
        "backend.local.worker_binary",
        old.worker_binary != new.worker_binary,
    );
    changed("backend.local.cache_dir", old.cache_dir != new.cache_dir);
    changed("backend.local.log_dir", old.log_dir != new.log_dir);
    changed("backend.local.gpu_sku", old.gpu_sku != new.gpu_sku);
    changed("backend.local.enabled", old.enabled != new.enabled);
    changed(
        "backend.slurm",
        format!("{:?}", current.backend.slurm) != format!("{:?}", next.backend.slurm),
    );
    let batch_except_caps = |batch: &crate::config::BatchBackendConfig| {
        let mut batch = batch.clone();
        batch.max_workers = 0;
        batch.max_workers_per_region = 0;
        format!("{batch:?}")
    };
    changed(
        "backend.batch",
        batch_except_caps(&current.backend.batch) != batch_except_caps(&next.backend.batch),
    );
    keys
}

async fn drain(tasks: &mut JoinSet<()>) {
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            error!(error = %error, "daemon task panicked");
        }
    }
}

/// The signals the daemon handles, installed before any connection is made so that
/// an early SIGTERM is not lost.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())
                .context("failed to install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("failed to install the SIGHUP handler")?,
        })
    }

    async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.term.recv() => SignalEvent::Stop,
            _ = self.int.recv() => SignalEvent::Stop,
            _ = self.hup.recv() => SignalEvent::Reload,
        }
    }

    /// Waits for the next SIGTERM or SIGINT; a SIGHUP during the drain is ignored.
    async fn stop(&mut self) {
        while self.next().await != SignalEvent::Stop {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignalEvent {
    Stop,
    Reload,
}

/// Admitter, metrics and shutdown token that every intake loop shares.
struct Intake {
    admitter: Arc<Admitter>,
    metrics: Metrics,
    shutdown: CancellationToken,
}

impl Intake {
    /// Starts one intake loop per configured source, and a backlog sampler for each
    /// one that can count its backlog: the Redis stream when enabled, each
    /// `[[intake.sqs]]` queue and each `[[intake.pubsub]]` subscription.
    async fn start(
        &self,
        config: &Config,
        url: &str,
        daemon_id: &str,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<()> {
        if config.intake.redis_stream.enabled {
            let stream_config = config.intake.redis_stream.clone();
            let source =
                RedisStreamSource::connect(url, stream_config.clone(), daemon_id.to_string())
                    .await?;
            self.spawn(source, tasks);

            // A second source with its own connections, so that sampling never waits
            // behind the intake's blocking read.
            let consumer = format!("{daemon_id}-metrics");
            match RedisStreamSource::connect(url, stream_config, consumer).await {
                Ok(sampler) => self.spawn_backlog(sampler, tasks),
                Err(error) => warn!(error = %error_chain(&error), "backlog sampling disabled"),
            }
        }

        for queue_config in &config.intake.sqs {
            let queue = SqsQueue::connect(queue_config.clone()).await?;
            info!(
                queue = %queue.url(),
                region = %queue_config.region,
                endpoint_url = queue_config.endpoint_url.as_deref().unwrap_or("(AWS default)"),
                fifo = queue_config.is_fifo(),
                "SQS queue configured"
            );
            self.spawn(SqsSource::new(queue.clone()), tasks);
            self.spawn_backlog(SqsSource::new(queue), tasks);
        }

        // NOTE: Pub/Sub has no backlog count in its API (Cloud Monitoring has it), so
        // these subscriptions get no backlog sampler and their backlog gauge stays 0.
        for subscription in &config.intake.pubsub {
            let source = PubsubSource::connect(subscription.clone()).await?;
            info!(
                queue = %source.queue(),
                endpoint = subscription.endpoint.as_deref().unwrap_or("(Google default)"),
                dead_letter_topic = %subscription.dead_letter_topic_name(),
                "Pub/Sub subscription configured"
            );
            self.spawn(source, tasks);
        }
        Ok(())
    }

    fn spawn<S: IntakeSource + 'static>(&self, source: S, tasks: &mut JoinSet<()>) {
        tasks.spawn(run_intake(
            source,
            Arc::clone(&self.admitter),
            self.metrics.clone(),
            self.shutdown.clone(),
        ));
    }

    fn spawn_backlog<S: IntakeSource + 'static>(&self, source: S, tasks: &mut JoinSet<()>) {
        tasks.spawn(watch_backlog(
            source,
            self.metrics.clone(),
            self.shutdown.clone(),
        ));
    }
}

/// Samples a source's backlog for the metrics endpoint every few seconds.
async fn watch_backlog<S: IntakeSource>(
    mut source: S,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let labels = QueueLabels {
        queue: source.queue().to_string(),
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
                warn!(queue = %labels.queue, error = %error_chain(&error), "failed to read the intake backlog")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Builds the Slurm backend over slurmrestd or the command line, as configured.
async fn slurm_backend(
    config: &Config,
    ledger: Ledger,
    worker_ledger: crate::backend::local::WorkerLedger,
) -> anyhow::Result<crate::backend::slurm::SlurmBackend> {
    use spillway_slurm::{RestClient, RestConfig, SlurmApi, TokenSource};

    let slurm = &config.backend.slurm;
    let api: Arc<dyn SlurmApi> = match slurm.api {
        crate::config::SlurmApiKind::Rest => {
            let token_source = match (&slurm.token_file, &slurm.token_command) {
                (Some(path), _) => TokenSource::File(path.clone()),
                (None, Some(command)) => TokenSource::Command(command.clone()),
                (None, None) => anyhow::bail!("backend.slurm needs token_file or token_command"),
            };
            let mut rest =
                RestConfig::new(slurm.rest_url.clone(), slurm.user.clone(), token_source);
            rest.request_timeout = Duration::from_secs(slurm.request_timeout_secs);
            rest.max_array_size = slurm.max_array_size;
            Arc::new(RestClient::new(rest)?)
        }
        crate::config::SlurmApiKind::Cli => {
            let cli = spillway_slurm::CliConfig {
                slurm_conf: slurm.slurm_conf.clone(),
                command_timeout: Duration::from_secs(slurm.request_timeout_secs),
                max_array_size: slurm.max_array_size,
                ..spillway_slurm::CliConfig::default()
            };
            Arc::new(spillway_slurm::CliClient::new(cli)?)
        }
    };
    api.ping().await.map_err(|error| {
        anyhow::anyhow!(
            "Slurm is not reachable (backend.slurm.api = {:?}): {error}",
            slurm.api
        )
    })?;
    crate::backend::slurm::SlurmBackend::new(
        api,
        slurm.clone(),
        ledger,
        worker_ledger,
        config.daemon.lease_secs,
    )
    .await
}
