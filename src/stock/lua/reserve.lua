-- Reserve ARGV[2] units of one product for the hold token ARGV[1].
-- KEYS[1]: the product's hash {avail, sold, r:<token> = "q:deadline_ms", h:<token> = q}.
-- Returns {1, avail_after} reserved, {0, avail} refused, {-1, 0} key missing (rebuild).
local key = KEYS[1]
local avail = redis.call('HGET', key, 'avail')
if not avail then
  return {-1, 0}
end
avail = tonumber(avail)
local q = tonumber(ARGV[2])
if avail < q then
  return {0, avail}
end
-- An in-flight reservation: the MySQL order must commit before its deadline (ARGV[3] ms
-- from now) or the reconciler gives the units back.
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('HINCRBY', key, 'avail', -q)
redis.call('HSET', key, 'r:' .. ARGV[1], string.format('%d:%d', q, deadline))
return {1, avail - q}
