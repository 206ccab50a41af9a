//! End-to-end jobs through a real daemon, real Redis and real worker processes on the
//! local backend. Requires `cargo build --bins` and the model from scripts/install-deps.sh.

use std::path::Path;
use std::time::Duration;

use spillway_common::artefact::EmbeddingBlock;
use spillway_common::envelope::JobEnvelope;
use spillway_common::ledger::Ledger;
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, embed_manifest, job_id_of, sample_records, send_raw,
    serial, wait_finished, write_shard,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);

fn read_envelope(output: &Path, job_id: &str) -> JobEnvelope {
    let bytes = std::fs::read(output.join(job_id).join("job.json")).expect("job envelope exists");
    serde_json::from_slice(&bytes).expect("job envelope parses")
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn local_job_writes_artefact_in_order() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let first = sample_records("a", 13);
    let second = sample_records("b", 9);
    let inputs = vec![
        write_shard(data.path(), "a.jsonl", &first),
        write_shard(data.path(), "b.jsonl", &second),
    ];
    let output = data.path().join("out");
    let manifest = embed_manifest("order", inputs, 4, &output);
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    assert_eq!(job.tasks_total, 7);
    let artefact = std::fs::read(output.join(&job_id).join("embeddings.safetensors")).unwrap();
    let block = EmbeddingBlock::decode(&artefact).unwrap();
    let expected_ids: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(block.ids, expected_ids);
    assert_eq!(block.dimension, 384);
    for (row, id) in block.values.chunks(384).zip(&block.ids) {
        let norm: f32 = row.iter().map(|value| value * value).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row {id} has norm {norm}");
    }

    let envelope = read_envelope(&output, &job_id);
    assert_eq!(envelope.state, "succeeded");
    assert_eq!(envelope.records, 22);
    assert_eq!(count_files(&output.join(&job_id).join("envelopes")), 7);

    // Observations reach the histograms on the next reconcile pass.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = daemon.scrape();
    for expected in [
        "spillway_intake_messages_total{queue=\"spillway:intake\",outcome=\"admitted\"} 1",
        "spillway_jobs_finished_total{state=\"succeeded\"} 1",
        "spillway_task_runtime_seconds_count{kernel=\"embed\",backend=\"local\"} 7",
        "spillway_task_attempts_total{kernel=\"embed\",backend=\"local\",outcome=\"succeeded\"} 7",
        "spillway_workers_started_total{backend=\"local\"}",
        "spillway_lease_expiries_total 0",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redelivered_message_makes_one_job() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_shard(data.path(), "a.jsonl", &sample_records("a", 6))];
    let output = data.path().join("out");
    let manifest = embed_manifest("redelivered", inputs, 3, &output);
    let job_id = job_id_of(&manifest);

    for _ in 0..3 {
        send_raw(&redis, manifest.to_string().as_bytes()).await;
    }
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    assert_eq!(job.tasks_total, 2);
    let all_jobs = [
        ledger.active_jobs().await.unwrap(),
        ledger.finished_jobs(100).await.unwrap(),
    ]
    .concat();
    assert_eq!(all_jobs, vec![job_id.clone()]);
    assert_eq!(count_files(&output.join(&job_id).join("results")), 2);
    let log = daemon.log();
    assert_eq!(log.matches("job admitted").count(), 1, "{log}");
    assert_eq!(
        log.matches("redelivered message matches an existing job")
            .count(),
        2,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sha_mismatch_fails_task_without_retry() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let good = write_shard(data.path(), "good.jsonl", &sample_records("g", 4));
    let mut bad = write_shard(data.path(), "bad.jsonl", &sample_records("b", 4));
    bad["sha256"] = serde_json::json!("0".repeat(64));
    let output = data.path().join("out");
    let manifest = embed_manifest("mismatch", vec![good, bad], 4, &output);
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "failed", "daemon log:\n{}", daemon.log());
    assert_eq!(job.failed, 1);
    assert_eq!(job.succeeded, 1);
    assert_eq!(job.retries, 0);
    let tasks = ledger.tasks(&job_id, 2).await.unwrap();
    assert_eq!(tasks[1].state, "failed");
    assert_eq!(tasks[1].attempt, 1);
    let reason = tasks[1].reason.clone().unwrap_or_default();
    assert!(reason.contains("SHA-256 mismatch"), "{reason}");
    assert!(reason.contains("bad.jsonl"), "{reason}");

    let envelope = read_envelope(&output, &job_id);
    assert_eq!(envelope.failed_tasks.len(), 1);
    assert!(!output.join(&job_id).join("embeddings.safetensors").exists());

    // `spillway status` prints the reason the job failed.
    let status = std::process::Command::new(spillway_tests::binary("spillway"))
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["status", &job_id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let failure = text
        .lines()
        .find(|line| line.starts_with("failure"))
        .unwrap_or_else(|| panic!("no failure line in:\n{text}"));
    assert!(failure.contains("t000001 failed"), "{failure}");
    assert!(failure.contains("SHA-256 mismatch"), "{failure}");
}
