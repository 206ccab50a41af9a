//! Measures placement passes per second with many jobs in flight. Prints one JSON
//! object on stdout.
//!
//! Run in release: `cargo run --release -p spillway --example placement_bench`.
//! Each pass plans every job on every backend from one snapshot, as the reconcile
//! loop does once per interval. Every pass reads the same snapshot, which does not
//! show the requests of earlier passes, so every pass sizes its requests again.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;

// The placement module uses nothing else from the daemon, which is a binary crate,
// so the benchmark compiles it on its own.
#[allow(dead_code, unused_imports)]
#[path = "../src/placement/mod.rs"]
mod placement;

use placement::{
    BackendKind, BackendSnapshot, Caps, JobSnapshot, PlacementSettings, Placer, Snapshot,
    WorkerCount,
};

#[derive(Parser)]
struct Args {
    /// Jobs in flight.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Seconds of timed passes per round.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Timed rounds; the output lists each and their median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// A xorshift generator, so the snapshot is the same on every run.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

const NOW: f64 = 1_800_000_000.0;

fn main() {
    let args = Args::parse();
    let snapshot = build_snapshot(args.jobs);
    let mut placer = Placer::new(PlacementSettings::default());

    let first = placer.place(&snapshot);
    let requests: u32 = first
        .requests()
        .map(|(_, decision)| decision.to_request())
        .sum();
    let mut reasons: BTreeMap<&str, u32> = BTreeMap::new();
    for job in &first.jobs {
        for decision in &job.decisions {
            *reasons.entry(decision.reason.as_label()).or_default() += 1;
        }
    }
    let decisions_per_pass = args.jobs * snapshot.backends.len();

    let mut rounds = Vec::new();
    for _ in 0..args.rounds {
        let budget = Duration::from_secs_f64(args.seconds);
        let started = Instant::now();
        let mut passes = 0u64;
        while started.elapsed() < budget {
            black_box(placer.place(black_box(&snapshot)));
            passes += 1;
        }
        rounds.push(passes as f64 / started.elapsed().as_secs_f64());
    }
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];

    let report = serde_json::json!({
        "jobs": args.jobs,
        "backends": snapshot.backends.len(),
        "decisions_per_pass": decisions_per_pass,
        "workers_requested_by_first_pass": requests,
        "decisions_by_reason": reasons,
        "passes_per_sec_rounds": rounds,
        "passes_per_sec_median": median,
        "job_decisions_per_sec_median": median * args.jobs as f64,
        "decisions_per_sec_median": median * decisions_per_pass as f64,
        "ms_per_pass_median": 1000.0 / median,
    });
    println!("{report:#}");
}

/// Builds one pool and four Batch queues in two regions, with per-region, total and spend
/// caps, and jobs of every kind: with and without deadlines, some with workers
/// already running or requested.
fn build_snapshot(job_count: usize) -> Snapshot {
    let mut rng = Xorshift(0x5eed_1234_abcd_ef01);
    let mut backends = vec![backend("slurm", BackendKind::Pool, None, 1.5, 60.0, 256)];
    for (id, region, price) in [
        ("batch/us-east-1/spot", "us-east-1", 2.5),
        ("batch/us-east-1/ondemand", "us-east-1", 4.0),
        ("batch/us-west-2/spot", "us-west-2", 2.7),
        ("batch/us-west-2/ondemand", "us-west-2", 4.1),
    ] {
        backends.push(backend(
            id,
            BackendKind::Burst,
            Some(region),
            price,
            240.0,
            2000,
        ));
    }

    let mut jobs = Vec::with_capacity(job_count);
    for index in 0..job_count {
        let job_id = format!("job-{index:05}");
        let tasks_left = 1 + rng.below(2000);
        let leased = rng.below(tasks_left.min(20) + 1);
        for backend in &mut backends {
            if rng.below(8) == 0 {
                let count = WorkerCount {
                    running: rng.below(4) as u32,
                    requested: rng.below(2) as u32,
                };
                backend.workers.insert(job_id.clone(), count);
            }
        }
        let admitted_at = NOW - rng.below(7200) as f64;
        jobs.push(JobSnapshot {
            job_id,
            tasks_left,
            queued: tasks_left - leased,
            task_secs: 5.0 + rng.below(60) as f64,
            deadline: (rng.below(3) > 0).then(|| NOW + 600.0 + rng.below(6 * 3600) as f64),
            admitted_at,
            oldest_queued_at: Some(admitted_at),
            priority: rng.below(3) as i64,
            max_workers: (rng.below(2) == 0).then(|| 16 + rng.below(64) as u32),
        });
    }

    let mut running_by_backend: HashMap<String, u32> = HashMap::new();
    for backend in &backends {
        let running: u32 = backend.workers.values().map(|count| count.running).sum();
        running_by_backend.insert(backend.id.clone(), running);
    }
    for backend in &mut backends {
        let running = running_by_backend[&backend.id];
        backend.free_workers = backend.capacity_workers.saturating_sub(running);
    }

    Snapshot {
        now: NOW,
        jobs,
        backends,
        caps: Caps {
            burst_workers_per_region: BTreeMap::from([("us-west-2".to_string(), 800)]),
            default_burst_workers_per_region: Some(1500),
            burst_workers: Some(2500),
            spend_per_hour: Some(8000.0),
            spend_per_day: Some(150_000.0),
            spent_today: 20_000.0,
        },
    }
}

fn backend(
    id: &str,
    kind: BackendKind,
    region: Option<&str>,
    price: f64,
    startup_secs: f64,
    capacity: u32,
) -> BackendSnapshot {
    BackendSnapshot {
        id: id.into(),
        kind,
        region: region.map(str::to_owned),
        capacity_workers: capacity,
        free_workers: capacity,
        workers: HashMap::new(),
        price_per_worker_hour: price,
        startup_secs,
        available: true,
    }
}
