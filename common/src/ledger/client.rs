//! Async client for the ledger, shared by the daemon and the worker.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::connection::LedgerConnection;
use super::keys::Keys;
use super::scripts;
use crate::manifest::Manifest;
use crate::task::TaskSpec;

/// Tasks created per script call during admission, so one call never blocks Redis
/// for long on a job with many tasks.
const ADMIT_CHUNK: usize = 500;

/// Errors from ledger operations, each naming the operation and the ids involved.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("invalid ledger URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("failed to connect to the ledger at {url}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("ledger operation {operation} failed for job {job_id}")]
    Redis {
        operation: &'static str,
        job_id: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("ledger returned an invalid {what} for job {job_id}: {detail}")]
    Corrupt {
        what: &'static str,
        job_id: String,
        detail: String,
    },
}

/// Result of admitting a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The job and all of its tasks were created by this call.
    Created,
    /// The job already existed (a redelivered message); `state` is its current state.
    /// An `admitting` job found here was completed by this call.
    Existing { state: String },
}

/// A task leased by a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub task_id: String,
    pub attempt: u32,
    pub spec: TaskSpec,
    pub queued_at_ms: i64,
    pub leased_at_ms: i64,
}

#[derive(Deserialize)]
struct RawLease {
    task_id: String,
    attempt: u32,
    spec: String,
    queued_at_ms: i64,
    leased_at_ms: i64,
}

/// Outcome of a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The worker's lease was extended.
    Extended,
    /// The worker has no task, so only its registration was extended.
    Idle,
    /// The lease expired or another attempt owns the task; the result will be a duplicate
    /// unless this attempt completes first.
    Lost,
}

/// Outcome of a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The first completion of this task.
    Completed,
    /// The first completion, and the job's last open task.
    CompletedLast,
    /// The task had already been completed; this one was counted and discarded.
    Duplicate,
}

/// Cause of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The input is wrong (bad SHA-256, unreadable shard); retrying cannot help.
    Data,
    /// Infrastructure or kernel failure; the task is queued again within max attempts.
    Retryable,
}

/// Counts from one reaper pass over one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct ReapReport {
    pub expired: u64,
    pub requeued: u64,
    pub dead: u64,
    pub workers_alive: u64,
}

/// A job's record: state, counters and manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobRecord {
    pub job_id: String,
    pub name: String,
    pub state: String,
    pub manifest_json: String,
    pub priority: i64,
    pub max_attempts: u64,
    pub tasks_total: u64,
    pub queued: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub duplicates: u64,
    pub lease_expiries: u64,
    pub retries: u64,
    pub admitted_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub artefact_uri: Option<String>,
    /// JSON summary written when the job finished.
    pub summary: Option<String>,
    /// The current round of a training job, once its first round has begun.
    pub round: Option<RoundPointer>,
}

/// The position of a training job: its current round and the files that round runs on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoundPointer {
    pub round: u32,
    /// The weights file the round's tasks run on, with its SHA-256.
    pub weights_uri: String,
    pub weights_sha256: String,
    /// The optimizer state the previous round wrote; empty for round 0.
    pub optimizer_uri: String,
    pub optimizer_sha256: String,
    /// When the round's tasks were created.
    pub started_at_ms: i64,
}

/// Outcome of [`Ledger::begin_round`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundBegin {
    /// The round's tasks exist and the job is running again.
    Running,
    /// The job's state, from which this round cannot begin: another daemon began it
    /// and the job moved on, or the job was cancelled.
    Stale(String),
}

impl JobRecord {
    /// Returns whether the job reached `succeeded`, `failed` or `cancelled`.
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }

    /// Parses the stored manifest.
    pub fn manifest(&self) -> Result<Manifest, LedgerError> {
        serde_json::from_str(&self.manifest_json).map_err(|error| LedgerError::Corrupt {
            what: "manifest",
            job_id: self.job_id.clone(),
            detail: error.to_string(),
        })
    }
}

/// One task's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    pub spec: TaskSpec,
    pub state: String,
    pub attempt: u32,
    pub reason: Option<String>,
    pub result_uri: Option<String>,
}

/// Cap on the observation list, so a daemon that is down for a while loses old
/// samples instead of letting the list grow without bound.
const MAX_OBSERVATIONS: isize = 100_000;

