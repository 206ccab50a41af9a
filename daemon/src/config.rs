//! Daemon configuration: a TOML file, then `SPILLWAY__SECTION__KEY` environment
//! overrides, then one validation pass that reports every error with its key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod batch;
mod cost;
mod notify;
mod placement;
mod pubsub;
mod slurm;
mod sqs;
pub use batch::{BatchBackendConfig, BatchQueueConfig};
pub use cost::CostConfig;
#[cfg(test)]
pub use cost::PriceConfig;
pub use notify::{NotifyConfig, PubsubNotifyConfig, SqsNotifyConfig};
pub use placement::PlacementConfig;
pub use pubsub::{GoogleCredentials, PubsubSubscriptionConfig};
pub use slurm::{SlurmApiKind, SlurmBackendConfig};
pub use sqs::SqsQueueConfig;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/spillway/spillway.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub backend: BackendConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub cost: CostConfig,
    #[serde(default)]
    pub placement: PlacementConfig,
}

/// The Redis ledger.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `redis://host:port/db`, or `redis+cluster://host:port/?addr=host:port` for a
    /// Redis Cluster; put the password in `password_file`, not here.
    pub url: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// File whose content is the Redis password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// Intake sources: the Redis stream and any number of SQS queues and Pub/Sub
/// subscriptions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    #[serde(default)]
    pub redis_stream: RedisStreamConfig,
    /// SQS queues, one `[[intake.sqs]]` table each; every queue gets its own intake loop.
    #[serde(default)]
    pub sqs: Vec<SqsQueueConfig>,
    /// Pub/Sub subscriptions, one `[[intake.pubsub]]` table each; every subscription
    /// gets its own intake loop.
    #[serde(default)]
    pub pubsub: Vec<PubsubSubscriptionConfig>,
}

/// The on-site intake: a Redis stream read through a consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisStreamConfig {
    pub enabled: bool,
    pub stream: String,
    pub group: String,
    pub dead_letter_stream: String,
    /// Messages pending this long with a consumer that stopped are claimed by another.
    pub claim_idle_secs: u64,
    /// A message delivered this many times without being acknowledged is dead-lettered.
    pub max_deliveries: u64,
    /// Messages read per call.
    pub batch_size: usize,
}

impl Default for RedisStreamConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stream: "spillway:intake".into(),
            group: "spillway".into(),
            dead_letter_stream: "spillway:intake:dead".into(),
            claim_idle_secs: 60,
            max_deliveries: 5,
            batch_size: 16,
        }
    }
}

/// The daemon's own loops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Period of the reconcile loop: reap leases, place workers, reduce finished jobs.
    pub reconcile_interval_secs: f64,
    /// Lease length given to workers; they renew it every third of this.
    pub lease_secs: u64,
    /// Address of the Prometheus endpoint, such as `127.0.0.1:9464`; empty disables it.
    pub metrics_listen: String,
    /// Time allowed to drain on SIGTERM before the daemon exits anyway.
    pub shutdown_timeout_secs: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            reconcile_interval_secs: 2.0,
            lease_secs: 60,
            metrics_listen: "127.0.0.1:9464".into(),
            shutdown_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    #[serde(default)]
    pub local: LocalBackendConfig,
    #[serde(default)]
    pub slurm: SlurmBackendConfig,
    #[serde(default)]
    pub batch: BatchBackendConfig,
}

/// Worker processes on this machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalBackendConfig {
    pub enabled: bool,
    /// Path of the `spillway-worker` binary.
    pub worker_binary: PathBuf,
    /// Workers running at once on this machine, over all jobs.
    pub max_workers: u32,
    /// Intra-op threads per worker; 0 lets libtorch choose.
    pub threads_per_worker: u32,
    /// Folder for the workers' model cache.
    pub cache_dir: PathBuf,
    /// Folder for worker log files, one per worker.
    pub log_dir: PathBuf,
    /// GPU model name that workers report in envelopes; `cpu` without GPUs.
    pub gpu_sku: String,
}

