//! Intake from Amazon SQS or an SQS-compatible service: long-polled batch receives.
//!
//! A message is *held* from the receive that returned it until the daemon deletes it
//! (its job is durable in the ledger), dead-letters it, or releases it after a failed
//! admission. While a message is held, a background task renews its visibility
//! timeout every third of `visibility_timeout_secs`, so neither a slow admission nor
//! a message waiting behind others of its batch becomes visible to another consumer.
//! A released message, or one held by a daemon that died, becomes visible again when
//! its last timeout runs out; SQS's `ApproximateReceiveCount` is the delivery count.
//!
//! A rejected manifest is sent to the configured dead-letter queue with the message
//! attributes `reason`, `errors` (the validation errors as JSON), `source_queue_url`,
//! `source_message_id` and `delivery_count`, and is then deleted. A message that
//! cannot be dead-lettered stays on the queue, so the queue's own redrive policy
//! moves it once its `maxReceiveCount` is reached.
//!
//! FIFO queues (names ending in `.fifo`) need a message group id and a deduplication
//! id on every send. Dead letters keep the message's group and use its message id
//! for deduplication, so a dead letter sent twice after a crash arrives once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, Message, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName,
};
use spillway_common::digest::Sha256Hex;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Delivery, IntakeError, IntakeSource};
use crate::config::SqsQueueConfig;
use spillway_common::process::error_chain;

/// Entries per `ChangeMessageVisibilityBatch` request, SQS's maximum.
const MAX_BATCH_ENTRIES: usize = 10;
/// Time allowed to open a connection to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed per request on top of the long-poll wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `reason` or `errors` attribute sent with a dead letter. Longer values are
/// cut to leave room for the manifest within SQS's message size limit, which counts
/// the attributes too.
const MAX_ATTRIBUTE_BYTES: usize = 16 * 1024;
/// Message group of dead letters whose message had none (it came from a standard queue).
const DEAD_LETTER_GROUP: &str = "spillway-dead-letters";
/// Provider name under which the SDK reports credentials read from files.
const FILE_CREDENTIALS_PROVIDER: &str = "spillway-credential-files";

/// Failure to read a credential file named in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("failed to read {key} {}", path.display())]
struct CredentialFileError {
    key: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// An acknowledgement of a message that this source does not hold (already deleted,
/// dead-lettered or released).
#[derive(Debug, thiserror::Error)]
#[error("message {message_id} is not held by this daemon")]
struct NotHeld {
    message_id: String,
}

/// An attribute that SQS did not return or returned in an unexpected form.
#[derive(Debug, thiserror::Error)]
#[error("queue attribute {name} is missing or not a number: {value:?}")]
struct BadAttribute {
    name: &'static str,
    value: Option<String>,
}

/// A failed entry of a batch request.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
struct BatchEntryError {
    code: String,
    message: String,
}

/// An SQS client for one configured queue and its dead-letter queue. Clones share the
/// client and its connection pool.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    config: Arc<SqsQueueConfig>,
}

