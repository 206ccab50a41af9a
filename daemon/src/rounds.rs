//! Training rounds: create each round's tasks, reduce a round's partial gradients into
//! the next weights file, and conclude the job after its last round.
//!
//! The ledger records each job's position (its round, the weights file and optimizer
//! state that round runs on), and every step here can be repeated after a crash:
//! round files are written create-only and are the same bytes on every attempt, and
//! [`Ledger::begin_round`] creates only the tasks that do not exist yet. A daemon that
//! restarts therefore continues from the last round the ledger recorded.
//!
//! The next weights file is written before the next round begins, because its tasks
//! read it. The optimizer state is written after the round began, while workers
//! compute, so the ledger can point a round at a state that a crash or a failed write
//! left missing. The round's reduce step then recomputes the previous round's step to
//! restore it (`rounds/restore.rs`).
//!
//! NOTE: placement sees only the queued tasks of the current round, so a training
//! job's deadline is checked against one round, not against the rounds still to come.

use std::time::Instant;

use bytes::Bytes;
use spillway_common::digest::Sha256Hex;
use spillway_common::envelope::{FailedTask, TrainingRun};
use spillway_common::ledger::{
    JobRecord, Ledger, LedgerError, RoundBegin, RoundPointer, TaskRecord,
};
use spillway_common::manifest::{Kernel, Manifest, Trainable, Training};
use spillway_common::model::{MODEL_FILES, model_digest};
use spillway_common::store;
use spillway_common::task::{TaskSpec, slice, task_id};
use spillway_common::train::{RoundRecord, TrainRound, round_tasks, total_rounds};
use tracing::{debug, info, warn};

use crate::cost::PriceTable;
use crate::reduce::{Conclusion, Reduced, conclude, failed_tasks};

mod restore;
mod step;

use step::put_state;
pub use step::{PendingState, RoundFiles};

/// The model file whose tensors round 0 runs on.
const MODEL_WEIGHTS: &str = "model.safetensors";

/// Errors of a round step. A transient one (the store or the ledger is unreachable)
/// leaves the job where it is for the next pass. A permanent one fails the job.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Reduce(#[from] crate::reduce::ReduceError),
    #[error("the partial gradients of round {round} do not reduce")]
    Gradients {
        round: u32,
        #[source]
        source: spillway_common::train::ReduceError,
    },
    #[error("the optimizer step of round {round} failed")]
    Update {
        round: u32,
        #[source]
        source: spillway_common::train::UpdateError,
    },
    #[error(
        "model at {uri} does not match its pinned digest: expected {expected}, the files \
         give {actual}"
    )]
    ModelDigest {
        uri: String,
        expected: Sha256Hex,
        actual: Sha256Hex,
    },
    #[error(
        "{uri} exists with SHA-256 {existing}, but round {round} computes {computed}; an \
         earlier run wrote different bytes under this job's output"
    )]
    Conflict {
        uri: String,
        round: u32,
        existing: Sha256Hex,
        computed: Sha256Hex,
    },
    #[error(
        "recomputing round {round}'s step to restore a missing optimizer state gives {uri} \
         the SHA-256 {recomputed}, but the ledger records {recorded}. A partial gradient \
         or input file of that round changed after the round was reduced, so the job \
         cannot continue. Submit the manifest again with another name to start a new job"
    )]
    Recomputed {
        round: u32,
        uri: String,
        recorded: Sha256Hex,
        recomputed: Sha256Hex,
    },
    #[error(
        "kernel.trainable.top_layers is {top_layers}, but the model at {uri} has {layers} \
         layers; set top_layers to at most {layers} or use \"all\""
    )]
    Layers {
        uri: String,
        top_layers: u32,
        layers: u64,
    },
    #[error("job {job_id} is in state {state}, which has no round step")]
    State { job_id: String, state: String },
    #[error("the reduce step's thread stopped")]
    Join(#[from] tokio::task::JoinError),
}

