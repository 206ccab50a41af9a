//! `spillway status [JOB]`: a job's progress, or a list of active and recent jobs.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use spillway_common::ledger::{JobRecord, Ledger};

use spillway_common::envelope::{FailedTask, JobCost};

use super::output::{OutputFormat, print_json};
use crate::cost::PriceTable;

/// One job with what its worker time has cost so far, as `--output json` prints it.
#[derive(serde::Serialize)]
struct JobStatus {
    #[serde(flatten)]
    job: JobRecord,
    cost: JobCost,
}

/// Prints one job's state; with `watch`, shows a progress bar until it finishes.
pub async fn run(
    ledger: &Ledger,
    prices: &PriceTable,
    job_id: Option<&str>,
    watch: bool,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let Some(job_id) = job_id else {
        return list(ledger, output).await;
    };
    let job = if watch {
        wait_admitted(ledger, job_id).await?
    } else {
        read(ledger, job_id).await?
    };
    if output.is_json() {
        // With --watch, JSON is printed once the job has finished, for scripts that wait.
        let job = if watch && !job.is_finished() {
            wait_finished(ledger, job).await?
        } else {
            job
        };
        let failed = watch && job.state != "succeeded";
        let (job_id, state) = (job.job_id.clone(), job.state.clone());
        let cost = prices.job_cost(&ledger.usage(&job.job_id).await?);
        let job = without_manifest(job);
        print_json(&JobStatus { job, cost })?;
        if failed {
            anyhow::bail!("job {job_id} ended {state}");
        }
        return Ok(());
    }
    if !watch || job.is_finished() {
        let cost = prices.job_cost(&ledger.usage(&job.job_id).await?);
        print_job(&job, &cost);
        return Ok(());
    }
    watch_job(ledger, prices, job).await
}

async fn read(ledger: &Ledger, job_id: &str) -> anyhow::Result<JobRecord> {
    ledger.job(job_id).await?.with_context(|| {
        format!("job {job_id} not found in the ledger; check the id that `spillway submit` printed")
    })
}

/// Time `status --watch` waits for a just-submitted job to appear in the ledger.
const ADMISSION_WAIT: Duration = Duration::from_secs(60);

async fn wait_admitted(ledger: &Ledger, job_id: &str) -> anyhow::Result<JobRecord> {
    let deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
    loop {
        if let Some(job) = ledger.job(job_id).await? {
            return Ok(job);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "job {job_id} is not in the ledger after {} s; check that `spillway serve` is running \
                 and read the dead-letter stream if the manifest was rejected",
                ADMISSION_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_finished(ledger: &Ledger, mut job: JobRecord) -> anyhow::Result<JobRecord> {
    while !job.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        job = read(ledger, &job.job_id).await?;
    }
    Ok(job)
}

async fn watch_job(ledger: &Ledger, prices: &PriceTable, mut job: JobRecord) -> anyhow::Result<()> {
    let bar = ProgressBar::new(job.tasks_total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} tasks {msg}",
        )
        .expect("progress template is valid")
        .progress_chars("=> "),
    );
    loop {
        bar.set_position(job.succeeded + job.failed + job.dead);
        bar.set_message(format!(
            "{} | leased {} queued {} failed {} dead {}",
            job.state, job.leased, job.queued, job.failed, job.dead
        ));
        if job.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        job = read(ledger, &job.job_id).await?;
    }
    bar.finish();
    let cost = prices.job_cost(&ledger.usage(&job.job_id).await?);
    print_job(&job, &cost);
    // Scripts that wait with --watch learn the outcome from the exit status.
    if job.state != "succeeded" {
        anyhow::bail!(
            "job {} ended {}; `spillway results {}` lists the failed tasks",
            job.job_id,
            job.state,
            job.job_id
        );
    }
    Ok(())
}

