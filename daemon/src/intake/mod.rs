//! Intake: where manifests arrive. Each queue kind is one source behind
//! [`IntakeSource`]; the admission loop is the same for all of them.
//!
//! A message is acknowledged only after its job and every task are durable in the
//! ledger; a manifest that fails validation goes to the source's dead-letter
//! destination with the errors, and is then acknowledged.

pub mod pubsub;
pub mod redis_stream;
pub mod sqs;

use std::future::Future;

/// One message taken from a source and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Source-specific message id (a stream entry id, an SQS or Pub/Sub message id).
    pub message_id: String,
    pub body: Vec<u8>,
    /// Deliveries so far, counting this one, when the source knows it.
    pub delivery_count: u64,
}

/// Errors from a source, naming the queue.
#[derive(Debug, thiserror::Error)]
#[error("intake {operation} failed on {queue}")]
pub struct IntakeError {
    pub operation: &'static str,
    pub queue: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A queue that manifests arrive on.
pub trait IntakeSource: Send {
    /// Queue name for logs and metric labels.
    fn queue(&self) -> &str;

    /// Waits up to a few seconds for messages, including ones reclaimed from
    /// consumers that stopped.
    fn receive(&mut self) -> impl Future<Output = Result<Vec<Delivery>, IntakeError>> + Send;

    /// Acknowledges a message so that it is not delivered again.
    fn ack(&mut self, delivery: &Delivery) -> impl Future<Output = Result<(), IntakeError>> + Send;

    /// Sends a message to the dead-letter destination with the reason, then
    /// acknowledges it.
    fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
        errors_json: &str,
    ) -> impl Future<Output = Result<(), IntakeError>> + Send;

    /// Gives up a message that could not be admitted, without acknowledging it, so
    /// that the source delivers it again later. The default does nothing, for sources
    /// that redeliver on their own schedule.
    fn release(&mut self, delivery: &Delivery) -> impl Future<Output = ()> + Send {
        let _ = delivery;
        async {}
    }

    /// Stops background work of the source once the intake loop has ended.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Counts messages waiting or held without acknowledgement.
    fn backlog(&mut self) -> impl Future<Output = Result<u64, IntakeError>> + Send;

    /// Deliveries after which a message is dead-lettered instead of admitted.
    fn max_deliveries(&self) -> u64;
}
