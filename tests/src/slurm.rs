//! A real single-node Slurm cluster for daemon tests, started by
//! `scripts/slurm-cluster.sh` in a temporary folder and stopped by pid on drop.
//!
//! Slurm 22.05's daemons listen on fixed ports, so one cluster runs at a time: the
//! lock file is the one the spillway-slurm tests use, so the two suites never overlap.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::workspace_root;

const LOCK_FILE: &str = "/run/lock/spillway-slurm-tests.lock";

/// A running cluster and its environment (`SLURM_CONF`, `SLURMRESTD_URL`, …).
pub struct SlurmCluster {
    pub env: BTreeMap<String, String>,
    dir: tempfile::TempDir,
    _lock: File,
}

impl SlurmCluster {
    /// Starts a cluster with script settings such as `SLURM_MAX_ARRAY_SIZE`.
    pub fn start(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let lock = File::create(LOCK_FILE)?;
        lock.lock()?;
        let dir = tempfile::Builder::new()
            .prefix("spillway-slurm-")
            .tempdir()?;
        // Slurm jobs run as the cluster's unprivileged user, which must reach the folder.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;

        let output = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .envs(settings.iter().copied())
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "slurm-cluster.sh start failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("env"))?
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| {
                (
                    name.to_string(),
                    value.trim_matches('\'').trim_matches('"').to_string(),
                )
            })
            .collect();
        Ok(Self {
            env,
            dir,
            _lock: lock,
        })
    }

    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("cluster env lacks {name}"))
    }

    /// Runs a Slurm command such as `scancel` against this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", self.var("SLURM_CONF"));
        command
    }

    /// The `[backend.slurm]` section for a daemon that uses this cluster over REST.
    pub fn backend_config(&self, work_dir: &Path, max_workers: u32, extra: &str) -> String {
        format!(
            "[backend.slurm]\nenabled = true\napi = \"rest\"\nrest_url = \"{url}\"\nuser = \"{user}\"\n\
             token_command = \"{token} 600\"\nworker_binary = \"{worker}\"\nmax_workers = {max_workers}\n\
             threads_per_worker = 1\nworking_dir = \"{work}\"\nlog_dir = \"{work}/logs\"\n\
             cache_dir = \"{work}/cache\"\n{extra}\n",
            url = self.var("SLURMRESTD_URL"),
            user = self.var("SLURMRESTD_USER"),
            token = self.var("SLURM_TOKEN_COMMAND"),
            worker = crate::binary("spillway-worker").display(),
            work = work_dir.display(),
        )
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

fn script() -> PathBuf {
    workspace_root().join("scripts/slurm-cluster.sh")
}

/// Creates a folder that the cluster's user can write, for shards, outputs and logs.
pub fn shared_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("spillway-shared-")
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
    for sub in ["out", "logs", "cache"] {
        let path = dir.path().join(sub);
        std::fs::create_dir_all(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
    }
    Ok(dir)
}
