//! Crashes of workers and of the daemon in the middle of a job, against real
//! processes: the ledger must carry every job to exactly one result per task.

use std::time::{Duration, Instant};

use spillway_common::ledger::Ledger;
use spillway_tests::training::{kill_workers, wait_job};
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, embed_manifest, job_id_of, sample_records, send_raw,
    serial, wait_finished, write_shard,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits until some task of the job is leased, then SIGKILLs every registered worker.
/// Returns the number of workers killed.
async fn kill_workers_mid_task(redis: &RedisServer, ledger: &Ledger, job_id: &str) -> usize {
    let timeout = Duration::from_secs(60);
    wait_job(ledger, job_id, timeout, "a lease", |job| job.leased > 0).await;
    kill_workers(redis, ledger, job_id).await
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_worker_task_reruns_once() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    // A lease longer than the job: the local backend reaps the killed worker and the
    // daemon ends its lease at once, so the task does not wait for the deadline.
    let options = DaemonOptions {
        lease_secs: 60,
        max_workers: 1,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_shard(
        data.path(),
        "a.jsonl",
        &sample_records("a", 96),
    )];
    let output = data.path().join("out");
    let manifest = embed_manifest("killed-worker", inputs, 32, &output);
    let job_id = job_id_of(&manifest);
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let killed = kill_workers_mid_task(&redis, &ledger, &job_id).await;
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(killed, 1);
    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    assert!(job.lease_expiries >= 1, "no lease expired: {job:?}");
    let tasks = ledger.tasks(&job_id, job.tasks_total).await.unwrap();
    let retried: Vec<_> = tasks.iter().filter(|task| task.attempt >= 2).collect();
    assert!(!retried.is_empty(), "no task ran twice: {tasks:?}");
    let reason = retried[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("exited with signal") && reason.contains("on attempt 1"),
        "the retried task's first attempt did not end with its worker: {reason}"
    );
    let results = std::fs::read_dir(output.join(&job_id).join("results"))
        .unwrap()
        .count();
    assert_eq!(results, 3, "expected exactly one result object per task");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_task_fails_the_job() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let options = DaemonOptions {
        lease_secs: 2,
        max_workers: 1,
        ..DaemonOptions::default()
    };
    let daemon = Daemon::start(&redis, options).unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_shard(
        data.path(),
        "a.jsonl",
        &sample_records("a", 64),
    )];
    let output = data.path().join("out");
    let mut manifest = embed_manifest("dead-task", inputs, 32, &output);
    manifest["max_attempts"] = serde_json::json!(1);
    let job_id = job_id_of(&manifest);
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    kill_workers_mid_task(&redis, &ledger, &job_id).await;
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "failed", "daemon log:\n{}", daemon.log());
    assert!(job.dead >= 1, "{job:?}");
    let envelope: spillway_common::envelope::JobEnvelope =
        serde_json::from_slice(&std::fs::read(output.join(&job_id).join("job.json")).unwrap())
            .unwrap();
    let dead: Vec<_> = envelope
        .failed_tasks
        .iter()
        .filter(|task| task.state == "dead")
        .collect();
    assert!(!dead.is_empty(), "{envelope:?}");
    // The local backend saw the worker die and ended its lease.
    assert!(
        dead[0].reason.contains("exited with signal"),
        "{}",
        dead[0].reason
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_daemon_resumes_job() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let options = || DaemonOptions {
        lease_secs: 3,
        max_workers: 1,
        ..DaemonOptions::default()
    };
    let mut first = Daemon::start(&redis, options()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_shard(
        data.path(),
        "a.jsonl",
        &sample_records("a", 96),
    )];
    let output = data.path().join("out");
    let manifest = embed_manifest("restarted-daemon", inputs, 16, &output);
    let job_id = job_id_of(&manifest);
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger
        .job(&job_id)
        .await
        .unwrap()
        .is_none_or(|job| job.leased == 0)
    {
        assert!(Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    kill_workers_mid_task(&redis, &ledger, &job_id).await;

    let second = Daemon::start(&redis, options()).unwrap();
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "succeeded", "daemon log:\n{}", second.log());
    assert_eq!(job.succeeded, 6);
    let results = std::fs::read_dir(output.join(&job_id).join("results"))
        .unwrap()
        .count();
    assert_eq!(results, 6);
}
