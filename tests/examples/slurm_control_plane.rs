//! Benchmark of the Slurm backend's control plane on the single-node test cluster of
//! `scripts/slurm-cluster.sh`. Run it with `bash bench/slurm_control_plane.sh`.
//!
//! Two measurements, each with its own Redis and daemon, against one cluster:
//!
//! 1. **Fleet submission.** One job of `SPILLWAY_BENCH_TASKS` tasks (10,000) with
//!    `backend.slurm.max_workers` set to `SPILLWAY_BENCH_WORKERS` (1,000), so the
//!    fleet is capped below one worker per task, on a cluster whose MaxArraySize is
//!    `SPILLWAY_BENCH_MAX_ARRAY_SIZE` (100). Reports the arrays submitted against
//!    ⌈workers / MaxArraySize⌉, and the time from the manifest's admission (the
//!    daemon's `job admitted` log line) to its last `worker array submitted` line.
//! 2. **Polling.** `SPILLWAY_BENCH_JOBS` jobs (100) in flight at once. Every request
//!    from the daemon to slurmrestd goes through a counting HTTP forwarder, and the
//!    benchmark reports the requests per reconcile pass over a window of
//!    `SPILLWAY_BENCH_WINDOW_SECS` (20).
//!
//! No worker runs: the `gpu` partition is set DOWN after the cluster starts, so
//! Slurm accepts the arrays and keeps every element pending, and the daemon counts
//! pending elements as live workers. The batch script would run a stand-in worker
//! that exits at once. The manifests name a model that does not exist, because
//! admission does not read the model and no worker starts.
//!
//! The Slurm backend caps a fleet at the partition's free GPUs as well as at
//! `max_workers`, so the cluster advertises `SPILLWAY_BENCH_GPUS` fake GPUs (by
//! default 1,000, as many as the default fleet). Slurm 22.05 accepts at most 1,024
//! GPUs backed by device files on one node: with more, slurmctld sets the node to
//! INVAL and drains it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use spillway_common::ledger::Ledger;
use spillway_tests::http_count::{CountingProxy, RecordedRequest};
use spillway_tests::slurm::{SlurmCluster, shared_dir};
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, job_id_of, sample_records, send_raw, write_shard,
};

/// Most GPUs that Slurm 22.05 accepts on one node when each is a device file
/// (`gres_node_config_unpack` resets a larger count to this and drains the node).
/// NOTE: slurmrestd reports exactly 1024 as `gpu:1K`, which the Slurm backend does
/// not parse, so at 1024 it applies no GPU limit at all.
const MAX_NODE_GPUS: u32 = 1024;

/// How long the benchmark waits for the daemon to reach a state before it fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Time given to the daemon after the fleet is complete, to show that it submits
/// no further arrays once every element is pending.
const SETTLE: Duration = Duration::from_secs(3);

/// Tasks per job in the polling measurement. Each job gets one array of this size.
const TASKS_PER_POLLED_JOB: u32 = 2;

/// Benchmark settings, from `SPILLWAY_BENCH_*` environment variables.
struct Settings {
    tasks: u32,
    workers: u32,
    max_array_size: u32,
    jobs: u32,
    window: Duration,
    gpus: u32,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let settings = Self {
            tasks: env_number("SPILLWAY_BENCH_TASKS", 10_000)?,
            workers: env_number("SPILLWAY_BENCH_WORKERS", 1_000)?,
            max_array_size: env_number("SPILLWAY_BENCH_MAX_ARRAY_SIZE", 100)?,
            jobs: env_number("SPILLWAY_BENCH_JOBS", 100)?,
            window: Duration::from_secs(env_number("SPILLWAY_BENCH_WINDOW_SECS", 20)?.into()),
            gpus: env_number("SPILLWAY_BENCH_GPUS", 1_000)?,
        };
        ensure!(
            settings.tasks >= 1
                && settings.workers >= 1
                && settings.jobs >= 1
                && settings.gpus >= 1,
            "SPILLWAY_BENCH_TASKS, _WORKERS, _JOBS and _GPUS must be at least 1"
        );
        ensure!(
            settings.max_array_size >= 1,
            "SPILLWAY_BENCH_MAX_ARRAY_SIZE must be at least 1"
        );
        ensure!(
            settings.gpus <= MAX_NODE_GPUS,
            "SPILLWAY_BENCH_GPUS is {}, but Slurm 22.05 drains a node with more than \
             {MAX_NODE_GPUS} file-backed GPUs; use at most {MAX_NODE_GPUS}",
            settings.gpus
        );
        ensure!(
            settings.jobs * TASKS_PER_POLLED_JOB <= settings.gpus,
            "SPILLWAY_BENCH_JOBS of {} needs {} GPUs, more than SPILLWAY_BENCH_GPUS ({})",
            settings.jobs,
            settings.jobs * TASKS_PER_POLLED_JOB,
            settings.gpus
        );
        ensure!(
            !settings.window.is_zero(),
            "SPILLWAY_BENCH_WINDOW_SECS must be at least 1"
        );
        Ok(settings)
    }

    /// Workers the daemon should start for the big job: one per task, up to
    /// `max_workers` and the free GPUs.
    fn fleet(&self) -> u32 {
        self.workers.min(self.tasks).min(self.gpus)
    }
}

