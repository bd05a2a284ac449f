-- Fan-out: N parallel edits at a fixed emulator latency. Reports wall time
-- divided by the latency (1.0 = all N took the time of one), for imgedit and
-- for the official openai npm SDK doing the same with Promise.all.
-- Usage: lua5.4 bench/fanout.lua [LATENCY_S]
local imgedit = require "imgedit"
local core = require "imgedit.core"
local cjson = require "cjson"

local latency = tonumber(arg[1] or os.getenv("BENCH_LATENCY") or "1")
local emu = assert(require("imgedit.emulator").start { latency = latency })
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p " .. dir)
local image = dir .. "/p.png"
local px = string.rep("\40\120\200\255", 32 * 32)
assert(core.write_atomic(image, core.encode(px, 32, 32, "png")))

local function imgedit_run(n)
  local c = imgedit.new { base_url = emu.url, api_key = emu.key, model = "gpt-image-2-all", max_concurrency = n }
  local reqs = {}
  for i = 1, n do
    reqs[i] = { prompt = "variation " .. i, images = { image }, size = "64x64", response_format = "b64_json" }
  end
  local t0 = core.now()
  local res = c:map(reqs)
  local wall = core.now() - t0
  for _, r in ipairs(res) do assert(r.bytes, tostring(r)) end
  return wall
end

local have_node = os.execute("test -d bench/node_modules/openai && command -v node >/dev/null")
local function sdk_run(n)
  if not have_node then return nil end
  local p = io.popen(string.format("node bench/fanout.mjs '%s' '%s' %d '%s' 2>&1", emu.url, emu.key, n, image))
  local out = p:read("a")
  p:close()
  local ok, t = pcall(cjson.decode, out:match("{.*}") or "")
  if not ok or type(t) ~= "table" then
    io.stderr:write("openai SDK run failed: ", out, "\n")
    return nil
  end
  return t.wall
end

imgedit_run(1) -- warm up: connection pool, emulator state
print(string.format("fan-out: N parallel edits, emulator latency %.2fs (wall / latency; 1.00 is ideal)", latency))
print(string.format("%6s | %14s | %14s", "N", "imgedit", "openai-node"))
print(string.rep("-", 41))
for _, n in ipairs { 1, 8, 32 } do
  emu:clear()
  local a = imgedit_run(n)
  local peak = emu:stats().max_in_flight
  emu:clear()
  local b = sdk_run(n)
  print(string.format("%6d | %9.2f (%2d) | %14s", n, a / latency, peak, b and string.format("%.2f", b / latency) or "n/a"))
end
print("(in brackets: the most requests the emulator saw at once)")

-- The cost of poll(0) in a frame loop with eight transfers in flight.
do
  local c = imgedit.new { base_url = emu.url, api_key = emu.key, model = "gpt-image-2-all" }
  local jobs = {}
  for i = 1, 8 do
    jobs[i] = c:submit("edit", { prompt = "p" .. i, images = { image }, size = "64x64", response_format = "b64_json" })
  end
  local times = {}
  while c:poll(0) > 0 do
    local t = core.now()
    c:poll(0)
    times[#times + 1] = core.now() - t
  end
  table.sort(times)
  print(string.format("poll(0) with 8 transfers in flight: median %.1f us, 99th percentile %.1f us, max %.1f us (%d calls)",
    times[#times // 2] * 1e6, times[math.ceil(#times * 0.99)] * 1e6, times[#times] * 1e6, #times))
end
emu:stop()
os.execute("rm -rf " .. dir)
