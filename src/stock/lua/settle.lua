-- The MySQL orders of holds ARGV[1], ARGV[4], ... (ARGV[2], ARGV[5], ... units each, of
-- users ARGV[3], ARGV[6], ...) have committed as PENDING. KEYS[1]: the product's hash.
-- An in-flight reservation becomes a held one. When Redis never saw the reservation (the
-- order took the MySQL path, or the key was rebuilt in between) the units are taken now,
-- and counted to the user under a per-customer limit, so Redis again agrees with MySQL;
-- unless the reservation has already ended (a tombstone of the hold in KEYS[2], or an
-- x:<hold> field of older versions: the order expired or was paid before this call). Without a counter there is nothing to settle: the next
-- reservation builds it from MySQL.
-- Returns {holds whose units were taken now, avail after} ({-1, 0} without a counter), and
-- the published figures when units were taken.
local key = KEYS[1]
if redis.call('HEXISTS', key, 'avail') == 0 then
  return {-1, 0}
end
local limited = redis.call('HEXISTS', key, 'limit') == 1
local taken = 0
for i = 1, #ARGV, 3 do
  local hold, q, user = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('ZREM', KEYS[2], hold) == 1 or redis.call('HDEL', key, 'x:' .. hold) == 1 then
    -- already ended
  elseif redis.call('HEXISTS', key, 'h:' .. hold) == 1 then
    -- already settled
  elseif redis.call('HDEL', key, 'r:' .. hold) == 1 then
    redis.call('HSET', key, 'h:' .. hold, q .. ':' .. user)
    redis.call('HINCRBY', key, 'nr', -1)
    redis.call('HINCRBY', key, 'nh', 1)
  else
    redis.call('HINCRBY', key, 'avail', -tonumber(q))
    redis.call('HSET', key, 'h:' .. hold, q .. ':' .. user)
    redis.call('HINCRBY', key, 'nh', 1)
    if limited then
      redis.call('HINCRBY', key, 'u:' .. user, tonumber(q))
    end
    taken = taken + 1
  end
end
local reply = {taken, tonumber(redis.call('HGET', key, 'avail'))}
if taken > 0 then
  return with_live(reply, publish_live(key))
end
return reply
