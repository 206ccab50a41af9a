-- KEYS[1] job hash, KEYS[2] queue, KEYS[3] leases zset, KEYS[4] workers zset
-- ARGV: max tasks to reap in this call
-- Queues again every task whose lease deadline has passed, or marks it dead when it
-- has used its max_attempts, and removes workers whose registration expired. A lease
-- that end_worker_leases ended records the backend's reason instead of the deadline.
-- Returns JSON {expired, requeued, dead, workers_alive}.
local job, queue, leases, workers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms()
local max_attempts = tonumber(redis.call('HGET', job, 'max_attempts') or 1)
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local requeued, dead = 0, 0
for _, task_id in ipairs(expired) do
  local key = task_key(job, task_id)
  redis.call('ZREM', leases, task_id)
  local fields = redis.call('HMGET', key, 'state', 'attempt', 'owner', 'lost_reason')
  if fields[1] == 'leased' then
    redis.call('HINCRBY', job, 'n_leased', -1)
    redis.call('HINCRBY', job, 'lease_expiries', 1)
    redis.call('HDEL', key, 'lease_deadline_ms', 'owner', 'lost_reason')
    local attempt = tonumber(fields[2])
    local reason = 'lease expired on attempt ' .. attempt .. ' (worker ' .. (fields[3] or '?') .. ')'
    if fields[4] then
      reason = fields[4] .. ' on attempt ' .. attempt
    end
    if attempt >= max_attempts then
      redis.call('HSET', key, 'state', 'dead', 'finished_at_ms', now,
        'reason', reason .. ', the last of ' .. max_attempts)
      redis.call('HINCRBY', job, 'n_dead', 1)
      dead = dead + 1
    else
      redis.call('HSET', key, 'state', 'queued', 'last_error', reason, 'queued_at_ms', now)
      redis.call('LPUSH', queue, task_id)
      redis.call('HINCRBY', job, 'n_queued', 1)
      redis.call('HINCRBY', job, 'retries', 1)
      requeued = requeued + 1
    end
  end
end
redis.call('ZREMRANGEBYSCORE', workers, '-inf', now)
close_if_done(job)
return cjson.encode({expired = #expired, requeued = requeued, dead = dead,
  workers_alive = redis.call('ZCARD', workers)})
