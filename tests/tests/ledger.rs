//! Ledger scripts against a real Redis server.

use std::time::Duration;

use spillway_common::ledger::{Admission, Completion, FailureKind, Heartbeat, Ledger};
use spillway_common::task::{job_id, slice};
use spillway_tests::{RedisServer, sample_manifest};

fn shards(count: usize, records: u64) -> Vec<(String, String, u64)> {
    (0..count)
        .map(|i| {
            (
                format!("file:///data/shard-{i}.jsonl"),
                format!("{:064x}", i + 1),
                records,
            )
        })
        .collect()
}

async fn admitted_job(ledger: &Ledger, tasks_per_shard: u64) -> String {
    let manifest = sample_manifest(
        "ledger-test",
        &shards(2, tasks_per_shard * 10),
        10,
        "file:///tmp/out/",
    );
    let id = job_id(&manifest);
    let tasks = slice(&manifest);
    ledger.admit(&id, &manifest, &tasks).await.unwrap();
    id
}

#[tokio::test]
async fn admit_twice_creates_one_job() {
    let redis = RedisServer::start().unwrap();
    let ledger = Ledger::connect(&redis.url(), "t").await.unwrap();
    let manifest = sample_manifest("twice", &shards(3, 25), 10, "file:///tmp/out/");
    let id = job_id(&manifest);
    let tasks = slice(&manifest);

    let first = ledger.admit(&id, &manifest, &tasks).await.unwrap();
    let second = ledger.admit(&id, &manifest, &tasks).await.unwrap();

    assert_eq!(first, Admission::Created);
    assert_eq!(
        second,
        Admission::Existing {
            state: "running".into()
        }
    );
    let job = ledger.job(&id).await.unwrap().unwrap();
    assert_eq!(job.tasks_total, 9);
    assert_eq!(job.queued, 9);
    assert_eq!(ledger.active_jobs().await.unwrap(), vec![id]);
}

#[tokio::test]
async fn lease_complete_and_duplicate() {
    let redis = RedisServer::start().unwrap();
    let ledger = Ledger::connect(&redis.url(), "t").await.unwrap();
    let id = admitted_job(&ledger, 1).await;
    let lease_time = Duration::from_secs(30);

    let first = ledger.lease(&id, "w1", lease_time).await.unwrap().unwrap();
    assert_eq!(first.task_id, "t000000");
    assert_eq!(first.attempt, 1);

    let done = ledger
        .complete(&id, &first.task_id, "w1", 1, "file:///r0")
        .await
        .unwrap();
    let again = ledger
        .complete(&id, &first.task_id, "w2", 2, "file:///r0")
        .await
        .unwrap();
    assert_eq!(done, Completion::Completed);
    assert_eq!(again, Completion::Duplicate);

    let second = ledger.lease(&id, "w1", lease_time).await.unwrap().unwrap();
    let last = ledger
        .complete(&id, &second.task_id, "w1", 1, "file:///r1")
        .await
        .unwrap();
    assert_eq!(last, Completion::CompletedLast);
    assert!(ledger.lease(&id, "w1", lease_time).await.unwrap().is_none());

    let job = ledger.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, "reducing");
    assert_eq!(job.succeeded, 2);
    assert_eq!(job.duplicates, 1);
    assert_eq!(job.leased, 0);
}

#[tokio::test]
async fn exited_worker_leases_end_before_their_deadline() {
    let redis = RedisServer::start().unwrap();
    let ledger = Ledger::connect(&redis.url(), "t").await.unwrap();
    let id = admitted_job(&ledger, 2).await;
    let long = Duration::from_secs(600);

    // w1 holds two leases, as a worker does while it stores one result and computes
    // the next task; w2 holds one.
    let first = ledger.lease(&id, "w1", long).await.unwrap().unwrap();
    let second = ledger.lease(&id, "w1", long).await.unwrap().unwrap();
    let other = ledger.lease(&id, "w2", long).await.unwrap().unwrap();

    let reason = "worker w1 exited with signal: 9 (SIGKILL)";
    assert_eq!(
        ledger.end_worker_leases(&id, "w1", reason).await.unwrap(),
        2
    );
    let report = ledger.reap(&id, 100).await.unwrap();
    assert_eq!((report.expired, report.requeued), (2, 2));
    // Ending them again finds nothing: the tasks are queued.
    assert_eq!(
        ledger.end_worker_leases(&id, "w1", reason).await.unwrap(),
        0
    );

    let tasks = ledger.tasks(&id, 4).await.unwrap();
    for task in &tasks {
        let task_id = &task.spec.task_id;
        if task_id == &first.task_id || task_id == &second.task_id {
            assert_eq!(task.state, "queued", "{task:?}");
            let reason_found = task.reason.clone().unwrap_or_default();
            assert_eq!(reason_found, format!("{reason} on attempt 1"));
        }
        if task_id == &other.task_id {
            assert_eq!(task.state, "leased", "w2 keeps its lease: {task:?}");
        }
    }
    let job = ledger.job(&id).await.unwrap().unwrap();
    assert_eq!(job.lease_expiries, 2);
    assert_eq!(job.retries, 2);
}

