//! One region's Batch client: explicit region, endpoint and credentials, no SDK
//! retries (this module retries SubmitJob itself, with the region's token bucket and
//! backoff), and the region's circuit breaker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_batch::Client;
use aws_sdk_batch::config::http::HttpResponse;
use aws_sdk_batch::config::{Credentials, Region as SdkRegion};
use aws_sdk_batch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_batch::types::{ArrayProperties, JobDefinitionType, JobDetail};
use tracing::{info, warn};

use super::definition::DefinitionSpec;
use super::limits::{Backoff, CircuitBreaker, TokenBucket, TripReason};
use crate::config::{BatchBackendConfig, BatchQueueConfig};

/// Ids per DescribeJobs request, Batch's maximum.
const DESCRIBE_BATCH: usize = 100;
/// Time allowed to open a connection to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Provider name under which the SDK reports credentials read from files.
const FILE_CREDENTIALS_PROVIDER: &str = "spillway-credential-files";

/// What kind of failure a Batch call met, which decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 429 or a throttling error code: retried after a backoff.
    Throttled,
    /// A server error, time-out or connection failure: retried after a backoff.
    Unavailable,
    /// Any other client error: not retried.
    Rejected,
}

impl Failure {
    /// Returns the breaker reason for a region whose calls fail this way.
    pub fn trip_reason(self) -> TripReason {
        match self {
            Failure::Throttled => TripReason::Throttled,
            Failure::Unavailable => TripReason::Unavailable,
            Failure::Rejected => TripReason::Rejected,
        }
    }

    fn is_retried(self) -> bool {
        self != Failure::Rejected
    }
}

/// A failed Batch call, naming the operation and the region.
#[derive(Debug, thiserror::Error)]
#[error(
    "AWS Batch {operation} in region {region} failed after {attempts} attempt(s) ({failure:?})"
)]
pub struct CallError {
    pub operation: &'static str,
    pub region: String,
    pub failure: Failure,
    pub attempts: u32,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Failure to read a credential file named in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("failed to read {key} {}", path.display())]
pub struct CredentialFileError {
    key: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// A response that lacks a field that Batch always sends.
#[derive(Debug, thiserror::Error)]
#[error("AWS Batch {operation} returned no {field}")]
struct MissingField {
    operation: &'static str,
    field: &'static str,
}

/// One array submission.
pub struct Submission<'a> {
    pub job_name: String,
    pub job_queue: &'a str,
    pub definition_arn: &'a str,
    /// Elements; 1 submits a plain job, because Batch arrays have 2 to 10000 elements.
    pub size: u32,
    pub overrides: aws_sdk_batch::types::ContainerOverrides,
    pub job_id: &'a str,
}

/// A region: its client, SubmitJob token bucket, backoff and circuit breaker, and
/// the job definitions it has found or registered, by name.
pub struct Region {
    pub name: String,
    client: Client,
    submit_bucket: Mutex<TokenBucket>,
    breaker: Mutex<CircuitBreaker>,
    backoff: Backoff,
    submit_attempts: u32,
    definitions: tokio::sync::Mutex<HashMap<String, String>>,
}

impl Region {
    /// Builds the client of `queue`'s region. Sends no request.
    pub async fn connect(
        queue: &BatchQueueConfig,
        config: &BatchBackendConfig,
    ) -> Result<Self, CredentialFileError> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(Duration::from_secs(config.request_timeout_secs))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(SdkRegion::new(queue.region.clone()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled());
        if let Some(endpoint) = &queue.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = file_credentials(queue)? {
            loader = loader.credentials_provider(credentials);
        }
        let sdk_config = loader.load().await;

        let now = Instant::now();
        Ok(Self {
            name: queue.region.clone(),
            client: Client::new(&sdk_config),
            submit_bucket: Mutex::new(TokenBucket::new(config.submit_rate_per_sec, now)),
            breaker: Mutex::new(CircuitBreaker::new(Duration::from_secs(
                config.cool_down_secs,
            ))),
            backoff: Backoff {
                initial: Duration::from_millis(config.backoff_initial_ms),
                max: Duration::from_millis(config.backoff_max_ms),
            },
            submit_attempts: config.submit_attempts,
            definitions: tokio::sync::Mutex::default(),
        })
    }

