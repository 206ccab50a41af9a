//! Tests of the record conversions on captured slurmrestd 22.05 responses, parsed by
//! the generated response types, and on hand-written shapes of later versions.

use serde::de::DeserializeOwned;
use serde_json::json;

use super::*;
use crate::generated::types;
use crate::state::{JobBaseState, JobStateFlag};

fn fixture<T: DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn jobs_of(name: &str) -> Vec<JobInfo> {
    let response: types::V0038JobsResponse = fixture(name);
    response
        .jobs
        .unwrap()
        .iter()
        .map(|record| record.to_job_info().unwrap())
        .collect()
}

fn job(jobs: &[JobInfo], job_id: u64) -> &JobInfo {
    jobs.iter()
        .find(|job| job.job_id == job_id)
        .unwrap_or_else(|| panic!("job {job_id} not in fixture"))
}

#[test]
fn running_array_has_tasks_and_collapsed_rest() {
    let jobs = jobs_of("jobs-arrays-running.json");
    assert_eq!(jobs.len(), 6);

    let collapsed = job(&jobs, 1);
    assert_eq!(collapsed.array_job_id, Some(1));
    assert_eq!(collapsed.state.base, Some(JobBaseState::Pending));
    assert_eq!(collapsed.reason.as_deref(), Some("JobArrayTaskLimit"));
    let pending = collapsed.pending_indices().unwrap();
    assert_eq!(pending.indices().collect::<Vec<_>>(), vec![2, 3, 4, 5]);
    assert_eq!(pending.throttle, Some(2));
    assert_eq!(collapsed.exit_status, None);
    assert_eq!(collapsed.nodes, None);

    let element = job(&jobs, 3);
    assert_eq!(element.array_job_id, Some(1));
    assert_eq!(element.array_index(), Some(0));
    assert!(element.state.is_running());
    assert_eq!(element.reason, None);
    assert_eq!(element.nodes.as_deref(), Some("node1"));
    assert_eq!(element.time_limit, TimeLimit::Minutes(5));
    assert_eq!(element.name, "fixture-finishing");
    assert_eq!(element.partition, "gpu");
    assert!(element.start_time.is_some());
}

#[test]
fn finished_array_decodes_exit_codes() {
    let jobs = jobs_of("jobs-arrays-finished.json");

    let completed = job(&jobs, 3);
    assert_eq!(completed.state.base, Some(JobBaseState::Completed));
    assert_eq!(completed.exit_status, Some(ExitStatus::Exited(0)));

    let failed = job(&jobs, 4);
    assert_eq!(failed.state.base, Some(JobBaseState::Failed));
    assert_eq!(failed.exit_status, Some(ExitStatus::Exited(3)));
    assert_eq!(failed.reason.as_deref(), Some("NonZeroExitCode"));

    // The last element to start takes over the array's own job id.
    let last = job(&jobs, 1);
    assert_eq!(last.array_index(), Some(5));
    assert_eq!(last.tracking_id(), 1);
}

#[test]
fn cancelled_array_elements_are_signalled() {
    let jobs = jobs_of("job-array-cancelled.json");
    assert_eq!(jobs.len(), 3);
    for element in jobs.iter().filter(|job| job.array_index().is_some()) {
        assert_eq!(element.state.base, Some(JobBaseState::Cancelled));
        assert_eq!(element.exit_status, Some(ExitStatus::Signaled(15)));
    }
    let collapsed = job(&jobs, 2);
    assert!(collapsed.state.is_finished());
    assert_eq!(collapsed.pending_indices().unwrap().to_string(), "2-3%2");
}

#[test]
fn rejected_submission_leaves_failed_record() {
    let jobs = jobs_of("jobs-arrays-finished.json");
    let rejected = jobs
        .iter()
        .find(|job| job.name == "fixture-five-gpus")
        .unwrap();
    assert_eq!(rejected.state.base, Some(JobBaseState::Failed));
    assert_eq!(rejected.reason.as_deref(), Some("BadConstraints"));
    assert_eq!(rejected.nodes, None);
}

#[test]
fn nodes_report_four_gpus() {
    let response: types::V0038NodesResponse = fixture("nodes.json");
    let nodes = response.nodes.unwrap();
    let node = nodes[0].to_node_info().unwrap();
    assert_eq!(node.name, "node1");
    assert_eq!(node.gpus, 4);
    assert_eq!(node.allocated_gpus, 0);
    assert_eq!(node.cpus, 32);
    assert_eq!(node.state.base, "idle");
    assert!(node.state.accepts_jobs());
    assert_eq!(node.partitions, vec!["gpu", "short"]);
    assert_eq!(node.reason, None);
}

#[test]
fn partitions_report_limits() {
    let response: types::V0038PartitionsResponse = fixture("partitions.json");
    let partitions = response
        .partitions
        .unwrap()
        .iter()
        .map(|record| record.to_partition_info().unwrap())
        .collect::<Vec<_>>();
    let (gpu, gpu_tres) = &partitions[0];
    assert_eq!(gpu.name, "gpu");
    assert!(gpu.is_default);
    assert_eq!(gpu.state, "UP");
    assert_eq!(gpu.max_time, TimeLimit::Unlimited);
    assert_eq!(gpu.default_time, TimeLimit::NotSet);
    assert_eq!(gpu.nodes, "node1");
    assert_eq!(gpu.total_cpus, 32);
    // Without AccountingStorageTRES=gres/gpu the TRES string counts no GPUs.
    assert_eq!(*gpu_tres, None);

    let (short, _) = &partitions[1];
    assert!(!short.is_default);
    assert_eq!(short.max_time, TimeLimit::Minutes(10));
}

