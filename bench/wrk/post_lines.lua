-- POSTs built from the lines of LINES (env): "path<TAB>token<TAB>json body". Each request
-- takes the next line (threads interleave), so every line is used once before any repeats
-- (a payment per order, a charge per user in turn).
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local lines = {}
for line in io.lines(os.getenv("LINES")) do
  local path, token, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
  table.insert(lines, { path = path, token = token, body = body })
end
local n = 0

function init(args)
  n = id or 0
end

function request()
  local threads_count = tonumber(os.getenv("THREADS") or "2")
  local line = lines[(n % #lines) + 1]
  n = n + threads_count
  return wrk.format("POST", line.path, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. line.token,
  }, line.body)
end
