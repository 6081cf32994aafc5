-- Shared by every wrk script of the benchmark: a thread id per thread, and a report of
-- throughput and latency percentiles as one JSON line (parsed by bench.py).
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local s = summary
  local non2xx = s.errors.status or 0
  local errors = s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "non2xx": %d, "socket_errors": %d}\n',
    s.requests, s.duration / 1e6, s.requests / (s.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    non2xx, errors))
end
