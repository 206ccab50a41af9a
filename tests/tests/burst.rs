//! Burst placement end to end. The Slurm pool of the test cluster is nearly full and a
//! job's deadline is tight, so the daemon spills part of the job's workers to AWS
//! Batch: moto, with the stand-in that runs the real workers. The job completes with
//! one result per task, and the placement and cost metrics show the split.

use std::time::{Duration, Instant};

use spillway_common::ledger::Ledger;
use spillway_tests::batch::BatchStandIn;
use spillway_tests::moto::{MotoServer, create_job_queue};
use spillway_tests::slurm::{SlurmCluster, shared_dir};
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, embed_manifest, job_id_of, sample_records, send_raw,
    serial, wait_finished, write_shard,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(300);
const REGION: &str = "us-east-1";
/// A worker image pinned by digest; both backends run the built worker in its place.
const IMAGE: &str = "registry.example/spillway/worker@sha256:5e1f0e6b1c6d4a3f9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928";
/// GPUs of the test cluster that other users' jobs hold during the test.
const GPUS_TAKEN: usize = 3;

/// A Slurm batch script that names the image, so that the Slurm backend accepts an
/// image-pinned job, and runs the worker binary directly.
/// Slurm runs workers as the cluster's user and the stand-in as root, and both write
/// into one `file://` output, so each creates folders the other can write.
const SCRIPT_TEMPLATE: &str = "#!/bin/bash\n# image: {image}\numask 000\n\
export SPILLWAY_ARRAY_ID=\"${SLURM_ARRAY_JOB_ID}\"\n\
export SPILLWAY_ARRAY_INDEX=$(( {index_offset} + SLURM_ARRAY_TASK_ID ))\n\
exec {worker_binary} run\n";

