-- KEYS[1] job hash, KEYS[2] queue, KEYS[3] leases zset, KEYS[4] workers zset
-- ARGV: worker_id, lease_ms
-- Leases the next queued task. Returns JSON {task_id, attempt, spec, queued_at_ms, leased_at_ms}
-- or nil when no task is queued or the job is not running.
local job, queue, leases, workers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local worker, lease_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
redis.call('ZADD', workers, now + lease_ms, worker)
if redis.call('HGET', job, 'state') ~= 'running' then
  return false
end
while true do
  local task_id = redis.call('LPOP', queue)
  if not task_id then
    return false
  end
  local key = task_key(job, task_id)
  local fields = redis.call('HMGET', key, 'state', 'attempt', 'spec', 'queued_at_ms')
  -- A stale queue entry (the task finished meanwhile) is dropped.
  if fields[1] == 'queued' then
    local attempt = tonumber(fields[2]) + 1
    redis.call('HSET', key, 'state', 'leased', 'attempt', attempt, 'owner', worker,
      'lease_deadline_ms', now + lease_ms, 'leased_at_ms', now)
    redis.call('ZADD', leases, now + lease_ms, task_id)
    redis.call('HINCRBY', job, 'n_queued', -1)
    redis.call('HINCRBY', job, 'n_leased', 1)
    return cjson.encode({task_id = task_id, attempt = attempt, spec = fields[3],
      queued_at_ms = tonumber(fields[4]), leased_at_ms = now})
  end
end
