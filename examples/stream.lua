-- Watch a picture form: stream an edit and save each partial image as it
-- arrives, then the final one. Usage: lua5.4 examples/stream.lua [OUTDIR]
package.path = "examples/?.lua;" .. package.path
local core = require "imgedit.core"
local common = require "common"
local inputs = require "inputs"

local client, outdir, finish = common.setup("stream")
local scene = inputs.make(outdir).scene
local t0 = core.now()

local img, err = client:edit {
  prompt = "Turn the scene into a night sky full of stars", images = { scene }, size = "1536x1024",
  stream = true, partial_images = 3,
  on_partial = function(partial, index)       -- called from the poll loop, in this Lua state
    local path = string.format("%s/partial-%d.png", outdir, index)
    assert(partial:save(path))
    print(string.format("%5.2fs  partial %d  %s", core.now() - t0, index, path))
  end,
}
if not img then error(tostring(err)) end
assert(img:save(outdir .. "/final.png"))
print(string.format("%5.2fs  final      %s/final.png (%d tokens)", core.now() - t0, outdir,
  img.usage and img.usage.total_tokens or 0))
finish()