impl SqsQueue {
    /// Builds the client for the queue's region, endpoint and credentials. Sends no
    /// request, so an unreachable queue shows up at the first receive.
    pub async fn connect(config: SqsQueueConfig) -> Result<Self, IntakeError> {
        let credentials = file_credentials(&config).map_err(|source| IntakeError {
            operation: "read_credentials",
            queue: config.queue_url.clone(),
            source: Box::new(source),
        })?;

        let wait = Duration::from_secs(config.wait_time_secs);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(wait + REQUEST_TIMEOUT)
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
            config: Arc::new(config),
        })
    }

    pub fn url(&self) -> &str {
        &self.config.queue_url
    }

    pub fn config(&self) -> &SqsQueueConfig {
        &self.config
    }

    fn error<E>(&self, operation: &'static str) -> impl Fn(E) -> IntakeError + '_
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |source| IntakeError {
            operation,
            queue: self.config.queue_url.clone(),
            source: Box::new(source),
        }
    }

    /// Counts the messages of the queue at `url` that wait or are received and not
    /// yet deleted, as SQS approximates them.
    pub async fn approximate_messages(&self, url: &str) -> Result<u64, IntakeError> {
        let error = |source| IntakeError {
            operation: "get_queue_attributes",
            queue: url.to_string(),
            source,
        };
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|source| error(Box::new(source)))?;

        let attributes = output.attributes();
        let count = |name: QueueAttributeName, label: &'static str| {
            let value = attributes.and_then(|attributes| attributes.get(&name));
            value
                .and_then(|value| value.parse::<u64>().ok())
                .ok_or_else(|| {
                    error(Box::new(BadAttribute {
                        name: label,
                        value: value.cloned(),
                    }))
                })
        };
        let waiting = count(
            QueueAttributeName::ApproximateNumberOfMessages,
            "ApproximateNumberOfMessages",
        )?;
        let in_flight = count(
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            "ApproximateNumberOfMessagesNotVisible",
        )?;
        Ok(waiting + in_flight)
    }

    /// Sends a manifest and returns the SQS message id. On a FIFO queue the job id
    /// (or, for a manifest without one, the body's SHA-256) is both the message group
    /// and the deduplication id, so a manifest sent again within SQS's five-minute
    /// deduplication interval is not delivered twice.
    pub async fn send_manifest(
        &self,
        body: &str,
        job_id: Option<&str>,
    ) -> Result<String, IntakeError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.config.queue_url)
            .message_body(body);
        if self.config.is_fifo() {
            let key = job_id
                .map(str::to_string)
                .unwrap_or_else(|| Sha256Hex::of(body.as_bytes()).to_string());
            request = request
                .message_group_id(&key)
                .message_deduplication_id(&key);
        }
        let output = request.send().await.map_err(self.error("send"))?;
        Ok(output.message_id().unwrap_or_default().to_string())
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), IntakeError> {
        self.client
            .delete_message()
            .queue_url(&self.config.queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(self.error("delete"))?;
        Ok(())
    }

    async fn send_dead_letter(
        &self,
        delivery: &Delivery,
        group_id: Option<&str>,
        reason: &str,
        errors_json: &str,
    ) -> Result<(), IntakeError> {
        let config = &self.config;
        let mut request = self
            .client
            .send_message()
            .queue_url(&config.dead_letter_queue_url)
            .message_body(String::from_utf8_lossy(&delivery.body))
            .message_attributes("reason", string_attribute(reason))
            .message_attributes("errors", string_attribute(errors_json))
            .message_attributes("source_queue_url", string_attribute(&config.queue_url))
            .message_attributes("source_message_id", string_attribute(&delivery.message_id))
            .message_attributes("delivery_count", number_attribute(delivery.delivery_count));
        if config.dead_letter_is_fifo() {
            request = request
                .message_group_id(group_id.unwrap_or(DEAD_LETTER_GROUP))
                .message_deduplication_id(&delivery.message_id);
        }
        request.send().await.map_err(self.error("dead_letter"))?;
        Ok(())
    }

    /// Sets the visibility timeout of up to ten messages, given as (message id,
    /// receipt handle). Returns the messages whose change failed, with the reason.
    async fn change_visibility(
        &self,
        messages: &[(String, String)],
        timeout_secs: i32,
    ) -> Result<Vec<(String, BatchEntryError)>, IntakeError> {
        let entries = messages
            .iter()
            .enumerate()
            .map(|(index, (_, receipt_handle))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(receipt_handle)
                    .visibility_timeout(timeout_secs)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let output = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.config.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(self.error("change_visibility"))?;

        let failed = output
            .failed()
            .iter()
            .filter_map(|entry| {
                let (message_id, _) = messages.get(entry.id().parse::<usize>().ok()?)?;
                let error = BatchEntryError {
                    code: entry.code().to_string(),
                    message: entry.message().unwrap_or_default().to_string(),
                };
                Some((message_id.clone(), error))
            })
            .collect();
        Ok(failed)
    }
}

/// Reads `access_key_id_file` and `secret_access_key_file` when both are set.
fn file_credentials(config: &SqsQueueConfig) -> Result<Option<Credentials>, CredentialFileError> {
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
                path: path.to_path_buf(),
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

/// Builds a `String` message attribute, cut to [`MAX_ATTRIBUTE_BYTES`] and with the
/// control characters that SQS rejects replaced by U+FFFD.
fn string_attribute(value: &str) -> MessageAttributeValue {
    let mut end = value.len().min(MAX_ATTRIBUTE_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let mut text: String = value[..end]
        .chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if c < ' ' => char::REPLACEMENT_CHARACTER,
            c => c,
        })
        .collect();
    if end < value.len() {
        text.push_str(" [cut]");
    }
    // SQS rejects empty attribute values.
    if text.is_empty() {
        text.push('-');
    }
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(text)
        .build()
        .expect("data type is set")
}

fn number_attribute(value: u64) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .expect("data type is set")
}

