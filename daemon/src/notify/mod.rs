//! Job notifications: when a job succeeds, fails or is cancelled, a JSON *notice*
//! goes to the job's *target*, an SQS queue or a Pub/Sub topic, so that scientists
//! need not poll.
//!
//! A manifest names its target in `notify`, or the job gets `[notify] default`. Each
//! target kind is one [`Notifier`]; only the targets listed in `[notify]` exist, and
//! admission rejects a manifest naming another ([`AllowedTargets`]).
//!
//! Delivery is at least once: a notice counts as sent only once the queue or topic
//! accepted it, and the [`outbox`] retries until then, so a consumer may see the same
//! notice twice and should key on `job_id` and `state`. The reconcile loop only hands
//! the job id over ([`Notifiers::job_finished`]) and never waits for a send.

pub mod outbox;
pub mod pubsub;
pub mod sqs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use spillway_common::ledger::{JobRecord, Ledger};
use spillway_common::manifest::{Manifest, ManifestError};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::config::NotifyConfig;

/// Version of the notice format, sent as `version` in every notice.
pub const NOTICE_VERSION: u32 = 1;
/// Finished job ids that reconcile hands over before the outbox takes them. A full
/// channel loses only latency: the outbox finds the job in the finished index.
const HANDOVER_CAPACITY: usize = 1024;

/// A failure of a source or client, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the notifiers, naming the target and the failing step.
#[derive(Debug, thiserror::Error)]
#[error("notification {operation} failed for {target}")]
pub struct NotifyError {
    pub operation: &'static str,
    pub target: String,
    #[source]
    pub source: BoxError,
}

/// A step that did not finish in time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {} s", .0.as_secs())]
pub struct TimedOut(pub Duration);

/// The notice of one finished job, as its JSON goes out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobNotice {
    /// Notice format version, [`NOTICE_VERSION`].
    pub version: u32,
    pub job_id: String,
    /// The manifest's `name`.
    pub name: String,
    /// `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// URI of the artefact; only a succeeded job has one.
    pub artefact_uri: Option<String>,
    /// SHA-256 of the artefact's bytes.
    pub artefact_sha256: Option<String>,
    /// URI of the job envelope; a cancelled job has none.
    pub envelope_uri: Option<String>,
    /// Run hash of the job envelope; a cancelled job has none.
    pub run_hash: Option<String>,
    /// Records over all input shards.
    pub records: Option<u64>,
    pub tasks: TaskCounts,
    /// Finish time, RFC 3339 in UTC.
    pub finished_at: Option<String>,
    /// The manifest's labels.
    pub labels: BTreeMap<String, String>,
}

/// A job's task counts by state when it finished.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskCounts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    /// Tasks never run: queued or leased when the job was cancelled.
    pub not_run: u64,
}

impl JobNotice {
    /// Builds the notice of a finished job from its ledger record and the summary that
    /// the reduction stored with it.
    pub fn from_record(job: &JobRecord, labels: BTreeMap<String, String>) -> Self {
        let summary: serde_json::Value = job
            .summary
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let text = |key: &str| {
            summary
                .get(key)
                .and_then(|value| value.as_str())
                .map(String::from)
        };

        Self {
            version: NOTICE_VERSION,
            job_id: job.job_id.clone(),
            name: job.name.clone(),
            state: job.state.clone(),
            artefact_uri: job.artefact_uri.clone(),
            artefact_sha256: text("artefact_sha256"),
            envelope_uri: text("envelope_uri"),
            run_hash: text("run_hash"),
            records: summary.get("records").and_then(|value| value.as_u64()),
            tasks: TaskCounts {
                total: job.tasks_total,
                succeeded: job.succeeded,
                failed: job.failed,
                dead: job.dead,
                not_run: job.queued + job.leased,
            },
            finished_at: job.finished_at_ms.and_then(rfc3339_from_ms),
            labels,
        }
    }

    /// Serializes the notice as sent.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("notice serializes")
    }
}

fn rfc3339_from_ms(ms: i64) -> Option<String> {
    let nanos = i128::from(ms) * 1_000_000;
    let moment = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    moment
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// One kind of destination for notices.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync {
    /// Returns the target URI that this notifier sends to.
    fn target(&self) -> &str;

    /// Sends one notice whose JSON is `body`. Returns once the service accepted it.
    async fn send(&self, notice: &JobNotice, body: &str) -> Result<(), BoxError>;

    /// Checks that the queue or topic exists, for `spillway check-config`, and returns
    /// a one-line description.
    async fn probe(&self) -> Result<String, BoxError>;
}

/// The targets that `[notify]` configures, which manifests may name.
#[derive(Debug, Clone, Default)]
pub struct AllowedTargets {
    targets: HashSet<String>,
}

impl AllowedTargets {
    /// Collects the targets of `[notify]`.
    pub fn from_config(config: &NotifyConfig) -> Self {
        Self {
            targets: config.targets().into_iter().collect(),
        }
    }

    /// Checks that the manifest's `notify`, if any, is a configured target.
    pub fn check(&self, manifest: &Manifest) -> Result<(), ManifestError> {
        let Some(target) = &manifest.notify else {
            return Ok(());
        };
        if self.targets.contains(target) {
            return Ok(());
        }
        let mut configured: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        configured.sort_unstable();
        let fix = if configured.is_empty() {
            "remove `notify`: this site sends no notifications".to_string()
        } else {
            format!(
                "use one of the targets this site accepts: {}",
                configured.join(", ")
            )
        };
        Err(ManifestError {
            path: "notify".into(),
            value: target.clone(),
            problem: "notification target not accepted by this site".into(),
            fix,
        })
    }
}