fn env_number(name: &str, default: u32) -> anyhow::Result<u32> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name} must be a whole number, got {value:?}")),
        Err(_) => Ok(default),
    }
}

/// Results of the fleet submission measurement.
struct FleetResult {
    arrays_in_ledger: usize,
    submit_requests: usize,
    squeue_records: usize,
    elements: u32,
    /// From sending the message to the daemon's `job admitted` line.
    send_to_admitted: Duration,
    /// From `job admitted` to the first `worker array submitted` line.
    admitted_to_first_array: Duration,
    /// From `job admitted` to the last `worker array submitted` line.
    admitted_to_last_array: Duration,
    /// From sending the message until the benchmark saw the whole fleet in the ledger.
    send_to_fleet_in_ledger: Duration,
}

/// Results of the polling measurement.
struct PollResult {
    max_workers: u32,
    ramp: Duration,
    window: Duration,
    reconcile_interval_secs: f64,
    /// Requests in the window, grouped into reconcile passes.
    passes: Vec<usize>,
    by_operation: BTreeMap<String, usize>,
    total: usize,
    uncounted_connections: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    // Returning from main on Ctrl-C drops the cluster, daemons and Redis servers,
    // which stops each of them by pid.
    tokio::select! {
        result = run(&settings) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; stopping what the benchmark started"),
    }
}

async fn run(settings: &Settings) -> anyhow::Result<()> {
    eprintln!(
        "starting the Slurm test cluster with MaxArraySize {} and {} fake GPUs",
        settings.max_array_size, settings.gpus
    );
    let max_array_size = settings.max_array_size.to_string();
    let gpus = settings.gpus.to_string();
    let cluster = SlurmCluster::start(&[
        ("SLURM_MAX_ARRAY_SIZE", max_array_size.as_str()),
        ("SLURM_GPU_COUNT", gpus.as_str()),
    ])?;
    hold_partition(&cluster)?;
    let proxy = CountingProxy::start(rest_port(&cluster)?)?;
    let shared = shared_dir()?;
    let worker = write_stand_in_worker(shared.path())?;

    eprintln!(
        "measuring fleet submission: {} tasks, {} workers",
        settings.tasks,
        settings.fleet()
    );
    let fleet = measure_fleet(settings, &cluster, &proxy, shared.path(), &worker).await?;
    cancel_all(&cluster)?;

    eprintln!("measuring polling: {} jobs in flight", settings.jobs);
    let polling = measure_polling(settings, &cluster, &proxy, shared.path(), &worker).await?;
    cancel_all(&cluster)?;

    print_report(settings, &fleet, &polling);
    Ok(())
}

/// Sets the `gpu` partition DOWN: Slurm still accepts arrays there but starts none
/// of their elements.
fn hold_partition(cluster: &SlurmCluster) -> anyhow::Result<()> {
    let status = cluster
        .command("scontrol")
        .args(["update", "PartitionName=gpu", "State=DOWN"])
        .status()?;
    ensure!(
        status.success(),
        "scontrol update PartitionName=gpu State=DOWN failed: {status}"
    );
    Ok(())
}

