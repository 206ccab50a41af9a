//! Measures the share of a training round spent outside the kernels' passes: a real
//! daemon with local workers runs a `contrastive` job, and the job's envelopes give
//! each round's wall time and each task's time in the kernel.
//!
//! A round's wall time runs from the creation of its tasks to the end of its reduce
//! step (the round record's `round_secs`). Its kernel time is the busiest worker's sum
//! of `kernel_secs` over the round's tasks, which is the least the round could take
//! with those workers. Everything else is overhead: leases, shard and weights
//! fetches, result and envelope writes, the wait for the last task, the wake of the
//! daemon, the reduce step and the creation of the next round's tasks. Round 0 is
//! left out, because it includes starting the workers and loading the model.
//!
//! Run it through bench/round_overhead.sh, which builds the release binaries and makes
//! the pairs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use spillway_common::envelope::{JobEnvelope, TaskEnvelope};
use spillway_common::ledger::Ledger;
use spillway_tests::training::training_manifest;
use spillway_tests::{Daemon, DaemonOptions, RedisServer, job_id_of, send_raw, wait_finished};

/// One configuration's measurement.
#[derive(Debug)]
struct Measurement {
    tasks_per_round: u32,
    records_per_task: u32,
    workers: u32,
    rounds_measured: usize,
    round_secs: f64,
    kernel_secs: f64,
    overhead_share: f64,
    reduce_secs: f64,
    /// Mean per task of its runtime outside the kernel: lease to completion, minus
    /// the pass (shard and weights fetch, decoding, result and envelope writes).
    task_outside_kernel_secs: f64,
}

struct Options {
    pairs: PathBuf,
    rounds: u32,
    per_round: Vec<u32>,
    records_per_task: u32,
    workers: u32,
    /// Folder that keeps each run's outputs and daemon log, for a closer look.
    keep: Option<PathBuf>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        pairs: PathBuf::from("target/bench/round_pairs/train/inputs.json"),
        rounds: 6,
        per_round: vec![4, 8],
        records_per_task: 32,
        workers: 2,
        keep: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--inputs" => options.pairs = PathBuf::from(value),
            "--rounds" => options.rounds = value.parse()?,
            "--tasks-per-round" => {
                options.per_round = value.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--records-per-task" => options.records_per_task = value.parse()?,
            "--workers" => options.workers = value.parse()?,
            "--keep" => options.keep = Some(PathBuf::from(value)),
            other => anyhow::bail!(
                "unknown option {other}; use --inputs, --rounds, --tasks-per-round, \
                 --records-per-task, --workers or --keep"
            ),
        }
    }
    Ok(options)
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("invalid JSON in {}", path.display()))
}

/// Reads the envelope of every succeeded attempt of the job, keyed by task id.
fn task_envelopes(job_dir: &Path) -> anyhow::Result<BTreeMap<String, TaskEnvelope>> {
    let mut envelopes = BTreeMap::new();
    for task_dir in std::fs::read_dir(job_dir.join("envelopes"))? {
        for attempt in std::fs::read_dir(task_dir?.path())? {
            let envelope: TaskEnvelope = serde_json::from_value(read_json(&attempt?.path())?)?;
            if envelope.kernel_secs.is_some() {
                envelopes.insert(envelope.task_id.clone(), envelope);
            }
        }
    }
    Ok(envelopes)
}

