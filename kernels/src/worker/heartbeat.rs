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

/// The task a worker holds: `(task_id, attempt)`.
type Held = Arc<Mutex<Option<(String, u32)>>>;

/// Handle to the heartbeat thread.
pub struct Heartbeats {
    held: Held,
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeats {
    /// Starts the thread; it beats every third of the lease length.
    pub fn start(config: &WorkerConfig) -> anyhow::Result<Self> {
        let held: Held = Arc::default();
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

    /// Makes the next heartbeats extend this task's lease.
    pub fn hold(&self, task_id: &str, attempt: u32) {
        *self.held.lock().expect("heartbeat state lock") = Some((task_id.to_string(), attempt));
    }

    /// Stops extending the current task's lease.
    pub fn release(&self) {
        *self.held.lock().expect("heartbeat state lock") = None;
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn beat_until_stopped(config: WorkerConfig, held: Held, stopped: mpsc::Receiver<()>) {
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
    let mut lost_task: Option<String> = None;

    loop {
        match stopped.recv_timeout(interval) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let current = held.lock().expect("heartbeat state lock").clone();
        let task = current
            .as_ref()
            .map(|(task_id, attempt)| (task_id.as_str(), *attempt));
        let beat = runtime.block_on(ledger.heartbeat(
            &config.job_id,
            &config.worker_id,
            config.lease,
            task,
        ));

        match beat {
            Ok(Heartbeat::Lost) => {
                let task_id = task.map(|(id, _)| id.to_string());
                // Warn once per task; the attempt goes on and its completion decides.
                if lost_task != task_id {
                    warn!(job_id = %config.job_id, task_id = ?task_id, "lease lost; the result may be a duplicate");
                    lost_task = task_id;
                }
            }
            Ok(outcome) => debug!(job_id = %config.job_id, outcome = ?outcome, "heartbeat"),
            Err(error) => {
                warn!(job_id = %config.job_id, error = %error, "heartbeat failed; retrying next interval")
            }
        }
    }
}
