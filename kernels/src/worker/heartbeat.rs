//! Lease heartbeats on a thread of their own.
//!
//! The kernel runs long libtorch calls on the worker's main thread. Heartbeats use a
//! separate OS thread with its own single-threaded runtime and Redis connection, so no
//! kernel call can delay them.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use spillway_common::ledger::{Heartbeat, Ledger};
use tracing::{debug, warn};

use super::WorkerConfig;

/// The tasks a worker holds, as `(task_id, attempt)`: the one its kernel computes and
/// the one whose result is being stored.
type HeldTasks = Arc<Mutex<Vec<(String, u32)>>>;

/// A handle to the held leases that a task finishing on its own can keep, to stop
/// the heartbeats of its lease the moment the ledger has its completion.
#[derive(Clone)]
pub struct HeldLeases(HeldTasks);

impl HeldLeases {
    /// Stops extending this task's lease. A heartbeat for a completed task would find
    /// it no longer leased and warn of a lost lease.
    pub fn release(&self, task_id: &str, attempt: u32) {
        let mut held = self.0.lock().expect("heartbeat state lock");
        held.retain(|(held_id, held_attempt)| held_id != task_id || *held_attempt != attempt);
    }
}

/// Handle to the heartbeat thread.
pub struct Heartbeats {
    held: HeldTasks,
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeats {
    /// Starts the thread; it beats every third of the lease length.
    pub fn start(config: &WorkerConfig) -> anyhow::Result<Self> {
        let held: HeldTasks = Arc::default();
        let (stop, stopped) = mpsc::channel();
        let config = config.clone();
        let thread_held = held.clone();

        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || beat_until_stopped(config, thread_held, stopped))
            .context("failed to start the heartbeat thread")?;

        Ok(Self {
            held,
            stop,
            thread: Some(thread),
        })
    }

    /// Makes the next heartbeats extend this task's lease too.
    pub fn hold(&self, task_id: &str, attempt: u32) {
        let mut held = self.held.lock().expect("heartbeat state lock");
        held.push((task_id.to_string(), attempt));
    }

    /// Returns a handle that releases held leases.
    pub fn leases(&self) -> HeldLeases {
        HeldLeases(self.held.clone())
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn beat_until_stopped(config: WorkerConfig, held: HeldTasks, stopped: mpsc::Receiver<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            warn!(error = %error, "failed to start the heartbeat runtime; leases will expire");
            return;
        }
    };
    let ledger = match runtime.block_on(Ledger::connect(&config.ledger_url, &config.ledger_prefix))
    {
        Ok(ledger) => ledger,
        Err(error) => {
            warn!(error = %error, "heartbeat thread failed to connect; leases will expire");
            return;
        }
    };
    let interval = (config.lease / 3).max(Duration::from_millis(100));
    // Tasks whose lost lease was already reported.
    let mut lost: Vec<(String, u32)> = Vec::new();

    loop {
        match stopped.recv_timeout(interval) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let current = held.lock().expect("heartbeat state lock").clone();
        lost.retain(|task| current.contains(task));
        if current.is_empty() {
            beat(&runtime, &ledger, &config, None);
        }
        for task in current {
            let outcome = beat(&runtime, &ledger, &config, Some((&task.0, task.1)));
            // Warn once per task; the attempt goes on and its completion decides.
            if outcome == Some(Heartbeat::Lost) && !lost.contains(&task) {
                warn!(job_id = %config.job_id, task_id = %task.0, "lease lost; the result may be a duplicate");
                lost.push(task);
            }
        }
    }
}

/// Extends the worker's registration and the lease of `task`, if any. Returns the
/// outcome, or `None` when the ledger could not be reached.
fn beat(
    runtime: &tokio::runtime::Runtime,
    ledger: &Ledger,
    config: &WorkerConfig,
    task: Option<(&str, u32)>,
) -> Option<Heartbeat> {
    let beat =
        runtime.block_on(ledger.heartbeat(&config.job_id, &config.worker_id, config.lease, task));
    match beat {
        Ok(outcome) => {
            debug!(job_id = %config.job_id, outcome = ?outcome, "heartbeat");
            Some(outcome)
        }
        Err(error) => {
            warn!(job_id = %config.job_id, error = %error, "heartbeat failed; retrying next interval");
            None
        }
    }
}