impl RoundError {
    /// Returns whether retrying cannot help, so the job fails with this error as its reason.
    pub fn is_permanent(&self) -> bool {
        match self {
            RoundError::Store(error) => error.is_data_error(),
            RoundError::Gradients { .. }
            | RoundError::Update { .. }
            | RoundError::ModelDigest { .. }
            | RoundError::Layers { .. }
            | RoundError::Conflict { .. }
            | RoundError::Recomputed { .. } => true,
            RoundError::Ledger(_)
            | RoundError::Reduce(_)
            | RoundError::State { .. }
            | RoundError::Join(_) => false,
        }
    }
}

/// The outcome of a round step.
#[derive(Debug)]
pub enum RoundStep {
    /// The round's tasks exist and the job runs them. `state` is the optimizer state
    /// that the caller writes with [`PendingState::write`] after releasing the job's
    /// round lock, while the workers compute.
    Begun {
        round: u32,
        state: Option<Box<PendingState>>,
    },
    /// The job finished: after its last round, or failed.
    Concluded(Box<Reduced>),
    /// Nothing to do: another daemon moved the job on.
    Stale { state: String },
}

/// A training job's manifest with the numbers its rounds derive from.
struct Plan {
    manifest: Manifest,
    training: Training,
    /// Every micro-batch of the job, in slice order.
    tasks: Vec<TaskSpec>,
    rounds_total: u64,
}

impl Plan {
    fn of(job: &JobRecord) -> Result<Self, RoundError> {
        let manifest = job.manifest()?;
        let Some(training) = manifest.training.clone() else {
            return Err(RoundError::State {
                job_id: job.job_id.clone(),
                state: format!("{} without a training section", job.state),
            });
        };
        let tasks = slice(&manifest);
        let rounds_total = total_rounds(&training, tasks.len() as u64);
        Ok(Self {
            manifest,
            training,
            tasks,
            rounds_total,
        })
    }

    /// Returns round `round`'s task specs, each pinned to `weights`. Round k's tasks
    /// are the job's task numbers from `k × tasks_per_round` on.
    fn round_specs(&self, weights: &TrainRound) -> Vec<TaskSpec> {
        let per_round = self.training.tasks_per_round;
        let indices = round_tasks(
            self.tasks.len() as u32,
            per_round,
            self.training.seed,
            u64::from(weights.round),
        );
        let first = weights.round * per_round;
        indices
            .iter()
            .enumerate()
            .map(|(position, &index)| {
                let mut spec = self.tasks[index as usize].clone();
                spec.task_id = task_id(first + position as u32);
                spec.round = Some(weights.clone());
                spec
            })
            .collect()
    }

    fn model_weights_uri(&self) -> String {
        store::join(&self.manifest.model.uri, MODEL_WEIGHTS)
    }
}

/// Begins round 0 of a job in `preparing`, or finishes creating the tasks of a round
/// that a crash interrupted (the job is `admitting` with a round recorded).
pub async fn prepare(
    ledger: &Ledger,
    job: &JobRecord,
    gpu_sku: &str,
    prices: &PriceTable,
) -> Result<RoundStep, RoundError> {
    let plan = Plan::of(job)?;
    let start = match &job.round {
        Some(pointer) => pointer.clone(),
        None => match first_round(&plan).await {
            Ok(pointer) => pointer,
            Err(error) if error.is_permanent() => {
                let failed = vec![round_failure(&job.job_id, 0, &error)];
                return fail(ledger, job, &plan, failed, gpu_sku, prices).await;
            }
            Err(error) => return Err(error),
        },
    };
    begin(ledger, job, &plan, &start, None).await
}

/// Returns round 0's pointer: the model's own weights file, checked against the model
/// digest, and no optimizer state.
async fn first_round(plan: &Plan) -> Result<RoundPointer, RoundError> {
    let model = &plan.manifest.model;
    let mut digests = Vec::with_capacity(MODEL_FILES.len());
    let mut config = Bytes::new();
    for name in MODEL_FILES {
        let bytes = store::get(&store::join(&model.uri, name)).await?;
        digests.push(Sha256Hex::of(&bytes));
        if name == "config.json" {
            config = bytes;
        }
    }
    let weights_sha256 = digests[1].clone();
    check_layers(plan, &config)?;
    let digests: [Sha256Hex; 3] = digests.try_into().expect("three model files");
    let actual = model_digest(&digests);
    if actual != model.sha256 {
        return Err(RoundError::ModelDigest {
            uri: model.uri.clone(),
            expected: model.sha256.clone(),
            actual,
        });
    }
    Ok(RoundPointer {
        round: 0,
        weights_uri: plan.model_weights_uri(),
        weights_sha256: weights_sha256.to_string(),
        ..RoundPointer::default()
    })
}

