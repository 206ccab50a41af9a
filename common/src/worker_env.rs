//! The worker's environment contract: the variables every backend sets for each
//! element of a worker array, so one worker binary runs unchanged everywhere.

/// Job whose tasks the worker leases.
pub const JOB_ID: &str = "SPILLWAY_JOB_ID";
/// Backend that started the worker: `local`, `slurm` or `batch`.
pub const BACKEND: &str = "SPILLWAY_BACKEND";
/// Backend-specific id of the array (Slurm job id, Batch job id, local launch id).
pub const ARRAY_ID: &str = "SPILLWAY_ARRAY_ID";
/// Element of the array, from 0.
pub const ARRAY_INDEX: &str = "SPILLWAY_ARRAY_INDEX";
/// Redis URL of the ledger, such as `redis://127.0.0.1:6379/0`.
pub const LEDGER_URL: &str = "SPILLWAY_LEDGER_URL";
/// File that contains the ledger password, when Redis requires one.
pub const LEDGER_PASSWORD_FILE: &str = "SPILLWAY_LEDGER_PASSWORD_FILE";
/// Key prefix of the ledger, so several deployments can share one Redis.
pub const LEDGER_PREFIX: &str = "SPILLWAY_LEDGER_PREFIX";
/// Directory where the worker caches verified model files.
pub const CACHE_DIR: &str = "SPILLWAY_CACHE_DIR";
/// Lease length in seconds that the worker requests and renews.
pub const LEASE_SECS: &str = "SPILLWAY_LEASE_SECS";
/// Intra-op threads for the kernel; unset lets libtorch choose.
pub const THREADS: &str = "SPILLWAY_THREADS";
/// Seconds a training worker waits for the job's next round when no task is queued
/// (default 600); an `embed` worker exits at once.
pub const ROUND_WAIT_SECS: &str = "SPILLWAY_ROUND_WAIT_SECS";
/// GPU model name reported in envelopes; `cpu` when the worker runs without a GPU.
pub const GPU_SKU: &str = "SPILLWAY_GPU_SKU";

/// Returns the id a worker registers and leases under. A backend that starts the
/// process itself builds the same id from the process id, to find the worker's leases
/// after the process exits.
pub fn worker_id(backend: &str, array_id: &str, array_index: u32, host: &str, pid: u32) -> String {
    format!("{backend}-{array_id}-{array_index}-{host}-{pid}")
}
