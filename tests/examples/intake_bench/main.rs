//! Intake throughput: how fast manifests on a cloud queue become durable jobs in the
//! ledger, measured against the ledger's own ceiling in the same run.
//!
//! For each workload (a number of manifests, each sliced into a number of tasks):
//! 1. Ledger ceiling: a fresh Redis server, and every manifest admitted straight into
//!    the ledger with `Ledger::admit`, without a queue or a daemon. Once with one
//!    admission in flight, as one intake loop admits, and once with `--concurrency`.
//!    Parsing and slicing happen before the clock starts.
//! 2. Each queue's stand-in alone: the manifests put on a queue, then received and
//!    acknowledged with the requests that the daemon makes, without admission. This
//!    is the most that the daemon could reach with that stand-in.
//! 3. Each queue: a fresh Redis server and a release `spillway serve` that reads only
//!    that queue (see `queue::DaemonProcess`). The drain flag holds the intake back
//!    while the manifests are put on the queue, and clearing it starts the clock.
//!
//! A job counts as durable when the ledger lists it as active, which admission does
//! after its tasks are written. The "wall" rate runs from the start (the first admit,
//! or clearing the drain flag) to the last durable job. For a queue it therefore
//! includes up to a second until the daemon next reads the drain flag. The "steady"
//! rate runs from the first durable job to the last, by the ledger's own timestamps
//! (the scores in the active-job index).
//!
//! Redis work is counted twice. The timed run compares `INFO commandstats` before and
//! after, which counts the commands inside Lua scripts too. A second, untimed run of
//! the same workload counts round trips: the requests that clients send, from
//! MONITOR, whose overhead would distort the timed run. Both leave out the
//! benchmark's own commands.
//!
//! Usage (bench/intake_throughput.sh builds the release binaries and runs this):
//!     intake_bench [--manifests 300] [--tasks 1,50] [--concurrency 16]
//!                  [--queues sqs,pubsub] [--daemon target/release/spillway]
//!                  [--output target/bench/intake_results.json]

mod queue;
mod redis_count;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use spillway_common::digest::Sha256Hex;
use spillway_common::ledger::{Ledger, now_ms};
use spillway_common::manifest::Manifest;
use spillway_common::task::{TaskSpec, job_id, slice};
use spillway_tests::moto::MotoServer;
use spillway_tests::pubsub::PubsubEmulator;
use spillway_tests::{RedisServer, workspace_root};

use queue::{BenchQueue, DaemonProcess, PubsubQueue, SqsQueue};
use redis_count::{Monitor, call_delta, client_address, command_calls};

/// Key prefix of the ledger in every run.
const PREFIX: &str = "spillway";
/// Records per task in the generated manifests.
const RECORDS_PER_TASK: u64 = 100;
/// Maximum wait for a queue run to make every job durable.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// Command-line settings.
struct Settings {
    manifests: usize,
    tasks: Vec<u64>,
    concurrency: usize,
    queues: Vec<String>,
    daemon: PathBuf,
    output: PathBuf,
}

