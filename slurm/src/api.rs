//! The Slurm operations that Spillway uses, and the types they take and return.
//!
//! [`SlurmApi`] is implemented over slurmrestd by [`crate::RestClient`]; an
//! implementation over the `sbatch`/`squeue`/`sinfo`/`scancel` commands can sit
//! beside it. Both return the same types, so the backend does not know which one
//! it talks to.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::SlurmError;
use crate::state::{ExitStatus, JobState, NodeState};
use crate::values::{ArrayIndexSet, ArrayPart, TimeLimit};

/// Slurm's default `MaxArraySize`: array indices 0 to 1000.
pub const DEFAULT_MAX_ARRAY_SIZE: u32 = 1001;

/// The Slurm operations that Spillway needs.
#[async_trait]
pub trait SlurmApi: Send + Sync {
    /// Checks that slurmctld replies to ping.
    async fn ping(&self) -> Result<(), SlurmError>;

    /// Submits one array job.
    async fn submit_array(&self, request: &ArraySubmission) -> Result<SubmittedArray, SlurmError>;

    /// Returns the records of the given jobs, with one call for all of them. An id
    /// may be an array job id, which selects all its records: the elements that
    /// have started and the record of those still pending. Jobs that ended longer
    /// ago than `MinJobAge` are absent, because Slurm has dropped their records.
    async fn jobs(&self, job_ids: &[u64]) -> Result<Vec<JobInfo>, SlurmError>;

    /// Cancels a job; for an array job id, every element of the array. Cancelling
    /// a job that has already ended succeeds.
    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError>;

    /// Lists the nodes with their GPU capacity.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, SlurmError>;

    /// Lists the partitions with their GPU capacity.
    async fn partitions(&self) -> Result<Vec<PartitionInfo>, SlurmError>;

    /// Returns controller statistics and the array size limit.
    async fn diag(&self) -> Result<Diag, SlurmError>;
}

/// One array job to submit: the batch script and its resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArraySubmission {
    /// The job name (`--job-name`).
    pub job_name: String,
    /// The batch script's full text; it must start with `#!`.
    pub script: String,
    /// Array indices to run (`--array=FIRST-LAST`).
    pub indices: RangeInclusive<u32>,
    /// Maximum number of elements that run at once (`%N`), if limited.
    pub throttle: Option<u32>,
    /// The partition; `None` uses the cluster's default partition.
    pub partition: Option<String>,
    /// GPUs for each array element, which is a one-node, one-task job.
    pub gpus_per_task: Option<u32>,
    /// GPU type for `gpus_per_task`, such as `a100`; `None` takes any type.
    pub gpu_type: Option<String>,
    /// CPUs for each array element.
    pub cpus_per_task: Option<u32>,
    /// Memory for each array element, in MiB.
    pub memory_per_task_mib: Option<u64>,
    /// Time limit of each element, rounded up to whole minutes.
    pub time_limit: Option<Duration>,
    /// The account to charge (`--account`).
    pub account: Option<String>,
    /// The quality of service (`--qos`).
    pub qos: Option<String>,
    /// The folder the script runs in. Slurm needs it, because without one the job
    /// runs in slurmrestd's own folder.
    pub working_directory: PathBuf,
    /// The job's whole environment: Slurm passes exactly these variables, plus its
    /// own `SLURM_*` ones.
    pub environment: BTreeMap<String, String>,
    /// Standard output file, with Slurm's patterns such as `%A_%a`; `None` writes
    /// `slurm-%A_%a.out` in the working directory.
    pub output_path: Option<String>,
    /// Standard error file; `None` writes it with the standard output.
    pub error_path: Option<String>,
}

impl ArraySubmission {
    /// Returns the `--array` expression, such as `0-99%4`.
    pub fn array_expression(&self) -> String {
        let mut expression = format!("{}-{}", self.indices.start(), self.indices.end());
        if let Some(throttle) = self.throttle {
            expression.push_str(&format!("%{throttle}"));
        }
        expression
    }

    /// Returns the `--gpus-per-node` value, such as `1` or `a100:1`.
    pub fn gpus_expression(&self) -> Option<String> {
        let count = self.gpus_per_task?;
        Some(match &self.gpu_type {
            Some(gpu_type) => format!("{gpu_type}:{count}"),
            None => count.to_string(),
        })
    }

    /// Returns the time limit in whole minutes, rounded up.
    pub fn time_limit_minutes(&self) -> Option<u64> {
        self.time_limit
            .map(|limit| limit.as_secs().div_ceil(60).max(1))
    }

