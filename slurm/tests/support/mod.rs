//! A real single-node Slurm cluster for integration tests.
//!
//! [`TestCluster::start`] uses the cluster named by `SLURMRESTD_URL` and the other
//! variables of `scripts/slurm-cluster.sh env` when that is set. Otherwise it runs
//! `scripts/slurm-cluster.sh start` in a temporary folder and stops the cluster by
//! its pid files when dropped. Slurm 22.05's daemons listen on fixed ports, so one
//! cluster at a time: a process-wide mutex serialises the tests of one binary, and
//! a file lock serialises test binaries that run at the same time.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use spillway_slurm::{JobInfo, RestClient, RestConfig, SlurmApi, TokenSource};

/// Exit status of `scripts/slurm-cluster.sh` when Slurm cannot be installed.
const CANNOT_INSTALL: i32 = 3;
const TEST_LOCK_FILE: &str = "/run/lock/spillway-slurm-tests.lock";

static CLUSTER_MUTEX: Mutex<()> = Mutex::new(());

/// A running cluster, held exclusively by one test.
pub struct TestCluster {
    env: BTreeMap<String, String>,
    /// The folder of a cluster this test started; `None` for an external cluster.
    cluster_dir: Option<tempfile::TempDir>,
    work_dir: tempfile::TempDir,
    _file_lock: File,
    _guard: MutexGuard<'static, ()>,
}

/// Returns the path of `scripts/slurm-cluster.sh`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster.sh")
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

impl TestCluster {
    /// Starts a cluster with the script's defaults. Returns `None`, after printing
    /// why, only when Slurm is not installed and cannot be installed.
    pub fn start() -> Option<TestCluster> {
        Self::start_with(&[])
    }

    /// Starts a cluster with script settings such as `SLURM_MAX_ARRAY_SIZE`. An
    /// external cluster (`SLURMRESTD_URL` set) ignores them.
    pub fn start_with(settings: &[(&str, &str)]) -> Option<TestCluster> {
        let guard = CLUSTER_MUTEX
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let file_lock = File::create(TEST_LOCK_FILE).expect("create the test lock file");
        file_lock.lock().expect("lock the test lock file");

        let (env, cluster_dir) = match std::env::var("SLURMRESTD_URL") {
            Ok(_) => (external_env(), None),
            Err(_) => {
                let dir = tempfile::Builder::new()
                    .prefix("spillway-slurm-")
                    .tempdir()
                    .expect("create the cluster folder");
                let env = start_script(dir.path(), settings)?;
                (env, Some(dir))
            }
        };
        Some(TestCluster {
            env,
            cluster_dir,
            work_dir: shared_work_dir(),
            _file_lock: file_lock,
            _guard: guard,
        })
    }

    /// Returns the folder of a cluster that this test started, `None` for an
    /// external one.
    pub fn cluster_dir(&self) -> Option<&Path> {
        self.cluster_dir.as_ref().map(tempfile::TempDir::path)
    }

    /// Returns a variable of the cluster's environment.
    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("the cluster environment has no {name}"))
    }

    pub fn url(&self) -> &str {
        self.var("SLURMRESTD_URL")
    }

    pub fn user(&self) -> &str {
        self.var("SLURMRESTD_USER")
    }

    /// Returns a command that prints a token valid for `lifespan_secs`.
    pub fn token_command(&self, lifespan_secs: u64) -> String {
        format!("{} {lifespan_secs}", self.var("SLURM_TOKEN_COMMAND"))
    }

    /// Returns a folder that the cluster's jobs, which run as the cluster user, can
    /// write to.
    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// Returns a client with 10-minute tokens.
    pub fn client(&self) -> RestClient {
        let config = RestConfig::new(
            self.url(),
            self.user(),
            TokenSource::Command(self.token_command(600)),
        );
        RestClient::new(config).expect("valid client configuration")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let Some(dir) = &self.cluster_dir else {
            return;
        };
        let output = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(dir.path())
            .output()
            .expect("run slurm-cluster.sh stop");
        if !output.status.success() {
            eprintln!(
                "slurm-cluster.sh stop {} failed: {}",
                dir.path().display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

fn external_env() -> BTreeMap<String, String> {
    [
        "SLURMRESTD_URL",
        "SLURMRESTD_USER",
        "SLURM_TOKEN_COMMAND",
        "SLURM_CONF",
    ]
    .iter()
    .map(|name| {
        let value = std::env::var(name)
            .unwrap_or_else(|_| panic!("SLURMRESTD_URL is set, so {name} must be set too"));
        (name.to_string(), value)
    })
    .collect()
}

fn start_script(dir: &Path, settings: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(script())
        .arg("start")
        .arg(dir)
        .envs(settings.iter().copied())
        .output()
        .expect("run slurm-cluster.sh start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(CANNOT_INSTALL) {
        eprintln!("skipping: Slurm is not installed and cannot be installed here:\n{stderr}");
        return None;
    }
    assert!(
        output.status.success(),
        "slurm-cluster.sh start {} failed:\n{stderr}",
        dir.display()
    );
    eprintln!(
        "started a Slurm cluster in {} in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Some(parse_env(&String::from_utf8_lossy(&output.stdout)))
}

fn shared_work_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("spillway-slurm-work-")
        .tempdir()
        .expect("create the work folder");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("open the work folder to the cluster user");
    dir
}

/// Polls `jobs` for one array until `done` returns true for its records, and
/// returns them. Panics after `timeout` with the last records. `observe` is called
/// with the records of every poll.
pub async fn wait_for_array(
    client: &dyn SlurmApi,
    array_job_id: u64,
    timeout: Duration,
    mut observe: impl FnMut(&[JobInfo]),
    done: impl Fn(&[JobInfo]) -> bool,
) -> Vec<JobInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        let jobs = client.jobs(&[array_job_id]).await.expect("list jobs");
        observe(&jobs);
        if done(&jobs) {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "array {array_job_id} did not reach the expected state within {timeout:?}; \
             last records: {}",
            jobs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Returns true when every index in `0..count` has a finished record and no record
/// of the array waits or runs.
pub fn all_elements_finished(jobs: &[JobInfo], count: u32) -> bool {
    let finished = jobs
        .iter()
        .filter(|job| job.state.is_finished())
        .filter_map(JobInfo::array_index)
        .collect::<std::collections::BTreeSet<_>>();
    jobs.iter().all(|job| !job.state.is_active()) && finished == (0..count).collect()
}