impl Settings {
    fn parse() -> anyhow::Result<Self> {
        let root = workspace_root();
        let mut settings = Self {
            manifests: 300,
            tasks: vec![1, 50],
            concurrency: 16,
            queues: vec!["sqs".into(), "pubsub".into()],
            daemon: root.join("target/release/spillway"),
            output: root.join("target/bench/intake_results.json"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--manifests" => settings.manifests = value()?.parse()?,
                "--tasks" => {
                    settings.tasks = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--concurrency" => settings.concurrency = value()?.parse()?,
                "--queues" => settings.queues = value()?.split(',').map(String::from).collect(),
                "--daemon" => settings.daemon = value()?.into(),
                "--output" => settings.output = value()?.into(),
                other => anyhow::bail!("unknown argument {other}; see the usage in main.rs"),
            }
        }
        anyhow::ensure!(settings.manifests >= 2, "--manifests must be at least 2");
        anyhow::ensure!(
            settings.tasks.iter().all(|&tasks| tasks >= 1),
            "--tasks values must be at least 1"
        );
        Ok(settings)
    }
}

/// The manifests of one workload, as message bodies and as parsed and sliced jobs.
struct Workload {
    tasks_per_manifest: u64,
    bodies: Vec<String>,
    manifests: Vec<(String, Manifest, Vec<TaskSpec>)>,
}

impl Workload {
    /// Builds `count` distinct valid manifests of `tasks` tasks each, pinned to
    /// `worker_digest`. Their shard, model and output URIs are never read.
    fn generate(label: &str, count: usize, tasks: u64, worker_digest: &str) -> Self {
        let mut bodies = Vec::with_capacity(count);
        let mut manifests = Vec::with_capacity(count);
        for index in 0..count {
            let name = format!("intake-bench-{label}-{index:05}");
            let document = serde_json::json!({
                "version": 1,
                "name": name,
                "kernel": {"name": "embed", "max_seq_len": 128},
                "model": {"uri": "file:///var/tmp/intake-bench/model/", "sha256": "ab".repeat(32)},
                "inputs": [{
                    "uri": format!("file:///var/tmp/intake-bench/shards/{name}.jsonl"),
                    "sha256": Sha256Hex::of(name.as_bytes()).to_string(),
                    "records": tasks * RECORDS_PER_TASK,
                }],
                "records_per_task": RECORDS_PER_TASK,
                "output": "file:///var/tmp/intake-bench/out/",
                "worker": {"binary_sha256": worker_digest},
                "max_attempts": 3,
            });
            let body = document.to_string();
            let manifest = spillway_common::manifest::parse(body.as_bytes())
                .unwrap_or_else(|errors| panic!("generated manifest is invalid: {errors}"));
            let specs = slice(&manifest);
            assert_eq!(specs.len() as u64, tasks);
            manifests.push((job_id(&manifest), manifest, specs));
            bodies.push(body);
        }
        Self {
            tasks_per_manifest: tasks,
            bodies,
            manifests,
        }
    }

    fn tasks(&self) -> u64 {
        self.manifests.len() as u64 * self.tasks_per_manifest
    }
}

/// Wall and steady durations of one run, in seconds.
#[derive(Debug, Clone, Copy)]
struct Timing {
    wall_secs: f64,
    steady_secs: f64,
}

impl Timing {
    /// Computes the durations from the start and the durable times, in milliseconds.
    fn from_durable(start_ms: i64, durable: &[i64], expected: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            durable.len() == expected,
            "{} of {expected} jobs are durable",
            durable.len()
        );
        let first = *durable.iter().min().context("no durable job")?;
        let last = *durable.iter().max().context("no durable job")?;
        Ok(Self {
            wall_secs: (last - start_ms).max(1) as f64 / 1000.0,
            steady_secs: (last - first).max(1) as f64 / 1000.0,
        })
    }
}

/// What one run measured. Round trips are counted only in runs under MONITOR.
struct RunOutcome {
    timing: Timing,
    commands: BTreeMap<String, u64>,
    round_trips: Option<BTreeMap<String, u64>>,
}

/// One row of the results: a timed run and the round trips of its counted twin.
struct Measurement {
    source: String,
    in_flight: usize,
    manifests: usize,
    tasks_per_manifest: u64,
    timing: Timing,
    /// Commands by name from `INFO commandstats`, including those inside scripts.
    commands: BTreeMap<String, u64>,
    /// Client requests by command from MONITOR.
    round_trips: BTreeMap<String, u64>,
    tasks: u64,
    /// Whether the row is a queue's stand-in alone, without a daemon or Redis.
    queue_only: bool,
}

impl Measurement {
    fn new(
        source: &str,
        in_flight: usize,
        workload: &Workload,
        timed: RunOutcome,
        counted: RunOutcome,
    ) -> Self {
        Self {
            source: source.into(),
            in_flight,
            manifests: workload.manifests.len(),
            tasks_per_manifest: workload.tasks_per_manifest,
            timing: timed.timing,
            commands: timed.commands,
            round_trips: counted.round_trips.unwrap_or_default(),
            tasks: workload.tasks(),
            queue_only: false,
        }
    }

