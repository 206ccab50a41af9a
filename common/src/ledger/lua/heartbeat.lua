-- KEYS[1] job hash, KEYS[2] leases zset, KEYS[3] workers zset
-- ARGV: worker_id, lease_ms, task_id (empty when idle), attempt
-- Extends the worker's registration and, if it still holds it, the task's lease.
-- Returns `ok`, `idle` or `lost` (the lease expired or another attempt owns the task).
local job, leases, workers = KEYS[1], KEYS[2], KEYS[3]
local worker, lease_ms, task_id, attempt = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local now = now_ms()
redis.call('ZADD', workers, now + lease_ms, worker)
if task_id == '' then
  return 'idle'
end
local key = task_key(job, task_id)
local fields = redis.call('HMGET', key, 'state', 'owner', 'attempt')
if fields[1] ~= 'leased' or fields[2] ~= worker or fields[3] ~= attempt then
  return 'lost'
end
redis.call('HSET', key, 'lease_deadline_ms', now + lease_ms)
redis.call('ZADD', leases, now + lease_ms, task_id)
return 'ok'