    /// Checks what Slurm would reject late or silently: a script without `#!`
    /// (accepted, then fails on the node), an empty range, a zero throttle, a
    /// relative working directory.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !self.script.starts_with("#!") {
            problems.push("the script must start with #! and an interpreter".to_string());
        }
        if self.indices.is_empty() {
            problems.push(format!(
                "the index range {}-{} is empty",
                self.indices.start(),
                self.indices.end()
            ));
        }
        if self.throttle == Some(0) {
            problems.push("the throttle must be at least 1".to_string());
        }
        if !self.working_directory.is_absolute() {
            problems.push(format!(
                "the working directory {} must be absolute",
                self.working_directory.display()
            ));
        }
        if self.job_name.is_empty() {
            problems.push("the job name is empty".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The result of a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmittedArray {
    /// The array job id, which `jobs` and `cancel` take.
    pub job_id: u64,
    /// A message from the site's job_submit plugin, if it sent one.
    pub user_message: Option<String>,
}

/// One job record as Slurm reports it.
///
/// An array appears as several records: one per element that has started, with
/// `array` set to [`ArrayPart::Task`], and while elements still wait, one record
/// for all of them with [`ArrayPart::Collapsed`]. The last element to start takes
/// over the array's own job id, so `job_id` equals `array_job_id` on one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// Slurm's job id of this record.
    pub job_id: u64,
    /// The array job id, for records of an array.
    pub array_job_id: Option<u64>,
    /// The array elements that this record represents.
    pub array: Option<ArrayPart>,
    /// The job name.
    pub name: String,
    /// The partition.
    pub partition: String,
    /// The state with its flags.
    pub state: JobState,
    /// The reason the job waits or failed (`state_reason`). `None` when Slurm
    /// sends the reason `None`.
    pub reason: Option<String>,
    /// The batch script's exit status. `None` until the job has finished.
    pub exit_status: Option<ExitStatus>,
    /// The allocated nodes in Slurm's host list syntax (`node[1-3]`), if any.
    pub nodes: Option<String>,
    /// The time limit.
    pub time_limit: TimeLimit,
    /// When the job was submitted.
    pub submit_time: Option<SystemTime>,
    /// When the job started, or is expected to start.
    pub start_time: Option<SystemTime>,
    /// When the job ended, or is expected to end.
    pub end_time: Option<SystemTime>,
}

impl JobInfo {
    /// Returns the array index of a started element.
    pub fn array_index(&self) -> Option<u32> {
        match self.array {
            Some(ArrayPart::Task(index)) => Some(index),
            _ => None,
        }
    }

    /// Returns the pending indices of a collapsed record.
    pub fn pending_indices(&self) -> Option<&ArrayIndexSet> {
        match &self.array {
            Some(ArrayPart::Collapsed(set)) => Some(set),
            _ => None,
        }
    }

    /// Returns the id that Spillway tracks this record under: the array job id
    /// for array records, else the job id.
    pub fn tracking_id(&self) -> u64 {
        self.array_job_id.unwrap_or(self.job_id)
    }
}

impl fmt::Display for JobInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.array_job_id, &self.array) {
            (Some(array_job_id), Some(ArrayPart::Task(index))) => {
                write!(f, "{array_job_id}_{index}")?
            }
            (Some(array_job_id), Some(ArrayPart::Collapsed(set))) => {
                write!(f, "{array_job_id}_[{set}]")?
            }
            _ => write!(f, "{}", self.job_id)?,
        }
        write!(f, " {}", self.state)
    }
}

/// One node and its capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node name.
    pub name: String,
    /// The state with its flags.
    pub state: NodeState,
    /// CPUs that the node advertises.
    pub cpus: u64,
    /// CPUs allocated to jobs.
    pub allocated_cpus: u64,
    /// GPUs from the node's gres (or TRES when gres names none); 0 without GPUs.
    pub gpus: u64,
    /// GPUs allocated to jobs.
    pub allocated_gpus: u64,
    /// Partitions the node belongs to.
    pub partitions: Vec<String>,
    /// The reason an administrator gave for the node being down or drained.
    pub reason: Option<String>,
}

/// One partition and its capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition name.
    pub name: String,
    /// `UP`, `DOWN`, `DRAIN` or `INACTIVE`.
    pub state: String,
    /// Whether jobs without a partition go here.
    pub is_default: bool,
    /// The partition's nodes in Slurm's host list syntax.
    pub nodes: String,
    /// Number of nodes.
    pub total_nodes: u64,
    /// Number of CPUs.
    pub total_cpus: u64,
    /// GPUs: the partition's TRES when it counts them, else the sum over its
    /// nodes' gres.
    pub gpus: u64,
    /// The maximum time limit a job may request.
    pub max_time: TimeLimit,
    /// The time limit of a job that requests none.
    pub default_time: TimeLimit,
}

/// Controller statistics and limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diag {
    /// Slurm's release, such as `22.05.8`, when the server reported it.
    pub slurm_release: Option<String>,
    /// The largest array size: indices run from 0 to `max_array_size - 1`.
    pub max_array_size: u32,
    /// The origin of `max_array_size`.
    pub max_array_size_source: LimitSource,
    /// Jobs running now.
    pub jobs_running: Option<u64>,
    /// Jobs pending now.
    pub jobs_pending: Option<u64>,
    /// Jobs submitted since the statistics were last reset.
    pub jobs_submitted: Option<u64>,
    /// Threads serving RPCs in slurmctld; a high count means a busy controller.
    pub server_thread_count: Option<u64>,
    /// Length of the last main scheduling cycle, in microseconds.
    pub schedule_cycle_last_micros: Option<u64>,
}

/// The origin of a limit's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// Reported by Slurm.
    Server,
    /// Set in Spillway's configuration.
    Configured,
    /// Slurm's built-in default, because neither of the above had it.
    SlurmDefault,
}