/// Checks a `contrastive` job's `trainable.top_layers` against the model's layer
/// count, which the manifest alone cannot know. Without this check every worker
/// would exit on the same error and the job would never end.
fn check_layers(plan: &Plan, config: &[u8]) -> Result<(), RoundError> {
    let Kernel::Contrastive {
        trainable: Trainable::TopLayers(top_layers),
        ..
    } = plan.manifest.kernel
    else {
        return Ok(());
    };
    let layers = serde_json::from_slice::<serde_json::Value>(config)
        .ok()
        .and_then(|config| config["num_hidden_layers"].as_u64());
    match layers {
        Some(layers) if u64::from(top_layers) > layers => Err(RoundError::Layers {
            uri: plan.manifest.model.uri.clone(),
            top_layers,
            layers,
        }),
        _ => Ok(()),
    }
}

async fn begin(
    ledger: &Ledger,
    job: &JobRecord,
    plan: &Plan,
    pointer: &RoundPointer,
    previous: Option<&RoundRecord>,
) -> Result<RoundStep, RoundError> {
    let weights = TrainRound {
        round: pointer.round,
        weights_uri: pointer.weights_uri.clone(),
        weights_sha256: parse_digest(job, &pointer.weights_sha256)?,
    };
    let specs = plan.round_specs(&weights);
    match ledger
        .begin_round(&job.job_id, pointer, previous, &specs)
        .await?
    {
        RoundBegin::Running => {
            info!(
                job_id = %job.job_id,
                round = pointer.round,
                rounds = plan.rounds_total,
                tasks = specs.len(),
                weights_sha256 = %pointer.weights_sha256,
                "training round started"
            );
            Ok(RoundStep::Begun {
                round: pointer.round,
                state: None,
            })
        }
        RoundBegin::Stale(state) => {
            debug!(job_id = %job.job_id, round = pointer.round, state, "round already begun elsewhere");
            Ok(RoundStep::Stale { state })
        }
    }
}

