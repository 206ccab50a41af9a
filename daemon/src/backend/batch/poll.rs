//! Polling: one DescribeJobs round per region and reconcile pass, and what the
//! backend does with the responses.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_batch::types::JobDetail;
use spillway_common::process::error_chain;
use tracing::{debug, warn};

use super::arrays::{ArrayRef, Observed, elements};
use super::limits::TripReason;
use super::{BatchBackend, NAME, NO_CAPACITY_REASON, UNSEEN_GRACE};

/// The observation of one array by one poll.
pub(super) struct Poll {
    pub(super) array: ArrayRef,
    pub(super) observed: Observed,
    pub(super) ended: bool,
    /// No element has started, and the array is older than `start_timeout_secs`.
    pub(super) stuck: bool,
}

impl BatchBackend {
    /// Polls one region's arrays, or returns `None` when the region is not polled:
    /// it is skipped, no longer configured, or its poll failed. Those arrays keep
    /// their last observation. A failed poll skips the region for the cool-down, so
    /// polling adds no load to a failing region.
    pub(super) async fn poll_region(&self, region_name: &str, ids: &[String]) -> Option<Vec<Poll>> {
        let Some(region) = self.region(region_name) else {
            debug!(
                backend = NAME,
                region = region_name,
                arrays = ids.len(),
                "worker arrays in a region that is no longer configured are not observed"
            );
            return None;
        };
        if region.unavailable().is_some() {
            return None;
        }
        let details = match region.describe(ids).await {
            Ok(details) => details,
            Err(error) => {
                warn!(backend = NAME, region = region_name, error = %error_chain(&error), "failed to poll worker arrays; keeping the last observation");
                region.trip(error.failure.trip_reason());
                return None;
            }
        };
        let polls = details
            .iter()
            .filter_map(|detail| self.poll(region_name, detail))
            .collect();
        Some(polls)
    }

    fn poll(&self, region: &str, detail: &JobDetail) -> Option<Poll> {
        let array = ArrayRef {
            region: region.to_string(),
            batch_job_id: detail.job_id()?.to_string(),
        };
        let queue = detail
            .job_queue()
            .and_then(|arn| self.queue_index(region, arn));
        let elements = elements(detail);
        let age = detail.created_at().map(|created_ms| {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |now| now.as_millis() as i64);
            Duration::from_millis(now_ms.saturating_sub(created_ms).max(0) as u64)
        });
        let timeout = Duration::from_secs(self.config.start_timeout_secs);
        let stuck =
            !elements.ended && elements.started == 0 && age.is_some_and(|age| age >= timeout);

        Some(Poll {
            array,
            observed: Observed {
                queue,
                workers: elements.workers,
            },
            ended: elements.ended,
            stuck,
        })
    }

    /// Stores what the polls observed and the arrays per job from the ledger.
    pub(super) async fn apply_polls(
        &self,
        arrays_by_job: HashMap<String, Vec<ArrayRef>>,
        polled: Vec<ArrayRef>,
        polls: Vec<Poll>,
    ) {
        let mut state = self.state.lock().await;

        let mut seen = HashSet::new();
        for poll in polls {
            seen.insert(poll.array.clone());
            state.unseen.remove(&poll.array);
            if poll.ended {
                state.ended.insert(poll.array.clone());
            }
            state.observed.insert(poll.array, poll.observed);
        }
        // A polled array that the region no longer returns has ended, once its grace
        // after submission has passed.
        for array in polled.into_iter().filter(|array| !seen.contains(array)) {
            let in_grace = state
                .unseen
                .get(&array)
                .is_some_and(|unseen| unseen.submitted.elapsed() < UNSEEN_GRACE);
            if !in_grace {
                state.unseen.remove(&array);
                state.ended.insert(array);
            }
        }

        // Keep the submissions of this pass that the ledger read did not include.
        let mut merged = arrays_by_job;
        for (job_id, arrays) in &state.arrays_by_job {
            for array in arrays {
                if state.unseen.contains_key(array) {
                    let entry = merged.entry(job_id.clone()).or_default();
                    if !entry.contains(array) {
                        entry.push(array.clone());
                    }
                }
            }
        }

        // Forget arrays of jobs that are no longer running here, such as jobs that
        // another daemon finished.
        let tracked: HashSet<ArrayRef> = merged.values().flatten().cloned().collect();
        state.observed.retain(|array, _| tracked.contains(array));
        state.ended.retain(|array| tracked.contains(array));
        state.arrays_by_job = merged;
    }

    /// Terminates an array that found no capacity and skips its region.
    pub(super) async fn end_stuck_array(&self, array: &ArrayRef) {
        warn!(backend = NAME, region = %array.region, batch_job_id = %array.batch_job_id, timeout_secs = self.config.start_timeout_secs, "no element of a worker array started in time; terminating it");
        self.terminate("*", array, NO_CAPACITY_REASON).await;
        if let Some(region) = self.region(&array.region) {
            region.trip(TripReason::NoCapacity);
        }
        self.state.lock().await.ended.insert(array.clone());
    }
}
