//! Admission: validate a message's manifest, check that a backend can run it, slice
//! it into tasks and record them in the ledger. Runs the intake loop of one source.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spillway_common::ledger::{Admission, Ledger, LedgerError};
use spillway_common::manifest::{self, ManifestError, ManifestErrors};
use spillway_common::process::error_chain;
use spillway_common::task::{job_id, slice};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backend::Backend;
use crate::intake::{Delivery, IntakeSource};
use crate::metrics::{IntakeLabels, Metrics};

/// Admission decision for one message.
#[derive(Debug)]
pub enum Decision {
    /// The job is durable in the ledger; the message can be acknowledged.
    Admitted {
        job_id: String,
        created: bool,
        tasks: usize,
    },
    /// The message cannot become a job; it goes to the dead-letter destination.
    Rejected {
        reason: String,
        errors: Vec<ManifestError>,
    },
}

/// Everything admission needs; shared by every intake loop.
pub struct Admitter {
    pub ledger: Ledger,
    pub backends: Vec<Arc<dyn Backend>>,
    /// Notification targets that manifests may name.
    pub notify_targets: crate::notify::AllowedTargets,
}

impl Admitter {
    /// Decides one message. A ledger error is returned, and the message must stay
    /// unacknowledged so that it is delivered again.
    pub async fn admit(&self, body: &[u8]) -> Result<Decision, LedgerError> {
        let manifest = match manifest::parse(body) {
            Ok(manifest) => manifest,
            Err(ManifestErrors(errors)) => {
                let reason = ManifestErrors(errors.clone()).to_string();
                return Ok(Decision::Rejected { reason, errors });
            }
        };

        if let Err(error) = supported_stores(&manifest) {
            let reason = ManifestErrors(vec![error.clone()]).to_string();
            return Ok(Decision::Rejected {
                reason,
                errors: vec![error],
            });
        }
        if let Err(error) = self.notify_targets.check(&manifest) {
            let reason = ManifestErrors(vec![error.clone()]).to_string();
            return Ok(Decision::Rejected {
                reason,
                errors: vec![error],
            });
        }
        if let Err(problems) = self.placeable(&manifest) {
            let error = ManifestError {
                path: "worker".into(),
                value: manifest.worker.digest(),
                problem: "no enabled backend can run this worker build".into(),
                fix: problems.join("; "),
            };
            let reason = ManifestErrors(vec![error.clone()]).to_string();
            return Ok(Decision::Rejected {
                reason,
                errors: vec![error],
            });
        }

        let job_id = job_id(&manifest);
        // A training job's tasks are created round by round by the reconcile loop,
        // pinned to each round's weights, so none exists at admission.
        let tasks = if manifest.kernel.is_training() {
            Vec::new()
        } else {
            slice(&manifest)
        };
        let admission = self.ledger.admit(&job_id, &manifest, &tasks).await?;

        Ok(Decision::Admitted {
            created: admission == Admission::Created,
            job_id,
            tasks: tasks.len(),
        })
    }

    fn placeable(&self, manifest: &manifest::Manifest) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for backend in &self.backends {
            match backend.check(manifest) {
                Ok(()) => return Ok(()),
                Err(problem) => problems.push(format!("{}: {problem}", backend.name())),
            }
        }
        if problems.is_empty() {
            problems.push("no backend is enabled in the configuration".into());
        }
        Err(problems)
    }
}

