-- search: GET each path of SEARCH_PATHS_FILE (one a line, already URL-encoded) in turn, so the
-- parameter values vary from request to request; each thread starts at its own place in the list.
-- "Prefer: handling=strict": a parameter the server cannot search on is a 400 (counted by wrk as
-- an error), never silently ignored (which would make the search look fast).
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local paths = {}
for line in io.lines(os.getenv("SEARCH_PATHS_FILE")) do
  if line ~= "" then paths[#paths + 1] = line end
end
assert(#paths > 0, "SEARCH_PATHS_FILE is empty")
local count = #paths
local headers = { ["Accept"] = "application/fhir+json", ["Prefer"] = "handling=strict" }
local n = 0

function setup(thread)
  thread:set("start", math.random(count))
end

function init(args)
  n = tonumber(start) or 0
end

function request()
  n = n % count + 1
  return wrk.format("GET", paths[n], headers)
end
