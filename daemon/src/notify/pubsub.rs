//! Notices to a Pub/Sub topic. The message data is the notice's JSON, with the
//! attributes `job_id` and `state`.

use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;

use super::{BoxError, JobNotice, Notifier, NotifyError};
use crate::config::PubsubNotifyConfig;
use crate::intake::pubsub::{connect_publisher, probe_topic, publish};

/// Sends notices to one Pub/Sub topic.
pub struct PubsubNotifier {
    config: PubsubNotifyConfig,
    publisher: Publisher,
    topic_name: String,
    target: String,
}

impl PubsubNotifier {
    /// Builds the publisher for the topic's endpoint and credentials. Sends no request.
    pub async fn connect(config: PubsubNotifyConfig) -> Result<Self, NotifyError> {
        let topic_name = config.topic_name();
        let target = config.target();
        let publisher =
            connect_publisher(&topic_name, config.endpoint.as_deref(), config.credentials)
                .await
                .map_err(|source| NotifyError {
                    operation: "connect",
                    target: target.clone(),
                    source: Box::new(source),
                })?;
        Ok(Self {
            config,
            publisher,
            topic_name,
            target,
        })
    }
}

#[async_trait::async_trait]
impl Notifier for PubsubNotifier {
    fn target(&self) -> &str {
        &self.target
    }

    async fn send(&self, notice: &JobNotice, body: &str) -> Result<(), BoxError> {
        let message = Message::new()
            .set_data(body.to_string())
            .set_attributes([("job_id", &notice.job_id), ("state", &notice.state)]);
        publish(&self.publisher, &self.topic_name, message).await?;
        Ok(())
    }

    async fn probe(&self) -> Result<String, BoxError> {
        let config = &self.config;
        probe_topic(
            &self.topic_name,
            config.endpoint.as_deref(),
            config.credentials,
        )
        .await?;
        Ok(format!("{} exists", self.topic_name))
    }
}
