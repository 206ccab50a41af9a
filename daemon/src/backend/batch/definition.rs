//! The job definition of a worker image and the per-submission overrides.
//!
//! One job definition exists per image digest and worker settings. Its name is
//! `spillway-<12 hex of the image digest>-<12 hex of the settings digest>`, so a
//! restarted daemon finds the definition it registered before by name, and a changed
//! setting (memory, role, environment) gets a definition of its own instead of
//! silently reusing a stale one.
//!
//! The container runs `spillway-worker run` through `/bin/sh`, which derives the
//! worker's array id and index from the variables that Batch sets.
//! `SPILLWAY_ARRAY_ID` is the array job's id (`AWS_BATCH_JOB_ID` without the
//! `:<index>` suffix of a child). `SPILLWAY_ARRAY_INDEX` is
//! `SPILLWAY_ARRAY_INDEX_OFFSET + AWS_BATCH_JOB_ARRAY_INDEX`, so indexes stay unique
//! over the several arrays of a split fleet.

use std::collections::BTreeMap;

use aws_sdk_batch::types::{
    ContainerOverrides, ContainerProperties, EvaluateOnExit, JobTimeout, KeyValuePair,
    ResourceRequirement, ResourceType, RetryAction, RetryStrategy,
};
use serde::Serialize;
use spillway_common::digest::Sha256Hex;

use crate::config::BatchBackendConfig;

/// Variable that carries the index of an array's first element within the job's fleet.
pub const INDEX_OFFSET_VAR: &str = "SPILLWAY_ARRAY_INDEX_OFFSET";

/// Retry rules of every job definition, in the order Batch evaluates them; the first
/// match decides. Batch retries an attempt that matches none, so the last two rules
/// end every other failure.
///
/// - A spot reclaim or a lost host sets a status reason `Host EC2 (instance …) terminated.`
/// - An image that cannot be pulled or a container that cannot start sets a
///   reason `CannotPullContainerError: …` or `CannotStartContainerError: …`.
/// - Every exit of the worker itself ends the attempt. A bad shard is not an exit
///   code: the worker records it as a data error of its task in the ledger, goes on
///   to the next task, and exits 0 when none is left. A non-zero exit (1 for an
///   unreachable ledger or an unloadable model, 3 for a binary that does not match
///   the job's pin) would fail again, and the daemon starts new workers while tasks
///   wait.
pub const RETRY_RULES: [(RetryCondition, RetryAction); 5] = [
    (
        RetryCondition::StatusReason("Host EC2*"),
        RetryAction::Retry,
    ),
    (
        RetryCondition::Reason("CannotPullContainerError*"),
        RetryAction::Retry,
    ),
    (
        RetryCondition::Reason("CannotStartContainerError*"),
        RetryAction::Retry,
    ),
    (RetryCondition::ExitCode("*"), RetryAction::Exit),
    (RetryCondition::Reason("*"), RetryAction::Exit),
];

