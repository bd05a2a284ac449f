-- Pipeline re-run: a five-step pipeline run twice against the emulator (0.5 s
-- a request); the second run should make no request at all.
local imgedit = require "imgedit"
local core = require "imgedit.core"
local cjson = require "cjson"

local emu = assert(require("imgedit.emulator").start { latency = 0.5 })
local dir = os.tmpname()
os.remove(dir)
local px = string.rep("\90\140\200\255", 64 * 64)
local seed = { bytes = core.encode(px, 64, 64, "png"), filename = "seed.png" }

local function run()
  local c = imgedit.new { base_url = emu.url, api_key = emu.key }
  local p = imgedit.pipeline { client = c, dir = dir .. "/out", cache = dir .. "/cache", quiet = true }
  local t0 = core.now()
  local img = assert(p:edit("s1", { prompt = "step 1", images = { seed }, size = "1024x1024" }))
  for i = 2, 5 do img = assert(p:edit("s" .. i, { prompt = "step " .. i, images = { img } })) end
  return core.now() - t0, p:report { quiet = true }.requests
end

local first, r1 = run()
emu:clear()
local second, r2 = run()
local seen = #emu:requests()
emu:stop()
os.execute("rm -rf '" .. dir .. "'")
print(cjson.encode { first = first, first_requests = r1, second = second, second_requests = r2, emulator_saw = seen })