/// Reduces the current round of a job in `reducing`: the sample-weighted mean of its
/// partial gradients, one optimizer step, the next weights file and optimizer state.
/// Begins the next round, or concludes the job after the last one. The next round's
/// optimizer state is left to the caller to write after the round began, so that
/// workers need not wait for it (see [`RoundStep::Begun`]). A round
/// with a failed or dead task fails the job, since its step would miss that task's
/// samples.
pub async fn reduce_round(
    ledger: &Ledger,
    files: &RoundFiles,
    job: &JobRecord,
    gpu_sku: &str,
    prices: &PriceTable,
) -> Result<RoundStep, RoundError> {
    let plan = Plan::of(job)?;
    let Some(pointer) = job.round.clone() else {
        return Err(RoundError::State {
            job_id: job.job_id.clone(),
            state: "reducing before its first round".into(),
        });
    };
    let tasks = round_task_records(ledger, job, &plan, pointer.round).await?;
    let failed = failed_tasks(&tasks);
    if !failed.is_empty() {
        warn!(job_id = %job.job_id, round = pointer.round, failed_tasks = failed.len(), "a task of the round failed; the job fails");
        return fail(ledger, job, &plan, failed, gpu_sku, prices).await;
    }

    let started = Instant::now();
    let last = u64::from(pointer.round) + 1 >= plan.rounds_total;
    let stepped = async {
        let (record, next_inputs) =
            step::reduce_step(ledger, files, job, &plan, &pointer, &tasks).await?;
        // No round follows the last one, so its state write has nothing to overlap.
        if last {
            put_state(&record, &next_inputs).await?;
        }
        Ok::<_, RoundError>((record, next_inputs))
    };
    let (record, next_inputs) = match stepped.await {
        Ok(stepped) => stepped,
        Err(error) if error.is_permanent() => {
            let failed = vec![round_failure(&job.job_id, pointer.round, &error)];
            return fail(ledger, job, &plan, failed, gpu_sku, prices).await;
        }
        Err(error) => return Err(error),
    };
    let record = RoundRecord {
        reduce_secs: started.elapsed().as_secs_f64(),
        ..record
    };
    info!(
        job_id = %job.job_id,
        round = record.round,
        samples = record.samples,
        loss = record.loss,
        next_weights_sha256 = %record.next_weights_sha256,
        reduce_secs = record.reduce_secs,
        "training round reduced"
    );

    if last {
        return succeed(ledger, job, &plan, record, gpu_sku, prices).await;
    }

    let pointer = RoundPointer {
        round: record.round + 1,
        weights_uri: record.next_weights_uri.clone(),
        weights_sha256: record.next_weights_sha256.to_string(),
        optimizer_uri: record.optimizer_state_uri.clone(),
        optimizer_sha256: record.optimizer_state_sha256.to_string(),
        started_at_ms: 0,
    };
    let mut begun = begin(ledger, job, &plan, &pointer, Some(&record)).await?;
    if let RoundStep::Begun { state, .. } = &mut begun {
        *state = Some(Box::new(PendingState {
            job_id: job.job_id.clone(),
            record,
            inputs: next_inputs,
        }));
    }
    Ok(begun)
}

/// Concludes the job as succeeded after its last round, `record`, with the last
/// weights file as its artefact.
async fn succeed(
    ledger: &Ledger,
    job: &JobRecord,
    plan: &Plan,
    record: RoundRecord,
    gpu_sku: &str,
    prices: &PriceTable,
) -> Result<RoundStep, RoundError> {
    let mut rounds = ledger.rounds(&job.job_id).await?;
    rounds.push(record.clone());
    let conclusion = Conclusion {
        artefact: Some((record.next_weights_uri, record.next_weights_sha256)),
        failed: Vec::new(),
        training: Some(TrainingRun {
            rounds_total: plan.rounds_total,
            rounds,
        }),
    };
    let reduced = conclude(ledger, job, &plan.manifest, conclusion, gpu_sku, prices).await?;
    Ok(RoundStep::Concluded(Box::new(reduced)))
}

/// Reads the task records of round `round` of the job, in task order.
async fn round_task_records(
    ledger: &Ledger,
    job: &JobRecord,
    plan: &Plan,
    round: u32,
) -> Result<Vec<TaskRecord>, RoundError> {
    let per_round = u64::from(plan.training.tasks_per_round);
    let first = u64::from(round) * per_round;
    Ok(ledger.tasks_range(&job.job_id, first, per_round).await?)
}

/// Describes a round that failed as a whole (its model or its reduce step) in the
/// envelope's list of failed tasks, and logs it.
fn round_failure(job_id: &str, round: u32, error: &RoundError) -> FailedTask {
    let reason = spillway_common::process::error_chain(error);
    warn!(job_id, round, error = %reason, "training round failed");
    FailedTask {
        task_id: format!("round-{round}"),
        state: "failed".into(),
        reason,
    }
}

/// Concludes the job as failed, with the rounds reduced so far.
async fn fail(
    ledger: &Ledger,
    job: &JobRecord,
    plan: &Plan,
    failed: Vec<FailedTask>,
    gpu_sku: &str,
    prices: &PriceTable,
) -> Result<RoundStep, RoundError> {
    warn!(job_id = %job.job_id, failed = failed.len(), "training job fails");
    // `conclude` records the final state from `reducing` only.
    let job = job_in_reducing(ledger, job).await?;
    let rounds = ledger.rounds(&job.job_id).await?;
    let conclusion = Conclusion {
        failed,
        training: Some(TrainingRun {
            rounds_total: plan.rounds_total,
            rounds,
        }),
        ..Conclusion::default()
    };
    let reduced = conclude(ledger, &job, &plan.manifest, conclusion, gpu_sku, prices).await?;
    Ok(RoundStep::Concluded(Box::new(reduced)))
}

