//! Placement rules: table-driven cases, then properties over random snapshots.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

const NOW: f64 = 1_800_000_000.0;

fn pool(free: u32, capacity: u32) -> BackendSnapshot {
    BackendSnapshot {
        id: "slurm".into(),
        kind: BackendKind::Pool,
        region: None,
        capacity_workers: capacity,
        free_workers: free,
        workers: HashMap::new(),
        price_per_worker_hour: 1.5,
        startup_secs: 60.0,
        available: true,
    }
}

fn burst(id: &str, region: &str, price: f64, startup_secs: f64) -> BackendSnapshot {
    BackendSnapshot {
        id: id.into(),
        kind: BackendKind::Burst,
        region: Some(region.into()),
        capacity_workers: 10_000,
        free_workers: 10_000,
        workers: HashMap::new(),
        price_per_worker_hour: price,
        startup_secs,
        available: true,
    }
}

/// Builds a job admitted now with every task queued, and a deadline `deadline_in`
/// seconds from now.
fn job(id: &str, tasks: u64, task_secs: f64, deadline_in: Option<f64>) -> JobSnapshot {
    JobSnapshot {
        job_id: id.into(),
        tasks_left: tasks,
        queued: tasks,
        task_secs,
        deadline: deadline_in.map(|secs| NOW + secs),
        admitted_at: NOW,
        oldest_queued_at: Some(NOW),
        priority: 0,
        max_workers: None,
    }
}

fn snapshot(jobs: Vec<JobSnapshot>, backends: Vec<BackendSnapshot>) -> Snapshot {
    Snapshot {
        now: NOW,
        jobs,
        backends,
        caps: Caps::default(),
    }
}

fn with_workers(
    mut backend: BackendSnapshot,
    job_id: &str,
    running: u32,
    requested: u32,
) -> BackendSnapshot {
    backend
        .workers
        .insert(job_id.into(), WorkerCount { running, requested });
    backend
}

fn decision<'a>(plan: &'a Plan, job_id: &str, backend_id: &str) -> &'a Decision {
    plan.jobs
        .iter()
        .find(|job| job.job_id == job_id)
        .and_then(|job| job.decisions.iter().find(|d| d.backend_id == backend_id))
        .unwrap_or_else(|| panic!("no decision for {job_id} on {backend_id}"))
}

fn plan_once(snapshot: &Snapshot) -> Plan {
    plan(
        &PlacementSettings::default(),
        snapshot,
        &PlacementMemory::default(),
    )
}

