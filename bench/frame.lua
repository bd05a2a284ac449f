-- A frame loop's share of the work (issue 19). Prints JSON for bench/run.lua.
--
-- A. poll(0) while 256 uploads of 0.5 MB are in flight, against an
--    emulator in another process (its work stays off this one's cores'
--    accounting): every call's duration, from the first upload until all
--    were sent. The same loop with nothing in flight is the machine's floor.
-- B. A 1024x1024 photo-like PNG answered (about 1.5 MB): the time from its
--    last byte to its pixels ready in Lua, and the part of that the main
--    thread spent (poll calls, and the decode when it is done there),
--    with decode = "rgba" against decoding on the caller's thread.
local imgedit = require "imgedit"
local core = require "imgedit.core"
local cjson = require "cjson"
local data = require "bench.data"

local thread_cpu = core.thread_cpu or function() return 0 end -- older builds: wall time only
local idle = core.multi() -- perform(t) on an empty multi sleeps t: a frame's vsync
local function frame_sleep() idle:perform(0.004) end

local sh = data.sh

local function percentile(t, q)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  return s[math.max(1, math.ceil(#s * q))]
end

-- ---- A ----
assert(core.mkdir_p(data.dir))
local log = data.dir .. "/frame-emu.txt"
-- An emulator in another process, at the lowest priority, as a service on
-- another machine would be; a fresh one per round, since each round leaves
-- its uploads' connections waiting out the latency there.
local function emulator()
  local pid = sh("nice -n 19 lua5.4 bin/imgedit emulate --latency 30 > " .. log .. " 2>&1 & echo $!"):match("%d+")
  for _ = 1, 100 do
    local s = sh("cat " .. log)
    local url, key = s:match("url (%S+)"), s:match("key (%S+)")
    if url then return url, key, pid end
    sh("sleep 0.05")
  end
  error("the emulator did not start")
end

local side = 362 -- 362 * 362 * 4 bytes of noise: a 0.5 MB PNG
local f = assert(io.open("/dev/urandom", "rb"))
local upload = core.encode(f:read(side * side * 4), side, side, "png")
f:close()

local N = 256
-- with_progress: every job has an on_progress callback (256 Lua calls a
-- progress_interval); else the uploads are watched between frames.
local function polls_while_uploading(with_progress)
  local url, key, pid = emulator()
  local c = imgedit.new { base_url = url, api_key = key, max_concurrency = N, max_retries = 0 }
  local sent = 0
  local jobs = {}
  for i = 1, N do
    jobs[i] = c:submit("edit", { prompt = "p" .. i, images = { { bytes = upload, filename = i .. ".png" } },
      on_progress = with_progress and function(p) if p.phase == "wait" then sent = sent + 1 end end or nil })
  end
  local times, t_end = {}, core.now() + 60
  while sent < N and core.now() < t_end do
    local t, cpu = core.now(), thread_cpu()
    c:poll(0)
    times[#times + 1] = { core.now() - t, thread_cpu() - cpu }
    frame_sleep()
    if not with_progress then
      sent = 0
      for _, j in ipairs(jobs) do
        local up, total = 1, 1
        if j.transfer then up, total = j.transfer:progress() end
        if total > 0 and up >= total then sent = sent + 1 end
      end
    end
  end
  local failed = 0
  for _, j in ipairs(jobs) do if j.state == "failed" then failed = failed + 1 end end
  assert(failed == 0, failed .. " uploads failed")
  c:close()
  sh("kill " .. pid)
  return times, sent
end

local function polls_idle(n)
  local c = imgedit.new { base_url = "http://127.0.0.1:9", api_key = "k" }
  local times = {}
  for i = 1, n do
    local t = core.now()
    c:poll(0)
    times[i] = core.now() - t
    frame_sleep()
  end
  c:close()
  return times
end

-- three rounds each, for enough calls: the uploads are over in a few dozen frames
local busy, sent, plain, busy_cpu, plain_cpu = {}, 0, {}, {}, {}
for _ = 1, 3 do
  collectgarbage() -- the last round's clients and transfers, not inside a poll measured
  local times, n = polls_while_uploading(false)
  for _, t in ipairs(times) do busy[#busy + 1], busy_cpu[#busy_cpu + 1] = t[1], t[2] end
  sent = sent + n
  collectgarbage()
  times = polls_while_uploading(true)
  for _, t in ipairs(times) do plain[#plain + 1], plain_cpu[#plain_cpu + 1] = t[1], t[2] end
end
collectgarbage()
local floor = polls_idle(#busy)
if os.getenv("FRAME_ONLY_POLL") then -- the first half alone: what an older build does
  print(cjson.encode { polls = #busy, poll_max_ms = percentile(busy, 1) * 1000, poll_p99_ms = percentile(busy, 0.99) * 1000,
    poll_median_ms = percentile(busy, 0.5) * 1000, floor_max_ms = percentile(floor, 1) * 1000,
    progress_max_ms = percentile(plain, 1) * 1000, progress_median_ms = percentile(plain, 0.5) * 1000,
    cpu_max_ms = percentile(busy_cpu, 1) * 1000, progress_cpu_max_ms = percentile(plain_cpu, 1) * 1000 })
  os.exit(0)
end

-- ---- B ----
-- Smooth blobs and a gradient, with a little grain: what a photo's PNG costs to decode.
local function photo()
  local f2 = assert(io.open("/dev/urandom", "rb"))
  local blobs = core.resize(f2:read(64 * 64 * 4), 64, 64, 1024, 1024)
  local grain = f2:read(1024 * 1024)
  f2:close()
  local out, i = {}, 0
  for y = 0, 1023 do
    local row = {}
    for x = 0, 1023 do
      i = i + 1
      local g = grain:byte(i) % 24
      local b = blobs:byte(i * 4 - 3)
      row[x + 1] = string.char((b + g) % 256, (x // 4 + g) % 256, (y // 4 + b // 2) % 256, 255)
    end
    out[y + 1] = table.concat(row)
  end
  return core.encode(table.concat(out), 1024, 1024, "png")
end

local png = photo()
local body = cjson.encode { created = 1, data = { { b64_json = core.b64encode(png) } } }
local emu = assert(require("imgedit.emulator").start {})

-- One answer in a frame loop: last byte -> pixels ready, and the main
-- thread's time in that window.
local function one(decode)
  emu:inject { status = 200, body = body }
  local c = imgedit.new { base_url = emu.url, api_key = emu.key, provider = "apiyi", max_retries = 0 }
  local job = c:submit("generate", { prompt = "x", size = "1024x1024", decode = decode and "rgba" or nil })
  local calls, ready = {}, nil
  while true do
    local t = core.now()
    c:poll(0)
    local t2 = core.now()
    calls[#calls + 1] = { t, t2 }
    if job:done() then
      local img = assert(job:result())
      if not decode then
        assert(img:rgba()) -- the frame decodes it itself
        t2 = core.now()
        calls[#calls] = { t, t2 }
      end
      assert(#img.pixels == 1024 * 1024 * 4)
      ready = t2
      break
    end
    frame_sleep()
  end
  local last = assert(job._last_byte)
  local main, longest = 0, 0
  for _, span in ipairs(calls) do
    local a, b = math.max(span[1], last), span[2]
    if b > a then main = main + (b - a) end
    longest = math.max(longest, span[2] - span[1])
  end
  c:close()
  return { ready_ms = (ready - last) * 1000, main_ms = main * 1000, longest_ms = longest * 1000 }
end

-- interleaved, so that a noisy moment hits both alike
local after, before = {}, {}
for round = 1, 5 do
  after[round] = one(true)
  before[round] = one(false)
end
local function med(list, k)
  local v = {}
  for i, x in ipairs(list) do v[i] = x[k] end
  return percentile(v, 0.5)
end
emu:stop()
local decode_ms = (function()
  local t = core.now()
  for _ = 1, 5 do core.decode(png) end
  return (core.now() - t) / 5 * 1000
end)()

print(cjson.encode {
  uploads = N, upload_bytes = #upload, sent = sent / 3, polls = #busy,
  poll_max_ms = percentile(busy, 1) * 1000, poll_p99_ms = percentile(busy, 0.99) * 1000,
  poll_median_ms = percentile(busy, 0.5) * 1000,
  progress_max_ms = percentile(plain, 1) * 1000, progress_median_ms = percentile(plain, 0.5) * 1000,
  cpu_max_ms = percentile(busy_cpu, 1) * 1000, cpu_p99_ms = percentile(busy_cpu, 0.99) * 1000,
  progress_cpu_max_ms = percentile(plain_cpu, 1) * 1000,
  floor_max_ms = percentile(floor, 1) * 1000, floor_p99_ms = percentile(floor, 0.99) * 1000,
  png_bytes = #png, decode_ms = decode_ms,
  after = { ready_ms = med(after, "ready_ms"), main_ms = med(after, "main_ms"), longest_ms = med(after, "longest_ms") },
  before = { ready_ms = med(before, "ready_ms"), main_ms = med(before, "main_ms"),
    longest_ms = med(before, "longest_ms") },
})
