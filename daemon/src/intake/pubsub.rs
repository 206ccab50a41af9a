//! Intake from Google Cloud Pub/Sub: a streaming pull on one subscription through
//! Google's `google-cloud-pubsub` client.
//!
//! A message is *held* from the receive that returned it until the daemon acknowledges
//! it (its job is durable in the ledger), dead-letters it, or releases it after a
//! failed admission. The client (version 1.7.0) extends the lease of every message
//! that it has delivered and not yet seen acknowledged. It checks every 3 s, and when
//! less than about 5 s of a message's ack deadline is left, it sets the deadline to
//! `min_lease_secs` from now. It stops extending `max_lease_secs` after the receive,
//! and Pub/Sub then delivers the message again once its deadline passes. The client
//! offers no explicit `ModifyAckDeadline`, so these two settings are the only handles
//! on the lease.
//!
//! Flow control: the streaming pull requests at most `max_outstanding_messages`
//! unacknowledged messages at a time. The client
//! acknowledges in batches of at most 1000 ack ids per request, and that setting is
//! capped at 1000 too. Pub/Sub rejects requests over 524288 bytes, so a full batch
//! fits while ack ids stay under 524 bytes.
//! NOTE: the batch size is the client's constant, not a setting, so the bound holds
//! only as long as the client keeps it and Pub/Sub's ack ids stay that short.
//!
//! A rejected manifest is published to the configured dead-letter topic with the
//! original data and the attributes `reason`, `errors` (the validation errors as
//! JSON), `source_subscription`, `source_message_id` and `delivery_count`, and is then
//! acknowledged. Reasons and error lists longer than 1024 bytes, Pub/Sub's attribute
//! value limit, are cut and end in ` [cut]`. A message's ordering key travels as the
//! attribute `ordering_key`. The subscription's own dead-letter policy, when it has
//! one, catches messages that the daemon cannot even dead-letter. Only with such a
//! policy does Pub/Sub count delivery attempts. Without it every delivery counts as
//! the first, and `max_deliveries` never applies.
//! NOTE: the emulator accepts longer attribute values, so the tests do not check the
//! 1024-byte limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_auth::credentials::Credentials;
use google_cloud_auth::credentials::anonymous::Builder as AnonymousCredentials;
use google_cloud_pubsub::client::{Publisher, Subscriber};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Delivery, IntakeError, IntakeSource};
use crate::config::{GoogleCredentials, PubsubSubscriptionConfig};
use spillway_common::process::error_chain;

/// How long one receive waits for the first message.
const RECEIVE_WAIT: Duration = Duration::from_secs(2);
/// Time allowed for one publish or confirmed acknowledgement, retries included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum size of an attribute value that Pub/Sub accepts, in bytes.
const MAX_ATTRIBUTE_BYTES: usize = 1024;
/// Marker appended to an attribute value that was cut.
const CUT_MARKER: &str = " [cut]";
/// Delay before a released message is handed back to Pub/Sub, which spaces the
/// retries of a message whose admission keeps failing.
const RELEASE_DELAY: Duration = Duration::from_secs(5);

/// A step that did not finish in time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {} s", .0.as_secs())]
pub struct TimedOut(pub Duration);

/// An acknowledgement of a message that this source does not hold.
#[derive(Debug, thiserror::Error)]
#[error("message {message_id} is not held by this daemon")]
struct NotHeld {
    message_id: String,
}

/// The end of the streaming pull, which the client reports after a shutdown.
#[derive(Debug, thiserror::Error)]
#[error("the streaming pull ended")]
struct StreamEnded;

/// Returns the credentials to give a Google client, or `None` for the client's own
/// Application Default Credentials.
pub fn credentials(kind: GoogleCredentials) -> Option<Credentials> {
    match kind {
        GoogleCredentials::ApplicationDefault => None,
        GoogleCredentials::Anonymous => Some(AnonymousCredentials::new().build()),
    }
}

/// Builds a publisher for the topic `topic_name` (`projects/P/topics/T`). Sends no
/// request, so an unreachable endpoint shows up at the first publish.
pub async fn connect_publisher(
    topic_name: &str,
    endpoint: Option<&str>,
    kind: GoogleCredentials,
) -> Result<Publisher, IntakeError> {
    let mut builder = Publisher::builder(topic_name);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(credentials) = credentials(kind) {
        builder = builder.with_credentials(credentials);
    }
    builder.build().await.map_err(|source| IntakeError {
        operation: "connect_publisher",
        queue: topic_name.to_string(),
        source: Box::new(source),
    })
}

