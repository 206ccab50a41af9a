-- KEYS[1] job hash, KEYS[2] queue, KEYS[3] leases zset
-- ARGV: task_id, worker_id, attempt, result_uri
-- Records the first completion of a task; later ones only count as duplicates.
-- A dead task is rescued by a late completion while its job is still running.
-- Returns `completed`, `completed_last` (the job's last open task) or `duplicate`.
local job, queue, leases = KEYS[1], KEYS[2], KEYS[3]
local task_id, worker, attempt, result_uri = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = task_key(job, task_id)
local state = redis.call('HGET', key, 'state')
if not state then
  return redis.error_reply('task not found: ' .. task_id)
end
local rescue = state == 'dead' and redis.call('HGET', job, 'state') == 'running'
if state ~= 'leased' and state ~= 'queued' and not rescue then
  redis.call('HINCRBY', job, 'duplicates', 1)
  return 'duplicate'
end
if rescue then
  -- The lease expired for the last time, yet the attempt finished before the job closed.
  redis.call('HINCRBY', job, 'n_dead', -1)
  redis.call('HDEL', key, 'reason')
elseif state == 'leased' then
  redis.call('ZREM', leases, task_id)
  redis.call('HINCRBY', job, 'n_leased', -1)
else
  -- The lease expired and the task waits for a new worker, but this attempt finished.
  redis.call('LREM', queue, 0, task_id)
  redis.call('HINCRBY', job, 'n_queued', -1)
end
redis.call('HSET', key, 'state', 'succeeded', 'result_uri', result_uri,
  'completed_by', worker, 'completed_attempt', attempt, 'finished_at_ms', now_ms())
redis.call('HDEL', key, 'lease_deadline_ms')
redis.call('HINCRBY', job, 'n_succeeded', 1)
if close_if_done(job) then
  return 'completed_last'
end
return 'completed'
