//! Google's Pub/Sub emulator on 127.0.0.1, started per test from the jar of the
//! Debian package `google-cloud-cli-pubsub-emulator` and stopped by pid, with helpers
//! that create topics and subscriptions and read messages through the official client.
//! Every client here has the emulator's endpoint and anonymous credentials, so none
//! looks for Google's endpoints or a metadata server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use google_cloud_auth::credentials::Credentials;
use google_cloud_auth::credentials::anonymous::Builder as AnonymousCredentials;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, Message};

use crate::free_port;

/// Folder of the emulator jar that the Debian package installs.
pub const DEFAULT_EMULATOR_DIR: &str = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib";

/// Project of every topic and subscription in the tests. The emulator rejects
/// project ids shorter than the real service allows.
pub const PROJECT: &str = "spillway-test";

/// Returns the emulator jar: `SPILLWAY_PUBSUB_EMULATOR_JAR`, or the one
/// `cloud-pubsub-emulator-*-all.jar` in [`DEFAULT_EMULATOR_DIR`].
pub fn emulator_jar() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SPILLWAY_PUBSUB_EMULATOR_JAR") {
        return Ok(PathBuf::from(path));
    }
    let entries = std::fs::read_dir(DEFAULT_EMULATOR_DIR).map_err(|error| {
        anyhow::anyhow!(
            "Pub/Sub emulator not found in {DEFAULT_EMULATOR_DIR} ({error}); install the Debian package google-cloud-cli-pubsub-emulator or set SPILLWAY_PUBSUB_EMULATOR_JAR"
        )
    })?;
    let jar = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("cloud-pubsub-emulator-") && name.ends_with("-all.jar")
        });
    jar.ok_or_else(|| {
        anyhow::anyhow!("no cloud-pubsub-emulator-*-all.jar in {DEFAULT_EMULATOR_DIR}")
    })
}

/// Anonymous credentials, which make no token request.
pub fn anonymous() -> Credentials {
    AnonymousCredentials::new().build()
}

/// Returns `projects/PROJECT/topics/ID`.
pub fn topic_name(id: &str) -> String {
    format!("projects/{PROJECT}/topics/{id}")
}

/// Returns `projects/PROJECT/subscriptions/ID`.
pub fn subscription_name(id: &str) -> String {
    format!("projects/{PROJECT}/subscriptions/{id}")
}

