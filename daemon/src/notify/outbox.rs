//! The outbox: the loop that sends the notices of finished jobs, at least once, and
//! retries those that failed. Its state lives in the ledger, so any daemon carries on
//! where another stopped.
//!
//! Keys, all under the ledger prefix and each used alone in a command, so that they
//! work on a Redis Cluster:
//! - `notify:pending`, a sorted set of job ids scored by the time of their next send
//!   attempt in milliseconds;
//! - `notify:done`, a sorted set of the job ids whose notice was sent (or that need
//!   none), scored by that time, trimmed after `retry_for_secs`;
//! - `notify:cursor`, the finish time up to which the finished index was read.
//!
//! Jobs enter `pending` two ways. The reconcile loop hands each finished job id over
//! at once ([`super::Notifiers::job_finished`]). Every pass also reads the ledger's
//! finished index from the cursor on, which finds the jobs whose daemon stopped
//! between finishing them and the handover. A daemon *claims* a pending job by moving
//! its next attempt `retry_interval_secs` plus `timeout_secs` ahead, atomically and
//! only when it is due. A send ends within `timeout_secs`, so two daemons never send
//! the same notice at the same time. A job moves to `done`
//! after its notice was accepted, and a failed send stays pending until the retry. A
//! daemon that dies after the send and before the move sends the notice again.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use spillway_common::ledger::{Ledger, LedgerConnection, now_ms};
use spillway_common::process::error_chain;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{JobNotice, Notifiers};
use crate::config::NotifyConfig;

/// Pending jobs claimed per pass.
const SEND_BATCH: isize = 100;
/// Finished jobs read from the index per pass.
const DISCOVER_BATCH: isize = 10_000;
/// The finished index is read again this far behind the cursor, because daemons with
/// clocks this far apart score finish times out of order.
const CLOCK_SKEW_MS: i64 = 60_000;

/// Claims a pending job: moves its score to ARGV[3] when it is due (at most ARGV[2]).
/// Returns 1 when claimed.
const CLAIM_SCRIPT: &str = r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
";

/// Errors of the outbox's ledger commands.
#[derive(Debug, thiserror::Error)]
#[error("notification outbox {operation} failed")]
pub struct OutboxError {
    operation: &'static str,
    #[source]
    source: redis::RedisError,
}

fn ledger_error(operation: &'static str) -> impl Fn(redis::RedisError) -> OutboxError {
    move |source| OutboxError { operation, source }
}

/// The outbox loop; see the module documentation.
pub struct Outbox {
    notifiers: Arc<Notifiers>,
    ledger: Ledger,
    conn: LedgerConnection,
    finished: mpsc::Receiver<String>,
    keys: OutboxKeys,
    retry_interval: Duration,
    /// How far a claim moves a job's next attempt: the retry interval plus the send
    /// timeout, so that no claim ends while its send may still run.
    claim_ms: i64,
    retry_for_ms: i64,
    claim: redis::Script,
}

/// Key names of the outbox.
struct OutboxKeys {
    pending: String,
    done: String,
    cursor: String,
    finished_jobs: String,
}

impl Outbox {
    pub(super) fn new(
        notifiers: Arc<Notifiers>,
        ledger: Ledger,
        config: &NotifyConfig,
        finished: mpsc::Receiver<String>,
    ) -> Self {
        let prefix = ledger.keys().prefix().to_string();
        let keys = OutboxKeys {
            pending: format!("{prefix}:notify:pending"),
            done: format!("{prefix}:notify:done"),
            cursor: format!("{prefix}:notify:cursor"),
            finished_jobs: ledger.keys().finished_jobs(),
        };
        Self {
            notifiers,
            conn: ledger.connection(),
            ledger,
            finished,
            keys,
            retry_interval: Duration::from_secs(config.retry_interval_secs),
            claim_ms: ((config.retry_interval_secs + config.timeout_secs) * 1000) as i64,
            retry_for_ms: (config.retry_for_secs * 1000) as i64,
            claim: redis::Script::new(CLAIM_SCRIPT),
        }
    }

