//! Restoring an optimizer state that the ledger names but the store lacks, by
//! recomputing the step of the round that wrote it.

use spillway_common::digest::Sha256Hex;
use spillway_common::ledger::{JobRecord, Ledger, LedgerError, RoundPointer};
use spillway_common::store;
use spillway_common::train::RoundRecord;
use tracing::info;

use super::step::{StepInputs, apply_step, fetch_inputs, put_state, reduce_partials};
use super::{Plan, RoundError, round_task_records};

/// Returns whether `error` reports that the object at `uri` does not exist.
pub(super) fn is_not_found(error: &store::StoreError, uri: &str) -> bool {
    matches!(
        error,
        store::StoreError::Read {
            uri: read_uri,
            source: object_store::Error::NotFound { .. },
        } if read_uri == uri
    )
}

/// Restores the optimizer state that `pointer` names but the store does not have,
/// which happens when the daemon stopped, or the write failed, after the round began.
/// Recomputes the previous round's step from its ledger record, its input files and
/// its partials, writes the state create-only and returns `pointer`'s step inputs.
/// The step is deterministic, so a result other than the recorded one is a permanent
/// error. The state the previous round started from must exist: that round's reduce
/// step read it or restored it.
pub(super) async fn restore_inputs(
    ledger: &Ledger,
    job: &JobRecord,
    plan: &Plan,
    pointer: &RoundPointer,
) -> Result<StepInputs, RoundError> {
    let (record, start) = previous_round(ledger, job, plan, pointer).await?;
    let round = record.round;
    info!(
        job_id = %job.job_id,
        round,
        optimizer_uri = %pointer.optimizer_uri,
        "optimizer state missing, recomputing the step of the round that wrote it"
    );

    let tasks = round_task_records(ledger, job, plan, round).await?;
    let (gradient, inputs) = tokio::try_join!(
        reduce_partials(job, plan, round, &record.weights_sha256, &tasks),
        fetch_inputs(job, &start, &record.weights_sha256),
    )?;
    let update = apply_step(plan, inputs, gradient).await?;
    check_recomputed(
        round,
        &record.next_weights_uri,
        &record.next_weights_sha256,
        &update.weights_sha256,
    )?;
    check_recomputed(
        round,
        &record.optimizer_state_uri,
        &record.optimizer_state_sha256,
        &update.state_sha256,
    )?;

    let restored = StepInputs::after(update);
    put_state(&record, &restored).await?;
    info!(job_id = %job.job_id, round, optimizer_uri = %record.optimizer_state_uri, "optimizer state restored");
    Ok(restored)
}

/// Returns the ledger's record of the round before `pointer`'s, and the pointer that
/// round ran on: its weights file (round 0: the model's `model.safetensors`) and the
/// optimizer state it started from (none for round 0).
async fn previous_round(
    ledger: &Ledger,
    job: &JobRecord,
    plan: &Plan,
    pointer: &RoundPointer,
) -> Result<(RoundRecord, RoundPointer), RoundError> {
    let corrupt = |detail: String| {
        RoundError::Ledger(LedgerError::Corrupt {
            what: "round records",
            job_id: job.job_id.clone(),
            detail,
        })
    };
    let Some(round) = pointer.round.checked_sub(1) else {
        return Err(corrupt(format!(
            "round 0 names the optimizer state {}",
            pointer.optimizer_uri
        )));
    };
    let rounds = ledger.rounds(&job.job_id).await?;
    let record_of = |number: u32| {
        rounds
            .iter()
            .find(|record| record.round == number)
            .cloned()
            .ok_or_else(|| corrupt(format!("no record of round {number}")))
    };

    let record = record_of(round)?;
    let mut start = RoundPointer {
        round,
        weights_uri: plan.model_weights_uri(),
        weights_sha256: record.weights_sha256.to_string(),
        ..RoundPointer::default()
    };
    if let Some(earlier) = round.checked_sub(1) {
        let earlier = record_of(earlier)?;
        start.weights_uri = earlier.next_weights_uri;
        start.optimizer_uri = earlier.optimizer_state_uri;
        start.optimizer_sha256 = earlier.optimizer_state_sha256.to_string();
    }
    Ok((record, start))
}

/// Checks a file that a recomputed step gives against the SHA-256 the ledger recorded.
fn check_recomputed(
    round: u32,
    uri: &str,
    recorded: &Sha256Hex,
    recomputed: &Sha256Hex,
) -> Result<(), RoundError> {
    if recomputed == recorded {
        return Ok(());
    }
    Err(RoundError::Recomputed {
        round,
        uri: uri.to_owned(),
        recorded: recorded.clone(),
        recomputed: recomputed.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_found_names_the_missing_uri() {
        let folder = tempfile::tempdir().unwrap();
        let uri = format!("file://{}/optimizer.safetensors", folder.path().display());
        let error = store::get(&uri).await.unwrap_err();

        assert!(is_not_found(&error, &uri), "{error:?}");
        assert!(!is_not_found(&error, "file:///other"));
    }

    #[test]
    fn digest_mismatch_is_not_a_missing_file() {
        let error = store::StoreError::DigestMismatch {
            uri: "file:///x".into(),
            expected: Sha256Hex::of(b"a"),
            actual: Sha256Hex::of(b"b"),
        };
        assert!(!is_not_found(&error, "file:///x"));
    }
}
