//! The queues that the benchmark fills, and the daemon that reads them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use futures::StreamExt;
use google_cloud_pubsub::client::{Publisher, Subscriber};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use spillway_tests::moto::{MotoServer, create_queue, queue_depth};
use spillway_tests::pubsub::{PROJECT, PubsubEmulator, anonymous, subscription_name, topic_name};

/// A cloud queue that the benchmark fills and a daemon reads.
///
/// Each queue kind implements this and gets a branch in `run_queue_kind` (main.rs).
pub trait BenchQueue {
    /// Name in the results, such as `sqs`.
    fn kind(&self) -> &'static str;

    /// Returns the daemon's intake table for this queue, in TOML.
    fn intake_config(&self) -> String;

    /// Environment that the daemon's client of this queue needs.
    fn daemon_env(&self) -> Vec<(String, String)>;

    /// Puts every body on the queue and returns once all are visible.
    async fn load(&self, bodies: &[String]) -> anyhow::Result<()>;

    /// Waits until no message is waiting or held.
    async fn wait_empty(&self, timeout: Duration) -> anyhow::Result<()>;

    /// Receives and acknowledges `count` messages with the requests that the daemon's
    /// source makes, without admitting them. Returns the time from the first receive
    /// to the last acknowledgement: the ceiling of the queue's stand-in.
    async fn consume(&self, count: usize) -> anyhow::Result<Duration>;
}

/// An SQS queue on a moto server.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    dead_letter_url: String,
    endpoint: String,
    env: Vec<(String, String)>,
}

impl SqsQueue {
    const REGION: &str = "us-east-1";

    /// Creates the queue `name` and its dead-letter queue.
    pub async fn create(moto: &MotoServer, name: &str) -> Self {
        let client = moto.sqs_client(Self::REGION);
        let url = create_queue(&client, name, &[]).await;
        let dead_letter_url = create_queue(&client, &format!("{name}-dead"), &[]).await;
        Self {
            client,
            url,
            dead_letter_url,
            endpoint: moto.endpoint(),
            env: moto.s3_env(),
        }
    }
}

impl BenchQueue for SqsQueue {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    fn intake_config(&self) -> String {
        format!(
            "[[intake.sqs]]\nqueue_url = \"{}\"\nregion = \"{}\"\nendpoint_url = \"{}\"\n\
             dead_letter_queue_url = \"{}\"\nvisibility_timeout_secs = 120\n",
            self.url,
            Self::REGION,
            self.endpoint,
            self.dead_letter_url
        )
    }

    fn daemon_env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    async fn load(&self, bodies: &[String]) -> anyhow::Result<()> {
        let batches: Vec<Vec<SendMessageBatchRequestEntry>> = bodies
            .chunks(10)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(index, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(index.to_string())
                            .message_body(body)
                            .build()
                            .expect("batch entry has an id and a body")
                    })
                    .collect()
            })
            .collect();
        let sends = futures::stream::iter(batches).map(|entries| {
            self.client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
        });
        let mut sends = sends.buffer_unordered(8);
        while let Some(sent) = sends.next().await {
            let sent = sent.context("SendMessageBatch failed")?;
            anyhow::ensure!(
                sent.failed().is_empty(),
                "messages not sent: {:?}",
                sent.failed()
            );
        }

        let deadline = Instant::now() + Duration::from_secs(60);
        while queue_depth(&self.client, &self.url).await < bodies.len() as u64 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not show every message within 60 s",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn wait_empty(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while queue_depth(&self.client, &self.url).await > 0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} still has messages after {timeout:?}",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Makes the daemon's requests with its default settings: a receive of up to 10
    /// messages with the same attributes, then one `DeleteMessage` per message.
    async fn consume(&self, count: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut consumed = 0;
        while consumed < count {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(600),
                "{} gave {consumed} of {count} messages in 600 s",
                self.url
            );
            let received = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .wait_time_seconds(20)
                .visibility_timeout(120)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .send()
                .await
                .context("ReceiveMessage failed")?;
            for message in received.messages() {
                self.client
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .context("DeleteMessage failed")?;
                consumed += 1;
            }
        }
        Ok(start.elapsed())
    }
}

/// A Pub/Sub topic and its subscription on the emulator, with a dead-letter topic
/// that the daemon's configuration names.
pub struct PubsubQueue<'a> {
    emulator: &'a PubsubEmulator,
    topic: String,
    subscription: String,
    dead_letter_topic: String,
    publisher: Publisher,
}

impl<'a> PubsubQueue<'a> {
    /// Ack deadline of the subscription, and the lease extension and maximum lease
    /// of the daemon and of `consume`: the daemon's defaults.
    const MIN_LEASE_SECS: u64 = 60;
    const MAX_LEASE_SECS: u64 = 3600;
    /// Unacknowledged messages that one streaming pull allows: the daemon's default.
    const MAX_OUTSTANDING_MESSAGES: i64 = 100;

    /// Creates the topic `name`, its subscription `name-spillway` and the dead-letter
    /// topic `name-dead`.
    pub async fn create(emulator: &'a PubsubEmulator, name: &str) -> anyhow::Result<Self> {
        let topic = name.to_string();
        let subscription = format!("{name}-spillway");
        let dead_letter_topic = format!("{name}-dead");
        emulator.create_topic(&topic).await?;
        emulator.create_topic(&dead_letter_topic).await?;
        emulator
            .create_subscription(&subscription, &topic, Self::MIN_LEASE_SECS as i32, None)
            .await?;
        let publisher = Publisher::builder(topic_name(&topic))
            .with_endpoint(emulator.endpoint())
            .with_credentials(anonymous())
            .build()
            .await?;
        Ok(Self {
            emulator,
            topic,
            subscription,
            dead_letter_topic,
            publisher,
        })
    }
}

