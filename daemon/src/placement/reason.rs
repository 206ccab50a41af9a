//! Decision reasons: a bounded set of labels for the `reason` metric label, and a
//! sentence for logs.

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// The cause of one decision, for one job on one backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Nothing to start: every task is leased or done.
    NoQueuedTasks { workers: u32 },
    /// The backend takes no requests, such as while its circuit breaker is open.
    BackendUnavailable,
    /// New pool workers take queued tasks.
    PoolFill { started: u32, queued: u64 },
    /// The pool has no free slot for this job.
    PoolFull { queued: u64 },
    /// Workers that are requested, or running without a lease, will take every
    /// queued task.
    WorkersCoverQueue { workers: u32, queued: u64 },
    /// The job has as many workers as its cap allows.
    JobCap { cap: u32 },
    /// The pool finishes the job by its deadline (or, without one, within the drain
    /// time), so nothing spills.
    PoolMeetsDeadline { tasks: u64, pool_workers: u32 },
    /// No deadline, and the queue wait is under the bound, so nothing spills.
    QueueWaitWithinBound { wait_secs: f64, bound_secs: f64 },
    /// The share of the work that the pool cannot finish by the deadline spills here.
    SpillForDeadline {
        pool_tasks: u64,
        pool_workers: u32,
        spilled_tasks: u64,
        backend: String,
        workers: u32,
    },
    /// No deadline, but the queue wait passed the bound, so work spills here.
    SpillForQueueWait {
        wait_secs: f64,
        bound_secs: f64,
        spilled_tasks: u64,
        backend: String,
        workers: u32,
    },
    /// Workers already running or requested finish the job in time.
    SpillCovered { workers: u32 },
    /// A small increase is deferred by hysteresis; the deadline is met without it.
    Held {
        increase: u32,
        step: u32,
        age_secs: f64,
    },
    /// A cap stops requests here, but the deadline is still met without the safety
    /// margin.
    Capped { limit: Limit },
    /// A new worker here would start too late to finish one task before the deadline.
    TooSlowToStart { startup_secs: f64, task_secs: f64 },
    /// The planned workers cannot finish every task by the deadline, so the job gets
    /// the maximum workers the caps allow.
    DeadlineAtRisk {
        tasks: u64,
        finishable: u64,
        workers: u32,
        limit: Option<Limit>,
    },
    /// More workers run here than the deadline needs; they exit when no task is left.
    ScaleInByExit { workers: u32 },
}

/// The limit that stopped a request from growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Every queued task already has a worker: requested, or running without a lease.
    QueuedTasks,
    /// The job's worker cap.
    JobCap,
    /// The backend's capacity or free workers.
    BackendCapacity,
    /// The burst worker cap of the backend's region.
    RegionCap,
    /// The burst worker cap over all regions.
    BurstCap,
    /// The burst spend per hour cap.
    HourlySpend,
    /// The burst spend per day cap.
    DailySpend,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Limit::QueuedTasks => "every queued task has a worker",
            Limit::JobCap => "job worker cap",
            Limit::BackendCapacity => "backend capacity",
            Limit::RegionCap => "region worker cap",
            Limit::BurstCap => "burst worker cap",
            Limit::HourlySpend => "hourly spend cap",
            Limit::DailySpend => "daily spend cap",
        };
        f.write_str(text)
    }
}

impl Reason {
    /// Every label that `as_label` returns, for tests and dashboards.
    pub const LABELS: [&'static str; 16] = [
        "no_queued_tasks",
        "backend_unavailable",
        "pool_fill",
        "pool_full",
        "workers_cover_queue",
        "job_cap",
        "pool_meets_deadline",
        "queue_wait_within_bound",
        "spill_for_deadline",
        "spill_for_queue_wait",
        "spill_covered",
        "held",
        "capped",
        "too_slow_to_start",
        "deadline_at_risk",
        "scale_in_by_exit",
    ];

