//! Ledger scripts against a real three-master Redis Cluster: the scenarios of
//! `ledger.rs`, each run on several jobs whose keys live on different masters, and the
//! operations that touch global keys in other hash slots.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use spillway_common::ledger::{
    Admission, Completion, FailureKind, Heartbeat, Ledger, LedgerError, TaskObservation,
};
use spillway_common::manifest::Manifest;
use spillway_common::task::{job_id, slice};
use spillway_tests::{CLUSTER_MASTERS, RedisCluster, free_port, sample_manifest};

/// Maximum number of job names tried to find jobs whose keys land on every master.
const MAX_CANDIDATE_JOBS: usize = 64;

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

/// Starts a cluster and connects a ledger with prefix `t` to it.
async fn cluster_ledger() -> (RedisCluster, Ledger) {
    let cluster = RedisCluster::start().unwrap();
    let ledger = Ledger::connect(&cluster.url(), "t").await.unwrap();
    (cluster, ledger)
}

/// Returns the manifests of one job per master, each over `inputs` with 10 records
/// per task, and checks that the jobs' slots are served by different masters.
fn manifests_on_every_master(
    cluster: &RedisCluster,
    ledger: &Ledger,
    inputs: &[(String, String, u64)],
) -> Vec<Manifest> {
    let mut by_master = BTreeMap::new();
    for index in 0..MAX_CANDIDATE_JOBS {
        let name = format!("cluster-test-{index}");
        let manifest = sample_manifest(&name, inputs, 10, "file:///tmp/out/");
        let slot = cluster
            .key_slot(&ledger.keys().job(&job_id(&manifest)))
            .unwrap();
        let master = cluster.master_of_slot(slot).unwrap();
        by_master.entry(master).or_insert(manifest);
        if by_master.len() == CLUSTER_MASTERS {
            break;
        }
    }

    assert!(
        by_master.len() >= 2,
        "the first {MAX_CANDIDATE_JOBS} jobs all hash to master {:?}",
        by_master.keys()
    );
    by_master.into_values().collect()
}

