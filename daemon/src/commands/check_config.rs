//! `spillway check-config`: validate the configuration, then probe what it points at.

use std::time::Duration;

use spillway_common::digest::Sha256Hex;
use spillway_common::ledger::redact_password;

use super::output::{OutputFormat, print_json};
use crate::config::Config;

/// Time allowed for each network probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One probe's outcome, as `--output json` prints it.
#[derive(serde::Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

/// Prints one line per check (or a JSON list) and fails when any check failed.
pub async fn run(config: &Config, output: OutputFormat) -> anyhow::Result<()> {
    let mut checks: Vec<Check> = Vec::new();
    let mut report = |name: &str, outcome: Result<String, String>| {
        let check = match outcome {
            Ok(detail) => Check {
                name: name.into(),
                ok: true,
                detail,
            },
            Err(detail) => Check {
                name: name.into(),
                ok: false,
                detail,
            },
        };
        if !output.is_json() {
            let status = if check.ok { "ok    " } else { "FAILED" };
            println!("{status}  {}: {}", check.name, check.detail);
        }
        checks.push(check);
    };

    report("configuration", Ok("valid".into()));
    report("ledger", probe_redis(config).await);
    if config.intake.redis_stream.enabled {
        report("intake.redis_stream", probe_stream(config).await);
    }
    for (index, queue) in config.intake.sqs.iter().enumerate() {
        report(&format!("intake.sqs[{index}]"), probe_sqs(queue).await);
    }
    for (index, subscription) in config.intake.pubsub.iter().enumerate() {
        report(
            &format!("intake.pubsub[{index}]"),
            probe_pubsub(subscription).await,
        );
    }
    for (name, outcome) in probe_notify(&config.notify).await {
        report(&name, outcome);
    }
    if config.backend.local.enabled {
        report("backend.local.worker_binary", probe_worker(config));
        report(
            "backend.local.log_dir",
            probe_dir(&config.backend.local.log_dir),
        );
        report(
            "backend.local.cache_dir",
            probe_dir(&config.backend.local.cache_dir),
        );
    }
    if !config.daemon.metrics_listen.is_empty() {
        report(
            "daemon.metrics_listen",
            probe_listen(&config.daemon.metrics_listen).await,
        );
    }

    let failures = checks.iter().filter(|check| !check.ok).count();
    if output.is_json() {
        print_json(&checks)?;
    }
    if failures > 0 {
        anyhow::bail!("{failures} check(s) failed");
    }
    Ok(())
}

async fn connect(config: &Config) -> Result<spillway_common::ledger::LedgerConnection, String> {
    let url = config.ledger_url().map_err(|error| format!("{error:#}"))?;
    let connecting = spillway_common::ledger::LedgerConnection::connect(&url);
    match tokio::time::timeout(PROBE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(format!("{:#}", anyhow::Error::from(error))),
        Err(_) => Err(format!("connecting to {} timed out", redact_password(&url))),
    }
}

async fn probe_redis(config: &Config) -> Result<String, String> {
    let mut conn = connect(config).await?;
    // On a cluster INFO goes to one node; its version stands for the cluster.
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .map_err(|error| format!("INFO failed: {error}"))?;
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("unknown");
    Ok(format!("reachable, Redis {version}"))
}

async fn probe_stream(config: &Config) -> Result<String, String> {
    let mut conn = connect(config).await?;
    let stream = &config.intake.redis_stream.stream;
    let length: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .map_err(|error| format!("XLEN {stream} failed: {error}"))?;
    Ok(format!("{stream} has {length} entries"))
}

/// Reads the approximate message counts of the queue and its dead-letter queue.
async fn probe_sqs(config: &crate::config::SqsQueueConfig) -> Result<String, String> {
    use spillway_common::process::error_chain;

    let queue = crate::intake::sqs::SqsQueue::connect(config.clone())
        .await
        .map_err(|error| error_chain(&error))?;
    let mut counts = Vec::new();
    for url in [&config.queue_url, &config.dead_letter_queue_url] {
        let count = tokio::time::timeout(PROBE_TIMEOUT, queue.approximate_messages(url))
            .await
            .map_err(|_| format!("reading the attributes of {url} timed out"))?
            .map_err(|error| error_chain(&error))?;
        counts.push(count);
    }
    Ok(format!(
        "{} has about {} messages waiting or in flight, its dead-letter queue about {}",
        config.queue_url, counts[0], counts[1]
    ))
}

/// Reads the subscription and its dead-letter topic through the Pub/Sub admin API.
async fn probe_pubsub(config: &crate::config::PubsubSubscriptionConfig) -> Result<String, String> {
    use spillway_common::process::error_chain;

    let name = config.subscription_name();
    tokio::time::timeout(PROBE_TIMEOUT, crate::intake::pubsub::probe(config))
        .await
        .map_err(|_| format!("reading subscription {name} timed out"))?
        .map_err(|error| error_chain(&error))
}

/// Checks every `[notify]` target, named `notify.sqs[i]` and `notify.pubsub[i]`.
async fn probe_notify(
    config: &crate::config::NotifyConfig,
) -> Vec<(String, Result<String, String>)> {
    use crate::notify::{Notifier, pubsub::PubsubNotifier, sqs::SqsNotifier};
    use spillway_common::process::error_chain;

    async fn probe(notifier: &dyn Notifier) -> Result<String, String> {
        match tokio::time::timeout(PROBE_TIMEOUT, notifier.probe()).await {
            Ok(Ok(detail)) => Ok(detail),
            Ok(Err(error)) => Err(error_chain(error.as_ref())),
            Err(_) => Err(format!("checking {} timed out", notifier.target())),
        }
    }

    let mut outcomes = Vec::new();
    for (index, queue) in config.sqs.iter().enumerate() {
        let outcome = match SqsNotifier::connect(queue.clone()).await {
            Ok(notifier) => probe(&notifier).await,
            Err(error) => Err(error_chain(&error)),
        };
        outcomes.push((format!("notify.sqs[{index}]"), outcome));
    }
    for (index, topic) in config.pubsub.iter().enumerate() {
        let outcome = match PubsubNotifier::connect(topic.clone()).await {
            Ok(notifier) => probe(&notifier).await,
            Err(error) => Err(error_chain(&error)),
        };
        outcomes.push((format!("notify.pubsub[{index}]"), outcome));
    }
    outcomes
}

fn probe_worker(config: &Config) -> Result<String, String> {
    let path = &config.backend.local.worker_binary;
    let bytes =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    Ok(format!(
        "{} sha256:{}",
        path.display(),
        Sha256Hex::of(&bytes)
    ))
}

fn probe_dir(path: &std::path::Path) -> Result<String, String> {
    std::fs::create_dir_all(path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    let probe = path.join(format!(".spillway-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|error| format!("cannot write in {}: {error}", path.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(format!("{} is writable", path.display()))
}

async fn probe_listen(address: &str) -> Result<String, String> {
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => Ok(format!(
            "{} can be bound",
            listener.local_addr().map_err(|e| e.to_string())?
        )),
        Err(error) => Err(format!(
            "cannot listen on {address}: {error} (is a daemon already running?)"
        )),
    }
}
