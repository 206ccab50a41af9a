//! `RestClient` against a real slurmrestd: a single-node Slurm 22.05 cluster with
//! four fake GPUs, started by `scripts/slurm-cluster.sh` (see `support`). The
//! bodies shared with `cli_cluster.rs` are in `cases`.

mod cases;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use spillway_slurm::{
    Auth, LimitSource, RestClient, RestConfig, SlurmApi, SlurmError, TokenSource,
};
use support::TestCluster;

#[tokio::test]
async fn ping_and_diag() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let diag = cases::ping_and_diag(&cluster.client()).await;
    // slurmrestd 22.05 does not report MaxArraySize.
    assert_eq!(diag.max_array_size_source, LimitSource::SlurmDefault);

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
    cases::nodes_and_partitions_report_four_gpus(&cluster.client()).await;
}

#[tokio::test]
async fn throttled_array_runs_every_element() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::throttled_array_runs_every_element(&cluster.client(), cluster.work_dir()).await;
}

#[tokio::test]
async fn hundred_element_array_completes() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::hundred_element_array_completes(&cluster.client(), cluster.work_dir()).await;
}

#[tokio::test]
async fn cancel_ends_whole_array() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::cancel_ends_whole_array(&cluster.client(), cluster.work_dir()).await;
}

#[tokio::test]
async fn cancel_of_unknown_job_names_it() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::cancel_of_unknown_job_names_it(&cluster.client()).await;
}

#[tokio::test]
async fn bad_partition_error_names_partition() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();
    let error = cases::bad_partition_error_names_partition(&client, cluster.work_dir()).await;
    assert!(
        matches!(
            error,
            SlurmError::Rejected {
                status: Some(500),
                ..
            }
        ),
        "{error:?}"
    );
    // One attempt only: a rejected partition is no token problem.
    assert_eq!(client.auth().tokens_obtained(), 1);
}

#[tokio::test]
async fn invalid_submission_is_not_sent() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = cluster.client();
    cases::invalid_submission_is_not_sent(&client, cluster.work_dir()).await;
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
    cases::jobs_of_unknown_ids_are_empty(&client).await;
}
