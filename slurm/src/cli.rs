//! [`SlurmApi`] over Slurm's command line tools, for sites without slurmrestd.
//!
//! Each operation runs one or two commands:
//!
//! | operation | commands |
//! |---|---|
//! | `ping` | `scontrol ping` |
//! | `submit_array` | `sbatch --parsable`, with the script on standard input |
//! | `jobs` | `squeue --json` |
//! | `cancel` | `scancel --verbose` |
//! | `nodes` | `sinfo --json` |
//! | `partitions` | `scontrol --oneliner show partition`, and `sinfo --json` for GPUs |
//! | `diag` | `scontrol show config` for `MaxArraySize`, and `sdiag` |
//!
//! The JSON of `squeue --json` and `sinfo --json` has the shape of slurmrestd's
//! responses of the same Slurm version, so [`crate::records`] reads both. Slurm
//! 22.05's tools behave in ways that shape this client:
//! - `squeue --json` and `sinfo --json` ignore every filter option (squeue(1) and
//!   sinfo(1) of 22.05), so `jobs` selects the records itself.
//! - When slurmctld cannot be reached, they still exit with status 0 and report the
//!   failure in the `errors` array of their JSON, which this client checks.
//! - `sinfo --json` lists nodes only, so partitions come from `scontrol`.
//! - `scancel` exits with status 0 for an unknown job id, and prints the error only
//!   with `--verbose`.
//!
//! Every command runs with `PATH` and `SLURM_CONF` as its only variables, never
//! the whole environment of the calling process. `sbatch` runs with the job's
//! variables and `SLURM_CONF` instead, and passes them all to the job with
//! `--export=ALL`. With an explicit list such as `--export=PATH,FOO`, Slurm 22.05
//! would add the user's login environment. A command that runs longer than
//! [`CliConfig::command_timeout`] is killed.
// NOTE: only Slurm 22.05.8 was run. Later versions print other JSON: the
// `sinfo --json` of 24.11, for one, has an `sinfo` array in place of `nodes`, which
// `nodes` reports as an invalid response.

mod command;
mod output;
mod submit;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::api::{
    ArraySubmission, DEFAULT_MAX_ARRAY_SIZE, Diag, JobInfo, LimitSource, NodeInfo, PartitionInfo,
    SlurmApi, SubmittedArray,
};
use crate::error::{Operation, SlurmError};
use crate::records::{JobRecord, NodeRecord};
use command::{CommandOutput, CommandRunner, Invocation};
use output::Listing;
pub use submit::GpuRequest;

/// Default time limit of one command. Slurm 22.05's tools took about 9 s to give
/// up on a slurmctld that refused connections, on the test cluster.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a [`CliClient`]. Each command is a name, looked up in the `PATH` of
/// the calling process, or a path.
#[derive(Clone, Debug)]
pub struct CliConfig {
    /// The `sbatch` command.
    pub sbatch: PathBuf,
    /// The `squeue` command.
    pub squeue: PathBuf,
    /// The `sinfo` command.
    pub sinfo: PathBuf,
    /// The `scancel` command.
    pub scancel: PathBuf,
    /// The `scontrol` command.
    pub scontrol: PathBuf,
    /// The `sdiag` command, for the controller statistics of `diag`.
    pub sdiag: PathBuf,
    /// The `slurm.conf` that the commands read, passed as `SLURM_CONF`. `None`
    /// passes on the calling process's `SLURM_CONF`, if it has one. Without either,
    /// the tools read their built-in path, usually `/etc/slurm/slurm.conf`.
    pub slurm_conf: Option<PathBuf>,
    /// Time limit of one command. A command still running then is killed.
    pub command_timeout: Duration,
    /// The `MaxArraySize` to report when `scontrol show config` does not print it.
    /// `None` assumes Slurm's default of 1001.
    pub max_array_size: Option<u32>,
    /// How a submission requests GPUs.
    pub gpu_request: GpuRequest,
}

