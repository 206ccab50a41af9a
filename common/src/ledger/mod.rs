//! The task ledger in Redis.
