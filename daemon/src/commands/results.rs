//! `spillway results JOB`: where a finished job's artefact is, and what failed.

use anyhow::Context;
use spillway_common::envelope::JobEnvelope;
use spillway_common::layout;
use spillway_common::ledger::Ledger;
use spillway_common::store;

use super::output::{OutputFormat, print_json};

/// Prints the job envelope of a finished job.
pub async fn run(ledger: &Ledger, job_id: &str, output: OutputFormat) -> anyhow::Result<()> {
    let job = ledger
        .job(job_id)
        .await?
        .with_context(|| format!("job {job_id} not found in the ledger"))?;
    if !job.is_finished() {
        anyhow::bail!(
            "job {job_id} is {} ({} of {} tasks done); run `spillway status {job_id} --watch` to wait for it",
            job.state,
            job.succeeded + job.failed + job.dead,
            job.tasks_total
        );
    }
    if job.state == "cancelled" {
        // A cancelled job is not reduced, so it has no envelope.
        let reason = job.summary.as_deref().unwrap_or("no reason recorded");
        anyhow::bail!(
            "job {job_id} was cancelled ({reason}), so it has no results; `spillway status {job_id}` shows how far it got"
        );
    }
    let manifest = job.manifest()?;
    let uri = layout::job_envelope_uri(&manifest.output, job_id);
    let bytes = store::get(&uri)
        .await
        .with_context(|| format!("failed to read the job envelope {uri}"))?;
    let envelope: JobEnvelope =
        serde_json::from_slice(&bytes).with_context(|| format!("invalid job envelope {uri}"))?;

    if output.is_json() {
        return print_json(&envelope);
    }
    println!("job        {}", envelope.job_id);
    println!("state      {}", envelope.state);
    println!("records    {}", envelope.records);
    println!("run hash   {}", envelope.run_hash);
    println!("envelope   {uri}");
    if let (Some(uri), Some(sha256)) = (&envelope.artefact_uri, &envelope.artefact_sha256) {
        println!("artefact   {uri}");
        println!("sha256     {sha256}");
    }
    if !envelope.failed_tasks.is_empty() {
        println!("failed tasks:");
        for task in &envelope.failed_tasks {
            println!("  {} {}: {}", task.task_id, task.state, task.reason);
        }
    }
    Ok(())
}