/// Publishes one message and waits up to [`REQUEST_TIMEOUT`] for its message id.
pub async fn publish(
    publisher: &Publisher,
    topic_name: &str,
    message: Message,
) -> Result<String, IntakeError> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| IntakeError {
        operation: "publish",
        queue: topic_name.to_string(),
        source,
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, publisher.publish(message)).await {
        Ok(Ok(message_id)) => Ok(message_id),
        Ok(Err(source)) => Err(error(Box::new(source))),
        Err(_) => Err(error(Box::new(TimedOut(REQUEST_TIMEOUT)))),
    }
}

/// Reads a subscription and its dead-letter topic through the admin API, and returns
/// a one-line description for `spillway check-config`.
pub async fn probe(config: &PubsubSubscriptionConfig) -> Result<String, IntakeError> {
    use google_cloud_pubsub::client::SubscriptionAdmin;

    let name = config.subscription_name();
    let mut subscriptions = SubscriptionAdmin::builder();
    if let Some(endpoint) = &config.endpoint {
        subscriptions = subscriptions.with_endpoint(endpoint);
    }
    if let Some(credentials) = credentials(config.credentials) {
        subscriptions = subscriptions.with_credentials(credentials);
    }
    let subscriptions = subscriptions
        .build()
        .await
        .map_err(intake_error("connect_admin", &name))?;
    let subscription = subscriptions
        .get_subscription()
        .set_subscription(&name)
        .send()
        .await
        .map_err(intake_error("get_subscription", &name))?;
    let dead_letter_topic = config.dead_letter_topic_name();
    probe_topic(
        &dead_letter_topic,
        config.endpoint.as_deref(),
        config.credentials,
    )
    .await?;

    let policy = match &subscription.dead_letter_policy {
        Some(policy) => format!(
            "its dead-letter policy moves messages to {} after {} delivery attempts",
            policy.dead_letter_topic, policy.max_delivery_attempts
        ),
        None => "it has no dead-letter policy, so delivery attempts are not counted".into(),
    };
    Ok(format!(
        "{name} reads {}, ack deadline {} s; dead-letter topic {dead_letter_topic} exists; {policy}",
        subscription.topic, subscription.ack_deadline_seconds
    ))
}

/// Reads a topic through the admin API, which fails when it does not exist.
pub async fn probe_topic(
    topic_name: &str,
    endpoint: Option<&str>,
    kind: GoogleCredentials,
) -> Result<(), IntakeError> {
    use google_cloud_pubsub::client::TopicAdmin;

    let mut topics = TopicAdmin::builder();
    if let Some(endpoint) = endpoint {
        topics = topics.with_endpoint(endpoint);
    }
    if let Some(credentials) = credentials(kind) {
        topics = topics.with_credentials(credentials);
    }
    let topics = topics
        .build()
        .await
        .map_err(intake_error("connect_admin", topic_name))?;
    topics
        .get_topic()
        .set_topic(topic_name)
        .send()
        .await
        .map_err(intake_error("get_topic", topic_name))?;
    Ok(())
}

/// Returns a function that wraps an error of `operation` on `queue`.
fn intake_error<E>(operation: &'static str, queue: &str) -> impl Fn(E) -> IntakeError + use<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let queue = queue.to_string();
    move |source| IntakeError {
        operation,
        queue: queue.clone(),
        source: Box::new(source),
    }
}

/// A received message that the daemon has not yet acknowledged, dead-lettered or
/// released. Dropping a handler without acknowledging it nacks the message.
struct HeldMessage {
    handler: Handler,
    /// Ordering key, copied into the dead letter's attributes.
    ordering_key: String,
}

/// The intake source of one Pub/Sub subscription.
pub struct PubsubSource {
    config: Arc<PubsubSubscriptionConfig>,
    /// `projects/P/subscriptions/S`, the queue name in logs and metrics.
    name: String,
    subscriber: Subscriber,
    /// Started by the first receive, so a source used only for the backlog has none.
    puller: Option<Puller>,
    dead_letters: Publisher,
    held: HashMap<String, HeldMessage>,
    /// Released messages and the time at which each is nacked.
    released: Vec<(Instant, Handler)>,
}

impl PubsubSource {
    /// Builds the subscriber and the dead-letter publisher. Sends no request.
    pub async fn connect(config: PubsubSubscriptionConfig) -> Result<Self, IntakeError> {
        let name = config.subscription_name();
        let mut builder = Subscriber::builder();
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(credentials) = credentials(config.credentials) {
            builder = builder.with_credentials(credentials);
        }
        let subscriber = builder.build().await.map_err(|source| IntakeError {
            operation: "connect",
            queue: name.clone(),
            source: Box::new(source),
        })?;
        let dead_letters = connect_publisher(
            &config.dead_letter_topic_name(),
            config.endpoint.as_deref(),
            config.credentials,
        )
        .await?;

        Ok(Self {
            config: Arc::new(config),
            name,
            subscriber,
            puller: None,
            dead_letters,
            held: HashMap::new(),
            released: Vec::new(),
        })
    }