    /// Sends notices until `shutdown`: at once for each job handed over, and every
    /// `retry_interval_secs` for the jobs found in the finished index and the retries.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if !self.notifiers.is_enabled() {
            return;
        }
        info!(
            retry_interval_secs = self.retry_interval.as_secs(),
            "notification outbox started"
        );
        let mut ticks = tokio::time::interval(self.retry_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let handed_over = tokio::select! {
                () = shutdown.cancelled() => break,
                job_id = self.finished.recv() => job_id,
                _ = ticks.tick() => None,
            };
            let outcome = match handed_over {
                Some(job_id) => self.enqueue(&[job_id]).await,
                None => self.discover().await,
            };
            if let Err(error) = outcome {
                warn!(error = %error_chain(&error), "notification outbox failed to update the ledger; retrying next pass");
                continue;
            }
            if let Err(error) = self.send_due().await {
                warn!(error = %error_chain(&error), "notification outbox failed to read the ledger; retrying next pass");
            }
        }
        info!("notification outbox stopped");
    }

    /// Adds jobs to `pending`, due now, unless they are pending or done already.
    async fn enqueue(&mut self, job_ids: &[String]) -> Result<(), OutboxError> {
        if job_ids.is_empty() {
            return Ok(());
        }
        let done: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(&self.keys.done)
            .arg(job_ids)
            .query_async(&mut self.conn)
            .await
            .map_err(ledger_error("read_done"))?;
        let now = now_ms();
        let new: Vec<(i64, &String)> = job_ids
            .iter()
            .zip(done)
            .filter(|(_, done)| done.is_none())
            .map(|(job_id, _)| (now, job_id))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let _: u64 = redis::cmd("ZADD")
            .arg(&self.keys.pending)
            .arg("NX")
            .arg(new)
            .query_async(&mut self.conn)
            .await
            .map_err(ledger_error("add_pending"))?;
        Ok(())
    }

    /// Reads the jobs finished since the cursor into `pending`, and trims `done`.
    async fn discover(&mut self) -> Result<(), OutboxError> {
        let now = now_ms();
        let cursor: Option<i64> = self
            .conn
            .get(&self.keys.cursor)
            .await
            .map_err(ledger_error("read_cursor"))?;
        // The first daemon starts at the present, so enabling notifications does not
        // notify every job of the past.
        let Some(cursor) = cursor else {
            let _: bool = self
                .conn
                .set_nx(&self.keys.cursor, now)
                .await
                .map_err(ledger_error("write_cursor"))?;
            return Ok(());
        };

        let from = cursor
            .saturating_sub(CLOCK_SKEW_MS)
            .max(now - self.retry_for_ms);
        let finished: Vec<(String, f64)> = self
            .conn
            .zrangebyscore_limit_withscores(
                &self.keys.finished_jobs,
                from,
                "+inf",
                0,
                DISCOVER_BATCH,
            )
            .await
            .map_err(ledger_error("read_finished"))?;
        let last = finished.iter().map(|(_, score)| *score as i64).max();
        let job_ids: Vec<String> = finished.into_iter().map(|(job_id, _)| job_id).collect();
        self.enqueue(&job_ids).await?;
        if let Some(last) = last.filter(|last| *last > cursor) {
            // Several daemons may write here; a cursor moved back only rereads jobs
            // that `done` or `pending` already has.
            let _: () = self
                .conn
                .set(&self.keys.cursor, last)
                .await
                .map_err(ledger_error("write_cursor"))?;
        }

        let _: u64 = self
            .conn
            .zrembyscore(
                &self.keys.done,
                "-inf",
                now - self.retry_for_ms - CLOCK_SKEW_MS,
            )
            .await
            .map_err(ledger_error("trim_done"))?;
        Ok(())
    }

    /// Claims and sends up to [`SEND_BATCH`] due notices.
    async fn send_due(&mut self) -> Result<(), OutboxError> {
        let now = now_ms();
        let due: Vec<String> = self
            .conn
            .zrangebyscore_limit(&self.keys.pending, "-inf", now, 0, SEND_BATCH)
            .await
            .map_err(ledger_error("read_pending"))?;
        let retry_at = now + self.claim_ms;
        for job_id in due {
            let claimed: i64 = self
                .claim
                .key(&self.keys.pending)
                .arg(&job_id)
                .arg(now)
                .arg(retry_at)
                .invoke_async(&mut self.conn)
                .await
                .map_err(ledger_error("claim"))?;
            if claimed == 1 {
                self.send_one(&job_id).await?;
            }
        }
        Ok(())
    }

    /// Sends one claimed job's notice and records the outcome. A failed send only
    /// logs, because the claim already set the retry time.
    async fn send_one(&mut self, job_id: &str) -> Result<(), OutboxError> {
        let done: Option<f64> = self
            .conn
            .zscore(&self.keys.done, job_id)
            .await
            .map_err(ledger_error("read_done"))?;
        if done.is_some() {
            return self.finish(job_id, false).await;
        }
        let job = match self.ledger.job(job_id).await {
            Ok(Some(job)) if job.is_finished() => job,
            Ok(_) => {
                warn!(
                    job_id,
                    "finished job not found in the ledger; no notice is sent"
                );
                return self.finish(job_id, false).await;
            }
            Err(error) => {
                warn!(job_id, error = %error_chain(&error), "failed to read a finished job; retrying its notice later");
                return Ok(());
            }
        };
        let manifest = match job.manifest() {
            Ok(manifest) => manifest,
            Err(error) => {
                error!(job_id, error = %error_chain(&error), "finished job has an unreadable manifest; no notice is sent");
                return self.finish(job_id, true).await;
            }
        };
        let Some(target) = self.notifiers.target_of(&manifest).map(String::from) else {
            return self.finish(job_id, true).await;
        };

        let finished_at = job.finished_at_ms.unwrap_or_else(now_ms);
        let notice = JobNotice::from_record(&job, manifest.labels.clone());
        match self.notifiers.send(&target, &notice).await {
            Ok(()) => {
                info!(job_id, target, state = %notice.state, "job notice sent");
                self.finish(job_id, true).await
            }
            Err(error) if now_ms() - finished_at > self.retry_for_ms => {
                error!(job_id, target, error = %error_chain(&error), "job notice not sent within retry_for_secs; giving up");
                self.finish(job_id, true).await
            }
            Err(error) => {
                warn!(job_id, target, error = %error_chain(&error), retry_in_secs = self.claim_ms / 1000, "failed to send a job notice; retrying");
                Ok(())
            }
        }
    }

    /// Removes a job from `pending` and, when `record` is set, adds it to `done`.
    async fn finish(&mut self, job_id: &str, record: bool) -> Result<(), OutboxError> {
        if record {
            let _: u64 = self
                .conn
                .zadd(&self.keys.done, job_id, now_ms())
                .await
                .map_err(ledger_error("add_done"))?;
        }
        let _: u64 = self
            .conn
            .zrem(&self.keys.pending, job_id)
            .await
            .map_err(ledger_error("remove_pending"))?;
        debug!(job_id, "job notice settled");
        Ok(())
    }
}
