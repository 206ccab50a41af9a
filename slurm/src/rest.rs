//! [`SlurmApi`] over slurmrestd's REST API, `openapi/v0.0.38` (Slurm 22.05).
//!
//! Requests go through the client that progenitor generated from the patched
//! OpenAPI document ([`crate::generated`]). Its `pre` hook adds the JWT headers of
//! [`Auth`]. slurmrestd 22.05 replies to a rejected token with HTTP 500 and Slurm error
//! -1 ("Unspecified error") or 5005 ("Zero Bytes were transmitted or received"), and
//! a missing one with 401. After such a reply the token is renewed and the request
//! sent once more.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use progenitor_client::{ClientHooks, ClientInfo, OperationInfo, ResponseValue};
use reqwest::header::HeaderName;

use crate::api::{
    ArraySubmission, DEFAULT_MAX_ARRAY_SIZE, Diag, JobInfo, LimitSource, NodeInfo, PartitionInfo,
    SlurmApi, SubmittedArray,
};
use crate::auth::{Auth, TokenSource};
use crate::error::{Operation, ServerError, SlurmError};
use crate::generated::{Client, types};

/// Default time limit of one request to slurmrestd.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const USER_NAME_HEADER: HeaderName = HeaderName::from_static("x-slurm-user-name");
const USER_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-slurm-user-token");

/// Slurm error numbers that slurmrestd 22.05 sends, with HTTP 500, when slurmctld
/// rejects the token: -1 (SLURM_ERROR, "Unspecified error") from listings and ping,
/// 5005 ("Zero Bytes were transmitted or received") from submit and cancel. 1007
/// (SLURM_PROTOCOL_AUTHENTICATION_ERROR) is included for other versions.
const TOKEN_REJECTION_CODES: [i64; 3] = [-1, 1007, 5005];

/// Settings of a [`RestClient`].
#[derive(Clone, Debug)]
pub struct RestConfig {
    /// slurmrestd's base URL, such as `http://127.0.0.1:6820`.
    pub url: String,
    /// The Slurm user that requests act as (`X-SLURM-USER-NAME`).
    pub user: String,
    /// The source of tokens for that user.
    pub token_source: TokenSource,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// The cluster's `MaxArraySize` from Spillway's configuration. slurmrestd 22.05
    /// does not report it; `None` assumes Slurm's default of 1001.
    pub max_array_size: Option<u32>,
}

impl RestConfig {
    /// Creates settings with the default request timeout and no configured
    /// `MaxArraySize`.
    pub fn new(url: impl Into<String>, user: impl Into<String>, token_source: TokenSource) -> Self {
        RestConfig {
            url: url.into(),
            user: user.into(),
            token_source,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_array_size: None,
        }
    }
}

/// A slurmrestd client with the operations of [`SlurmApi`].
#[derive(Debug)]
pub struct RestClient {
    client: Client,
    max_array_size: Option<u32>,
}

impl RestClient {
    /// Creates a client. No request is sent until the first operation.
    pub fn new(config: RestConfig) -> Result<RestClient, SlurmError> {
        let auth = Auth::new(config.user, config.token_source)
            .map_err(|reason| SlurmError::Config { reason })?;
        Self::with_auth(
            &config.url,
            auth,
            config.request_timeout,
            config.max_array_size,
        )
    }