/// One finished attempt as seen by a worker, drained by the daemon into histograms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskObservation {
    pub kernel: String,
    pub backend: String,
    /// `succeeded`, `duplicate`, `data_error` or `retryable`.
    pub outcome: String,
    /// Time from leasing to completion.
    pub runtime_secs: f64,
    /// Worker time charged to the attempt: shorter than `runtime_secs` when the
    /// worker computed its next task while this one was stored. `None` from workers
    /// older than this field, whose attempts did not overlap.
    #[serde(default)]
    pub worker_secs: Option<f64>,
    /// Time the task spent queued before this lease.
    pub wait_secs: f64,
    /// GPU model of the worker, or `cpu`; empty from workers older than this field.
    #[serde(default)]
    pub gpu_sku: String,
    /// GPUs allocated to the worker (0 on the CPU).
    #[serde(default)]
    pub gpus: u32,
    /// Digest of the model the kernel ran, which keys the learned task durations.
    #[serde(default)]
    pub model_sha256: String,
}

impl TaskObservation {
    /// Returns the worker time charged to the attempt, or its runtime when the worker
    /// did not report one.
    pub fn worker_secs(&self) -> f64 {
        self.worker_secs.unwrap_or(self.runtime_secs)
    }
}

/// Worker time that a job used on one kind of worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEntry {
    pub backend: String,
    pub gpu_sku: String,
    pub gpus_per_worker: u32,
    /// Worker time summed over attempts, in seconds, as [`TaskObservation::worker_secs`]
    /// defines it.
    pub worker_secs: f64,
}

impl UsageEntry {
    /// GPU time: worker time times GPUs per worker.
    pub fn gpu_secs(&self) -> f64 {
        self.worker_secs * f64::from(self.gpus_per_worker)
    }
}

/// Connection to the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    conn: LedgerConnection,
    keys: Keys,
}

impl Ledger {
    /// Connects to one Redis server (`redis://[:password@]host:port/db`) or to a Redis
    /// Cluster (`redis+cluster://[:password@]host:port/?addr=host:port`). The module
    /// documentation lists every URL form.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LedgerError> {
        let conn = LedgerConnection::connect(url).await?;
        Ok(Self {
            conn,
            keys: Keys::new(prefix),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Returns a clone of the connection for commands outside the ledger API, such as
    /// intake streams. On a cluster, each command and pipeline must keep its keys in one
    /// hash slot.
    pub fn connection(&self) -> LedgerConnection {
        self.conn.clone()
    }

    /// Creates a job and all of its tasks, then opens it for leasing and lists it as
    /// active. Safe to repeat: a redelivered manifest finds the job and adds nothing,
    /// and a job left half-admitted by a crash is completed.
    pub async fn admit(
        &self,
        job_id: &str,
        manifest: &Manifest,
        tasks: &[TaskSpec],
    ) -> Result<Admission, LedgerError> {
        let mut conn = self.conn.clone();
        let manifest_json = serde_json::to_string(manifest).expect("manifest serializes");
        let redis_error = |operation| {
            move |source| LedgerError::Redis {
                operation,
                job_id: job_id.to_string(),
                source,
            }
        };

        let state: String = scripts::CREATE_JOB
            .key(self.keys.job(job_id))
            .arg(manifest_json)
            .arg(tasks.len())
            .arg(manifest.max_attempts())
            .arg(manifest.priority)
            .arg(&manifest.name)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("create_job"))?;

        if state == "created" || state == "admitting" {
            self.add_tasks(job_id, tasks).await?;
            // A training job is admitted without tasks; the daemon creates each round's.
            let open_state = if manifest.kernel.is_training() {
                "preparing"
            } else {
                "running"
            };
            let opened: String = scripts::OPEN_JOB
                .key(self.keys.job(job_id))
                .arg(open_state)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error("open_job"))?;
            if opened != open_state {
                return Err(LedgerError::Corrupt {
                    what: "job state after admission",
                    job_id: job_id.to_string(),
                    detail: opened,
                });
            }
        }

        // Listing the job is a separate step because the active-job index is a global
        // key outside the job's hash slot. A crash before it leaves the message
        // unacknowledged, and the redelivery lists the job then.
        if !matches!(state.as_str(), "succeeded" | "failed") {
            let admitted_ms = now_ms();
            let _: () = conn
                .zadd(self.keys.active_jobs(), job_id, admitted_ms)
                .await
                .map_err(redis_error("list_active"))?;
        }

        if state == "created" {
            Ok(Admission::Created)
        } else {
            Ok(Admission::Existing { state })
        }
    }

    async fn add_tasks(&self, job_id: &str, tasks: &[TaskSpec]) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();

