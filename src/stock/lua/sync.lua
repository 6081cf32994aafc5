-- Makes one product's hash agree with MySQL; the caller holds the product row's shared
-- lock, so no order of this product commits meanwhile.
-- KEYS[1]: the product's hash. ARGV[1]: MySQL stock - reserved; ARGV[2]: MySQL sold;
-- ARGV[3]: n, then n tokens of orders known to have ended in MySQL (their release to Redis
-- failed); then token, quantity pairs of the product's PENDING orders.
-- Held reservations are replaced by MySQL's. In-flight ones (reserved here, order not
-- committed) stay while their deadline lasts and keep their units out of avail; past it
-- their order never made it and they are dropped, like tombstones (x:) past theirs. An
-- in-flight reservation of an ended order is dropped at once: MySQL already counts it.
-- Returns {avail before or -1, avail now}.
local key = KEYS[1]
local ended = {}
local n = tonumber(ARGV[3])
for i = 4, 3 + n do
  ended[ARGV[i]] = true
end
local pending = {}
for i = 4 + n, #ARGV, 2 do
  pending[ARGV[i]] = ARGV[i + 1]
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = tonumber(redis.call('HGET', key, 'avail') or '-1')
local inflight = 0
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  local kind, token = string.sub(field, 1, 2), string.sub(field, 3)
  if kind == 'r:' then
    local q, deadline = string.match(value, '^(%d+):(%d+)$')
    if pending[token] or ended[token] or not q or tonumber(deadline) <= now then
      redis.call('HDEL', key, field)
    else
      inflight = inflight + tonumber(q)
    end
  elseif kind == 'h:' and not pending[token] then
    redis.call('HDEL', key, field)
  elseif kind == 'x:' and tonumber(value) <= now then
    redis.call('HDEL', key, field)
  end
end
for token, q in pairs(pending) do
  redis.call('HSET', key, 'h:' .. token, q)
end
local avail = tonumber(ARGV[1]) - inflight
redis.call('HSET', key, 'avail', avail, 'sold', ARGV[2])
return {before, avail}
