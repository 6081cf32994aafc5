-- Units sold per product over the window's day keys, best first.
-- KEYS[1]: scratch key; KEYS[2..]: one sorted set per UTC day. ARGV[1]: N.
-- Returns member, score pairs: the top N and every product tied with the N-th, so the
-- caller can break ties by product id (Redis would order ties by member text).
local n = tonumber(ARGV[1])
redis.call('ZUNIONSTORE', KEYS[1], #KEYS - 1, unpack(KEYS, 2))
local top = redis.call('ZREVRANGE', KEYS[1], 0, n - 1, 'WITHSCORES')
if #top == 2 * n then
  top = redis.call('ZRANGEBYSCORE', KEYS[1], top[#top], '+inf', 'WITHSCORES')
end
redis.call('DEL', KEYS[1])
return top
