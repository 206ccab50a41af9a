-- KEYS[1] workers zset
-- Returns the number of workers whose registration deadline has not passed, by the
-- clock of the node that stores the deadlines.
return redis.call('ZCOUNT', KEYS[1], now_ms(), '+inf')
