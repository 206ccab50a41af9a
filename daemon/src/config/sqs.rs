//! Configuration of the SQS intake: one `[[intake.sqs]]` table per queue.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

/// SQS's maximum visibility timeout, 12 hours.
const MAX_VISIBILITY_TIMEOUT_SECS: u64 = 43_200;
/// SQS's maximum long-poll wait.
const MAX_WAIT_TIME_SECS: u64 = 20;
/// SQS returns at most this many messages per receive.
const MAX_BATCH_SIZE: u32 = 10;

/// One SQS queue that manifests arrive on. Each queue has its own client, so queues
/// in different regions or on different endpoints can feed one daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsQueueConfig {
    /// Queue URL, such as `https://sqs.eu-west-1.amazonaws.com/123456789012/manifests`.
    /// A name ending in `.fifo` marks a FIFO queue.
    pub queue_url: String,
    /// AWS region of the queue, such as `eu-west-1`.
    pub region: String,
    /// Endpoint of an SQS-compatible service. Unset, the SDK's endpoint resolution
    /// applies: `AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL`, then the region's AWS endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Queue that rejected manifests are sent to, with the reason and the validation
    /// errors as message attributes.
    pub dead_letter_queue_url: String,
    /// Visibility timeout set at receive. The daemon renews it every third of this
    /// time until the message's job is durable in the ledger.
    #[serde(default = "default_visibility_timeout_secs")]
    pub visibility_timeout_secs: u64,
    /// A message received more often than this is dead-lettered instead of admitted.
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u64,
    /// Long-poll wait of one receive, at most 20 seconds.
    #[serde(default = "default_wait_time_secs")]
    pub wait_time_secs: u64,
    /// Messages requested per receive, at most 10.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// File whose content is the access key id. Unset, credentials come from the
    /// standard AWS provider chain (environment, profile, web identity, container,
    /// instance metadata).
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// File whose content is the secret access key. Set it together with
    /// `access_key_id_file`.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
}

impl SqsQueueConfig {
    /// Returns whether the queue is a FIFO queue, whose name SQS requires to end in `.fifo`.
    pub fn is_fifo(&self) -> bool {
        is_fifo_url(&self.queue_url)
    }

    /// Returns whether the dead-letter queue is a FIFO queue.
    pub fn dead_letter_is_fifo(&self) -> bool {
        is_fifo_url(&self.dead_letter_queue_url)
    }
}

fn is_fifo_url(url: &str) -> bool {
    url.trim_end_matches('/').ends_with(".fifo")
}

fn default_visibility_timeout_secs() -> u64 {
    60
}

fn default_max_deliveries() -> u64 {
    5
}

fn default_wait_time_secs() -> u64 {
    MAX_WAIT_TIME_SECS
}

fn default_batch_size() -> u32 {
    MAX_BATCH_SIZE
}

/// Lists every invalid value of the `[[intake.sqs]]` tables with its key and the fix.
pub(super) fn problems(queues: &[SqsQueueConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (index, queue) in queues.iter().enumerate() {
        let mut check = |ok: bool, key: &str, value: String, fix: &str| {
            if !ok {
                problems.push(format!("  intake.sqs[{index}].{key} = {value}: {fix}"));
            }
        };

        check(
            is_http_url(&queue.queue_url),
            "queue_url",
            format!("{:?}", queue.queue_url),
            "use the queue's http:// or https:// URL, as GetQueueUrl returns it",
        );
        check(
            seen.insert(queue.queue_url.clone()),
            "queue_url",
            format!("{:?}", queue.queue_url),
            "list each queue once",
        );
        check(
            !queue.region.trim().is_empty(),
            "region",
            "\"\"".into(),
            "set the queue's AWS region, such as eu-west-1",
        );
        if let Some(endpoint) = &queue.endpoint_url {
            check(
                is_http_url(endpoint),
                "endpoint_url",
                format!("{endpoint:?}"),
                "use an http:// or https:// URL, or remove the key to use the AWS endpoint",
            );
        }
        check(
            is_http_url(&queue.dead_letter_queue_url),
            "dead_letter_queue_url",
            format!("{:?}", queue.dead_letter_queue_url),
            "use the dead-letter queue's http:// or https:// URL",
        );
        check(
            queue.dead_letter_queue_url != queue.queue_url,
            "dead_letter_queue_url",
            format!("{:?}", queue.dead_letter_queue_url),
            "use a queue other than queue_url",
        );
        check(
            (2..=MAX_VISIBILITY_TIMEOUT_SECS).contains(&queue.visibility_timeout_secs),
            "visibility_timeout_secs",
            queue.visibility_timeout_secs.to_string(),
            "use a value between 2 and 43200 (SQS's maximum, 12 hours)",
        );
        check(
            queue.max_deliveries >= 1,
            "max_deliveries",
            queue.max_deliveries.to_string(),
            "use at least 1",
        );
        check(
            queue.wait_time_secs <= MAX_WAIT_TIME_SECS,
            "wait_time_secs",
            queue.wait_time_secs.to_string(),
            "use a value between 0 and 20 (SQS's maximum long-poll wait)",
        );
        check(
            (1..=MAX_BATCH_SIZE).contains(&queue.batch_size),
            "batch_size",
            queue.batch_size.to_string(),
            "use a value between 1 and 10 (SQS's maximum per receive)",
        );
        check(
            queue.access_key_id_file.is_some() == queue.secret_access_key_file.is_some(),
            "access_key_id_file",
            format!("{:?}", queue.access_key_id_file),
            "set both access_key_id_file and secret_access_key_file, or neither to use the standard credential chain",
        );
    }
    problems
}

fn is_http_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
}
