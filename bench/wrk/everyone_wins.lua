-- "Everyone wins" driven by wrk instead of k6: every buyer orders one unit of PRODUCT at
-- PRICE, and pays as soon as its order is placed. BUYERS (env) is a file of
-- "user_id<TAB>token" lines; thread k takes lines k, k+THREADS, … in turn. A thread sends
-- the payment of an order it has placed before any new order, so its connections keep
-- a steady mix of placements and payments (wrk cannot tie a response to its connection:
-- the thread keeps one queue of orders to pay, keyed by the user in the order's answer).
-- Each buyer buys again when its turn comes back, so the run lasts as long as wrk says.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local buyers, tokens = {}, {}
for line in io.lines(os.getenv("BUYERS")) do
  local user, token = line:match("^(%d+)\t(.+)$")
  table.insert(buyers, user)
  tokens[user] = token
end
local product = os.getenv("PRODUCT")
local price = os.getenv("PRICE")
local n = 0
local to_pay = {} -- orders to pay, oldest first: to_pay[head .. tail]
local head, tail = 1, 0

function init(args)
  n = id or 0
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
  return post("/v1/orders", user,
    '{"user_id":' .. user .. ',"product_id":' .. product .. ',"quantity":1,"price":' .. price .. '}')
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
