//! The reduce step proper: a round's partial gradients reduced in task order, one
//! optimizer step, and the round files it writes create-only. Also the files the
//! daemon keeps in memory between two steps of a job.

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use spillway_common::digest::Sha256Hex;
use spillway_common::layout;
use spillway_common::ledger::{JobRecord, Ledger, RoundPointer, TaskRecord};
use spillway_common::store::{self, PutOutcome};
use spillway_common::train::{
    GradientReducer, ReducedGradient, RoundRecord, RoundUpdate, apply_round,
};
use tracing::{debug, warn};

use super::restore::{is_not_found, restore_inputs};
use super::{Plan, RoundError, parse_digest, round_secs};

/// Partial gradients fetched ahead of the one being added.
const FETCH_AHEAD: usize = 4;

/// The files that each training job's last reduce step wrote, kept in memory so that
/// the next round's step starts without fetching them. After a restart, or on another
/// daemon, the step fetches them from the store and checks their SHA-256.
#[derive(Default)]
pub struct RoundFiles {
    files: std::sync::Mutex<std::collections::HashMap<String, StepInputs>>,
}

/// A round's weights file and the optimizer state before its step.
#[derive(Clone)]
pub(super) struct StepInputs {
    weights_sha256: Sha256Hex,
    weights: Bytes,
    /// SHA-256 and bytes of the state; `None` before round 1.
    state: Option<(String, Bytes)>,
}

impl StepInputs {
    /// Returns the inputs of the step after `update`'s: its weights file and state.
    pub(super) fn after(update: RoundUpdate) -> Self {
        Self {
            weights_sha256: update.weights_sha256,
            weights: Bytes::from(update.weights),
            state: Some((update.state_sha256.to_string(), Bytes::from(update.state))),
        }
    }
}

impl RoundFiles {
    fn take(&self, job_id: &str, pointer: &RoundPointer) -> Option<StepInputs> {
        let mut files = self.files.lock().expect("round files lock");
        let inputs = files.remove(job_id)?;
        let state_sha256 = inputs
            .state
            .as_ref()
            .map_or("", |(sha256, _)| sha256.as_str());
        let matches = inputs.weights_sha256.as_str() == pointer.weights_sha256
            && state_sha256 == pointer.optimizer_sha256;
        matches.then_some(inputs)
    }

    fn keep(&self, job_id: &str, inputs: StepInputs) {
        let mut files = self.files.lock().expect("round files lock");
        files.insert(job_id.to_owned(), inputs);
    }

    /// Drops the files of every job not in `active`.
    pub fn retain(&self, active: &[String]) {
        let mut files = self.files.lock().expect("round files lock");
        files.retain(|job_id, _| active.contains(job_id));
    }
}

/// The optimizer state of a round that has begun, still to be written. It needs no
/// round lock: the write is create-only and a repeated step gives the same bytes.
pub struct PendingState {
    pub(super) job_id: String,
    pub(super) record: RoundRecord,
    pub(super) inputs: StepInputs,
}

impl std::fmt::Debug for PendingState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PendingState")
            .field("job_id", &self.job_id)
            .field("uri", &self.record.optimizer_state_uri)
            .finish_non_exhaustive()
    }
}

impl PendingState {
    /// Writes the state while the next round runs, then keeps the next step's inputs
    /// in `files`. A failed write is logged only, and the inputs are not kept, so the
    /// next reduce step reads the state from the store and restores it if it is
    /// missing.
    pub async fn write(self, files: &RoundFiles) {
        let Self {
            job_id,
            record,
            inputs,
        } = self;
        let clock = Instant::now();
        match put_state(&record, &inputs).await {
            Ok(()) => {
                files.keep(&job_id, inputs);
                debug!(
                    job_id,
                    round = record.round,
                    write_secs = clock.elapsed().as_secs_f64(),
                    "optimizer state written"
                );
            }
            Err(error) => warn!(
                job_id,
                round = record.round,
                uri = %record.optimizer_state_uri,
                error = %spillway_common::process::error_chain(&error),
                "failed to write the optimizer state, which the next reduce step restores if it is missing"
            ),
        }
    }
}

/// Writes the optimizer state that `record`'s step computed, create-only.
pub(super) async fn put_state(
    record: &RoundRecord,
    next_inputs: &StepInputs,
) -> Result<(), RoundError> {
    let state = next_inputs
        .state
        .as_ref()
        .map(|(_, bytes)| bytes.clone())
        .unwrap_or_default();
    put_round_file(
        &record.optimizer_state_uri,
        record.round,
        state,
        &record.optimizer_state_sha256,
    )
    .await
}