        for chunk in tasks.chunks(ADMIT_CHUNK) {
            let mut invocation = scripts::ADD_TASKS.prepare_invoke();
            invocation.key(self.keys.job(job_id));
            invocation.key(self.keys.queue(job_id));
            for task in chunk {
                invocation.key(self.keys.task(job_id, &task.task_id));
            }
            for task in chunk {
                invocation.arg(serde_json::to_string(task).expect("task spec serializes"));
            }
            for task in chunk {
                invocation.arg(&task.task_id);
            }

            let _created: u64 =
                invocation
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|source| LedgerError::Redis {
                        operation: "add_tasks",
                        job_id: job_id.to_string(),
                        source,
                    })?;
        }
        Ok(())
    }

    /// Begins a training round. Records the files it runs on (`start`, whose
    /// `started_at_ms` is not read) and the record of the `previous` round. Then
    /// creates the round's `tasks` and opens the job for leasing. Round 0
    /// begins from `preparing`, round k + 1 from `reducing` after round k. Safe to
    /// repeat after a crash: tasks that exist are kept, and a record is listed once.
    pub async fn begin_round(
        &self,
        job_id: &str,
        start: &RoundPointer,
        previous: Option<&crate::train::RoundRecord>,
        tasks: &[TaskSpec],
    ) -> Result<RoundBegin, LedgerError> {
        let mut conn = self.conn.clone();
        let record = previous
            .map(|record| serde_json::to_string(record).expect("round record serializes"))
            .unwrap_or_default();
        let outcome: String = scripts::BEGIN_ROUND
            .key(self.keys.job(job_id))
            .key(self.keys.rounds(job_id))
            .arg(start.round)
            .arg(tasks.len())
            .arg(&start.weights_uri)
            .arg(&start.weights_sha256)
            .arg(&start.optimizer_uri)
            .arg(&start.optimizer_sha256)
            .arg(record)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("begin_round", job_id, source))?;
        if outcome != "begun" && outcome != "resume" {
            return Ok(RoundBegin::Stale(outcome));
        }

        self.add_tasks(job_id, tasks).await?;
        let opened: String = scripts::OPEN_JOB
            .key(self.keys.job(job_id))
            .arg("running")
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("open_round", job_id, source))?;
        if opened == "running" {
            self.announce_round(job_id, tasks.len()).await?;
            Ok(RoundBegin::Running)
        } else {
            Ok(RoundBegin::Stale(opened))
        }
    }

    /// Leaves one token per task of a round that opened, so that as many waiting
    /// workers wake at once. Tokens of an earlier round are dropped first, and all
    /// expire after an hour.
    async fn announce_round(&self, job_id: &str, tasks: usize) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let key = self.keys.round_open(job_id);
        let tokens = vec!["open"; tasks.max(1)];
        let _: () = redis::pipe()
            .del(&key)
            .ignore()
            .rpush(&key, tokens)
            .ignore()
            .expire(&key, 3600)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("announce_round", job_id, source))?;
        Ok(())
    }

    /// Waits up to `timeout` for a round of the job to open and returns whether one
    /// did. Blocks the connection, so call it only while nothing else uses this ledger.
    pub async fn wait_round(&self, job_id: &str, timeout: Duration) -> Result<bool, LedgerError> {
        let mut conn = self.conn.clone();
        let popped: Option<(String, String)> = conn
            .blpop(self.keys.round_open(job_id), block_secs(timeout))
            .await
            .map_err(|source| self.redis_error("wait_round", job_id, source))?;
        Ok(popped.is_some())
    }

    /// Reads the records of a training job's reduced rounds, oldest first. The last
    /// round of a finished job is in its envelope only.
    pub async fn rounds(
        &self,
        job_id: &str,
    ) -> Result<Vec<crate::train::RoundRecord>, LedgerError> {
        let mut conn = self.conn.clone();
        let lines: Vec<String> = conn
            .lrange(self.keys.rounds(job_id), 0, -1)
            .await
            .map_err(|source| self.redis_error("read_rounds", job_id, source))?;
        lines
            .iter()
            .map(|line| {
                serde_json::from_str(line).map_err(|error| LedgerError::Corrupt {
                    what: "round record",
                    job_id: job_id.to_string(),
                    detail: error.to_string(),
                })
            })
            .collect()
    }

    /// Wakes the daemons' reconcile loops for `job_id`. Best effort: a lost wake only
    /// delays the job to the next pass.
    pub async fn wake(&self, job_id: &str) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let key = self.keys.wake();
        let _: () = redis::pipe()
            .lpush(&key, job_id)
            .ignore()
            .ltrim(&key, 0, 999)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("wake", job_id, source))?;
        Ok(())
    }

    /// Waits up to `timeout` for a wake and returns the woken job id, or `None` on
    /// timeout. Blocks the connection, so call it on a ledger of its own.
    pub async fn wait_wake(&self, timeout: Duration) -> Result<Option<String>, LedgerError> {
        let mut conn = self.conn.clone();
        let popped: Option<(String, String)> = conn
            .blpop(self.keys.wake(), block_secs(timeout))
            .await
            .map_err(|source| self.redis_error("wait_wake", "*", source))?;
        Ok(popped.map(|(_, job_id)| job_id))
    }

    /// Leases the next queued task of a job for `lease`, or returns `None` when no task
    /// is queued.
    pub async fn lease(
        &self,
        job_id: &str,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Option<Lease>, LedgerError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = scripts::LEASE
            .key(self.keys.job(job_id))
            .key(self.keys.queue(job_id))
            .key(self.keys.leases(job_id))
            .key(self.keys.workers(job_id))
            .arg(worker_id)
            .arg(duration_ms(lease))
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("lease", job_id, source))?;

        let Some(raw) = raw else {
            return Ok(None);
        };
        let corrupt = |detail: String| LedgerError::Corrupt {
            what: "lease",
            job_id: job_id.to_string(),
            detail,
        };
        let parsed: RawLease = serde_json::from_str(&raw).map_err(|e| corrupt(e.to_string()))?;
        let spec: TaskSpec =
            serde_json::from_str(&parsed.spec).map_err(|e| corrupt(e.to_string()))?;

        Ok(Some(Lease {
            task_id: parsed.task_id,
            attempt: parsed.attempt,
            spec,
            queued_at_ms: parsed.queued_at_ms,
            leased_at_ms: parsed.leased_at_ms,
        }))
    }

    /// Extends a worker's registration and, when `task` is given as `(task_id, attempt)`,
    /// the lease of that task.
    pub async fn heartbeat(
        &self,
        job_id: &str,
        worker_id: &str,
        lease: Duration,
        task: Option<(&str, u32)>,
    ) -> Result<Heartbeat, LedgerError> {
        let mut conn = self.conn.clone();
        let (task_id, attempt) = task.unwrap_or(("", 0));
        let outcome: String = scripts::HEARTBEAT
            .key(self.keys.job(job_id))
            .key(self.keys.leases(job_id))
            .key(self.keys.workers(job_id))
            .arg(worker_id)
            .arg(duration_ms(lease))
            .arg(task_id)
            .arg(attempt)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("heartbeat", job_id, source))?;

        match outcome.as_str() {
            "ok" => Ok(Heartbeat::Extended),
            "idle" => Ok(Heartbeat::Idle),
            _ => Ok(Heartbeat::Lost),
        }
    }

    /// Records a task's completion. The first completion wins.
    pub async fn complete(
        &self,
        job_id: &str,
        task_id: &str,
        worker_id: &str,
        attempt: u32,
        result_uri: &str,
    ) -> Result<Completion, LedgerError> {
        let mut conn = self.conn.clone();
        let outcome: String = scripts::COMPLETE
            .key(self.keys.job(job_id))
            .key(self.keys.queue(job_id))
            .key(self.keys.leases(job_id))
            .arg(task_id)
            .arg(worker_id)
            .arg(attempt)
            .arg(result_uri)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("complete", job_id, source))?;

        match outcome.as_str() {
            "completed" => Ok(Completion::Completed),
            "completed_last" => {
                // The job can be reduced now; a daemon waiting for wakes starts at once.
                // Losing the wake only delays the reduction to the next pass.
                let _ = self.wake(job_id).await;
                Ok(Completion::CompletedLast)
            }
            "duplicate" => Ok(Completion::Duplicate),
            other => Err(LedgerError::Corrupt {
                what: "completion outcome",
                job_id: job_id.to_string(),
                detail: other.to_string(),
            }),
        }
    }

    /// Ends a failed attempt and returns the task's new state (`queued`, `failed`,
    /// `dead`), or `stale` when the attempt no longer owned the task.
    pub async fn fail(
        &self,
        job_id: &str,
        task_id: &str,
        worker_id: &str,
        attempt: u32,
        kind: FailureKind,
        reason: &str,
    ) -> Result<String, LedgerError> {
        let mut conn = self.conn.clone();
        let kind = match kind {
            FailureKind::Data => "data",
            FailureKind::Retryable => "retryable",
        };
        scripts::FAIL
            .key(self.keys.job(job_id))
            .key(self.keys.queue(job_id))
            .key(self.keys.leases(job_id))
            .arg(task_id)
            .arg(worker_id)
            .arg(attempt)
            .arg(kind)
            .arg(reason)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("fail", job_id, source))
    }

    /// Queues again, or marks dead, up to `limit` tasks whose lease expired.
    pub async fn reap(&self, job_id: &str, limit: u32) -> Result<ReapReport, LedgerError> {
        let mut conn = self.conn.clone();
        let raw: String = scripts::REAP
            .key(self.keys.job(job_id))
            .key(self.keys.queue(job_id))
            .key(self.keys.leases(job_id))
            .key(self.keys.workers(job_id))
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("reap", job_id, source))?;

        serde_json::from_str(&raw).map_err(|error| LedgerError::Corrupt {
            what: "reap report",
            job_id: job_id.to_string(),
            detail: error.to_string(),
        })
    }

    /// Ends the leases that `worker_id` has on the job's tasks, because its backend
    /// saw the worker exit: the next [`Ledger::reap`] queues those tasks again (or
    /// marks them dead) with `reason`, instead of waiting for their deadline. Returns
    /// the number of leases ended.
    pub async fn end_worker_leases(
        &self,
        job_id: &str,
        worker_id: &str,
        reason: &str,
    ) -> Result<u64, LedgerError> {
        let mut conn = self.conn.clone();
        scripts::END_WORKER_LEASES
            .key(self.keys.job(job_id))
            .key(self.keys.leases(job_id))
            .key(self.keys.workers(job_id))
            .arg(worker_id)
            .arg(reason)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("end_worker_leases", job_id, source))
    }

    /// Records a reduced job's final state, moves it to the finished index and returns
    /// the state it has afterwards.
    pub async fn finish_job(
        &self,
        job_id: &str,
        state: &str,
        artefact_uri: Option<&str>,
        summary: &str,
    ) -> Result<String, LedgerError> {
        let mut conn = self.conn.clone();
        let final_state: String = scripts::FINISH_JOB
            .key(self.keys.job(job_id))
            .arg(state)
            .arg(artefact_uri.unwrap_or(""))
            .arg(summary)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("finish_job", job_id, source))?;

        // Two commands, because on a cluster the two indexes may live in different hash
        // slots. A crash between them leaves the job in both indexes, and the reconcile
        // loop calls this method again for a finished job that is still active.
        let finished_ms = now_ms();
        let _: () = conn
            .zadd(self.keys.finished_jobs(), job_id, finished_ms)
            .await
            .map_err(|source| self.redis_error("list_finished", job_id, source))?;
        let _: () = conn
            .zrem(self.keys.active_jobs(), job_id)
            .await
            .map_err(|source| self.redis_error("unlist_active", job_id, source))?;
        Ok(final_state)
    }

    /// Cancels a job that has not finished. The reconcile loop then ends the job's
    /// leftover workers and moves it to the finished index. Returns the job's state
    /// afterwards (`cancelled`, or the earlier final state).
    pub async fn cancel_job(&self, job_id: &str, reason: &str) -> Result<String, LedgerError> {
        let mut conn = self.conn.clone();
        let state: String = scripts::CANCEL_JOB
            .key(self.keys.job(job_id))
            .key(self.keys.queue(job_id))
            .arg(reason)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("cancel_job", job_id, source))?;
        Ok(state)
    }

    /// Sets or clears the drain flag: while it is set, daemons admit no messages and
    /// start no workers, and running workers finish their tasks.
    pub async fn set_draining(&self, draining: bool) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let key = self.keys.drain();
        let outcome: redis::RedisResult<()> = if draining {
            conn.set(&key, now_ms()).await
        } else {
            conn.del(&key).await
        };
        outcome.map_err(|source| self.redis_error("set_draining", "*", source))
    }

    /// Returns whether the drain flag is set.
    pub async fn is_draining(&self) -> Result<bool, LedgerError> {
        let mut conn = self.conn.clone();
        conn.exists(self.keys.drain())
            .await
            .map_err(|source| self.redis_error("read_draining", "*", source))
    }

    /// Reads a job's record, or `None` when the ledger has no such job.
    pub async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, LedgerError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = conn
            .hgetall(self.keys.job(job_id))
            .await
            .map_err(|source| self.redis_error("read_job", job_id, source))?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(job_record(job_id, &fields)))
    }

    /// Reads every task record of a job, in task order.
    pub async fn tasks(&self, job_id: &str, total: u64) -> Result<Vec<TaskRecord>, LedgerError> {
        self.tasks_range(job_id, 0, total).await
    }

    /// Reads `count` task records from the job's task number `first` on, in task order.
    pub async fn tasks_range(
        &self,
        job_id: &str,
        first: u64,
        count: u64,
    ) -> Result<Vec<TaskRecord>, LedgerError> {
        let mut conn = self.conn.clone();
        let mut records = Vec::with_capacity(count as usize);
        let ids: Vec<String> = (first..first + count)
            .map(|number| crate::task::task_id(number as u32))
            .collect();

        for chunk in ids.chunks(ADMIT_CHUNK) {
            let mut pipe = redis::pipe();
            for task_id in chunk {
                pipe.hgetall(self.keys.task(job_id, task_id));
            }
            let rows: Vec<HashMap<String, String>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|source| self.redis_error("read_tasks", job_id, source))?;
            for (task_id, fields) in chunk.iter().zip(rows) {
                records.push(self.task_record(job_id, task_id, &fields)?);
            }
        }
        Ok(records)
    }

    fn task_record(
        &self,
        job_id: &str,
        task_id: &str,
        fields: &HashMap<String, String>,
    ) -> Result<TaskRecord, LedgerError> {
        let corrupt = |detail: String| LedgerError::Corrupt {
            what: "task record",
            job_id: job_id.to_string(),
            detail: format!("{task_id}: {detail}"),
        };
        let spec_json = fields
            .get("spec")
            .ok_or_else(|| corrupt("missing spec".into()))?;
        let spec = serde_json::from_str(spec_json).map_err(|e| corrupt(e.to_string()))?;

        Ok(TaskRecord {
            spec,
            state: fields.get("state").cloned().unwrap_or_default(),
            attempt: parse_field(fields, "attempt"),
            reason: fields.get("reason").or(fields.get("last_error")).cloned(),
            result_uri: fields.get("result_uri").cloned(),
        })
    }

    /// Lists the ids of jobs that are not finished, oldest first.
    pub async fn active_jobs(&self) -> Result<Vec<String>, LedgerError> {
        let mut conn = self.conn.clone();
        conn.zrange(self.keys.active_jobs(), 0, -1)
            .await
            .map_err(|source| self.redis_error("list_active", "*", source))
    }

    /// Lists up to `limit` finished jobs, newest first.
    pub async fn finished_jobs(&self, limit: isize) -> Result<Vec<String>, LedgerError> {
        let mut conn = self.conn.clone();
        conn.zrevrange(self.keys.finished_jobs(), 0, limit - 1)
            .await
            .map_err(|source| self.redis_error("list_finished", "*", source))
    }

    /// Counts live workers of a job: those whose last heartbeat has not expired.
    pub async fn live_workers(&self, job_id: &str) -> Result<u64, LedgerError> {
        let mut conn = self.conn.clone();
        // Heartbeat deadlines are in the time of the Redis node that owns the job's slot,
        // so a script compares them with that node's clock.
        scripts::COUNT_WORKERS
            .key(self.keys.workers(job_id))
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("count_workers", job_id, source))
    }

    /// Adds to the burst spend of a UTC day and returns the new total. The key expires
    /// after a few days.
    pub async fn add_burst_spend(&self, day: &str, amount: f64) -> Result<f64, LedgerError> {
        let mut conn = self.conn.clone();
        let key = self.keys.burst_spend(day);
        let (total, _): (f64, bool) = redis::pipe()
            .cmd("INCRBYFLOAT")
            .arg(&key)
            .arg(amount)
            .expire(&key, 3 * 86_400)
            .query_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("add_burst_spend", day, source))?;
        Ok(total)
    }

    /// Returns the burst spend of a UTC day so far.
    pub async fn burst_spend(&self, day: &str) -> Result<f64, LedgerError> {
        let mut conn = self.conn.clone();
        let total: Option<f64> = conn
            .get(self.keys.burst_spend(day))
            .await
            .map_err(|source| self.redis_error("burst_spend", day, source))?;
        Ok(total.unwrap_or(0.0))
    }

    /// Returns how long the task at the head of a job's queue has waited for a worker,
    /// or `None` when nothing is queued. A retried task counts from its requeue.
    pub async fn queue_wait(&self, job_id: &str) -> Result<Option<Duration>, LedgerError> {
        let mut conn = self.conn.clone();
        let wait_ms: Option<u64> = scripts::QUEUE_WAIT
            .key(self.keys.job(job_id))
            .key(self.keys.queue(job_id))
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("queue_wait", job_id, source))?;
        Ok(wait_ms.map(Duration::from_millis))
    }

    /// Adds one attempt's runtime to its job's usage, which prices the job. Every
    /// attempt counts, because a duplicate or a failed attempt costs as much.
    pub async fn record_usage(&self, job_id: &str, entry: &UsageEntry) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let field = format!(
            "{}|{}|{}",
            entry.backend, entry.gpu_sku, entry.gpus_per_worker
        );
        let _: f64 = redis::cmd("HINCRBYFLOAT")
            .arg(self.keys.usage(job_id))
            .arg(field)
            .arg(entry.worker_secs)
            .query_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("record_usage", job_id, source))?;
        Ok(())
    }

    /// Returns the worker time a job has used so far, one entry per kind of worker,
    /// sorted by backend and GPU.
    pub async fn usage(&self, job_id: &str) -> Result<Vec<UsageEntry>, LedgerError> {
        let mut conn = self.conn.clone();
        let fields: std::collections::BTreeMap<String, f64> = conn
            .hgetall(self.keys.usage(job_id))
            .await
            .map_err(|source| self.redis_error("usage", job_id, source))?;
        Ok(fields
            .into_iter()
            .filter_map(|(field, worker_secs)| {
                // Backend names have no `|`; a GPU model name might.
                let (backend, rest) = field.split_once('|')?;
                let (gpu_sku, gpus) = rest.rsplit_once('|')?;
                Some(UsageEntry {
                    backend: backend.to_string(),
                    gpu_sku: gpu_sku.to_string(),
                    gpus_per_worker: gpus.parse().ok()?,
                    worker_secs,
                })
            })
            .collect())
    }

    /// Records an observation for the daemon's metrics; failures only lose a sample.
    pub async fn push_observation(&self, observation: &TaskObservation) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(observation).expect("observation serializes");
        let _: () = redis::pipe()
            .lpush(self.keys.observations(), json)
            .ltrim(self.keys.observations(), 0, MAX_OBSERVATIONS - 1)
            .query_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("push_observation", "*", source))?;
        Ok(())
    }

    /// Removes and returns up to `limit` observations, oldest first.
    pub async fn drain_observations(
        &self,
        limit: usize,
    ) -> Result<Vec<TaskObservation>, LedgerError> {
        let mut conn = self.conn.clone();
        let count = std::num::NonZeroUsize::new(limit.max(1)).expect("limit is at least 1");
        let raw: Option<Vec<String>> = conn
            .rpop(self.keys.observations(), Some(count))
            .await
            .map_err(|source| self.redis_error("drain_observations", "*", source))?;
        // An entry that does not parse came from an incompatible worker; skip it.
        Ok(raw
            .unwrap_or_default()
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect())
    }

    /// Removes a worker's registration when it exits, so placement does not count it.
    pub async fn deregister(&self, job_id: &str, worker_id: &str) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: u64 = conn
            .zrem(self.keys.workers(job_id), worker_id)
            .await
            .map_err(|source| self.redis_error("deregister", job_id, source))?;
        Ok(())
    }

    /// Records a worker array that a backend submitted, so that a restarted daemon
    /// can still find the arrays of each job.
    pub async fn record_array(
        &self,
        job_id: &str,
        backend: &str,
        array_id: &str,
        size: u32,
    ) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: u64 = conn
            .hset(
                self.keys.arrays(job_id),
                format!("{backend}:{array_id}"),
                size,
            )
            .await
            .map_err(|source| self.redis_error("record_array", job_id, source))?;
        Ok(())
    }

    /// Lists the arrays that `backend` submitted for a job, as `(array id, size)`.
    pub async fn arrays(
        &self,
        job_id: &str,
        backend: &str,
    ) -> Result<Vec<(String, u32)>, LedgerError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, u32> = conn
            .hgetall(self.keys.arrays(job_id))
            .await
            .map_err(|source| self.redis_error("read_arrays", job_id, source))?;
        let prefix = format!("{backend}:");
        let mut arrays: Vec<(String, u32)> = fields
            .into_iter()
            .filter_map(|(field, size)| Some((field.strip_prefix(&prefix)?.to_string(), size)))
            .collect();
        arrays.sort();
        Ok(arrays)
    }

    /// Forgets an array whose elements have all ended.
    pub async fn forget_array(
        &self,
        job_id: &str,
        backend: &str,
        array_id: &str,
    ) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: u64 = conn
            .hdel(self.keys.arrays(job_id), format!("{backend}:{array_id}"))
            .await
            .map_err(|source| self.redis_error("forget_array", job_id, source))?;
        Ok(())
    }

    /// Takes the job's reduce lock for `ttl` unless another daemon holds it.
    pub async fn try_lock_reduce(
        &self,
        job_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, LedgerError> {
        let mut conn = self.conn.clone();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(duration_ms(ttl)));
        let taken: Option<String> = conn
            .set_options(self.keys.reduce_lock(job_id), owner, options)
            .await
            .map_err(|source| self.redis_error("lock_reduce", job_id, source))?;
        Ok(taken.is_some())
    }

    /// Moves a training job that cannot begin its first round (its model does not
    /// match its digest) from `preparing` to `reducing`, so it can be concluded.
    pub async fn close_preparing(&self, job_id: &str) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: i64 = scripts::CLOSE_PREPARING
            .key(self.keys.job(job_id))
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("close_preparing", job_id, source))?;
        Ok(())
    }

    /// Releases the job's reduce lock if `owner` still holds it, so the job's next
    /// round can be reduced without waiting for the lock to expire.
    pub async fn unlock_reduce(&self, job_id: &str, owner: &str) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: i64 = scripts::UNLOCK
            .key(self.keys.reduce_lock(job_id))
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| self.redis_error("unlock_reduce", job_id, source))?;
        Ok(())
    }

    fn redis_error(
        &self,
        operation: &'static str,
        job_id: &str,
        source: redis::RedisError,
    ) -> LedgerError {
        LedgerError::Redis {
            operation,
            job_id: job_id.to_string(),
            source,
        }
    }
}