impl Default for CliConfig {
    /// Commands by name, the calling process's `SLURM_CONF`, the default timeout,
    /// and `--gpus-per-node`.
    fn default() -> Self {
        CliConfig {
            sbatch: PathBuf::from("sbatch"),
            squeue: PathBuf::from("squeue"),
            sinfo: PathBuf::from("sinfo"),
            scancel: PathBuf::from("scancel"),
            scontrol: PathBuf::from("scontrol"),
            sdiag: PathBuf::from("sdiag"),
            slurm_conf: None,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            max_array_size: None,
            gpu_request: GpuRequest::default(),
        }
    }
}

impl CliConfig {
    /// Lists every invalid setting.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let commands = [
            ("sbatch", &self.sbatch),
            ("squeue", &self.squeue),
            ("sinfo", &self.sinfo),
            ("scancel", &self.scancel),
            ("scontrol", &self.scontrol),
            ("sdiag", &self.sdiag),
        ];
        for (name, command) in commands {
            if command.as_os_str().is_empty() {
                problems.push(format!("the {name} command is empty"));
            }
        }
        if let Some(path) = &self.slurm_conf
            && !path.is_file()
        {
            problems.push(format!("slurm_conf {} is not a file", path.display()));
        }
        if self.command_timeout.is_zero() {
            problems.push("command_timeout must be longer than 0 s".to_string());
        }
        if self.max_array_size == Some(0) {
            problems.push("max_array_size must be at least 1".to_string());
        }
        problems
    }
}

/// A client that runs Slurm's command line tools, with the operations of
/// [`SlurmApi`].
#[derive(Debug)]
pub struct CliClient {
    config: CliConfig,
    runner: CommandRunner,
}

impl CliClient {
    /// Creates a client after checking the settings. No command runs until the
    /// first operation.
    pub fn new(config: CliConfig) -> Result<CliClient, SlurmError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(SlurmError::Config {
                reason: problems.join("; "),
            });
        }

        let slurm_conf = match &config.slurm_conf {
            Some(path) => Some(path.clone().into_os_string()),
            None => std::env::var_os("SLURM_CONF"),
        };
        let runner =
            CommandRunner::new(config.command_timeout, std::env::var_os("PATH"), slurm_conf);
        Ok(CliClient { runner, config })
    }

    /// Returns the settings.
    pub fn config(&self) -> &CliConfig {
        &self.config
    }

    /// Runs `squeue --json` or `sinfo --json` and returns the records under `key`.
    /// Fails when the JSON lists errors, which is how Slurm 22.05 reports an
    /// unreachable controller.
    async fn listing<R: serde::de::DeserializeOwned>(
        &self,
        operation: &Operation,
        invocation: Invocation<'_>,
        key: &str,
    ) -> Result<Vec<R>, SlurmError> {
        let program = invocation.program().display().to_string();
        let output = self.runner.run_checked(operation, invocation).await?;
        let Listing { errors, records } =
            output::parse_listing::<R>(&output.stdout, key).map_err(|detail| {
                SlurmError::InvalidResponse {
                    operation: operation.clone(),
                    detail: format!("{program}: {detail}"),
                }
            })?;
        if !errors.is_empty() {
            return Err(SlurmError::Rejected {
                operation: operation.clone(),
                status: None,
                errors,
            });
        }
        Ok(records)
    }

    /// Returns the controller statistics of `sdiag`, or none when sdiag fails,
    /// because `diag` can report the array size limit without them.
    async fn statistics(&self, operation: &Operation) -> output::Statistics {
        let invocation = Invocation::new(&self.config.sdiag, Vec::new());
        match self.runner.run_checked(operation, invocation).await {
            Ok(output) => output::parse_sdiag(&output.stdout),
            Err(error) => {
                tracing::warn!(%error, "sdiag failed; reporting diagnostics without controller statistics");
                output::Statistics::default()
            }
        }
    }

    /// Reads `MaxArraySize` and Slurm's release from `scontrol show config`.
    async fn array_size_limit(
        &self,
        operation: &Operation,
    ) -> Result<(u32, LimitSource, Option<String>), SlurmError> {
        let args = vec!["show".to_string(), "config".to_string()];
        let invocation = Invocation::new(&self.config.scontrol, args);
        let CommandOutput { stdout, .. } = self.runner.run_checked(operation, invocation).await?;
        let release = output::config_value(&stdout, "SLURM_VERSION").map(str::to_string);

        let Some(text) = output::config_value(&stdout, "MaxArraySize") else {
            return Ok(match self.config.max_array_size {
                Some(size) => (size, LimitSource::Configured, release),
                None => (DEFAULT_MAX_ARRAY_SIZE, LimitSource::SlurmDefault, release),
            });
        };
        let size = text
            .parse::<u32>()
            .map_err(|_| SlurmError::InvalidResponse {
                operation: operation.clone(),
                detail: format!(
                    "scontrol show config printed MaxArraySize = {text:?}, not a number"
                ),
            })?;
        Ok((size, LimitSource::Server, release))
    }
}

