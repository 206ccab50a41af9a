//! The AWS Batch backend against moto, through a real daemon whose only backend is
//! Batch. A stand-in in front of moto (`spillway_tests::batch`) runs the real worker
//! processes for the array elements submitted, so jobs complete with real results.
//! Requires `cargo build --bins`, and the model and moto that scripts/install-deps.sh
//! installs. Every AWS client is pinned to 127.0.0.1 with dummy credentials.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_batch::types::RetryAction;
use spillway_common::artefact::EmbeddingBlock;
use spillway_common::envelope::TaskEnvelope;
use spillway_common::ledger::{JobRecord, Ledger};
use spillway_tests::batch::{BatchStandIn, SubmittedJob};
use spillway_tests::moto::{MotoServer, create_job_queue};
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, binary, embed_manifest, job_id_of, sample_records,
    send_raw, serial, write_shard,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(240);
const EAST: &str = "us-east-1";
const WEST: &str = "eu-west-1";
/// A worker image pinned by digest; the stand-in runs the built worker in its place.
const IMAGE: &str = "registry.example/spillway/worker@sha256:5e1f0e6b1c6d4a3f9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928";

/// One region: a job queue in moto and the stand-in that is its endpoint.
struct Region {
    name: &'static str,
    job_queue: String,
    stand_in: BatchStandIn,
}

/// Redis, moto with a job queue per region, and a folder for shards and outputs.
struct Site {
    redis: RedisServer,
    moto: MotoServer,
    regions: Vec<Region>,
    data: tempfile::TempDir,
}

