-- The demo: fuse two pictures, inpaint part of the result with a mask, then
-- restyle it, each output feeding the next edit. Runs against the embedded
-- emulator, or the real service when IMGEDIT_API_KEY is set. The steps are
-- a pipeline's, so each picture gets its sidecar (`imgedit report OUTDIR`
-- shows them), and a re-run against the same service is served from
-- OUTDIR/.imgedit-cache.
-- Usage: lua5.4 examples/pipeline.lua [OUTDIR]
package.path = "examples/?.lua;" .. package.path
local imgedit = require "imgedit"
local common = require "common"
local inputs = require "inputs"

local client, outdir, finish, emu = common.setup(nil)
if emu then
  print("using the local emulator at " .. emu.url .. " (set IMGEDIT_API_KEY for the real service)")
else
  print("using the service at " .. client.base_url)
end
local paths = inputs.make(outdir)
-- overwrite: the folder is the demo's (it writes its inputs there too), and
-- a run of the demo before it kept pictures without sidecars
local p = imgedit.pipeline { client = client, dir = outdir, cache = outdir .. "/.imgedit-cache", quiet = true,
  overwrite = true }
local total = 0

local function step(n, name, req)
  local t0 = os.time()
  local img, err = p:edit(n .. "-" .. name, req)
  if not img then
    io.stderr:write(string.format("step %d (%s) failed: %s\n", n, name, tostring(err)))
    finish()
    os.exit(1)
  end
  -- a step served from the cache paid nothing now
  local tokens = not img.cached and img.usage and img.usage.total_tokens or 0
  total = total + tokens
  print(string.format("%d. %-10s %s  %dx%d  %d tokens  %ds%s", n, name, img.path, img.width, img.height, tokens,
    os.time() - t0, img.cached and "  (cached)" or ""))
  if img.mask_drift then -- the service takes a mask as a soft guide: how far it strayed
    print(string.format("   the service changed %.1f%% of the area the mask keeps%s", img.mask_drift * 100,
      img.preserved and "; preserve put the input back there" or ""))
  end
  return img
end

local fused = step(1, "fused", {
  prompt = "Put the person from image 1 into the scene of image 2, standing on the hill",
  images = { paths.person, paths.scene }, size = "1536x1024", quality = "high",
})

-- Inpaint the sky above the person: alpha 0 marks the area to change.
local mask = assert(imgedit.from_bytes(inputs.mask(fused.width, fused.height, 200, 80, 520, 300), "mask.png"))
assert(mask:save(outdir .. "/mask.png"))
local inpainted = step(2, "inpainted", {
  prompt = "Add a red hot-air balloon in the masked part of the sky", images = { fused }, mask = outdir .. "/mask.png",
  preserve = true, -- every pixel outside the mask stays the fused picture's
})

step(3, "restyled", { prompt = "Restyle the whole picture as a watercolour painting", images = { inpainted } })

print(string.format("done: %d tokens in all; pictures in %s (imgedit report %s: their contact sheet)", total, outdir,
  outdir))
finish()