/// Cancels every job of the cluster's user, so the next measurement starts empty.
fn cancel_all(cluster: &SlurmCluster) -> anyhow::Result<()> {
    let user = cluster.var("SLURMRESTD_USER");
    let status = cluster.command("scancel").args(["--user", user]).status()?;
    ensure!(status.success(), "scancel --user {user} failed: {status}");
    Ok(())
}

fn rest_port(cluster: &SlurmCluster) -> anyhow::Result<u16> {
    let url = cluster.var("SLURMRESTD_URL");
    let port = url
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok());
    port.with_context(|| format!("SLURMRESTD_URL {url} has no port"))
}

/// Writes a worker that exits at once, in case Slurm ever starts an element.
fn write_stand_in_worker(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;

    let path = dir.join("stand-in-worker");
    std::fs::write(
        &path,
        "#!/bin/sh\n# Benchmark stand-in: computes nothing.\nexit 0\n",
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Builds the `[backend.slurm]` section, with slurmrestd reached through the proxy.
fn backend_config(
    cluster: &SlurmCluster,
    proxy: &CountingProxy,
    work_dir: &Path,
    worker: &Path,
    max_workers: u32,
    max_array_size: u32,
) -> String {
    format!(
        "[backend.slurm]\nenabled = true\napi = \"rest\"\nrest_url = \"{url}\"\nuser = \"{user}\"\n\
         token_command = \"{token} 600\"\nworker_binary = \"{worker}\"\nmax_workers = {max_workers}\n\
         max_array_size = {max_array_size}\npartition = \"gpu\"\nthreads_per_worker = 1\n\
         working_dir = \"{work}\"\nlog_dir = \"{work}/logs\"\ncache_dir = \"{work}/cache\"\n",
        url = proxy.endpoint(),
        user = cluster.var("SLURMRESTD_USER"),
        token = cluster.var("SLURM_TOKEN_COMMAND"),
        worker = worker.display(),
        work = work_dir.display(),
    )
}

/// Builds an embed manifest of `tasks` one-record tasks, with one GPU per worker.
fn manifest(name: &str, tasks: u32, work_dir: &Path, worker: &Path) -> serde_json::Value {
    let shard = write_shard(
        &work_dir.join("shards"),
        &format!("{name}.jsonl"),
        &sample_records(name, tasks as usize),
    );
    serde_json::json!({
        "version": 1,
        "name": name,
        "kernel": {"name": "embed", "max_seq_len": 128},
        "model": {
            "uri": format!("file://{}/no-model/", work_dir.display()),
            "sha256": "ab".repeat(32),
        },
        "inputs": [shard],
        "records_per_task": 1,
        "output": format!("file://{}/out/", work_dir.display()),
        "worker": {"binary_sha256": spillway_tests::file_digest(worker)},
        "gpus_per_worker": 1,
    })
}

async fn start_daemon(
    redis: &RedisServer,
    extra_config: String,
) -> anyhow::Result<(Daemon, Ledger)> {
    let mut daemon = Daemon::start(
        redis,
        DaemonOptions {
            extra_config,
            ..DaemonOptions::default()
        },
    )?;
    let started = Instant::now();
    while !daemon.log().contains("intake started") {
        ensure!(
            daemon.is_running(),
            "the daemon exited during start; log:\n{}",
            daemon.log()
        );
        ensure!(
            started.elapsed() < STEP_TIMEOUT,
            "the daemon did not start its intake within {STEP_TIMEOUT:?}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ledger = Ledger::connect(&redis.url(), "spillway").await?;
    Ok((daemon, ledger))
}

/// Number of arrays recorded for a job, and the sum of their sizes.
async fn recorded_arrays(ledger: &Ledger, job_id: &str) -> anyhow::Result<(usize, u32)> {
    let arrays = ledger.arrays(job_id, "slurm").await?;
    Ok((arrays.len(), arrays.iter().map(|(_, size)| size).sum()))
}

async fn measure_fleet(
    settings: &Settings,
    cluster: &SlurmCluster,
    proxy: &CountingProxy,
    work_dir: &Path,
    worker: &Path,
) -> anyhow::Result<FleetResult> {
    let redis = RedisServer::start()?;
    let config = backend_config(
        cluster,
        proxy,
        work_dir,
        worker,
        settings.workers,
        settings.max_array_size,
    );
    let (daemon, ledger) = start_daemon(&redis, config).await?;
    let manifest = manifest("fleet", settings.tasks, work_dir, worker);
    let job_id = job_id_of(&manifest);
    let requests_before = proxy.requests().len();

    let sent_at = SystemTime::now();
    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let send_to_fleet_in_ledger = wait_fleet(&ledger, &job_id, settings.fleet(), &daemon).await?;
    tokio::time::sleep(SETTLE).await;

    let (arrays_in_ledger, elements) = recorded_arrays(&ledger, &job_id).await?;
    let submit_requests = proxy.requests()[requests_before..]
        .iter()
        .filter(|request| request.method == "POST")
        .count();
    let times = fleet_log_times(&daemon.log(), &job_id)?;
    Ok(FleetResult {
        arrays_in_ledger,
        submit_requests,
        squeue_records: squeue_records(cluster)?,
        elements,
        send_to_admitted: seconds_between(unix_seconds(sent_at), times.admitted),
        admitted_to_first_array: seconds_between(times.admitted, times.first_array),
        admitted_to_last_array: seconds_between(times.admitted, times.last_array),
        send_to_fleet_in_ledger,
    })
}

/// Waits until a job's recorded arrays hold `fleet` elements, or until their number
/// has not grown for [`SETTLE`], and returns the time from the call to the last
/// growth. The second case lets the report show a fleet that stopped short.
async fn wait_fleet(
    ledger: &Ledger,
    job_id: &str,
    fleet: u32,
    daemon: &Daemon,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last = (0, started.elapsed());
    loop {
        let elements = recorded_arrays(ledger, job_id).await?.1;
        if elements != last.0 {
            last = (elements, started.elapsed());
        }
        let stalled = elements > 0 && started.elapsed() - last.1 >= SETTLE;
        if elements >= fleet || stalled {
            return Ok(last.1);
        }
        ensure!(
            started.elapsed() < STEP_TIMEOUT,
            "no worker array was submitted within {STEP_TIMEOUT:?}; daemon log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Log timestamps of one job, as seconds since the Unix epoch.
struct FleetLogTimes {
    admitted: f64,
    first_array: f64,
    last_array: f64,
}

fn fleet_log_times(log: &str, job_id: &str) -> anyhow::Result<FleetLogTimes> {
    let lines_with = |message: &str| -> Vec<f64> {
        log.lines()
            .filter(|line| line.contains(message) && line.contains(job_id))
            .filter_map(log_time)
            .collect()
    };
    let admitted = lines_with("job admitted");
    let arrays = lines_with("worker array submitted");
    let (Some(&admitted), Some(&first_array), Some(&last_array)) =
        (admitted.first(), arrays.first(), arrays.last())
    else {
        bail!(
            "the daemon log lacks `job admitted` or `worker array submitted` for job {job_id}; log:\n{log}"
        );
    };
    Ok(FleetLogTimes {
        admitted,
        first_array,
        last_array,
    })
}

/// Counts the job records that `squeue` lists for the cluster's user. A pending
/// array is one record.
fn squeue_records(cluster: &SlurmCluster) -> anyhow::Result<usize> {
    let output = cluster
        .command("squeue")
        .args([
            "--noheader",
            "--format=%i",
            "--user",
            cluster.var("SLURMRESTD_USER"),
        ])
        .output()?;
    ensure!(
        output.status.success(),
        "squeue failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).lines().count())
}

async fn measure_polling(
    settings: &Settings,
    cluster: &SlurmCluster,
    proxy: &CountingProxy,
    work_dir: &Path,
    worker: &Path,
) -> anyhow::Result<PollResult> {
    let redis = RedisServer::start()?;
    // Room for every job's workers at once, so that each of them gets an array.
    let max_workers = settings.workers.max(settings.jobs * TASKS_PER_POLLED_JOB);
    let config = backend_config(
        cluster,
        proxy,
        work_dir,
        worker,
        max_workers,
        settings.max_array_size,
    );
    let (daemon, ledger) = start_daemon(&redis, config).await?;
    let reconcile_interval_secs = reconcile_interval_secs(&daemon.config_path)?;

    let started = Instant::now();
    let mut job_ids = Vec::new();
    for index in 0..settings.jobs {
        let manifest = manifest(
            &format!("poll-{index:03}"),
            TASKS_PER_POLLED_JOB,
            work_dir,
            worker,
        );
        job_ids.push(job_id_of(&manifest));
        send_raw(&redis, manifest.to_string().as_bytes()).await;
    }
    wait_all_placed(&ledger, &job_ids, &daemon, started).await?;
    let ramp = started.elapsed();
    tokio::time::sleep(SETTLE).await;

    let window_start = Instant::now();
    tokio::time::sleep(settings.window).await;
    let window_end = Instant::now();

    let in_window: Vec<RecordedRequest> = proxy
        .requests()
        .into_iter()
        .filter(|request| request.at >= window_start && request.at < window_end)
        .collect();
    let mut by_operation = BTreeMap::new();
    for request in &in_window {
        *by_operation.entry(request.operation()).or_insert(0) += 1;
    }
    let passes = group_into_passes(&in_window, reconcile_interval_secs);
    Ok(PollResult {
        max_workers,
        ramp,
        window: window_end - window_start,
        reconcile_interval_secs,
        passes,
        total: in_window.len(),
        by_operation,
        uncounted_connections: proxy.uncounted_connections(),
    })
}

/// Waits until every job has all its workers submitted.
async fn wait_all_placed(
    ledger: &Ledger,
    job_ids: &[String],
    daemon: &Daemon,
    started: Instant,
) -> anyhow::Result<()> {
    for job_id in job_ids {
        while recorded_arrays(ledger, job_id).await?.1 < TASKS_PER_POLLED_JOB {
            ensure!(
                started.elapsed() < STEP_TIMEOUT,
                "job {job_id} got no workers within {STEP_TIMEOUT:?}; daemon log:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Reads `reconcile_interval_secs` from the configuration the harness wrote.
fn reconcile_interval_secs(config_path: &Path) -> anyhow::Result<f64> {
    let config = std::fs::read_to_string(config_path)?;
    config
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "reconcile_interval_secs")
        .and_then(|(_, value)| value.trim().parse().ok())
        .with_context(|| format!("{} sets no reconcile_interval_secs", config_path.display()))
}

/// Groups requests into reconcile passes and returns the requests of each. A pass
/// sends its requests back to back, then the loop sleeps until the next interval,
/// so a gap longer than half the interval starts a new pass.
fn group_into_passes(requests: &[RecordedRequest], interval_secs: f64) -> Vec<usize> {
    let gap = Duration::from_secs_f64(interval_secs / 2.0);
    let mut passes: Vec<usize> = Vec::new();
    let mut previous: Option<Instant> = None;
    for request in requests {
        match (previous, passes.last_mut()) {
            (Some(at), Some(count)) if request.at - at <= gap => *count += 1,
            _ => passes.push(1),
        }
        previous = Some(request.at);
    }
    passes
}

/// Parses the leading RFC 3339 UTC timestamp of a log line, such as
/// `2026-12-05T10:11:12.123456Z`, into seconds since the Unix epoch.
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.split(':');
    let (hours, minutes) = (
        time.next()?.parse::<f64>().ok()?,
        time.next()?.parse::<f64>().ok()?,
    );
    let seconds = time.next()?.parse::<f64>().ok()?;
    let days = days_from_civil(year, month, day) as f64;
    Some(days * 86_400.0 + hours * 3_600.0 + minutes * 60.0 + seconds)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar, by Howard
/// Hinnant's `days_from_civil` algorithm.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

/// Duration from `start` to `end` in Unix seconds; zero when `end` comes first.
fn seconds_between(start: f64, end: f64) -> Duration {
    Duration::from_secs_f64((end - start).max(0.0))
}

fn met(condition: bool) -> &'static str {
    if condition { "met" } else { "NOT met" }
}

fn print_report(settings: &Settings, fleet: &FleetResult, polling: &PollResult) {
    print_fleet(settings, fleet);
    print_polling(settings, polling);
}

fn millis(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

fn print_fleet(settings: &Settings, fleet: &FleetResult) {
    let expected = fleet.elements.div_ceil(settings.max_array_size);
    let complete = fleet.elements == settings.fleet();
    let rows = [
        ("tasks", settings.tasks.to_string()),
        ("max_workers", settings.workers.to_string()),
        ("fake GPUs on the node", settings.gpus.to_string()),
        (
            "MaxArraySize (slurm.conf and max_array_size)",
            settings.max_array_size.to_string(),
        ),
        (
            "workers submitted (array elements)",
            format!(
                "{} of {} expected ({})",
                fleet.elements,
                settings.fleet(),
                met(complete)
            ),
        ),
        (
            "target submissions ⌈workers / MaxArraySize⌉",
            expected.to_string(),
        ),
        (
            "arrays recorded in the ledger",
            format!(
                "{} ({})",
                fleet.arrays_in_ledger,
                met(fleet.arrays_in_ledger as u32 == expected)
            ),
        ),
        (
            "submit requests seen at the proxy",
            fleet.submit_requests.to_string(),
        ),
        ("job records in squeue", fleet.squeue_records.to_string()),
        (
            "message sent → job admitted (tasks in the ledger)",
            millis(fleet.send_to_admitted),
        ),
        (
            "job admitted → first array submitted",
            millis(fleet.admitted_to_first_array),
        ),
        (
            "job admitted → last array submitted (control-plane time)",
            millis(fleet.admitted_to_last_array),
        ),
        (
            "message sent → whole fleet in the ledger (benchmark clock)",
            millis(fleet.send_to_fleet_in_ledger),
        ),
    ];
    println!(
        "\n### Fleet submission: one job of {} tasks\n",
        settings.tasks
    );
    print_table(&rows);
}

fn print_polling(settings: &Settings, polling: &PollResult) {
    let window_secs = polling.window.as_secs_f64();
    let nominal_intervals = window_secs / polling.reconcile_interval_secs;
    // The first and last pass may be cut by the window's edges.
    let whole = match polling.passes.len() {
        0..=2 => &polling.passes[..],
        count => &polling.passes[1..count - 1],
    };
    let mean = whole.iter().sum::<usize>() as f64 / whole.len().max(1) as f64;
    let max = whole.iter().copied().max().unwrap_or(0);
    let min = whole.iter().copied().min().unwrap_or(0);

    let mut rows = vec![
        ("jobs in flight", settings.jobs.to_string()),
        ("max_workers", polling.max_workers.to_string()),
        (
            "array elements pending",
            (settings.jobs * TASKS_PER_POLLED_JOB).to_string(),
        ),
        ("time until every job had its array", millis(polling.ramp)),
        ("window", format!("{window_secs:.1} s")),
        (
            "reconcile_interval_secs",
            polling.reconcile_interval_secs.to_string(),
        ),
        (
            "nominal intervals in the window",
            format!("{nominal_intervals:.1}"),
        ),
        ("passes seen at the proxy", polling.passes.len().to_string()),
    ];
    let operations: Vec<(String, String)> = polling
        .by_operation
        .iter()
        .map(|(operation, count)| (format!("requests `{operation}`"), count.to_string()))
        .collect();
    rows.extend(
        operations
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone())),
    );
    rows.extend([
        ("requests in total", polling.total.to_string()),
        (
            "connections not counted (chunked body)",
            polling.uncounted_connections.to_string(),
        ),
        (
            "slurmrestd requests per pass, mean (min–max), target 1–2",
            format!("{mean:.2} ({min}–{max}) ({})", met(min >= 1 && max <= 2)),
        ),
        (
            "slurmrestd requests per nominal interval",
            format!("{:.2}", polling.total as f64 / nominal_intervals),
        ),
    ]);
    println!("\n### Polling: {} jobs in flight\n", settings.jobs);
    print_table(&rows);
}

fn print_table(rows: &[(&str, String)]) {
    println!("| measure | value |\n|---|---|");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
}
