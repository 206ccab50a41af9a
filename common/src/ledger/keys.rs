//! Ledger key names.

/// Default prefix of every ledger key.
pub const DEFAULT_PREFIX: &str = "spillway";

/// Builds the ledger's key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash with the job's manifest, state and counters.
    pub fn job(&self, job_id: &str) -> String {
        format!("{}:{{{job_id}}}:job", self.prefix)
    }

    /// Hash with one task's spec, state, attempt and lease.
    pub fn task(&self, job_id: &str, task_id: &str) -> String {
        format!("{}:{{{job_id}}}:task:{task_id}", self.prefix)
    }

    /// List of queued task ids, leased from the head.
    pub fn queue(&self, job_id: &str) -> String {
        format!("{}:{{{job_id}}}:queue", self.prefix)
    }

    /// Sorted set of leased task ids, scored by lease deadline in milliseconds.
    pub fn leases(&self, job_id: &str) -> String {
        format!("{}:{{{job_id}}}:leases", self.prefix)
    }

    /// Sorted set of worker ids, scored by the deadline of their last heartbeat.
    pub fn workers(&self, job_id: &str) -> String {
        format!("{}:{{{job_id}}}:workers", self.prefix)
    }

    /// Hash of the worker arrays that backends submitted for a job:
    /// `<backend>:<array id>` → element count.
    pub fn arrays(&self, job_id: &str) -> String {
        format!("{}:{{{job_id}}}:arrays", self.prefix)
    }

    /// Hash of the worker time a job used: `<backend>|<gpu sku>|<gpus per worker>` →
    /// seconds of task runtime, summed over every attempt, duplicates and failures too.
    pub fn usage(&self, job_id: &str) -> String {
        format!("{}:{{{job_id}}}:usage", self.prefix)
    }

    /// Burst spend of one UTC day (`YYYY-MM-DD`), over every daemon, for the daily cap.
    pub fn burst_spend(&self, day: &str) -> String {
        format!("{}:burst-spend:{day}", self.prefix)
    }

    /// List of a training job's reduced rounds, one JSON record each, oldest first.
    pub fn rounds(&self, job_id: &str) -> String {
        format!("{}:{{{job_id}}}:rounds", self.prefix)
    }

    /// List of tokens that wake a training job's waiting workers when a round opens:
    /// one per task of the round.
    pub fn round_open(&self, job_id: &str) -> String {
        format!("{}:{{{job_id}}}:round-open", self.prefix)
    }

    /// List that wakes daemons: a worker pushes a job id when it completes the job's
    /// last open task, so the job is reduced without waiting for the next pass.
    pub fn wake(&self) -> String {
        format!("{}:wake", self.prefix)
    }

    /// Lock that lets one daemon at a time reduce a job.
    pub fn reduce_lock(&self, job_id: &str) -> String {
        format!("{}:{{{job_id}}}:reduce-lock", self.prefix)
    }

    /// Flag that asks every daemon to admit nothing and start no workers.
    pub fn drain(&self) -> String {
        format!("{}:drain", self.prefix)
    }

    /// Sorted set of jobs that are not finished, scored by admission time.
    pub fn active_jobs(&self) -> String {
        format!("{}:jobs:active", self.prefix)
    }

    /// List of task observations (kernel, backend, runtime) that workers push and the
    /// daemon drains into its metrics.
    pub fn observations(&self) -> String {
        format!("{}:observations", self.prefix)
    }

    /// Sorted set of finished jobs, scored by finish time.
    pub fn finished_jobs(&self) -> String {
        format!("{}:jobs:finished", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_share_hash_tag() {
        let keys = Keys::new("spillway");
        let tag = "{j-0123456789abcdef0123}";
        for key in [
            keys.job("j-0123456789abcdef0123"),
            keys.task("j-0123456789abcdef0123", "t000001"),
            keys.queue("j-0123456789abcdef0123"),
            keys.leases("j-0123456789abcdef0123"),
            keys.workers("j-0123456789abcdef0123"),
            keys.rounds("j-0123456789abcdef0123"),
            keys.round_open("j-0123456789abcdef0123"),
        ] {
            assert!(key.contains(tag), "{key} lacks the hash tag");
        }
    }

    #[test]
    fn task_key_matches_lua_derivation() {
        // The Lua scripts derive a task key from the job key by replacing the
        // trailing `job` with `task:<id>`.
        let keys = Keys::new("p");
        let job = keys.job("j-1");
        let derived = format!("{}task:t000001", &job[..job.len() - 3]);
        assert_eq!(derived, keys.task("j-1", "t000001"));
    }
}