impl BenchQueue for PubsubQueue<'_> {
    fn kind(&self) -> &'static str {
        "pubsub"
    }

    fn intake_config(&self) -> String {
        format!(
            "[[intake.pubsub]]\nproject = \"{PROJECT}\"\nsubscription = \"{}\"\n\
             topic = \"{}\"\ndead_letter_topic = \"{}\"\nendpoint = \"{}\"\n\
             credentials = \"anonymous\"\nmin_lease_secs = {}\nmax_lease_secs = {}\n\
             max_outstanding_messages = {}\n",
            self.subscription,
            self.topic,
            self.dead_letter_topic,
            self.emulator.endpoint(),
            Self::MIN_LEASE_SECS,
            Self::MAX_LEASE_SECS,
            Self::MAX_OUTSTANDING_MESSAGES,
        )
    }

    /// Returns only `GCE_METADATA_HOST`, a closed loopback port for any metadata
    /// lookup, because the table gives the daemon's Pub/Sub client the emulator's
    /// endpoint and anonymous credentials.
    fn daemon_env(&self) -> Vec<(String, String)> {
        vec![("GCE_METADATA_HOST".into(), "127.0.0.1:9".into())]
    }

    /// Publishes every body. Pub/Sub returns a message id once it has stored the
    /// message, so every body is visible when all ids have arrived.
    async fn load(&self, bodies: &[String]) -> anyhow::Result<()> {
        let publishes: Vec<_> = bodies
            .iter()
            .map(|body| {
                self.publisher
                    .publish(Message::new().set_data(body.clone().into_bytes()))
            })
            .collect();
        for published in futures::future::join_all(publishes).await {
            published.with_context(|| format!("publish to {} failed", self.topic))?;
        }
        Ok(())
    }

    /// Waits until no message is waiting for delivery.
    /// NOTE: a message that the daemon received and never acknowledged stays under its
    /// lease, so this check does not see it (see `PubsubEmulator::has_waiting_message`).
    /// `queue_run` also checks that every job is durable, and the daemon acknowledges
    /// a message only after its job is.
    async fn wait_empty(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.emulator.has_waiting_message(&self.subscription)? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} still has messages after {timeout:?}",
                subscription_name(&self.subscription)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Opens a streaming pull with the daemon's settings and acknowledges each message
    /// as it arrives. The time ends when the shutdown has sent every acknowledgement,
    /// which the client batches.
    async fn consume(&self, count: usize) -> anyhow::Result<Duration> {
        let subscriber = Subscriber::builder()
            .with_endpoint(self.emulator.endpoint())
            .with_credentials(anonymous())
            .build()
            .await?;
        let name = subscription_name(&self.subscription);

        let start = Instant::now();
        let mut stream = subscriber
            .subscribe(&name)
            .set_max_lease_extension(Duration::from_secs(Self::MIN_LEASE_SECS))
            .set_max_lease(Duration::from_secs(Self::MAX_LEASE_SECS))
            .set_max_outstanding_messages(Self::MAX_OUTSTANDING_MESSAGES)
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        for consumed in 0..count {
            let next = tokio::time::timeout_at(deadline, stream.next()).await;
            let Ok(Some(received)) = next else {
                anyhow::bail!("{name} delivered {consumed} of {count} messages within 600 s");
            };
            let (_, handler) =
                received.with_context(|| format!("streaming pull from {name} failed"))?;
            handler.ack();
        }
        stream.shutdown_token().shutdown().await;
        Ok(start.elapsed())
    }
}

/// A release `spillway serve` with its own configuration and log, killed on drop.
pub struct DaemonProcess {
    child: Child,
    pub log: PathBuf,
}

impl DaemonProcess {
    /// Starts a daemon that reads only `queue` and waits for its start message. The
    /// Redis stream intake is off, and the reconcile interval of an hour keeps the
    /// daemon from starting workers or making reconcile requests during a run.
    pub fn start(
        binary: &Path,
        dir: &Path,
        redis_url: &str,
        prefix: &str,
        worker: &Path,
        queue: &impl BenchQueue,
    ) -> anyhow::Result<Self> {
        let config = format!(
            "[ledger]\nurl = \"{redis_url}\"\nprefix = \"{prefix}\"\n\n\
             [intake.redis_stream]\nenabled = false\n\n\
             [daemon]\nreconcile_interval_secs = 3600\nlease_secs = 60\nmetrics_listen = \"\"\n\
             shutdown_timeout_secs = 5\n\n\
             [backend.local]\nworker_binary = \"{worker}\"\nmax_workers = 1\nthreads_per_worker = 1\n\
             cache_dir = \"{cache}\"\nlog_dir = \"{logs}\"\n\n{intake}",
            worker = worker.display(),
            cache = dir.join("cache").display(),
            logs = dir.join("logs").display(),
            intake = queue.intake_config(),
        );
        let config_path = dir.join("spillway.toml");
        std::fs::write(&config_path, config)?;

        let log = dir.join("daemon.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .args(["--config", &config_path.display().to_string(), "serve"])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("SPILLWAY_LOG", "info")
            .envs(queue.daemon_env())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        let daemon = Self { child, log };
        daemon.wait_log("daemon started", Duration::from_secs(60))?;
        Ok(daemon)
    }

    fn wait_log(&self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(text) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "daemon did not log {text:?} within {timeout:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
