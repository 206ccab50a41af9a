//! Settings of the AWS Batch backend: `[backend.batch]` with one
//! `[[backend.batch.queues]]` table per job queue.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::Deserialize;

/// AWS Batch's largest array job.
pub const MAX_ARRAY_SIZE: u32 = 10_000;
/// AWS Batch's largest retry strategy `attempts`.
const MAX_ATTEMPTS: u32 = 10;
/// AWS Batch's smallest job timeout (`attemptDurationSeconds`).
const MIN_TIMEOUT_SECS: u64 = 60;

/// Workers as AWS Batch array jobs, in one or more job queues and regions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchBackendConfig {
    pub enabled: bool,
    /// Job queues in order of preference. A launch fills the first queue whose region
    /// is available and has room, then the next.
    pub queues: Vec<BatchQueueConfig>,
    /// Workers over all queues and regions.
    pub max_workers: u32,
    /// Workers over the queues of one region.
    pub max_workers_per_region: u32,
    /// Elements per array job, at most 10000 (AWS Batch's limit); a larger fleet is
    /// split into several arrays.
    pub max_array_size: u32,
    /// SubmitJob calls per second to one region. AWS allows an account 50 Batch API
    /// calls per second per region over all its clients, so keep this well below.
    pub submit_rate_per_sec: f64,
    /// SubmitJob attempts per array, the first included, before the region is
    /// skipped for `cool_down_secs`.
    pub submit_attempts: u32,
    /// Upper bound of the first wait after a throttled or failed call. The bound
    /// doubles with each retry up to `backoff_max_ms`, and each wait is drawn at
    /// random below it.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Time a region is skipped after it throttled past `submit_attempts`, failed,
    /// or had no capacity.
    pub cool_down_secs: u64,
    /// An array none of whose elements has started this long after submission shows
    /// that its region has no capacity: the array is terminated and the region skipped.
    pub start_timeout_secs: u64,
    /// Time limit of one Batch API request.
    pub request_timeout_secs: u64,
    /// Estimated time from SubmitJob to a running worker (instance start, image
    /// pull, model load), which placement weighs against deadlines.
    pub startup_secs: f64,
    /// vCPUs of each worker container.
    pub vcpus_per_worker: u32,
    /// Memory of each worker container, in MiB.
    pub memory_per_worker_mib: u64,
    /// IAM role that the containers assume, such as one that may read the shards.
    pub job_role_arn: Option<String>,
    /// Batch's attempts per array element (1 to 10). Only infrastructure failures
    /// are retried; see docs/configuration.md.
    pub attempts: u32,
    /// Time limit of one attempt of an array element; unset has none.
    pub timeout_secs: Option<u64>,
    /// GPU model name that workers report in envelopes.
    pub gpu_sku: String,
    /// Path of `spillway-worker` inside the image. The container runs it through
    /// `/bin/sh`, so the image needs a shell.
    pub worker_path: String,
    /// Model cache inside the containers.
    pub cache_dir: PathBuf,
    /// Intra-op threads per worker; 0 lets libtorch choose.
    pub threads_per_worker: u32,
    /// Ledger URL as the containers reach it, without a password; unset uses `ledger.url`.
    pub ledger_url: Option<String>,
    /// Extra variables for the workers, such as `AWS_ENDPOINT_URL_S3`.
    pub extra_environment: BTreeMap<String, String>,
}

impl Default for BatchBackendConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            queues: Vec::new(),
            max_workers: 16,
            max_workers_per_region: 16,
            max_array_size: MAX_ARRAY_SIZE,
            submit_rate_per_sec: 10.0,
            submit_attempts: 5,
            backoff_initial_ms: 200,
            backoff_max_ms: 20_000,
            cool_down_secs: 300,
            start_timeout_secs: 900,
            request_timeout_secs: 30,
            startup_secs: 240.0,
            vcpus_per_worker: 4,
            memory_per_worker_mib: 15_000,
            job_role_arn: None,
            attempts: 3,
            timeout_secs: None,
            gpu_sku: "cpu".into(),
            worker_path: "/usr/local/bin/spillway-worker".into(),
            cache_dir: PathBuf::from("/tmp/spillway-cache"),
            threads_per_worker: 0,
            ledger_url: None,
            extra_environment: BTreeMap::new(),
        }
    }
}

