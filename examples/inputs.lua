-- Makes the demo's input pictures (no downloads): a person, a scene and a
-- mask, drawn row by row from spans so that it takes milliseconds.
-- Usage: lua5.4 examples/inputs.lua DIR   (or require it and call make(dir))
local core = require "imgedit.core"

local M = {}

local function px(r, g, b, a) return string.char(r, g, b, a or 255) end

-- Build a w x h picture; row(y) returns a list of {x0, x1, pixel} spans
-- painted over the background pixel bg(y).
local function draw(w, h, bg, spans)
  local rows = {}
  for y = 0, h - 1 do
    local fill = bg(y)
    local parts, x = {}, 0
    for _, s in ipairs(spans(y)) do
      local x0, x1 = math.max(s[1], x), math.min(s[2], w)
      if x1 > x0 then
        parts[#parts + 1] = fill:rep(x0 - x)
        parts[#parts + 1] = s[3]:rep(x1 - x0)
        x = x1
      end
    end
    parts[#parts + 1] = fill:rep(w - x)
    rows[#rows + 1] = table.concat(parts)
  end
  return table.concat(rows)
end

local function disc(cx, cy, r, y, pixel)
  local d = r * r - (y - cy) * (y - cy)
  if d < 0 then return nil end
  local half = math.floor(math.sqrt(d))
  return { cx - half, cx + half, pixel }
end

-- A figure: head and body on a pale backdrop (portrait, 768x1024).
function M.person()
  local w, h = 768, 1024
  local skin, coat = px(224, 172, 140), px(40, 70, 160)
  local bytes = draw(w, h, function() return px(235, 235, 225) end, function(y)
    local s = {}
    s[#s + 1] = disc(384, 260, 120, y, skin)
    if y > 400 and y < 1000 then
      local half = 130 + math.floor((y - 400) / 6)
      s[#s + 1] = { 384 - half, 384 + half, coat }
    end
    return s
  end)
  return core.encode(bytes, w, h, "png")
end

-- A landscape: sky gradient, sun, hills (1536x1024).
function M.scene()
  local w, h = 1536, 1024
  local bytes = draw(w, h, function(y)
    if y < 640 then return px(90 + math.floor(y / 8), 150 + math.floor(y / 10), 235) end
    return px(70, 140 - math.floor((y - 640) / 8), 60)
  end, function(y)
    return { disc(1150, 260, 110, y, px(255, 210, 80)) }
  end)
  return core.encode(bytes, w, h, "png")
end

-- An inpainting mask for a w x h image: alpha 0 (edit here) in a box.
function M.mask(w, h, x, y, bw, bh)
  local clear, keep = px(0, 0, 0, 0), px(0, 0, 0, 255)
  local bytes = draw(w, h, function() return keep end, function(row)
    if row >= y and row < y + bh then return { { x, x + bw, clear } } end
    return {}
  end)
  return core.encode(bytes, w, h, "png")
end

function M.make(dir)
  local paths = {}
  for name, fn in pairs { person = M.person, scene = M.scene } do
    paths[name] = dir .. "/" .. name .. ".png"
    assert(core.write_atomic(paths[name], fn()))
  end
  return paths
end

if arg and arg[0] and arg[0]:match("inputs%.lua$") then
  local dir = arg[1] or "out"
  os.execute("mkdir -p '" .. dir .. "'")
  for _, p in pairs(M.make(dir)) do print(p) end
end

return M