/// Moves a `preparing` job to `reducing` so that it can be concluded.
async fn job_in_reducing(ledger: &Ledger, job: &JobRecord) -> Result<JobRecord, RoundError> {
    if job.state != "reducing" {
        ledger.close_preparing(&job.job_id).await?;
    }
    Ok(ledger
        .job(&job.job_id)
        .await?
        .unwrap_or_else(|| job.clone()))
}

fn round_secs(pointer: &RoundPointer) -> f64 {
    if pointer.started_at_ms <= 0 {
        return 0.0;
    }
    let elapsed = spillway_common::ledger::now_ms() - pointer.started_at_ms;
    elapsed.max(0) as f64 / 1000.0
}

fn parse_digest(job: &JobRecord, text: &str) -> Result<Sha256Hex, RoundError> {
    Sha256Hex::parse(text).map_err(|error| {
        RoundError::Ledger(LedgerError::Corrupt {
            what: "round digest",
            job_id: job.job_id.clone(),
            detail: format!("{text}: {error}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(records: u64, per_task: u32, per_round: u32, rounds: u32) -> Plan {
        let mut manifest: Manifest = spillway_common::manifest::parse(include_bytes!(
            "../../docs/examples/contrastive-manifest.json"
        ))
        .unwrap();
        manifest.inputs.truncate(1);
        manifest.inputs[0].records = records;
        manifest.records_per_task = per_task;
        let training = manifest.training.as_mut().unwrap();
        training.tasks_per_round = per_round;
        training.rounds = Some(rounds);
        training.epochs = None;
        let job = JobRecord {
            job_id: "j-test".into(),
            manifest_json: serde_json::to_string(&manifest).unwrap(),
            ..JobRecord::default()
        };
        Plan::of(&job).unwrap()
    }

    fn weights(round: u32) -> TrainRound {
        TrainRound {
            round,
            weights_uri: format!("file:///out/rounds/{round}/weights.safetensors"),
            weights_sha256: Sha256Hex::of(&round.to_le_bytes()),
        }
    }

    #[test]
    fn round_tasks_are_numbered_after_earlier_rounds() {
        // 10 micro-batches of 4 records, 3 per round.
        let plan = plan(40, 4, 3, 5);
        let specs = plan.round_specs(&weights(2));

        let ids: Vec<&str> = specs.iter().map(|spec| spec.task_id.as_str()).collect();
        assert_eq!(ids, ["t000006", "t000007", "t000008"]);
        assert!(specs.iter().all(|spec| spec.round == Some(weights(2))));
        let indices: Vec<u32> = specs.iter().map(|spec| spec.index).collect();
        assert_eq!(indices, round_tasks(10, 3, plan.training.seed, 2));
    }

    #[test]
    fn round_specs_keep_their_micro_batch() {
        let plan = plan(40, 4, 3, 5);
        for spec in plan.round_specs(&weights(1)) {
            let original = &plan.tasks[spec.index as usize];
            assert_eq!(spec.first_record, original.first_record);
            assert_eq!(spec.records, original.records);
            assert_eq!(spec.shard, original.shard);
        }
    }

    #[test]
    fn permanent_errors_are_those_a_retry_cannot_fix() {
        let conflict = RoundError::Conflict {
            uri: "file:///x".into(),
            round: 1,
            existing: Sha256Hex::of(b"a"),
            computed: Sha256Hex::of(b"b"),
        };
        assert!(conflict.is_permanent());
        let recomputed = RoundError::Recomputed {
            round: 1,
            uri: "file:///x".into(),
            recorded: Sha256Hex::of(b"a"),
            recomputed: Sha256Hex::of(b"b"),
        };
        assert!(recomputed.is_permanent());
        let state = RoundError::State {
            job_id: "j".into(),
            state: "running".into(),
        };
        assert!(!state.is_permanent());
    }
}
