-- Reserve ARGV[2] units of one product for the hold token ARGV[1], ordered by user ARGV[4].
-- KEYS[1]: the product's hash {avail, sold, limit, u:<user> = units the user holds,
-- r:<token> = "q:deadline_ms:user" (in flight), h:<token> = "q:user" (PENDING), and nr / nh:
-- how many r: and h: fields there are (kept by every script, so that the reconciler can
-- tell a hash that agrees with MySQL without reading it whole)}.
-- With a per-customer limit (the field 'limit', written from MySQL by sync.lua) the user's
-- units (PENDING, PAID and in flight) are checked and counted in this same call, so two
-- orders of one user can never both pass it.
-- Returns {1, avail_after, <published: avail, sold, version>} reserved, {0, avail, nr}
-- refused for stock (nr: reservations in flight, whose units may still come back), {2,
-- held, limit} refused by the limit, {-1, 0} key missing (rebuild).
local key = KEYS[1]
local avail = redis.call('HGET', key, 'avail')
if not avail then
  return {-1, 0}
end
avail = tonumber(avail)
local q = tonumber(ARGV[2])
if avail < q then
  return {0, avail, tonumber(redis.call('HGET', key, 'nr') or '0')}
end
local user = ARGV[4]
local limit = redis.call('HGET', key, 'limit')
if limit then
  limit = tonumber(limit)
  local held = tonumber(redis.call('HGET', key, 'u:' .. user) or '0')
  if held + q > limit then
    return {2, held, limit}
  end
  redis.call('HINCRBY', key, 'u:' .. user, q)
end
-- An in-flight reservation: the MySQL order must commit before its deadline (ARGV[3] ms
-- from now) or the reconciler gives the units back.
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('HINCRBY', key, 'avail', -q)
redis.call('HSET', key, 'r:' .. ARGV[1], string.format('%d:%d:%s', q, deadline, user))
redis.call('HINCRBY', key, 'nr', 1)
return with_live({1, avail - q}, publish_live(key))