/// A received message that the daemon has not yet deleted, dead-lettered or released.
struct HeldMessage {
    receipt_handle: String,
    /// The message group, on a FIFO queue.
    group_id: Option<String>,
}

/// Held messages by SQS message id, shared with the task that renews their visibility.
type HeldMessages = Arc<Mutex<HashMap<String, HeldMessage>>>;

/// The task that renews the visibility of held messages.
struct Renewer {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The intake source of one SQS queue.
pub struct SqsSource {
    queue: SqsQueue,
    held: HeldMessages,
    /// Started by the first receive, so a source used only for the backlog has none.
    renewer: Option<Renewer>,
}

impl SqsSource {
    pub fn new(queue: SqsQueue) -> Self {
        Self {
            queue,
            held: HeldMessages::default(),
            renewer: None,
        }
    }

    fn start_renewer(&mut self) {
        if self.renewer.is_some() {
            return;
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew_visibility(
            self.queue.clone(),
            Arc::clone(&self.held),
            stop.clone(),
        ));
        self.renewer = Some(Renewer { stop, task });
    }

    /// Records a received message as held and turns it into a delivery. Returns
    /// `None` for a message without id or receipt handle, which cannot be deleted.
    fn hold(&self, message: Message) -> Option<Delivery> {
        let Message {
            message_id,
            receipt_handle,
            body,
            attributes,
            ..
        } = message;
        let (Some(message_id), Some(receipt_handle)) = (message_id, receipt_handle) else {
            warn!(queue = %self.queue.url(), "received a message without id or receipt handle; leaving it to the redrive policy");
            return None;
        };
        let attributes = attributes.unwrap_or_default();
        let delivery_count = attributes
            .get(&MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|count| count.parse().ok())
            .unwrap_or(1);
        let group_id = attributes
            .get(&MessageSystemAttributeName::MessageGroupId)
            .cloned();

        let held = HeldMessage {
            receipt_handle,
            group_id,
        };
        self.lock_held().insert(message_id.clone(), held);
        Some(Delivery {
            message_id,
            body: body.unwrap_or_default().into_bytes(),
            delivery_count,
        })
    }

    /// Stops holding a message and returns what deleting it needs.
    fn take(
        &self,
        delivery: &Delivery,
        operation: &'static str,
    ) -> Result<HeldMessage, IntakeError> {
        self.lock_held()
            .remove(&delivery.message_id)
            .ok_or_else(|| IntakeError {
                operation,
                queue: self.queue.url().to_string(),
                source: Box::new(NotHeld {
                    message_id: delivery.message_id.clone(),
                }),
            })
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldMessage>> {
        self.held.lock().expect("held messages lock")
    }
}

impl Drop for SqsSource {
    fn drop(&mut self) {
        if let Some(renewer) = &self.renewer {
            renewer.stop.cancel();
        }
    }
}

impl IntakeSource for SqsSource {
    fn queue(&self) -> &str {
        self.queue.url()
    }

    async fn receive(&mut self) -> Result<Vec<Delivery>, IntakeError> {
        self.start_renewer();
        let config = self.queue.config();
        let output = self
            .queue
            .client
            .receive_message()
            .queue_url(&config.queue_url)
            .max_number_of_messages(config.batch_size as i32)
            .wait_time_seconds(config.wait_time_secs as i32)
            .visibility_timeout(config.visibility_timeout_secs as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .map_err(self.queue.error("receive"))?;

        let deliveries: Vec<Delivery> = output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| self.hold(message))
            .collect();
        if !deliveries.is_empty() {
            debug!(queue = %config.queue_url, messages = deliveries.len(), "messages received");
        }
        Ok(deliveries)
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), IntakeError> {
        let held = self.take(delivery, "delete")?;
        self.queue.delete(&held.receipt_handle).await
    }

    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
        errors_json: &str,
    ) -> Result<(), IntakeError> {
        // Taken before the send: should the send fail, the message is no longer
        // renewed, becomes visible again and is retried on its next delivery.
        let held = self.take(delivery, "dead_letter")?;
        self.queue
            .send_dead_letter(delivery, held.group_id.as_deref(), reason, errors_json)
            .await?;
        self.queue.delete(&held.receipt_handle).await
    }

