-- A batch of 2,000 small edits against the emulator's rate limit: wall time
-- against the least the limit allows (N / limit), the 429s met, and the
-- batch process's RSS after 200 and after 2,000 jobs (the emulator runs in
-- this process, the batch in a child, so that its log is not counted).
-- Prints JSON for bench/run.lua.
local imgedit = require "imgedit"
local core = require "imgedit.core"
local cjson = require "cjson"

local N = tonumber(arg[2]) or 2000
local LIMIT = tonumber(arg[3]) or 100

local function rss()
  collectgarbage()
  collectgarbage()
  for l in io.lines("/proc/self/status") do
    local kb = l:match("^VmRSS:%s*(%d+)")
    if kb then return tonumber(kb) / 1024 end
  end
end

if arg[1] == "child" then
  local dir = os.tmpname()
  os.remove(dir)
  local c = imgedit.new { base_url = os.getenv("BENCH_URL"), api_key = os.getenv("BENCH_KEY"), provider = "apiyi",
    model = "gpt-image-2-all", max_concurrency = 8 }
  local jobs = {}
  for i = 1, N do jobs[i] = { name = "b" .. i, prompt = "batch " .. i } end
  local marks = {}
  local t0 = core.now()
  local r = assert(imgedit.batch { client = c, jobs = jobs, dir = dir,
    defaults = { size = "64x64", response_format = "b64_json" },
    on_tick = function(n)
      local ended = n.done + n.failed
      if ended >= 200 and not marks[200] then marks[200] = rss() end
      if ended >= N and not marks[N] then marks[N] = rss() end
    end })
  local wall = core.now() - t0
  os.execute("rm -rf '" .. dir .. "'")
  print(cjson.encode { wall = wall, done = r.totals.done, requests = r.this_run.requests, rss200 = marks[200],
    rss_n = marks[N], lowest = r.this_run.concurrency.lowest })
  return
end

local emu = assert(require("imgedit.emulator").start { rate_limit = LIMIT })
local p = io.popen(string.format("BENCH_URL=%s BENCH_KEY=%s lua5.4 bench/batch.lua child %d %d", emu.url, emu.key, N,
  LIMIT))
local out = cjson.decode(p:read("*a"))
p:close()
local refused = 0
for _, q in ipairs(emu:requests()) do if q.status == 429 then refused = refused + 1 end end
emu:stop()
out.n, out.limit, out.ideal, out.refused = N, LIMIT, N / LIMIT, refused
print(cjson.encode(out))
