-- KEYS[1] job hash, KEYS[2] queue, KEYS[3] leases zset
-- ARGV: task_id, worker_id, attempt, kind (`data` or `retryable`), reason
-- Ends an attempt that failed. A data error fails the task for good; a retryable
-- error queues it again until the job's max_attempts, then the task is dead.
-- Returns the task's new state, or `stale` when this attempt no longer owns the task.
local job, queue, leases = KEYS[1], KEYS[2], KEYS[3]
local task_id, worker, attempt, kind, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = task_key(job, task_id)
local fields = redis.call('HMGET', key, 'state', 'owner', 'attempt')
if fields[1] ~= 'leased' or fields[2] ~= worker or fields[3] ~= attempt then
  return 'stale'
end
local max_attempts = tonumber(redis.call('HGET', job, 'max_attempts'))
local now = now_ms()
redis.call('ZREM', leases, task_id)
redis.call('HINCRBY', job, 'n_leased', -1)
redis.call('HDEL', key, 'lease_deadline_ms', 'owner')
local new_state
if kind == 'data' then
  new_state = 'failed'
  redis.call('HSET', key, 'state', 'failed', 'reason', reason, 'finished_at_ms', now)
  redis.call('HINCRBY', job, 'n_failed', 1)
elseif tonumber(attempt) >= max_attempts then
  new_state = 'dead'
  redis.call('HSET', key, 'state', 'dead', 'finished_at_ms', now,
    'reason', 'attempt ' .. attempt .. ' of ' .. max_attempts .. ' failed: ' .. reason)
  redis.call('HINCRBY', job, 'n_dead', 1)
else
  new_state = 'queued'
  redis.call('HSET', key, 'state', 'queued', 'last_error', reason, 'queued_at_ms', now)
  redis.call('LPUSH', queue, task_id)
  redis.call('HINCRBY', job, 'n_queued', 1)
  redis.call('HINCRBY', job, 'retries', 1)
end
close_if_done(job)
return new_state
