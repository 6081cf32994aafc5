-- GET of PATH with {n} replaced by a random number in 1..MAX (env), e.g.
-- PATH=/v1/products?page={n} MAX=5000.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local path = os.getenv("PATH_TEMPLATE") or "/healthz"
local max = tonumber(os.getenv("MAX") or "1")
function init(args)
  math.randomseed(os.time() + (id or 0) * 7919)
end

function request()
  local p = path:gsub("{n}", tostring(math.random(1, max)))
  return wrk.format("GET", p)
end
