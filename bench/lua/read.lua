-- read-by-id: GET <path prefix><id>, cycling over the preloaded pool of ids
-- BENCH_ID_FORMAT (a string.format pattern) with 1..BENCH_ID_COUNT.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local prefix = os.getenv("BENCH_PATH_PREFIX") or "/fhir/Patient/"
local fmt = os.getenv("BENCH_ID_FORMAT") or "bench-p-%05d"
local count = tonumber(os.getenv("BENCH_ID_COUNT") or "1000")
local paths = {}
for i = 1, count do paths[i] = prefix .. string.format(fmt, i) end
local headers = { ["Accept"] = "application/fhir+json" }
local n = 0

function setup(thread)
  -- spread the threads over the pool
  thread:set("start", math.random(count))
end

function init(args)
  n = tonumber(start) or 0
end

function request()
  n = n % count + 1
  return wrk.format("GET", paths[n], headers)
end