    /// Stable snake_case name from a fixed set, for the `reason` metric label.
    pub fn as_label(&self) -> &'static str {
        let index = match self {
            Reason::NoQueuedTasks { .. } => 0,
            Reason::BackendUnavailable => 1,
            Reason::PoolFill { .. } => 2,
            Reason::PoolFull { .. } => 3,
            Reason::WorkersCoverQueue { .. } => 4,
            Reason::JobCap { .. } => 5,
            Reason::PoolMeetsDeadline { .. } => 6,
            Reason::QueueWaitWithinBound { .. } => 7,
            Reason::SpillForDeadline { .. } => 8,
            Reason::SpillForQueueWait { .. } => 9,
            Reason::SpillCovered { .. } => 10,
            Reason::Held { .. } => 11,
            Reason::Capped { .. } => 12,
            Reason::TooSlowToStart { .. } => 13,
            Reason::DeadlineAtRisk { .. } => 14,
            Reason::ScaleInByExit { .. } => 15,
        };
        Self::LABELS[index]
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoQueuedTasks { workers } => write!(
                f,
                "no task is queued; the {} workers here exit after their leased tasks",
                group(*workers)
            ),
            Reason::BackendUnavailable => {
                f.write_str("backend unavailable (circuit breaker open); nothing requested")
            }
            Reason::PoolFill { started, queued } => write!(
                f,
                "starts {} pool workers for {} queued tasks",
                group(*started),
                group(*queued)
            ),
            Reason::PoolFull { queued } => write!(
                f,
                "no free pool slot for the {} queued tasks",
                group(*queued)
            ),
            Reason::WorkersCoverQueue { workers, queued } => write!(
                f,
                "the job's {} workers, running or requested, cover its {} queued tasks",
                group(*workers),
                group(*queued)
            ),
            Reason::JobCap { cap } => {
                write!(f, "the job has its maximum of {} workers", group(*cap))
            }
            Reason::PoolMeetsDeadline {
                tasks,
                pool_workers,
            } => write!(
                f,
                "pool finishes all {} tasks in time at {} workers; nothing spills",
                group(*tasks),
                group(*pool_workers)
            ),
            Reason::QueueWaitWithinBound {
                wait_secs,
                bound_secs,
            } => write!(
                f,
                "no deadline, and the oldest queued task waited {}, within the {} bound; nothing spills",
                secs(*wait_secs),
                secs(*bound_secs)
            ),
            Reason::SpillForDeadline {
                pool_tasks,
                pool_workers,
                spilled_tasks,
                backend,
                workers,
            } => write!(
                f,
                "pool finishes {} tasks by the deadline at {} workers; {} spill to {backend} at {} workers",
                group(*pool_tasks),
                group(*pool_workers),
                group(*spilled_tasks),
                group(*workers)
            ),
            Reason::SpillForQueueWait {
                wait_secs,
                bound_secs,
                spilled_tasks,
                backend,
                workers,
            } => write!(
                f,
                "no deadline, and the oldest queued task waited {}, over the {} bound; {} tasks spill to {backend} at {} workers",
                secs(*wait_secs),
                secs(*bound_secs),
                group(*spilled_tasks),
                group(*workers)
            ),
            Reason::SpillCovered { workers: 0 } => {
                f.write_str("workers on other backends finish the job in time; none requested here")
            }
            Reason::SpillCovered { workers } => write!(
                f,
                "the {} workers here and those on other backends finish the job in time; no more requested",
                group(*workers)
            ),
            Reason::Held {
                increase,
                step,
                age_secs,
            } => write!(
                f,
                "holds: {} more workers are below the {}-worker step and the last increase was {} ago; the deadline is met without them",
                group(*increase),
                group(*step),
                secs(*age_secs)
            ),
            Reason::Capped { limit } => write!(
                f,
                "the {limit} stops requests here; the deadline is met, but without the safety margin"
            ),
            Reason::TooSlowToStart {
                startup_secs,
                task_secs,
            } => write!(
                f,
                "a new worker here starts in {}, too late to finish a {} task by the deadline",
                secs(*startup_secs),
                secs(*task_secs)
            ),
            Reason::DeadlineAtRisk {
                tasks,
                finishable,
                workers,
                limit,
            } => {
                write!(
                    f,
                    "deadline at risk: {} of {} tasks can finish in time; requests the maximum allowed here, {} workers",
                    group(*finishable),
                    group(*tasks),
                    group(*workers)
                )?;
                match limit {
                    Some(limit) => write!(f, " (limited by the {limit})"),
                    None => Ok(()),
                }
            }
            Reason::ScaleInByExit { workers } => write!(
                f,
                "the {} workers here are more than the deadline needs; they exit when no task is left",
                group(*workers)
            ),
        }
    }
}

/// Serialises as `{"label": "...", "message": "..."}`.
impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("Reason", 2)?;
        state.serialize_field("label", self.as_label())?;
        state.serialize_field("message", &self.to_string())?;
        state.end()
    }
}

/// Formats a count with thousands separators: 1188 → "1,188".
fn group(value: impl Into<u64>) -> String {
    let digits = value.into().to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// Formats a duration in whole seconds: 900.4 → "900 s".
fn secs(value: f64) -> String {
    format!("{} s", group(value.max(0.0).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_inserts_separators() {
        assert_eq!(group(0u64), "0");
        assert_eq!(group(812u64), "812");
        assert_eq!(group(1188u64), "1,188");
        assert_eq!(group(1_000_000u64), "1,000,000");
    }

    #[test]
    fn spill_sentence_names_backend() {
        let reason = Reason::SpillForDeadline {
            pool_tasks: 812,
            pool_workers: 4,
            spilled_tasks: 1188,
            backend: "batch/us-east-1/q".into(),
            workers: 12,
        };
        assert_eq!(reason.as_label(), "spill_for_deadline");
        assert_eq!(
            reason.to_string(),
            "pool finishes 812 tasks by the deadline at 4 workers; 1,188 spill to batch/us-east-1/q at 12 workers"
        );
    }
}
