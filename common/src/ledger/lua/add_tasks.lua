-- KEYS[1] job hash, KEYS[2] queue list, KEYS[3..] task hashes
-- ARGV[i] task spec JSON for KEYS[i + 2], ARGV tail: task ids in the same order
-- Creates the tasks that do not exist yet, so a retried chunk adds nothing twice.
-- Returns the number of tasks created.
local job, queue = KEYS[1], KEYS[2]
local count = #KEYS - 2
local created = 0
local now = now_ms()
for i = 1, count do
  local key = KEYS[i + 2]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'spec', ARGV[i], 'state', 'queued', 'attempt', 0, 'queued_at_ms', now)
    redis.call('RPUSH', queue, ARGV[count + i])
    created = created + 1
  end
end
redis.call('HINCRBY', job, 'tasks_created', created)
redis.call('HINCRBY', job, 'n_queued', created)
return created
