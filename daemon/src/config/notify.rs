//! Configuration of job notifications: `[notify]` with one `[[notify.sqs]]` table per
//! SQS queue and one `[[notify.pubsub]]` table per Pub/Sub topic.
//!
//! A *target* is the URI that names one configured destination: `sqs://` followed by
//! the host, port and path of the queue URL, or `pubsub://projects/P/topics/T`. A
//! manifest may name a target in its `notify` field; only configured targets are
//! accepted.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::pubsub::{GoogleCredentials, is_http_url, is_resource_id};

/// Scheme of an SQS target.
pub const SQS_SCHEME: &str = "sqs://";
/// Scheme of a Pub/Sub target.
pub const PUBSUB_SCHEME: &str = "pubsub://";

/// Notifications sent when a job succeeds, fails or is cancelled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Target for jobs whose manifest names none. Unset, such jobs send no notice.
    pub default: Option<String>,
    /// Time allowed for one send, request and retries included.
    pub timeout_secs: u64,
    /// Period of the pass that sends the notices of finished jobs that have none yet.
    pub retry_interval_secs: u64,
    /// Jobs that finished longer ago than this get no notice, even if every send
    /// failed; each is logged as an error once.
    pub retry_for_secs: u64,
    /// SQS queues that notices may go to.
    pub sqs: Vec<SqsNotifyConfig>,
    /// Pub/Sub topics that notices may go to.
    pub pubsub: Vec<PubsubNotifyConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            default: None,
            timeout_secs: 10,
            retry_interval_secs: 5,
            retry_for_secs: 86_400,
            sqs: Vec::new(),
            pubsub: Vec::new(),
        }
    }
}

impl NotifyConfig {
    /// Lists the target URI of every configured destination, SQS queues first.
    pub fn targets(&self) -> Vec<String> {
        let sqs = self.sqs.iter().filter_map(SqsNotifyConfig::target);
        let pubsub = self.pubsub.iter().map(PubsubNotifyConfig::target);
        sqs.chain(pubsub).collect()
    }
}

/// One SQS queue that notices go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsNotifyConfig {
    /// Queue URL, as `GetQueueUrl` returns it. A name ending in `.fifo` marks a FIFO
    /// queue.
    pub queue_url: String,
    /// AWS region of the queue.
    pub region: String,
    /// Endpoint of an SQS-compatible service; unset, the SDK resolves it.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// File whose content is the access key id; unset, the standard AWS chain applies.
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// File whose content is the secret access key.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
}

impl SqsNotifyConfig {
    /// Returns the target URI: `sqs://` with the queue URL's host, port and path, or
    /// `None` for a URL that does not parse (validation reports it).
    pub fn target(&self) -> Option<String> {
        sqs_target(&self.queue_url)
    }

    /// Returns whether the queue is a FIFO queue.
    pub fn is_fifo(&self) -> bool {
        self.queue_url.trim_end_matches('/').ends_with(".fifo")
    }
}

/// Builds the target URI of an SQS queue URL.
pub fn sqs_target(queue_url: &str) -> Option<String> {
    let url = url::Url::parse(queue_url).ok()?;
    let host = url.host_str()?;
    let port = url
        .port()
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    Some(format!("{SQS_SCHEME}{host}{port}{}", url.path()))
}

/// One Pub/Sub topic that notices go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubNotifyConfig {
    /// Google Cloud project of the topic.
    pub project: String,
    /// Topic id, the last part of `projects/PROJECT/topics/ID`.
    pub topic: String,
    /// Endpoint of the Pub/Sub API; unset, `https://pubsub.googleapis.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `application-default` or `anonymous` (the emulator only).
    #[serde(default)]
    pub credentials: GoogleCredentials,
}

impl PubsubNotifyConfig {
    /// Returns the topic's resource name.
    pub fn topic_name(&self) -> String {
        format!("projects/{}/topics/{}", self.project, self.topic)
    }

    /// Returns the target URI, `pubsub://projects/P/topics/T`.
    pub fn target(&self) -> String {
        format!("{PUBSUB_SCHEME}{}", self.topic_name())
    }
}

