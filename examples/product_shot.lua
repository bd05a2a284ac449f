-- A product shot: the same object on several backgrounds. The mask keeps
-- the product (opaque) and opens the rest (alpha 0) for the edit.
-- Usage: lua5.4 examples/product_shot.lua [OUTDIR]
package.path = "examples/?.lua;" .. package.path
local imgedit = require "imgedit"
local core = require "imgedit.core"
local common = require "common"

local client, outdir, finish = common.setup("product_shot")
local p = imgedit.pipeline { client = client, dir = outdir, cache = outdir .. "/.imgedit-cache" }
assert(core.mkdir_p(outdir))

-- The product: a bottle on grey, 1024x1024; the mask is opaque over it.
local W, H = 1024, 1024
local function inside(x, y)
  if y >= 300 and y < 900 then return x >= 412 and x < 612 end
  return y >= 180 and y < 300 and x >= 472 and x < 552
end
local function row(y, a, b)
  local l, r = 412, 612
  if y < 300 then l, r = 472, 552 end
  if not inside(l, y) then return a:rep(W) end
  return a:rep(l) .. b:rep(r - l) .. a:rep(W - r)
end
local function picture(bg, fg)
  local rows = {}
  for y = 0, H - 1 do rows[#rows + 1] = row(y, bg, fg) end
  return table.concat(rows)
end
local product = outdir .. "/bottle.png"
assert(core.write_atomic(product, core.encode(picture("\200\200\200\255", "\30\110\60\255"), W, H, "png")))
local mask = outdir .. "/bottle-mask.png"
assert(core.write_atomic(mask, core.encode(picture("\0\0\0\0", "\0\0\0\255"), W, H, "png")))

local backgrounds = { "on a marble kitchen counter, morning light", "on a beach at sunset",
  "on a dark slate slab, studio lighting" }
local reqs = {}
for i, bg in ipairs(backgrounds) do
  reqs[i] = { prompt = "Keep the bottle exactly; place it " .. bg, images = { product }, mask = mask,
    size = "1024x1024", quality = "high", output_format = "jpeg", output_compression = 85 }
end
local shots = assert(p:fan_out("shot", reqs))
for _, s in ipairs(shots) do print(s.path) end
p:report()
finish()
