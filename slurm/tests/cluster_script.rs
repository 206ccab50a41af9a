//! `scripts/slurm-cluster.sh` on a real cluster: a second start, a start while
//! another cluster listens on the ports, stop and env, and the `MaxArraySize`
//! setting.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use spillway_slurm::{ArraySubmission, SlurmApi, SlurmError};
use support::{TestCluster, script};

fn run_script(action: &str, dir: &Path) -> Output {
    Command::new("bash")
        .arg(script())
        .arg(action)
        .arg(dir)
        .output()
        .expect("run slurm-cluster.sh")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
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

#[test]
fn second_start_prints_running_env() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let Some(dir) = own_dir(&cluster) else {
        return;
    };
    let pid_before = std::fs::read_to_string(dir.join("run/slurmctld.pid")).unwrap();

    let output = run_script("start", dir);
    assert!(output.status.success(), "{}", stderr(&output));
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), env);
    assert!(
        stderr(&output).contains("already running"),
        "{}",
        stderr(&output)
    );
    let pid_after = std::fs::read_to_string(dir.join("run/slurmctld.pid")).unwrap();
    assert_eq!(pid_before, pid_after);

    let output = run_script("env", dir);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), env);
    for name in [
        "SLURM_CONF",
        "SLURMRESTD_URL",
        "SLURM_JWT_KEY",
        "SLURMRESTD_USER",
        "SLURM_TOKEN_COMMAND",
    ] {
        assert!(
            env.contains(&format!("export {name}=")),
            "{name} missing:\n{env}"
        );
    }
}

#[test]
fn start_fails_while_ports_are_held() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    if own_dir(&cluster).is_none() {
        return;
    }
    let other = tempfile::tempdir().unwrap();

    let output = run_script("start", other.path());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("port 6817 is already in use"), "{message}");
    assert!(message.contains("slurmctld"), "{message}");
    assert!(
        !other.path().join("run").exists(),
        "the failed start left daemons"
    );
}

#[test]
fn stop_and_env_of_stopped_cluster() {
    let dir = tempfile::tempdir().unwrap();

    let output = run_script("stop", dir.path());
    assert!(output.status.success(), "{}", stderr(&output));

    let output = run_script("env", dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no cluster is running"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn max_array_size_setting_limits_arrays() {
    let Some(cluster) = TestCluster::start_with(&[("SLURM_MAX_ARRAY_SIZE", "5")]) else {
        return;
    };
    if own_dir(&cluster).is_none() {
        return;
    }
    let client = cluster.client();
    let mut request = ArraySubmission {
        job_name: "limited".to_string(),
        script: "#!/bin/sh\ntrue\n".to_string(),
        indices: 0..=5,
        throttle: None,
        partition: None,
        gpus_per_task: Some(1),
        gpu_type: None,
        cpus_per_task: None,
        memory_per_task_mib: None,
        time_limit: Some(Duration::from_secs(60)),
        account: None,
        qos: None,
        working_directory: cluster.work_dir().to_path_buf(),
        environment: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
        output_path: Some("/dev/null".to_string()),
        error_path: None,
    };

    let error = client.submit_array(&request).await.unwrap_err();
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
    // 2081: "Invalid job array specification".
    assert_eq!(error.slurm_error_codes(), vec![2081]);

    request.indices = 0..=4;
    client.submit_array(&request).await.unwrap();
}