/// One table case: a snapshot, then the expected desired workers and reason label
/// per (job, backend).
struct Case {
    name: &'static str,
    snapshot: Snapshot,
    expected: Vec<(&'static str, &'static str, u32, &'static str)>,
}

fn cases() -> Vec<Case> {
    let queue = "batch/us-east-1/q";
    let mut cases = Vec::new();

    // 100 tasks of 60 s in 2 h: 10 pool workers finish them with time to spare.
    cases.push(Case {
        name: "pool meets deadline",
        snapshot: snapshot(
            vec![job("a", 100, 60.0, Some(7200.0))],
            vec![pool(10, 10), burst(queue, "us-east-1", 3.0, 240.0)],
        ),
        expected: vec![
            ("a", "slurm", 10, "pool_fill"),
            ("a", queue, 0, "pool_meets_deadline"),
        ],
    });

    // Planning horizon 3600 - 120 = 3480 s, planned task 60 * 1.2 = 72 s.
    // A pool worker (60 s queue wait) runs 47 tasks, so 4 run 188; 1,812 spill.
    // A Batch worker (240 s start-up) runs 45, so ceil(1812 / 45) = 41 workers.
    cases.push(Case {
        name: "spill only the share the pool cannot finish",
        snapshot: snapshot(
            vec![job("a", 2000, 60.0, Some(3600.0))],
            vec![pool(4, 64), burst(queue, "us-east-1", 3.0, 240.0)],
        ),
        expected: vec![
            ("a", "slurm", 4, "pool_fill"),
            ("a", queue, 41, "spill_for_deadline"),
        ],
    });

    cases.push(Case {
        name: "no deadline and short wait stays on the pool",
        snapshot: snapshot(
            vec![job("a", 2000, 60.0, None)],
            vec![pool(0, 64), burst(queue, "us-east-1", 3.0, 240.0)],
        ),
        expected: vec![
            ("a", "slurm", 0, "pool_full"),
            ("a", queue, 0, "queue_wait_within_bound"),
        ],
    });

    // Waited 1000 s > 900 s: plan to drain within 3600 s, like a deadline.
    let mut waiting = job("a", 2000, 60.0, None);
    waiting.oldest_queued_at = Some(NOW - 1000.0);
    cases.push(Case {
        name: "no deadline and long wait spills",
        snapshot: snapshot(
            vec![waiting],
            vec![pool(4, 64), burst(queue, "us-east-1", 3.0, 240.0)],
        ),
        expected: vec![
            ("a", "slurm", 4, "pool_fill"),
            ("a", queue, 41, "spill_for_queue_wait"),
        ],
    });

    let mut capped = snapshot(
        vec![job("a", 2000, 60.0, Some(3600.0))],
        vec![pool(4, 64), burst(queue, "us-east-1", 3.0, 240.0)],
    );
    capped.caps.default_burst_workers_per_region = Some(5);
    cases.push(Case {
        name: "deadline at risk gets the region cap",
        snapshot: capped,
        expected: vec![
            ("a", "slurm", 4, "pool_fill"),
            ("a", queue, 5, "deadline_at_risk"),
        ],
    });

    let mut hourly = snapshot(
        vec![job("a", 2000, 60.0, Some(3600.0))],
        vec![pool(4, 64), burst(queue, "us-east-1", 3.0, 240.0)],
    );
    hourly.caps.spend_per_hour = Some(30.0);
    cases.push(Case {
        name: "hourly spend cap limits workers",
        snapshot: hourly,
        expected: vec![("a", queue, 10, "deadline_at_risk")],
    });

    // Spent 950 of 1000 today; 3/h held for an hour fits 16 workers (48 of 50).
    let mut daily = snapshot(
        vec![job("a", 2000, 60.0, Some(3600.0))],
        vec![pool(4, 64), burst(queue, "us-east-1", 3.0, 240.0)],
    );
    daily.caps.spend_per_day = Some(1000.0);
    daily.caps.spent_today = 950.0;
    cases.push(Case {
        name: "daily spend cap limits workers",
        snapshot: daily,
        expected: vec![("a", queue, 16, "deadline_at_risk")],
    });

    let mut open_breaker = burst("batch/us-east-1/cheap", "us-east-1", 2.0, 240.0);
    open_breaker.available = false;
    cases.push(Case {
        name: "unavailable backend is skipped",
        snapshot: snapshot(
            vec![job("a", 2000, 60.0, Some(3600.0))],
            vec![
                pool(4, 64),
                open_breaker,
                burst(queue, "us-west-2", 3.0, 240.0),
            ],
        ),
        expected: vec![
            ("a", "batch/us-east-1/cheap", 0, "backend_unavailable"),
            ("a", queue, 41, "spill_for_deadline"),
        ],
    });

    // The cheaper queue takes 30 (its region cap): 1,350 of the 1,812 spilled tasks.
    // The dearer one takes the other 462 at 45 tasks each: 11 workers.
    let mut two_queues = snapshot(
        vec![job("a", 2000, 60.0, Some(3600.0))],
        vec![
            pool(4, 64),
            burst("dear", "us-west-2", 4.0, 240.0),
            burst("cheap", "us-east-1", 2.5, 240.0),
        ],
    );
    two_queues.caps.default_burst_workers_per_region = Some(30);
    cases.push(Case {
        name: "cheaper burst backend fills first",
        snapshot: two_queues,
        expected: vec![
            ("a", "cheap", 30, "spill_for_deadline"),
            ("a", "dear", 11, "spill_for_deadline"),
        ],
    });

    // The cheap queue starts in 3600 s, after the deadline; the fast one takes all.
    cases.push(Case {
        name: "slow backend is passed over",
        snapshot: snapshot(
            vec![job("a", 2000, 60.0, Some(3600.0))],
            vec![
                pool(4, 64),
                burst("slow", "us-east-1", 1.0, 3600.0),
                burst(queue, "us-east-1", 3.0, 240.0),
            ],
        ),
        expected: vec![
            ("a", "slow", 0, "too_slow_to_start"),
            ("a", queue, 41, "spill_for_deadline"),
        ],
    });

    let mut leased = job("a", 5, 60.0, Some(3600.0));
    leased.queued = 0;
    cases.push(Case {
        name: "no queued task requests nothing",
        snapshot: snapshot(
            vec![leased],
            vec![
                with_workers(pool(0, 64), "a", 3, 0),
                with_workers(burst(queue, "us-east-1", 3.0, 240.0), "a", 2, 0),
            ],
        ),
        expected: vec![
            ("a", "slurm", 3, "no_queued_tasks"),
            ("a", queue, 2, "no_queued_tasks"),
        ],
    });

    // 50 Batch workers run but the pool alone now meets the deadline: keep them.
    cases.push(Case {
        name: "scale in only by exit",
        snapshot: snapshot(
            vec![job("a", 100, 60.0, Some(7200.0))],
            vec![
                pool(10, 64),
                with_workers(burst(queue, "us-east-1", 3.0, 240.0), "a", 50, 0),
            ],
        ),
        expected: vec![
            ("a", "slurm", 10, "pool_fill"),
            ("a", queue, 50, "scale_in_by_exit"),
        ],
    });

    // 10 requested pool workers that Slurm does not show yet take all 10 queued tasks.
    cases.push(Case {
        name: "requested workers count before they show",
        snapshot: snapshot(
            vec![job("a", 10, 60.0, Some(7200.0))],
            vec![with_workers(pool(10, 64), "a", 0, 10)],
        ),
        expected: vec![("a", "slurm", 10, "workers_cover_queue")],
    });

    // Slurm reports 10 free, but another job's 6 requested workers will take 6 of them.
    cases.push(Case {
        name: "other jobs' requests reduce free slots",
        snapshot: snapshot(
            vec![job("a", 100, 60.0, None)],
            vec![with_workers(pool(10, 64), "b", 0, 6)],
        ),
        expected: vec![("a", "slurm", 4, "pool_fill")],
    });

    // The younger job has higher priority, so it gets the pool first.
    let mut urgent = job("young", 100, 60.0, None);
    urgent.priority = 5;
    urgent.admitted_at = NOW - 10.0;
    let mut older = job("old", 100, 60.0, None);
    older.admitted_at = NOW - 1000.0;
    cases.push(Case {
        name: "priority before age",
        snapshot: snapshot(vec![older, urgent], vec![pool(5, 64)]),
        expected: vec![
            ("young", "slurm", 5, "pool_fill"),
            ("old", "slurm", 0, "pool_full"),
        ],
    });

    let mut capped_job = job("a", 2000, 60.0, Some(3600.0));
    capped_job.max_workers = Some(3);
    cases.push(Case {
        name: "job cap limits pool and burst",
        snapshot: snapshot(
            vec![capped_job],
            vec![pool(10, 64), burst(queue, "us-east-1", 3.0, 240.0)],
        ),
        expected: vec![
            ("a", "slurm", 3, "pool_fill"),
            ("a", queue, 0, "deadline_at_risk"),
        ],
    });

    cases
}

#[test]
fn table_cases() {
    for case in cases() {
        let plan = plan_once(&case.snapshot);
        for (job_id, backend_id, desired, label) in &case.expected {
            let decision = decision(&plan, job_id, backend_id);
            assert_eq!(
                decision.desired, *desired,
                "{}: desired workers of {job_id} on {backend_id} ({})",
                case.name, decision.reason
            );
            assert_eq!(
                decision.reason.as_label(),
                *label,
                "{}: reason of {job_id} on {backend_id} ({})",
                case.name,
                decision.reason
            );
        }
    }
}

#[test]
fn spill_reason_reads_as_sentence() {
    let plan = plan_once(&snapshot(
        vec![job("a", 2000, 60.0, Some(3600.0))],
        vec![
            pool(4, 64),
            burst("batch/us-east-1/q", "us-east-1", 3.0, 240.0),
        ],
    ));
    let reason = &decision(&plan, "a", "batch/us-east-1/q").reason;
    assert_eq!(
        reason.to_string(),
        "pool finishes 188 tasks by the deadline at 4 workers; 1,812 spill to batch/us-east-1/q at 41 workers"
    );
}

#[test]
fn deadline_at_risk_is_flagged() {
    let mut capped = snapshot(
        vec![job("a", 2000, 60.0, Some(3600.0))],
        vec![pool(4, 64), burst("q", "us-east-1", 3.0, 240.0)],
    );
    capped.caps.burst_workers = Some(5);
    let plan = plan_once(&capped);
    assert!(plan.jobs[0].deadline_at_risk);
    let reason = &decision(&plan, "a", "q").reason;
    assert_eq!(
        reason,
        &Reason::DeadlineAtRisk {
            tasks: 2000,
            finishable: 4 * 59 + 5 * 56,
            workers: 5,
            limit: Some(Limit::BurstCap),
        }
    );
}

#[test]
fn passed_deadline_gets_max_allowed() {
    let mut late = snapshot(
        vec![job("a", 100, 60.0, Some(-60.0))],
        vec![pool(0, 64), burst("q", "us-east-1", 3.0, 240.0)],
    );
    late.caps.burst_workers = Some(40);
    let plan = plan_once(&late);
    assert_eq!(decision(&plan, "a", "q").desired, 40);
    assert!(plan.jobs[0].deadline_at_risk);
}

#[test]
fn hold_defers_small_increase() {
    let settings = PlacementSettings::default();
    // 2 pool and 2 Batch workers run. With the margin and safety factor they finish
    // 192 of 230 tasks, so 1 more is planned; at the bare estimate they finish 240.
    let mut state = snapshot(
        vec![job("a", 230, 60.0, Some(3600.0))],
        vec![
            pool(0, 64),
            with_workers(burst("q", "us-east-1", 3.0, 240.0), "a", 2, 0),
        ],
    );
    state.backends[0].workers.insert(
        "a".into(),
        WorkerCount {
            running: 2,
            requested: 0,
        },
    );
    let mut memory = PlacementMemory::default();
    let earlier = Snapshot {
        now: NOW - 60.0,
        ..state.clone()
    };
    let increase = Plan {
        jobs: vec![JobPlan {
            job_id: "a".into(),
            deadline_at_risk: false,
            decisions: vec![Decision {
                backend_id: "q".into(),
                current: 0,
                desired: 2,
                reason: Reason::SpillCovered { workers: 2 },
            }],
        }],
    };
    memory.record(&earlier, &increase);

    let held = plan(&settings, &state, &memory);
    let decision_held = decision(&held, "a", "q");
    assert_eq!(decision_held.desired, 2, "{}", decision_held.reason);
    assert_eq!(decision_held.reason.as_label(), "held");

    let later = Snapshot {
        now: NOW + settings.burst_hold_secs,
        ..state.clone()
    };
    let released = plan(&settings, &later, &memory);
    assert!(decision(&released, "a", "q").desired > 2);
}

#[test]
fn labels_are_unique_snake_case() {
    let mut seen = std::collections::HashSet::new();
    for label in Reason::LABELS {
        assert!(seen.insert(label), "{label} twice");
        assert!(
            label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{label}"
        );
    }
}

#[test]
fn memory_forgets_finished_jobs() {
    let mut placer = Placer::new(PlacementSettings::default());
    let state = snapshot(
        vec![job("a", 2000, 60.0, Some(3600.0))],
        vec![pool(4, 64), burst("q", "us-east-1", 3.0, 240.0)],
    );
    placer.place(&state);
    let empty = snapshot(Vec::new(), state.backends.clone());
    placer.place(&empty);
    // After forgetting, a small increase is not held.
    let plan_again = placer.place(&state);
    assert_ne!(decision(&plan_again, "a", "q").reason.as_label(), "held");
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

prop_compose! {
    fn arb_job(index: usize)(
        tasks_left in 1u64..3000,
        leased_share in 0u64..4,
        task_secs in 1.0f64..600.0,
        deadline_in in prop::option::weighted(0.8, -600.0f64..14_400.0),
        waited in 0.0f64..3000.0,
        priority in -2i64..3,
        max_workers in prop::option::weighted(0.3, 1u32..200),
    ) -> JobSnapshot {
        let leased = tasks_left * leased_share / 4;
        JobSnapshot {
            job_id: format!("job-{index}"),
            tasks_left,
            queued: tasks_left - leased,
            task_secs,
            deadline: deadline_in.map(|secs| NOW + secs),
            admitted_at: NOW - waited,
            oldest_queued_at: Some(NOW - waited),
            priority,
            max_workers,
        }
    }
}

fn arb_counts(jobs: usize) -> impl Strategy<Value = Vec<Option<WorkerCount>>> {
    prop::collection::vec(
        prop::option::weighted(0.4, (0u32..20, 0u32..10))
            .prop_map(|count| count.map(|(running, requested)| WorkerCount { running, requested })),
        jobs + 1,
    )
}

prop_compose! {
    /// Generates a backend with workers for some of `jobs` jobs, and for one job not
    /// in the snapshot (index `jobs`), whose workers are still exiting.
    fn arb_backend(id: String, kind: BackendKind, jobs: usize)(
        region in prop::sample::select(vec!["us-east-1", "us-west-2"]),
        capacity in 0u32..400,
        free_share in 0u32..5,
        price in 0.5f64..6.0,
        startup_secs in 0.0f64..900.0,
        available in prop::bool::weighted(0.9),
        counts in arb_counts(jobs),
    ) -> BackendSnapshot {
        let workers: HashMap<String, WorkerCount> = counts
            .into_iter()
            .enumerate()
            .filter_map(|(index, count)| Some((format!("job-{index}"), count?)))
            .collect();
        let running: u32 = workers.values().map(|count| count.running).sum();
        BackendSnapshot {
            id: id.clone(),
            kind,
            region: (kind == BackendKind::Burst).then(|| region.to_string()),
            capacity_workers: capacity,
            free_workers: capacity.saturating_sub(running) * free_share / 4,
            workers,
            price_per_worker_hour: price,
            startup_secs,
            available,
        }
    }
}

prop_compose! {
    fn arb_caps()(
        region in prop::option::weighted(0.5, 0u32..300),
        west in prop::option::weighted(0.3, 0u32..300),
        total in prop::option::weighted(0.5, 0u32..500),
        hourly in prop::option::weighted(0.5, 0.0f64..2000.0),
        daily in prop::option::weighted(0.5, 0.0f64..20_000.0),
        spent_today in 0.0f64..10_000.0,
    ) -> Caps {
        let mut per_region = BTreeMap::new();
        if let Some(cap) = west {
            per_region.insert("us-west-2".to_string(), cap);
        }
        Caps {
            burst_workers_per_region: per_region,
            default_burst_workers_per_region: region,
            burst_workers: total,
            spend_per_hour: hourly,
            spend_per_day: daily,
            spent_today,
        }
    }
}

fn arb_snapshot(max_jobs: usize, max_bursts: usize) -> impl Strategy<Value = Snapshot> {
    (1..=max_jobs, 1..=max_bursts).prop_flat_map(|(jobs, bursts)| {
        let job_strategies: Vec<_> = (0..jobs).map(arb_job).collect();
        let mut backend_strategies = vec![arb_backend("slurm".into(), BackendKind::Pool, jobs)];
        for index in 0..bursts {
            backend_strategies.push(arb_backend(
                format!("batch-{index}"),
                BackendKind::Burst,
                jobs,
            ));
        }
        (job_strategies, backend_strategies, arb_caps()).prop_map(|(jobs, backends, caps)| {
            Snapshot {
                now: NOW,
                jobs,
                backends,
                caps,
            }
        })
    })
}

fn burst_rate(snapshot: &Snapshot, plan: Option<&Plan>) -> f64 {
    let mut rate = 0.0;
    for backend in snapshot
        .backends
        .iter()
        .filter(|b| b.kind == BackendKind::Burst)
    {
        let current: u32 = backend.workers.values().map(|count| count.current()).sum();
        let new = plan.map_or(0, |plan| new_on(plan, &backend.id));
        rate += f64::from(current + new) * backend.price_per_worker_hour;
    }
    rate
}

fn new_on(plan: &Plan, backend_id: &str) -> u32 {
    plan.jobs
        .iter()
        .flat_map(|job| &job.decisions)
        .filter(|decision| decision.backend_id == backend_id)
        .map(Decision::to_request)
        .sum()
}

/// Tasks one job's workers finish before `deadline` with tasks of `task_secs`, for
/// the desired counts of `plan` on the given backends.
fn finishable(
    snapshot: &Snapshot,
    plan: &Plan,
    job_id: &str,
    kinds: &[BackendKind],
    horizon_secs: f64,
    task_secs: f64,
) -> u64 {
    let per = |startup: f64| ((horizon_secs - startup) / task_secs).floor().max(0.0) as u64;
    let mut tasks = 0;
    for backend in snapshot.backends.iter().filter(|b| kinds.contains(&b.kind)) {
        let count = backend.job_workers(job_id);
        let new = decision(plan, job_id, &backend.id).to_request();
        tasks += u64::from(count.running) * per(0.0);
        tasks += u64::from(count.requested + new) * per(backend.startup_secs);
    }
    tasks
}

/// Marks `plan`'s requests as requested in the snapshot, with the backends' free
/// counts left stale, as the next pass would see them before a status poll.
fn apply_requests(snapshot: &mut Snapshot, plan: &Plan) {
    for (job_id, decision) in plan.requests() {
        let backend = snapshot
            .backends
            .iter_mut()
            .find(|backend| backend.id == decision.backend_id)
            .unwrap();
        backend
            .workers
            .entry(job_id.to_string())
            .or_default()
            .requested += decision.to_request();
    }
}

/// Turns every requested worker into a running one that has leased a queued task,
/// as the next status poll and the ledger show.
fn start_requested(snapshot: &mut Snapshot) {
    let mut started_by_job: HashMap<String, u64> = HashMap::new();
    for backend in &mut snapshot.backends {
        let mut started = 0;
        for (job_id, count) in &mut backend.workers {
            started += count.requested;
            *started_by_job.entry(job_id.clone()).or_default() += u64::from(count.requested);
            count.running += count.requested;
            count.requested = 0;
        }
        backend.free_workers = backend.free_workers.saturating_sub(started);
    }
    for job in &mut snapshot.jobs {
        let started = started_by_job.get(&job.job_id).copied().unwrap_or(0);
        job.queued -= started.min(job.queued);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_above_a_cap(snapshot in arb_snapshot(6, 3)) {
        let settings = PlacementSettings::default();
        let plan = plan(&settings, &snapshot, &PlacementMemory::default());
        let caps = &snapshot.caps;

        for job in &plan.jobs {
            for decision in &job.decisions {
                prop_assert!(decision.desired >= decision.current, "{decision:?}");
            }
        }

        for backend in &snapshot.backends {
            let new = new_on(&plan, &backend.id);
            let current: u32 = backend.workers.values().map(|count| count.current()).sum();
            let requested: u32 = backend.workers.values().map(|count| count.requested).sum();
            if !backend.available {
                prop_assert_eq!(new, 0);
            }
            prop_assert!(new <= backend.free_workers.saturating_sub(requested), "{} free", backend.id);
            prop_assert!(new <= backend.capacity_workers.saturating_sub(current), "{} capacity", backend.id);
        }

        let bursts: Vec<&BackendSnapshot> =
            snapshot.backends.iter().filter(|b| b.kind == BackendKind::Burst).collect();
        for region in ["us-east-1", "us-west-2"] {
            let Some(cap) = caps.region_cap(region) else { continue };
            let in_region = bursts.iter().filter(|b| b.region.as_deref() == Some(region));
            let (mut current, mut new) = (0, 0);
            for backend in in_region {
                current += backend.workers.values().map(|count| count.current()).sum::<u32>();
                new += new_on(&plan, &backend.id);
            }
            prop_assert!(new <= cap.saturating_sub(current), "region {region}");
        }

        let new_burst: u32 = bursts.iter().map(|b| new_on(&plan, &b.id)).sum();
        let current_burst: u32 =
            bursts.iter().flat_map(|b| b.workers.values()).map(|count| count.current()).sum();
        if let Some(cap) = caps.burst_workers {
            prop_assert!(new_burst <= cap.saturating_sub(current_burst));
        }
        if new_burst > 0 {
            let rate = burst_rate(&snapshot, Some(&plan));
            if let Some(cap) = caps.spend_per_hour {
                prop_assert!(rate <= cap + 1e-6, "rate {rate} over {cap}");
            }
            if let Some(cap) = caps.spend_per_day {
                let hours = settings.spend_lookahead_secs / 3600.0;
                prop_assert!(caps.spent_today + rate * hours <= cap + 1e-6);
            }
        }

        for job in &snapshot.jobs {
            let job_plan = plan.jobs.iter().find(|p| p.job_id == job.job_id).unwrap();
            let new: u32 = job_plan.decisions.iter().map(Decision::to_request).sum();
            let desired: u32 = job_plan.decisions.iter().map(|d| d.desired).sum();
            let requested: u32 =
                snapshot.backends.iter().map(|b| b.job_workers(&job.job_id).requested).sum();
            prop_assert!(u64::from(new) <= job.queued.saturating_sub(u64::from(requested)));
            if let (Some(cap), true) = (job.max_workers, new > 0) {
                prop_assert!(desired <= cap, "job cap {cap}, desired {desired}");
            }
        }
    }

    #[test]
    fn no_spill_when_pool_meets_deadline(snapshot in arb_snapshot(1, 2)) {
        let settings = PlacementSettings::default();
        let plan = plan(&settings, &snapshot, &PlacementMemory::default());
        let job = &snapshot.jobs[0];
        let horizon = match job.deadline {
            Some(deadline) => deadline - settings.deadline_margin_secs - NOW,
            None => return Ok(()),
        };
        let pool_tasks = finishable(
            &snapshot,
            &plan,
            &job.job_id,
            &[BackendKind::Pool],
            horizon,
            job.task_secs * settings.task_secs_safety_factor,
        );
        if pool_tasks >= job.tasks_left {
            for backend in snapshot.backends.iter().filter(|b| b.kind == BackendKind::Burst) {
                let decision = decision(&plan, &job.job_id, &backend.id);
                prop_assert_eq!(decision.to_request(), 0, "{}", decision.reason);
            }
        }
    }

    /// With one burst backend, the maximum workers the caps allow there is easy to
    /// compute. When that many would meet the deadline, the plan must meet it too,
    /// even with a recent increase in the hysteresis memory.
    #[test]
    fn meets_deadline_when_caps_allow(snapshot in arb_snapshot(1, 1), recent in any::<bool>()) {
        let settings = PlacementSettings::default();
        let job = &snapshot.jobs[0];
        let Some(deadline) = job.deadline else { return Ok(()) };
        let burst = &snapshot.backends[1];

        let mut memory = PlacementMemory::default();
        if recent {
            let earlier = Snapshot { now: NOW - 10.0, ..snapshot.clone() };
            let increase = Plan { jobs: vec![JobPlan {
                job_id: job.job_id.clone(),
                deadline_at_risk: false,
                decisions: vec![Decision {
                    backend_id: burst.id.clone(),
                    current: 0,
                    desired: 1,
                    reason: Reason::SpillCovered { workers: 1 },
                }],
            }]};
            memory.record(&earlier, &increase);
        }
        let plan = plan(&settings, &snapshot, &memory);
        let horizon = deadline - NOW;
        let planned = finishable(
            &snapshot,
            &plan,
            &job.job_id,
            &[BackendKind::Pool, BackendKind::Burst],
            horizon,
            job.task_secs,
        );

        // The maximum burst workers the caps allow after the pool took its share.
        let pool_new = decision(&plan, &job.job_id, "slurm").to_request();
        let requested: u32 = snapshot.backends.iter().map(|b| b.job_workers(&job.job_id).requested).sum();
        let total: u32 = snapshot.backends.iter().map(|b| b.job_workers(&job.job_id).current()).sum();
        let queue_left = job
            .queued
            .saturating_sub(u64::from(requested))
            .min(job.tasks_left.saturating_sub(u64::from(total)));
        let queue_left = u32::try_from(queue_left).unwrap_or(u32::MAX);
        let mut max_allowed = queue_left.saturating_sub(pool_new);
        if let Some(cap) = job.max_workers {
            max_allowed = max_allowed.min(cap.saturating_sub(total + pool_new));
        }
        let current: u32 = burst.workers.values().map(|count| count.current()).sum();
        let burst_requested: u32 = burst.workers.values().map(|count| count.requested).sum();
        max_allowed = max_allowed.min(burst.free_workers.saturating_sub(burst_requested));
        max_allowed = max_allowed.min(burst.capacity_workers.saturating_sub(current));
        let caps = &snapshot.caps;
        if let Some(cap) = burst.region.as_deref().and_then(|region| caps.region_cap(region)) {
            max_allowed = max_allowed.min(cap.saturating_sub(current));
        }
        if let Some(cap) = caps.burst_workers {
            max_allowed = max_allowed.min(cap.saturating_sub(current));
        }
        let rate = f64::from(current) * burst.price_per_worker_hour;
        if let Some(cap) = caps.spend_per_hour {
            max_allowed = max_allowed.min(((cap - rate) / burst.price_per_worker_hour).floor().max(0.0) as u32);
        }
        if let Some(cap) = caps.spend_per_day {
            let hours = settings.spend_lookahead_secs / 3600.0;
            let left = cap - caps.spent_today - rate * hours;
            max_allowed = max_allowed.min((left / (burst.price_per_worker_hour * hours)).floor().max(0.0) as u32);
        }
        if !burst.available {
            max_allowed = 0;
        }

        let per = |startup: f64| ((horizon - startup) / job.task_secs.max(1e-3)).floor().max(0.0) as u64;
        let mut best = 0u64;
        for backend in &snapshot.backends {
            let count = backend.job_workers(&job.job_id);
            let new = if backend.kind == BackendKind::Pool { pool_new } else { max_allowed };
            best += u64::from(count.running) * per(0.0);
            best += u64::from(count.requested + new) * per(backend.startup_secs);
        }
        if best >= job.tasks_left {
            prop_assert!(
                planned >= job.tasks_left,
                "planned {planned} of {} tasks, {} possible; {:?}",
                job.tasks_left,
                best,
                plan.jobs[0].decisions
            );
        }
    }

    /// Under a steady load (nothing changes but this engine's own requests), a second
    /// pass requests nothing, whether the backends show the requests yet or not.
    #[test]
    fn no_flapping_under_steady_load(mut snapshot in arb_snapshot(6, 3)) {
        let mut placer = Placer::new(PlacementSettings::default());
        let first = placer.place(&snapshot);

        apply_requests(&mut snapshot, &first);
        let second = placer.place(&snapshot);
        let again: Vec<_> = second.requests().map(|(job, d)| (job.to_string(), d.clone())).collect();
        prop_assert!(again.is_empty(), "stale status: second pass requested {again:?}");

        start_requested(&mut snapshot);
        let third = placer.place(&snapshot);
        let again: Vec<_> = third.requests().map(|(job, d)| (job.to_string(), d.clone())).collect();
        prop_assert!(again.is_empty(), "fresh status: third pass requested {again:?}");

        let labels = |plan: &Plan| -> Vec<&'static str> {
            plan.jobs.iter().flat_map(|job| &job.decisions).map(|d| d.reason.as_label()).collect()
        };
        let fourth = placer.place(&snapshot);
        prop_assert_eq!(labels(&third), labels(&fourth));
    }
}
