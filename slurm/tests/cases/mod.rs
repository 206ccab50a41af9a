//! Test bodies that run against both implementations of `SlurmApi` on a real
//! cluster: `rest_cluster.rs` passes a `RestClient`, `cli_cluster.rs` a
//! `CliClient`. A body checks what both must return alike and hands back what
//! differs, such as the error of a rejected submission, for the caller's own
//! checks.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use spillway_slurm::{
    ArraySubmission, Diag, ExitStatus, JobBaseState, Operation, SlurmApi, SlurmError, TimeLimit,
};

use crate::support::{all_elements_finished, wait_for_array};

/// Builds an array of `0..=last_index` on partition `gpu`, with one GPU per element
/// and its output in `work_dir`.
pub fn submission(name: &str, work_dir: &Path, script: &str, last_index: u32) -> ArraySubmission {
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

/// Checks ping and the diagnostics of the default cluster, and returns them.
pub async fn ping_and_diag(client: &dyn SlurmApi) -> Diag {
    client.ping().await.unwrap();
    let diag = client.diag().await.unwrap();
    assert!(
        diag.slurm_release
            .as_deref()
            .is_some_and(|release| release.starts_with(char::is_numeric)),
        "{diag:?}"
    );
    assert_eq!(diag.max_array_size, 1001);
    assert!(diag.server_thread_count.is_some(), "{diag:?}");
    diag
}

pub async fn nodes_and_partitions_report_four_gpus(client: &dyn SlurmApi) {
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
    assert!(!short.is_default);
    assert_eq!(short.max_time, TimeLimit::Minutes(10));
    assert_eq!(short.gpus, 4);
}

/// Runs six elements with a throttle of 2. Each writes a marker with a variable of
/// its submission and its GPUs, and its whole environment.
pub async fn throttled_array_runs_every_element(client: &dyn SlurmApi, work_dir: &Path) {
    let script = "#!/bin/sh\n\
        printf '%s %s\\n' \"$SPILLWAY_TEST_VALUE\" \"$CUDA_VISIBLE_DEVICES\" \
        > \"marker-$SLURM_ARRAY_TASK_ID\"\n\
        env > \"environment-$SLURM_ARRAY_TASK_ID\"\n\
        sleep 1\n";
    let mut request = submission("throttled", work_dir, script, 5);
    request.throttle = Some(2);
    request.environment.insert(
        "SPILLWAY_TEST_VALUE".to_string(),
        "from,spillway with spaces".to_string(),
    );

    let submitted = client.submit_array(&request).await.unwrap();
    let mut max_running = 0;
    let jobs = wait_for_array(
        client,
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
    assert!(max_running >= 1, "no poll saw a running element");
    for job in &jobs {
        assert_eq!(job.array_job_id, Some(submitted.job_id));
        assert_eq!(job.state.base, Some(JobBaseState::Completed), "{job}");
        assert_eq!(job.exit_status, Some(ExitStatus::Exited(0)), "{job}");
        assert_eq!(job.name, "throttled");
    }
    for index in 0..6 {
        let marker = std::fs::read_to_string(work_dir.join(format!("marker-{index}"))).unwrap();
        let (value, gpus) = marker.trim().rsplit_once(' ').unwrap();
        assert_eq!(value, "from,spillway with spaces");
        assert!(!gpus.is_empty(), "element {index} got no GPU");
    }
    let environment = std::fs::read_to_string(work_dir.join("environment-0")).unwrap();
    assert!(
        environment.lines().any(|line| line == "PATH=/usr/bin:/bin"),
        "{environment}"
    );
    let unexpected = environment
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .filter(|name| !request.environment.contains_key(*name) && !is_set_by_slurm(name))
        .collect::<Vec<_>>();
    assert!(
        unexpected.is_empty(),
        "the job got variables it was not given: {unexpected:?}"
    );
}

/// Returns true for the variables that Slurm 22.05 or the job's shell set in a
/// batch job on the test cluster, besides those of the submission.
fn is_set_by_slurm(name: &str) -> bool {
    const OTHERS: [&str; 11] = [
        "CUDA_VISIBLE_DEVICES",
        "ENVIRONMENT",
        "GPU_DEVICE_ORDINAL",
        "HOSTNAME",
        "OLDPWD",
        "PWD",
        "ROCR_VISIBLE_DEVICES",
        "SHLVL",
        "TMPDIR",
        "ZE_AFFINITY_MASK",
        "_",
    ];
    name.starts_with("SLURM_") || name.starts_with("SLURMD_") || OTHERS.contains(&name)
}

pub async fn hundred_element_array_completes(client: &dyn SlurmApi, work_dir: &Path) {
    let request = submission("hundred", work_dir, "#!/bin/sh\nexit 0\n", 99);

    let started = Instant::now();
    let submitted = client.submit_array(&request).await.unwrap();
    let jobs = wait_for_array(
        client,
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

pub async fn cancel_ends_whole_array(client: &dyn SlurmApi, work_dir: &Path) {
    let mut request = submission("cancelled", work_dir, "#!/bin/sh\nsleep 300\n", 5);
    request.throttle = Some(2);
    let submitted = client.submit_array(&request).await.unwrap();

    wait_for_array(
        client,
        submitted.job_id,
        Duration::from_secs(60),
        |_| {},
        |jobs| jobs.iter().filter(|job| job.state.is_running()).count() == 2,
    )
    .await;
    client.cancel(submitted.job_id).await.unwrap();
    let jobs = wait_for_array(
        client,
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

pub async fn cancel_of_unknown_job_names_it(client: &dyn SlurmApi) {
    let error = client.cancel(987_654).await.unwrap_err();
    assert!(matches!(error, SlurmError::Rejected { .. }), "{error:?}");
    assert_eq!(error.job_id(), Some(987_654));
    assert_eq!(error.slurm_error_codes(), vec![2017]);
    let message = error.to_string();
    assert!(message.contains("987654"), "{message}");
    assert!(message.contains("Invalid job id specified"), "{message}");
}

/// Submits to a partition that does not exist and returns the error.
pub async fn bad_partition_error_names_partition(
    client: &dyn SlurmApi,
    work_dir: &Path,
) -> SlurmError {
    let mut request = submission("misplaced", work_dir, "#!/bin/sh\ntrue\n", 1);
    request.partition = Some("nosuch".to_string());

    let error = client.submit_array(&request).await.unwrap_err();
    assert!(matches!(error, SlurmError::Rejected { .. }), "{error:?}");
    assert_eq!(
        error.operation(),
        Some(&Operation::Submit {
            job_name: "misplaced".to_string(),
            partition: Some("nosuch".to_string()),
        })
    );
    let message = error.to_string();
    assert!(message.contains("\"nosuch\""), "{message}");
    assert!(
        message.contains("Invalid partition name specified"),
        "{message}"
    );
    assert_eq!(error.slurm_error_codes(), vec![2000]);
    error
}

pub async fn invalid_submission_is_not_sent(client: &dyn SlurmApi, work_dir: &Path) {
    let request = submission("no-shebang", work_dir, "true\n", 1);
    let error = client.submit_array(&request).await.unwrap_err();
    assert!(
        matches!(error, SlurmError::InvalidRequest { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("#!"), "{error}");
}

pub async fn jobs_of_unknown_ids_are_empty(client: &dyn SlurmApi) {
    assert!(client.jobs(&[]).await.unwrap().is_empty());
    assert!(client.jobs(&[424_242]).await.unwrap().is_empty());
}
