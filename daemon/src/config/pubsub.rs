//! Configuration of the Pub/Sub intake: one `[[intake.pubsub]]` table per
//! subscription, and the Google client settings that the Pub/Sub notifier shares.

use std::collections::HashSet;

use serde::Deserialize;

/// The shortest and longest lease extension that the Pub/Sub client accepts. The
/// client clamps other values into this range, so validation rejects them instead.
const MIN_LEASE_EXTENSION_SECS: u64 = 10;
const MAX_LEASE_EXTENSION_SECS: u64 = 600;
/// The Pub/Sub client sends at most this many ack ids per `Acknowledge` request.
/// Capping the outstanding messages at the same number keeps every ack batch within
/// one request.
const MAX_OUTSTANDING_MESSAGES: u32 = 1000;

/// The authentication method of a Google client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GoogleCredentials {
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, the gcloud
    /// user credentials, then the metadata server of a Google Cloud VM or workload
    /// identity.
    #[default]
    ApplicationDefault,
    /// No credentials, for the Pub/Sub emulator. No token is ever requested, so the
    /// client contacts no metadata server.
    Anonymous,
}

/// One Pub/Sub subscription that manifests arrive on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubSubscriptionConfig {
    /// Google Cloud project of the subscription and the dead-letter topic.
    pub project: String,
    /// Subscription id, the last part of `projects/PROJECT/subscriptions/ID`.
    pub subscription: String,
    /// Id of the topic in `project` that rejected manifests are published to, with the
    /// reason and the validation errors as attributes.
    pub dead_letter_topic: String,
    /// Id of the topic that the subscription reads. Only `spillway submit --pubsub`
    /// uses it, to find this table's endpoint and credentials.
    #[serde(default)]
    pub topic: Option<String>,
    /// Endpoint of the Pub/Sub API, such as `http://127.0.0.1:8085` for the emulator.
    /// Unset, the client uses `https://pubsub.googleapis.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `application-default` or `anonymous` (the emulator only).
    #[serde(default)]
    pub credentials: GoogleCredentials,
    /// Deadline that each lease extension grants, 10 to 600. A message held by a
    /// daemon that died is delivered again after at most this long.
    #[serde(default = "default_min_lease_secs")]
    pub min_lease_secs: u64,
    /// Maximum time the daemon keeps one message unacknowledged. After it, the client stops
    /// extending the lease and Pub/Sub delivers the message again.
    #[serde(default = "default_max_lease_secs")]
    pub max_lease_secs: u64,
    /// Maximum messages kept unacknowledged at once, 1 to 1000 (flow control).
    #[serde(default = "default_max_outstanding_messages")]
    pub max_outstanding_messages: u32,
    /// A message whose delivery attempt exceeds this is dead-lettered instead of
    /// admitted. Pub/Sub counts attempts only on subscriptions with a dead-letter
    /// policy.
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u64,
}

impl PubsubSubscriptionConfig {
    /// Returns the subscription's resource name.
    pub fn subscription_name(&self) -> String {
        format!(
            "projects/{}/subscriptions/{}",
            self.project, self.subscription
        )
    }

    /// Returns the dead-letter topic's resource name.
    pub fn dead_letter_topic_name(&self) -> String {
        format!(
            "projects/{}/topics/{}",
            self.project, self.dead_letter_topic
        )
    }

    /// Returns the resource name of `topic`, when set.
    pub fn topic_name(&self) -> Option<String> {
        let topic = self.topic.as_ref()?;
        Some(format!("projects/{}/topics/{topic}", self.project))
    }
}

fn default_min_lease_secs() -> u64 {
    60
}

fn default_max_lease_secs() -> u64 {
    3600
}

fn default_max_outstanding_messages() -> u32 {
    100
}

fn default_max_deliveries() -> u64 {
    5
}