impl Site {
    /// Starts the servers and a stand-in per region that runs `max_running`
    /// elements at once.
    async fn start(regions: &[&'static str], max_running: usize) -> Self {
        let redis = RedisServer::start().unwrap();
        let moto = MotoServer::start().unwrap();
        moto.use_batch_without_docker().unwrap();
        let role = moto.create_role("spillway-batch-service").unwrap();

        let mut started = Vec::new();
        for name in regions {
            let client = MotoServer::batch_client(&moto.endpoint(), name);
            let job_queue = format!("spillway-{name}");
            create_job_queue(&client, &job_queue, &role).await;
            let stand_in = BatchStandIn::start(moto.port, max_running, moto.s3_env()).unwrap();
            started.push(Region {
                name,
                job_queue,
                stand_in,
            });
        }
        Self {
            redis,
            moto,
            regions: started,
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn region(&self, name: &str) -> &Region {
        self.regions
            .iter()
            .find(|region| region.name == name)
            .expect("region is part of the site")
    }

    /// Configuration with Batch as the only backend: the queues in the order of
    /// `self.regions`, the settings of these tests, and `settings` (`key = value`
    /// lines of `[backend.batch]`) replacing or adding to them.
    fn config(&self, settings: &str) -> String {
        let worker = binary("spillway-worker").display().to_string();
        let cache = self.data.path().join("cache").display().to_string();
        let mut batch: BTreeMap<String, String> = [
            ("enabled", "true".to_string()),
            ("max_workers", "4".into()),
            ("max_workers_per_region", "4".into()),
            ("max_array_size", "2".into()),
            ("submit_rate_per_sec", "20.0".into()),
            ("backoff_initial_ms", "50".into()),
            ("backoff_max_ms", "400".into()),
            ("vcpus_per_worker", "1".into()),
            ("memory_per_worker_mib", "2048".into()),
            ("threads_per_worker", "1".into()),
            (
                "job_role_arn",
                "\"arn:aws:iam::123456789012:role/spillway-worker\"".into(),
            ),
            ("worker_path", format!("{worker:?}")),
            ("cache_dir", format!("{cache:?}")),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
        for line in settings.lines().filter(|line| !line.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .expect("settings are key = value lines");
            batch.insert(key.trim().to_string(), value.trim().to_string());
        }

        let mut config = String::from(
            "[placement]\nqueue_wait_bound_secs = 0.0\nprior_task_secs = 600.0\n\n[backend.batch]\n",
        );
        for (key, value) in &batch {
            config.push_str(&format!("{key} = {value}\n"));
        }
        for region in &self.regions {
            config.push_str(&format!(
                "\n[[backend.batch.queues]]\nregion = \"{}\"\njob_queue = \"{}\"\n\
                 endpoint_url = \"{}\"\nprice_per_gpu_hour = 1.0\n",
                region.name,
                region.job_queue,
                region.stand_in.endpoint(),
            ));
        }
        config
    }

    fn daemon(&self, settings: &str) -> Daemon {
        let mut env = self.moto.s3_env();
        env.push(("SPILLWAY__BACKEND__LOCAL__ENABLED".into(), "false".into()));
        let options = DaemonOptions {
            extra_config: self.config(settings),
            env,
            ..DaemonOptions::default()
        };
        Daemon::start(&self.redis, options).unwrap()
    }

    async fn ledger(&self) -> Ledger {
        Ledger::connect(&self.redis.url(), "spillway")
            .await
            .unwrap()
    }

    /// Writes a shard of `records` records and returns a Batch manifest over it with
    /// a deadline 20 minutes ahead.
    fn manifest(&self, name: &str, records: usize, records_per_task: u32) -> serde_json::Value {
        let inputs = vec![write_shard(
            self.data.path(),
            &format!("{name}.jsonl"),
            &sample_records(name, records),
        )];
        let mut manifest = embed_manifest(name, inputs, records_per_task, &self.output());
        manifest["worker"] = serde_json::json!({"image": IMAGE});
        manifest["deadline"] = serde_json::json!(deadline_in(Duration::from_secs(1200)));
        manifest
    }

    fn output(&self) -> std::path::PathBuf {
        self.data.path().join("out")
    }

    /// Sends a manifest and waits until its job has finished.
    async fn run(&self, daemon: &mut Daemon, manifest: &serde_json::Value) -> String {
        let job_id = job_id_of(manifest);
        send_raw(&self.redis, manifest.to_string().as_bytes()).await;
        let job = self.wait(daemon, &job_id).await;
        assert_eq!(
            job.state,
            "succeeded",
            "daemon log:\n{}\nworker logs:\n{}",
            daemon.log(),
            self.worker_logs()
        );
        job_id
    }

    /// Waits until a job has finished; on a time-out, fails with the logs.
    async fn wait(&self, daemon: &mut Daemon, job_id: &str) -> JobRecord {
        let ledger = self.ledger().await;
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            if let Some(job) = ledger.job(job_id).await.unwrap()
                && job.is_finished()
            {
                return job;
            }
            let stopped = !daemon.is_running();
            assert!(
                Instant::now() < deadline && !stopped,
                "job {job_id} did not finish within {JOB_TIMEOUT:?} (daemon running: {}); daemon log:\n{}\nworker logs:\n{}",
                !stopped,
                daemon.log(),
                self.worker_logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn worker_logs(&self) -> String {
        self.regions
            .iter()
            .map(|region| region.stand_in.logs())
            .collect()
    }
}

/// Returns an RFC 3339 time `ahead` from now, as `date` prints it.
fn deadline_in(ahead: Duration) -> String {
    let at = std::time::SystemTime::now() + ahead;
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let output = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("run date");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

/// Reads every task attempt envelope of a job.
fn task_envelopes(output: &Path, job_id: &str) -> Vec<TaskEnvelope> {
    let mut envelopes = Vec::new();
    for task in std::fs::read_dir(output.join(job_id).join("envelopes")).unwrap() {
        for attempt in std::fs::read_dir(task.unwrap().path()).unwrap() {
            let bytes = std::fs::read(attempt.unwrap().path()).unwrap();
            envelopes.push(serde_json::from_slice(&bytes).expect("task envelope parses"));
        }
    }
    envelopes
}

/// Returns the jobs a stand-in ran for one Spillway job.
fn jobs_for(stand_in: &BatchStandIn, job_id: &str) -> Vec<SubmittedJob> {
    stand_in
        .jobs()
        .into_iter()
        .filter(|job| job.environment.get("SPILLWAY_JOB_ID").map(String::as_str) == Some(job_id))
        .collect()
}

/// Elements of a submitted job: its array size, or 1 for a plain job.
fn elements(job: &SubmittedJob) -> u32 {
    job.array_size.unwrap_or(1)
}

/// Returns whether a line of `log` contains `message` and every one of `fields`.
fn has_line(log: &str, message: &str, fields: &[&str]) -> bool {
    log.lines()
        .any(|line| line.contains(message) && fields.iter().all(|field| line.contains(field)))
}

/// Waits until `condition` is true or `timeout` passes.
async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embed_job_runs_on_batch_workers() {
    let _serial = serial().await;
    let site = Site::start(&[EAST], 2).await;
    let mut daemon = site.daemon("max_workers = 3\n");
    let manifest = site.manifest("on-batch", 24, 4);

    let job_id = site.run(&mut daemon, &manifest).await;

    let output = site.output();
    assert_eq!(
        count_files(&output.join(&job_id).join("results")),
        6,
        "expected exactly one result per task"
    );
    let bytes = std::fs::read(output.join(&job_id).join("embeddings.safetensors")).unwrap();
    let block = EmbeddingBlock::decode(&bytes).unwrap();
    let expected: Vec<String> = sample_records("on-batch", 24)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(block.ids, expected);

    let submitted = jobs_for(&site.region(EAST).stand_in, &job_id);
    // Three workers with max_array_size 2: an array of 2 and a plain job, because
    // Batch arrays have at least 2 elements.
    let sizes: Vec<Option<u32>> = submitted.iter().map(|job| job.array_size).collect();
    assert_eq!(sizes, [Some(2), None], "{}", daemon.log());
    let arrays: BTreeMap<String, (u32, u32)> = submitted
        .iter()
        .map(|job| {
            let offset: u32 = job.environment["SPILLWAY_ARRAY_INDEX_OFFSET"]
                .parse()
                .unwrap();
            (job.batch_job_id.clone(), (offset, elements(job)))
        })
        .collect();
    let envelopes = task_envelopes(&output, &job_id);
    assert!(envelopes.len() >= 6, "{envelopes:?}");
    for envelope in &envelopes {
        assert_eq!(envelope.backend, "batch");
        // Worker ids are `batch-<array id>-<array index>-<host>-<pid>`.
        let rest = envelope
            .worker_id
            .strip_prefix("batch-")
            .expect("batch worker id");
        let (array_id, (offset, size)) = arrays
            .iter()
            .find(|(id, _)| rest.starts_with(&format!("{id}-")))
            .unwrap_or_else(|| panic!("worker {} is in no submitted array", envelope.worker_id));
        let index: u32 = rest[array_id.len() + 1..]
            .split('-')
            .next()
            .and_then(|index| index.parse().ok())
            .expect("array index in worker id");
        assert!(
            (*offset..offset + size).contains(&index),
            "worker {} has index {index}, outside its array's {offset}..{}",
            envelope.worker_id,
            offset + size
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn job_definition_carries_digest_and_is_reused() {
    let _serial = serial().await;
    let site = Site::start(&[EAST], 2).await;
    let client = MotoServer::batch_client(&site.moto.endpoint(), EAST);

    let mut daemon = site.daemon("");
    let first = site.run(&mut daemon, &site.manifest("first", 4, 4)).await;
    assert!(
        daemon.log().contains("job definition registered"),
        "{}",
        daemon.log()
    );
    daemon.kill();
    let mut restarted = site.daemon("");
    let second = site
        .run(&mut restarted, &site.manifest("second", 4, 4))
        .await;

    let log = restarted.log();
    assert!(log.contains("job definition found"), "{log}");
    assert!(!log.contains("job definition registered"), "{log}");
    let definitions = client
        .describe_job_definitions()
        .status("ACTIVE")
        .send()
        .await
        .unwrap();
    let definitions = definitions.job_definitions();
    assert_eq!(definitions.len(), 1, "{definitions:?}");
    let definition = &definitions[0];
    let name = definition.job_definition_name().unwrap();
    assert!(name.starts_with("spillway-5e1f0e6b1c6d-"), "{name}");
    let arn = definition.job_definition_arn().unwrap();
    let stand_in = &site.region(EAST).stand_in;
    for job_id in [&first, &second] {
        let submitted = jobs_for(stand_in, job_id);
        assert!(!submitted.is_empty());
        assert!(
            submitted.iter().all(|job| job.job_definition == arn),
            "{submitted:?}"
        );
    }

    let container = definition.container_properties().unwrap();
    assert_eq!(container.image(), Some(IMAGE));
    assert_eq!(
        container.job_role_arn(),
        Some("arn:aws:iam::123456789012:role/spillway-worker")
    );
    let command = container.command();
    assert_eq!(&command[..2], ["/bin/sh", "-c"]);
    assert!(
        command[2].contains("AWS_BATCH_JOB_ARRAY_INDEX"),
        "{command:?}"
    );
    let resources: BTreeMap<String, String> = container
        .resource_requirements()
        .iter()
        .map(|resource| {
            let kind = resource.r#type().unwrap().as_str().to_string();
            (kind, resource.value().unwrap().to_string())
        })
        .collect();
    assert_eq!(resources["VCPU"], "1");
    assert_eq!(resources["MEMORY"], "2048");

    let retry = definition.retry_strategy().expect("retry strategy");
    assert_eq!(retry.attempts(), Some(3));
    // Batch reads actions case-insensitively, and moto stores them in lower case.
    let rules: Vec<String> = retry
        .evaluate_on_exit()
        .iter()
        .map(|rule| {
            let condition = match (
                rule.on_status_reason(),
                rule.on_reason(),
                rule.on_exit_code(),
            ) {
                (Some(pattern), None, None) => format!("onStatusReason {pattern}"),
                (None, Some(pattern), None) => format!("onReason {pattern}"),
                (None, None, Some(pattern)) => format!("onExitCode {pattern}"),
                other => format!("{other:?}"),
            };
            let action = rule.action().map(RetryAction::as_str).unwrap_or_default();
            format!("{condition} -> {}", action.to_uppercase())
        })
        .collect();
    assert_eq!(
        rules,
        [
            "onStatusReason Host EC2* -> RETRY",
            "onReason CannotPullContainerError* -> RETRY",
            "onReason CannotStartContainerError* -> RETRY",
            "onExitCode * -> EXIT",
            "onReason * -> EXIT",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn arrays_split_carry_environment_and_are_terminated() {
    let _serial = serial().await;
    // One element runs at a time, and none starts after the first: the others are
    // left over when the job finishes.
    let site = Site::start(&[EAST], 1).await;
    let stand_in = &site.region(EAST).stand_in;
    let mut daemon = site.daemon("");
    let manifest = site.manifest("split", 16, 2);
    let job_id = job_id_of(&manifest);

    send_raw(&site.redis, manifest.to_string().as_bytes()).await;
    wait_until(Duration::from_secs(60), "a running element", || {
        stand_in
            .jobs()
            .iter()
            .any(|job| job.statuses.contains(&"RUNNING"))
    })
    .await;
    stand_in.set_no_capacity(true);
    let job = site.wait(&mut daemon, &job_id).await;
    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    wait_until(
        Duration::from_secs(30),
        "leftover elements terminated",
        || {
            stand_in.jobs().iter().all(|job| {
                !job.statuses
                    .iter()
                    .any(|status| *status == "RUNNABLE" || *status == "RUNNING")
            })
        },
    )
    .await;

    let submitted = jobs_for(stand_in, &job_id);
    let total: u32 = submitted.iter().map(elements).sum();
    assert!(total >= 2, "expected more than one worker: {submitted:?}");
    assert!(total <= 4, "max_workers is 4: {submitted:?}");
    let mut next_offset = 0;
    for job in &submitted {
        assert!(job.array_size.is_none_or(|size| size == 2), "{job:?}");
        assert_eq!(job.job_name, format!("spillway-{job_id}"));
        let environment = &job.environment;
        assert_eq!(
            environment["SPILLWAY_ARRAY_INDEX_OFFSET"],
            next_offset.to_string()
        );
        assert_eq!(environment["SPILLWAY_BACKEND"], "batch");
        assert_eq!(environment["SPILLWAY_LEDGER_URL"], site.redis.url());
        assert_eq!(environment["SPILLWAY_LEDGER_PREFIX"], "spillway");
        assert_eq!(environment["SPILLWAY_LEASE_SECS"], "30");
        assert_eq!(environment["SPILLWAY_THREADS"], "1");
        assert_eq!(environment["SPILLWAY_GPU_SKU"], "cpu");
        assert_eq!(
            environment["SPILLWAY_CACHE_DIR"],
            site.data.path().join("cache").display().to_string()
        );
        next_offset += elements(job);
    }
    let leftover: Vec<&SubmittedJob> = submitted
        .iter()
        .filter(|job| {
            job.statuses
                .iter()
                .filter(|status| **status == "SUCCEEDED")
                .count()
                < elements(job) as usize
        })
        .collect();
    assert!(!leftover.is_empty(), "{submitted:?}");
    for job in leftover {
        assert!(job.terminated, "leftover array not terminated: {job:?}");
    }
    assert!(stand_in.calls().terminate >= 1);
    assert!(
        daemon.log().contains("worker array terminated"),
        "{}",
        daemon.log()
    );
    assert_eq!(count_files(&site.output().join(&job_id).join("results")), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn throttled_submissions_back_off_and_lose_nothing() {
    let _serial = serial().await;
    let site = Site::start(&[EAST], 2).await;
    let stand_in = &site.region(EAST).stand_in;
    stand_in.throttle_submits(3);
    let mut daemon = site.daemon("submit_attempts = 5\n");

    let job_id = site
        .run(&mut daemon, &site.manifest("throttled", 8, 2))
        .await;

    let log = daemon.log();
    let calls = stand_in.calls();
    let submitted = jobs_for(stand_in, &job_id);
    assert_eq!(calls.throttled, 3);
    assert_eq!(
        calls.submit,
        calls.throttled + submitted.len() as u32,
        "every SubmitJob that was not throttled created a job"
    );
    assert_eq!(
        log.matches("Batch call failed; retrying after backoff")
            .count(),
        3,
        "{log}"
    );
    assert!(
        has_line(
            &log,
            "Batch call failed",
            &["operation=\"SubmitJob\"", "failure=Throttled"]
        ),
        "{log}"
    );
    assert!(!log.contains("region skipped"), "{log}");
    assert_eq!(count_files(&site.output().join(&job_id).join("results")), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_region_sends_work_to_next_and_returns() {
    let _serial = serial().await;
    // Placement prefers eu-west-1: the prices are equal and its target id sorts first.
    let site = Site::start(&[WEST, EAST], 2).await;
    let (west, east) = (&site.region(WEST).stand_in, &site.region(EAST).stand_in);
    west.set_down(true);
    let mut daemon = site.daemon("submit_attempts = 2\ncool_down_secs = 4\n");
    let started = Instant::now();

    let first = site
        .run(&mut daemon, &site.manifest("while-west-is-down", 8, 2))
        .await;

    let log = daemon.log();
    assert!(jobs_for(west, &first).is_empty());
    assert!(!jobs_for(east, &first).is_empty(), "{log}");
    assert!(
        has_line(
            &log,
            "region skipped until its cool-down ends",
            &[WEST, "unavailable"]
        ),
        "{log}"
    );
    // No tight loop: at most one round of submit attempts per cool-down.
    let rounds = started.elapsed().as_secs() / 4 + 1;
    let failed = u64::from(west.calls().failed);
    assert!(failed >= 2, "{failed}");
    assert!(
        failed <= 2 * rounds,
        "{failed} failed calls in {rounds} cool-downs"
    );

    west.set_down(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = site
        .run(&mut daemon, &site.manifest("after-cool-down", 8, 2))
        .await;

    assert!(!jobs_for(west, &second).is_empty(), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn region_throttling_past_budget_is_skipped() {
    let _serial = serial().await;
    // Placement prefers eu-west-1: the prices are equal and its target id sorts first.
    let site = Site::start(&[WEST, EAST], 2).await;
    let (west, east) = (&site.region(WEST).stand_in, &site.region(EAST).stand_in);
    west.throttle_submits(1_000);
    let mut daemon = site.daemon("submit_attempts = 3\ncool_down_secs = 600\n");

    let job_id = site
        .run(&mut daemon, &site.manifest("west-throttles", 8, 2))
        .await;

    let log = daemon.log();
    assert!(jobs_for(west, &job_id).is_empty(), "{log}");
    assert!(!jobs_for(east, &job_id).is_empty(), "{log}");
    assert_eq!(
        west.calls().throttled,
        3,
        "one round of attempts, then the cool-down"
    );
    assert!(
        has_line(
            &log,
            "region skipped until its cool-down ends",
            &[WEST, "throttled"]
        ),
        "{log}"
    );
    assert_eq!(count_files(&site.output().join(&job_id).join("results")), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn region_without_capacity_is_skipped() {
    let _serial = serial().await;
    // Placement prefers eu-west-1: the prices are equal and its target id sorts first.
    let site = Site::start(&[WEST, EAST], 2).await;
    let (west, east) = (&site.region(WEST).stand_in, &site.region(EAST).stand_in);
    west.set_no_capacity(true);
    let mut daemon = site.daemon("start_timeout_secs = 3\ncool_down_secs = 600\n");

    let job_id = site
        .run(&mut daemon, &site.manifest("no-capacity", 8, 2))
        .await;

    let log = daemon.log();
    let stuck = jobs_for(west, &job_id);
    assert!(!stuck.is_empty(), "{log}");
    for job in &stuck {
        assert!(job.terminated, "{job:?}");
        assert!(
            job.statuses.iter().all(|status| *status == "FAILED"),
            "{job:?}"
        );
    }
    assert!(!jobs_for(east, &job_id).is_empty(), "{log}");
    assert!(
        log.contains("no element of a worker array started in time"),
        "{log}"
    );
    assert!(
        has_line(
            &log,
            "region skipped until its cool-down ends",
            &[WEST, "no_capacity"]
        ),
        "{log}"
    );
    assert_eq!(count_files(&site.output().join(&job_id).join("results")), 4);
}