    /// Opens the streaming pull and starts the task that forwards its messages.
    fn start_puller(&self) -> Puller {
        let config = &self.config;
        let stream = self
            .subscriber
            .subscribe(&self.name)
            .set_max_lease_extension(Duration::from_secs(config.min_lease_secs))
            .set_max_lease(Duration::from_secs(config.max_lease_secs))
            .set_max_outstanding_messages(i64::from(config.max_outstanding_messages))
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build();
        let (sender, messages) = mpsc::channel(config.max_outstanding_messages as usize);
        let stop = CancellationToken::new();
        let task = tokio::spawn(forward_messages(
            stream,
            sender,
            stop.clone(),
            self.name.clone(),
        ));
        Puller {
            messages,
            stop,
            task,
        }
    }

    /// Stops the streaming pull. Pub/Sub delivers the messages that it had sent and
    /// that no receive returned yet again at once.
    async fn stop_puller(&mut self) {
        let Some(puller) = self.puller.take() else {
            return;
        };
        puller.stop.cancel();
        drop(puller.messages);
        if let Err(error) = puller.task.await {
            warn!(queue = %self.name, error = %error, "Pub/Sub streaming pull task failed");
        }
    }

    /// Nacks the released messages whose delay has passed.
    fn nack_released(&mut self) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.released)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.released = waiting;
        for (_, handler) in due {
            handler.nack();
        }
    }

    /// Records a received message as held and turns it into a delivery.
    fn hold(&mut self, message: Message, handler: Handler) -> Delivery {
        let delivery_count = handler
            .delivery_attempt()
            .and_then(|attempt| u64::try_from(attempt).ok())
            .unwrap_or(1);
        let Message {
            data,
            message_id,
            ordering_key,
            ..
        } = message;
        let held = HeldMessage {
            handler,
            ordering_key,
        };
        // A message delivered again while held replaces the older delivery, whose
        // handler nacks an ack id that Pub/Sub no longer honours.
        self.held.insert(message_id.clone(), held);
        Delivery {
            message_id,
            body: data.to_vec(),
            delivery_count,
        }
    }

    fn take(
        &mut self,
        delivery: &Delivery,
        operation: &'static str,
    ) -> Result<HeldMessage, IntakeError> {
        self.held
            .remove(&delivery.message_id)
            .ok_or_else(|| IntakeError {
                operation,
                queue: self.name.clone(),
                source: Box::new(NotHeld {
                    message_id: delivery.message_id.clone(),
                }),
            })
    }

    /// Acknowledges a message. Only a subscription with exactly-once delivery confirms
    /// the acknowledgement. On other subscriptions the client sends it with its next
    /// batch, and a lost one means a redelivery that finds the job in the ledger.
    async fn acknowledge(&self, handler: Handler) -> Result<(), IntakeError> {
        let Handler::ExactlyOnce(handler) = handler else {
            handler.ack();
            return Ok(());
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, handler.confirmed_ack()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(self.error("ack")(Box::new(source))),
            Err(_) => Err(self.error("ack")(Box::new(TimedOut(REQUEST_TIMEOUT)))),
        }
    }

    fn error(
        &self,
        operation: &'static str,
    ) -> impl Fn(Box<dyn std::error::Error + Send + Sync>) -> IntakeError + '_ {
        move |source| IntakeError {
            operation,
            queue: self.name.clone(),
            source,
        }
    }
}

impl IntakeSource for PubsubSource {
    fn queue(&self) -> &str {
        &self.name
    }