impl Default for LocalBackendConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            worker_binary: PathBuf::from("/usr/lib/spillway/spillway-worker"),
            max_workers: 2,
            threads_per_worker: 1,
            cache_dir: PathBuf::from("/var/cache/spillway"),
            log_dir: PathBuf::from("/var/log/spillway/workers"),
            gpu_sku: "cpu".into(),
        }
    }
}

fn default_prefix() -> String {
    spillway_common::ledger::DEFAULT_PREFIX.into()
}

/// Errors while loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to load configuration from {path}")]
    Load {
        path: String,
        #[source]
        source: config::ConfigError,
    },
    #[error(
        "configuration file {path} not found; pass --config FILE or set SPILLWAY_CONFIG \
         (docs/examples/spillway.toml is an annotated example)"
    )]
    Missing { path: String },
    #[error("invalid configuration in {path}:\n{}", .problems.join("\n"))]
    Invalid { path: String, problems: Vec<String> },
}

impl Config {
    /// Loads `path` with environment overrides and validates the result; a missing
    /// file is an error.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let load_error = |source| ConfigError::Load {
            path: display.clone(),
            source,
        };
        if !path.exists() {
            return Err(ConfigError::Missing { path: display });
        }
        let settings = config::Config::builder()
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            )
            .add_source(
                config::Environment::with_prefix("SPILLWAY")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(load_error)?;
        let config: Config = settings.try_deserialize().map_err(load_error)?;

        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: display,
                problems,
            });
        }
        Ok(config)
    }

    /// Lists every invalid value with its key and the fix.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, value: String, fix: &str| {
            if !ok {
                problems.push(format!("  {key} = {value}: {fix}"));
            }
        };

        check(
            spillway_common::ledger::LedgerAddress::parse(&self.ledger.url).is_ok(),
            "ledger.url",
            spillway_common::ledger::redact_password(&self.ledger.url),
            "use redis://host:port/db, or redis+cluster://host:port/?addr=host:port for a Redis Cluster",
        );
        check(
            !self.ledger.prefix.is_empty(),
            "ledger.prefix",
            "\"\"".into(),
            "set a non-empty prefix",
        );
        check(
            self.daemon.reconcile_interval_secs >= 0.05
                && self.daemon.reconcile_interval_secs <= 3600.0,
            "daemon.reconcile_interval_secs",
            self.daemon.reconcile_interval_secs.to_string(),
            "use a value between 0.05 and 3600",
        );
        check(
            self.daemon.lease_secs >= 1,
            "daemon.lease_secs",
            self.daemon.lease_secs.to_string(),
            "use at least 1 second",
        );
        let stream = &self.intake.redis_stream;
        check(
            stream.max_deliveries >= 1,
            "intake.redis_stream.max_deliveries",
            stream.max_deliveries.to_string(),
            "use at least 1",
        );
        check(
            stream.batch_size >= 1 && stream.batch_size <= 1000,
            "intake.redis_stream.batch_size",
            stream.batch_size.to_string(),
            "use a value between 1 and 1000",
        );
        check(
            stream.stream != stream.dead_letter_stream,
            "intake.redis_stream.dead_letter_stream",
            stream.dead_letter_stream.clone(),
            "use a stream other than intake.redis_stream.stream",
        );
        let local = &self.backend.local;
        check(
            local.max_workers >= 1,
            "backend.local.max_workers",
            local.max_workers.to_string(),
            "use at least 1",
        );
        problems.extend(sqs::problems(&self.intake.sqs));
        problems.extend(pubsub::problems(&self.intake.pubsub));
        problems.extend(notify::problems(&self.notify));
        problems.extend(cost::problems(&self.cost));
        problems.extend(placement::problems(&self.placement));
        problems.extend(self.backend.slurm.problems());
        problems.extend(self.backend.batch.problems());
        problems
    }

    /// The ledger URL with the password from `password_file` filled in.
    pub fn ledger_url(&self) -> anyhow::Result<String> {
        let Some(path) = &self.ledger.password_file else {
            return Ok(self.ledger.url.clone());
        };
        let password = std::fs::read_to_string(path).map_err(|error| {
            anyhow::anyhow!(
                "failed to read ledger.password_file {}: {error}",
                path.display()
            )
        })?;
        let mut url = url::Url::parse(&self.ledger.url)?;
        url.set_password(Some(password.trim()))
            .map_err(|()| anyhow::anyhow!("ledger.url cannot carry a password"))?;
        Ok(url.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_values_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spillway.toml");
        std::fs::write(
            &path,
            "[ledger]\nurl = \"http://x\"\n[daemon]\nlease_secs = 0\n[backend.local]\nmax_workers = 0\n",
        )
        .unwrap();

        let error = Config::load(&path).unwrap_err().to_string();

        assert!(error.contains("ledger.url"), "{error}");
        assert!(error.contains("daemon.lease_secs"), "{error}");
        assert!(error.contains("backend.local.max_workers"), "{error}");
    }

    #[test]
    fn sqs_queue_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spillway.toml");
        std::fs::write(
            &path,
            "[ledger]\nurl = \"redis://127.0.0.1/0\"\n\
             [[intake.sqs]]\nqueue_url = \"http://127.0.0.1:9/1/a.fifo\"\nregion = \"eu-west-1\"\n\
             dead_letter_queue_url = \"http://127.0.0.1:9/1/a-dead.fifo\"\n\
             [[intake.sqs]]\nqueue_url = \"sqs/b\"\nregion = \"\"\n\
             dead_letter_queue_url = \"sqs/b\"\nvisibility_timeout_secs = 1\n\
             wait_time_secs = 21\nbatch_size = 11\naccess_key_id_file = \"/k\"\n",
        )
        .unwrap();

        let error = Config::load(&path).unwrap_err().to_string();

        for key in [
            "intake.sqs[1].queue_url",
            "intake.sqs[1].region",
            "intake.sqs[1].dead_letter_queue_url",
            "intake.sqs[1].visibility_timeout_secs",
            "intake.sqs[1].wait_time_secs",
            "intake.sqs[1].batch_size",
            "intake.sqs[1].access_key_id_file",
        ] {
            assert!(error.contains(key), "{key} missing from: {error}");
        }
        assert!(!error.contains("intake.sqs[0]"), "{error}");
    }

    #[test]
    fn sqs_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spillway.toml");
        std::fs::write(
            &path,
            "[ledger]\nurl = \"redis://127.0.0.1/0\"\n\
             [[intake.sqs]]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/1/a.fifo\"\n\
             region = \"eu-west-1\"\n\
             dead_letter_queue_url = \"https://sqs.eu-west-1.amazonaws.com/1/a-dead\"\n",
        )
        .unwrap();

        let config = Config::load(&path).unwrap();

        let queue = &config.intake.sqs[0];
        assert_eq!(queue.visibility_timeout_secs, 60);
        assert_eq!(queue.wait_time_secs, 20);
        assert_eq!(queue.batch_size, 10);
        assert_eq!(queue.max_deliveries, 5);
        assert!(queue.is_fifo());
        assert!(!queue.dead_letter_is_fifo());
    }

    #[test]
    fn missing_file_is_an_error() {
        let error = Config::load(Path::new("/nonexistent/spillway.toml")).unwrap_err();

        assert!(matches!(error, ConfigError::Missing { .. }), "{error}");
        assert!(
            error.to_string().contains("/nonexistent/spillway.toml"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spillway.toml");
        std::fs::write(&path, "[ledger]\nurl = \"redis://127.0.0.1/0\"\nfoo = 1\n").unwrap();

        let error = format!(
            "{:#}",
            anyhow::Error::from(Config::load(&path).unwrap_err())
        );

        assert!(error.contains("foo"), "{error}");
    }
}