/// One AWS Batch job queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchQueueConfig {
    /// AWS region of the queue, such as `eu-west-1`.
    pub region: String,
    /// Name or ARN of the job queue.
    pub job_queue: String,
    /// Endpoint of a Batch-compatible service. Unset, the SDK's endpoint resolution
    /// applies: `AWS_ENDPOINT_URL_BATCH`, `AWS_ENDPOINT_URL`, then the region's AWS endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// File whose content is the access key id. Unset, credentials come from the
    /// standard AWS provider chain (environment, profile, web identity, container,
    /// instance metadata).
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// File whose content is the secret access key. Set it together with
    /// `access_key_id_file`.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Price of one GPU-hour in this queue, in the currency of the price table.
    #[serde(default)]
    pub price_per_gpu_hour: f64,
}

impl BatchBackendConfig {
    /// Lists invalid values as `key = value: fix`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.enabled {
            return problems;
        }
        let mut check = |ok: bool, key: &str, value: String, fix: &str| {
            if !ok {
                problems.push(format!("  backend.batch.{key} = {value}: {fix}"));
            }
        };

        check(
            !self.queues.is_empty(),
            "queues",
            "[]".into(),
            "add at least one [[backend.batch.queues]] table",
        );
        check(
            self.max_workers >= 1,
            "max_workers",
            self.max_workers.to_string(),
            "use at least 1",
        );
        check(
            self.max_workers_per_region >= 1,
            "max_workers_per_region",
            self.max_workers_per_region.to_string(),
            "use at least 1",
        );
        check(
            (1..=MAX_ARRAY_SIZE).contains(&self.max_array_size),
            "max_array_size",
            self.max_array_size.to_string(),
            "use a value between 1 and 10000 (AWS Batch's largest array)",
        );
        check(
            self.submit_rate_per_sec > 0.0 && self.submit_rate_per_sec <= 50.0,
            "submit_rate_per_sec",
            self.submit_rate_per_sec.to_string(),
            "use a value above 0 and at most 50 (AWS's rate per account and region)",
        );
        check(
            self.submit_attempts >= 1,
            "submit_attempts",
            self.submit_attempts.to_string(),
            "use at least 1",
        );
        check(
            self.backoff_initial_ms >= 1 && self.backoff_initial_ms <= self.backoff_max_ms,
            "backoff_initial_ms",
            self.backoff_initial_ms.to_string(),
            "use at least 1 and at most backoff_max_ms",
        );
        check(
            self.cool_down_secs >= 1,
            "cool_down_secs",
            self.cool_down_secs.to_string(),
            "use at least 1 second",
        );
        check(
            self.start_timeout_secs >= 1,
            "start_timeout_secs",
            self.start_timeout_secs.to_string(),
            "use at least 1 second",
        );
        check(
            self.request_timeout_secs >= 1,
            "request_timeout_secs",
            self.request_timeout_secs.to_string(),
            "use at least 1 second",
        );
        check(
            self.startup_secs.is_finite() && self.startup_secs >= 0.0,
            "startup_secs",
            self.startup_secs.to_string(),
            "use 0 or more seconds",
        );
        check(
            self.vcpus_per_worker >= 1,
            "vcpus_per_worker",
            self.vcpus_per_worker.to_string(),
            "use at least 1",
        );
        check(
            self.memory_per_worker_mib >= 4,
            "memory_per_worker_mib",
            self.memory_per_worker_mib.to_string(),
            "use at least 4 MiB (AWS Batch's minimum)",
        );
        check(
            (1..=MAX_ATTEMPTS).contains(&self.attempts),
            "attempts",
            self.attempts.to_string(),
            "use a value between 1 and 10 (AWS Batch's range)",
        );
        if let Some(timeout) = self.timeout_secs {
            check(
                timeout >= MIN_TIMEOUT_SECS,
                "timeout_secs",
                timeout.to_string(),
                "use at least 60 seconds (AWS Batch's minimum), or remove it",
            );
        }
        check(
            self.worker_path.starts_with('/') && !self.worker_path.contains('\''),
            "worker_path",
            format!("{:?}", self.worker_path),
            "use the absolute path of spillway-worker in the image, without single quotes",
        );
        check(
            self.cache_dir.is_absolute(),
            "cache_dir",
            self.cache_dir.display().to_string(),
            "use an absolute path inside the container",
        );
        if let Some(url) = &self.ledger_url {
            check(
                spillway_common::ledger::LedgerAddress::parse(url).is_ok(),
                "ledger_url",
                spillway_common::ledger::redact_password(url),
                "use redis://host:port/db as the containers reach the ledger, or remove it",
            );
        }
        problems.extend(queue_problems(&self.queues));
        problems
    }
}

