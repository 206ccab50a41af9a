-- KEYS[1] job hash
-- Opens an admitting job for leasing once all of its tasks exist.
-- Returns the job's state after the call.
local job = KEYS[1]
local fields = redis.call('HMGET', job, 'state', 'tasks_total', 'tasks_created')
if not fields[1] then
  return redis.error_reply('job not found')
end
if fields[1] == 'admitting' and tonumber(fields[3]) >= tonumber(fields[2]) then
  redis.call('HSET', job, 'state', 'running')
  return 'running'
end
return fields[1]