    /// Returns why the region is skipped now, or `None` when it takes work.
    pub fn unavailable(&self) -> Option<TripReason> {
        self.breaker
            .lock()
            .expect("breaker lock")
            .open_reason(Instant::now())
    }

    /// Skips the region for the cool-down.
    pub fn trip(&self, reason: TripReason) {
        let mut breaker = self.breaker.lock().expect("breaker lock");
        breaker.trip(Instant::now(), reason);
        let cool_down_secs = breaker.remaining(Instant::now()).as_secs();
        drop(breaker);
        warn!(
            backend = "batch",
            region = %self.name,
            reason = reason.as_str(),
            cool_down_secs,
            "region skipped until its cool-down ends"
        );
    }

    /// Returns the ARN of the definition `spec` names: the newest active revision of
    /// that name, registered first when there is none. Both calls are retried like
    /// SubmitJob.
    pub async fn definition_arn(&self, spec: &DefinitionSpec) -> Result<String, CallError> {
        // Held across the calls, so that concurrent launches register once.
        let mut known = self.definitions.lock().await;
        if let Some(arn) = known.get(&spec.name) {
            return Ok(arn.clone());
        }

        let request = self
            .client
            .describe_job_definitions()
            .job_definition_name(&spec.name)
            .status("ACTIVE");
        let output = self
            .with_retries("DescribeJobDefinitions", false, || request.clone().send())
            .await?;
        let newest = output
            .job_definitions()
            .iter()
            .filter(|definition| definition.status().is_none_or(|status| status == "ACTIVE"))
            .max_by_key(|definition| definition.revision().unwrap_or(0))
            .and_then(|definition| definition.job_definition_arn());
        if let Some(arn) = newest {
            info!(backend = "batch", region = %self.name, job_definition = arn, "job definition found");
            known.insert(spec.name.clone(), arn.to_string());
            return Ok(arn.to_string());
        }

        let mut request = self
            .client
            .register_job_definition()
            .job_definition_name(&spec.name)
            .r#type(JobDefinitionType::Container)
            .container_properties(spec.container_properties())
            .retry_strategy(spec.retry_strategy())
            .set_timeout(spec.timeout());
        // Tag values hold at most 256 characters; the definition names the image anyway.
        if spec.image.len() <= 256 {
            request = request.tags("spillway-image", &spec.image);
        }
        let output = self
            .with_retries("RegisterJobDefinition", false, || request.clone().send())
            .await?;
        let arn = output
            .job_definition_arn()
            .ok_or_else(|| self.missing("RegisterJobDefinition", "jobDefinitionArn"))?
            .to_string();
        info!(backend = "batch", region = %self.name, job_definition = %arn, image = %spec.image, "job definition registered");
        known.insert(spec.name.clone(), arn.clone());
        Ok(arn)
    }

    /// Submits an array and returns its Batch job id. Each attempt waits for the
    /// region's token bucket first.
    ///
    /// NOTE: SubmitJob has no idempotency token, so a retry after a time-out whose
    /// request did reach Batch submits a second array. Its workers find no task
    /// beyond the job's and exit, but it runs unrecorded until then.
    pub async fn submit(&self, submission: &Submission<'_>) -> Result<String, CallError> {
        let mut request = self
            .client
            .submit_job()
            .job_name(&submission.job_name)
            .job_queue(submission.job_queue)
            .job_definition(submission.definition_arn)
            .container_overrides(submission.overrides.clone())
            .tags("spillway-job-id", submission.job_id);
        if submission.size > 1 {
            request = request.array_properties(
                ArrayProperties::builder()
                    .size(submission.size as i32)
                    .build(),
            );
        }

        let output = self
            .with_retries("SubmitJob", true, || request.clone().send())
            .await?;
        output
            .job_id()
            .map(str::to_string)
            .ok_or_else(|| self.missing("SubmitJob", "jobId"))
    }

