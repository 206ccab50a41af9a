//! A moto server, the AWS stand-in for SQS, S3 and Batch, on 127.0.0.1: started per
//! test from the folder that scripts/install-deps.sh fills, and stopped by pid.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

use crate::{AWS_SAFETY_ENV, free_port};

/// Folder of the moto install that scripts/install-deps.sh makes.
pub const DEFAULT_MOTO_DIR: &str = "/opt/spillway-deps/moto-5.2.5";

/// Dummy credentials; moto accepts any.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

/// Region of the S3 buckets in the tests.
pub const S3_REGION: &str = "us-east-1";

/// Returns the moto install folder: `SPILLWAY_MOTO_DIR` or the installer's default.
pub fn moto_dir() -> PathBuf {
    std::env::var_os("SPILLWAY_MOTO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MOTO_DIR))
}

/// A `python3 -m moto.server` process with its log in a temporary folder.
pub struct MotoServer {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts moto on a free port and waits until it replies to HTTP.
    pub fn start() -> anyhow::Result<Self> {
        let install = moto_dir();
        anyhow::ensure!(
            install.join("moto").join("server.py").is_file(),
            "moto not found in {}; run scripts/install-deps.sh or set SPILLWAY_MOTO_DIR",
            install.display()
        );
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());

        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            let log = std::fs::File::create(dir.path().join("moto.log"))?;
            let port = free_port()?;
            let child = Command::new(&python)
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .env("PYTHONPATH", &install)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|error| {
                    anyhow::anyhow!("failed to start {python} -m moto.server: {error}")
                })?;
            let mut server = Self { child, port, dir };
            if server.wait_ready(Duration::from_secs(30)) {
                return Ok(server);
            }
            server.kill();
        }
        anyhow::bail!("moto did not start on a free port after 5 tries")
    }

    /// Base URL of the server.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Returns the server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Environment for daemons and their workers: S3 at this server with dummy
    /// credentials, and every AWS default that could reach a real endpoint turned off.
    pub fn s3_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = AWS_SAFETY_ENV
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        for (name, value) in [
            ("AWS_ENDPOINT_URL_S3", self.endpoint()),
            ("AWS_REGION", S3_REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_string()),
        ] {
            env.push((name.to_string(), value));
        }
        env
    }

    /// Builds an SQS client for `region` with explicit endpoint and credentials, so
    /// that it reads no environment, profile or metadata.
    pub fn sqs_client(&self, region: &str) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "moto",
            ))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// Creates an S3 bucket with one unsigned `PUT /bucket`, which moto accepts.
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        let response = http_exchange(self.port, &request)?;
        anyhow::ensure!(
            response.starts_with("HTTP/1.1 200"),
            "creating bucket {bucket} failed: {response}"
        );
        Ok(())
    }

    /// Switches moto's Batch to its mode without Docker, where a job succeeds inside
    /// SubmitJob. The setting survives `/moto-api/reset`.
    pub fn use_batch_without_docker(&self) -> anyhow::Result<()> {
        let body = r#"{"batch":{"use_docker":false}}"#;
        let request = format!(
            "POST /moto-api/config HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        let response = http_exchange(self.port, &request)?;
        anyhow::ensure!(
            response.starts_with("HTTP/1.1 2"),
            "setting moto's Batch mode failed: {response}"
        );
        Ok(())
    }

    /// Creates an IAM role with one unsigned IAM query call and returns its ARN. moto
    /// routes the call by the service in the Authorization header's credential scope.
    pub fn create_role(&self, name: &str) -> anyhow::Result<String> {
        let body = format!(
            "Action=CreateRole&Version=2010-05-08&RoleName={name}&AssumeRolePolicyDocument=%7B%7D"
        );
        let request = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20250101/{S3_REGION}/iam/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}",
            port = self.port,
            length = body.len(),
        );
        let response = http_exchange(self.port, &request)?;
        let arn = response
            .split_once("<Arn>")
            .and_then(|(_, rest)| rest.split_once("</Arn>"))
            .map(|(arn, _)| arn.to_string());
        arn.ok_or_else(|| anyhow::anyhow!("creating IAM role {name} failed: {response}"))
    }

    /// Builds a Batch client for `region` at `endpoint` (this server or a stand-in in
    /// front of it) with explicit credentials.
    pub fn batch_client(endpoint: &str, region: &str) -> aws_sdk_batch::Client {
        let config = aws_sdk_batch::Config::builder()
            .behavior_version(aws_sdk_batch::config::BehaviorVersion::latest())
            .region(aws_sdk_batch::config::Region::new(region.to_string()))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_batch::config::Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "moto",
            ))
            .build();
        aws_sdk_batch::Client::from_conf(config)
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let request = format!(
            "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if http_exchange(self.port, &request)
                .is_ok_and(|reply| reply.starts_with("HTTP/1.1 200"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port` and returns the whole response.
fn http_exchange(port: u16, request: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Creates a queue and returns its URL. `attributes` are SQS queue attributes such as
/// `("FifoQueue", "true")` or `("RedrivePolicy", ...)`.
pub async fn create_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(&str, &str)],
) -> String {
    let mut request = client.create_queue().queue_name(name);
    for (key, value) in attributes {
        request = request.attributes((*key).into(), *value);
    }
    let output = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("create queue {name}: {error:?}"));
    output.queue_url().expect("queue URL").to_string()
}

/// Counts a queue's messages that wait or are in flight.
pub async fn queue_depth(client: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName;

    let output = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap_or_else(|error| panic!("get attributes of {url}: {error:?}"));
    let attributes = output.attributes().expect("queue attributes");
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|name| attributes[name].parse::<u64>().expect("a number"))
    .sum()
}

/// Creates an unmanaged compute environment and a job queue on it in the client's
/// region, and returns the queue's ARN. `service_role_arn` must exist in moto's IAM.
pub async fn create_job_queue(
    client: &aws_sdk_batch::Client,
    name: &str,
    service_role_arn: &str,
) -> String {
    use aws_sdk_batch::types::{CeState, CeType, ComputeEnvironmentOrder, JqState};

    let environment = client
        .create_compute_environment()
        .compute_environment_name(format!("{name}-environment"))
        .r#type(CeType::Unmanaged)
        .state(CeState::Enabled)
        .service_role(service_role_arn)
        .send()
        .await
        .unwrap_or_else(|error| panic!("create compute environment for {name}: {error:?}"));
    let order = ComputeEnvironmentOrder::builder()
        .order(1)
        .compute_environment(
            environment
                .compute_environment_arn()
                .expect("environment ARN"),
        )
        .build();
    let queue = client
        .create_job_queue()
        .job_queue_name(name)
        .state(JqState::Enabled)
        .priority(1)
        .compute_environment_order(order)
        .send()
        .await
        .unwrap_or_else(|error| panic!("create job queue {name}: {error:?}"));
    queue.job_queue_arn().expect("job queue ARN").to_string()
}
