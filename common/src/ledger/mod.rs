//! The task ledger in Redis: job and task records, leases, heartbeats and completions.
//!
//! Every state change is one Lua script, so a crash of the daemon, a worker or Redis
//! between two calls leaves a consistent ledger. Keys of one job share the hash tag
//! `{job_id}` and scripts touch only that job's keys, so the ledger also runs on Redis
//! Cluster. Scripts read the clock with Redis `TIME`, so lease deadlines do not depend
//! on the clocks of the hosts that call them. On a cluster that clock is the one of the
//! node that owns the job's hash slot.
//!
//! Task states: `queued` → `leased` → `succeeded` | `failed` (a data error, never
//! retried) | `dead` (max attempts used). A retryable failure or an expired lease
//! moves a leased task back to `queued`. Job states: `admitting` → `running` →
//! `reducing` (every task is terminal) → `succeeded` | `failed`, or `cancelled` from
//! any state before those. A training job runs in rounds: `admitting` → `preparing`
//! (no task yet) → `admitting` (round 0's tasks) → `running` → `reducing` →
//! `admitting` (round 1's tasks) → … → `reducing` after the last round →
//! `succeeded` | `failed`. Round k's tasks are the job's task numbers
//! `k × tasks_per_round` to `(k + 1) × tasks_per_round − 1`.
//!
//! [`Ledger::connect`] takes one of these URLs:
//! - `redis://[user:password@]host:port/db`, or `rediss://` for TLS: one Redis server.
//!   The other single-server schemes of the redis crate, such as `redis+unix://`, work
//!   too.
//! - `redis+cluster://[user:password@]host:port[/?addr=host:port&addr=host:port]`, or
//!   `rediss+cluster://` for TLS: a Redis Cluster. The host and every `addr` value are
//!   seed nodes, and the client finds the other nodes from any reachable seed.
//!   Every seed uses the URL's credentials, and the database is always 0.
//!
//! Both forms are valid URLs, so a password from a password file is set and redacted
//! with the usual URL functions. The indexes of active and finished jobs and the
//! observation list are global keys, so each lives on one node of a cluster.

mod client;
mod connection;
mod keys;
mod scripts;

pub use client::*;
pub use connection::{LedgerAddress, LedgerConnection};
pub use keys::{DEFAULT_PREFIX, Keys};
