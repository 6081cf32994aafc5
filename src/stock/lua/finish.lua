-- Ends the reservations of holds ARGV[3..]: their units go to ARGV[1], 'avail' (cancelled,
-- expired, or the order was never written) or 'sold' (paid).
-- KEYS[1]: the product's hash. Idempotent: a reservation is removed as its units move, so
-- a second call (a cancel racing the sweeper) finds nothing and moves nothing.
-- Units back to 'avail' also leave their user's count under a per-customer limit; paid
-- units stay counted (a PAID order holds its units for the limit).
-- Ending a reservation that was never settled leaves a tombstone (the hold in KEYS[2], a
-- sorted set scored by its end, ARGV[2] ms from now), so that a late settle of its order
-- does not take the units again; ARGV[2] = 0 (an order never written, which no settle
-- will ever follow) leaves none. Tombstones past their end are removed by every call, and
-- the set itself expires when idle: they never pile up, whatever the traffic.
-- Returns {units moved, avail after} ({0, -1} without a counter), and the published
-- figures when units moved.
local key = KEYS[1]
local graves = KEYS[2]
if redis.call('HEXISTS', key, 'avail') == 0 then
  return {0, -1}
end
local keep = tonumber(ARGV[2])
local back = ARGV[1] == 'avail' and redis.call('HEXISTS', key, 'limit') == 1
local moved = 0
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now_ms + keep
for i = 3, #ARGV do
  local hold = ARGV[i]
  local field = 'h:' .. hold
  local value = redis.call('HGET', key, field)
  local user
  if value then
    user = string.match(value, '^%d+:(.+)$')
  else
    field = 'r:' .. hold
    value = redis.call('HGET', key, field)
    if value then
      user = string.match(value, '^%d+:%d+:(.+)$')
    end
  end
  if value then
    local q = tonumber(string.match(value, '^(%d+)'))
    redis.call('HDEL', key, field)
    if string.sub(field, 1, 2) == 'r:' then
      if keep > 0 then
        redis.call('ZADD', graves, until_ms, hold)
        redis.call('PEXPIRE', graves, keep)
      end
      redis.call('HINCRBY', key, 'nr', -1)
    else
      redis.call('HINCRBY', key, 'nh', -1)
    end
    if back and user then
      if redis.call('HINCRBY', key, 'u:' .. user, -q) <= 0 then
        redis.call('HDEL', key, 'u:' .. user)
      end
    end
    moved = moved + q
  end
end
redis.call('ZREMRANGEBYSCORE', graves, '-inf', now_ms)
if moved > 0 then
  redis.call('HINCRBY', key, ARGV[1], moved)
  return with_live({moved, tonumber(redis.call('HGET', key, 'avail'))}, publish_live(key))
end
return {moved, tonumber(redis.call('HGET', key, 'avail'))}
