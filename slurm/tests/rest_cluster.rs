//! `RestClient` against a real slurmrestd: a single-node Slurm 22.05 cluster with
//! four fake GPUs, started by `scripts/slurm-cluster.sh` (see `support`).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spillway_slurm::{
    ArraySubmission, Auth, ExitStatus, JobBaseState, LimitSource, RestClient, RestConfig, SlurmApi,
    SlurmError, TimeLimit, TokenSource,
};
use support::{TestCluster, all_elements_finished, wait_for_array};

fn submission(name: &str, work_dir: &Path, script: &str, last_index: u32) -> ArraySubmission {
    ArraySubmission {
        job_name: name.to_string(),
        script: script.to_string(),
        indices: 0..=last_index,
        throttle: None,
        partition: Some("gpu".to_string()),
        gpus_per_task: Some(1),
        gpu_type: None,
        cpus_per_task: Some(1),
        memory_per_task_mib: None,
        time_limit: Some(Duration::from_secs(300)),
        account: None,
        qos: None,
        working_directory: work_dir.to_path_buf(),
        environment: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
        output_path: Some(work_dir.join("%A_%a.out").display().to_string()),
        error_path: None,
    }
}

#[tokio::test]
async fn ping_and_diag() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();

    client.ping().await.unwrap();
    let diag = client.diag().await.unwrap();
    assert!(
        diag.slurm_release
            .as_deref()
            .is_some_and(|release| release.starts_with(char::is_numeric)),
        "{diag:?}"
    );
    assert_eq!(diag.max_array_size, 1001);
    assert_eq!(diag.max_array_size_source, LimitSource::SlurmDefault);
    assert!(diag.server_thread_count.is_some(), "{diag:?}");

    let configured = RestClient::new(RestConfig {
        max_array_size: Some(50),
        ..RestConfig::new(
            cluster.url(),
            cluster.user(),
            TokenSource::Command(cluster.token_command(600)),
        )
    })
    .unwrap();
    let diag = configured.diag().await.unwrap();
    assert_eq!(diag.max_array_size, 50);
    assert_eq!(diag.max_array_size_source, LimitSource::Configured);
}

#[tokio::test]
async fn nodes_and_partitions_report_four_gpus() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();

    let nodes = client.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0].name, "node1");
    assert_eq!(nodes[0].gpus, 4);
    assert!(nodes[0].state.accepts_jobs(), "{}", nodes[0].state);

    let partitions = client.partitions().await.unwrap();
    let gpu = partitions.iter().find(|p| p.name == "gpu").unwrap();
    assert!(gpu.is_default);
    assert_eq!(gpu.gpus, 4);
    assert_eq!(gpu.max_time, TimeLimit::Unlimited);
    let short = partitions.iter().find(|p| p.name == "short").unwrap();
    assert_eq!(short.max_time, TimeLimit::Minutes(10));
    assert_eq!(short.gpus, 4);
}

#[tokio::test]
async fn throttled_array_runs_every_element() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();
    let work_dir = cluster.work_dir();
    let script = "#!/bin/sh\n\
        printf '%s %s\\n' \"$SPILLWAY_TEST_VALUE\" \"$CUDA_VISIBLE_DEVICES\" \
        > \"marker-$SLURM_ARRAY_TASK_ID\"\n\
        sleep 1\n";
    let mut request = submission("throttled", work_dir, script, 5);
    request.throttle = Some(2);
    request.environment.insert(
        "SPILLWAY_TEST_VALUE".to_string(),
        "from-spillway".to_string(),
    );

    let submitted = client.submit_array(&request).await.unwrap();
    let mut max_running = 0;
    let jobs = wait_for_array(
        &client,
        submitted.job_id,
        Duration::from_secs(60),
        |jobs| {
            let running = jobs.iter().filter(|job| job.state.is_running()).count();
            max_running = max_running.max(running);
        },
        |jobs| all_elements_finished(jobs, 6),
    )
    .await;

    assert!(max_running <= 2, "{max_running} elements ran at once");
    for job in &jobs {
        assert_eq!(job.array_job_id, Some(submitted.job_id));
        assert_eq!(job.state.base, Some(JobBaseState::Completed), "{job}");
        assert_eq!(job.exit_status, Some(ExitStatus::Exited(0)), "{job}");
        assert_eq!(job.name, "throttled");
    }
    for index in 0..6 {
        let marker = std::fs::read_to_string(work_dir.join(format!("marker-{index}"))).unwrap();
        let (value, gpus) = marker.trim().split_once(' ').unwrap();
        assert_eq!(value, "from-spillway");
        assert!(!gpus.is_empty(), "element {index} got no GPU");
    }
}

#[tokio::test]
async fn hundred_element_array_completes() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();
    let request = submission("hundred", cluster.work_dir(), "#!/bin/sh\nexit 0\n", 99);

    let started = Instant::now();
    let submitted = client.submit_array(&request).await.unwrap();
    let jobs = wait_for_array(
        &client,
        submitted.job_id,
        Duration::from_secs(180),
        |_| {},
        |jobs| all_elements_finished(jobs, 100),
    )
    .await;
    eprintln!(
        "100-element array finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(jobs.len(), 100);
    assert!(
        jobs.iter()
            .all(|job| job.exit_status == Some(ExitStatus::Exited(0)))
    );
}

