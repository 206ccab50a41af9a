//! Where a job's objects live under its manifest's `output` prefix.
//!
//! ```text
//! <output>/<job_id>/results/<task_id>.safetensors          one per task, any attempt
//! <output>/<job_id>/envelopes/<task_id>/attempt-<n>.json   one per attempt
//! <output>/<job_id>/embeddings.safetensors                 the artefact
//! <output>/<job_id>/job.json                               the job envelope
//! <output>/<job_id>/rounds/<k>/weights.safetensors         training: round k's input
//! <output>/<job_id>/rounds/<k>/optimizer.safetensors       training: state after k − 1
//! ```
//!
//! A training job's rounds start at 1 here: round 0 runs on the model's own weights,
//! and the last round's `weights.safetensors` (k = the round count) is the artefact.

use crate::store::join;

/// URI of a task's result. It does not depend on the attempt, so every attempt of a
/// task writes the same key and the create-only write keeps the first.
pub fn result_uri(output: &str, job_id: &str, task_id: &str) -> String {
    join(output, &format!("{job_id}/results/{task_id}.safetensors"))
}

/// URI of one attempt's envelope.
pub fn envelope_uri(output: &str, job_id: &str, task_id: &str, attempt: u32) -> String {
    join(
        output,
        &format!("{job_id}/envelopes/{task_id}/attempt-{attempt}.json"),
    )
}

/// URI of the job's artefact.
pub fn artefact_uri(output: &str, job_id: &str) -> String {
    join(output, &format!("{job_id}/embeddings.safetensors"))
}

/// URI of the weights file that training round `round` runs on (1 and up).
pub fn round_weights_uri(output: &str, job_id: &str, round: u32) -> String {
    join(
        output,
        &format!("{job_id}/rounds/{round:06}/weights.safetensors"),
    )
}

/// URI of the optimizer state that round `round − 1`'s step wrote and round `round`'s
/// step reads.
pub fn round_optimizer_uri(output: &str, job_id: &str, round: u32) -> String {
    join(
        output,
        &format!("{job_id}/rounds/{round:06}/optimizer.safetensors"),
    )
}

/// URI of the job's envelope.
pub fn job_envelope_uri(output: &str, job_id: &str) -> String {
    join(output, &format!("{job_id}/job.json"))
}