/// Every configured notifier, and the handover from the reconcile loop to the outbox.
pub struct Notifiers {
    targets: HashMap<String, Arc<dyn Notifier>>,
    default: Option<String>,
    timeout: Duration,
    handover: mpsc::Sender<String>,
}

impl Notifiers {
    /// Builds a notifier per configured target and the outbox that sends through them.
    /// Sends no request. Spawn [`outbox::Outbox::run`] to start sending.
    pub async fn connect(
        config: &NotifyConfig,
        ledger: Ledger,
    ) -> Result<(Arc<Self>, outbox::Outbox), NotifyError> {
        let mut targets: HashMap<String, Arc<dyn Notifier>> = HashMap::new();
        for queue in &config.sqs {
            let notifier = sqs::SqsNotifier::connect(queue.clone()).await?;
            info!(target = notifier.target(), "notification target configured");
            targets.insert(notifier.target().to_string(), Arc::new(notifier));
        }
        for topic in &config.pubsub {
            let notifier = pubsub::PubsubNotifier::connect(topic.clone()).await?;
            info!(target = notifier.target(), "notification target configured");
            targets.insert(notifier.target().to_string(), Arc::new(notifier));
        }

        let (handover, finished) = mpsc::channel(HANDOVER_CAPACITY);
        let notifiers = Arc::new(Self {
            targets,
            default: config.default.clone(),
            timeout: Duration::from_secs(config.timeout_secs),
            handover,
        });
        let outbox = outbox::Outbox::new(Arc::clone(&notifiers), ledger, config, finished);
        Ok((notifiers, outbox))
    }

    /// Returns whether any target is configured.
    pub fn is_enabled(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Hands a job that reached a final state over to the outbox, which sends its
    /// notice. Never waits: when the handover is full, the outbox still finds the job
    /// in the ledger's finished index on its next pass.
    pub fn job_finished(&self, job_id: &str) {
        if !self.is_enabled() {
            return;
        }
        if self.handover.try_send(job_id.to_string()).is_err() {
            debug!(
                job_id,
                "notification handover full; the outbox finds the job on its next pass"
            );
        }
    }

    /// Returns the target of a manifest: its `notify`, else the default.
    pub fn target_of<'a>(&'a self, manifest: &'a Manifest) -> Option<&'a str> {
        manifest.notify.as_deref().or(self.default.as_deref())
    }

    /// Sends a notice to `target` within `[notify] timeout_secs`.
    pub async fn send(&self, target: &str, notice: &JobNotice) -> Result<(), NotifyError> {
        let error = |operation, source| NotifyError {
            operation,
            target: target.to_string(),
            source,
        };
        let Some(notifier) = self.targets.get(target) else {
            return Err(error("lookup", Box::new(UnknownTarget)));
        };
        let body = notice.to_json();
        match tokio::time::timeout(self.timeout, notifier.send(notice, &body)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(error("send", source)),
            Err(_) => Err(error("send", Box::new(TimedOut(self.timeout)))),
        }
    }
}

/// A target that the configuration no longer lists.
#[derive(Debug, thiserror::Error)]
#[error("the target is not configured in [notify]")]
pub struct UnknownTarget;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PubsubNotifyConfig;

    fn manifest_with(notify: Option<&str>) -> Manifest {
        let mut manifest = spillway_common::manifest::parse(include_bytes!(
            "../../../docs/examples/embed-manifest.json"
        ))
        .expect("example manifest is valid");
        manifest.notify = notify.map(String::from);
        manifest
    }

    fn config_with_topic() -> NotifyConfig {
        NotifyConfig {
            pubsub: vec![PubsubNotifyConfig {
                project: "my-lab".into(),
                topic: "job-notices".into(),
                endpoint: None,
                credentials: Default::default(),
            }],
            ..NotifyConfig::default()
        }
    }

    #[test]
    fn configured_target_is_allowed() {
        let allowed = AllowedTargets::from_config(&config_with_topic());

        let manifest = manifest_with(Some("pubsub://projects/my-lab/topics/job-notices"));

        assert!(allowed.check(&manifest).is_ok());
        assert!(allowed.check(&manifest_with(None)).is_ok());
    }

    #[test]
    fn other_target_is_rejected_with_the_allowed_ones() {
        let allowed = AllowedTargets::from_config(&config_with_topic());

        let error = allowed
            .check(&manifest_with(Some("pubsub://projects/other/topics/t")))
            .unwrap_err();

        assert_eq!(error.path, "notify");
        assert!(error.problem.contains("not accepted"), "{error}");
        assert!(
            error
                .fix
                .contains("pubsub://projects/my-lab/topics/job-notices"),
            "{error}"
        );
    }

    #[test]
    fn notice_reads_the_reduction_summary() {
        let summary = serde_json::json!({
            "records": 22,
            "run_hash": "ab12",
            "artefact_sha256": "cd34",
            "envelope_uri": "file:///out/j-1/job.json",
            "failed_tasks": 0,
        });
        let job = JobRecord {
            job_id: "j-1".into(),
            name: "embed".into(),
            state: "succeeded".into(),
            tasks_total: 7,
            succeeded: 7,
            finished_at_ms: Some(0),
            artefact_uri: Some("file:///out/j-1/embeddings.safetensors".into()),
            summary: Some(summary.to_string()),
            ..JobRecord::default()
        };

        let notice = JobNotice::from_record(&job, BTreeMap::new());

        assert_eq!(notice.run_hash.as_deref(), Some("ab12"));
        assert_eq!(notice.records, Some(22));
        assert_eq!(notice.tasks.succeeded, 7);
        assert_eq!(notice.tasks.not_run, 0);
        assert_eq!(notice.finished_at.as_deref(), Some("1970-01-01T00:00:00Z"));
    }
}
