-- What one client:poll(0) costs a frame loop with many transfers in flight:
-- calls into imgedit.core (counted by a call hook, so exact) and wall time.
-- Prints JSON for bench/run.lua.
local imgedit = require "imgedit"
local core = require "imgedit.core"
local cjson = require "cjson"
local data = require "bench.data"

local N, POLLS = 64, 200
local emu = assert(require("imgedit.emulator").start { latency = 2.0 })
local c = imgedit.new { base_url = emu.url, api_key = emu.key, model = "gpt-image-2-all", max_concurrency = N }
for i = 1, N do c:submit("generate", { prompt = "p" .. i, size = "64x64", response_format = "b64_json" }) end
c:poll(0.3) -- every transfer started; none can finish before the latency

-- The core's functions: the module's, and the methods of its multi and transfer objects.
local mine = {}
local function add(t) for _, f in pairs(t) do if type(f) == "function" then mine[f] = true end end end
add(core)
add(getmetatable(c._multi).__index)
add(getmetatable(c._running[1].transfer).__index)

local calls = 0
debug.sethook(function()
  if mine[debug.getinfo(2, "f").func] then calls = calls + 1 end
end, "c")
for _ = 1, POLLS do c:poll(0) end
debug.sethook()

local median = data.poll_median(c, POLLS)
assert(c:poll(0) == N, "a transfer finished during the measurement")
c:close()
emu:stop()
print(cjson.encode { n = N, core_calls = calls / POLLS, median_us = median * 1e6 })