    async fn release(&mut self, delivery: &Delivery) {
        // Only the renewals stop. The message becomes visible when its current
        // timeout ends, which spaces the retries by up to visibility_timeout_secs.
        self.lock_held().remove(&delivery.message_id);
    }

    async fn close(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.stop.cancel();
            if let Err(error) = renewer.task.await {
                warn!(queue = %self.queue.url(), error = %error, "visibility renewal task failed");
            }
        }

        // Messages still held (an acknowledgement that failed before the stop) are
        // made visible at once, so that another daemon takes them without waiting.
        let held: Vec<(String, String)> = self
            .lock_held()
            .drain()
            .map(|(message_id, held)| (message_id, held.receipt_handle))
            .collect();
        for chunk in held.chunks(MAX_BATCH_ENTRIES) {
            if let Err(error) = self.queue.change_visibility(chunk, 0).await {
                warn!(queue = %self.queue.url(), messages = chunk.len(), error = %error_chain(&error), "failed to return held messages to the queue; they reappear after their visibility timeout");
            }
        }
    }

    async fn backlog(&mut self) -> Result<u64, IntakeError> {
        let url = self.queue.url().to_string();
        self.queue.approximate_messages(&url).await
    }

    fn max_deliveries(&self) -> u64 {
        self.queue.config().max_deliveries
    }
}

/// Renews the visibility timeout of every held message every third of the timeout,
/// until `stop`. Each round of requests may take at most that third, so a slow
/// endpoint delays no round past the timeout of the messages it renews.
async fn renew_visibility(queue: SqsQueue, held: HeldMessages, stop: CancellationToken) {
    let timeout_secs = queue.config().visibility_timeout_secs;
    let period = Duration::from_secs(timeout_secs) / 3;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let messages: Vec<(String, String)> = held
            .lock()
            .expect("held messages lock")
            .iter()
            .map(|(message_id, held)| (message_id.clone(), held.receipt_handle.clone()))
            .collect();
        if messages.is_empty() {
            continue;
        }

        let deadline = tokio::time::Instant::now() + period;
        let mut extended = 0;
        for chunk in messages.chunks(MAX_BATCH_ENTRIES) {
            let renewing = queue.change_visibility(chunk, timeout_secs as i32);
            match tokio::time::timeout_at(deadline, renewing).await {
                Ok(Ok(failed)) => {
                    extended += chunk.len() - failed.len();
                    log_failed_renewals(&queue, &held, failed);
                }
                Ok(Err(error)) => {
                    warn!(queue = %queue.url(), messages = chunk.len(), error = %error_chain(&error), "failed to extend the visibility of held messages")
                }
                Err(_) => {
                    warn!(queue = %queue.url(), messages = chunk.len(), timeout_ms = period.as_millis() as u64, "extending the visibility of held messages timed out")
                }
            }
        }
        if extended > 0 {
            debug!(queue = %queue.url(), messages = extended, timeout_secs, "visibility extended");
        }
    }
}

/// Logs renewals that failed for messages still held. A message acknowledged while
/// its renewal was in flight fails too, and is skipped.
fn log_failed_renewals(
    queue: &SqsQueue,
    held: &HeldMessages,
    failed: Vec<(String, BatchEntryError)>,
) {
    let held = held.lock().expect("held messages lock");
    for (message_id, error) in failed {
        if held.contains_key(&message_id) {
            warn!(queue = %queue.url(), message_id, error = %error, "failed to extend the visibility of a held message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_attribute_is_cut_on_a_char_boundary() {
        let value = "é".repeat(MAX_ATTRIBUTE_BYTES);

        let attribute = string_attribute(&value);

        let text = attribute.string_value().unwrap();
        assert!(text.len() <= MAX_ATTRIBUTE_BYTES + " [cut]".len());
        assert!(text.ends_with(" [cut]"), "{}", &text[text.len() - 10..]);
    }

    #[test]
    fn control_characters_are_replaced() {
        let attribute = string_attribute("bad\u{1}value\nnext");

        assert_eq!(attribute.string_value(), Some("bad\u{FFFD}value\nnext"));
    }

    #[test]
    fn empty_attribute_gets_a_placeholder() {
        assert_eq!(string_attribute("").string_value(), Some("-"));
    }
}
