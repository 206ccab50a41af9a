-- KEYS[1] job hash
-- ARGV: state (`succeeded` or `failed`), artefact_uri (may be empty), summary
-- Records the job's final state once it has been reduced. Returns the state it has
-- after the call, which is the earlier final state when another daemon finished first.
local job = KEYS[1]
local state = redis.call('HGET', job, 'state')
if state ~= 'reducing' then
  return state or redis.error_reply('job not found')
end
redis.call('HSET', job, 'state', ARGV[1], 'artefact_uri', ARGV[2], 'summary', ARGV[3],
  'finished_at_ms', now_ms())
return ARGV[1]
