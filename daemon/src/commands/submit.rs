//! `spillway submit FILE`: validate a manifest and send it to the intake stream, with
//! `--sqs QUEUE_URL` to a configured SQS queue, or with `--pubsub TOPIC` to the topic
//! of a configured Pub/Sub subscription.

use std::path::Path;

use anyhow::Context;
use spillway_common::manifest;
use spillway_common::task::job_id;

use super::output::{OutputFormat, print_json};
use crate::config::Config;
use crate::intake::redis_stream;
use crate::intake::sqs::SqsQueue;

/// The destination of `spillway submit`.
pub enum Destination {
    /// The intake stream of `[intake.redis_stream]`.
    RedisStream,
    /// The queue URL of an `[[intake.sqs]]` table.
    Sqs(String),
    /// The `topic` of an `[[intake.pubsub]]` table, as an id or a resource name.
    Pubsub(String),
}

/// Sends the manifest and prints its job id. With `validate`, an invalid manifest is
/// reported here and not sent. An SQS queue or Pub/Sub topic must be one of the
/// configured intake tables, whose endpoint and credentials are used.
pub async fn run(
    config: &Config,
    file: &Path,
    validate: bool,
    destination: &Destination,
) -> anyhow::Result<()> {
    let body = std::fs::read(file)
        .with_context(|| format!("failed to read manifest {}", file.display()))?;

    let job_id = if validate {
        let manifest = manifest::parse(&body)
            .map_err(|errors| anyhow::anyhow!("{}: {errors}", file.display()))?;
        Some(job_id(&manifest))
    } else {
        manifest::parse(&body)
            .ok()
            .map(|manifest| job_id(&manifest))
    };

    if let Destination::Pubsub(topic) = destination {
        let message_id = send_to_pubsub(config, topic, &body).await?;
        match job_id {
            Some(job_id) => println!("{job_id}"),
            None => println!(
                "sent as Pub/Sub message {message_id}; the manifest is invalid, so it will be dead-lettered"
            ),
        }
        return Ok(());
    }
    if let Destination::Sqs(queue_url) = destination {
        let message_id = send_to_sqs(config, queue_url, &body, job_id.as_deref()).await?;
        match job_id {
            Some(job_id) => println!("{job_id}"),
            None => println!(
                "sent as SQS message {message_id}; the manifest is invalid, so it will be dead-lettered"
            ),
        }
        return Ok(());
    }

    let url = config.ledger_url()?;
    let mut conn = spillway_common::ledger::LedgerConnection::connect(&url).await?;
    let stream = &config.intake.redis_stream.stream;
    let message_id = redis_stream::submit(&mut conn, stream, &body)
        .await
        .with_context(|| format!("failed to send the manifest to stream {stream}"))?;

    match job_id {
        Some(job_id) => println!("{job_id}"),
        None => println!(
            "sent as message {message_id}; the manifest is invalid, so it will be dead-lettered"
        ),
    }
    Ok(())
}

/// Publishes the manifest to the topic of a configured Pub/Sub subscription and returns
/// the Pub/Sub message id.
async fn send_to_pubsub(config: &Config, topic: &str, body: &[u8]) -> anyhow::Result<String> {
    use crate::intake::pubsub::{connect_publisher, publish};

    let matches = |table: &&crate::config::PubsubSubscriptionConfig| {
        table.topic.as_deref() == Some(topic) || table.topic_name().as_deref() == Some(topic)
    };
    let tables: Vec<_> = config.intake.pubsub.iter().filter(matches).collect();
    let table = match tables.as_slice() {
        [table] => *table,
        [] => {
            let configured: Vec<String> = config
                .intake
                .pubsub
                .iter()
                .filter_map(|table| table.topic_name())
                .collect();
            anyhow::bail!(
                "Pub/Sub topic {topic} is not configured; use the topic of an [[intake.pubsub]] table: {configured:?}"
            );
        }
        _ => anyhow::bail!(
            "Pub/Sub topic id {topic} is set in several [[intake.pubsub]] tables; pass projects/PROJECT/topics/{topic}"
        ),
    };

    let topic_name = table.topic_name().expect("the table matched on its topic");
    let publisher =
        connect_publisher(&topic_name, table.endpoint.as_deref(), table.credentials).await?;
    let message = google_cloud_pubsub::model::Message::new().set_data(body.to_vec());
    Ok(publish(&publisher, &topic_name, message).await?)
}

/// Sends the manifest to a configured SQS queue and returns the SQS message id.
async fn send_to_sqs(
    config: &Config,
    queue_url: &str,
    body: &[u8],
    job_id: Option<&str>,
) -> anyhow::Result<String> {
    let Some(queue_config) = config
        .intake
        .sqs
        .iter()
        .find(|queue| queue.queue_url == queue_url)
    else {
        let configured: Vec<&str> = config
            .intake
            .sqs
            .iter()
            .map(|queue| queue.queue_url.as_str())
            .collect();
        anyhow::bail!(
            "SQS queue {queue_url} is not configured; use one of the [[intake.sqs]] queue_url values: {configured:?}"
        );
    };
    let body = std::str::from_utf8(body)
        .context("the manifest is not UTF-8 text, which SQS requires of a message body")?;

    let queue = SqsQueue::connect(queue_config.clone()).await?;
    let message_id = queue.send_manifest(body, job_id).await?;
    Ok(message_id)
}

/// The report that `spillway validate --output json` prints.
#[derive(serde::Serialize)]
struct Validation {
    valid: bool,
    job_id: Option<String>,
    tasks: Option<usize>,
    records: Option<u64>,
    errors: Vec<manifest::ManifestError>,
}

/// `spillway validate FILE`: prints every error, or the job id and task count.
pub fn validate(file: &Path, output: OutputFormat) -> anyhow::Result<()> {
    let body = std::fs::read(file)
        .with_context(|| format!("failed to read manifest {}", file.display()))?;
    if output.is_json() {
        let report = match manifest::parse(&body) {
            Ok(manifest) => Validation {
                valid: true,
                job_id: Some(job_id(&manifest)),
                tasks: Some(spillway_common::task::slice(&manifest).len()),
                records: Some(manifest.total_records()),
                errors: Vec::new(),
            },
            Err(errors) => Validation {
                valid: false,
                job_id: None,
                tasks: None,
                records: None,
                errors: errors.0,
            },
        };
        print_json(&report)?;
        if !report.valid {
            anyhow::bail!("{}: invalid manifest", file.display());
        }
        return Ok(());
    }
    let manifest =
        manifest::parse(&body).map_err(|errors| anyhow::anyhow!("{}: {errors}", file.display()))?;
    let tasks = spillway_common::task::slice(&manifest);
    println!(
        "valid: job {} with {} tasks over {} records",
        job_id(&manifest),
        tasks.len(),
        manifest.total_records()
    );
    Ok(())
}