/// The field of an `evaluateOnExit` rule and its glob pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCondition {
    StatusReason(&'static str),
    Reason(&'static str),
    ExitCode(&'static str),
}

/// Everything a registered job definition contains.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DefinitionSpec {
    /// Deterministic name; see the module documentation.
    #[serde(skip)]
    pub name: String,
    /// Image pinned by digest, `repo@sha256:<64 hex>`.
    pub image: String,
    pub command: Vec<String>,
    /// Variables that are the same for every job: the ledger, cache and kernel settings.
    pub environment: BTreeMap<String, String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub job_role_arn: Option<String>,
    pub attempts: u32,
    pub timeout_secs: Option<u64>,
}

impl DefinitionSpec {
    /// Builds the definition of `image` from the configuration and the job-independent
    /// worker environment. Returns `None` when the image is not pinned by digest.
    pub fn new(
        config: &BatchBackendConfig,
        image: &str,
        environment: BTreeMap<String, String>,
    ) -> Option<Self> {
        let image_digest = image_digest(image)?;
        let mut spec = Self {
            name: String::new(),
            image: image.to_string(),
            command: worker_command(&config.worker_path),
            environment,
            vcpus: config.vcpus_per_worker,
            memory_mib: config.memory_per_worker_mib,
            job_role_arn: config.job_role_arn.clone(),
            attempts: config.attempts,
            timeout_secs: config.timeout_secs,
        };
        let settings = serde_json::to_vec(&spec).expect("definition serializes to JSON");
        let settings_digest = Sha256Hex::of(&settings);
        spec.name = format!(
            "spillway-{}-{}",
            &image_digest[..12],
            settings_digest.prefix(12)
        );
        Some(spec)
    }

    /// Builds the container properties to register.
    pub fn container_properties(&self) -> ContainerProperties {
        let mut properties = ContainerProperties::builder()
            .image(&self.image)
            .set_command(Some(self.command.clone()))
            .set_environment(Some(key_values(&self.environment)))
            .resource_requirements(resource(ResourceType::Vcpu, self.vcpus.to_string()))
            .resource_requirements(resource(ResourceType::Memory, self.memory_mib.to_string()));
        if let Some(role) = &self.job_role_arn {
            properties = properties.job_role_arn(role);
        }
        properties.build()
    }

    /// Builds the retry strategy to register: `attempts` with [`RETRY_RULES`].
    pub fn retry_strategy(&self) -> RetryStrategy {
        let mut strategy = RetryStrategy::builder().attempts(self.attempts as i32);
        for (condition, action) in RETRY_RULES {
            let rule = match condition {
                RetryCondition::StatusReason(pattern) => {
                    EvaluateOnExit::builder().on_status_reason(pattern)
                }
                RetryCondition::Reason(pattern) => EvaluateOnExit::builder().on_reason(pattern),
                RetryCondition::ExitCode(pattern) => {
                    EvaluateOnExit::builder().on_exit_code(pattern)
                }
            };
            strategy = strategy.evaluate_on_exit(rule.action(action).build());
        }
        strategy.build()
    }

    /// Builds the attempt time limit to register, if any.
    pub fn timeout(&self) -> Option<JobTimeout> {
        self.timeout_secs.map(|secs| {
            JobTimeout::builder()
                .attempt_duration_seconds(secs.min(i32::MAX as u64) as i32)
                .build()
        })
    }
}

/// Builds the overrides of one submission: the job id, the array's index offset,
/// and the manifest's GPU count when it requests GPUs.
pub fn container_overrides(job_id: &str, index_offset: u32, gpus: u32) -> ContainerOverrides {
    let environment = BTreeMap::from([
        (
            spillway_common::worker_env::JOB_ID.to_string(),
            job_id.to_string(),
        ),
        (INDEX_OFFSET_VAR.to_string(), index_offset.to_string()),
    ]);
    let mut overrides =
        ContainerOverrides::builder().set_environment(Some(key_values(&environment)));
    if gpus > 0 {
        overrides = overrides.resource_requirements(resource(ResourceType::Gpu, gpus.to_string()));
    }
    overrides.build()
}

/// Returns the 64 hex digits of an image reference pinned as `repo@sha256:<64 hex>`.
pub fn image_digest(image: &str) -> Option<&str> {
    let (repository, digest) = image.rsplit_once("@sha256:")?;
    let valid = !repository.is_empty()
        && digest.len() == 64
        && digest
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    valid.then_some(digest)
}

/// Returns a Batch job name for a Spillway job: up to 128 letters, digits, hyphens
/// and underscores.
pub fn job_name(job_id: &str) -> String {
    let name: String = format!("spillway-{job_id}")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .take(128)
        .collect();
    name
}

/// Builds the container command: a shell that sets the array id and index, then
/// runs the worker. `worker_path` contains no single quote (the configuration checks it).
fn worker_command(worker_path: &str) -> Vec<String> {
    let script = format!(
        "export SPILLWAY_ARRAY_ID=\"${{AWS_BATCH_JOB_ID%%:*}}\"\n\
         export SPILLWAY_ARRAY_INDEX=$(( ${{{INDEX_OFFSET_VAR}:-0}} + ${{AWS_BATCH_JOB_ARRAY_INDEX:-0}} ))\n\
         exec '{worker_path}' run\n"
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

fn key_values(variables: &BTreeMap<String, String>) -> Vec<KeyValuePair> {
    variables
        .iter()
        .map(|(name, value)| KeyValuePair::builder().name(name).value(value).build())
        .collect()
}

fn resource(kind: ResourceType, value: String) -> ResourceRequirement {
    ResourceRequirement::builder()
        .r#type(kind)
        .value(value)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "registry.example/lab/worker@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn spec(config: &BatchBackendConfig) -> DefinitionSpec {
        let environment = BTreeMap::from([("SPILLWAY_BACKEND".into(), "batch".into())]);
        DefinitionSpec::new(config, IMAGE, environment).expect("image is pinned")
    }

    #[test]
    fn image_digest_requires_pin() {
        assert_eq!(image_digest(IMAGE).map(str::len), Some(64));
        assert_eq!(image_digest("registry.example/lab/worker:1.4"), None);
        assert_eq!(image_digest("worker@sha256:abc"), None);
        assert_eq!(image_digest(&IMAGE.to_uppercase()), None);
        assert_eq!(image_digest(&format!("@sha256:{}", "a".repeat(64))), None);
    }

    #[test]
    fn definition_name_is_stable_and_tracks_settings() {
        let config = BatchBackendConfig::default();
        let first = spec(&config);
        let again = spec(&config);
        let bigger = spec(&BatchBackendConfig {
            memory_per_worker_mib: 30_000,
            ..BatchBackendConfig::default()
        });

        assert_eq!(first.name, again.name);
        assert!(
            first.name.starts_with("spillway-0123456789ab-"),
            "{}",
            first.name
        );
        assert_eq!(first.name.len(), "spillway-".len() + 12 + 1 + 12);
        assert_ne!(first.name, bigger.name);
    }

    #[test]
    fn retry_strategy_retries_infrastructure_only() {
        let strategy = spec(&BatchBackendConfig::default()).retry_strategy();

        assert_eq!(strategy.attempts(), Some(3));
        let rules = strategy.evaluate_on_exit();
        assert_eq!(rules.len(), 5);
        assert_eq!(rules[0].on_status_reason(), Some("Host EC2*"));
        assert_eq!(rules[0].action(), Some(&RetryAction::Retry));
        assert_eq!(rules[1].on_reason(), Some("CannotPullContainerError*"));
        assert_eq!(rules[2].on_reason(), Some("CannotStartContainerError*"));
        assert_eq!(rules[3].on_exit_code(), Some("*"));
        assert_eq!(rules[3].action(), Some(&RetryAction::Exit));
        assert_eq!(rules[4].on_reason(), Some("*"));
        assert_eq!(rules[4].action(), Some(&RetryAction::Exit));
    }

    #[test]
    fn command_derives_index_from_batch_variables() {
        let command = worker_command("/opt/bin/spillway-worker");

        let output = std::process::Command::new(&command[0])
            .arg(&command[1])
            .arg(command[2].replace(
                "exec '/opt/bin/spillway-worker' run",
                "echo \"$SPILLWAY_ARRAY_ID $SPILLWAY_ARRAY_INDEX\"",
            ))
            .env("AWS_BATCH_JOB_ID", "4f0c:7")
            .env("AWS_BATCH_JOB_ARRAY_INDEX", "7")
            .env(INDEX_OFFSET_VAR, "20")
            .output()
            .expect("run /bin/sh");

        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "4f0c 27");
        assert!(command[2].ends_with("exec '/opt/bin/spillway-worker' run\n"));
    }

    #[test]
    fn overrides_carry_job_offset_and_gpus() {
        let overrides = container_overrides("j-1", 40, 2);

        let environment: Vec<(Option<&str>, Option<&str>)> = overrides
            .environment()
            .iter()
            .map(|pair| (pair.name(), pair.value()))
            .collect();
        assert_eq!(
            environment,
            [
                (Some("SPILLWAY_ARRAY_INDEX_OFFSET"), Some("40")),
                (Some("SPILLWAY_JOB_ID"), Some("j-1")),
            ]
        );
        let gpus = &overrides.resource_requirements()[0];
        assert_eq!(gpus.r#type(), Some(&ResourceType::Gpu));
        assert_eq!(gpus.value(), Some("2"));
        assert!(
            container_overrides("j-1", 0, 0)
                .resource_requirements()
                .is_empty()
        );
    }

    #[test]
    fn job_name_keeps_allowed_characters() {
        assert_eq!(job_name("j-0123abcd"), "spillway-j-0123abcd");
        assert_eq!(job_name("a.b/c"), "spillway-a_b_c");
        assert_eq!(job_name(&"x".repeat(300)).len(), 128);
    }
}