/// Lists every invalid value of `[notify]` with its key and the fix.
pub(super) fn problems(notify: &NotifyConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, key: &str, value: String, fix: &str| {
        if !ok {
            problems.push(format!("  notify.{key} = {value}: {fix}"));
        }
    };

    let mut seen = HashSet::new();
    for (index, queue) in notify.sqs.iter().enumerate() {
        let target = queue.target();
        check(
            target.is_some() && is_http_url(&queue.queue_url),
            &format!("sqs[{index}].queue_url"),
            format!("{:?}", queue.queue_url),
            "use the queue's http:// or https:// URL, as GetQueueUrl returns it",
        );
        if let Some(target) = target {
            check(
                seen.insert(target),
                &format!("sqs[{index}].queue_url"),
                format!("{:?}", queue.queue_url),
                "list each queue once",
            );
        }
        check(
            !queue.region.trim().is_empty(),
            &format!("sqs[{index}].region"),
            "\"\"".into(),
            "set the queue's AWS region, such as eu-west-1",
        );
        if let Some(endpoint) = &queue.endpoint_url {
            check(
                is_http_url(endpoint),
                &format!("sqs[{index}].endpoint_url"),
                format!("{endpoint:?}"),
                "use an http:// or https:// URL, or remove the key to use the AWS endpoint",
            );
        }
        check(
            queue.access_key_id_file.is_some() == queue.secret_access_key_file.is_some(),
            &format!("sqs[{index}].access_key_id_file"),
            format!("{:?}", queue.access_key_id_file),
            "set both access_key_id_file and secret_access_key_file, or neither to use the standard credential chain",
        );
    }

    for (index, topic) in notify.pubsub.iter().enumerate() {
        check(
            is_resource_id(&topic.project),
            &format!("pubsub[{index}].project"),
            format!("{:?}", topic.project),
            "set the Google Cloud project id",
        );
        check(
            is_resource_id(&topic.topic),
            &format!("pubsub[{index}].topic"),
            format!("{:?}", topic.topic),
            "set the topic id, the last part of projects/PROJECT/topics/ID",
        );
        check(
            seen.insert(topic.target()),
            &format!("pubsub[{index}].topic"),
            format!("{:?}", topic.topic),
            "list each topic once",
        );
        if let Some(endpoint) = &topic.endpoint {
            check(
                is_http_url(endpoint),
                &format!("pubsub[{index}].endpoint"),
                format!("{endpoint:?}"),
                "use an http:// or https:// URL, or remove the key to use pubsub.googleapis.com",
            );
        }
    }

    if let Some(default) = &notify.default {
        check(
            seen.contains(default),
            "default",
            format!("{default:?}"),
            "name a configured target: sqs:// with a [[notify.sqs]] queue URL's host and path, or pubsub://projects/P/topics/T of a [[notify.pubsub]] table",
        );
    }
    check(
        (1..=300).contains(&notify.timeout_secs),
        "timeout_secs",
        notify.timeout_secs.to_string(),
        "use a value between 1 and 300",
    );
    check(
        (1..=3600).contains(&notify.retry_interval_secs),
        "retry_interval_secs",
        notify.retry_interval_secs.to_string(),
        "use a value between 1 and 3600",
    );
    check(
        notify.retry_for_secs >= notify.retry_interval_secs,
        "retry_for_secs",
        notify.retry_for_secs.to_string(),
        "use a value of at least retry_interval_secs",
    );
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_target_keeps_host_port_and_path() {
        assert_eq!(
            sqs_target("https://sqs.eu-west-1.amazonaws.com/123456789012/notices").as_deref(),
            Some("sqs://sqs.eu-west-1.amazonaws.com/123456789012/notices")
        );
        assert_eq!(
            sqs_target("http://127.0.0.1:5000/123456789012/notices.fifo").as_deref(),
            Some("sqs://127.0.0.1:5000/123456789012/notices.fifo")
        );
        assert_eq!(sqs_target("not a url"), None);
    }
}
