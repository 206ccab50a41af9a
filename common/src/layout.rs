//! Where a job's objects live under its manifest's `output` prefix.
//!
//! ```text
//! <output>/<job_id>/results/<task_id>.safetensors          one per task, any attempt
//! <output>/<job_id>/envelopes/<task_id>/attempt-<n>.json   one per attempt
//! <output>/<job_id>/embeddings.safetensors                 the artefact
//! <output>/<job_id>/job.json                               the job envelope
//! ```

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

/// URI of the job's envelope.
pub fn job_envelope_uri(output: &str, job_id: &str) -> String {
    join(output, &format!("{job_id}/job.json"))
}
