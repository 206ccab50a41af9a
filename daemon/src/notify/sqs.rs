//! Notices to an SQS queue. The message body is the notice's JSON, with the message
//! attributes `job_id` and `state`. On a FIFO queue the job id is the message group
//! and `JOB_ID:STATE` the deduplication id, so a notice sent twice within SQS's
//! five-minute deduplication interval arrives once.

use std::path::Path;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::MessageAttributeValue;

use super::{BoxError, JobNotice, Notifier, NotifyError};
use crate::config::SqsNotifyConfig;

/// Time allowed to open a connection to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed per request attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Provider name under which the SDK reports credentials read from files.
const FILE_CREDENTIALS_PROVIDER: &str = "spillway-credential-files";

/// Failure to read a credential file named in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("failed to read {key} {path}")]
struct CredentialFileError {
    key: &'static str,
    path: String,
    #[source]
    source: std::io::Error,
}

/// Sends notices to one SQS queue.
pub struct SqsNotifier {
    client: Client,
    config: SqsNotifyConfig,
    target: String,
}

impl SqsNotifier {
    /// Builds the client for the queue's region, endpoint and credentials. Sends no
    /// request.
    pub async fn connect(config: SqsNotifyConfig) -> Result<Self, NotifyError> {
        let target = config.target().unwrap_or_else(|| config.queue_url.clone());
        let credentials = file_credentials(&config).map_err(|source| NotifyError {
            operation: "read_credentials",
            target: target.clone(),
            source: Box::new(source),
        })?;

        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(timeouts);
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let sdk_config = loader.load().await;

        Ok(Self {
            client: Client::new(&sdk_config),
            config,
            target,
        })
    }
}

#[async_trait::async_trait]
impl Notifier for SqsNotifier {
    fn target(&self) -> &str {
        &self.target
    }

    async fn send(&self, notice: &JobNotice, body: &str) -> Result<(), BoxError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.config.queue_url)
            .message_body(body)
            .message_attributes("job_id", string_attribute(&notice.job_id))
            .message_attributes("state", string_attribute(&notice.state));
        if self.config.is_fifo() {
            request = request
                .message_group_id(&notice.job_id)
                .message_deduplication_id(format!("{}:{}", notice.job_id, notice.state));
        }
        request.send().await?;
        Ok(())
    }

    async fn probe(&self) -> Result<String, BoxError> {
        use aws_sdk_sqs::types::QueueAttributeName;

        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.config.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await?;
        let waiting = output
            .attributes()
            .and_then(|attributes| attributes.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .map_or("an unknown number of", String::as_str)
            .to_string();
        Ok(format!(
            "{} is reachable, with about {waiting} notices waiting",
            self.config.queue_url
        ))
    }
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// Reads `access_key_id_file` and `secret_access_key_file` when both are set.
fn file_credentials(config: &SqsNotifyConfig) -> Result<Option<Credentials>, CredentialFileError> {
    let (Some(key_path), Some(secret_path)) =
        (&config.access_key_id_file, &config.secret_access_key_file)
    else {
        return Ok(None);
    };
    let read = |key: &'static str, path: &Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .map_err(|source| CredentialFileError {
                key,
                path: path.display().to_string(),
                source,
            })
    };
    let access_key_id = read("access_key_id_file", key_path)?;
    let secret_access_key = read("secret_access_key_file", secret_path)?;
    Ok(Some(Credentials::new(
        access_key_id,
        secret_access_key,
        None,
        None,
        FILE_CREDENTIALS_PROVIDER,
    )))
}
