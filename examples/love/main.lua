-- A LÖVE 11 game that submits an edit to the emulator (or the service, with
-- IMGEDIT_API_KEY) and keeps drawing while it runs: the partial images
-- sharpening as they stream in, a progress indicator that keeps moving
-- while the model works, then the result. The pictures come decoded
-- (decode = "rgba"): imgedit decodes them on a thread of its own and hands
-- them over as a buffer, without a copy; a frame only copies the buffer
-- into a texture. It prints how many frames
-- it drew while waiting and its longest frame, then quits.
-- Run: LUA_CPATH='build/luajit/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;;' love examples/love
local imgedit = require "imgedit"
local core = require "imgedit.core"
local ffi = require "ffi" -- LÖVE's LuaJIT: copy pixels without a new allocation

local emu, client, job, input
local phase, sent, partials = "upload", 0, 0
local picture, canvas, result, waited_since
local pending -- a picture taken in by the last poll, uploaded in the next frame
local frames, seen, longest, t0, done_at = 0, 0, 0, 0, nil
-- The main thread's CPU per frame: what a frame costs, whatever else the
-- machine runs (the wall time also holds other programs' turns).
local thread_cpu, cpu_at, longest_cpu = core.thread_cpu, nil, 0
local shown = 0 -- pictures uploaded to the texture
local predecoded = 0 -- ... of which arrived decoded, their pixels made off the frame
local handover_cpu = 0 -- the main thread's CPU in the longest poll that took a picture in, seconds
local bar_from, bar_to -- the bar's fraction when the model started, and before the first partial
local arrivals = {} -- how long the updates that took a picture in lasted, in ms

-- A decoded picture into the texture on screen: no decoding here, only a
-- copy of img.buffer (w*h*4 bytes, the decoder thread's own memory) into
-- an ImageData kept for the purpose, and the upload. The same texture is
-- reused while the size stays.
local function show(img)
  local w, h = img.width, img.height
  local buf = rawget(img, "buffer")
  if buf then predecoded = predecoded + 1 end
  if not canvas or canvas:getWidth() ~= w or canvas:getHeight() ~= h then
    canvas = love.image.newImageData(w, h, "rgba8")
    picture = love.graphics.newImage(canvas)
  end
  if buf then
    ffi.copy(canvas:getFFIPointer(), buf:ptr(), #buf)
    buf:close() -- the texture has them: the memory goes now, not at the next collection
  else
    ffi.copy(canvas:getFFIPointer(), img:rgba(), w * h * 4)
  end
  picture:replacePixels(canvas)
end

-- The input: a gradient drawn here, so nothing is downloaded.
local function input_png()
  local w, h, rows = 256, 256, {}
  for y = 0, h - 1 do
    local r = {}
    for x = 0, w - 1 do r[#r + 1] = string.char(x, y, (x + y) % 256, 255) end
    rows[#rows + 1] = table.concat(r)
  end
  return core.encode(table.concat(rows), w, h, "png")
end

function love.load()
  if os.getenv("IMGEDIT_API_KEY") then
    client = imgedit.new {}
  else
    emu = assert(require("imgedit.emulator").start { latency = 1.5 })
    client = imgedit.new { base_url = emu.url, api_key = emu.key }
  end
  input = input_png()
  -- The texture of the size asked for, made before anything arrives.
  canvas = love.image.newImageData(1024, 1024, "rgba8")
  picture = love.graphics.newImage(canvas)
  t0 = love.timer.getTime()
end

-- How far along the edit is, 0..1, for the bar: the upload is the first
-- tenth; while the model works the bar creeps on (it cannot know how long
-- the model takes: it eases towards the next partial's share); each
-- partial, then the result, moves it to its share.
local function fraction()
  if result then return 1 end
  if phase == "upload" then return 0.1 * sent end
  local floor, next_at = 0.1 + 0.8 * partials / 3, 0.1 + 0.8 * (partials + 1) / 3
  local waited = love.timer.getTime() - (waited_since or t0)
  return floor + (next_at - floor) * (1 - math.exp(-waited / 2))
end

-- The edit starts once the window has drawn its first frames (its fonts
-- and shaders are set up then), as a game's would mid-play.
local function start()
  job = client:submit("edit", {
    prompt = "Paint this gradient as a stormy sea", images = { { bytes = input, filename = "gradient.png" } },
    size = "1024x1024", stream = true, partial_images = 2,
    decode = "rgba", -- pixels decoded off the frame: img.buffer, img.width, img.height
    on_progress = function(p)
      if p.phase ~= "upload" and phase == "upload" then waited_since = love.timer.getTime() end
      phase = p.phase
      sent = p.upload_total > 0 and p.uploaded / p.upload_total or 0
    end,
    on_partial = function(img)
      partials = partials + 1
      pending = img -- shown in the next frame: one heavy thing per frame
    end,
  })
  t0 = love.timer.getTime()
end

function love.update(dt)
  local frame_start = love.timer.getTime()
  local before = partials
  seen = seen + 1
  if seen == 3 then start() end
  if not job then return end
  -- every frame from the edit's start: the ones in which pictures arrive,
  -- and the ones that upload them, too
  local cpu = thread_cpu()
  if seen > 3 then longest, longest_cpu = math.max(longest, dt), math.max(longest_cpu, cpu - cpu_at) end
  cpu_at = cpu
  if phase ~= "upload" and partials == 0 then
    bar_from, bar_to = bar_from or fraction(), fraction() -- the bar while the model works
  end
  if pending then
    show(pending)
    pending, shown = nil, shown + 1
    arrivals[#arrivals + 1] = (love.timer.getTime() - frame_start) * 1000
  elseif not job:done() then
    frames = frames + 1
    local c0, took = thread_cpu(), partials
    client:poll(0) -- never blocks, never decodes, never copies a picture: the frame goes on
    if partials > took or job:done() then handover_cpu = math.max(handover_cpu, thread_cpu() - c0) end
  elseif not result then
    local img, err = job:result()
    if not img then
      print("error " .. tostring(err))
      love.event.quit(1)
      return
    end
    result, done_at, pending = img, love.timer.getTime(), img
  end
  if partials > before then arrivals[#arrivals + 1] = (love.timer.getTime() - frame_start) * 1000 end
  if done_at and shown == partials + 1 and love.timer.getTime() - done_at > 0.5 then
    local worst = 0
    for _, ms in ipairs(arrivals) do worst = math.max(worst, ms) end
    print(string.format("frames_waiting=%d longest_frame_ms=%.1f longest_frame_cpu_ms=%.1f picture_frame_ms=%.1f"
      .. " handover_cpu_ms=%.2f partials=%d shown=%d predecoded=%d bar_waiting=%.3f-%.3f image=%dx%d seconds=%.2f",
      frames, longest * 1000, longest_cpu * 1000, worst, handover_cpu * 1000, partials, shown, predecoded,
      bar_from or 0, bar_to or 0, result.width, result.height, done_at - t0))
    io.stdout:flush()
    love.event.quit(0)
  end
  if love.timer.getTime() - t0 > 60 then
    print("timeout")
    love.event.quit(1)
  end
  love.timer.sleep(1 / 240) -- a game's pace, not a busy loop
end

function love.draw()
  local w, h = love.graphics.getDimensions()
  if shown > 0 then
    local s = math.min((w - 20) / picture:getWidth(), (h - 60) / picture:getHeight())
    love.graphics.draw(picture, (w - picture:getWidth() * s) / 2, 10, 0, s, s)
  end
  love.graphics.rectangle("line", 20, h - 40, w - 40, 20)
  love.graphics.rectangle("fill", 20, h - 40, (w - 40) * fraction(), 20)
  -- a spinner: it turns every frame, so a frozen frame shows
  local a = love.timer.getTime() * 6
  love.graphics.circle("fill", w - 30 + 8 * math.cos(a), h - 52 + 8 * math.sin(a), 3)
  local label = result and "done" or phase == "upload" and "uploading"
    or string.format("the model is working: %d of 2 previews", partials)
  love.graphics.print(label, 24, h - 62)
end

function love.quit()
  if emu then emu:stop() end
  return false
end
