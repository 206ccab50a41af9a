//! The arrays the Batch backend tracks, and the element counts that DescribeJobs
//! reports for them.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use aws_sdk_batch::types::{JobDetail, JobStatus};

/// Workers of a job or a queue, as the last poll saw them plus submissions that no
/// poll has seen yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Elements starting or running.
    pub running: u32,
    /// Elements submitted, pending or runnable.
    pub pending: u32,
}

impl WorkerCounts {
    /// Running and pending workers together.
    pub fn alive(&self) -> u32 {
        self.running + self.pending
    }

    pub(super) fn add(&mut self, other: WorkerCounts) {
        self.running += other.running;
        self.pending += other.pending;
    }
}

/// An array as recorded in the ledger: `<region>/<Batch job id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ArrayRef {
    pub(super) region: String,
    pub(super) batch_job_id: String,
}

impl ArrayRef {
    pub(super) fn parse(text: &str) -> Option<Self> {
        let (region, batch_job_id) = text.split_once('/')?;
        Some(Self {
            region: region.to_string(),
            batch_job_id: batch_job_id.to_string(),
        })
    }

    pub(super) fn ledger_id(&self) -> String {
        format!("{}/{}", self.region, self.batch_job_id)
    }
}

/// An array's elements from the last poll.
#[derive(Debug, Clone, Copy)]
pub(super) struct Observed {
    /// Index of the configured queue the array runs in, when the poll names one.
    pub(super) queue: Option<usize>,
    pub(super) workers: WorkerCounts,
}

/// An array that this daemon submitted and no poll has seen yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unseen {
    pub(super) queue: usize,
    pub(super) size: u32,
    pub(super) submitted: Instant,
}

#[derive(Default)]
pub(super) struct State {
    /// Arrays per job: the ledger's at the last refresh plus submissions since.
    pub(super) arrays_by_job: HashMap<String, Vec<ArrayRef>>,
    pub(super) observed: HashMap<ArrayRef, Observed>,
    pub(super) unseen: HashMap<ArrayRef, Unseen>,
    /// Arrays whose elements have all ended; they are not polled again.
    pub(super) ended: HashSet<ArrayRef>,
}

impl State {
    /// Returns the array's queue, when known, and its live elements.
    pub(super) fn array(&self, array: &ArrayRef) -> (Option<usize>, WorkerCounts) {
        if self.ended.contains(array) {
            return (None, WorkerCounts::default());
        }
        if let Some(unseen) = self.unseen.get(array) {
            let workers = WorkerCounts {
                running: 0,
                pending: unseen.size,
            };
            return (Some(unseen.queue), workers);
        }
        match self.observed.get(array) {
            Some(observed) => (observed.queue, observed.workers),
            None => (None, WorkerCounts::default()),
        }
    }

    pub(super) fn all_arrays(&self) -> impl Iterator<Item = &ArrayRef> {
        self.arrays_by_job.values().flatten()
    }
}

/// An array's elements from one DescribeJobs entry.
pub(super) struct Elements {
    pub(super) workers: WorkerCounts,
    /// Elements that have started, running or ended.
    pub(super) started: u32,
    pub(super) ended: bool,
}

/// Counts an array's elements from its status summary, or a plain job's from its
/// status. Elements that the summary does not count yet (Batch fills it in after
/// the parent job) count as pending while the parent has not ended.
pub(super) fn elements(detail: &JobDetail) -> Elements {
    let status = detail.status().cloned().unwrap_or(JobStatus::Submitted);
    let parent_ended = matches!(status, JobStatus::Succeeded | JobStatus::Failed);
    let array = detail.array_properties();
    let size = array.and_then(|array| array.size()).unwrap_or(0).max(0) as u32;

    if size == 0 {
        let (running, pending) = match status {
            JobStatus::Starting | JobStatus::Running => (1, 0),
            JobStatus::Succeeded | JobStatus::Failed => (0, 0),
            _ => (0, 1),
        };
        let started = u32::from(detail.started_at().is_some() || running == 1 || parent_ended);
        return Elements {
            workers: WorkerCounts { running, pending },
            started,
            ended: parent_ended,
        };
    }

    let count = |name: &str| -> u32 {
        array
            .and_then(|array| array.status_summary())
            .and_then(|summary| summary.get(name))
            .map_or(0, |count| (*count).max(0) as u32)
    };
    let running = count("STARTING") + count("RUNNING");
    let finished = count("SUCCEEDED") + count("FAILED");
    let pending = match parent_ended {
        true => 0,
        false => size.saturating_sub(running + finished),
    };
    Elements {
        workers: WorkerCounts { running, pending },
        started: running + finished,
        ended: parent_ended || finished >= size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_batch::types::ArrayPropertiesDetail;

    fn array_detail(status: JobStatus, size: i32, summary: &[(&str, i32)]) -> JobDetail {
        let mut properties = ArrayPropertiesDetail::builder().size(size);
        for (name, count) in summary {
            properties = properties.status_summary(*name, *count);
        }
        JobDetail::builder()
            .job_id("a1")
            .status(status)
            .array_properties(properties.build())
            .build()
    }

    #[test]
    fn summary_counts_running_and_pending() {
        let detail = array_detail(
            JobStatus::Pending,
            10,
            &[
                ("RUNNING", 3),
                ("STARTING", 1),
                ("RUNNABLE", 4),
                ("SUCCEEDED", 2),
            ],
        );

        let elements = elements(&detail);

        assert_eq!(
            elements.workers,
            WorkerCounts {
                running: 4,
                pending: 4
            }
        );
        assert_eq!(elements.started, 6);
        assert!(!elements.ended);
    }

    #[test]
    fn empty_summary_counts_all_pending() {
        let detail = array_detail(JobStatus::Pending, 5, &[]);

        let elements = elements(&detail);

        assert_eq!(
            elements.workers,
            WorkerCounts {
                running: 0,
                pending: 5
            }
        );
        assert_eq!(elements.started, 0);
    }

    #[test]
    fn ended_parent_has_no_workers() {
        let detail = array_detail(JobStatus::Failed, 5, &[("FAILED", 2), ("RUNNABLE", 3)]);

        let elements = elements(&detail);

        assert_eq!(elements.workers.alive(), 0);
        assert!(elements.ended);
    }

    #[test]
    fn plain_job_counts_by_status() {
        let running = JobDetail::builder().status(JobStatus::Running).build();
        let runnable = JobDetail::builder().status(JobStatus::Runnable).build();
        let done = JobDetail::builder().status(JobStatus::Succeeded).build();

        assert_eq!(
            elements(&running).workers,
            WorkerCounts {
                running: 1,
                pending: 0
            }
        );
        assert_eq!(
            elements(&runnable).workers,
            WorkerCounts {
                running: 0,
                pending: 1
            }
        );
        assert_eq!(elements(&runnable).started, 0);
        assert!(elements(&done).ended);
    }

    #[test]
    fn array_ref_round_trips() {
        let array = ArrayRef::parse("eu-west-1/4f0c-11").unwrap();

        assert_eq!(array.region, "eu-west-1");
        assert_eq!(array.batch_job_id, "4f0c-11");
        assert_eq!(array.ledger_id(), "eu-west-1/4f0c-11");
        assert!(ArrayRef::parse("no-slash").is_none());
    }
}
