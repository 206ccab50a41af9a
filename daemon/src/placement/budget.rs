//! The remainder of each limit while one pass hands out workers, job by job.

use std::collections::HashMap;

use super::reason::Limit;
use super::settings::PlacementSettings;
use super::snapshot::{BackendKind, BackendSnapshot, Snapshot};

/// Limits shared by all jobs in one pass.
pub(super) struct Budgets {
    /// New workers each backend can still take, by backend index.
    headroom: Vec<u32>,
    /// Burst workers left per capped region.
    region_left: HashMap<String, u32>,
    burst_left: Option<u32>,
    /// Burst spend rate left under the hourly cap, per hour.
    hourly_left: Option<f64>,
    /// Money left under the daily cap after holding the current burst rate for the
    /// lookahead.
    daily_left: Option<f64>,
    lookahead_hours: f64,
}

/// Limits of one job: queued tasks without a worker, and its own worker cap.
#[derive(Debug, Clone, Copy)]
pub(super) struct JobBudget {
    pub queue_left: u32,
    pub cap_left: u32,
}

impl JobBudget {
    pub fn take(&mut self, count: u32) {
        self.queue_left = self.queue_left.saturating_sub(count);
        self.cap_left = self.cap_left.saturating_sub(count);
    }
}

impl Budgets {
    /// Counts every backend's current workers, including those of jobs that are not
    /// in the snapshot, against its capacity and the caps.
    pub fn new(snapshot: &Snapshot, settings: &PlacementSettings) -> Self {
        let caps = &snapshot.caps;
        let mut headroom = Vec::with_capacity(snapshot.backends.len());
        let mut region_current: HashMap<&str, u32> = HashMap::new();
        let mut burst_current = 0u32;
        let mut burst_rate = 0.0;

        for backend in &snapshot.backends {
            let (current, requested) = totals(backend);
            let free = backend.free_workers.saturating_sub(requested);
            let room = backend.capacity_workers.saturating_sub(current);
            headroom.push(free.min(room));

            if backend.kind == BackendKind::Burst {
                burst_current = burst_current.saturating_add(current);
                burst_rate += f64::from(current) * backend.price_per_worker_hour;
                if let Some(region) = &backend.region {
                    *region_current.entry(region).or_default() += current;
                }
            }
        }

        let mut region_left = HashMap::new();
        for backend in &snapshot.backends {
            let Some(region) = &backend.region else {
                continue;
            };
            if let Some(cap) = caps.region_cap(region) {
                let current = region_current.get(region.as_str()).copied().unwrap_or(0);
                region_left.insert(region.clone(), cap.saturating_sub(current));
            }
        }

        // NOTE: the daily cap counts today's spend plus the current rate held for the
        // lookahead. Workers that run longer can pass the cap, since none is stopped.
        let lookahead_hours = settings.spend_lookahead_secs / 3600.0;
        Self {
            headroom,
            region_left,
            burst_left: caps
                .burst_workers
                .map(|cap| cap.saturating_sub(burst_current)),
            hourly_left: caps.spend_per_hour.map(|cap| cap - burst_rate),
            daily_left: caps
                .spend_per_day
                .map(|cap| cap - caps.spent_today - burst_rate * lookahead_hours),
            lookahead_hours,
        }
    }

    /// Returns how many of `want` new workers backend `index` may take for a job, and
    /// the limit that stopped it when fewer than `want`.
    pub fn allowed(
        &self,
        index: usize,
        backend: &BackendSnapshot,
        job: JobBudget,
        want: u32,
    ) -> (u32, Option<Limit>) {
        let mut count = want;
        let mut limit = None;
        let mut bound = |value: u32, which: Limit| {
            if value < count {
                count = value;
                limit = Some(which);
            }
        };

        bound(job.queue_left, Limit::QueuedTasks);
        bound(job.cap_left, Limit::JobCap);
        bound(self.headroom[index], Limit::BackendCapacity);
        if backend.kind == BackendKind::Pool {
            return (count, limit);
        }

        if let Some(left) = backend
            .region
            .as_ref()
            .and_then(|r| self.region_left.get(r))
        {
            bound(*left, Limit::RegionCap);
        }
        if let Some(left) = self.burst_left {
            bound(left, Limit::BurstCap);
        }
        let price = backend.price_per_worker_hour;
        if price > 0.0 {
            if let Some(left) = self.hourly_left {
                bound(workers_for(left, price), Limit::HourlySpend);
            }
            if let Some(left) = self.daily_left {
                bound(
                    workers_for(left, price * self.lookahead_hours),
                    Limit::DailySpend,
                );
            }
        }
        (count, limit)
    }

    /// Takes `count` new workers on backend `index` out of every limit.
    pub fn take(&mut self, index: usize, backend: &BackendSnapshot, count: u32) {
        self.headroom[index] = self.headroom[index].saturating_sub(count);
        if backend.kind == BackendKind::Pool || count == 0 {
            return;
        }

        if let Some(left) = backend
            .region
            .as_ref()
            .and_then(|r| self.region_left.get_mut(r))
        {
            *left = left.saturating_sub(count);
        }
        if let Some(left) = &mut self.burst_left {
            *left = left.saturating_sub(count);
        }
        let rate = f64::from(count) * backend.price_per_worker_hour;
        if let Some(left) = &mut self.hourly_left {
            *left -= rate;
        }
        if let Some(left) = &mut self.daily_left {
            *left -= rate * self.lookahead_hours;
        }
    }
}

/// Returns the workers running or requested on a backend, and those requested.
fn totals(backend: &BackendSnapshot) -> (u32, u32) {
    let mut current = 0u32;
    let mut requested = 0u32;
    for count in backend.workers.values() {
        current = current.saturating_add(count.current());
        requested = requested.saturating_add(count.requested);
    }
    (current, requested)
}

/// Whole workers at `cost` each that fit in `money`.
fn workers_for(money: f64, cost: f64) -> u32 {
    if money <= 0.0 {
        return 0;
    }
    // The small epsilon keeps 3.0 / 1.0 from rounding down to 2.
    let count = (money / cost + 1e-9).floor();
    if count >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        count as u32
    }
}
