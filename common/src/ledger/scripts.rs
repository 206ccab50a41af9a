//! The Lua scripts behind every ledger state change, each prefixed with shared helpers.

use std::sync::LazyLock;

use redis::Script;

const COMMON: &str = include_str!("lua/common.lua");

fn load(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

pub static CREATE_JOB: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("lua/create_job.lua")));
pub static ADD_TASKS: LazyLock<Script> = LazyLock::new(|| load(include_str!("lua/add_tasks.lua")));
pub static OPEN_JOB: LazyLock<Script> = LazyLock::new(|| load(include_str!("lua/open_job.lua")));
pub static BEGIN_ROUND: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("lua/begin_round.lua")));
pub static LEASE: LazyLock<Script> = LazyLock::new(|| load(include_str!("lua/lease.lua")));
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| load(include_str!("lua/heartbeat.lua")));
pub static COMPLETE: LazyLock<Script> = LazyLock::new(|| load(include_str!("lua/complete.lua")));
pub static FAIL: LazyLock<Script> = LazyLock::new(|| load(include_str!("lua/fail.lua")));
pub static REAP: LazyLock<Script> = LazyLock::new(|| load(include_str!("lua/reap.lua")));
pub static END_WORKER_LEASES: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("lua/end_worker_leases.lua")));
pub static CANCEL_JOB: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("lua/cancel_job.lua")));
pub static FINISH_JOB: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("lua/finish_job.lua")));
pub static COUNT_WORKERS: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("lua/count_workers.lua")));
pub static QUEUE_WAIT: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("lua/queue_wait.lua")));
pub static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});
pub static CLOSE_PREPARING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('HGET', KEYS[1], 'state') == 'preparing' then \
         redis.call('HSET', KEYS[1], 'state', 'reducing') return 1 end return 0",
    )
});