/// Checks that this build can reach the stores the manifest names (output, model and
/// the first shard's), so that no job admits work whose results it cannot write.
fn supported_stores(manifest: &manifest::Manifest) -> Result<(), ManifestError> {
    let mut uris = vec![
        ("output", manifest.output.clone()),
        ("model.uri", manifest.model.uri.clone()),
    ];
    if let Some(shard) = manifest.inputs.first() {
        uris.push(("inputs[0].uri", shard.uri.clone()));
    }
    for (path, uri) in uris {
        if let Err(error) = spillway_common::store::locate(&uri) {
            return Err(ManifestError {
                path: path.into(),
                value: uri,
                problem: format!("this Spillway build cannot use the store: {error}"),
                fix: "use a store this site supports: file://, s3:// with AWS_* settings, or \
                      gs:// with Google credentials or STORAGE_EMULATOR_HOST"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Reads one source until `shutdown`, admitting every message.
pub async fn run_intake<S: IntakeSource>(
    mut source: S,
    admitter: Arc<Admitter>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let queue = source.queue().to_string();
    info!(queue, "intake started");
    let mut backoff = Duration::from_millis(200);
    let mut draining = false;

    while !shutdown.is_cancelled() {
        // While draining, messages stay in the queue for a later daemon.
        match admitter.ledger.is_draining().await {
            Ok(now_draining) => {
                if now_draining != draining {
                    info!(queue, draining = now_draining, "intake drain flag changed");
                    draining = now_draining;
                }
            }
            Err(error) => {
                warn!(queue, error = %error_chain(&error), "failed to read the drain flag")
            }
        }
        if draining {
            sleep_or_stop(&shutdown, Duration::from_secs(1)).await;
            continue;
        }

        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = source.receive() => received,
        };
        let deliveries = match received {
            Ok(deliveries) => deliveries,
            Err(error) => {
                warn!(queue, error = %error_chain(&error), "intake receive failed; retrying");
                sleep_or_stop(&shutdown, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);

        for delivery in deliveries {
            handle(&mut source, &admitter, &metrics, &queue, delivery).await;
        }
    }
    source.close().await;
    info!(queue, "intake stopped");
}

async fn handle<S: IntakeSource>(
    source: &mut S,
    admitter: &Admitter,
    metrics: &Metrics,
    queue: &str,
    delivery: Delivery,
) {
    let received = Instant::now();
    let count = |outcome: &str| {
        metrics
            .intake_messages
            .get_or_create(&IntakeLabels {
                queue: queue.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    };

    if delivery.delivery_count > source.max_deliveries() {
        let reason = format!(
            "message was delivered {} times without being acknowledged (max_deliveries is {}); \
             it may crash the daemon, so it is set aside",
            delivery.delivery_count,
            source.max_deliveries()
        );
        dead_letter(source, &delivery, queue, &reason, &[]).await;
        count("dead_lettered");
        return;
    }

    match admitter.admit(&delivery.body).await {
        Ok(Decision::Admitted {
            job_id,
            created,
            tasks,
        }) => {
            if let Err(error) = source.ack(&delivery).await {
                // The job is durable; the redelivered message will find it.
                warn!(queue, message_id = %delivery.message_id, job_id, error = %error_chain(&error), "failed to acknowledge message");
            }
            metrics
                .admission_seconds
                .observe(received.elapsed().as_secs_f64());
            if created {
                info!(queue, message_id = %delivery.message_id, job_id, tasks, "job admitted");
                count("admitted");
            } else {
                info!(queue, message_id = %delivery.message_id, job_id, "redelivered message matches an existing job");
                count("redelivered");
            }
        }
        Ok(Decision::Rejected { reason, errors }) => {
            warn!(queue, message_id = %delivery.message_id, reason = %reason.trim_end(), "manifest rejected");
            dead_letter(source, &delivery, queue, &reason, &errors).await;
            count("dead_lettered");
        }
        Err(error) => {
            // Left unacknowledged, so the source delivers it again: the Redis stream
            // after claim_idle_secs, SQS after the visibility timeout.
            error!(queue, message_id = %delivery.message_id, error = %error_chain(&error), "admission failed; the message will be retried");
            source.release(&delivery).await;
            count("error");
        }
    }
}

async fn dead_letter<S: IntakeSource>(
    source: &mut S,
    delivery: &Delivery,
    queue: &str,
    reason: &str,
    errors: &[ManifestError],
) {
    let errors_json = serde_json::to_string(errors).expect("errors serialize");
    match source.dead_letter(delivery, reason, &errors_json).await {
        Ok(()) => debug!(queue, message_id = %delivery.message_id, "message dead-lettered"),
        Err(error) => {
            error!(queue, message_id = %delivery.message_id, error = %error_chain(&error), "failed to dead-letter message; it stays pending")
        }
    }
}

async fn sleep_or_stop(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}