/// Lists every invalid value of the `[[intake.pubsub]]` tables with its key and the fix.
pub(super) fn problems(subscriptions: &[PubsubSubscriptionConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (index, table) in subscriptions.iter().enumerate() {
        let mut check = |ok: bool, key: &str, value: String, fix: &str| {
            if !ok {
                problems.push(format!("  intake.pubsub[{index}].{key} = {value}: {fix}"));
            }
        };

        check(
            is_resource_id(&table.project),
            "project",
            format!("{:?}", table.project),
            "set the Google Cloud project id, such as my-lab-project",
        );
        check(
            is_resource_id(&table.subscription),
            "subscription",
            format!("{:?}", table.subscription),
            "set the subscription id, the last part of projects/PROJECT/subscriptions/ID",
        );
        check(
            seen.insert(table.subscription_name()),
            "subscription",
            format!("{:?}", table.subscription),
            "list each subscription once",
        );
        check(
            is_resource_id(&table.dead_letter_topic),
            "dead_letter_topic",
            format!("{:?}", table.dead_letter_topic),
            "set the id of the topic that receives rejected manifests",
        );
        if let Some(topic) = &table.topic {
            check(
                is_resource_id(topic),
                "topic",
                format!("{topic:?}"),
                "set the id of the topic that the subscription reads, or remove the key",
            );
            check(
                *topic != table.dead_letter_topic,
                "dead_letter_topic",
                format!("{:?}", table.dead_letter_topic),
                "use a topic other than the one the subscription reads",
            );
        }
        if let Some(endpoint) = &table.endpoint {
            check(
                is_http_url(endpoint),
                "endpoint",
                format!("{endpoint:?}"),
                "use an http:// or https:// URL, or remove the key to use pubsub.googleapis.com",
            );
        }
        check(
            (MIN_LEASE_EXTENSION_SECS..=MAX_LEASE_EXTENSION_SECS).contains(&table.min_lease_secs),
            "min_lease_secs",
            table.min_lease_secs.to_string(),
            "use a value between 10 and 600, the range of a Pub/Sub ack deadline",
        );
        check(
            table.max_lease_secs >= table.min_lease_secs,
            "max_lease_secs",
            table.max_lease_secs.to_string(),
            "use a value of at least min_lease_secs",
        );
        check(
            (1..=MAX_OUTSTANDING_MESSAGES).contains(&table.max_outstanding_messages),
            "max_outstanding_messages",
            table.max_outstanding_messages.to_string(),
            "use a value between 1 and 1000, the most ack ids the client sends per request",
        );
        check(
            table.max_deliveries >= 1,
            "max_deliveries",
            table.max_deliveries.to_string(),
            "use at least 1",
        );
    }
    problems
}

/// Returns whether `text` can be a project, topic or subscription id: not empty, and
/// without `/` or whitespace, which would change the resource name.
pub(super) fn is_resource_id(text: &str) -> bool {
    !text.is_empty() && !text.contains('/') && !text.chars().any(char::is_whitespace)
}

pub(super) fn is_http_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(json: serde_json::Value) -> PubsubSubscriptionConfig {
        serde_json::from_value(json).expect("table deserializes")
    }

    #[test]
    fn defaults_are_valid() {
        let table = table(serde_json::json!({
            "project": "my-lab",
            "subscription": "manifests-spillway",
            "dead_letter_topic": "manifests-dead",
        }));

        assert_eq!(table.min_lease_secs, 60);
        assert_eq!(table.max_lease_secs, 3600);
        assert_eq!(table.max_outstanding_messages, 100);
        assert_eq!(table.credentials, GoogleCredentials::ApplicationDefault);
        assert_eq!(
            table.subscription_name(),
            "projects/my-lab/subscriptions/manifests-spillway"
        );
        assert!(problems(&[table]).is_empty());
    }

    #[test]
    fn duplicate_subscription_and_same_topics_are_reported() {
        let first = table(serde_json::json!({
            "project": "my-lab",
            "subscription": "s",
            "topic": "t",
            "dead_letter_topic": "t",
            "credentials": "anonymous",
        }));
        let second = first.clone();

        let problems = problems(&[first, second]);

        assert!(
            problems
                .iter()
                .any(|p| p.contains("intake.pubsub[0].dead_letter_topic")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("intake.pubsub[1].subscription")),
            "{problems:?}"
        );
    }
}
