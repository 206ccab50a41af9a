//! Tests of the parsers on output captured from Slurm 22.05.8's tools by
//! `scripts/slurm/capture-cli-fixtures.sh`.

use super::*;
use crate::api::{JobInfo, NodeInfo};
use crate::records::{JobRecord, NodeRecord};
use crate::state::{ExitStatus, JobBaseState};
use crate::values::TimeLimit;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/cli/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn jobs_of(name: &str) -> Vec<JobInfo> {
    let listing = parse_listing::<JobRecord>(&fixture(name), "jobs").unwrap();
    assert!(listing.errors.is_empty(), "{:?}", listing.errors);
    listing
        .records
        .iter()
        .map(|record| record.to_job_info().unwrap())
        .collect()
}

fn nodes_of(name: &str) -> Vec<NodeInfo> {
    let listing = parse_listing::<NodeRecord>(&fixture(name), "nodes").unwrap();
    assert!(listing.errors.is_empty(), "{:?}", listing.errors);
    listing
        .records
        .iter()
        .map(|record| record.to_node_info().unwrap())
        .collect()
}

fn job(jobs: &[JobInfo], job_id: u64) -> &JobInfo {
    jobs.iter()
        .find(|job| job.job_id == job_id)
        .unwrap_or_else(|| panic!("job {job_id} not in fixture"))
}

#[test]
fn squeue_running_arrays() {
    let jobs = jobs_of("squeue-arrays-running.json");
    assert_eq!(jobs.len(), 6);

    let collapsed = job(&jobs, 1);
    assert_eq!(collapsed.array_job_id, Some(1));
    assert_eq!(collapsed.state.base, Some(JobBaseState::Pending));
    assert_eq!(collapsed.reason.as_deref(), Some("JobArrayTaskLimit"));
    let pending = collapsed.pending_indices().unwrap();
    assert_eq!(pending.indices().collect::<Vec<_>>(), vec![2, 3, 4, 5]);
    assert_eq!(pending.throttle, Some(2));
    assert_eq!(collapsed.nodes, None);

    let element = job(&jobs, 4);
    assert_eq!(element.array_job_id, Some(1));
    assert_eq!(element.array_index(), Some(1));
    assert!(element.state.is_running());
    assert_eq!(element.exit_status, None);
    assert_eq!(element.nodes.as_deref(), Some("node1"));
    assert_eq!(element.time_limit, TimeLimit::Minutes(5));
    assert_eq!(element.name, "fixture-finishing");
    assert_eq!(element.partition, "gpu");
}

#[test]
fn squeue_finished_arrays() {
    let jobs = jobs_of("squeue-arrays-finished.json");

    let completed = job(&jobs, 3);
    assert_eq!(completed.state.base, Some(JobBaseState::Completed));
    assert_eq!(completed.exit_status, Some(ExitStatus::Exited(0)));

    let failed = job(&jobs, 4);
    assert_eq!(failed.state.base, Some(JobBaseState::Failed));
    assert_eq!(failed.exit_status, Some(ExitStatus::Exited(3)));
    assert_eq!(failed.reason.as_deref(), Some("NonZeroExitCode"));

    let cancelled = job(&jobs, 5);
    assert_eq!(cancelled.state.base, Some(JobBaseState::Cancelled));
    assert_eq!(cancelled.exit_status, Some(ExitStatus::Signaled(15)));

    // The pending elements of the cancelled array stay collapsed in one record.
    let never_started = job(&jobs, 2);
    assert_eq!(never_started.state.base, Some(JobBaseState::Cancelled));
    let indices = never_started.pending_indices().unwrap();
    assert_eq!(indices.indices().collect::<Vec<_>>(), vec![2, 3]);

    // The last element to start takes over the array's own job id.
    let last = job(&jobs, 1);
    assert_eq!(last.array_index(), Some(5));
    assert_eq!(last.tracking_id(), 1);
}

#[test]
fn squeue_unreachable_controller_reports_errors() {
    let listing =
        parse_listing::<JobRecord>(&fixture("squeue-controller-down.json"), "jobs").unwrap();
    assert!(listing.records.is_empty());
    assert_eq!(listing.errors.len(), 1);
    let error = &listing.errors[0];
    assert_eq!(error.code, Some(-1));
    assert_eq!(
        error.description.as_deref(),
        Some("Failed while looking for jobs")
    );
    assert_eq!(error.source.as_deref(), Some("slurm_load_jobs"));

    let listing =
        parse_listing::<NodeRecord>(&fixture("sinfo-controller-down.json"), "nodes").unwrap();
    assert!(listing.records.is_empty());
    assert_eq!(listing.errors[0].code, Some(-1));
    assert_eq!(
        listing.errors[0].message.as_deref(),
        Some("Unspecified error")
    );
}