    async fn receive(&mut self) -> Result<Vec<Delivery>, IntakeError> {
        self.nack_released();
        if self.puller.is_none() {
            self.puller = Some(self.start_puller());
        }
        let puller = self.puller.as_mut().expect("puller is started");

        // A channel receive is cancel-safe, so the timeout loses no message, and the
        // streaming pull itself is never interrupted.
        let first = match tokio::time::timeout(RECEIVE_WAIT, puller.messages.recv()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(first) => first,
        };
        let mut received = Vec::new();
        let mut failure = None;
        match first {
            Some(Ok(pair)) => received.push(pair),
            Some(Err(error)) => failure = Some(error),
            None => {
                self.stop_puller().await;
                return Err(self.error("receive")(Box::new(StreamEnded)));
            }
        }

        // Take whatever else has arrived, without waiting.
        let limit = self.config.max_outstanding_messages as usize;
        while failure.is_none() && received.len() < limit {
            match puller.messages.try_recv() {
                Ok(Ok(pair)) => received.push(pair),
                Ok(Err(error)) => failure = Some(error),
                Err(_) => break,
            }
        }

        let deliveries: Vec<Delivery> = received
            .into_iter()
            .map(|(message, handler)| self.hold(message, handler))
            .collect();
        if let Some(error) = failure {
            // The client gave up on the stream, so a new one opens on the next
            // receive. Deliveries taken before the error are still admitted.
            self.stop_puller().await;
            if deliveries.is_empty() {
                return Err(self.error("receive")(Box::new(error)));
            }
            warn!(queue = %self.name, error = %error_chain(&error), "Pub/Sub streaming pull failed; reopening it");
        }
        if !deliveries.is_empty() {
            debug!(queue = %self.name, messages = deliveries.len(), "messages received");
        }
        Ok(deliveries)
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), IntakeError> {
        let held = self.take(delivery, "ack")?;
        self.acknowledge(held.handler).await
    }

    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
        errors_json: &str,
    ) -> Result<(), IntakeError> {
        let held = self.take(delivery, "dead_letter")?;
        let mut attributes = vec![
            ("reason", attribute_value(reason)),
            ("errors", attribute_value(errors_json)),
            ("source_subscription", self.name.clone()),
            ("source_message_id", delivery.message_id.clone()),
            ("delivery_count", delivery.delivery_count.to_string()),
        ];
        // Kept as an attribute: a publish with an ordering key needs ordering on the
        // dead-letter topic's subscribers too.
        if !held.ordering_key.is_empty() {
            attributes.push(("ordering_key", attribute_value(&held.ordering_key)));
        }
        let message = Message::new()
            .set_data(delivery.body.clone())
            .set_attributes(attributes);
        let topic = self.config.dead_letter_topic_name();
        if let Err(error) = publish(&self.dead_letters, &topic, message).await {
            // Handed back after a delay, so the dead letter is tried again on the
            // message's next delivery without a tight loop.
            self.released
                .push((Instant::now() + RELEASE_DELAY, held.handler));
            return Err(error);
        }
        self.acknowledge(held.handler).await
    }

    async fn release(&mut self, delivery: &Delivery) {
        // The client keeps extending the lease until the nack, so the message waits
        // RELEASE_DELAY before Pub/Sub delivers it again.
        if let Some(held) = self.held.remove(&delivery.message_id) {
            self.released
                .push((Instant::now() + RELEASE_DELAY, held.handler));
        }
    }

    async fn close(&mut self) {
        // Nack everything still held, so that another daemon receives it at once.
        self.released.clear();
        self.held.clear();
        self.stop_puller().await;
    }

    async fn backlog(&mut self) -> Result<u64, IntakeError> {
        // NOTE: the Pub/Sub API has no message count, because the backlog is a Cloud
        // Monitoring metric (subscription/num_undelivered_messages). This counts only
        // the messages that this source received and has not yet acknowledged.
        Ok((self.held.len() + self.released.len()) as u64)
    }

    fn max_deliveries(&self) -> u64 {
        self.config.max_deliveries
    }
}

impl Drop for PubsubSource {
    fn drop(&mut self) {
        if let Some(puller) = &self.puller {
            puller.stop.cancel();
        }
    }
}

/// A message from the streaming pull, or the error that ended it.
type Pulled = Result<(Message, Handler), google_cloud_pubsub::Error>;

/// The streaming pull of one source and the task that forwards its messages.
struct Puller {
    messages: mpsc::Receiver<Pulled>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Forwards the stream's messages to `sender` until `stop`, an error or a closed
/// channel, then shuts the stream down. Messages that the client leased and did not
/// forward are nacked.
async fn forward_messages(
    mut stream: MessageStream,
    sender: mpsc::Sender<Pulled>,
    stop: CancellationToken,
    queue: String,
) {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = stream.next() => next,
        };
        let Some(pulled) = next else {
            break;
        };
        let failed = pulled.is_err();
        let sent = tokio::select! {
            () = stop.cancelled() => break,
            sent = sender.send(pulled) => sent,
        };
        if sent.is_err() || failed {
            break;
        }
    }

    let shutdown = stream.shutdown_token();
    drop(stream);
    if tokio::time::timeout(REQUEST_TIMEOUT, shutdown.shutdown())
        .await
        .is_err()
    {
        warn!(
            queue,
            "Pub/Sub stream shutdown timed out; held messages reappear after their ack deadline"
        );
    }
}

/// Cuts a value to [`MAX_ATTRIBUTE_BYTES`] on a character boundary, with a marker.
fn attribute_value(value: &str) -> String {
    if value.len() <= MAX_ATTRIBUTE_BYTES {
        return value.to_string();
    }
    let mut end = MAX_ATTRIBUTE_BYTES - CUT_MARKER.len();
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARKER}", &value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_attribute_is_kept() {
        assert_eq!(attribute_value("bad manifest"), "bad manifest");
    }

    #[test]
    fn long_attribute_is_cut_on_a_char_boundary() {
        let value = "é".repeat(MAX_ATTRIBUTE_BYTES);

        let cut = attribute_value(&value);

        assert!(cut.len() <= MAX_ATTRIBUTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with(CUT_MARKER), "{cut}");
    }
}
