-- A LÖVE 11 game that submits an edit to the emulator (or the service, with
-- IMGEDIT_API_KEY) and keeps drawing while it runs: a progress bar, the
-- partial images as they stream in, then the result. It prints how many
-- frames it drew while waiting and its longest frame, then quits.
-- Run: LUA_CPATH='build-luajit/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;;' love examples/love
local imgedit = require "imgedit"
local core = require "imgedit.core"

local emu, client, job
local phase, progress, partials = "upload", 0, 0
local picture, result
local frames, longest, t0, done_at = 0, 0, 0, nil

local function to_love(img)
  local data = love.filesystem.newFileData(img.bytes, "image." .. img.format)
  return love.graphics.newImage(love.image.newImageData(data))
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
  job = client:submit("edit", {
    prompt = "Paint this gradient as a stormy sea", images = { { bytes = input_png(), filename = "gradient.png" } },
    size = "1024x1024", stream = true, partial_images = 2,
    on_progress = function(p)
      phase = p.phase
      progress = p.upload_total > 0 and p.uploaded / p.upload_total or 0
    end,
    on_partial = function(img)
      partials = partials + 1
      picture = to_love(img)
    end,
  })
  t0 = love.timer.getTime()
end

function love.update(dt)
  if not job:done() then
    frames = frames + 1
    if frames > 1 then longest = math.max(longest, dt) end
    client:poll(0) -- never blocks: the frame goes on
  elseif not result then
    local img, err = job:result()
    if not img then
      print("error " .. tostring(err))
      love.event.quit(1)
      return
    end
    result, picture, done_at = img, to_love(img), love.timer.getTime()
    print(string.format("frames_waiting=%d longest_frame_ms=%.1f partials=%d image=%dx%d seconds=%.2f",
      frames, longest * 1000, partials, img.width, img.height, done_at - t0))
    io.stdout:flush()
  end
  if done_at and love.timer.getTime() - done_at > 0.5 then love.event.quit(0) end
  if love.timer.getTime() - t0 > 60 then
    print("timeout")
    love.event.quit(1)
  end
  love.timer.sleep(1 / 240) -- a game's pace, not a busy loop
end

function love.draw()
  local w, h = love.graphics.getDimensions()
  if picture then
    local s = math.min((w - 20) / picture:getWidth(), (h - 60) / picture:getHeight())
    love.graphics.draw(picture, (w - picture:getWidth() * s) / 2, 10, 0, s, s)
  end
  love.graphics.rectangle("line", 20, h - 40, w - 40, 20)
  local frac = result and 1 or phase == "upload" and progress * 0.2 or phase == "wait" and 0.2 + 0.7 * partials / 3 or 0.95
  love.graphics.rectangle("fill", 20, h - 40, (w - 40) * frac, 20)
  love.graphics.print(result and "done" or (phase .. string.rep(".", math.floor(love.timer.getTime() * 4) % 4)),
    24, h - 62)
end

function love.quit()
  if emu then emu:stop() end
  return false
end
