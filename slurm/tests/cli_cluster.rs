//! `CliClient` against a real cluster: a single-node Slurm 22.05 with four fake
//! GPUs, started by `scripts/slurm-cluster.sh` (see `support`). The bodies shared
//! with `rest_cluster.rs` are in `cases`. The commands run as the test's user, so
//! the jobs do too.

mod cases;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use spillway_slurm::{
    CliClient, CliConfig, GpuRequest, JobBaseState, LimitSource, SlurmApi, SlurmError,
};
use support::{TestCluster, all_elements_finished, wait_for_array};

/// Returns a client of the cluster's commands, found in `PATH`.
fn client(cluster: &TestCluster) -> CliClient {
    client_with(cluster, CliConfig::default())
}

fn client_with(cluster: &TestCluster, config: CliConfig) -> CliClient {
    CliClient::new(CliConfig {
        slurm_conf: Some(cluster.var("SLURM_CONF").into()),
        ..config
    })
    .expect("valid client configuration")
}

/// Returns the folder of the cluster this test started, or `None`, after saying
/// so, when the tests use an external cluster that the script did not start.
fn own_dir(cluster: &TestCluster) -> Option<&Path> {
    let dir = cluster.cluster_dir();
    if dir.is_none() {
        eprintln!("skipping: SLURMRESTD_URL names an external cluster");
    }
    dir
}

#[tokio::test]
async fn ping_and_diag() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let diag = cases::ping_and_diag(&client(&cluster)).await;
    assert_eq!(diag.max_array_size_source, LimitSource::Server);
}

#[tokio::test]
async fn nodes_and_partitions_report_four_gpus() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::nodes_and_partitions_report_four_gpus(&client(&cluster)).await;
}

#[tokio::test]
async fn throttled_array_runs_every_element() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::throttled_array_runs_every_element(&client(&cluster), cluster.work_dir()).await;
}

#[tokio::test]
async fn hundred_element_array_completes() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::hundred_element_array_completes(&client(&cluster), cluster.work_dir()).await;
}

#[tokio::test]
async fn cancel_ends_whole_array() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::cancel_ends_whole_array(&client(&cluster), cluster.work_dir()).await;
}

#[tokio::test]
async fn cancel_of_unknown_job_names_it() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::cancel_of_unknown_job_names_it(&client(&cluster)).await;
}

#[tokio::test]
async fn bad_partition_error_names_partition() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let error =
        cases::bad_partition_error_names_partition(&client(&cluster), cluster.work_dir()).await;
    assert!(
        matches!(error, SlurmError::Rejected { status: None, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("sbatch exited with status 1"), "{message}");
}

#[tokio::test]
async fn invalid_submission_is_not_sent() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::invalid_submission_is_not_sent(&client(&cluster), cluster.work_dir()).await;
}

#[tokio::test]
async fn jobs_of_unknown_ids_are_empty() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    cases::jobs_of_unknown_ids_are_empty(&client(&cluster)).await;
}

#[tokio::test]
async fn max_array_size_comes_from_scontrol() {
    let Some(cluster) = TestCluster::start_with(&[("SLURM_MAX_ARRAY_SIZE", "5")]) else {
        return;
    };
    if own_dir(&cluster).is_none() {
        return;
    }
    // The configured value is a fallback only; the cluster's own value wins.
    let client = client_with(
        &cluster,
        CliConfig {
            max_array_size: Some(50),
            ..CliConfig::default()
        },
    );

    let diag = client.diag().await.unwrap();
    assert_eq!(diag.max_array_size, 5);
    assert_eq!(diag.max_array_size_source, LimitSource::Server);

    let mut request = cases::submission("limited", cluster.work_dir(), "#!/bin/sh\ntrue\n", 5);
    let error = client.submit_array(&request).await.unwrap_err();
    assert!(
        matches!(error, SlurmError::Rejected { status: None, .. }),
        "{error:?}"
    );
    // 2081: "Invalid job array specification".
    assert_eq!(error.slurm_error_codes(), vec![2081]);

    request.indices = 0..=4;
    client.submit_array(&request).await.unwrap();
}

