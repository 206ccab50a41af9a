//! Backend `local`: worker processes on this machine, numbered like array elements.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::process::Stdio;
use std::time::{Duration, Instant};

use spillway_common::digest::Sha256Hex;
use spillway_common::manifest::Manifest;
use spillway_common::worker_env as env;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{Backend, BackendError, LaunchRequest, LostWorker};
use crate::config::LocalBackendConfig;

/// Ledger address that workers receive.
#[derive(Debug, Clone)]
pub struct WorkerLedger {
    /// The URL without a password.
    pub url: String,
    pub password_file: Option<std::path::PathBuf>,
    pub prefix: String,
}

pub struct LocalBackend {
    config: LocalBackendConfig,
    ledger: WorkerLedger,
    /// Settings that a configuration reload may change while workers run.
    settings: std::sync::RwLock<Settings>,
    /// SHA-256 of the configured worker binary, checked against manifests at admission.
    worker_digest: Sha256Hex,
    state: Mutex<State>,
}

/// Failed worker exits in a row after which a job's local workers start only after a
/// pause. A job whose workers cannot start (a replaced binary, a broken install) then
/// does not restart them in a tight loop, and a job whose workers were killed still
/// goes on. A clean exit or a daemon restart clears the count.
const MAX_FAILED_EXITS: u32 = 5;

/// The pause after `MAX_FAILED_EXITS` failed exits in a row. It doubles with each
/// further failed exit, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(30);
const MAX_PAUSE: Duration = Duration::from_secs(600);

/// Returns how long a job waits for its next local worker after `failed_exits`
/// failed exits in a row, or `None` while it has had fewer than the limit.
fn pause_after(failed_exits: u32) -> Option<Duration> {
    let doublings = failed_exits.checked_sub(MAX_FAILED_EXITS)?.min(8);
    Some((FIRST_PAUSE * 2u32.pow(doublings)).min(MAX_PAUSE))
}

/// Settings applied to workers started after a reload; running workers keep theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub max_workers: u32,
    pub threads_per_worker: u32,
    pub lease_secs: u64,
}

/// A worker process and the id it leases under.
struct Worker {
    child: Child,
    worker_id: String,
}

#[derive(Default)]
struct State {
    children: HashMap<String, Vec<Worker>>,
    /// Failed exits in a row per job; a clean exit resets it.
    failed_exits: HashMap<String, u32>,
    /// When a job whose workers kept failing may start one again.
    paused_until: HashMap<String, Instant>,
    /// Workers that exited with a failure, until `take_lost` hands them over.
    lost: Vec<LostWorker>,
    /// Next array index per job, so indexes stay unique when workers are added.
    next_index: HashMap<String, u32>,
    launches: u64,
}

impl LocalBackend {
    /// Creates the backend; fails when the worker binary cannot be read.
    pub fn new(
        config: LocalBackendConfig,
        ledger: WorkerLedger,
        lease_secs: u64,
    ) -> anyhow::Result<Self> {
        let binary = &config.worker_binary;
        let bytes = std::fs::read(binary).map_err(|error| {
            anyhow::anyhow!(
                "failed to read backend.local.worker_binary {}: {error}; point it at the spillway-worker binary",
                binary.display()
            )
        })?;
        let settings = Settings {
            max_workers: config.max_workers,
            threads_per_worker: config.threads_per_worker,
            lease_secs,
        };
        Ok(Self {
            worker_digest: Sha256Hex::of(&bytes),
            config,
            ledger,
            settings: std::sync::RwLock::new(settings),
            state: Mutex::default(),
        })
    }

    pub fn worker_digest(&self) -> &Sha256Hex {
        &self.worker_digest
    }

    pub fn settings(&self) -> Settings {
        *self.settings.read().expect("settings lock")
    }

    /// Replaces the reloadable settings; workers started from now on use them.
    pub fn apply(&self, settings: Settings) {
        *self.settings.write().expect("settings lock") = settings;
    }

