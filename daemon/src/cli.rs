//! The `spillway` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::output::OutputFormat;
use crate::config::DEFAULT_CONFIG_PATH;

#[derive(Parser)]
#[command(
    version,
    about = "Spillway: run GPU micro-batch jobs from a queue on Slurm or this machine"
)]
pub struct Cli {
    /// Configuration file (TOML); SPILLWAY__SECTION__KEY variables override its values.
    #[arg(long, global = true, env = "SPILLWAY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: admit manifests, place workers, reduce finished jobs.
    Serve,
    /// Validate a manifest and send it to the intake stream, an SQS queue or a Pub/Sub
    /// topic, then print the job id.
    Submit {
        /// Manifest file (JSON).
        file: PathBuf,
        /// Send the file even if it is invalid (it will be dead-lettered).
        #[arg(long)]
        no_validate: bool,
        /// Send to this SQS queue instead of the Redis stream. It must be the queue_url
        /// of an [[intake.sqs]] table, whose region, endpoint and credentials are used.
        #[arg(long, value_name = "QUEUE_URL")]
        sqs: Option<String>,
        /// Publish to this Pub/Sub topic instead of the Redis stream: the `topic` of an
        /// [[intake.pubsub]] table, as its id or as projects/PROJECT/topics/TOPIC. That
        /// table's endpoint and credentials are used.
        #[arg(long, value_name = "TOPIC", conflicts_with = "sqs")]
        pubsub: Option<String>,
    },
    /// Show a job's progress, or list active and recent jobs without JOB.
    Status {
        job: Option<String>,
        /// Follow the job with a progress bar until it finishes (with `--output json`,
        /// print once it has finished). Exits non-zero unless the job succeeded.
        #[arg(long)]
        watch: bool,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show a finished job's artefact, run hash and failed tasks (`--output json`: the
    /// job envelope).
    Results {
        job: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// List the newest dead-lettered messages of the Redis intake stream with the
    /// reason each was rejected.
    DeadLetters {
        /// Entries to show, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Cancel a job: queued tasks are dropped, running attempts end on their own, and
    /// the backend's leftover workers are cancelled.
    Cancel {
        job: String,
        /// Reason recorded with the job.
        #[arg(long, default_value = "cancelled by an operator")]
        reason: String,
    },
    /// Stop admitting messages and starting workers on every daemon of this ledger,
    /// while running workers finish (before an upgrade); `--off` resumes.
    Drain {
        #[arg(long)]
        off: bool,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// Validate the configuration and probe Redis, the intake stream, the SQS queues,
    /// the worker binary and the folders it names.
    CheckConfig {
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Validate a manifest file without sending it.
    Validate {
        file: PathBuf,
        #[arg(long, short, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Replay an arrival trace through the placement engine with simulated Slurm and
    /// Batch backends, and compare its cost and deadline misses with dedicated
    /// clusters sized for the peak and for the mean. Needs no Redis or configuration.
    /// A flag overrides the same key of the trace's settings line.
    Simulate(crate::commands::simulate::SimulateArgs),
}