    /// Builds the row of a queue stand-in that was read for `elapsed` without a daemon.
    fn queue_only(kind: &str, workload: &Workload, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        Self {
            source: format!("{kind}-only"),
            in_flight: 1,
            manifests: workload.manifests.len(),
            tasks_per_manifest: workload.tasks_per_manifest,
            timing: Timing {
                wall_secs: secs,
                steady_secs: secs,
            },
            commands: BTreeMap::new(),
            round_trips: BTreeMap::new(),
            tasks: workload.tasks(),
            queue_only: true,
        }
    }

    fn wall_manifests_per_sec(&self) -> f64 {
        self.manifests as f64 / self.timing.wall_secs
    }

    fn steady_manifests_per_sec(&self) -> f64 {
        (self.manifests - 1) as f64 / self.timing.steady_secs
    }

    fn steady_tasks_per_sec(&self) -> f64 {
        self.steady_manifests_per_sec() * self.tasks_per_manifest as f64
    }

    fn per_task(&self, counts: &BTreeMap<String, u64>) -> f64 {
        counts.values().sum::<u64>() as f64 / self.tasks as f64
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.source,
            "in_flight": self.in_flight,
            "manifests": self.manifests,
            "tasks_per_manifest": self.tasks_per_manifest,
            "wall_secs": self.timing.wall_secs,
            "steady_secs": self.timing.steady_secs,
            "wall_manifests_per_sec": self.wall_manifests_per_sec(),
            "steady_manifests_per_sec": self.steady_manifests_per_sec(),
            "steady_tasks_per_sec": self.steady_tasks_per_sec(),
            "queue_only": self.queue_only,
            "round_trips_per_task": self.per_task(&self.round_trips),
            "commands_per_task": self.per_task(&self.commands),
            "round_trips": self.round_trips,
            "commands": self.commands,
        })
    }
}

