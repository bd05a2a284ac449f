-- What handing a decoded picture over costs the caller's thread (issue 31):
-- the CPU of the poll(0) that takes a 1536x1024 (and a 2048x2048) answer in,
-- with its pixels as img.buffer (no copy), beside the plain-string path
-- (the same poll, then img.pixels: what poll made before the buffer, into
-- fresh memory, since the earlier pictures' strings are still held); and
-- for an edit with a mask and preserve = true, the caller's CPU for the
-- composite: the poll that takes it in (made on a decoder thread) beside
-- mask.preserve run on the caller's thread (where it ran before). Median of
-- 7 of each, in milliseconds of the main thread's CPU. Prints JSON.
-- Usage: lua5.4 bench/handover.lua [IMAGE_1536x1024.png]
local imgedit = require "imgedit"
local core = require "imgedit.core"
local cjson = require "cjson"

local data = require "bench.data"
local base = arg[1] or data.make().answer
local emu = assert(require("imgedit.emulator").start {})
local c = imgedit.new { base_url = emu.url, api_key = emu.key, model = "gpt-image-2", decode = "rgba" }
local RUNS = 7

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

-- The job once its answer waits for poll, decoded: the descriptor is set
-- when a transfer is handed over, after its decode (cqueues waits on it).
local cqueues = require "cqueues"
local function ready(job)
  local fd = assert(c:fd())
  local q = cqueues.new()
  q:wrap(function() cqueues.poll({ pollfd = function() return fd end, events = function() return "r" end }, 60) end)
  assert(q:loop())
  return job
end

-- The caller's CPU, ms, of the poll that takes job in, and of what `after`
-- does with the Image.
local function take(job, after)
  local cpu = core.thread_cpu()
  while not job:done() do c:poll(0) end
  local img = assert(job:result())
  if after then after(img) end
  return (core.thread_cpu() - cpu) * 1000
end

local out = {}
for _, size in ipairs { "1536x1024", "2048x2048" } do
  local r, kept = { buffer = {}, string = {} }, {}
  for i = 1, RUNS do
    for _, how in ipairs { "buffer", "string" } do
      local job = ready(c:submit("generate", { prompt = size .. " " .. i .. how, size = size, quality = "low" }))
      -- the strings are kept, as a game keeps what it shows until the
      -- collector runs: each new one is fresh memory, page faults included
      r[how][i] = take(job, how == "string" and function(img) kept[#kept + 1] = img.pixels end or nil)
      emu:clear()
    end
  end
  out[size] = { buffer_ms = median(r.buffer), string_ms = median(r.string) }
  kept = nil
  collectgarbage("collect")
end

-- preserve: the composite on a decoder thread, against the same work here
local mask = assert(imgedit.mask.rect { width = 1536, height = 1024, x = 384, y = 256, w = 768, h = 512 })
local mask_path = data.dir .. "/handover-mask.png"
assert(mask:save(mask_path))
local after, before = {}, {}
for i = 1, RUNS do
  collectgarbage("collect")
  local job = ready(c:submit("edit", { prompt = "door " .. i, images = { base }, mask = mask_path,
    size = "1536x1024", preserve = true }))
  after[i] = take(job, function(img) assert(img.preserved) end)
  local img = assert(job:result())
  local cpu = core.thread_cpu()
  assert(imgedit.mask.preserve(img.raw, base, mask_path, { pixels = true }))
  before[i] = (core.thread_cpu() - cpu) * 1000
  emu:clear()
end
os.remove(mask_path)
out.preserve = { after_ms = median(after), before_ms = median(before) }
c:close()
emu:stop()
print(cjson.encode(out))
