//! Training jobs end to end: the daemon runs rounds with real workers on the real
//! model. Each round's tasks run on the weights the previous round wrote, the chain
//! of digests reaches from the model to the artefact. No round's result changes when
//! a task is retried after its worker was killed or when the daemon restarts. Nor
//! does it change when the daemon recomputes an optimizer state it did not write.

use std::path::Path;
use std::time::Duration;

use spillway_common::digest::Sha256Hex;
use spillway_common::envelope::JobEnvelope;
use spillway_common::ledger::{JobRecord, Ledger, RoundPointer};
use spillway_common::train::{PROMPT_TENSOR, TensorFile};
use spillway_tests::training::{kill_workers, training_manifest, wait_job, write_pair_shard};
use spillway_tests::{
    Daemon, DaemonOptions, RedisServer, file_digest, job_id_of, model_dir, send_raw, serial,
    wait_finished,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(300);

fn contrastive() -> serde_json::Value {
    serde_json::json!({"name": "contrastive", "max_seq_len": 32, "trainable": {"top_layers": 1}})
}

/// Three rounds of two tasks over six micro-batches of four pairs: one epoch.
fn three_rounds() -> serde_json::Value {
    serde_json::json!({
        "rounds": 3,
        "tasks_per_round": 2,
        "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        "seed": 5
    })
}

fn read_envelope(output: &Path, job_id: &str) -> JobEnvelope {
    let bytes = std::fs::read(output.join(job_id).join("job.json")).expect("job envelope");
    serde_json::from_slice(&bytes).expect("job envelope parses")
}

fn path_of(uri: &str) -> &Path {
    Path::new(uri.strip_prefix("file://").expect("a file URI"))
}

/// Checks the envelope's chain of weights from the model to the artefact, and that
/// every task of round k ran on round k's weights.
async fn check_round_chain(ledger: &Ledger, job: &JobRecord, envelope: &JobEnvelope) {
    let training = envelope.training.as_ref().expect("training section");
    let model_weights = file_digest(&model_dir().join("model.safetensors"));
    assert_eq!(training.rounds[0].weights_sha256.as_str(), model_weights);
    for pair in training.rounds.windows(2) {
        assert_eq!(pair[1].weights_sha256, pair[0].next_weights_sha256);
    }
    let last = training.rounds.last().expect("a round");
    assert_eq!(
        envelope.artefact_uri.as_deref(),
        Some(last.next_weights_uri.as_str())
    );
    assert_eq!(
        envelope.artefact_sha256.as_ref(),
        Some(&last.next_weights_sha256)
    );
    let artefact = std::fs::read(path_of(&last.next_weights_uri)).expect("artefact");
    assert_eq!(Sha256Hex::of(&artefact), last.next_weights_sha256);

    let tasks = ledger.tasks(&job.job_id, job.tasks_total).await.unwrap();
    for task in &tasks {
        let round = task.spec.round.as_ref().expect("training task has a round");
        let record = &training.rounds[round.round as usize];
        assert_eq!(round.weights_sha256, record.weights_sha256, "{task:?}");
        assert_eq!(task.state, "succeeded", "{task:?}");
    }
}

/// Returns the SHA-256 of the weights file that each round's step wrote, in round order.
fn round_digests(envelope: &JobEnvelope) -> Vec<Sha256Hex> {
    let rounds = &envelope.training.as_ref().expect("training section").rounds;
    rounds
        .iter()
        .map(|round| round.next_weights_sha256.clone())
        .collect()
}

/// A Redis server, a daemon with 2 workers and leases of 2 s (workers die with a
/// killed daemon, so their leases must expire soon) and a shard of 24 pairs, for
/// jobs of [`three_rounds`].
struct Stand {
    redis: RedisServer,
    daemon: Daemon,
    ledger: Ledger,
    inputs: Vec<serde_json::Value>,
    output: std::path::PathBuf,
    _data: tempfile::TempDir,
}

impl Stand {
    async fn start() -> Self {
        let redis = RedisServer::start().unwrap();
        let daemon = Daemon::start(&redis, Self::options()).unwrap();
        let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let inputs = vec![write_pair_shard(data.path(), "pairs.jsonl", 24)];
        let output = data.path().join("out");
        Self {
            redis,
            daemon,
            ledger,
            inputs,
            output,
            _data: data,
        }
    }

    fn options() -> DaemonOptions {
        DaemonOptions {
            lease_secs: 2,
            max_workers: 2,
            ..DaemonOptions::default()
        }
    }

    /// Submits a `contrastive` job of three rounds named `name`; returns its id.
    async fn submit(&self, name: &str) -> String {
        let inputs = self.inputs.clone();
        let manifest =
            training_manifest(name, contrastive(), three_rounds(), inputs, 4, &self.output);
        send_raw(&self.redis, manifest.to_string().as_bytes()).await;
        job_id_of(&manifest)
    }

    /// Runs a job named `name` to its end, which must be success.
    async fn run(&self, name: &str) -> (JobRecord, JobEnvelope) {
        let job_id = self.submit(name).await;
        let job = wait_finished(&self.ledger, &job_id, JOB_TIMEOUT).await;
        assert_eq!(job.state, "succeeded", "daemon log:\n{}", self.daemon.log());
        let envelope = read_envelope(&self.output, &job_id);
        (job, envelope)
    }

    /// Waits until the job runs round 2, kills the daemon and returns the round's
    /// pointer as the ledger held it.
    async fn kill_daemon_in_round_two(&mut self, job_id: &str) -> RoundPointer {
        let in_round_two = |job: &JobRecord| {
            job.state == "running" && job.round.as_ref().is_some_and(|r| r.round == 2)
        };
        let timeout = Duration::from_secs(120);
        let job = wait_job(&self.ledger, job_id, timeout, "round 2", in_round_two).await;
        self.daemon.kill();
        job.round.expect("round 2's pointer")
    }

    fn restart_daemon(&mut self) {
        self.daemon = Daemon::start(&self.redis, Self::options()).unwrap();
    }

    async fn wait_finished(&self, job_id: &str) -> (JobRecord, String) {
        let job = wait_finished(&self.ledger, job_id, JOB_TIMEOUT).await;
        (job, self.daemon.log())
    }
}

/// Deletes the optimizer state that `pointer` names, as if the daemon had stopped
/// before writing it. The killed daemon may indeed not have written it.
fn delete_state(pointer: &RoundPointer) {
    let state_path = path_of(&pointer.optimizer_uri);
    match std::fs::remove_file(state_path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => panic!("failed to delete {}: {error}", state_path.display()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contrastive_rounds_survive_retry_and_restart() {
    let _serial = serial().await;
    let mut stand = Stand::start().await;

    // An undisturbed run.
    let (job, clean_envelope) = stand.run("clean").await;
    assert_eq!(job.tasks_total, 6);
    let clean_rounds = &clean_envelope.training.as_ref().unwrap().rounds;
    assert_eq!(clean_rounds.len(), 3);
    check_round_chain(&stand.ledger, &job, &clean_envelope).await;
    assert!(
        clean_rounds
            .iter()
            .all(|round| round.samples == 8 && round.loss.is_finite()),
        "{clean_rounds:?}"
    );
    let metrics = stand.daemon.scrape();
    assert!(
        metrics.contains("spillway_training_rounds_total 3"),
        "{metrics}"
    );

    // The same training under another name: workers killed in the middle of a task
    // of round 1, so its lease expires and another worker retries it, and the
    // daemon killed while round 2 runs and replaced by a new one.
    let disturbed_id = stand.submit("disturbed").await;
    let timeout = Duration::from_secs(120);
    let in_round_one = |job: &JobRecord| {
        job.state == "running" && job.leased > 0 && job.round.as_ref().is_some_and(|r| r.round == 1)
    };
    wait_job(
        &stand.ledger,
        &disturbed_id,
        timeout,
        "a lease in round 1",
        in_round_one,
    )
    .await;
    let killed = kill_workers(&stand.redis, &stand.ledger, &disturbed_id).await;
    assert!(killed >= 1, "no worker was killed");

    stand.kill_daemon_in_round_two(&disturbed_id).await;
    stand.restart_daemon();

    let (job, log) = stand.wait_finished(&disturbed_id).await;
    assert_eq!(job.state, "succeeded", "daemon log:\n{log}");
    assert!(job.lease_expiries >= 1, "no lease expired: {job:?}");
    let tasks = stand
        .ledger
        .tasks(&disturbed_id, job.tasks_total)
        .await
        .unwrap();
    assert!(
        tasks.iter().any(|task| task.attempt >= 2),
        "no task ran twice: {tasks:?}"
    );
    let envelope = read_envelope(&stand.output, &disturbed_id);
    check_round_chain(&stand.ledger, &job, &envelope).await;

    assert_eq!(
        round_digests(&envelope),
        round_digests(&clean_envelope),
        "a retried task or the restart changed a round's weights"
    );
    assert_eq!(envelope.artefact_sha256, clean_envelope.artefact_sha256);
    assert_eq!(envelope.run_hash, clean_envelope.run_hash);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_optimizer_state_is_recomputed() {
    let _serial = serial().await;
    let mut stand = Stand::start().await;
    let (_, clean_envelope) = stand.run("clean").await;

    // The same training with the daemon killed while round 2 runs, and the optimizer
    // state that round 2's step starts from deleted.
    let lost_id = stand.submit("lost-state").await;
    let pointer = stand.kill_daemon_in_round_two(&lost_id).await;
    delete_state(&pointer);
    stand.restart_daemon();

    let (job, log) = stand.wait_finished(&lost_id).await;
    assert_eq!(job.state, "succeeded", "daemon log:\n{log}");
    assert!(
        log.contains("optimizer state restored"),
        "the daemon log shows no restored optimizer state:\n{log}"
    );
    let envelope = read_envelope(&stand.output, &lost_id);
    check_round_chain(&stand.ledger, &job, &envelope).await;
    assert_eq!(
        round_digests(&envelope),
        round_digests(&clean_envelope),
        "restoring the optimizer state changed a round's weights"
    );
    assert_eq!(envelope.artefact_sha256, clean_envelope.artefact_sha256);

    let rounds = &envelope.training.as_ref().unwrap().rounds;
    assert_eq!(rounds[1].optimizer_state_uri, pointer.optimizer_uri);
    assert_eq!(
        rounds[1].optimizer_state_sha256.as_str(),
        pointer.optimizer_sha256
    );
    let restored =
        std::fs::read(path_of(&pointer.optimizer_uri)).expect("the optimizer state exists again");
    assert_eq!(
        Sha256Hex::of(&restored).as_str(),
        pointer.optimizer_sha256,
        "the restored optimizer state has another SHA-256 than the ledger recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_partial_fails_state_restore() {
    let _serial = serial().await;
    let mut stand = Stand::start().await;
    let job_id = stand.submit("changed-partial").await;
    let pointer = stand.kill_daemon_in_round_two(&job_id).await;

    // Delete the optimizer state that round 2's step starts from, and change one value
    // of a round-1 partial gradient, so that recomputing round 1's step gives other
    // weights than the ledger recorded.
    delete_state(&pointer);
    // Round 1 is tasks 2 and 3: two tasks per round.
    let round_one = stand.ledger.tasks_range(&job_id, 2, 2).await.unwrap();
    let result_uri = round_one[0].result_uri.clone().expect("a result URI");
    let partial_path = path_of(&result_uri);
    let mut partial = TensorFile::decode(&std::fs::read(partial_path).unwrap()).unwrap();
    let gradient = partial
        .tensors
        .values_mut()
        .next()
        .expect("a gradient tensor");
    gradient.values[0] += 1.0;
    std::fs::write(partial_path, partial.encode()).unwrap();
    stand.restart_daemon();

    let (job, log) = stand.wait_finished(&job_id).await;
    assert_eq!(job.state, "failed", "daemon log:\n{log}");
    let envelope = read_envelope(&stand.output, &job_id);
    assert!(envelope.artefact_uri.is_none());
    let recorded = &envelope.training.as_ref().unwrap().rounds[1].next_weights_sha256;
    let reason = &envelope.failed_tasks[0].reason;
    assert!(reason.contains("recomputing round 1's step"), "{reason}");
    assert!(reason.contains(recorded.as_str()), "{reason}");
    assert!(
        !path_of(&pointer.optimizer_uri).exists(),
        "an optimizer state was written from a changed partial"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_tune_artefact_is_the_prompt_alone() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_pair_shard(data.path(), "pairs.jsonl", 16)];
    let output = data.path().join("out");
    let kernel = serde_json::json!({"name": "prompt_tune", "max_seq_len": 32, "prompt_length": 4});
    let training = serde_json::json!({
        "epochs": 1,
        "tasks_per_round": 2,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "seed": 3
    });
    let manifest = training_manifest("prompt", kernel, training, inputs, 4, &output);
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "succeeded", "daemon log:\n{}", daemon.log());
    let envelope = read_envelope(&output, &job_id);
    // 4 micro-batches, 2 per round: one epoch is 2 rounds.
    assert_eq!(envelope.training.as_ref().unwrap().rounds.len(), 2);
    check_round_chain(&ledger, &job, &envelope).await;
    let artefact = std::fs::read(path_of(envelope.artefact_uri.as_deref().unwrap())).unwrap();
    let file = TensorFile::decode(&artefact).unwrap();
    let names: Vec<&str> = file.tensors.keys().map(String::as_str).collect();
    assert_eq!(names, [PROMPT_TENSOR]);
    assert_eq!(file.tensors[PROMPT_TENSOR].shape, [4, 384]);
    assert_eq!(file.metadata["round"], "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_shard_fails_the_round_and_the_job() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut shard = write_pair_shard(data.path(), "pairs.jsonl", 8);
    shard["sha256"] = "00".repeat(32).into();
    let output = data.path().join("out");
    let training = serde_json::json!({
        "rounds": 2,
        "tasks_per_round": 2,
        "optimizer": {"name": "sgd", "lr": 0.01},
    });
    let manifest = training_manifest(
        "bad-shard",
        contrastive(),
        training,
        vec![shard],
        4,
        &output,
    );
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "failed", "daemon log:\n{}", daemon.log());
    let envelope = read_envelope(&output, &job_id);
    assert!(envelope.artefact_uri.is_none());
    assert_eq!(envelope.training.as_ref().unwrap().rounds.len(), 0);
    assert!(
        envelope
            .failed_tasks
            .iter()
            .any(|task| task.reason.contains("SHA-256")),
        "{:?}",
        envelope.failed_tasks
    );
    assert_eq!(job.tasks_total, 2, "no round after the failed one");
}

#[tokio::test(flavor = "multi_thread")]
async fn more_top_layers_than_model_fails_job() {
    let _serial = serial().await;
    let redis = RedisServer::start().unwrap();
    let daemon = Daemon::start(&redis, DaemonOptions::default()).unwrap();
    let ledger = Ledger::connect(&redis.url(), "spillway").await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs = vec![write_pair_shard(data.path(), "pairs.jsonl", 8)];
    let output = data.path().join("out");
    // all-MiniLM-L6-v2 has 6 layers.
    let kernel = serde_json::json!({"name": "contrastive", "trainable": {"top_layers": 7}});
    let manifest = training_manifest("seven", kernel, three_rounds(), inputs, 4, &output);
    let job_id = job_id_of(&manifest);

    send_raw(&redis, manifest.to_string().as_bytes()).await;
    let job = wait_finished(&ledger, &job_id, JOB_TIMEOUT).await;

    assert_eq!(job.state, "failed", "daemon log:\n{}", daemon.log());
    assert_eq!(job.tasks_total, 0, "no round began");
    let envelope = read_envelope(&output, &job_id);
    let reason = &envelope.failed_tasks[0].reason;
    assert!(reason.contains("top_layers is 7"), "{reason}");
    assert!(reason.contains("has 6 layers"), "{reason}");
}
