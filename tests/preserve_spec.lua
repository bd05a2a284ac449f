-- Masks that hold: drift and spill figures, and preserve's composite.
local H = require "helpers"
local core = require "imgedit.core"
local imgedit = require "imgedit"

-- A picture from f(x, y) -> r, g, b [, a].
local function picture(w, h, f)
  local t = {}
  for y = 0, h - 1 do
    for x = 0, w - 1 do
      local r, g, b, a = f(x, y)
      t[#t + 1] = string.char(r, g, b, a or 255)
    end
  end
  return table.concat(t)
end

local function px_at(px, w, x, y)
  local i = (y * w + x) * 4
  return px:byte(i + 1, i + 4)
end

-- A busy base: neighbouring pixels differ, so a misplaced pixel shows.
local function base_fn(x, y) return (x * 37 + y * 11) % 200 + 20, (x * 5 + y * 23) % 180 + 40, (x * y) % 160 + 50 end

local W, H_ = 64, 64
-- The edit area: the square [16, 48) x [16, 48).
local function in_edit(x, y) return x >= 16 and x < 48 and y >= 16 and y < 48 end
-- Distance from an edit pixel to the nearest kept one.
local function depth(x, y) return math.min(x - 15, 48 - x, y - 15, 48 - y) end

local function mask_png() return assert(imgedit.mask.rect { width = W, height = H_, x = 16, y = 16, w = 32, h = 32 }) end

local function bytes(px, w, h, fmt) return { bytes = assert(core.encode(px, w, h, fmt or "png", 92)) } end

describe("mask drift and spill", function()
  it("count the kept pixels that changed past the tolerance, and the edit pixels left alone", function()
    local base = picture(W, H_, base_fn)
    local kept, moved, nudged, edit, left = 0, 0, 0, 0, 0
    local answer = picture(W, H_, function(x, y)
      local r, g, b = base_fn(x, y)
      if in_edit(x, y) then
        edit = edit + 1
        if x < 24 then left = left + 1 return r, g, b end -- the model left a strip alone
        return 255 - r, g, 0
      end
      kept = kept + 1
      if (x + y * W) % 10 == 0 then moved = moved + 1 return r, math.min(g + 60, 255), b end -- changed
      if (x + y * W) % 10 == 5 then nudged = nudged + 1 return r, g, b + 20 end -- within 30
      return r, g, b
    end)
    local r = assert(imgedit.mask.compare(bytes(answer, W, H_), bytes(base, W, H_), mask_png()))
    assert.are.same({ kept, moved, edit, left }, { r.keep, r.drifted, r.edit, r.unchanged })
    assert.are.equal(moved / kept, r.drift)
    assert.are.equal(left / edit, r.spill)
    assert.are.equal(0.25, r.spill)
    assert.is_false(r.scaled)
    -- a tighter tolerance counts the nudged pixels too
    local tight = assert(imgedit.mask.compare(bytes(answer, W, H_), bytes(base, W, H_), mask_png(), { tolerance = 10 }))
    assert.are.equal((moved + nudged) / kept, tight.drift)
    -- an answer equal to image 1: no drift, all spill
    local same = assert(imgedit.mask.compare(bytes(base, W, H_), bytes(base, W, H_), mask_png()))
    assert.are.same({ 0, 1 }, { same.drift, same.spill })
  end)

  it("names the picture that cannot be read, and refuses bad options", function()
    local base = bytes(picture(8, 8, base_fn), 8, 8)
    local _, err = imgedit.mask.compare({ bytes = "\137PNG\r\n\26\n garbage" }, base, mask_png())
    assert.are.equal("invalid_request", err.kind)
    assert.matches("the answer", err.message)
    _, err = imgedit.mask.compare(base, { bytes = "GIF89a" }, mask_png())
    assert.matches("image 1", err.message)
    assert.has_error(function() imgedit.mask.compare(base, base, mask_png(), { tolerance = 300 }) end,
      "bad option 'tolerance' (a whole number from 0 to 255 expected)")
    assert.has_error(function() imgedit.mask.preserve(base, base, mask_png(), { feather = -1 }) end)
  end)
end)

describe("preserve", function()
  local base = picture(W, H_, base_fn)
  local answer = picture(W, H_, function(x, y)
    local r, g, b = base_fn(x, y)
    if in_edit(x, y) then return 250, 10, (x * 7) % 256 end
    return math.min(r + 9, 255), g, math.max(b - 40, 0) -- the model redrew the kept area too
  end)

  it("keeps image 1 exactly outside the mask, the answer inside, and a seam of feather pixels", function()
    for _, feather in ipairs { 0, 1, 4, 7 } do
      local img = assert(imgedit.mask.preserve(bytes(answer, W, H_), bytes(base, W, H_), mask_png(), { feather = feather }))
      assert.are.same({ "png", W, H_ }, { img.format, img.width, img.height })
      assert.are.same({ feather = feather, scaled = false }, img.preserved)
      assert.is_true(img.mask_drift > 0.99) -- the raw answer changed every kept pixel
      local out = core.decode(img.bytes)
      local seam = 0
      for y = 0, H_ - 1 do
        for x = 0, W - 1 do
          local got = { px_at(out, W, x, y) }
          if not in_edit(x, y) then
            assert.are.same({ px_at(base, W, x, y) }, got, "kept pixel " .. x .. "," .. y)
          elseif depth(x, y) > feather then
            assert.are.same({ px_at(answer, W, x, y) }, got, "edit pixel " .. x .. "," .. y)
          else
            -- in the seam: between image 1 and the answer, channel by channel
            local b, a = { px_at(base, W, x, y) }, { px_at(answer, W, x, y) }
            for c = 1, 3 do
              assert.is_true(got[c] >= math.min(a[c], b[c]) and got[c] <= math.max(a[c], b[c]))
            end
            if got[1] ~= a[1] and got[1] ~= b[1] then seam = seam + 1 end
          end
        end
      end
      if feather > 0 then assert.is_true(seam > 0, "a blended seam") end
    end
  end)

  it("the seam fades with distance: nearer the kept area, nearer image 1", function()
    local img = assert(imgedit.mask.preserve(bytes(answer, W, H_), bytes(base, W, H_), mask_png(), { feather = 6 }))
    local out = core.decode(img.bytes)
    -- along row 32, from the left edge of the edit area inwards: the share of
    -- image 1 falls step by step
    local last = 1
    for x = 16, 22 do
      local b, a, g = px_at(base, W, x, 32), px_at(answer, W, x, 32), px_at(out, W, x, 32)
      local share = (g - a) / (b - a)
      assert.is_true(share <= last + 1e-9, "x " .. x)
      last = share
    end
    assert.are.equal(0, last)
  end)

  it("keeps the answer's format: png, jpeg and webp (lossless stays lossless)", function()
    local smooth = picture(W, H_, function(x, y) return x * 3, y * 3, 128 end)
    for _, case in ipairs { { "png" }, { "jpeg", 6 }, { "webp", 10 }, { "webp-lossless" } } do
      local fmt, err_max = case[1], case[2] or 0
      local ans
      if fmt == "webp-lossless" then
        ans = { bytes = assert(core.encode(answer, W, H_, "webp", 90, true)) }
      else
        ans = bytes(answer, W, H_, fmt)
      end
      local img = assert(imgedit.mask.preserve(ans, bytes(smooth, W, H_), mask_png()))
      assert.are.equal(fmt == "webp-lossless" and "webp" or fmt, img.format)
      if fmt == "webp-lossless" then assert.are.equal("VP8L", img.bytes:sub(13, 16)) end
      local out = core.decode(img.bytes)
      local worst = 0
      for y = 0, H_ - 1, 3 do
        for x = 0, W - 1, 3 do
          if not in_edit(x, y) and (x < 12 or x > 52 or y < 12 or y > 52) then -- away from the edit area's edge
            local a, b = { px_at(out, W, x, y) }, { px_at(smooth, W, x, y) }
            for c = 1, 3 do worst = math.max(worst, math.abs(a[c] - b[c])) end
          end
        end
      end
      assert.is_true(worst <= err_max, fmt .. ": kept pixels off by " .. worst)
    end
  end)

  it("scales image 1 and the mask to the answer's size when theirs differ", function()
    -- image 1 and its mask at 48x32; the answer at twice that, then a mask at half
    local smooth = picture(48, 32, function(x, y) return x * 5, y * 7, 100 end)
    local mask = assert(imgedit.mask.rect { width = 48, height = 32, x = 12, y = 8, w = 24, h = 16 })
    local big = picture(96, 64, function() return 0, 255, 0 end)
    local img = assert(imgedit.mask.preserve(bytes(big, 96, 64), bytes(smooth, 48, 32), mask))
    assert.are.same({ 96, 64, true }, { img.width, img.height, img.preserved.scaled })
    local out = core.decode(img.bytes)
    for _, p in ipairs { { 4, 4 }, { 90, 10 }, { 10, 60 }, { 60, 58 } } do -- kept: image 1 scaled
      local r, g, b = px_at(out, 96, p[1], p[2])
      assert.is_true(math.abs(r - p[1] / 2 * 5) <= 6 and math.abs(g - p[2] / 2 * 7) <= 8 and math.abs(b - 100) <= 2,
        string.format("%d,%d: %d %d %d", p[1], p[2], r, g, b))
    end
    assert.are.same({ 0, 255, 0, 255 }, { px_at(out, 96, 48, 32) }) -- edit: the answer
    -- a mask of another size than both: scaled too
    local half = assert(imgedit.mask.rect { width = 24, height = 16, x = 6, y = 4, w = 12, h = 8 })
    local r = assert(imgedit.mask.compare(bytes(big, 96, 64), bytes(smooth, 48, 32), half))
    assert.is_true(r.scaled)
    -- a hard mask stays hard: its rectangle, scaled (corners within a pixel)
    assert.is_true(math.abs(r.edit - 48 * 32) <= 8, "edit area " .. r.edit)
  end)
end)