/// Submits jobs that hold `count` GPUs for ten minutes and waits until they run.
fn take_gpus(cluster: &SlurmCluster, count: usize) {
    for _ in 0..count {
        let output = cluster
            .command("sbatch")
            .args(["--parsable", "--gres=gpu:1", "--output=/dev/null"])
            .args(["--wrap", "sleep 600"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "sbatch failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = cluster
            .command("squeue")
            .args(["--noheader", "--states=RUNNING", "--format=%i"])
            .output()
            .unwrap();
        let running = String::from_utf8_lossy(&output.stdout).lines().count();
        if running >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the GPU-holding jobs did not start: {running} of {count} running"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Returns an RFC 3339 time `ahead` from now.
fn deadline_in(ahead: Duration) -> String {
    let at = time::OffsetDateTime::now_utc() + ahead;
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Sums the samples of a metric family whose labels contain every `(name, value)`.
fn metric_sum(body: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(name, value)| line.contains(&format!("{name}=\"{value}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn tight_deadline_spills_to_batch() {
    let _serial = serial().await;
    let cluster = SlurmCluster::start(&[]).unwrap();
    take_gpus(&cluster, GPUS_TAKEN);

    let moto = MotoServer::start().unwrap();
    moto.use_batch_without_docker().unwrap();
    let role = moto.create_role("spillway-batch-service").unwrap();
    let client = MotoServer::batch_client(&moto.endpoint(), REGION);
    let job_queue = "spillway-burst";
    create_job_queue(&client, job_queue, &role).await;
    let stand_in = BatchStandIn::start(moto.port, 3, moto.s3_env()).unwrap();

    let shared = shared_dir().unwrap();
    let template = shared.path().join("worker.sbatch");
    std::fs::write(&template, SCRIPT_TEMPLATE).unwrap();
    let slurm = cluster.backend_config(
        shared.path(),
        4,
        &format!(
            "gpu_sku = \"NVIDIA A100\"\nscript_template_file = \"{}\"",
            template.display()
        ),
    );
    let worker = shared.path().join("batch-worker.sh");
    std::fs::write(
        &worker,
        format!(
            "#!/bin/sh\numask 000\nexec {} \"$@\"\n",
            spillway_tests::binary("spillway-worker").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&worker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Placement believes each task takes 10 s, so one pool worker finishes about 20 of
    // the 48 tasks by the deadline four minutes away, and the rest spills to Batch.
    let config = format!(
        "{slurm}\n[placement]\nprior_task_secs = 10.0\ntask_secs_safety_factor = 1.0\n\
         deadline_margin_secs = 0.0\nburst_min_step_workers = 1\n\n\
         [cost]\n[[cost.prices]]\nbackend = \"slurm\"\nper_gpu_hour = 1.0\n\
         [[cost.prices]]\nbackend = \"batch\"\nper_gpu_hour = 3.0\n\n\
         [backend.batch]\nenabled = true\nmax_workers = 3\nmax_workers_per_region = 3\n\
         max_array_size = 2\nsubmit_rate_per_sec = 20.0\nstartup_secs = 20.0\n\
         vcpus_per_worker = 1\nmemory_per_worker_mib = 2048\nthreads_per_worker = 1\n\
         gpu_sku = \"NVIDIA A10G\"\n\
         job_role_arn = \"arn:aws:iam::123456789012:role/spillway-worker\"\n\
         worker_path = {worker:?}\ncache_dir = {cache:?}\n\n\
         [[backend.batch.queues]]\nregion = \"{REGION}\"\njob_queue = \"{job_queue}\"\n\
         endpoint_url = \"{endpoint}\"\nprice_per_gpu_hour = 3.0\n",
        worker = worker.display().to_string(),
        cache = shared.path().join("cache").display().to_string(),
        endpoint = stand_in.endpoint(),
    );
    let redis = RedisServer::start().unwrap();
    let daemon = Daemon::start(
        &redis,
        DaemonOptions {
            extra_config: config,
            env: moto.s3_env(),
            ..DaemonOptions::default()
        },
    )
    .unwrap();

    // Enough work (several seconds on one worker) that the Batch workers, which start
    // while the pool's worker runs, take part of it.
    let tasks = 48;
    let inputs = vec![write_shard(
        shared.path(),
        "burst.jsonl",
        &sample_records("burst", tasks * 24),
    )];
    let output = shared.path().join("out");
    let mut manifest = embed_manifest("burst", inputs, 24, &output);
    manifest["worker"] = serde_json::json!({"image": IMAGE});
    manifest["gpus_per_worker"] = 1.into();
    manifest["deadline"] = deadline_in(Duration::from_secs(240)).into();
    let job_id = job_id_of(&manifest);
    send_raw(&redis, manifest.to_string().as_bytes()).await;

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;
    let log = daemon.log();
    let envelope =
        std::fs::read_to_string(output.join(&job_id).join("job.json")).unwrap_or_default();
    assert_eq!(
        job.state,
        "succeeded",
        "job envelope:\n{envelope}\ndaemon log:\n{log}\nBatch worker logs:\n{}",
        stand_in.logs()
    );

    // Exactly one result per task, whichever backend ran it.
    let results = std::fs::read_dir(output.join(&job_id).join("results"))
        .unwrap()
        .count();
    assert_eq!(results, tasks, "one result per task");

    // Both backends got workers: the pool its free GPU, Batch the spilled share.
    assert!(
        log.contains("worker array submitted"),
        "no Slurm array was submitted:\n{log}"
    );
    let batch_jobs: Vec<_> = stand_in
        .jobs()
        .into_iter()
        .filter(|job| job.environment.get("SPILLWAY_JOB_ID") == Some(&job_id))
        .collect();
    assert!(
        !batch_jobs.is_empty(),
        "nothing was spilled to Batch:\n{log}"
    );
    assert!(log.contains("spill_for_deadline"), "{log}");

    let body = daemon.scrape();
    let batch_target = format!("batch/{REGION}/{job_queue}");
    let spilled = metric_sum(
        &body,
        "spillway_placement_requests_total",
        &[
            ("backend", batch_target.as_str()),
            ("reason", "spill_for_deadline"),
        ],
    );
    assert!(spilled >= 1.0, "placement metrics show no spill:\n{body}");
    let pooled = metric_sum(
        &body,
        "spillway_placement_requests_total",
        &[("backend", "slurm")],
    );
    assert!(
        pooled >= 1.0,
        "placement metrics show no pool worker:\n{body}"
    );

    // Cost: the envelope prices every attempt, and the counters split it by backend.
    let status = std::process::Command::new(spillway_tests::binary("spillway"))
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["status", &job_id, "--output", "json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let lines = status["cost"]["lines"].as_array().unwrap();
    assert!(!lines.is_empty(), "no usage recorded: {status}");
    assert!(status["cost"]["total"].as_f64().unwrap() > 0.0, "{status}");
    let gpu_seconds = metric_sum(&body, "spillway_gpu_seconds_total", &[]);
    assert!(gpu_seconds > 0.0, "no GPU-seconds counted:\n{body}");
    let costs: Vec<(String, f64)> = ["slurm", "batch"]
        .iter()
        .map(|backend| {
            let cost = metric_sum(&body, "spillway_cost_total", &[("backend", backend)]);
            (backend.to_string(), cost)
        })
        .collect();
    println!("cost by backend: {costs:?}; status cost lines: {lines:?}");
    for (backend, cost) in &costs {
        assert!(*cost > 0.0, "no cost counted for {backend}: {costs:?}");
    }
    for backend in ["slurm", "batch"] {
        assert!(
            lines.iter().any(|line| line["backend"] == backend),
            "the job's cost has no {backend} line: {status}"
        );
    }
}
