-- A game-style frame loop that never blocks: it submits an edit, keeps
-- "drawing" frames while the edit runs (client:poll(0) once a frame), shows
-- progress, and picks the picture up when it is ready. Then the same thing
-- written with a coroutine, which reads top to bottom.
-- Usage: lua5.4 examples/frameloop.lua [OUTDIR]
package.path = "examples/?.lua;" .. package.path
local imgedit = require "imgedit"
local core = require "imgedit.core"
local common = require "common"
local inputs = require "inputs"

-- the emulator pretends the model thinks for half a second
local client, outdir, finish, emu = common.setup("frameloop", nil, { latency = 0.5 })
local paths = inputs.make(outdir)

local FRAME = 1 / 60
local function sleep_until(t)
  while core.now() < t do client:poll(math.max(0, t - core.now())) end
end

-- 1. Explicit jobs: submit, then poll once a frame.
local phase = "-"
local job = client:submit("edit", {
  prompt = "Put the person from image 1 into the scene of image 2", images = { paths.person, paths.scene },
  on_progress = function(p) phase = p.phase end,
})
local frames, worst, t0 = 0, 0, core.now()
while not job:done() do
  local start = core.now()
  client:poll(0)            -- never blocks
  frames = frames + 1       -- ... draw the frame, with a spinner showing `phase` ...
  worst = math.max(worst, core.now() - start)
  sleep_until(start + FRAME)
end
local img, err = job:result()
if not img then error(tostring(err)) end
assert(img:save(outdir .. "/frameloop.png"))
print(string.format("jobs: %d frames while the edit ran (%.2fs), slowest poll(0) %.3f ms, last phase %s, saved %s",
  frames, core.now() - t0, worst * 1000, phase, outdir .. "/frameloop.png"))

-- 2. The same with a coroutine: the script reads top to bottom, and
-- job:wait() yields to the frame loop instead of blocking it.
local yclient = emu and imgedit.new { base_url = emu.url, api_key = emu.key, yield = true } or imgedit.new { yield = true }
local script = coroutine.wrap(function()
  local a = assert(yclient:edit { prompt = "Make it dusk", images = { img } })
  local b = assert(yclient:edit { prompt = "Add fireflies", images = { a } })
  assert(b:save(outdir .. "/frameloop-2.png"))
  return "finished"
end)
frames = 0
while script() ~= "finished" do
  frames = frames + 1       -- ... draw the frame ...
  sleep_until(core.now() + FRAME)
end
print(string.format("coroutine: two chained edits over %d frames, saved %s", frames, outdir .. "/frameloop-2.png"))
finish()
