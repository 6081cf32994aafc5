-- Carts driven by wrk: every buyer checks out LINES (3) products drawn at random from
-- PRODUCTS (a comma-separated list of hot products; the lines in random order, so carts
-- overlap in every order), then pays as soon as the order is placed (the same queue of
-- orders to pay as everyone_wins.lua). BUYERS (env) is a file of "user_id<TAB>token".
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local buyers, tokens = {}, {}
for line in io.lines(os.getenv("BUYERS")) do
  local user, token = line:match("^(%d+)\t(.+)$")
  table.insert(buyers, user)
  tokens[user] = token
end
local products = {}
for p in os.getenv("PRODUCTS"):gmatch("%d+") do table.insert(products, p) end
local lines = tonumber(os.getenv("LINES") or "3")
local price = os.getenv("PRICE")
local n = 0
local to_pay = {}
local head, tail = 1, 0

function init(args)
  n = id or 0
  math.randomseed(os.time() + n)
end

local function post(path, user, body)
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[user],
  }, body)
end

function request()
  local due = to_pay[head]
  if due then
    to_pay[head] = nil
    head = head + 1
    return post("/v1/payments", due.user, '{"order_id":' .. due.order .. '}')
  end
  local threads_count = tonumber(os.getenv("THREADS") or "2")
  local user = buyers[(n % #buyers) + 1]
  n = n + threads_count
  -- LINES distinct products, in random order (a partial Fisher-Yates shuffle).
  local pool = {}
  for i, p in ipairs(products) do pool[i] = p end
  local items = {}
  for i = 1, lines do
    local j = math.random(i, #pool)
    pool[i], pool[j] = pool[j], pool[i]
    items[i] = '{"product_id":' .. pool[i] .. ',"quantity":1,"price":' .. price .. '}'
  end
  return post("/v1/orders", user, '{"user_id":' .. user .. ',"items":[' .. table.concat(items, ",") .. ']}')
end

function response(status, headers, body)
  if status == 201 and body:find('"PENDING"', 1, true) then
    local order = body:match('"order_id":(%d+)')
    local user = body:match('"user_id":(%d+)')
    if order and user then
      tail = tail + 1
      to_pay[tail] = { order = order, user = user }
    end
  end
end