/// A `java -jar cloud-pubsub-emulator-*-all.jar` process with its log in a temporary
/// folder.
pub struct PubsubEmulator {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl PubsubEmulator {
    /// Starts the emulator on a free port and waits until its REST API replies.
    pub fn start() -> anyhow::Result<Self> {
        let jar = emulator_jar()?;
        let java = std::env::var("JAVA").unwrap_or_else(|_| "java".into());

        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            let log = std::fs::File::create(dir.path().join("emulator.log"))?;
            let port = free_port()?;
            let child = Command::new(&java)
                .arg("-jar")
                .arg(&jar)
                .args(["--host=127.0.0.1", &format!("--port={port}")])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|error| {
                    anyhow::anyhow!("failed to start {java} -jar {}: {error}", jar.display())
                })?;
            let mut emulator = Self { child, port, dir };
            if emulator.wait_ready(Duration::from_secs(60)) {
                return Ok(emulator);
            }
            emulator.kill();
        }
        anyhow::bail!("the Pub/Sub emulator did not start on a free port after 5 tries")
    }

    /// Base URL of the emulator, the endpoint of every client.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Returns the emulator's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }

    /// Creates a topic and returns its resource name.
    pub async fn create_topic(&self, id: &str) -> anyhow::Result<String> {
        let admin = TopicAdmin::builder()
            .with_endpoint(self.endpoint())
            .with_credentials(anonymous())
            .build()
            .await?;
        let name = topic_name(id);
        admin.create_topic().set_name(&name).send().await?;
        Ok(name)
    }

    /// Creates a subscription of `topic` (an id) with an ack deadline and, when given
    /// as (topic id, max delivery attempts), a dead-letter policy. Returns its name.
    pub async fn create_subscription(
        &self,
        id: &str,
        topic: &str,
        ack_deadline_secs: i32,
        dead_letter: Option<(&str, i32)>,
    ) -> anyhow::Result<String> {
        let admin = SubscriptionAdmin::builder()
            .with_endpoint(self.endpoint())
            .with_credentials(anonymous())
            .build()
            .await?;
        let name = subscription_name(id);
        let mut request = admin
            .create_subscription()
            .set_name(&name)
            .set_topic(topic_name(topic))
            .set_ack_deadline_seconds(ack_deadline_secs);
        if let Some((dead_letter_topic, max_attempts)) = dead_letter {
            let policy = DeadLetterPolicy::new()
                .set_dead_letter_topic(topic_name(dead_letter_topic))
                .set_max_delivery_attempts(max_attempts);
            request = request.set_dead_letter_policy(policy);
        }
        request.send().await?;
        Ok(name)
    }

    /// Publishes one message with `data` to the topic `id` and returns its message id.
    pub async fn publish(&self, id: &str, data: &[u8]) -> anyhow::Result<String> {
        let publisher = Publisher::builder(topic_name(id))
            .with_endpoint(self.endpoint())
            .with_credentials(anonymous())
            .build()
            .await?;
        let message_id = publisher
            .publish(Message::new().set_data(data.to_vec()))
            .await?;
        Ok(message_id)
    }

    /// Receives and acknowledges `count` messages from the subscription `id`, waiting
    /// up to `timeout` in all.
    pub async fn receive(
        &self,
        id: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Message>> {
        let subscriber = Subscriber::builder()
            .with_endpoint(self.endpoint())
            .with_credentials(anonymous())
            .build()
            .await?;
        let mut stream = subscriber.subscribe(subscription_name(id)).build();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut messages = Vec::new();
        while messages.len() < count {
            let next = tokio::time::timeout_at(deadline, stream.next()).await;
            let Ok(Some(received)) = next else {
                anyhow::bail!(
                    "subscription {id} delivered {} of {count} messages within {timeout:?}",
                    messages.len()
                );
            };
            let (message, handler) = received?;
            handler.ack();
            messages.push(message);
        }
        stream.shutdown_token().shutdown().await;
        Ok(messages)
    }

    /// Returns whether the subscription `id` has a message waiting for delivery, by a
    /// unary pull over REST that returns at once. A message that the pull returns gets
    /// an ack deadline of 0, so Pub/Sub delivers it again at once.
    /// NOTE: messages that a subscriber holds under a lease are not waiting, so this
    /// cannot see a message that was received and never acknowledged. The Pub/Sub API
    /// has no count of such messages.
    pub fn has_waiting_message(&self, id: &str) -> anyhow::Result<bool> {
        let subscription = subscription_name(id);
        let pull = r#"{"returnImmediately": true, "maxMessages": 1}"#;
        let (status, body) = http_request(
            self.port,
            "POST",
            &format!("/v1/{subscription}:pull"),
            Some(pull),
        )?;
        anyhow::ensure!(
            status == 200,
            "pull from {subscription} returned {status}: {body}"
        );
        let reply: serde_json::Value = serde_json::from_str(&body)?;
        let ack_ids: Vec<&str> = reply["receivedMessages"]
            .as_array()
            .map(|messages| {
                messages
                    .iter()
                    .filter_map(|message| message["ackId"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if ack_ids.is_empty() {
            return Ok(false);
        }

        let release = serde_json::json!({"ackIds": ack_ids, "ackDeadlineSeconds": 0});
        let path = format!("/v1/{subscription}:modifyAckDeadline");
        let (status, body) = http_request(self.port, "POST", &path, Some(&release.to_string()))?;
        anyhow::ensure!(
            status == 200,
            "modifyAckDeadline on {subscription} returned {status}: {body}"
        );
        Ok(true)
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let topics = format!("/v1/projects/{PROJECT}/topics");
            if http_request(self.port, "GET", &topics, None).is_ok_and(|(status, _)| status == 200)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PubsubEmulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one HTTP/1.1 request with an optional JSON body to 127.0.0.1:`port` and
/// returns the response's status code and body.
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};

    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = json_body.unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;

    // The response is read up to its Content-Length: the emulator keeps the connection
    // open despite `Connection: close`, so reading to the end would wait for the
    // timeout.
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = response.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut buffer)?;
        anyhow::ensure!(read > 0, "connection closed before the end of the headers");
        response.extend_from_slice(&buffer[..read]);
    };
    let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response head: {head:?}"))?;
    let content_length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while response.len() < head_end + content_length {
        let read = stream.read(&mut buffer)?;
        anyhow::ensure!(read > 0, "connection closed before the end of the body");
        response.extend_from_slice(&buffer[..read]);
    }
    let body = String::from_utf8_lossy(&response[head_end..head_end + content_length]);
    Ok((status, body.into_owned()))
}
