-- The MySQL order of hold ARGV[1] (ARGV[2] units) has committed as PENDING.
-- KEYS[1]: the product's hash.
-- An in-flight reservation becomes a held one. When Redis never saw the reservation (the
-- order took the MySQL path, or the key was rebuilt in between) the units are taken now,
-- so Redis again agrees with MySQL; unless the reservation has already ended (a tombstone
-- x:<hold>: the order expired or was paid before this call). Returns 0 no key, 1 settled,
-- 2 taken now, 3 already ended.
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return 0
end
if redis.call('HDEL', key, 'x:' .. ARGV[1]) == 1 then
  return 3
end
local held = 'h:' .. ARGV[1]
if redis.call('HEXISTS', key, held) == 1 then
  return 1
end
if redis.call('HDEL', key, 'r:' .. ARGV[1]) == 1 then
  redis.call('HSET', key, held, ARGV[2])
  return 1
end
redis.call('HINCRBY', key, 'avail', -tonumber(ARGV[2]))
redis.call('HSET', key, held, ARGV[2])
return 2