    /// Creates a client with an [`Auth`] built by the caller, for example with a
    /// different renewal share.
    pub fn with_auth(
        url: &str,
        auth: Auth,
        request_timeout: Duration,
        max_array_size: Option<u32>,
    ) -> Result<RestClient, SlurmError> {
        let parsed = reqwest::Url::parse(url).map_err(|error| SlurmError::Config {
            reason: format!("invalid slurmrestd URL {url:?}: {error}"),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(SlurmError::Config {
                reason: format!("slurmrestd URL {url:?} must start with http:// or https://"),
            });
        }
        if max_array_size == Some(0) {
            return Err(SlurmError::Config {
                reason: "max_array_size must be at least 1".to_string(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(request_timeout)
            .timeout(request_timeout)
            .build()
            .map_err(|error| SlurmError::Config {
                reason: format!("could not build the HTTP client: {error}"),
            })?;
        Ok(RestClient {
            client: Client::new_with_client(url.trim_end_matches('/'), http, Arc::new(auth)),
            max_array_size,
        })
    }

    /// Returns the authentication state, for example to count token renewals.
    pub fn auth(&self) -> &Auth {
        self.client.inner()
    }

    /// Returns the generated client, for operations that [`SlurmApi`] lacks.
    pub fn generated(&self) -> &Client {
        &self.client
    }

    /// Sends a request; when slurmrestd rejects the token, renews it and sends the
    /// request once more.
    async fn call<T, F, Fut>(&self, operation: &Operation, send: F) -> Result<T, SlurmError>
    where
        F: Fn() -> Fut,
        Fut:
            Future<Output = Result<ResponseValue<T>, progenitor_client::Error<types::V0038Errors>>>,
    {
        let token_error = |source| SlurmError::Token {
            operation: operation.clone(),
            source,
        };
        let token = self.auth().token().await.map_err(token_error)?;
        let failure = match send().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(error) => Failure::from_client_error(error).await,
        };
        if !failure.is_token_rejection() {
            return Err(failure.into_error(operation, self.client.baseurl()));
        }

        tracing::warn!(%operation, user = %self.auth().user(), error = %failure, "slurmrestd rejected the token; renewing it and retrying once");
        self.auth()
            .renew_after_rejection(&token)
            .await
            .map_err(token_error)?;
        let failure = match send().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(error) => Failure::from_client_error(error).await,
        };
        match failure {
            Failure::Response { status, errors } if Failure::rejects_token(status, &errors) => {
                Err(SlurmError::Unauthorized {
                    operation: operation.clone(),
                    user: self.auth().user().to_string(),
                    status,
                    errors,
                })
            }
            failure => Err(failure.into_error(operation, self.client.baseurl())),
        }
    }
}

/// Adds the JWT headers to every request of the generated client.
impl ClientHooks<Arc<Auth>> for Client {
    async fn pre<E>(
        &self,
        request: &mut reqwest::Request,
        _info: &OperationInfo,
    ) -> Result<(), progenitor_client::Error<E>> {
        // `RestClient::call` obtains a token before it sends; only a caller of the
        // generated client that skipped it gets here without one.
        let (user, token) = self.inner().headers().ok_or_else(|| {
            progenitor_client::Error::Custom(
                "no Slurm token: call through RestClient, which obtains one".to_string(),
            )
        })?;
        let headers = request.headers_mut();
        headers.insert(USER_NAME_HEADER, user);
        headers.insert(USER_TOKEN_HEADER, token);
        Ok(())
    }
}

/// A failed request, before it is attributed to an operation.
#[derive(Debug)]
enum Failure {
    /// slurmrestd replied with an error status.
    Response {
        status: u16,
        errors: Vec<ServerError>,
    },
    /// The request did not complete.
    Transport(reqwest::Error),
    /// The response could not be read.
    Invalid(String),
}

impl Failure {
    async fn from_client_error(error: progenitor_client::Error<types::V0038Errors>) -> Failure {
        use progenitor_client::Error;
        match error {
            Error::ErrorResponse(response) => Failure::Response {
                status: response.status().as_u16(),
                errors: server_errors(response.into_inner().errors.as_deref()),
            },
            Error::UnexpectedResponse(response) => Self::from_unexpected(response).await,
            Error::CommunicationError(error)
            | Error::ResponseBodyError(error)
            | Error::InvalidUpgrade(error) => Failure::Transport(error),
            Error::InvalidResponsePayload(body, error) => Failure::Invalid(format!(
                "{error}; the body starts with {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Error::InvalidRequest(reason) | Error::Custom(reason) => Failure::Invalid(reason),
        }
    }

    /// Reads an undeclared status: an error body if it has one, else its text,
    /// such as the plain "Authentication failure" of a 401.
    async fn from_unexpected(response: reqwest::Response) -> Failure {
        let status = response.status().as_u16();
        let body = match response.text().await {
            Ok(body) => body,
            Err(error) => return Failure::Transport(error),
        };
        let errors = match serde_json::from_str::<types::V0038Errors>(&body) {
            Ok(parsed) => server_errors(parsed.errors.as_deref()),
            Err(_) if body.trim().is_empty() => Vec::new(),
            Err(_) => vec![ServerError {
                message: Some(body.trim().chars().take(200).collect()),
                ..ServerError::default()
            }],
        };
        Failure::Response { status, errors }
    }

    fn rejects_token(status: u16, errors: &[ServerError]) -> bool {
        status == 401
            || (status == 500
                && errors.iter().any(|error| {
                    error
                        .code
                        .is_some_and(|code| TOKEN_REJECTION_CODES.contains(&code))
                }))
    }

    fn is_token_rejection(&self) -> bool {
        matches!(self, Failure::Response { status, errors } if Self::rejects_token(*status, errors))
    }

    fn into_error(self, operation: &Operation, url: &str) -> SlurmError {
        let operation = operation.clone();
        match self {
            Failure::Response { status, errors } => SlurmError::Rejected {
                operation,
                status: Some(status),
                errors,
            },
            Failure::Transport(source) => SlurmError::Unreachable {
                operation,
                url: url.to_string(),
                source,
            },
            Failure::Invalid(detail) => SlurmError::InvalidResponse { operation, detail },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Response { status, errors } => {
                write!(f, "HTTP {status}: {}", crate::error::ServerErrors(errors))
            }
            Failure::Transport(error) => write!(f, "{error}"),
            Failure::Invalid(detail) => f.write_str(detail),
        }
    }
}

fn server_errors(errors: Option<&[types::V0038Error]>) -> Vec<ServerError> {
    errors
        .unwrap_or_default()
        .iter()
        .map(ServerError::from)
        .collect()
}

/// Fails when a successful response still lists errors.
fn check_errors(
    operation: &Operation,
    errors: Option<&[types::V0038Error]>,
) -> Result<(), SlurmError> {
    let errors = server_errors(errors);
    if errors.is_empty() {
        return Ok(());
    }
    Err(SlurmError::Rejected {
        operation: operation.clone(),
        status: Some(200),
        errors,
    })
}

/// Builds slurmrestd's submission body. Every element is a one-node job with one
/// task, so `gpus_per_node` is the GPU count of each element.
fn submission_body(request: &ArraySubmission) -> types::V0038JobSubmission {
    let environment = request
        .environment
        .iter()
        .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
        .collect();
    let job = types::V0038JobProperties {
        name: Some(request.job_name.clone()),
        array: Some(request.array_expression()),
        partition: request.partition.clone(),
        gpus_per_node: request.gpus_expression(),
        cpus_per_task: request.cpus_per_task.map(i64::from),
        memory_per_node: request
            .memory_per_task_mib
            .and_then(|mib| i64::try_from(mib).ok()),
        time_limit: request
            .time_limit_minutes()
            .and_then(|minutes| i64::try_from(minutes).ok()),
        account: request.account.clone(),
        qos: request.qos.clone(),
        current_working_directory: Some(request.working_directory.display().to_string()),
        environment,
        standard_output: request.output_path.clone(),
        standard_error: request.error_path.clone(),
        nodes: vec![1, 1],
        tasks: Some(1),
        ..types::V0038JobProperties::default()
    };
    types::V0038JobSubmission {
        script: request.script.clone(),
        job: Some(job),
        jobs: Vec::new(),
    }
}

/// Converts records, logging and skipping those that cannot be read.
fn convert_records<R, T, E: std::fmt::Display>(
    operation: &Operation,
    records: Option<Vec<R>>,
    convert: impl Fn(&R) -> Result<T, E>,
) -> Vec<T> {
    let mut converted = Vec::new();
    for record in records.unwrap_or_default() {
        match convert(&record) {
            Ok(value) => converted.push(value),
            Err(error) => {
                tracing::warn!(%operation, %error, "skipping a record that cannot be read")
            }
        }
    }
    converted
}

#[async_trait]
impl SlurmApi for RestClient {
    async fn ping(&self) -> Result<(), SlurmError> {
        let operation = Operation::Ping;
        let response = self
            .call(&operation, || self.client.slurm_v0_0_38_ping())
            .await?;
        let pings = response.pings.unwrap_or_default();
        if pings
            .iter()
            .any(|ping| ping.ping == Some(types::V0038PingPing::Up))
        {
            return Ok(());
        }
        let controllers = pings
            .iter()
            .map(|ping| {
                format!(
                    "{} {}",
                    ping.hostname.as_deref().unwrap_or("unknown host"),
                    ping.ping
                        .map_or("without state".to_string(), |state| state.to_string())
                )
            })
            .collect();
        Err(SlurmError::ControllerDown {
            operation,
            controllers,
        })
    }

    async fn submit_array(&self, request: &ArraySubmission) -> Result<SubmittedArray, SlurmError> {
        let operation = Operation::Submit {
            job_name: request.job_name.clone(),
            partition: request.partition.clone(),
        };
        request
            .validate()
            .map_err(|reason| SlurmError::InvalidRequest {
                operation: operation.clone(),
                reason,
            })?;
        let body = submission_body(request);
        let response = self
            .call(&operation, || self.client.slurm_v0_0_38_submit_job(&body))
            .await?;
        check_errors(&operation, response.errors.as_deref())?;

        let job_id = response
            .job_id
            .and_then(|id| u64::try_from(id).ok())
            .ok_or_else(|| SlurmError::InvalidResponse {
                operation: operation.clone(),
                detail: "the response has no job_id".to_string(),
            })?;
        tracing::debug!(slurm_job_id = job_id, array = %request.array_expression(), "submitted Slurm array job");
        Ok(SubmittedArray {
            job_id,
            user_message: response
                .job_submit_user_msg
                .filter(|message| !message.is_empty()),
        })
    }

    async fn jobs(&self, job_ids: &[u64]) -> Result<Vec<JobInfo>, SlurmError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let operation = Operation::ListJobs;
        let response = self
            .call(&operation, || self.client.slurm_v0_0_38_get_jobs(None))
            .await?;
        let requested = job_ids.iter().copied().collect::<HashSet<_>>();
        let jobs = convert_records(&operation, response.jobs, |record| record.to_job_info());
        Ok(jobs
            .into_iter()
            .filter(|job| requested.contains(&job.job_id) || requested.contains(&job.tracking_id()))
            .collect())
    }

    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError> {
        let operation = Operation::Cancel { job_id };
        let id = job_id.to_string();
        let response = self
            .call(&operation, || {
                self.client.slurm_v0_0_38_cancel_job(&id, None)
            })
            .await?;
        check_errors(&operation, response.errors.as_deref())?;
        tracing::debug!(slurm_job_id = job_id, "cancelled Slurm job");
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, SlurmError> {
        let operation = Operation::ListNodes;
        let response = self
            .call(&operation, || self.client.slurm_v0_0_38_get_nodes(None))
            .await?;
        Ok(convert_records(&operation, response.nodes, |record| {
            record.to_node_info()
        }))
    }

    /// Lists partitions. When a partition's TRES string counts no GPUs, which is
    /// the case in Slurm 22.05 unless `AccountingStorageTRES` lists `gres/gpu`, a
    /// second request lists the nodes and sums their GPUs per partition.
    async fn partitions(&self) -> Result<Vec<PartitionInfo>, SlurmError> {
        let operation = Operation::ListPartitions;
        let response = self
            .call(&operation, || {
                self.client.slurm_v0_0_38_get_partitions(None)
            })
            .await?;
        let converted = convert_records(&operation, response.partitions, |record| {
            record.to_partition_info()
        });
        if converted.iter().all(|(_, tres_gpus)| tres_gpus.is_some()) {
            return Ok(converted
                .into_iter()
                .map(|(partition, _)| partition)
                .collect());
        }

        let mut gpus_by_partition = BTreeMap::<String, u64>::new();
        for node in self.nodes().await? {
            for partition in &node.partitions {
                *gpus_by_partition.entry(partition.clone()).or_default() += node.gpus;
            }
        }
        Ok(converted
            .into_iter()
            .map(|(mut partition, tres_gpus)| {
                if tres_gpus.is_none() {
                    partition.gpus = gpus_by_partition.get(&partition.name).copied().unwrap_or(0);
                }
                partition
            })
            .collect())
    }

    async fn diag(&self) -> Result<Diag, SlurmError> {
        let operation = Operation::Diag;
        let response = self
            .call(&operation, || self.client.slurm_v0_0_38_diag())
            .await?;
        let statistics = response.statistics.unwrap_or_default();
        let count = |value: Option<i64>| value.and_then(|value| u64::try_from(value).ok());
        let (max_array_size, max_array_size_source) = match self.max_array_size {
            Some(size) => (size, LimitSource::Configured),
            None => (DEFAULT_MAX_ARRAY_SIZE, LimitSource::SlurmDefault),
        };
        Ok(Diag {
            slurm_release: response
                .meta
                .and_then(|meta| meta.slurm)
                .and_then(|slurm| slurm.release),
            max_array_size,
            max_array_size_source,
            jobs_running: count(statistics.jobs_running),
            jobs_pending: count(statistics.jobs_pending),
            jobs_submitted: count(statistics.jobs_submitted),
            server_thread_count: count(statistics.server_thread_count),
            schedule_cycle_last_micros: count(statistics.schedule_cycle_last),
        })
    }
}
