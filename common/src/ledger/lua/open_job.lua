-- KEYS[1] job hash
-- ARGV: the state to open into: `running`, or `preparing` for a training job whose
-- first round the daemon has yet to create
-- Opens an admitting job once all of its tasks exist.
-- Returns the job's state after the call.
local job = KEYS[1]
local fields = redis.call('HMGET', job, 'state', 'tasks_total', 'tasks_created')
if not fields[1] then
  return redis.error_reply('job not found')
end
if fields[1] == 'admitting' and tonumber(fields[3]) >= tonumber(fields[2]) then
  local target = ARGV[1] or 'running'
  redis.call('HSET', job, 'state', target)
  return target
end
return fields[1]
