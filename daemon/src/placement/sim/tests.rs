//! Simulator runs on small traces and on the shipped example trace.

use super::*;

/// The example trace documented in docs/placement.md.
const EXAMPLE_TRACE: &str = include_str!("../../../../docs/examples/burst-trace.jsonl");

fn trace(lines: &str) -> Trace {
    parse(lines).unwrap()
}

#[test]
fn example_trace_meets_targets() {
    let report = simulate(&trace(EXAMPLE_TRACE));
    assert_eq!(report.burst.deadline_misses, 0, "{:#?}", report.burst);
    assert_eq!(report.burst.unfinished, 0);
    assert_eq!(report.peak.deadline_misses, 0);
    assert!(
        report.saving_vs_peak >= 0.5,
        "saving against the peak-sized cluster is {:.3}: burst {:.2}, peak {:.2}",
        report.saving_vs_peak,
        report.burst.cost,
        report.peak.cost
    );
    // The mean-sized cluster is cheaper but cannot keep up with the peaks.
    assert!(report.mean.deadline_misses > 0);
}

#[test]
fn job_that_fits_pool_never_bursts() {
    let report = simulate(&trace(
        r#"{"settings": {"pool_workers": 4, "period_secs": 7200}}
{"id": "a", "arrival_secs": 0, "tasks": 40, "task_secs": 60, "deadline_secs": 3600}
"#,
    ));
    assert_eq!(report.burst.deadline_misses, 0);
    assert_eq!(report.burst.burst_cost, 0.0);
    assert_eq!(report.burst.peak_burst_workers, 0);
    assert_eq!(
        report.burst.workers_requested_by_reason.get("pool_fill"),
        Some(&4)
    );
}

#[test]
fn tight_deadline_spills_and_is_met() {
    // 1,000 tasks of 60 s in one hour need about 20 workers; the pool has 2.
    let report = simulate(&trace(
        r#"{"settings": {"pool_workers": 2, "period_secs": 86400}}
{"id": "a", "arrival_secs": 600, "tasks": 1000, "task_secs": 60, "deadline_secs": 3600}
"#,
    ));
    assert_eq!(report.burst.deadline_misses, 0, "{:#?}", report.burst);
    assert!(report.burst.burst_cost > 0.0);
    assert!(report.burst.workers_requested_by_reason["spill_for_deadline"] > 0);
    assert!(
        report.peak.pool_workers >= 17,
        "peak {}",
        report.peak.pool_workers
    );
    assert_eq!(report.peak.deadline_misses, 0);
}

#[test]
fn same_seed_same_report() {
    let text = r#"{"settings": {"pool_workers": 2, "seed": 42}}
{"id": "a", "arrival_secs": 0, "tasks": 500, "task_secs": 60, "deadline_secs": 3600}
{"id": "b", "arrival_secs": 900, "tasks": 300, "task_secs": 90, "deadline_secs": 5400}
"#;
    let first = simulate(&trace(text));
    let second = simulate(&trace(text));
    assert_eq!(first.burst.cost, second.burst.cost);
    assert_eq!(
        first.burst.completion_p99_secs,
        second.burst.completion_p99_secs
    );
    assert_eq!(
        first.burst.spot_interruptions,
        second.burst.spot_interruptions
    );
}

#[test]
fn interrupted_tasks_are_requeued_and_finish() {
    let report = simulate(&trace(
        r#"{"settings": {"pool_workers": 1, "burst": [{"id": "q", "interruptions_per_worker_hour": 4}]}}
{"id": "a", "arrival_secs": 0, "tasks": 600, "task_secs": 60, "deadline_secs": 7200}
"#,
    ));
    assert!(report.burst.spot_interruptions > 0);
    assert_eq!(report.burst.unfinished, 0);
}

#[test]
fn burst_worker_cap_holds() {
    let report = simulate(&trace(
        r#"{"settings": {"pool_workers": 1, "caps": {"burst_workers": 3}}}
{"id": "a", "arrival_secs": 0, "tasks": 2000, "task_secs": 60, "deadline_secs": 3600}
"#,
    ));
    assert!(report.burst.peak_burst_workers <= 3);
    assert!(report.burst.peak_burst_workers > 0);
    assert_eq!(report.burst.deadline_misses, 1);
    assert!(report.burst.workers_requested_by_reason["deadline_at_risk"] > 0);
}

#[test]
fn no_deadline_job_spills_after_queue_wait() {
    // Neither job has a deadline, and one pool worker needs 3.5 hours for both, so
    // work spills once the queue wait passes the 900 s bound.
    let report = simulate(&trace(
        r#"{"settings": {"pool_workers": 1}}
{"id": "long", "arrival_secs": 0, "tasks": 200, "task_secs": 60}
{"id": "short", "arrival_secs": 60, "tasks": 10, "task_secs": 60}
"#,
    ));
    assert!(report.burst.workers_requested_by_reason["spill_for_queue_wait"] > 0);
}

#[test]
fn percentile_uses_nearest_rank() {
    let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
    assert_eq!(percentile(&values, 50.0), 5.0);
    assert_eq!(percentile(&values, 99.0), 10.0);
    assert_eq!(percentile(&[], 50.0), 0.0);
}
