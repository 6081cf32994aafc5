-- Makes one product's hash agree with MySQL; the caller holds the product row's shared
-- lock, so no order of this product commits meanwhile.
-- KEYS[1]: the product's hash. ARGV[1]: MySQL stock - reserved; ARGV[2]: MySQL sold;
-- ARGV[3]: the per-customer limit ('' for none); ARGV[4]: n, then n tokens of orders known
-- to have ended in MySQL (their release to Redis failed); then m, then m triples token,
-- quantity, user of the product's PENDING orders — or m = -1 when there are many: they
-- are then in KEYS[2], a staging hash token -> "quantity:user" that this call consumes;
-- then user, units pairs of its PAID orders (only under a limit).
-- Held reservations are replaced by MySQL's. In-flight ones (reserved here, order not
-- committed) stay while their deadline lasts and keep their units out of avail; past it
-- their order never made it and they are dropped, like tombstones (x:) past theirs. An
-- in-flight reservation of an ended order is dropped at once: MySQL already counts it.
-- Under a limit each user's count is rebuilt: PAID + PENDING + still in flight.
-- Figures that changed (or a key built anew) are published.
-- Returns {avail before or -1, avail now}, and the published figures when they changed.
local key = KEYS[1]
local limit = ARGV[3]
local ended = {}
local n = tonumber(ARGV[4])
for i = 5, 4 + n do
  ended[ARGV[i]] = true
end
local at = 5 + n
local m = tonumber(ARGV[at])
local pending = {}
if m < 0 then
  m = 0
  local staged = redis.call('HGETALL', KEYS[2])
  for i = 1, #staged, 2 do
    local q, user = string.match(staged[i + 1], '^(%d+):(.*)$')
    pending[staged[i]] = {q, user}
  end
  redis.call('DEL', KEYS[2])
end
for i = at + 1, at + 3 * m, 3 do
  pending[ARGV[i]] = {ARGV[i + 1], ARGV[i + 2]}
end
local counts = {}
local function count(user, q)
  if user and user ~= '' then
    counts[user] = (counts[user] or 0) + tonumber(q)
  end
end
for i = at + 1 + 3 * m, #ARGV, 2 do
  count(ARGV[i], ARGV[i + 1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = tonumber(redis.call('HGET', key, 'avail') or '-1')
local sold_before = redis.call('HGET', key, 'sold')
local inflight, nr, nh = 0, 0, 0
-- The users' counts the hash has (u:<user>), to rewrite only those that change, and the
-- held reservations already right.
local had, kept = {}, {}
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  local kind, token = string.sub(field, 1, 2), string.sub(field, 3)
  if kind == 'r:' then
    local q, deadline, user = string.match(value, '^(%d+):(%d+):?(.*)$')
    if pending[token] or ended[token] or not q or tonumber(deadline) <= now then
      redis.call('HDEL', key, field)
    else
      inflight = inflight + tonumber(q)
      nr = nr + 1
      count(user, q)
    end
  elseif kind == 'h:' then
    local order = pending[token]
    if not order then
      redis.call('HDEL', key, field)
    elseif value == order[1] .. ':' .. order[2] then
      -- Already right: counted, not written again (a sync is O(changes) in writes).
      count(order[2], order[1])
      kept[token] = true
      nh = nh + 1
    end
  elseif kind == 'x:' and tonumber(value) <= now then
    redis.call('HDEL', key, field)
  elseif kind == 'u:' then
    had[token] = value
  end
end
for token, order in pairs(pending) do
  if not kept[token] then
    redis.call('HSET', key, 'h:' .. token, order[1] .. ':' .. order[2])
    count(order[2], order[1])
    nh = nh + 1
  end
end
if limit ~= '' then
  redis.call('HSET', key, 'limit', limit)
  for user, units in pairs(counts) do
    if units > 0 and had[user] ~= tostring(units) then
      redis.call('HSET', key, 'u:' .. user, units)
    end
  end
else
  redis.call('HDEL', key, 'limit')
end
for user, _ in pairs(had) do
  if limit == '' or (counts[user] or 0) <= 0 then
    redis.call('HDEL', key, 'u:' .. user)
  end
end
local avail = tonumber(ARGV[1]) - inflight
redis.call('HSET', key, 'avail', avail, 'sold', ARGV[2], 'nr', nr, 'nh', nh)
if before ~= avail or sold_before ~= ARGV[2] then
  return with_live({before, avail}, publish_live(key))
end
return {before, avail}
