-- What the scheduler costs with many jobs waiting: submitting N jobs, and
-- one poll(0) while they wait behind 64 slots (a batch's shape). The
-- emulator answers slowly, so nothing finishes during the measurement.
-- Prints JSON for bench/run.lua.
local imgedit = require "imgedit"
local core = require "imgedit.core"
local cjson = require "cjson"
local data = require "bench.data"

local function measure(n)
  local emu = assert(require("imgedit.emulator").start { latency = 30 })
  local c = imgedit.new { base_url = emu.url, api_key = emu.key, provider = "apiyi", model = "gpt-image-2-all",
    max_concurrency = 64 }
  local t0 = core.now()
  for i = 1, n do c:submit("generate", { prompt = "p" .. i, size = "64x64", response_format = "b64_json" }) end
  local submit = core.now() - t0
  c:poll(0.2)
  local median = data.poll_median(c, 101)
  assert(c:poll(0) == n, "a job finished during the measurement")
  c:close()
  emu:stop()
  return { n = n, submit_s = submit, poll_median_ms = median * 1000 }
end

print(cjson.encode { small = measure(2000), large = measure(16000) })
