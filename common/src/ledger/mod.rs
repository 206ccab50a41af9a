//! The task ledger in Redis: job and task records, leases, heartbeats and completions.
//!
//! Every state change is one Lua script, so a crash of the daemon, a worker or Redis
//! between two calls leaves a consistent ledger. Keys of one job share the hash tag
//! `{job_id}` and scripts touch only that job's keys, so the ledger also runs on Redis
//! Cluster. Scripts read the clock with Redis `TIME`, so lease deadlines do not depend
//! on the clocks of the hosts that call them.
//!
//! Task states: `queued` → `leased` → `succeeded` | `failed` (a data error, never
//! retried) | `dead` (max attempts used). A retryable failure or an expired lease
//! moves a leased task back to `queued`. Job states: `admitting` → `running` →
//! `reducing` (every task is terminal) → `succeeded` | `failed`.

mod client;
mod keys;
mod scripts;

pub use client::*;
pub use keys::{DEFAULT_PREFIX, Keys};