#[tokio::test]
async fn expired_lease_is_requeued_then_dead() {
    let redis = RedisServer::start().unwrap();
    let ledger = Ledger::connect(&redis.url(), "t").await.unwrap();
    let id = admitted_job(&ledger, 1).await;
    let short = Duration::from_millis(50);

    let lease = ledger.lease(&id, "w1", short).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let report = ledger.reap(&id, 100).await.unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(report.requeued, 1);

    let heartbeat = ledger
        .heartbeat(&id, "w1", short, Some((&lease.task_id, 1)))
        .await
        .unwrap();
    assert_eq!(heartbeat, Heartbeat::Lost);

    let retry = ledger.lease(&id, "w2", short).await.unwrap().unwrap();
    assert_eq!(retry.task_id, lease.task_id);
    assert_eq!(retry.attempt, 2);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let report = ledger.reap(&id, 100).await.unwrap();
    assert_eq!(report.dead, 1);

    let tasks = ledger.tasks(&id, 2).await.unwrap();
    assert_eq!(tasks[0].state, "dead");
    let reason = tasks[0].reason.clone().unwrap();
    assert!(reason.contains("lease expired on attempt 2"), "{reason}");
    let job = ledger.job(&id).await.unwrap().unwrap();
    assert_eq!(job.lease_expiries, 2);
    assert_eq!(job.dead, 1);
}

#[tokio::test]
async fn heartbeat_extends_lease() {
    let redis = RedisServer::start().unwrap();
    let ledger = Ledger::connect(&redis.url(), "t").await.unwrap();
    let id = admitted_job(&ledger, 1).await;
    let short = Duration::from_millis(200);

    let lease = ledger.lease(&id, "w1", short).await.unwrap().unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let beat = ledger
            .heartbeat(&id, "w1", short, Some((&lease.task_id, 1)))
            .await
            .unwrap();
        assert_eq!(beat, Heartbeat::Extended);
    }

    let report = ledger.reap(&id, 100).await.unwrap();
    assert_eq!(report.expired, 0);
    assert_eq!(ledger.live_workers(&id).await.unwrap(), 1);
}

#[tokio::test]
async fn data_error_fails_without_retry() {
    let redis = RedisServer::start().unwrap();
    let ledger = Ledger::connect(&redis.url(), "t").await.unwrap();
    let id = admitted_job(&ledger, 1).await;

    let lease = ledger
        .lease(&id, "w1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let state = ledger
        .fail(
            &id,
            &lease.task_id,
            "w1",
            1,
            FailureKind::Data,
            "SHA-256 mismatch",
        )
        .await
        .unwrap();

    assert_eq!(state, "failed");
    let tasks = ledger.tasks(&id, 2).await.unwrap();
    assert_eq!(tasks[0].reason.as_deref(), Some("SHA-256 mismatch"));
    let job = ledger.job(&id).await.unwrap().unwrap();
    assert_eq!(job.failed, 1);
    assert_eq!(job.queued, 1);
}

#[tokio::test]
async fn retryable_error_requeues_until_dead() {
    let redis = RedisServer::start().unwrap();
    let ledger = Ledger::connect(&redis.url(), "t").await.unwrap();
    let id = admitted_job(&ledger, 1).await;
    let lease_time = Duration::from_secs(30);

    let first = ledger.lease(&id, "w1", lease_time).await.unwrap().unwrap();
    let state = ledger
        .fail(&id, &first.task_id, "w1", 1, FailureKind::Retryable, "oom")
        .await
        .unwrap();
    assert_eq!(state, "queued");

    let second = ledger.lease(&id, "w1", lease_time).await.unwrap().unwrap();
    assert_eq!(second.task_id, first.task_id);
    let state = ledger
        .fail(&id, &second.task_id, "w1", 2, FailureKind::Retryable, "oom")
        .await
        .unwrap();
    assert_eq!(state, "dead");

    let stale = ledger
        .fail(&id, &second.task_id, "w1", 2, FailureKind::Retryable, "oom")
        .await
        .unwrap();
    assert_eq!(stale, "stale");
}

#[tokio::test]
async fn ledger_survives_redis_restart() {
    let mut redis = RedisServer::start().unwrap();
    let ledger = Ledger::connect(&redis.url(), "t").await.unwrap();
    let id = admitted_job(&ledger, 1).await;
    let lease = ledger
        .lease(&id, "w1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    ledger
        .complete(&id, &lease.task_id, "w1", 1, "file:///r0")
        .await
        .unwrap();

    redis.kill();
    redis.restart().unwrap();

    let ledger = Ledger::connect(&redis.url(), "t").await.unwrap();
    let job = ledger.job(&id).await.unwrap().unwrap();
    assert_eq!(job.succeeded, 1);
    assert_eq!(job.queued, 1);
    let next = ledger
        .lease(&id, "w1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.task_id, "t000001");
}