/// Sums the GPUs of the nodes of each partition.
fn gpus_by_partition(nodes: &[NodeInfo]) -> BTreeMap<String, u64> {
    let mut gpus = BTreeMap::new();
    for node in nodes {
        for partition in &node.partitions {
            *gpus.entry(partition.clone()).or_default() += node.gpus;
        }
    }
    gpus
}

/// Converts records, logging and skipping those that cannot be read.
fn convert_records<R, T, E: std::fmt::Display>(
    operation: &Operation,
    records: &[R],
    convert: impl Fn(&R) -> Result<T, E>,
) -> Vec<T> {
    let mut converted = Vec::new();
    for record in records {
        match convert(record) {
            Ok(value) => converted.push(value),
            Err(error) => {
                tracing::warn!(%operation, %error, "skipping a record that cannot be read")
            }
        }
    }
    converted
}

#[async_trait]
impl SlurmApi for CliClient {
    async fn ping(&self) -> Result<(), SlurmError> {
        let operation = Operation::Ping;
        let invocation = Invocation::new(&self.config.scontrol, vec!["ping".to_string()]);
        let output = self.runner.run(&operation, invocation).await?;
        let controllers = output::parse_ping(&output.stdout);
        if controllers.iter().any(output::ControllerState::is_up) {
            return Ok(());
        }
        if !controllers.is_empty() {
            return Err(SlurmError::ControllerDown {
                operation,
                controllers: controllers.iter().map(ToString::to_string).collect(),
            });
        }
        if !output.status.success() {
            return Err(command::rejection(
                &operation,
                &self.config.scontrol,
                &output,
            ));
        }
        Err(SlurmError::InvalidResponse {
            operation,
            detail: format!(
                "scontrol ping printed no controller state: {:?}",
                output.stdout.trim()
            ),
        })
    }

    async fn submit_array(&self, request: &ArraySubmission) -> Result<SubmittedArray, SlurmError> {
        let operation = Operation::Submit {
            job_name: request.job_name.clone(),
            partition: request.partition.clone(),
        };
        request
            .validate()
            .and_then(|()| submit::check_submission(request))
            .map_err(|reason| SlurmError::InvalidRequest {
                operation: operation.clone(),
                reason,
            })?;

        let args = submit::sbatch_arguments(request, self.config.gpu_request);
        let invocation = Invocation::new(&self.config.sbatch, args)
            .input(&request.script)
            .environment(&request.environment);
        let output = self.runner.run_checked(&operation, invocation).await?;
        let job_id = output::parse_submitted_job_id(&output.stdout).ok_or_else(|| {
            SlurmError::InvalidResponse {
                operation: operation.clone(),
                detail: format!(
                    "sbatch --parsable printed no job id: {:?}",
                    output.stdout.trim()
                ),
            }
        })?;
        tracing::debug!(slurm_job_id = job_id, array = %request.array_expression(), "submitted Slurm array job");

        // sbatch prints the message of a site's job_submit plugin on standard error.
        let user_message = output.stderr.trim();
        Ok(SubmittedArray {
            job_id,
            user_message: (!user_message.is_empty()).then(|| user_message.to_string()),
        })
    }

