-- KEYS[1] job hash
-- ARGV: manifest_json, tasks_total, max_attempts, priority, name
-- Returns the job's state: `created` for a new job, otherwise its current state.
local job = KEYS[1]
local state = redis.call('HGET', job, 'state')
if state then
  return state
end
redis.call('HSET', job,
  'state', 'admitting', 'manifest', ARGV[1], 'tasks_total', ARGV[2],
  'max_attempts', ARGV[3], 'priority', ARGV[4], 'name', ARGV[5],
  'tasks_created', 0, 'n_queued', 0, 'n_leased', 0, 'n_succeeded', 0,
  'n_failed', 0, 'n_dead', 0, 'duplicates', 0, 'lease_expiries', 0, 'retries', 0,
  'admitted_at_ms', now_ms())
return 'created'
