-- Makes the benchmarks' inputs once, into bench/.data/ (not committed):
-- five 9.5 MB PNGs of noise (noise does not compress, so the files stay
-- big), a mask of the same size with alpha, and a 1536x1024 answer image.
local core = require "imgedit.core"

local M = { dir = "bench/.data" }

-- sh(cmd) -> what the command printed
function M.sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

-- poll_median(client, n) -> the median seconds of n calls of client:poll(0)
function M.poll_median(c, n)
  local times = {}
  for i = 1, n do
    local t = core.now()
    c:poll(0)
    times[i] = core.now() - t
  end
  table.sort(times)
  return times[(n + 1) // 2]
end

local function noise(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local s = f:read(n)
  f:close()
  return s
end

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() end
  return f ~= nil
end

function M.make()
  assert(core.mkdir_p(M.dir))
  local side = 1541 -- 1541 * 1541 * 4 bytes of noise: a 9.5 MB PNG
  local paths = { images = {} }
  for i = 1, 5 do
    local p = string.format("%s/image-%d.png", M.dir, i)
    if not exists(p) then assert(core.write_atomic(p, core.encode(noise(side * side * 4), side, side, "png"))) end
    paths.images[i] = p
  end
  paths.mask = M.dir .. "/mask.png"
  if not exists(paths.mask) then
    assert(core.write_atomic(paths.mask, core.encode(noise(side * side * 4), side, side, "png")))
  end
  -- The answer: a photo-like 1536x1024 picture (smooth gradients plus grain).
  paths.answer = M.dir .. "/answer.png"
  if not exists(paths.answer) then
    local w, h = 1536, 1024
    local grain = noise(w * h)
    local rows = {}
    for y = 0, h - 1 do
      local r = {}
      for x = 0, w - 1 do
        local g = grain:byte(y * w + x + 1) % 32
        r[#r + 1] = string.char((x * 200 // w + g) % 256, (y * 200 // h + g) % 256, (128 + g) % 256, 255)
      end
      rows[#rows + 1] = table.concat(r)
    end
    assert(core.write_atomic(paths.answer, core.encode(table.concat(rows), w, h, "png")))
  end
  return paths
end

return M