    /// Runs `call` until it succeeds, fails with a rejection, or has been tried
    /// `submit_attempts` times. A throttled or failed attempt is retried after a
    /// jittered exponential backoff; `rate_limited` calls wait for the token bucket.
    async fn with_retries<T, E, F, Fut>(
        &self,
        operation: &'static str,
        rate_limited: bool,
        mut call: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if rate_limited {
                let wait = self
                    .submit_bucket
                    .lock()
                    .expect("token bucket lock")
                    .reserve(Instant::now());
                tokio::time::sleep(wait).await;
            }

            let error = match call().await {
                Ok(output) => return Ok(output),
                Err(error) => self.call_error(operation, error, attempt),
            };
            if !error.failure.is_retried() || attempt >= self.submit_attempts {
                return Err(error);
            }
            let delay = self.backoff.delay(attempt - 1, fastrand::f64());
            info!(
                backend = "batch",
                region = %self.name,
                operation,
                attempt,
                failure = ?error.failure,
                delay_ms = delay.as_millis() as u64,
                "Batch call failed; retrying after backoff"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Describes jobs in requests of up to 100 ids.
    pub async fn describe(&self, ids: &[String]) -> Result<Vec<JobDetail>, CallError> {
        let mut details = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(DESCRIBE_BATCH) {
            let output = self
                .client
                .describe_jobs()
                .set_jobs(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|error| self.call_error("DescribeJobs", error, 1))?;
            details.extend(output.jobs().iter().cloned());
        }
        Ok(details)
    }

    /// Terminates a job or array: elements not started fail, running ones are stopped.
    pub async fn terminate(&self, batch_job_id: &str, reason: &str) -> Result<(), CallError> {
        self.client
            .terminate_job()
            .job_id(batch_job_id)
            .reason(reason)
            .send()
            .await
            .map_err(|error| self.call_error("TerminateJob", error, 1))?;
        Ok(())
    }

    fn call_error<E>(
        &self,
        operation: &'static str,
        error: SdkError<E, HttpResponse>,
        attempts: u32,
    ) -> CallError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        CallError {
            operation,
            region: self.name.clone(),
            failure: classify(&error),
            attempts,
            source: Box::new(error),
        }
    }

    fn missing(&self, operation: &'static str, field: &'static str) -> CallError {
        CallError {
            operation,
            region: self.name.clone(),
            failure: Failure::Unavailable,
            attempts: 1,
            source: Box::new(MissingField { operation, field }),
        }
    }
}

/// Sorts an SDK error into throttling, unavailability or rejection.
fn classify<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> Failure {
    let status = error
        .raw_response()
        .map(|response| response.status().as_u16());
    let code = error.code().unwrap_or_default();
    if status == Some(429)
        || matches!(
            code,
            "TooManyRequestsException" | "ThrottlingException" | "Throttling"
        )
    {
        return Failure::Throttled;
    }
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Unavailable
        }
        _ if status.is_some_and(|status| status >= 500) => Failure::Unavailable,
        _ => Failure::Rejected,
    }
}

/// Reads static credentials from the queue's files, if it names them.
fn file_credentials(queue: &BatchQueueConfig) -> Result<Option<Credentials>, CredentialFileError> {
    let (Some(key_file), Some(secret_file)) =
        (&queue.access_key_id_file, &queue.secret_access_key_file)
    else {
        return Ok(None);
    };
    let access_key_id = read_secret("access_key_id_file", key_file)?;
    let secret_access_key = read_secret("secret_access_key_file", secret_file)?;
    Ok(Some(Credentials::new(
        access_key_id,
        secret_access_key,
        None,
        None,
        FILE_CREDENTIALS_PROVIDER,
    )))
}

fn read_secret(key: &'static str, path: &Path) -> Result<String, CredentialFileError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .map_err(|source| CredentialFileError {
            key,
            path: path.to_path_buf(),
            source,
        })
}