#[tokio::test]
async fn cancel_ends_whole_array() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();
    let mut request = submission("cancelled", cluster.work_dir(), "#!/bin/sh\nsleep 300\n", 5);
    request.throttle = Some(2);
    let submitted = client.submit_array(&request).await.unwrap();

    wait_for_array(
        &client,
        submitted.job_id,
        Duration::from_secs(60),
        |_| {},
        |jobs| jobs.iter().filter(|job| job.state.is_running()).count() == 2,
    )
    .await;
    client.cancel(submitted.job_id).await.unwrap();
    let jobs = wait_for_array(
        &client,
        submitted.job_id,
        Duration::from_secs(60),
        |_| {},
        |jobs| jobs.iter().all(|job| job.state.is_finished()),
    )
    .await;

    for job in &jobs {
        assert_eq!(job.state.base, Some(JobBaseState::Cancelled), "{job}");
    }
    let started = jobs.iter().filter(|job| job.array_index().is_some());
    for job in started {
        assert_eq!(job.exit_status, Some(ExitStatus::Signaled(15)), "{job}");
    }
    // Cancelling an ended job succeeds.
    client.cancel(submitted.job_id).await.unwrap();
}

#[tokio::test]
async fn cancel_of_unknown_job_names_it() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let error = cluster.client().cancel(987_654).await.unwrap_err();
    assert_eq!(error.job_id(), Some(987_654));
    let message = error.to_string();
    assert!(message.contains("987654"), "{message}");
    assert!(message.contains("Invalid job id specified"), "{message}");
}

#[tokio::test]
async fn bad_partition_error_names_partition() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();
    let mut request = submission("misplaced", cluster.work_dir(), "#!/bin/sh\ntrue\n", 1);
    request.partition = Some("nosuch".to_string());

    let error = client.submit_array(&request).await.unwrap_err();
    assert!(
        matches!(error, SlurmError::Rejected { status: 500, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("\"nosuch\""), "{message}");
    assert!(
        message.contains("Invalid partition name specified"),
        "{message}"
    );
    assert_eq!(error.slurm_error_codes(), vec![2000]);
    // One attempt only: a rejected partition is no token problem.
    assert_eq!(client.auth().tokens_obtained(), 1);
}

#[tokio::test]
async fn invalid_submission_is_not_sent() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();
    let request = submission("no-shebang", cluster.work_dir(), "true\n", 1);
    let error = client.submit_array(&request).await.unwrap_err();
    assert!(
        matches!(error, SlurmError::InvalidRequest { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("#!"), "{error}");
    assert_eq!(client.auth().tokens_obtained(), 0);
}

#[tokio::test]
async fn expiring_token_is_renewed() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    // Four-second tokens, renewed after 80% of that, while requests go on for ten.
    let auth = Auth::new(
        cluster.user(),
        TokenSource::Command(cluster.token_command(4)),
    )
    .unwrap();
    let client = RestClient::with_auth(cluster.url(), auth, Duration::from_secs(30), None).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut requests = 0;
    while Instant::now() < deadline {
        client.ping().await.unwrap();
        client.jobs(&[1]).await.unwrap();
        requests += 2;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let tokens = client.auth().tokens_obtained();
    assert!(
        tokens >= 3,
        "{tokens} tokens for {requests} requests over 10 s"
    );
    assert!(
        tokens <= 5,
        "{tokens} tokens for {requests} requests over 10 s"
    );
}

#[tokio::test]
async fn rejected_token_is_renewed_once() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    // The first token is garbage, so slurmrestd replies with HTTP 500 and Slurm
    // error -1. Every later token is valid.
    let marker = cluster.work_dir().join("first-token-given");
    let command = format!(
        "if [ -e {marker} ]; then {valid}; else touch {marker}; echo not-a-token; fi",
        marker = marker.display(),
        valid = cluster.token_command(600),
    );
    let auth = Auth::new(cluster.user(), TokenSource::Command(command)).unwrap();
    let client = Arc::new(
        RestClient::with_auth(cluster.url(), auth, Duration::from_secs(30), None).unwrap(),
    );

    client.ping().await.unwrap();
    assert_eq!(client.auth().tokens_obtained(), 2);
    client.nodes().await.unwrap();
    assert_eq!(client.auth().tokens_obtained(), 2);
}

#[tokio::test]
async fn token_rejected_after_renewal_fails_clearly() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let auth = Auth::new(
        cluster.user(),
        TokenSource::Command("echo not-a-token".to_string()),
    )
    .unwrap();
    let client = RestClient::with_auth(cluster.url(), auth, Duration::from_secs(30), None).unwrap();

    let error = client.jobs(&[1]).await.unwrap_err();
    assert!(
        matches!(error, SlurmError::Unauthorized { status: 500, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(cluster.user()), "{message}");
    assert!(message.contains("job listing"), "{message}");
    assert_eq!(client.auth().tokens_obtained(), 2);
}

#[tokio::test]
async fn jobs_without_ids_sends_nothing() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();
    assert!(client.jobs(&[]).await.unwrap().is_empty());
    assert_eq!(client.auth().tokens_obtained(), 0);
    assert!(client.jobs(&[424_242]).await.unwrap().is_empty());
}
