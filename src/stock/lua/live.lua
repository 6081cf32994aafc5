-- Prepended to every script that changes a product's figures (reserve, settle, finish,
-- sync): stamps the product's hash with a new version and publishes its figures on
-- <prefix>events:live as "id avail sold version", so that every instance keeps them in
-- memory without asking. Messages of one product come from one node in the order its
-- scripts ran; the version (microseconds of the node's clock, and always above the last
-- one) lets an instance tell a stale read from a newer message, and stays above the old
-- versions when a lost key is rebuilt. Returns {avail, sold, version}, which the calling
-- script appends to its own reply (so the instance that called it knows at once).
local function publish_live(key)
  local prefix, id = string.match(key, '^(.*){p(%d+)}$')
  local figures = redis.call('HMGET', key, 'avail', 'sold', 'v')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local v = tonumber(figures[3] or '0')
  if now > v then
    v = now
  else
    v = v + 1
  end
  redis.call('HSET', key, 'v', string.format('%d', v))
  redis.call('PUBLISH', prefix .. 'events:live',
    string.format('%s %s %s %d', id, figures[1] or '0', figures[2] or '0', v))
  return {tonumber(figures[1] or '0'), tonumber(figures[2] or '0'), v}
end

-- `reply` with the published figures appended.
local function with_live(reply, live)
  for _, x in ipairs(live) do
    reply[#reply + 1] = x
  end
  return reply
end