    fn command(&self, job_id: &str, launch_id: &str, index: u32) -> std::io::Result<Command> {
        let settings = self.settings();
        let mut command = Command::new(&self.config.worker_binary);
        command
            .arg("run")
            .env(env::JOB_ID, job_id)
            .env(env::BACKEND, "local")
            .env(env::ARRAY_ID, launch_id)
            .env(env::ARRAY_INDEX, index.to_string())
            .env(env::LEDGER_URL, &self.ledger.url)
            .env(env::LEDGER_PREFIX, &self.ledger.prefix)
            .env(env::CACHE_DIR, &self.config.cache_dir)
            .env(env::LEASE_SECS, settings.lease_secs.to_string())
            .env(env::GPU_SKU, &self.config.gpu_sku)
            // Workers must not talk to systemd in the daemon's name.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null());
        if let Some(path) = &self.ledger.password_file {
            command.env(env::LEDGER_PASSWORD_FILE, path);
        }
        if settings.threads_per_worker > 0 {
            command.env(env::THREADS, settings.threads_per_worker.to_string());
        }

        std::fs::create_dir_all(&self.config.log_dir)?;
        let log_path = self
            .config
            .log_dir
            .join(format!("{job_id}-{launch_id}-{index}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        command.stdout(log.try_clone()?).stderr(log);
        Ok(command)
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn check(&self, manifest: &Manifest) -> Result<(), String> {
        match (&manifest.worker.binary_sha256, &manifest.worker.image) {
            (Some(pinned), _) if pinned == &self.worker_digest => Ok(()),
            (Some(pinned), _) => Err(format!(
                "worker.binary_sha256 is {pinned}, but this site's worker binary {} is {}; \
                 pin the installed build (`spillway-worker digest` prints it)",
                self.config.worker_binary.display(),
                self.worker_digest
            )),
            (None, Some(image)) => Err(format!(
                "worker.image {image} needs a container backend, and only the local backend is enabled; \
                 pin worker.binary_sha256 instead"
            )),
            (None, None) => Err("worker names neither image nor binary_sha256".into()),
        }
    }

    fn gpu_sku(&self) -> &str {
        &self.config.gpu_sku
    }

    fn max_workers(&self) -> u32 {
        self.settings().max_workers
    }

    async fn launch(&self, request: LaunchRequest<'_>) -> Result<u32, BackendError> {
        let mut state = self.state.lock().await;
        let failed_exits = state.failed_exits.get(request.job_id).copied().unwrap_or(0);
        let now = Instant::now();
        if let Some(&until) = state.paused_until.get(request.job_id)
            && until > now
        {
            return Err(BackendError {
                backend: "local",
                operation: "start workers",
                job_id: request.job_id.to_string(),
                source: format!(
                    "its last {failed_exits} workers exited with an error, so the next starts in \
                     {} s; read the worker logs in {}",
                    (until - now).as_secs() + 1,
                    self.config.log_dir.display()
                )
                .into(),
            });
        }
        state.launches += 1;
        let launch_id = format!("{}-{}", std::process::id(), state.launches);
        let first_index = *state.next_index.get(request.job_id).unwrap_or(&0);
        let mut started = 0;

        for index in first_index..first_index + request.count {
            let spawned = self
                .command(request.job_id, &launch_id, index)
                .and_then(|mut command| command.spawn());
            match spawned {
                Ok(child) => {
                    let pid = child.id().unwrap_or_default();
                    let host = spillway_common::process::hostname();
                    let worker_id = env::worker_id("local", &launch_id, index, &host, pid);
                    state
                        .children
                        .entry(request.job_id.to_string())
                        .or_default()
                        .push(Worker { child, worker_id });
                    started += 1;
                }
                Err(source) => {
                    return Err(BackendError {
                        backend: "local",
                        operation: "start a worker",
                        job_id: request.job_id.to_string(),
                        source: Box::new(source),
                    });
                }
            }
        }
        state
            .next_index
            .insert(request.job_id.to_string(), first_index + request.count);
        info!(job_id = request.job_id, backend = "local", array_id = %launch_id, kernel = request.manifest.kernel.name(), workers = started, "workers started");
        Ok(started)
    }

    async fn running(&self, job_id: &str) -> u32 {
        let mut state = self.state.lock().await;
        state.reap_exited();
        state
            .children
            .get(job_id)
            .map_or(0, |children| children.len() as u32)
    }

    async fn running_total(&self) -> u32 {
        let mut state = self.state.lock().await;
        state.reap_exited();
        state
            .children
            .values()
            .map(|children| children.len() as u32)
            .sum()
    }

    async fn take_lost(&self) -> Vec<LostWorker> {
        let mut state = self.state.lock().await;
        state.reap_exited();
        std::mem::take(&mut state.lost)
    }
}

impl State {
    /// Forgets exited workers, logging and counting the ones that failed, and keeps
    /// those for `take_lost`.
    fn reap_exited(&mut self) {
        for (job_id, children) in self.children.iter_mut() {
            children.retain_mut(|Worker { child, worker_id }| match child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) if status.success() => {
                    self.failed_exits.remove(job_id);
                    self.paused_until.remove(job_id);
                    false
                }
                Ok(Some(status)) => {
                    warn!(job_id, backend = "local", worker_id = %worker_id, status = %status, "worker exited with an error");
                    let failed_exits = self.failed_exits.entry(job_id.clone()).or_default();
                    *failed_exits += 1;
                    if let Some(pause) = pause_after(*failed_exits) {
                        warn!(job_id, backend = "local", failed_exits = *failed_exits, pause_secs = pause.as_secs(), "workers keep exiting with an error; the next starts after a pause");
                        self.paused_until
                            .insert(job_id.clone(), Instant::now() + pause);
                    }
                    self.lost.push(LostWorker {
                        job_id: job_id.clone(),
                        worker_id: worker_id.clone(),
                        reason: format!("worker {worker_id} exited with {status}"),
                    });
                    false
                }
                Err(error) => {
                    warn!(job_id, backend = "local", error = %error, "failed to check a worker process");
                    false
                }
            });
        }
        self.children.retain(|_, children| !children.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_after_doubles_to_cap() {
        assert_eq!(pause_after(0), None);
        assert_eq!(pause_after(MAX_FAILED_EXITS - 1), None);
        let pauses: Vec<u64> = (MAX_FAILED_EXITS..MAX_FAILED_EXITS + 7)
            .map(|failed| pause_after(failed).unwrap().as_secs())
            .collect();
        assert_eq!(pauses, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(pause_after(u32::MAX), Some(MAX_PAUSE));
    }
}