#[test]
fn captured_responses_parse_as_generated_types() {
    let _: types::V0038Pings = fixture("ping.json");
    let _: types::V0038Diag = fixture("diag.json");
    let _: types::V0038JobSubmissionResponse = fixture("submit.json");
    let _: types::V0038Errors = fixture("cancel.json");
    let _: types::V0038JobsResponse = fixture("job-array-running.json");
    for name in [
        "error-cancel-job-not-found.json",
        "error-expired-token-cancel.json",
        "error-expired-token-jobs.json",
        "error-expired-token-nodes.json",
        "error-expired-token-ping.json",
        "error-impossible-gres.json",
        "error-invalid-partition.json",
        "error-job-not-found.json",
        "error-unknown-key.json",
    ] {
        let body: types::V0038Errors = fixture(name);
        assert!(!body.errors.unwrap().is_empty(), "{name} has no errors");
    }
}

#[test]
fn newer_job_shapes() {
    let document: serde_json::Value = fixture("handwritten-newer-shapes.json");
    let records: Vec<JobRecord> = serde_json::from_value(document["jobs"].clone()).unwrap();
    let jobs = records
        .iter()
        .map(|record| record.to_job_info().unwrap())
        .collect::<Vec<_>>();

    let collapsed = job(&jobs, 200);
    assert_eq!(collapsed.array_job_id, Some(200));
    assert_eq!(
        collapsed
            .pending_indices()
            .unwrap()
            .indices()
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 5]
    );
    assert_eq!(collapsed.time_limit, TimeLimit::Unlimited);
    assert_eq!(collapsed.exit_status, None);

    let configuring = job(&jobs, 201);
    assert_eq!(configuring.array_index(), Some(0));
    assert_eq!(configuring.state.flags, vec![JobStateFlag::Configuring]);
    assert!(configuring.state.is_running());
    assert_eq!(configuring.time_limit, TimeLimit::Minutes(30));
    assert_eq!(configuring.nodes.as_deref(), Some("node[1-2]"));

    let signalled = job(&jobs, 202);
    assert_eq!(signalled.exit_status, Some(ExitStatus::Signaled(15)));
    assert_eq!(signalled.time_limit, TimeLimit::NotSet);

    let cancelled = job(&jobs, 300);
    assert_eq!(cancelled.array_job_id, None);
    assert_eq!(cancelled.array, None);
    assert_eq!(cancelled.state.cancelled_by, Some(1000));
    assert_eq!(cancelled.exit_status, Some(ExitStatus::Signaled(15)));
    assert_eq!(cancelled.time_limit, TimeLimit::PartitionLimit);

    let completing = job(&jobs, 301);
    assert_eq!(completing.state.base, None);
    assert!(completing.state.is_active());
    assert_eq!(completing.exit_status, None);
    assert_eq!(completing.time_limit, TimeLimit::NotSet);

    let completed = job(&jobs, 302);
    assert_eq!(completed.array_job_id, None);
    assert_eq!(completed.exit_status, Some(ExitStatus::Exited(0)));
    assert_eq!(completed.time_limit, TimeLimit::Unlimited);
}

#[test]
fn newer_node_shapes() {
    let document: serde_json::Value = fixture("handwritten-newer-shapes.json");
    let records: Vec<NodeRecord> = serde_json::from_value(document["nodes"].clone()).unwrap();

    let drained = records[0].to_node_info().unwrap();
    assert_eq!(drained.state.base, "idle");
    assert_eq!(drained.state.flags, vec!["DRAIN".to_string()]);
    assert!(!drained.state.accepts_jobs());
    assert_eq!(drained.gpus, 4);
    assert_eq!(drained.allocated_gpus, 1);
    assert_eq!(drained.reason.as_deref(), Some("maintenance"));

    let from_tres = records[1].to_node_info().unwrap();
    assert_eq!(from_tres.gpus, 8);
    assert_eq!(from_tres.allocated_gpus, 2);
    assert_eq!(from_tres.cpus, 64);
    assert_eq!(from_tres.reason, None);
}

#[test]
fn newer_partition_shapes() {
    let document: serde_json::Value = fixture("handwritten-newer-shapes.json");
    let records: Vec<PartitionRecord> =
        serde_json::from_value(document["partitions"].clone()).unwrap();
    let (partition, tres_gpus) = records[0].to_partition_info().unwrap();
    assert_eq!(partition.state, "UP");
    assert_eq!(partition.nodes, "gpu-[a-b]");
    assert_eq!(partition.total_nodes, 2);
    assert_eq!(partition.total_cpus, 128);
    assert_eq!(tres_gpus, Some(12));
    assert_eq!(partition.gpus, 12);
    assert_eq!(partition.max_time, TimeLimit::Unlimited);
    assert_eq!(partition.default_time, TimeLimit::Minutes(60));
}

#[test]
fn job_without_id_is_invalid() {
    let record = JobRecord(json!({"name": "x"}).as_object().unwrap().clone());
    let error = record.to_job_info().unwrap_err();
    assert!(error.to_string().contains("job_id"), "{error}");
}

#[test]
fn unreadable_array_expression_is_invalid() {
    let record = JobRecord(
        json!({"job_id": 5, "array_job_id": 5, "array_task_id": null, "array_task_string": "1-x"})
            .as_object()
            .unwrap()
            .clone(),
    );
    let error = record.to_job_info().unwrap_err();
    assert!(error.to_string().contains("array_task_string"), "{error}");
}
