-- The batch journal's cost of durability: 2,000 "sent" lines, each put on
-- the disk (fdatasync, as a batch does before each request), against
-- written only (the kernel has them; a power cut may not). Through the
-- journal's own file (core.append). Prints JSON for bench/run.lua.
local core = require "imgedit.core"
local cjson = require "cjson"

local N = 2000
local path = os.tmpname()
local function run(durable)
  os.remove(path)
  local f = assert(core.append(path))
  local t0 = core.now()
  for i = 1, N do
    f:write(cjson.encode { event = "sent", name = "job-" .. i, key = string.rep("ab", 32), at = "2026-12-05T12:00:00Z" },
      "\n")
    if durable then assert(f:sync()) end
  end
  local s = core.now() - t0
  f:close()
  return s
end
local synced, flushed = {}, {}
for _ = 1, 3 do -- interleaved, the median of each
  synced[#synced + 1], flushed[#flushed + 1] = run(true), run(false)
end
os.remove(path)
table.sort(synced)
table.sort(flushed)
print(cjson.encode { n = N, synced_s = synced[2], flushed_s = flushed[2] })