#[test]
fn listing_without_records_is_invalid() {
    let error = parse_listing::<NodeRecord>(r#"{"meta": {}, "sinfo": []}"#, "nodes").unwrap_err();
    assert_eq!(error, "the output has no nodes array, only meta, sinfo");
    let error = parse_listing::<NodeRecord>("sinfo: error: x", "nodes").unwrap_err();
    assert!(
        error.starts_with("the output is not a JSON object"),
        "{error}"
    );
    let error = parse_listing::<NodeRecord>(r#"{"nodes": [], "errors": 3}"#, "nodes").unwrap_err();
    assert!(
        error.starts_with("its errors array cannot be read"),
        "{error}"
    );
}

#[test]
fn sinfo_nodes_report_gpus() {
    let idle = nodes_of("sinfo-idle.json");
    assert_eq!(idle.len(), 1);
    assert_eq!(idle[0].name, "node1");
    assert_eq!(idle[0].gpus, 4);
    assert_eq!(idle[0].allocated_gpus, 0);
    assert_eq!(idle[0].cpus, 32);
    assert_eq!(idle[0].partitions, vec!["gpu", "short"]);
    assert!(idle[0].state.accepts_jobs());
    assert_eq!(idle[0].reason, None);

    let busy = nodes_of("sinfo-busy.json");
    assert_eq!(busy[0].state.base, "mixed");
    assert_eq!(busy[0].allocated_gpus, 4);
    assert_eq!(busy[0].allocated_cpus, 4);
}

#[test]
fn scontrol_partitions() {
    let partitions = parse_partitions(&fixture("scontrol-show-partition.txt"))
        .iter()
        .map(|record| record.to_partition_info().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(partitions.len(), 2);

    let (gpu, tres_gpus) = &partitions[0];
    assert_eq!(gpu.name, "gpu");
    assert!(gpu.is_default);
    assert_eq!(gpu.state, "UP");
    assert_eq!(gpu.nodes, "node1");
    assert_eq!(gpu.total_nodes, 1);
    assert_eq!(gpu.total_cpus, 32);
    assert_eq!(gpu.max_time, TimeLimit::Unlimited);
    assert_eq!(gpu.default_time, TimeLimit::NotSet);
    // Slurm 22.05 counts GPUs in a partition's TRES only when AccountingStorageTRES
    // lists gres/gpu, which the test cluster does not.
    assert_eq!(*tres_gpus, None);

    let (short, _) = &partitions[1];
    assert_eq!(short.name, "short");
    assert!(!short.is_default);
    assert_eq!(short.max_time, TimeLimit::Minutes(10));
}

#[test]
fn partition_line_shapes() {
    let text = "PartitionName=big Default=NO MaxTime=1-12:00:00 DefaultTime=00:30:00 \
                Nodes=(null) TotalNodes=0 TotalCPUs=0 State=DRAIN \
                TRES=cpu=64,gres/gpu=8 Comment=two words\n\
                unrelated line\n";
    let records = parse_partitions(text);
    assert_eq!(records.len(), 1);
    let (partition, tres_gpus) = records[0].to_partition_info().unwrap();
    assert_eq!(partition.max_time, TimeLimit::Minutes(36 * 60));
    assert_eq!(partition.default_time, TimeLimit::Minutes(30));
    assert_eq!(partition.nodes, "");
    assert_eq!(partition.state, "DRAIN");
    assert_eq!(tres_gpus, Some(8));
    assert_eq!(
        key_values("A=1 Comment=two words B=x=y"),
        vec![
            ("A", "1".to_string()),
            ("Comment", "two words".to_string()),
            ("B", "x=y".to_string())
        ]
    );
}

#[test]
fn scontrol_config_values() {
    let text = fixture("scontrol-show-config.txt");
    assert_eq!(config_value(&text, "MaxArraySize"), Some("1001"));
    assert_eq!(config_value(&text, "SLURM_VERSION"), Some("22.05.8"));
    assert_eq!(config_value(&text, "MinJobAge"), Some("300 sec"));
    assert_eq!(config_value(&text, "MaxArray"), None);
    // A value that contains `=` keeps it.
    assert!(
        config_value(&text, "AuthAltParameters")
            .is_some_and(|value| value.starts_with("jwt_key=/"))
    );
}

#[test]
fn sdiag_statistics() {
    let statistics = parse_sdiag(&fixture("sdiag.txt"));
    assert_eq!(
        statistics,
        Statistics {
            server_thread_count: Some(3),
            jobs_submitted: Some(0),
            jobs_running: Some(0),
            jobs_pending: Some(0),
            schedule_cycle_last_micros: Some(22),
        }
    );
    assert_eq!(parse_sdiag("no statistics"), Statistics::default());
}

#[test]
fn ping_states() {
    let up = parse_ping(&fixture("scontrol-ping.txt"));
    assert_eq!(up.len(), 1);
    assert!(up[0].is_up());
    assert_eq!(up[0].role, "primary");

    let down = parse_ping(&fixture("scontrol-ping-down.txt"));
    assert_eq!(down.len(), 1);
    assert!(!down[0].is_up());
    assert_eq!(
        down[0].to_string(),
        format!("{} (primary) DOWN", down[0].host)
    );

    let pair = parse_ping("Slurmctld(primary) at a is DOWN\nSlurmctld(backup) at b is UP\n");
    assert_eq!(pair.iter().filter(|state| state.is_up()).count(), 1);
    assert_eq!(pair[1].host, "b");
}

#[test]
fn sbatch_job_ids() {
    assert_eq!(
        parse_submitted_job_id(&fixture("sbatch-parsable.txt")),
        Some(7)
    );
    assert_eq!(parse_submitted_job_id("42;cluster1\n"), Some(42));
    assert_eq!(parse_submitted_job_id("note\n43\n\n"), Some(43));
    assert_eq!(parse_submitted_job_id(""), None);
    assert_eq!(parse_submitted_job_id("Submitted batch job 5\n"), None);
}

#[test]
fn scancel_error_reasons() {
    assert_eq!(
        scancel_errors(&fixture("scancel-unknown-job.stderr")),
        vec!["Invalid job id specified"]
    );
    assert_eq!(
        scancel_errors(&fixture("scancel-ended.stderr")),
        vec![ALREADY_DONE_MESSAGE]
    );
    assert!(scancel_errors(&fixture("scancel-sleeping.stderr")).is_empty());
}
