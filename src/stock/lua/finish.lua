-- Ends the reservation of hold ARGV[1]: its units go to ARGV[2], 'avail' (cancelled,
-- expired, or the order was never written) or 'sold' (paid).
-- KEYS[1]: the product's hash. Idempotent: the reservation is removed as its units move,
-- so a second call (a cancel racing the sweeper) finds nothing and returns 0.
-- Ending a reservation that was never settled leaves a tombstone x:<hold> (until ARGV[3]
-- ms from now), so that a late settle does not take the units again.
local key = KEYS[1]
local field = 'h:' .. ARGV[1]
local value = redis.call('HGET', key, field)
if not value then
  field = 'r:' .. ARGV[1]
  value = redis.call('HGET', key, field)
end
if not value then
  return 0
end
local q = tonumber(string.match(value, '^(%d+)'))
redis.call('HDEL', key, field)
if string.sub(field, 1, 2) == 'r:' then
  local t = redis.call('TIME')
  local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
  redis.call('HSET', key, 'x:' .. ARGV[1], string.format('%d', until_ms))
end
redis.call('HINCRBY', key, ARGV[2], q)
return q
