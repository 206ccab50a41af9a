//! `spillway submit FILE`: validate a manifest and send it to the intake stream.

use std::path::Path;

use anyhow::Context;
use spillway_common::manifest;
use spillway_common::task::job_id;

use crate::config::Config;
use crate::intake::redis_stream;

/// Sends the manifest and prints its job id. With `validate`, an invalid manifest is
/// reported here and not sent.
pub async fn run(config: &Config, file: &Path, validate: bool) -> anyhow::Result<()> {
    let body = std::fs::read(file)
        .with_context(|| format!("failed to read manifest {}", file.display()))?;

    let job_id = if validate {
        let manifest = manifest::parse(&body)
            .map_err(|errors| anyhow::anyhow!("{}: {errors}", file.display()))?;
        Some(job_id(&manifest))
    } else {
        manifest::parse(&body)
            .ok()
            .map(|manifest| job_id(&manifest))
    };

    let url = config.ledger_url()?;
    let mut conn = spillway_common::ledger::LedgerConnection::connect(&url).await?;
    let stream = &config.intake.redis_stream.stream;
    let message_id = redis_stream::submit(&mut conn, stream, &body)
        .await
        .with_context(|| format!("failed to send the manifest to stream {stream}"))?;

    match job_id {
        Some(job_id) => println!("{job_id}"),
        None => println!(
            "sent as message {message_id}; the manifest is invalid, so it will be dead-lettered"
        ),
    }
    Ok(())
}

/// `spillway validate FILE`: prints every error, or the job id and task count.
pub fn validate(file: &Path) -> anyhow::Result<()> {
    let body = std::fs::read(file)
        .with_context(|| format!("failed to read manifest {}", file.display()))?;
    let manifest =
        manifest::parse(&body).map_err(|errors| anyhow::anyhow!("{}: {errors}", file.display()))?;
    let tasks = spillway_common::task::slice(&manifest);
    println!(
        "valid: job {} with {} tasks over {} records",
        job_id(&manifest),
        tasks.len(),
        manifest.total_records()
    );
    Ok(())
}
