//! A training task: switch to the round's weights, read the task's pairs, run the
//! forward and backward pass and encode the partial gradient.

use bytes::Bytes;
use serde::Deserialize;
use spillway_common::ledger::Lease;
use spillway_common::store;
use spillway_common::train::TrainRound;
use tracing::debug;

use super::task::{Computed, LineRange, TaskError, select_lines};
use crate::train::{TextPair, TrainKernel};

/// One line of a training shard.
#[derive(Deserialize)]
struct PairRecord {
    #[allow(
        dead_code,
        reason = "required in every line, but the gradient does not use it"
    )]
    id: String,
    anchor: String,
    positive: String,
}

/// Computes the task's partial gradient and returns the bytes of its result file.
pub(super) async fn gradient_result(
    kernel: &mut TrainKernel,
    shard: &[u8],
    lease: &Lease,
    job_id: &str,
) -> Result<Computed, TaskError> {
    let spec = &lease.spec;
    let Some(round) = spec.round.as_ref() else {
        return Err(TaskError::MissingRound {
            task_id: lease.task_id.clone(),
            kernel: kernel.kernel_name(),
        });
    };
    use_round_weights(kernel, round, job_id, &lease.task_id).await?;

    let range = LineRange {
        first: spec.first_record,
        count: spec.records,
        declared: spec.shard.records,
    };
    let records: Vec<PairRecord> = select_lines(
        shard,
        &spec.shard.uri,
        range,
        "`id`, `anchor` and `positive`",
    )?;
    let pairs: Vec<TextPair> = records
        .iter()
        .map(|record| TextPair {
            anchor: &record.anchor,
            positive: &record.positive,
        })
        .collect();

    let clock = std::time::Instant::now();
    let partial = kernel.gradients(round.round, &pairs)?;
    let kernel_secs = clock.elapsed().as_secs_f64();
    let bytes = partial.encode(&[
        ("job_id", job_id.to_owned()),
        ("task_id", lease.task_id.clone()),
        ("kernel", kernel.kernel_name().to_owned()),
    ]);
    Ok(Computed {
        bytes: Bytes::from(bytes),
        kernel_secs,
    })
}

/// Makes the kernel compute with the round's weights: round 0 with the model's own
/// (already loaded), a later round with its weights file, fetched and checked against
/// the pinned SHA-256 only when the kernel does not hold it yet.
async fn use_round_weights(
    kernel: &mut TrainKernel,
    round: &TrainRound,
    job_id: &str,
    task_id: &str,
) -> Result<(), TaskError> {
    if kernel.has_weights(round.round, &round.weights_sha256) {
        return Ok(());
    }
    if round.round == 0 && &round.weights_sha256 == kernel.base_weights_sha256() {
        kernel.load_base_weights()?;
        return Ok(());
    }

    debug!(job_id, task_id, round = round.round, uri = %round.weights_uri, "fetching the round's weights");
    let bytes = store::get_verified(&round.weights_uri, &round.weights_sha256).await?;
    kernel.load_verified_weights(round.round, &bytes, round.weights_sha256.clone())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use spillway_common::digest::Sha256Hex;
    use spillway_common::envelope::DataRef;
    use spillway_common::manifest::{Manifest, parse};
    use spillway_common::train::TrainRound;

    use super::super::run_identity;

    fn manifest() -> Manifest {
        parse(include_bytes!(
            "../../../docs/examples/contrastive-manifest.json"
        ))
        .unwrap()
    }

    fn round(number: u32, weights: &[u8]) -> TrainRound {
        TrainRound {
            round: number,
            weights_uri: format!("file:///srv/out/weights-{number}.safetensors"),
            weights_sha256: Sha256Hex::of(weights),
        }
    }

    fn shard() -> Vec<DataRef> {
        vec![DataRef {
            uri: "file:///srv/pairs/shard-00000.jsonl".into(),
            sha256: Sha256Hex::of(b"shard"),
        }]
    }

    #[test]
    fn identity_lists_round_weights() {
        let manifest = manifest();
        let round = round(3, b"weights");

        let identity = run_identity(&manifest, "cpu", shard(), Some(&round));

        assert_eq!(identity.data.len(), 2);
        assert_eq!(identity.data[1].sha256, round.weights_sha256);
        assert_eq!(identity.kernel_settings["round"], 3);
        assert_eq!(identity.kernel_settings["training"]["seed"], 42);
        assert_eq!(
            identity.kernel_settings["training"]["optimizer"]["name"],
            "adamw"
        );
    }

    #[test]
    fn run_hash_binds_round_weights_and_seed() {
        let manifest = manifest();
        let base = run_identity(&manifest, "cpu", shard(), Some(&round(1, b"a"))).run_hash();

        let other_round = run_identity(&manifest, "cpu", shard(), Some(&round(2, b"a")));
        assert_ne!(other_round.run_hash(), base);

        let other_weights = run_identity(&manifest, "cpu", shard(), Some(&round(1, b"b")));
        assert_ne!(other_weights.run_hash(), base);

        let mut reseeded = manifest.clone();
        reseeded.training.as_mut().unwrap().seed = 43;
        let other_seed = run_identity(&reseeded, "cpu", shard(), Some(&round(1, b"a")));
        assert_ne!(other_seed.run_hash(), base);
    }
}
