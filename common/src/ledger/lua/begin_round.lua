-- KEYS[1] job hash, KEYS[2] rounds list
-- ARGV: round, tasks_per_round, weights_uri, weights_sha256, optimizer_uri,
--       optimizer_sha256, record (JSON of the reduced round before it, or empty)
-- Starts a training round: from `preparing` for round 0, or from `reducing` once the
-- previous round is reduced. The job goes to `admitting` with room for the round's
-- tasks, which the caller adds before it opens the job again. The record of the
-- reduced round is appended in the same step, so it is listed once.
-- Returns `begun`, `resume` when the round was begun earlier and its tasks may still
-- be missing, or the job's state when the round cannot begin from it.
local job, rounds = KEYS[1], KEYS[2]
local round = tonumber(ARGV[1])
local fields = redis.call('HMGET', job, 'state', 'round', 'tasks_total')
local state, current = fields[1], tonumber(fields[2])
if not state then
  return redis.error_reply('job not found')
end
if state == 'admitting' and current == round then
  return 'resume'
end
local from_preparing = state == 'preparing' and current == nil and round == 0
local from_reducing = state == 'reducing' and current ~= nil and current + 1 == round
if not (from_preparing or from_reducing) then
  return state
end
redis.call('HSET', job, 'state', 'admitting', 'round', round,
  'tasks_total', tonumber(fields[3] or 0) + tonumber(ARGV[2]),
  'round_weights_uri', ARGV[3], 'round_weights_sha256', ARGV[4],
  'optimizer_uri', ARGV[5], 'optimizer_sha256', ARGV[6],
  'round_started_at_ms', now_ms())
if ARGV[7] ~= '' then
  redis.call('RPUSH', rounds, ARGV[7])
end
return 'begun'