async fn measure(options: &Options, per_round: u32) -> anyhow::Result<Measurement> {
    let inputs: Vec<serde_json::Value> = serde_json::from_value(read_json(&options.pairs)?)?;
    let records_needed = u64::from(per_round * options.records_per_task * options.rounds);
    let mut chosen = Vec::new();
    let mut records = 0;
    for input in inputs {
        if records >= records_needed {
            break;
        }
        records += input["records"].as_u64().unwrap_or(0);
        chosen.push(input);
    }

    let redis = RedisServer::start()?;
    let daemon_options = DaemonOptions {
        max_workers: options.workers,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, daemon_options)?;
    let output = match &options.keep {
        Some(keep) => {
            std::fs::create_dir_all(keep)?;
            tempfile::Builder::new()
                .prefix(&format!("tasks-per-round-{per_round}-"))
                .tempdir_in(keep)?
        }
        None => tempfile::tempdir()?,
    };
    let kernel = serde_json::json!({"name": "contrastive"});
    let training = serde_json::json!({
        "rounds": options.rounds,
        "tasks_per_round": per_round,
        "optimizer": {"name": "adamw", "lr": 2e-5},
        "seed": 1
    });
    let name = format!("round-bench-{per_round}");
    let manifest = training_manifest(
        &name,
        kernel,
        training,
        chosen,
        options.records_per_task,
        output.path(),
    );
    let job_id = job_id_of(&manifest);
    let ledger = Ledger::connect(&redis.url(), "spillway").await?;
    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let job = wait_finished(&ledger, &job_id, Duration::from_secs(3600)).await;
    anyhow::ensure!(
        job.state == "succeeded",
        "job ended {}; daemon log:\n{}",
        job.state,
        daemon.log()
    );

    for line in daemon
        .log()
        .lines()
        .filter(|line| line.contains("reduce step phases"))
    {
        eprintln!("{line}");
    }
    let job_dir = output.path().join(&job_id);
    let envelope: JobEnvelope = serde_json::from_value(read_json(&job_dir.join("job.json"))?)?;
    let rounds = envelope.training.context("no training section")?.rounds;
    let tasks = task_envelopes(&job_dir)?;
    let ledger_tasks = ledger.tasks(&job_id, job.tasks_total).await?;

    let mut round_secs = 0.0;
    let mut kernel_secs = 0.0;
    let mut reduce_secs = 0.0;
    let mut outside = Vec::new();
    for record in rounds.iter().skip(1) {
        round_secs += record.round_secs;
        reduce_secs += record.reduce_secs;
        let mut by_worker: BTreeMap<&str, f64> = BTreeMap::new();
        let in_round = ledger_tasks.iter().filter(|task| {
            task.spec
                .round
                .as_ref()
                .is_some_and(|round| round.round == record.round)
        });
        for task in in_round {
            let envelope = tasks
                .get(&task.spec.task_id)
                .with_context(|| format!("no envelope of {}", task.spec.task_id))?;
            let kernel = envelope.kernel_secs.unwrap_or_default();
            *by_worker.entry(&envelope.worker_id).or_default() += kernel;
            outside.push(envelope.runtime_secs - kernel);
        }
        kernel_secs += by_worker.values().copied().fold(0.0, f64::max);
    }
    let measured = rounds.len().saturating_sub(1);
    if options.keep.is_some() {
        std::fs::write(output.path().join("daemon.log"), daemon.log())?;
        eprintln!("outputs kept in {}", output.keep().display());
    }
    Ok(Measurement {
        tasks_per_round: per_round,
        records_per_task: options.records_per_task,
        workers: options.workers,
        rounds_measured: measured,
        round_secs,
        kernel_secs,
        overhead_share: 1.0 - kernel_secs / round_secs,
        reduce_secs: reduce_secs / measured.max(1) as f64,
        task_outside_kernel_secs: outside.iter().sum::<f64>() / outside.len().max(1) as f64,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let mut results = Vec::new();
    println!(
        "tasks/round  rounds  round s  kernel s  overhead  reduce s/round  outside kernel s/task"
    );
    for &per_round in &options.per_round {
        let result = measure(&options, per_round).await?;
        println!(
            "{:>11}  {:>6}  {:>7.2}  {:>8.2}  {:>7.1}%  {:>14.3}  {:>21.3}",
            result.tasks_per_round,
            result.rounds_measured,
            result.round_secs,
            result.kernel_secs,
            result.overhead_share * 100.0,
            result.reduce_secs,
            result.task_outside_kernel_secs
        );
        results.push(serde_json::json!({
            "tasks_per_round": result.tasks_per_round,
            "records_per_task": result.records_per_task,
            "workers": result.workers,
            "rounds_measured": result.rounds_measured,
            "round_secs": result.round_secs,
            "kernel_secs": result.kernel_secs,
            "overhead_share": result.overhead_share,
            "reduce_secs_per_round": result.reduce_secs,
            "task_outside_kernel_secs": result.task_outside_kernel_secs,
        }));
    }
    let path = Path::new("target/bench/round_results.json");
    std::fs::create_dir_all(path.parent().expect("a parent folder"))?;
    std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
    println!("results written to {}", path.display());
    Ok(())
}
