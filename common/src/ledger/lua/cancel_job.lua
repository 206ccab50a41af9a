-- KEYS[1] job hash, KEYS[2] queue
-- ARGV: reason
-- Cancels a job that has not finished: queued tasks are dropped, leases stand so
-- running attempts end on their own, and no new lease is granted.
-- Returns the job's state after the call.
local job, queue = KEYS[1], KEYS[2]
local state = redis.call('HGET', job, 'state')
if not state then
  return redis.error_reply('job not found')
end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  return state
end
redis.call('DEL', queue)
redis.call('HSET', job, 'state', 'cancelled', 'summary', ARGV[1], 'finished_at_ms', now_ms())
return 'cancelled'