fn print_job(job: &JobRecord, cost: &JobCost) {
    println!("job        {}", job.job_id);
    println!("name       {}", job.name);
    println!("state      {}", job.state);
    println!(
        "tasks      {} total: {} succeeded, {} leased, {} queued, {} failed, {} dead",
        job.tasks_total, job.succeeded, job.leased, job.queued, job.failed, job.dead
    );
    if let Some(round) = &job.round {
        let total = job.manifest().ok().and_then(|manifest| {
            let training = manifest.training.as_ref()?;
            let tasks = spillway_common::task::slice(&manifest).len() as u64;
            Some(spillway_common::train::total_rounds(training, tasks))
        });
        let last = total.map_or_else(
            || "?".to_string(),
            |total| total.saturating_sub(1).to_string(),
        );
        println!(
            "round      {} of rounds 0 to {last}, on weights {}",
            round.round, round.weights_sha256
        );
    }
    println!(
        "attempts   {} retries, {} lease expiries, {} duplicates suppressed",
        job.retries, job.lease_expiries, job.duplicates
    );
    // `+ 0.0` turns the -0.0 of an empty sum into 0.0.
    let worker_secs = cost.lines.iter().map(|line| line.worker_secs).sum::<f64>() + 0.0;
    let gpu_secs = cost.lines.iter().map(|line| line.gpu_secs).sum::<f64>() + 0.0;
    println!(
        "cost       {:.4} {} for {worker_secs:.1} worker-seconds ({gpu_secs:.1} GPU-seconds)",
        cost.total, cost.currency
    );
    for line in cost.lines.iter().filter(|_| cost.lines.len() > 1) {
        println!(
            "           {:.4} on {} ({} x {}): {:.0} s",
            line.cost, line.backend, line.gpus_per_worker, line.gpu_sku, line.worker_secs
        );
    }
    if let Some(uri) = &job.artefact_uri {
        println!("artefact   {uri}");
    }
    if let Some(failure) = first_failure(job) {
        println!("failure    {failure}");
    }
}

/// Describes why a failed job failed: the first failed task (or round) and its
/// reason, from the summary the daemon wrote when the job finished.
fn first_failure(job: &JobRecord) -> Option<String> {
    let summary: serde_json::Value = serde_json::from_str(job.summary.as_deref()?).ok()?;
    let failure: FailedTask = serde_json::from_value(summary.get("first_failure")?.clone()).ok()?;
    let count = summary["failed_tasks"].as_u64().unwrap_or(1);
    let more = match count {
        0 | 1 => String::new(),
        count => format!(
            "; `spillway results {}` lists all {count} failed tasks",
            job.job_id
        ),
    };
    Some(format!(
        "{} {}: {}{more}",
        failure.task_id, failure.state, failure.reason
    ))
}

async fn list(ledger: &Ledger, output: OutputFormat) -> anyhow::Result<()> {
    let mut jobs = Vec::new();
    for job_id in ledger
        .active_jobs()
        .await?
        .into_iter()
        .chain(ledger.finished_jobs(20).await?)
    {
        if let Some(job) = ledger.job(&job_id).await? {
            jobs.push(without_manifest(job));
        }
    }
    if output.is_json() {
        return print_json(&jobs);
    }
    println!(
        "{:<24} {:<10} {:>7} {:>9} {:>7}  name",
        "job", "state", "tasks", "succeeded", "failed"
    );
    for job in jobs {
        println!(
            "{:<24} {:<10} {:>7} {:>9} {:>7}  {}",
            job.job_id,
            job.state,
            job.tasks_total,
            job.succeeded,
            job.failed + job.dead,
            job.name
        );
    }
    Ok(())
}

fn without_manifest(mut job: JobRecord) -> JobRecord {
    job.manifest_json.clear();
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_job(summary: serde_json::Value) -> JobRecord {
        JobRecord {
            job_id: "j-1".into(),
            state: "failed".into(),
            summary: Some(summary.to_string()),
            ..JobRecord::default()
        }
    }

    #[test]
    fn failure_names_the_first_failed_task() {
        let job = failed_job(serde_json::json!({
            "failed_tasks": 3,
            "first_failure": {"task_id": "t000002", "state": "dead", "reason": "kernel failed"},
        }));

        let failure = first_failure(&job).unwrap();

        assert!(
            failure.starts_with("t000002 dead: kernel failed"),
            "{failure}"
        );
        assert!(
            failure.contains("`spillway results j-1` lists all 3"),
            "{failure}"
        );
    }

    #[test]
    fn no_failure_without_one_in_the_summary() {
        let older = failed_job(serde_json::json!({"failed_tasks": 0}));
        assert_eq!(first_failure(&older), None);
        let unfinished = JobRecord::default();
        assert_eq!(first_failure(&unfinished), None);
    }
}
