-- KEYS[1] job hash, KEYS[2] leases zset, KEYS[3] workers zset
-- ARGV: worker_id, reason
-- Ends the leases of a worker that its backend saw exit, so that the next reap queues
-- its tasks again at once instead of at the lease deadline. The reap records `reason`
-- as the attempt's end. Forgets the worker's registration.
-- Returns the number of leases ended.
local job, leases, workers = KEYS[1], KEYS[2], KEYS[3]
local worker, reason = ARGV[1], ARGV[2]
local now = now_ms()
local ended = 0
for _, task_id in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
  local key = task_key(job, task_id)
  local fields = redis.call('HMGET', key, 'state', 'owner')
  if fields[1] == 'leased' and fields[2] == worker then
    redis.call('HSET', key, 'lease_deadline_ms', now, 'lost_reason', reason)
    redis.call('ZADD', leases, now, task_id)
    ended = ended + 1
  end
end
redis.call('ZREM', workers, worker)
return ended