#[tokio::test]
async fn gres_request_gets_gpus() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let client = client_with(
        &cluster,
        CliConfig {
            gpu_request: GpuRequest::Gres,
            ..CliConfig::default()
        },
    );
    let work_dir = cluster.work_dir();
    let script = "#!/bin/sh\necho \"$CUDA_VISIBLE_DEVICES\" > \"gpus-$SLURM_ARRAY_TASK_ID\"\n";
    let mut request = cases::submission("gres", work_dir, script, 1);
    request.gpus_per_task = Some(2);

    let submitted = client.submit_array(&request).await.unwrap();
    let jobs = wait_for_array(
        &client,
        submitted.job_id,
        Duration::from_secs(60),
        |_| {},
        |jobs| all_elements_finished(jobs, 2),
    )
    .await;

    for job in &jobs {
        assert_eq!(job.state.base, Some(JobBaseState::Completed), "{job}");
    }
    for index in 0..2 {
        let gpus = std::fs::read_to_string(work_dir.join(format!("gpus-{index}"))).unwrap();
        assert_eq!(
            gpus.trim().split(',').count(),
            2,
            "element {index}: {gpus:?}"
        );
    }
}

/// Returns a copy of the cluster's slurm.conf whose slurmctld port nobody listens
/// on, in `dir`.
fn unreachable_conf(cluster: &TestCluster, dir: &Path) -> PathBuf {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unused_port = listener.local_addr().unwrap().port();
    drop(listener);

    let conf = std::fs::read_to_string(cluster.var("SLURM_CONF")).unwrap();
    let changed = conf
        .lines()
        .map(|line| {
            if line.starts_with("SlurmctldPort=") {
                format!("SlurmctldPort={unused_port}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(
        conf.trim_end(),
        changed,
        "slurm.conf has no SlurmctldPort line"
    );
    let path = dir.join("slurm.conf");
    std::fs::write(&path, changed).unwrap();
    path
}

#[tokio::test]
async fn unreachable_controller_fails_every_operation() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    if own_dir(&cluster).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let client = CliClient::new(CliConfig {
        slurm_conf: Some(unreachable_conf(&cluster, dir.path())),
        ..CliConfig::default()
    })
    .unwrap();

    // squeue and sinfo wait about 9 s before they give up, so all run at once.
    let (ping, jobs, nodes, partitions) = tokio::join!(
        client.ping(),
        client.jobs(&[1]),
        client.nodes(),
        client.partitions()
    );

    let error = ping.unwrap_err();
    assert!(
        matches!(&error, SlurmError::ControllerDown { controllers, .. } if controllers.len() == 1),
        "{error:?}"
    );
    assert!(error.to_string().contains("DOWN"), "{error}");

    // squeue and sinfo exit with status 0 here; the error is inside their JSON.
    let error = jobs.unwrap_err();
    assert!(
        matches!(error, SlurmError::Rejected { status: None, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with("job listing failed"),
        "{error}"
    );
    let error = nodes.unwrap_err();
    assert!(
        matches!(error, SlurmError::Rejected { status: None, .. }),
        "{error:?}"
    );

    let error = partitions.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("Unable to contact slurm controller"),
        "{message}"
    );
}

#[tokio::test]
async fn missing_command_is_named() {
    let client = CliClient::new(CliConfig {
        squeue: PathBuf::from("/nonexistent/squeue"),
        scancel: PathBuf::from("spillway-no-such-scancel"),
        ..CliConfig::default()
    })
    .unwrap();

    let error = client.jobs(&[1]).await.unwrap_err();
    assert!(
        matches!(&error, SlurmError::CommandNotFound { program, .. } if program == "/nonexistent/squeue"),
        "{error:?}"
    );
    let error = client.cancel(7).await.unwrap_err();
    assert_eq!(error.job_id(), Some(7));
    let message = error.to_string();
    assert!(
        message.contains("\"spillway-no-such-scancel\" was not found"),
        "{message}"
    );
    assert!(
        message.starts_with("cancel of Slurm job 7 failed"),
        "{message}"
    );
}

#[test]
fn invalid_settings_are_listed_together() {
    let error = CliClient::new(CliConfig {
        sbatch: PathBuf::new(),
        slurm_conf: Some(PathBuf::from("/nonexistent/slurm.conf")),
        command_timeout: Duration::ZERO,
        max_array_size: Some(0),
        ..CliConfig::default()
    })
    .unwrap_err();
    let message = error.to_string();
    for expected in [
        "the sbatch command is empty",
        "slurm_conf /nonexistent/slurm.conf is not a file",
        "command_timeout must be longer than 0 s",
        "max_array_size must be at least 1",
    ] {
        assert!(message.contains(expected), "{expected:?} not in {message}");
    }
}
