//! The worker's settings, read from the environment contract.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use spillway_common::ledger::DEFAULT_PREFIX;
use spillway_common::worker_env as env;

/// Default wait of a training worker for the next round: long enough for the reduce
/// step of a large model, short enough that a stalled job releases its GPUs.
const DEFAULT_ROUND_WAIT_SECS: u64 = 600;

/// Default lease length; heartbeats renew it every third of this.
const DEFAULT_LEASE_SECS: u64 = 60;

/// Settings for one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub job_id: String,
    pub backend: String,
    pub array_id: String,
    pub array_index: u32,
    pub worker_id: String,
    pub ledger_url: String,
    pub ledger_prefix: String,
    pub cache_dir: PathBuf,
    pub lease: Duration,
    pub threads: Option<i32>,
    pub gpu_sku: String,
    /// How long a training worker waits for the job's next round; see
    /// [`env::ROUND_WAIT_SECS`].
    pub round_wait: Duration,
}

impl WorkerConfig {
    /// Reads the environment contract; a missing or invalid variable is an error that
    /// names it.
    pub fn from_env() -> anyhow::Result<Self> {
        let job_id = required(env::JOB_ID)?;
        let backend = optional(env::BACKEND).unwrap_or_else(|| "local".into());
        let array_id = optional(env::ARRAY_ID).unwrap_or_else(|| "0".into());
        let array_index = parse(env::ARRAY_INDEX)?.unwrap_or(0);
        let lease_secs: u64 = parse(env::LEASE_SECS)?.unwrap_or(DEFAULT_LEASE_SECS);
        anyhow::ensure!(
            lease_secs >= 1,
            "{} must be at least 1 second",
            env::LEASE_SECS
        );

        let mut ledger_url = required(env::LEDGER_URL)?;
        if let Some(path) = optional(env::LEDGER_PASSWORD_FILE) {
            ledger_url = with_password(&ledger_url, &path)?;
        }

        let host = spillway_common::process::hostname();
        let worker_id = env::worker_id(&backend, &array_id, array_index, &host, std::process::id());

        Ok(Self {
            job_id,
            backend,
            array_id,
            array_index,
            worker_id,
            ledger_url,
            ledger_prefix: optional(env::LEDGER_PREFIX).unwrap_or_else(|| DEFAULT_PREFIX.into()),
            cache_dir: optional(env::CACHE_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("spillway-cache")),
            lease: Duration::from_secs(lease_secs),
            threads: parse(env::THREADS)?,
            gpu_sku: optional(env::GPU_SKU).unwrap_or_else(|| "cpu".into()),
            round_wait: Duration::from_secs(
                parse(env::ROUND_WAIT_SECS)?.unwrap_or(DEFAULT_ROUND_WAIT_SECS),
            ),
        })
    }
}

fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn required(name: &str) -> anyhow::Result<String> {
    optional(name).with_context(|| {
        format!("environment variable {name} is missing; the backend that starts workers sets it")
    })
}

fn parse<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let Some(text) = optional(name) else {
        return Ok(None);
    };
    text.parse()
        .map(Some)
        .map_err(|error| anyhow::anyhow!("invalid {name}={text:?}: {error}"))
}

fn with_password(url: &str, path: &str) -> anyhow::Result<String> {
    let password = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the ledger password file {path}"))?;
    let mut parsed =
        url::Url::parse(url).with_context(|| format!("invalid {}", env::LEDGER_URL))?;
    parsed
        .set_password(Some(password.trim()))
        .map_err(|()| anyhow::anyhow!("{} cannot carry a password", env::LEDGER_URL))?;
    Ok(parsed.to_string())
}
