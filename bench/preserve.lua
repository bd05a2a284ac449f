-- preserve's pixel work for a 1536x1024 answer, in each format: decode the
-- answer, image 1 and the mask, compare, feather, composite, encode (what
-- an edit with preserve = true adds), and the figures alone (what every
-- edit with a mask adds). Beside them, the codec floor measured in the same
-- run: decoding the two pictures and encoding one, which any composite
-- pays. Prints JSON: median milliseconds of 9 runs.
local core = require "imgedit.core"
local cjson = require "cjson"

local base = assert(core.read_file(arg[1])) -- a photo-like 1536x1024 PNG
local px, w, h = assert(core.decode(base))
local mask = assert(core.encode(core.mask_shapes(w, h, { { kind = "rect", x = 384, y = 256, w = 768, h = 512 } }), w,
  h, "png"))
-- The answer: image 1 with the edit area repainted and every kept pixel a
-- level off, as a model's redraw.
local t = {}
for y = 0, h - 1 do
  local row = {}
  for x = 0, w - 1 do
    local i = (y * w + x) * 4
    local r, g, b = px:byte(i + 1, i + 3)
    if x >= 384 and x < 1152 and y >= 256 and y < 768 then r, g, b = 255 - r, b, g else r = r < 255 and r + 1 or r end
    row[#row + 1] = string.char(r, g, b, 255)
  end
  t[#t + 1] = table.concat(row)
end
local answer_px = table.concat(t)

local function median(f)
  local times = {}
  for i = 1, 9 do
    collectgarbage("collect")
    local t0 = core.now()
    f()
    times[i] = (core.now() - t0) * 1000
  end
  table.sort(times)
  return times[5]
end

local out = { width = w, height = h }
for _, fmt in ipairs { "png", "jpeg", "webp" } do
  local answer = assert(core.encode(answer_px, w, h, fmt, 90))
  local r = { answer_bytes = #answer }
  r.preserve = median(function() assert(core.inpaint(answer, base, mask, { preserve = true, quality = 90 }).bytes) end)
  r.figures = median(function() assert(core.inpaint(answer, base, mask)) end)
  r.decode_answer = median(function() assert(core.decode(answer)) end)
  r.decode_base = median(function() assert(core.decode(base)) end)
  r.decode_mask = median(function() assert(core.decode(mask)) end)
  r.encode = median(function() assert(core.encode(answer_px, w, h, fmt, 90)) end)
  out[fmt] = r
end
print(cjson.encode(out))
