//! Settings of the Slurm backend: `[backend.slurm]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Interface the daemon uses to reach Slurm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlurmApiKind {
    /// slurmrestd with JWT.
    Rest,
    /// `sbatch`, `squeue`, `sinfo`, `scancel` and `scontrol` on this host.
    Cli,
}

/// Workers as Slurm array jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmBackendConfig {
    pub enabled: bool,
    pub api: SlurmApiKind,
    /// slurmrestd's base URL, such as `http://slurmrestd.example:6820`.
    pub rest_url: String,
    /// Slurm user the daemon acts as; its jobs run under this user.
    pub user: String,
    /// File with a JWT for `user`, rewritten by the site before it expires.
    pub token_file: Option<PathBuf>,
    /// Command that prints a fresh JWT, such as `scontrol token username=spillway lifespan=3600`.
    pub token_command: Option<String>,
    /// Time limit of one slurmrestd request or one Slurm command.
    pub request_timeout_secs: u64,
    /// `slurm.conf` for the commands of `api = "cli"`; unset uses Slurm's default lookup.
    pub slurm_conf: Option<PathBuf>,
    /// Path of `spillway-worker` on the compute nodes.
    pub worker_binary: PathBuf,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Time limit of each array element.
    pub time_limit_secs: Option<u64>,
    /// Elements of one array that may run at once (`%N`).
    pub throttle: Option<u32>,
    /// Workers over all jobs.
    pub max_workers: u32,
    /// The cluster's MaxArraySize; read from Slurm when unset (slurmrestd 22.05 does
    /// not report it, so set it there).
    pub max_array_size: Option<u32>,
    /// GPU type in the gres request, such as `a100`.
    pub gpu_type: Option<String>,
    /// GPU model name that workers report in envelopes.
    pub gpu_sku: String,
    pub cpus_per_task: Option<u32>,
    pub memory_per_task_mib: Option<u64>,
    /// Intra-op threads per worker; 0 lets libtorch choose.
    pub threads_per_worker: u32,
    /// Working directory of the array elements (absolute, shared).
    pub working_dir: PathBuf,
    /// Folder for the elements' output files (`%x-%A_%a.log`).
    pub log_dir: PathBuf,
    /// Model cache on the compute nodes.
    pub cache_dir: PathBuf,
    /// Batch script template with `{worker_binary}`, `{image}` and `{index_offset}`.
    pub script_template_file: Option<PathBuf>,
    /// Extra variables for the workers, such as `AWS_ENDPOINT_URL_S3`.
    pub extra_environment: BTreeMap<String, String>,
}

impl Default for SlurmBackendConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            api: SlurmApiKind::Rest,
            rest_url: String::new(),
            user: "spillway".into(),
            token_file: None,
            token_command: None,
            request_timeout_secs: 30,
            slurm_conf: None,
            worker_binary: PathBuf::from("/usr/lib/spillway/spillway-worker"),
            partition: None,
            account: None,
            qos: None,
            time_limit_secs: None,
            throttle: None,
            max_workers: 4,
            max_array_size: None,
            gpu_type: None,
            gpu_sku: "cpu".into(),
            cpus_per_task: None,
            memory_per_task_mib: None,
            threads_per_worker: 0,
            working_dir: PathBuf::from("/var/lib/spillway"),
            log_dir: PathBuf::from("/var/log/spillway/workers"),
            cache_dir: PathBuf::from("/var/cache/spillway"),
            script_template_file: None,
            extra_environment: BTreeMap::new(),
        }
    }
}

impl SlurmBackendConfig {
    /// Lists invalid values as `key = value: fix`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.enabled {
            return problems;
        }
        if self.api == SlurmApiKind::Rest {
            if !(self.rest_url.starts_with("http://") || self.rest_url.starts_with("https://")) {
                problems.push(format!(
                    "  backend.slurm.rest_url = {:?}: set slurmrestd's URL, such as http://host:6820",
                    self.rest_url
                ));
            }
            if self.token_file.is_some() == self.token_command.is_some() {
                problems.push(
                    "  backend.slurm.token_file / token_command: set exactly one source of JWTs"
                        .into(),
                );
            }
        }
        if self.max_workers == 0 {
            problems.push("  backend.slurm.max_workers = 0: use at least 1".into());
        }
        if self.throttle == Some(0) {
            problems.push("  backend.slurm.throttle = 0: use at least 1, or remove it".into());
        }
        if self.max_array_size == Some(0) {
            problems
                .push("  backend.slurm.max_array_size = 0: use the cluster's MaxArraySize".into());
        }
        if !self.working_dir.is_absolute() {
            problems.push(format!(
                "  backend.slurm.working_dir = {}: use an absolute path",
                self.working_dir.display()
            ));
        }
        problems
    }
}