/// Reads the active-job index: each job's durable time in milliseconds.
async fn durable_times(conn: &mut MultiplexedConnection) -> anyhow::Result<Vec<i64>> {
    let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(format!("{PREFIX}:jobs:active"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    Ok(entries.into_iter().map(|(_, score)| score as i64).collect())
}

async fn connect(redis: &RedisServer) -> anyhow::Result<MultiplexedConnection> {
    Ok(redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?)
}

/// Starts MONITOR when `counted`, leaving out the requests of the connection `stats`.
async fn start_monitor(
    redis: &RedisServer,
    stats: &mut MultiplexedConnection,
    counted: bool,
) -> anyhow::Result<Option<Monitor>> {
    if !counted {
        return Ok(None);
    }
    let own_address = client_address(stats).await?;
    Ok(Some(Monitor::start(redis.port, own_address)?))
}

async fn finish_monitor(
    monitor: Option<Monitor>,
    stats: &mut MultiplexedConnection,
) -> anyhow::Result<Option<BTreeMap<String, u64>>> {
    match monitor {
        Some(monitor) => Ok(Some(monitor.finish(stats).await?)),
        None => Ok(None),
    }
}

/// Admits every manifest straight into a fresh ledger, `in_flight` at a time.
async fn ledger_run(
    workload: &Workload,
    in_flight: usize,
    counted: bool,
) -> anyhow::Result<RunOutcome> {
    let redis = RedisServer::start()?;
    let ledger = Ledger::connect(&redis.url(), PREFIX).await?;
    let mut stats = connect(&redis).await?;
    let monitor = start_monitor(&redis, &mut stats, counted).await?;
    let before = command_calls(&mut stats).await;

    let start_ms = now_ms();
    let mut admissions = futures::stream::iter(&workload.manifests)
        .map(|(job_id, manifest, tasks)| ledger.admit(job_id, manifest, tasks))
        .buffer_unordered(in_flight);
    while let Some(admitted) = admissions.next().await {
        admitted?;
    }
    drop(admissions);

    let after = command_calls(&mut stats).await;
    let round_trips = finish_monitor(monitor, &mut stats).await?;
    let durable = durable_times(&mut stats).await?;
    Ok(RunOutcome {
        timing: Timing::from_durable(start_ms, &durable, workload.manifests.len())?,
        commands: call_delta(&before, &after, &[]),
        round_trips,
    })
}

/// Has a daemon admit every manifest of the workload from `queue`.
async fn queue_run(
    settings: &Settings,
    queue: &impl BenchQueue,
    workload: &Workload,
    worker: &Path,
    counted: bool,
) -> anyhow::Result<RunOutcome> {
    let redis = RedisServer::start()?;
    let ledger = Ledger::connect(&redis.url(), PREFIX).await?;
    ledger.set_draining(true).await?;
    let dir = tempfile::tempdir()?;
    let daemon = DaemonProcess::start(
        &settings.daemon,
        dir.path(),
        &redis.url(),
        PREFIX,
        worker,
        queue,
    )?;
    queue.load(&workload.bodies).await?;

    let mut stats = connect(&redis).await?;
    let monitor = start_monitor(&redis, &mut stats, counted).await?;
    let before = command_calls(&mut stats).await;
    let start_ms = now_ms();
    let _: () = redis::cmd("DEL")
        .arg(ledger.keys().drain())
        .query_async(&mut stats)
        .await?;
    let polls = wait_durable(&mut stats, workload, &daemon).await?;
    let after = command_calls(&mut stats).await;
    let round_trips = finish_monitor(monitor, &mut stats).await?;
    let durable = durable_times(&mut stats).await?;

    // Every message must be acknowledged and every job complete.
    queue.wait_empty(Duration::from_secs(60)).await?;
    for (job_id, _, tasks) in &workload.manifests {
        let job = ledger
            .job(job_id)
            .await?
            .with_context(|| format!("job {job_id} is missing from the ledger"))?;
        anyhow::ensure!(
            job.tasks_total == tasks.len() as u64 && job.state == "running",
            "job {job_id} is {} with {} tasks",
            job.state,
            job.tasks_total
        );
    }
    drop(daemon);

    let own = [("zcard", polls), ("del", 1)];
    Ok(RunOutcome {
        timing: Timing::from_durable(start_ms, &durable, workload.manifests.len())?,
        commands: call_delta(&before, &after, &own),
        round_trips,
    })
}

/// Polls the active-job index until every job is durable, and returns the number of
/// polls (one `ZCARD` each).
async fn wait_durable(
    stats: &mut MultiplexedConnection,
    workload: &Workload,
    daemon: &DaemonProcess,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut polls = 0;
    loop {
        let durable: usize = redis::cmd("ZCARD")
            .arg(format!("{PREFIX}:jobs:active"))
            .query_async(stats)
            .await?;
        polls += 1;
        if durable == workload.manifests.len() {
            return Ok(polls);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{durable} of {} jobs durable after {RUN_TIMEOUT:?}; daemon log in {}",
            workload.manifests.len(),
            daemon.log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts the stand-in of a queue kind and measures it (see `measure_queue`).
async fn run_queue_kind(
    settings: &Settings,
    kind: &str,
    workload: &Workload,
    worker: &Path,
) -> anyhow::Result<Vec<Measurement>> {
    match kind {
        "sqs" => {
            let moto = MotoServer::start()?;
            let create = async |name: &str| Ok(SqsQueue::create(&moto, name).await);
            measure_queue(settings, workload, worker, create).await
        }
        "pubsub" => {
            let emulator = PubsubEmulator::start()?;
            let create = async |name: &str| PubsubQueue::create(&emulator, name).await;
            measure_queue(settings, workload, worker, create).await
        }
        other => {
            anyhow::bail!("unknown queue kind {other:?}; this benchmark knows sqs and pubsub")
        }
    }
}

/// Measures one queue kind, each run on a queue of its own that `create` makes from a
/// name: the stand-in alone, a timed daemon run, and a daemon run counted under
/// MONITOR.
async fn measure_queue<Q: BenchQueue>(
    settings: &Settings,
    workload: &Workload,
    worker: &Path,
    create: impl AsyncFn(&str) -> anyhow::Result<Q>,
) -> anyhow::Result<Vec<Measurement>> {
    let label = format!("t{}", workload.tasks_per_manifest);
    let direct_queue = create(&format!("direct-{label}")).await?;
    direct_queue.load(&workload.bodies).await?;
    let elapsed = direct_queue.consume(workload.bodies.len()).await?;
    let queue_only = Measurement::queue_only(direct_queue.kind(), workload, elapsed);

    let timed_queue = create(&format!("timed-{label}")).await?;
    let timed = queue_run(settings, &timed_queue, workload, worker, false).await?;
    let counted_queue = create(&format!("counted-{label}")).await?;
    let counted = queue_run(settings, &counted_queue, workload, worker, true).await?;
    let daemon = Measurement::new(timed_queue.kind(), 1, workload, timed, counted);
    Ok(vec![queue_only, daemon])
}

/// Writes a worker stand-in that exits at once. Admission pins manifests to its
/// digest, and with the reconcile interval at an hour the daemon never starts it.
fn stub_worker(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    use std::os::unix::fs::PermissionsExt;

    let path = dir.join("spillway-worker");
    let script = "#!/bin/sh\necho 'intake benchmark: this worker runs no tasks' >&2\nexit 0\n";
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok((path, Sha256Hex::of(script.as_bytes()).to_string()))
}

/// Machine and version details recorded with the results.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string());
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output();
    serde_json::json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(usize::from).ok(),
        "redis": redis.ok().map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string()),
        "moto": spillway_tests::moto::moto_dir().display().to_string(),
        "pubsub_emulator": spillway_tests::pubsub::emulator_jar()
            .ok()
            .map(|jar| jar.display().to_string()),
    })
}

fn print_table(results: &[Measurement]) {
    println!(
        "{:<11} {:>9} {:>9} {:>6} {:>8} {:>12} {:>11} {:>11} {:>12} {:>14}",
        "source",
        "in flight",
        "manifests",
        "tasks",
        "wall s",
        "manifests/s",
        "steady m/s",
        "steady t/s",
        "trips/task",
        "commands/task"
    );
    for result in results {
        let (trips, commands) = if result.queue_only {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.3}", result.per_task(&result.round_trips)),
                format!("{:.2}", result.per_task(&result.commands)),
            )
        };
        println!(
            "{:<11} {:>9} {:>9} {:>6} {:>8.2} {:>12.1} {:>11.1} {:>11.0} {:>12} {:>14}",
            result.source,
            result.in_flight,
            result.manifests,
            result.tasks_per_manifest,
            result.timing.wall_secs,
            result.wall_manifests_per_sec(),
            result.steady_manifests_per_sec(),
            result.steady_tasks_per_sec(),
            trips,
            commands,
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse()?;
    anyhow::ensure!(
        settings.daemon.is_file(),
        "{} not found; build it with `cargo build --release -p spillway` or pass --daemon",
        settings.daemon.display()
    );
    let scratch = tempfile::tempdir()?;
    let (worker, worker_digest) = stub_worker(scratch.path())?;

    let mut results = Vec::new();
    for &tasks in &settings.tasks {
        let label = format!("t{tasks}");
        let workload = Workload::generate(&label, settings.manifests, tasks, &worker_digest);
        eprintln!(
            "intake_bench: {} manifests of {tasks} tasks",
            settings.manifests
        );

        for in_flight in [1, settings.concurrency] {
            let timed = ledger_run(&workload, in_flight, false).await?;
            let counted = ledger_run(&workload, in_flight, true).await?;
            results.push(Measurement::new(
                "ledger", in_flight, &workload, timed, counted,
            ));
        }
        for kind in &settings.queues {
            results.extend(run_queue_kind(&settings, kind, &workload, &worker).await?);
        }
    }

    print_table(&results);
    if let Some(parent) = settings.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let report = serde_json::json!({
        "machine": machine(),
        "manifests": settings.manifests,
        "records_per_task": RECORDS_PER_TASK,
        "results": results.iter().map(Measurement::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(&settings.output, serde_json::to_string_pretty(&report)?)?;
    eprintln!("intake_bench: results in {}", settings.output.display());
    Ok(())
}
