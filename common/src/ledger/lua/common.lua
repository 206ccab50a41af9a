-- Shared helpers, prepended to every ledger script.
-- All keys of one job share the hash tag {job_id}, so each script touches one slot.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Moves the job to `reducing` once every task is terminal.
local function close_if_done(job)
  local fields = redis.call('HMGET', job, 'state', 'tasks_total', 'n_succeeded', 'n_failed', 'n_dead')
  local terminal = tonumber(fields[3] or 0) + tonumber(fields[4] or 0) + tonumber(fields[5] or 0)
  if fields[1] == 'running' and terminal >= tonumber(fields[2] or 0) then
    redis.call('HSET', job, 'state', 'reducing', 'tasks_done_at_ms', now_ms())
    return true
  end
  return false
end

local function task_key(job, task_id)
  return string.sub(job, 1, -4) .. 'task:' .. task_id
end