/// Runs the reduce step proper: reads the partials in task order, steps the optimizer
/// and writes the next weights file. Returns the round's record and the next step's
/// inputs, whose optimizer state the caller writes.
pub(super) async fn reduce_step(
    ledger: &Ledger,
    files: &RoundFiles,
    job: &JobRecord,
    plan: &Plan,
    pointer: &RoundPointer,
    tasks: &[TaskRecord],
) -> Result<(RoundRecord, StepInputs), RoundError> {
    let round = pointer.round;
    let weights_sha256 = parse_digest(job, &pointer.weights_sha256)?;

    let clock = Instant::now();
    let reduce = async {
        let gradient = reduce_partials(job, plan, round, &weights_sha256, tasks).await?;
        Ok::<_, RoundError>((gradient, clock.elapsed()))
    };
    // The inputs of the optimizer step are read while the partials reduce, unless the
    // previous step of this daemon left them in memory.
    let inputs = async {
        let inputs = match files.take(&job.job_id, pointer) {
            Some(inputs) => inputs,
            None => match fetch_inputs(job, pointer, &weights_sha256).await {
                Err(RoundError::Store(error)) if is_not_found(&error, &pointer.optimizer_uri) => {
                    restore_inputs(ledger, job, plan, pointer).await?
                }
                inputs => inputs?,
            },
        };
        Ok::<_, RoundError>((inputs, clock.elapsed()))
    };
    let ((gradient, reduced_at), (inputs, read_at)) = tokio::try_join!(reduce, inputs)?;

    let samples = gradient.samples;
    let loss = gradient.loss;
    let partials = gradient.partials;
    let started_step = clock.elapsed();
    let update = apply_step(plan, inputs, gradient).await?;
    let stepped_at = clock.elapsed();

    let output = &plan.manifest.output;
    let weights_uri = layout::round_weights_uri(output, &job.job_id, update.next_round);
    let state_uri = layout::round_optimizer_uri(output, &job.job_id, update.next_round);
    let next_weights_sha256 = update.weights_sha256.clone();
    let optimizer_state_sha256 = update.state_sha256.clone();
    let next_inputs = StepInputs::after(update);
    put_round_file(
        &weights_uri,
        round,
        next_inputs.weights.clone(),
        &next_weights_sha256,
    )
    .await?;
    debug!(
        job_id = %job.job_id,
        round,
        reduce_secs = reduced_at.as_secs_f64(),
        read_secs = read_at.as_secs_f64(),
        step_secs = (stepped_at - started_step).as_secs_f64(),
        write_secs = (clock.elapsed() - stepped_at).as_secs_f64(),
        "reduce step phases"
    );

    let record = RoundRecord {
        round,
        weights_sha256,
        tasks: partials,
        samples,
        loss,
        next_weights_uri: weights_uri,
        next_weights_sha256,
        optimizer_state_uri: state_uri,
        optimizer_state_sha256,
        round_secs: round_secs(pointer),
        reduce_secs: 0.0,
    };
    Ok((record, next_inputs))
}

/// Reduces the partial gradients of round `round`'s `tasks`, which ran on the weights
/// file with SHA-256 `weights_sha256`.
pub(super) async fn reduce_partials(
    job: &JobRecord,
    plan: &Plan,
    round: u32,
    weights_sha256: &Sha256Hex,
    tasks: &[TaskRecord],
) -> Result<ReducedGradient, RoundError> {
    let output = &plan.manifest.output;
    // Fetch a few partials ahead, but add them strictly in task index order: the
    // ledger lists a round's tasks sorted by micro-batch index.
    let sources: Vec<(String, u32)> = tasks
        .iter()
        .map(|task| {
            let uri = task
                .result_uri
                .clone()
                .unwrap_or_else(|| layout::result_uri(output, &job.job_id, &task.spec.task_id));
            (uri, task.spec.index)
        })
        .collect();
    let mut fetched = futures::stream::iter(sources)
        .map(|(uri, index)| async move { store::get(&uri).await.map(|bytes| (index, bytes)) })
        .buffered(FETCH_AHEAD);

    let mut reducer = GradientReducer::new(round, weights_sha256.clone());
    while let Some(partial) = fetched.next().await {
        let (index, bytes) = partial?;
        reducer = tokio::task::spawn_blocking(move || reducer.add(index, &bytes).map(|()| reducer))
            .await?
            .map_err(|source| RoundError::Gradients { round, source })?;
    }
    reducer
        .finish()
        .map_err(|source| RoundError::Gradients { round, source })
}

/// Runs one optimizer step of `gradient`'s round on its step inputs, on a blocking thread.
pub(super) async fn apply_step(
    plan: &Plan,
    inputs: StepInputs,
    gradient: ReducedGradient,
) -> Result<RoundUpdate, RoundError> {
    let round = gradient.round;
    let kernel = plan.manifest.kernel.clone();
    let training = plan.training.clone();
    tokio::task::spawn_blocking(move || {
        let state = inputs.state.as_ref().map(|(_, bytes)| bytes.as_ref());
        apply_round(&kernel, &training, &inputs.weights, state, &gradient)
    })
    .await?
    .map_err(|source| RoundError::Update { round, source })
}

/// Fetches a round's weights file and the optimizer state before its step, each
/// checked against the SHA-256 the ledger pins.
pub(super) async fn fetch_inputs(
    job: &JobRecord,
    pointer: &RoundPointer,
    weights_sha256: &Sha256Hex,
) -> Result<StepInputs, RoundError> {
    let weights = store::get_verified(&pointer.weights_uri, weights_sha256).await?;
    let state = if pointer.optimizer_uri.is_empty() {
        None
    } else {
        let expected = parse_digest(job, &pointer.optimizer_sha256)?;
        let bytes = store::get_verified(&pointer.optimizer_uri, &expected).await?;
        Some((pointer.optimizer_sha256.clone(), bytes))
    };
    Ok(StepInputs {
        weights_sha256: weights_sha256.clone(),
        weights,
        state,
    })
}

/// Writes a round file create-only. A file left by an earlier attempt of the same
/// step is kept when it has the same bytes, which a deterministic step guarantees.
async fn put_round_file(
    uri: &str,
    round: u32,
    bytes: Bytes,
    sha256: &Sha256Hex,
) -> Result<(), RoundError> {
    if store::put_create(uri, bytes).await? == PutOutcome::Created {
        return Ok(());
    }
    let existing = Sha256Hex::of(&store::get(uri).await?);
    if &existing != sha256 {
        return Err(RoundError::Conflict {
            uri: uri.to_owned(),
            round,
            existing,
            computed: sha256.clone(),
        });
    }
    debug!(
        uri,
        round, "round file exists from an earlier attempt; kept"
    );
    Ok(())
}