fn job_record(job_id: &str, fields: &HashMap<String, String>) -> JobRecord {
    let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
    let optional = |name: &str| fields.get(name).filter(|value| !value.is_empty()).cloned();

    JobRecord {
        job_id: job_id.to_string(),
        name: text("name"),
        state: text("state"),
        manifest_json: text("manifest"),
        priority: parse_field(fields, "priority"),
        max_attempts: parse_field(fields, "max_attempts"),
        tasks_total: parse_field(fields, "tasks_total"),
        queued: parse_field(fields, "n_queued"),
        leased: parse_field(fields, "n_leased"),
        succeeded: parse_field(fields, "n_succeeded"),
        failed: parse_field(fields, "n_failed"),
        dead: parse_field(fields, "n_dead"),
        duplicates: parse_field(fields, "duplicates"),
        lease_expiries: parse_field(fields, "lease_expiries"),
        retries: parse_field(fields, "retries"),
        admitted_at_ms: parse_field(fields, "admitted_at_ms"),
        finished_at_ms: optional("finished_at_ms").and_then(|value| value.parse().ok()),
        artefact_uri: optional("artefact_uri"),
        summary: optional("summary"),
        round: optional("round").map(|round| RoundPointer {
            round: round.parse().unwrap_or_default(),
            weights_uri: text("round_weights_uri"),
            weights_sha256: text("round_weights_sha256"),
            optimizer_uri: text("optimizer_uri"),
            optimizer_sha256: text("optimizer_sha256"),
            started_at_ms: parse_field(fields, "round_started_at_ms"),
        }),
    }
}

fn parse_field<T: std::str::FromStr + Default>(fields: &HashMap<String, String>, name: &str) -> T {
    fields
        .get(name)
        .and_then(|value| value.parse().ok())
        .unwrap_or_default()
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Converts a blocking command's timeout to seconds. Redis blocks forever on a
/// timeout of 0, and a timeout under a millisecond can round to 0, so the result is
/// at least 1 ms.
fn block_secs(timeout: Duration) -> f64 {
    timeout.max(Duration::from_millis(1)).as_secs_f64()
}

/// Milliseconds since the Unix epoch on this host; used only for index scores.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Replaces the password in a Redis URL with `***` for logs and errors. When the URL
/// does not parse, the whole user information before the last `@` is replaced.
pub fn redact_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => match url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => url.to_string(),
            },
            None => url.to_string(),
        },
    }
}
