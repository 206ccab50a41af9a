-- KEYS[1] job hash, KEYS[2] queue
-- Returns how long the task at the head of the queue has waited, in milliseconds by
-- the clock of the node that stores it, or false when nothing is queued.
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then
  return false
end
local queued_at = redis.call('HGET', task_key(KEYS[1], head), 'queued_at_ms')
if not queued_at then
  return false
end
return math.max(0, now_ms() - tonumber(queued_at))