    async fn jobs(&self, job_ids: &[u64]) -> Result<Vec<JobInfo>, SlurmError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let operation = Operation::ListJobs;
        // No --jobs: Slurm 22.05 ignores it with --json, and a squeue that applies
        // it fails the whole call for an id that Slurm forgot after MinJobAge.
        // --all and --states=all keep hidden partitions and ended jobs in case a
        // later squeue applies filters with --json.
        let args = ["--json", "--all", "--states=all"]
            .map(str::to_string)
            .to_vec();
        let invocation = Invocation::new(&self.config.squeue, args);
        let records = self
            .listing::<JobRecord>(&operation, invocation, "jobs")
            .await?;

        let requested = job_ids.iter().copied().collect::<HashSet<_>>();
        let jobs = convert_records(&operation, &records, JobRecord::to_job_info);
        Ok(jobs
            .into_iter()
            .filter(|job| requested.contains(&job.job_id) || requested.contains(&job.tracking_id()))
            .collect())
    }

    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError> {
        let operation = Operation::Cancel { job_id };
        let args = vec!["--verbose".to_string(), job_id.to_string()];
        let invocation = Invocation::new(&self.config.scancel, args);
        let output = self.runner.run_checked(&operation, invocation).await?;

        // Cancelling a job that has already ended succeeds, as with slurmrestd.
        let failed = output::scancel_errors(&output.stderr)
            .into_iter()
            .any(|reason| reason != output::ALREADY_DONE_MESSAGE);
        if failed {
            return Err(command::reported_error(&operation, &output.stderr));
        }
        tracing::debug!(slurm_job_id = job_id, "cancelled Slurm job");
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, SlurmError> {
        let operation = Operation::ListNodes;
        let args = ["--json", "--all"].map(str::to_string).to_vec();
        let invocation = Invocation::new(&self.config.sinfo, args);
        let records = self
            .listing::<NodeRecord>(&operation, invocation, "nodes")
            .await?;
        Ok(convert_records(
            &operation,
            &records,
            NodeRecord::to_node_info,
        ))
    }

    /// Lists partitions. When a partition's TRES string counts no GPUs, which is
    /// the case in Slurm 22.05 unless `AccountingStorageTRES` lists `gres/gpu`,
    /// `sinfo --json` lists the nodes and their GPUs are summed per partition.
    async fn partitions(&self) -> Result<Vec<PartitionInfo>, SlurmError> {
        let operation = Operation::ListPartitions;
        let args = ["--all", "--oneliner", "show", "partition"]
            .map(str::to_string)
            .to_vec();
        let invocation = Invocation::new(&self.config.scontrol, args);
        let output = self.runner.run_checked(&operation, invocation).await?;
        let records = output::parse_partitions(&output.stdout);
        let converted = convert_records(&operation, &records, |record| record.to_partition_info());
        if converted.iter().all(|(_, tres_gpus)| tres_gpus.is_some()) {
            return Ok(converted
                .into_iter()
                .map(|(partition, _)| partition)
                .collect());
        }

        let gpus = gpus_by_partition(&self.nodes().await?);
        Ok(converted
            .into_iter()
            .map(|(mut partition, tres_gpus)| {
                if tres_gpus.is_none() {
                    partition.gpus = gpus.get(&partition.name).copied().unwrap_or(0);
                }
                partition
            })
            .collect())
    }

    async fn diag(&self) -> Result<Diag, SlurmError> {
        let operation = Operation::Diag;
        let (limit, statistics) = tokio::join!(
            self.array_size_limit(&operation),
            self.statistics(&operation)
        );
        let (max_array_size, max_array_size_source, slurm_release) = limit?;
        Ok(Diag {
            slurm_release,
            max_array_size,
            max_array_size_source,
            jobs_running: statistics.jobs_running,
            jobs_pending: statistics.jobs_pending,
            jobs_submitted: statistics.jobs_submitted,
            server_thread_count: statistics.server_thread_count,
            schedule_cycle_last_micros: statistics.schedule_cycle_last_micros,
        })
    }
}
