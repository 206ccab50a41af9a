//! Types and protocols that the Spillway daemon and its workers share.
//!
//! Vocabulary used across the crate:
//! - **manifest**: what a scientist submits, one job's kernel, data, model, worker and limits;
//! - **job**: an admitted manifest with a stable `job_id`;
//! - **task**: one micro-batch of a job, the unit that a worker leases, runs and completes;
//! - **shard**: the input file that a task reads, addressed by URI and SHA-256;
//! - **lease**: a task's time-limited claim by one worker, extended by heartbeats;
//! - **envelope**: the JSON audit record that every task attempt writes;
//! - **run hash**: the digest that binds worker digest, data, model, kernel settings and GPU SKU;
//! - **artefact**: the job's reduced output.

pub mod artefact;
pub mod digest;
pub mod envelope;
pub mod layout;
pub mod ledger;
pub mod manifest;
pub mod model;
pub mod process;
pub mod store;
pub mod task;
pub mod train;
pub mod worker_env;