/// Lists the invalid values of the queue tables. Queues of one region share the
/// account's request quota and one client, so they must agree on endpoint and
/// credentials.
fn queue_problems(queues: &[BatchQueueConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut region_access: HashMap<&str, RegionAccess> = HashMap::new();
    for (index, queue) in queues.iter().enumerate() {
        let mut check = |ok: bool, key: &str, value: String, fix: &str| {
            if !ok {
                problems.push(format!(
                    "  backend.batch.queues[{index}].{key} = {value}: {fix}"
                ));
            }
        };

        check(
            !queue.region.trim().is_empty(),
            "region",
            "\"\"".into(),
            "set the queue's AWS region, such as eu-west-1",
        );
        check(
            !queue.job_queue.trim().is_empty(),
            "job_queue",
            "\"\"".into(),
            "set the job queue's name or ARN",
        );
        check(
            seen.insert((queue.region.clone(), queue.job_queue.clone())),
            "job_queue",
            format!("{:?}", queue.job_queue),
            "list each job queue of a region once",
        );
        if let Some(endpoint) = &queue.endpoint_url {
            check(
                is_http_url(endpoint),
                "endpoint_url",
                format!("{endpoint:?}"),
                "use an http:// or https:// URL, or remove the key to use the AWS endpoint",
            );
        }
        check(
            queue.access_key_id_file.is_some() == queue.secret_access_key_file.is_some(),
            "access_key_id_file",
            format!("{:?}", queue.access_key_id_file),
            "set both access_key_id_file and secret_access_key_file, or neither to use the standard credential chain",
        );
        check(
            queue.price_per_gpu_hour >= 0.0 && queue.price_per_gpu_hour.is_finite(),
            "price_per_gpu_hour",
            queue.price_per_gpu_hour.to_string(),
            "use a price of 0 or more",
        );

        let access = RegionAccess::of(queue);
        let first = region_access
            .entry(queue.region.as_str())
            .or_insert_with(|| access.clone());
        check(
            *first == access,
            "endpoint_url",
            format!("{:?}", queue.endpoint_url),
            "give every queue of one region the same endpoint_url and credential files",
        );
    }
    problems
}

/// The settings that make a region's client.
#[derive(Debug, Clone, PartialEq)]
struct RegionAccess {
    endpoint_url: Option<String>,
    access_key_id_file: Option<PathBuf>,
    secret_access_key_file: Option<PathBuf>,
}

impl RegionAccess {
    fn of(queue: &BatchQueueConfig) -> Self {
        Self {
            endpoint_url: queue.endpoint_url.clone(),
            access_key_id_file: queue.access_key_id_file.clone(),
            secret_access_key_file: queue.secret_access_key_file.clone(),
        }
    }
}

fn is_http_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(region: &str, job_queue: &str) -> BatchQueueConfig {
        BatchQueueConfig {
            region: region.into(),
            job_queue: job_queue.into(),
            endpoint_url: None,
            access_key_id_file: None,
            secret_access_key_file: None,
            price_per_gpu_hour: 1.0,
        }
    }

    #[test]
    fn disabled_section_is_not_checked() {
        let config = BatchBackendConfig {
            max_array_size: 0,
            ..BatchBackendConfig::default()
        };

        assert!(config.problems().is_empty());
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let mut endpoint = queue("eu-west-1", "spot");
        endpoint.endpoint_url = Some("http://127.0.0.1:1".into());
        let config = BatchBackendConfig {
            enabled: true,
            queues: vec![
                queue("eu-west-1", "spot"),
                endpoint,
                queue("", ""),
                BatchQueueConfig {
                    access_key_id_file: Some("/k".into()),
                    price_per_gpu_hour: -1.0,
                    ..queue("us-east-1", "on-demand")
                },
            ],
            max_array_size: 10_001,
            submit_rate_per_sec: 0.0,
            attempts: 11,
            timeout_secs: Some(10),
            worker_path: "spillway-worker".into(),
            ..BatchBackendConfig::default()
        };

        let problems = config.problems().join("\n");

        for key in [
            "backend.batch.max_array_size",
            "backend.batch.submit_rate_per_sec",
            "backend.batch.attempts",
            "backend.batch.timeout_secs",
            "backend.batch.worker_path",
            "backend.batch.queues[1].job_queue",
            "backend.batch.queues[1].endpoint_url",
            "backend.batch.queues[2].region",
            "backend.batch.queues[3].access_key_id_file",
            "backend.batch.queues[3].price_per_gpu_hour",
        ] {
            assert!(problems.contains(key), "{key} missing from:\n{problems}");
        }
        assert!(!problems.contains("queues[0]"), "{problems}");
    }

    #[test]
    fn enabled_without_queues_is_reported() {
        let config = BatchBackendConfig {
            enabled: true,
            ..BatchBackendConfig::default()
        };

        let problems = config.problems().join("\n");

        assert!(problems.contains("backend.batch.queues = []"), "{problems}");
    }
}