/// Admits one job per master, each with two shards of `tasks_per_shard` tasks, and
/// returns their ids.
async fn admitted_jobs(
    cluster: &RedisCluster,
    ledger: &Ledger,
    tasks_per_shard: u64,
) -> Vec<String> {
    let inputs = shards(2, tasks_per_shard * 10);
    let mut ids = Vec::new();
    for manifest in manifests_on_every_master(cluster, ledger, &inputs) {
        let id = job_id(&manifest);
        let tasks = slice(&manifest);
        ledger.admit(&id, &manifest, &tasks).await.unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn jobs_spread_over_masters() {
    let (cluster, ledger) = cluster_ledger().await;
    let ids = admitted_jobs(&cluster, &ledger, 1).await;
    assert_eq!(ids.len(), CLUSTER_MASTERS);

    let mut masters = BTreeSet::new();
    for id in &ids {
        let keys = ledger.keys();
        let slot = cluster.key_slot(&keys.job(id)).unwrap();
        for key in [
            keys.task(id, "t000000"),
            keys.queue(id),
            keys.leases(id),
            keys.workers(id),
            keys.reduce_lock(id),
        ] {
            assert_eq!(cluster.key_slot(&key).unwrap(), slot, "{key}");
        }

        // A plain connection to the master that serves the slot finds the keys there.
        // Any other master would reply with a MOVED error.
        let master = cluster.master_of_slot(slot).unwrap();
        masters.insert(master);
        let client = redis::Client::open(format!("redis://127.0.0.1:{master}/")).unwrap();
        let mut conn = client.get_connection().unwrap();
        let stored: u32 = redis::cmd("EXISTS")
            .arg(keys.job(id))
            .arg(keys.task(id, "t000001"))
            .arg(keys.queue(id))
            .query(&mut conn)
            .unwrap();
        assert_eq!(stored, 3, "job {id} keys on master {master}");
    }
    assert_eq!(masters.len(), CLUSTER_MASTERS);
}

#[tokio::test]
async fn admit_twice_creates_one_job() {
    let (cluster, ledger) = cluster_ledger().await;
    let mut expected_active = BTreeSet::new();

    for manifest in manifests_on_every_master(&cluster, &ledger, &shards(3, 25)) {
        let id = job_id(&manifest);
        let tasks = slice(&manifest);

        let first = ledger.admit(&id, &manifest, &tasks).await.unwrap();
        let second = ledger.admit(&id, &manifest, &tasks).await.unwrap();

        assert_eq!(first, Admission::Created, "job {id}");
        assert_eq!(
            second,
            Admission::Existing {
                state: "running".into()
            },
            "job {id}"
        );
        let job = ledger.job(&id).await.unwrap().unwrap();
        assert_eq!(job.tasks_total, 9, "job {id}");
        assert_eq!(job.queued, 9, "job {id}");
        expected_active.insert(id);
    }

    let active: BTreeSet<String> = ledger.active_jobs().await.unwrap().into_iter().collect();
    assert_eq!(active, expected_active);
}

#[tokio::test]
async fn lease_complete_and_duplicate() {
    let (cluster, ledger) = cluster_ledger().await;
    let lease_time = Duration::from_secs(30);

    for id in admitted_jobs(&cluster, &ledger, 1).await {
        let first = ledger.lease(&id, "w1", lease_time).await.unwrap().unwrap();
        assert_eq!(first.task_id, "t000000", "job {id}");
        assert_eq!(first.attempt, 1, "job {id}");

        let done = ledger
            .complete(&id, &first.task_id, "w1", 1, "file:///r0")
            .await
            .unwrap();
        let again = ledger
            .complete(&id, &first.task_id, "w2", 2, "file:///r0")
            .await
            .unwrap();
        assert_eq!(done, Completion::Completed, "job {id}");
        assert_eq!(again, Completion::Duplicate, "job {id}");

        let second = ledger.lease(&id, "w1", lease_time).await.unwrap().unwrap();
        let last = ledger
            .complete(&id, &second.task_id, "w1", 1, "file:///r1")
            .await
            .unwrap();
        assert_eq!(last, Completion::CompletedLast, "job {id}");
        assert!(ledger.lease(&id, "w1", lease_time).await.unwrap().is_none());

        let job = ledger.job(&id).await.unwrap().unwrap();
        assert_eq!(job.state, "reducing", "job {id}");
        assert_eq!(job.succeeded, 2, "job {id}");
        assert_eq!(job.duplicates, 1, "job {id}");
        assert_eq!(job.leased, 0, "job {id}");
    }
}

#[tokio::test]
async fn expired_lease_is_requeued_then_dead() {
    let (cluster, ledger) = cluster_ledger().await;
    let short = Duration::from_millis(50);

    for id in admitted_jobs(&cluster, &ledger, 1).await {
        let lease = ledger.lease(&id, "w1", short).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let report = ledger.reap(&id, 100).await.unwrap();
        assert_eq!(report.expired, 1, "job {id}");
        assert_eq!(report.requeued, 1, "job {id}");

        let heartbeat = ledger
            .heartbeat(&id, "w1", short, Some((&lease.task_id, 1)))
            .await
            .unwrap();
        assert_eq!(heartbeat, Heartbeat::Lost, "job {id}");

        let retry = ledger.lease(&id, "w2", short).await.unwrap().unwrap();
        assert_eq!(retry.task_id, lease.task_id, "job {id}");
        assert_eq!(retry.attempt, 2, "job {id}");
        tokio::time::sleep(Duration::from_millis(120)).await;
        let report = ledger.reap(&id, 100).await.unwrap();
        assert_eq!(report.dead, 1, "job {id}");

        let tasks = ledger.tasks(&id, 2).await.unwrap();
        assert_eq!(tasks[0].state, "dead", "job {id}");
        let reason = tasks[0].reason.clone().unwrap();
        assert!(reason.contains("lease expired on attempt 2"), "{reason}");
        let job = ledger.job(&id).await.unwrap().unwrap();
        assert_eq!(job.lease_expiries, 2, "job {id}");
        assert_eq!(job.dead, 1, "job {id}");
    }
}

#[tokio::test]
async fn heartbeat_extends_lease() {
    let (cluster, ledger) = cluster_ledger().await;
    let short = Duration::from_millis(200);

    for id in admitted_jobs(&cluster, &ledger, 1).await {
        let lease = ledger.lease(&id, "w1", short).await.unwrap().unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let beat = ledger
                .heartbeat(&id, "w1", short, Some((&lease.task_id, 1)))
                .await
                .unwrap();
            assert_eq!(beat, Heartbeat::Extended, "job {id}");
        }

        let report = ledger.reap(&id, 100).await.unwrap();
        assert_eq!(report.expired, 0, "job {id}");
        assert_eq!(ledger.live_workers(&id).await.unwrap(), 1, "job {id}");
    }
}

#[tokio::test]
async fn data_error_fails_without_retry() {
    let (cluster, ledger) = cluster_ledger().await;

    for id in admitted_jobs(&cluster, &ledger, 1).await {
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

        assert_eq!(state, "failed", "job {id}");
        let tasks = ledger.tasks(&id, 2).await.unwrap();
        assert_eq!(tasks[0].reason.as_deref(), Some("SHA-256 mismatch"));
        let job = ledger.job(&id).await.unwrap().unwrap();
        assert_eq!(job.failed, 1, "job {id}");
        assert_eq!(job.queued, 1, "job {id}");
    }
}

#[tokio::test]
async fn retryable_error_requeues_until_dead() {
    let (cluster, ledger) = cluster_ledger().await;
    let lease_time = Duration::from_secs(30);

    for id in admitted_jobs(&cluster, &ledger, 1).await {
        let first = ledger.lease(&id, "w1", lease_time).await.unwrap().unwrap();
        let state = ledger
            .fail(&id, &first.task_id, "w1", 1, FailureKind::Retryable, "oom")
            .await
            .unwrap();
        assert_eq!(state, "queued", "job {id}");

        let second = ledger.lease(&id, "w1", lease_time).await.unwrap().unwrap();
        assert_eq!(second.task_id, first.task_id, "job {id}");
        let state = ledger
            .fail(&id, &second.task_id, "w1", 2, FailureKind::Retryable, "oom")
            .await
            .unwrap();
        assert_eq!(state, "dead", "job {id}");

        let stale = ledger
            .fail(&id, &second.task_id, "w1", 2, FailureKind::Retryable, "oom")
            .await
            .unwrap();
        assert_eq!(stale, "stale", "job {id}");
    }
}

#[tokio::test]
async fn finish_job_moves_job_between_indexes() {
    let (cluster, ledger) = cluster_ledger().await;
    let lease_time = Duration::from_secs(30);
    let ids = admitted_jobs(&cluster, &ledger, 1).await;

    for id in &ids {
        while let Some(lease) = ledger.lease(id, "w1", lease_time).await.unwrap() {
            ledger
                .complete(id, &lease.task_id, "w1", lease.attempt, "file:///r")
                .await
                .unwrap();
        }
        assert!(ledger.try_lock_reduce(id, "d1", lease_time).await.unwrap());
        assert!(!ledger.try_lock_reduce(id, "d2", lease_time).await.unwrap());

        let state = ledger
            .finish_job(id, "succeeded", Some("file:///artefact"), "{}")
            .await
            .unwrap();
        assert_eq!(state, "succeeded", "job {id}");
        let again = ledger.finish_job(id, "failed", None, "{}").await.unwrap();
        assert_eq!(again, "succeeded", "job {id}");
    }

    assert!(ledger.active_jobs().await.unwrap().is_empty());
    let finished: BTreeSet<String> = ledger
        .finished_jobs(10)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(finished, ids.iter().cloned().collect());
}

#[tokio::test]
async fn workers_and_observations() {
    let (cluster, ledger) = cluster_ledger().await;
    let lease_time = Duration::from_secs(30);

    for id in admitted_jobs(&cluster, &ledger, 1).await {
        ledger.lease(&id, "w1", lease_time).await.unwrap().unwrap();
        ledger.heartbeat(&id, "w2", lease_time, None).await.unwrap();
        assert_eq!(ledger.live_workers(&id).await.unwrap(), 2, "job {id}");

        ledger.deregister(&id, "w1").await.unwrap();
        assert_eq!(ledger.live_workers(&id).await.unwrap(), 1, "job {id}");
    }

    let observations: Vec<TaskObservation> = (0..3)
        .map(|i| TaskObservation {
            kernel: "embed".into(),
            backend: "local".into(),
            outcome: "succeeded".into(),
            runtime_secs: f64::from(i),
            worker_secs: Some(f64::from(i) / 2.0),
            wait_secs: 0.5,
            gpu_sku: "cpu".into(),
            gpus: 0,
            model_sha256: String::new(),
        })
        .collect();
    for observation in &observations {
        ledger.push_observation(observation).await.unwrap();
    }
    assert_eq!(ledger.drain_observations(10).await.unwrap(), observations);
    assert!(ledger.drain_observations(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn connect_fails_without_cluster() {
    let port = free_port().unwrap();
    let url = format!("redis+cluster://127.0.0.1:{port}");

    let result = Ledger::connect(&url, "t").await;

    assert!(
        matches!(result, Err(LedgerError::Connect { .. })),
        "connecting to {url} returned {:?}",
        result.err()
    );
}

/// A whole embed job with the daemon, its stream intake and the workers all on a
/// three-master cluster.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_runs_job_on_cluster() {
    use spillway_tests::{
        Daemon, DaemonOptions, embed_manifest, sample_records, send_raw_to, serial, wait_finished,
        write_shard,
    };

    let _serial = serial().await;
    let cluster = RedisCluster::start().unwrap();
    let daemon = Daemon::start_with_url(&cluster.url(), DaemonOptions::default()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_shard(
        data.path(),
        "a.jsonl",
        &sample_records("a", 12),
    )];
    let manifest = embed_manifest("on-cluster", inputs, 4, &data.path().join("out"));
    let parsed = spillway_common::manifest::parse(manifest.to_string().as_bytes()).unwrap();
    let job_id = spillway_common::task::job_id(&parsed);

    send_raw_to(&cluster.url(), manifest.to_string().as_bytes()).await;
    let ledger = Ledger::connect(&cluster.url(), "spillway").await.unwrap();
    let job = wait_finished(&ledger, &job_id, std::time::Duration::from_secs(120)).await;

    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    assert_eq!(job.succeeded, 3);
}
