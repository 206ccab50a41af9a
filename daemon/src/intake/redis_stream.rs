//! The on-site intake: a Redis stream read through a consumer group.
//!
//! Each message has a field `manifest` with the manifest's JSON. Messages that a
//! stopped consumer held are claimed with `XAUTOCLAIM` once idle for
//! `claim_idle_secs`. Dead letters go to a second stream with fields `manifest`,
//! `reason`, `errors` (JSON) and `message_id`.

use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use spillway_common::ledger::LedgerConnection;

use super::{Delivery, IntakeError, IntakeSource};
use crate::config::RedisStreamConfig;

/// Field of a stream entry that carries the manifest.
pub const MANIFEST_FIELD: &str = "manifest";

/// How long one `XREADGROUP` blocks waiting for messages.
const BLOCK: Duration = Duration::from_secs(2);

pub struct RedisStreamSource {
    /// Connection used only for the blocking read, so it never delays other commands.
    blocking: LedgerConnection,
    conn: LedgerConnection,
    config: RedisStreamConfig,
    consumer: String,
}

impl RedisStreamSource {
    /// Connects and creates the consumer group (from the stream's first entry, so
    /// messages sent before the first daemon started are admitted too).
    pub async fn connect(
        url: &str,
        config: RedisStreamConfig,
        consumer: String,
    ) -> Result<Self, IntakeError> {
        let error = |operation| {
            let queue = config.stream.clone();
            move |source: redis::RedisError| IntakeError {
                operation,
                queue,
                source: Box::new(source),
            }
        };
        let connect_error = |source: spillway_common::ledger::LedgerError| IntakeError {
            operation: "connect",
            queue: config.stream.clone(),
            source: Box::new(source),
        };
        // Two connections: the blocking read holds one, and the ledger's 10 s response
        // timeout outlasts the 2 s block.
        let blocking = LedgerConnection::connect(url)
            .await
            .map_err(connect_error)?;
        let mut conn = LedgerConnection::connect(url)
            .await
            .map_err(connect_error)?;

        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(&config.stream, &config.group, "0")
            .await;
        match created {
            Ok(()) => {}
            Err(source) if source.to_string().contains("BUSYGROUP") => {}
            Err(source) => return Err(error("create_group")(source)),
        }

        Ok(Self {
            blocking,
            conn,
            config,
            consumer,
        })
    }

    fn error(&self, operation: &'static str) -> impl Fn(redis::RedisError) -> IntakeError + '_ {
        move |source| IntakeError {
            operation,
            queue: self.config.stream.clone(),
            source: Box::new(source),
        }
    }

    async fn reclaim(&mut self) -> Result<Vec<Delivery>, IntakeError> {
        let options = StreamAutoClaimOptions::default().count(self.config.batch_size);
        let idle_ms = self.config.claim_idle_secs * 1000;
        let reply: redis::streams::StreamAutoClaimReply = self
            .conn
            .clone()
            .xautoclaim_options(
                &self.config.stream,
                &self.config.group,
                &self.consumer,
                idle_ms,
                "0-0",
                options,
            )
            .await
            .map_err(self.error("reclaim"))?;

        let mut deliveries = Vec::with_capacity(reply.claimed.len());
        for entry in reply.claimed {
            let count = self.delivery_count(&entry.id).await?;
            deliveries.push(delivery(entry, count));
        }
        Ok(deliveries)
    }

    async fn delivery_count(&mut self, message_id: &str) -> Result<u64, IntakeError> {
        let reply: redis::streams::StreamPendingCountReply = self
            .conn
            .clone()
            .xpending_count(
                &self.config.stream,
                &self.config.group,
                message_id,
                message_id,
                1,
            )
            .await
            .map_err(self.error("pending"))?;
        Ok(reply
            .ids
            .first()
            .map_or(1, |pending| pending.times_delivered as u64))
    }
}

fn delivery(entry: StreamId, delivery_count: u64) -> Delivery {
    let body = match entry.map.get(MANIFEST_FIELD) {
        Some(redis::Value::BulkString(bytes)) => bytes.clone(),
        Some(redis::Value::SimpleString(text)) => text.clone().into_bytes(),
        _ => Vec::new(),
    };
    Delivery {
        message_id: entry.id,
        body,
        delivery_count,
    }
}

impl IntakeSource for RedisStreamSource {
    fn queue(&self) -> &str {
        &self.config.stream
    }

    async fn receive(&mut self) -> Result<Vec<Delivery>, IntakeError> {
        let reclaimed = self.reclaim().await?;
        if !reclaimed.is_empty() {
            return Ok(reclaimed);
        }

        let options = StreamReadOptions::default()
            .group(&self.config.group, &self.consumer)
            .count(self.config.batch_size)
            .block(BLOCK.as_millis() as usize);
        let reply: Option<StreamReadReply> = self
            .blocking
            .xread_options(&[&self.config.stream], &[">"], &options)
            .await
            .map_err(self.error("read"))?;

        let entries = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids);
        Ok(entries.map(|entry| delivery(entry, 1)).collect())
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), IntakeError> {
        let _: u64 = self
            .conn
            .clone()
            .xack(
                &self.config.stream,
                &self.config.group,
                &[&delivery.message_id],
            )
            .await
            .map_err(self.error("ack"))?;
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
        errors_json: &str,
    ) -> Result<(), IntakeError> {
        let fields: [(&str, &[u8]); 4] = [
            (MANIFEST_FIELD, &delivery.body),
            ("reason", reason.as_bytes()),
            ("errors", errors_json.as_bytes()),
            ("message_id", delivery.message_id.as_bytes()),
        ];
        let _: String = self
            .conn
            .clone()
            .xadd(&self.config.dead_letter_stream, "*", &fields)
            .await
            .map_err(self.error("dead_letter"))?;
        self.ack(delivery).await
    }

    async fn backlog(&mut self) -> Result<u64, IntakeError> {
        let groups: redis::streams::StreamInfoGroupsReply = self
            .conn
            .clone()
            .xinfo_groups(&self.config.stream)
            .await
            .map_err(self.error("backlog"))?;
        let group = groups
            .groups
            .iter()
            .find(|group| group.name == self.config.group);
        Ok(group.map_or(0, |group| (group.lag.unwrap_or(0) + group.pending) as u64))
    }

    fn max_deliveries(&self) -> u64 {
        self.config.max_deliveries
    }
}

/// Sends a manifest to the stream and returns the entry id.
pub async fn submit(
    conn: &mut LedgerConnection,
    stream: &str,
    manifest: &[u8],
) -> redis::RedisResult<String> {
    conn.xadd(stream, "*", &[(MANIFEST_FIELD, manifest)]).await
}
