//! Embed jobs whose workers run as Slurm array jobs on a real single-node cluster with
//! four fake GPUs, started by scripts/slurm-cluster.sh.

use std::path::Path;
use std::time::{Duration, Instant};

use spillway_common::artefact::EmbeddingBlock;
use spillway_common::ledger::Ledger;
use spillway_tests::slurm::{SlurmCluster, shared_dir};
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, embed_manifest, job_id_of, sample_records, send_raw,
    serial, wait_finished, write_shard,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(240);

fn artefact(output: &Path, job_id: &str) -> EmbeddingBlock {
    let bytes =
        std::fs::read(output.join(job_id).join("embeddings.safetensors")).expect("artefact exists");
    EmbeddingBlock::decode(&bytes).expect("artefact decodes")
}

/// Runs one manifest on the local backend and returns its artefact.
async fn local_artefact(
    inputs: Vec<serde_json::Value>,
    records_per_task: u32,
    output: &Path,
) -> EmbeddingBlock {
    let redis = RedisServer::start().unwrap();
    let daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    let manifest = embed_manifest("local-reference", inputs, records_per_task, output);
    let job_id = job_id_of(&manifest);
    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;
    assert_eq!(
        job.state,
        "succeeded",
        "local daemon log:\n{}",
        daemon.log()
    );
    artefact(output, &job_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn slurm_job_matches_local_and_splits_arrays() {
    let _serial = serial().await;
    let cluster = SlurmCluster::start(&[("SLURM_MAX_ARRAY_SIZE", "2")]).unwrap();
    let shared = shared_dir().unwrap();
    let inputs = vec![write_shard(
        shared.path(),
        "a.jsonl",
        &sample_records("a", 24),
    )];
    let redis = RedisServer::start().unwrap();
    let options = DaemonOptions {
        extra_config: cluster.backend_config(shared.path(), 4, "max_array_size = 2\nthrottle = 2"),
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    let output = shared.path().join("out");
    let manifest = embed_manifest("on-slurm", inputs.clone(), 4, &output);
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    let log = daemon.log();
    assert_eq!(job.state, "succeeded", "daemon log:\n{log}");
    let submissions = log.matches("worker array submitted").count();
    assert!(
        submissions >= 2,
        "a fleet of 4 with MaxArraySize 2 needs 2 arrays; log:\n{log}"
    );
    assert!(
        !log.contains("array_size=3") && !log.contains("array_size=4"),
        "{log}"
    );

    let from_slurm = artefact(&output, &job_id);
    let local_output = shared.path().join("local-out");
    let from_local = local_artefact(inputs, 4, &local_output).await;
    assert_eq!(from_slurm.ids, from_local.ids);
    for (index, (a, b)) in from_slurm.values.iter().zip(&from_local.values).enumerate() {
        assert!((a - b).abs() < 1e-5, "value {index} differs: {a} vs {b}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn external_scancel_resubmits_workers() {
    let _serial = serial().await;
    let cluster = SlurmCluster::start(&[]).unwrap();
    let shared = shared_dir().unwrap();
    let inputs = vec![write_shard(
        shared.path(),
        "a.jsonl",
        &sample_records("a", 160),
    )];
    let redis = RedisServer::start().unwrap();
    let options = DaemonOptions {
        lease_secs: 3,
        extra_config: cluster.backend_config(shared.path(), 1, ""),
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    let output = shared.path().join("out");
    let manifest = embed_manifest("scancelled", inputs, 16, &output);
    let job_id = job_id_of(&manifest);
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while ledger
        .job(&job_id)
        .await
        .unwrap()
        .is_none_or(|job| job.succeeded == 0)
    {
        assert!(
            Instant::now() < deadline,
            "no task finished; daemon log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrays = ledger.arrays(&job_id, "slurm").await.unwrap();
    assert_eq!(arrays.len(), 1, "{arrays:?}");
    let status = cluster
        .command("scancel")
        .arg(&arrays[0].0)
        .status()
        .unwrap();
    assert!(status.success());

    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;
    let log = daemon.log();
    assert_eq!(job.state, "succeeded", "daemon log:\n{log}");
    assert!(
        log.matches("worker array submitted").count() >= 2,
        "no resubmission; log:\n{log}"
    );
    let results = std::fs::read_dir(output.join(&job_id).join("results"))
        .unwrap()
        .count();
    assert_eq!(results, 10, "expected exactly one result per task");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_partition_is_named_and_loses_nothing() {
    let _serial = serial().await;
    let cluster = SlurmCluster::start(&[]).unwrap();
    let shared = shared_dir().unwrap();
    let inputs = vec![write_shard(
        shared.path(),
        "a.jsonl",
        &sample_records("a", 8),
    )];
    let redis = RedisServer::start().unwrap();
    let options = DaemonOptions {
        extra_config: cluster.backend_config(shared.path(), 2, "partition = \"nosuch\""),
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    let manifest = embed_manifest("bad-partition", inputs, 4, &shared.path().join("out"));
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    assert!(
        daemon.wait_log("nosuch", Duration::from_secs(60)),
        "{}",
        daemon.log()
    );

    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = ledger
        .job(&job_id)
        .await
        .unwrap()
        .expect("job is in the ledger");
    assert_eq!(job.state, "running");
    assert_eq!(job.queued, 2, "tasks must stay queued: {job:?}");
    let log = daemon.log();
    assert!(log.contains("failed to start workers"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_api_runs_a_job() {
    let _serial = serial().await;
    let cluster = SlurmCluster::start(&[]).unwrap();
    let shared = shared_dir().unwrap();
    let inputs = vec![write_shard(
        shared.path(),
        "a.jsonl",
        &sample_records("a", 12),
    )];
    let redis = RedisServer::start().unwrap();
    let cli_settings = format!(
        "api = \"cli\"\nslurm_conf = \"{}\"",
        cluster.var("SLURM_CONF")
    );
    let options = DaemonOptions {
        extra_config: cluster
            .backend_config(shared.path(), 2, &cli_settings)
            .replace("api = \"rest\"\n", ""),
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    let output = shared.path().join("out");
    let manifest = embed_manifest("through-sbatch", inputs, 4, &output);
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    assert_eq!(artefact(&output, &job_id).ids.len(), 12);
}
