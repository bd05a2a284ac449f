-- Masks for inpainting: a PNG whose alpha channel marks the area to edit
-- (alpha 0 = edit here, 255 = keep), the size of the first image.
local compat = require "imgedit.compat"
local core = require "imgedit.core"
local errors = require "imgedit.errors"
local image = require "imgedit.image"
local rules = require "imgedit.rules"

local M = {}

-- The size of a mask: width/height, or the size of `like` (from its header).
local function size_of(o, fn)
  if o.like ~= nil then
    local info, err = image.inspect(o.like)
    if not info then return nil, nil, err end
    return info.width, info.height
  end
  if not compat.is_integer(o.width) or not compat.is_integer(o.height) or o.width < 1 or o.height < 1 then
    error("bad argument #1 to '" .. fn .. "' (width and height, or like = a base image, expected)", 3)
  end
  return o.width, o.height
end

local function as_image(px, w, h, name)
  return image.from_bytes(core.encode(px, w, h, "png"), { filename = name or "mask.png" })
end

local function shape(kind, t)
  for _, k in ipairs { "x", "y", "w", "h" } do
    if not compat.is_integer(t[k]) then
      error(string.format("bad shape (%s: integer %s expected)", kind, k), 4)
    end
  end
  return { kind = kind, x = t.x, y = t.y, w = t.w, h = t.h, keep = t.keep and true or false }
end

-- compose{width=, height= | like=, shapes = {{kind="rect"|"ellipse", x=, y=, w=, h=, keep=}, ...}, invert=}
-- Shapes apply in order: each opens its area for editing, or keeps it
-- again with keep = true. -> Image | nil, err
function M.compose(o)
  if type(o) ~= "table" then error("bad argument #1 to 'compose' (table expected)", 2) end
  local w, h, err = size_of(o, "compose")
  if not w then return nil, err end
  local shapes = {}
  for i, s in ipairs(o.shapes or {}) do
    if type(s) ~= "table" then error("bad shape " .. i .. " (table expected)", 2) end
    local kind = s.kind or "rect"
    if kind ~= "rect" and kind ~= "ellipse" then error("bad shape " .. i .. " (kind rect or ellipse expected)", 2) end
    shapes[i] = shape(kind, s)
  end
  return as_image(core.mask_shapes(w, h, shapes, o.invert), w, h)
end

-- rect{width=, height= | like=, x=, y=, w=, h=, invert=} -> Image
function M.rect(o)
  if type(o) ~= "table" then error("bad argument #1 to 'rect' (table expected)", 2) end
  local w, h, err = size_of(o, "rect")
  if not w then return nil, err end
  return as_image(core.mask_shapes(w, h, { shape("rect", o) }, o.invert), w, h)
end

-- ellipse{...}: the ellipse inside the box x, y, w, h.
function M.ellipse(o)
  if type(o) ~= "table" then error("bad argument #1 to 'ellipse' (table expected)", 2) end
  local w, h, err = size_of(o, "ellipse")
  if not w then return nil, err end
  return as_image(core.mask_shapes(w, h, { shape("ellipse", o) }, o.invert), w, h)
end

local function gray_opts(o, fn)
  o = o or {}
  if type(o) ~= "table" then error("bad argument #2 to '" .. fn .. "' (table expected)", 3) end
  if o.threshold ~= nil and (type(o.threshold) ~= "number" or o.threshold < 0 or o.threshold > 1) then
    error("bad option 'threshold' (number from 0 to 1 expected)", 3)
  end
  if o.feather ~= nil and (not compat.is_integer(o.feather) or o.feather < 0) then
    error("bad option 'feather' (pixels, a whole number, expected)", 3)
  end
  return o
end

-- from_gray(src, {invert=, threshold=0..1, feather=px}) -> Image | nil, err
-- A black-and-white or greyscale picture (png, jpeg or webp) becomes an
-- alpha mask: white marks the area to edit (invert = true for the opposite).
-- Without a threshold, grey levels give partial alpha.
function M.from_gray(src, o)
  o = gray_opts(o, "from_gray")
  local px, w, h, _, name = image.pixels(src, "mask")
  if not px then return nil, w end
  return as_image(core.mask_from_gray(px, w, h, { invert = o.invert, threshold = o.threshold,
    feather = o.feather }), w, h, name and (image.stem(name) .. "-mask.png"))
end

-- from_alpha(src, {invert=, threshold=, feather=}) -> Image | nil, err
-- Keeps a picture's own alpha channel (say a WebP or PNG cut-out) as the
-- mask, re-encoded as the PNG the service wants.
function M.from_alpha(src, o)
  o = gray_opts(o, "from_alpha")
  local px, w, h, _, name = image.pixels(src, "mask")
  if not px then return nil, w end
  -- use_alpha maps transparent to "edit": the same alpha comes out.
  return as_image(core.mask_from_gray(px, w, h, { use_alpha = true, invert = o.invert, threshold = o.threshold,
    feather = o.feather }), w, h, name and (image.stem(name) .. "-mask.png"))
end

-- check(mask, base [, {model=, provider=, limits=}]) -> report | nil, err (err.report)
-- Every service rule for a mask, plus coverage: the fraction of pixels with
-- alpha 0. An all-opaque or all-transparent mask is a warning in
-- report.warnings, not an error.
function M.check(mask, base, o)
  o = o or {}
  local r = rules.for_model(o.model or "gpt-image-2", o.limits, o.provider).mask or rules.GENERIC_MASK
  local minfo, err = image.inspect(mask)
  if not minfo then return nil, err end
  local report = { format = minfo.format, width = minfo.width, height = minfo.height, has_alpha = minfo.has_alpha,
    bytes = minfo.bytes, problems = {}, warnings = {} }
  local function problem(msg) report.problems[#report.problems + 1] = msg end
  if r.format and minfo.format ~= r.format then problem("a mask must be a PNG, not " .. minfo.format) end
  if r.alpha and not minfo.has_alpha then problem("a mask needs an alpha channel (alpha 0 marks the area to edit)") end
  if base ~= nil then
    local binfo, berr = image.inspect(base)
    if not binfo then return nil, berr end
    if r.same_size and (binfo.width ~= minfo.width or binfo.height ~= minfo.height) then
      problem(string.format("the mask is %dx%d but the base image is %dx%d", minfo.width, minfo.height,
        binfo.width, binfo.height))
    end
  end
  if r.max_bytes and minfo.bytes > r.max_bytes then
    problem(string.format("the mask is %s, over the %s limit", rules.mb(minfo.bytes), rules.mb(r.max_bytes)))
  end
  if minfo.accepted then
    local px = image.pixels(mask, "mask")
    if px then
      local clear, solid, total = core.mask_stats(px)
      report.transparent, report.opaque, report.partial = clear, solid, total - clear - solid
      report.coverage = clear / total
      if not minfo.has_alpha or clear == 0 and solid == total then
        report.warnings[#report.warnings + 1] = "the mask is fully opaque: nothing would be edited"
      elseif solid == 0 and clear == total then
        report.warnings[#report.warnings + 1] = "the mask is fully transparent: the whole image would be edited"
      end
    end
  end
  report.ok = #report.problems == 0
  if not report.ok then
    return nil, errors.new("invalid_request", "mask: " .. report.problems[1], { param = "mask", report = report })
  end
  return report
end

-- ---- masks that hold ----
-- The service takes a mask as a soft guide and may redraw the whole
-- picture. compare() says how far an answer strayed; preserve() puts image
-- 1 back wherever the mask keeps.

-- The width of the seam, in pixels, that preserve blends inside the edit area.
M.FEATHER = 4
-- A pixel whose largest channel difference (0..255) is at most this counts
-- as unchanged: the measure of vercel/ai #14360 ("changed substantially").
M.TOLERANCE = 30
-- The drift past which a client warns (on_warning), unless preserve is on.
M.DRIFT_WARNING = 0.10

-- The quality a JPEG or WebP composite is encoded at: the request's
-- output_compression, else 100 (the service's default).
function M._quality(output_compression)
  return math.max(1, math.min(math.floor(tonumber(output_compression) or 100), 100))
end

local function three(answer, base, mask)
  local a, an = image.bytes_of(answer, "answer")
  if not a then return nil, an end
  local b, bn = image.bytes_of(base, "base")
  if not b then return nil, bn end
  local m, mn = image.bytes_of(mask, "mask")
  if not m then return nil, mn end
  return a, b, m
end

local function inpaint(answer, base, mask, o, preserve, fn)
  if o ~= nil and type(o) ~= "table" then error("bad argument #4 to '" .. fn .. "' (table expected)", 3) end
  o = o or {}
  for k, hi in pairs { feather = 256, tolerance = 255, quality = 100 } do
    local v, lo = o[k], k == "quality" and 1 or 0
    if v ~= nil and (not compat.is_integer(v) or v < lo or v > hi) then
      error(string.format("bad option '%s' (a whole number from %d to %d expected)", k, lo, hi), 3)
    end
  end
  local a, b, m = three(answer, base, mask)
  if not a then return nil, b end
  -- An answer decoded already (decode = "rgba") is not decoded again.
  local px = image.is(answer) and (rawget(answer, "pixels") or rawget(answer, "buffer")) or nil
  local r, msg, reason = core.inpaint(a, b, m, { tolerance = o.tolerance or M.TOLERANCE, feather = o.feather or M.FEATHER,
    quality = o.quality, preserve = preserve, max_pixels = image.max_pixels, max_bytes = image.max_decode_bytes,
    answer_rgba = px, width = px and answer.width, height = px and answer.height, keep_rgba = o.pixels == true })
  if not r then return nil, errors.new("invalid_request", msg, { param = "mask", reason = reason }) end
  return M._compared(answer, r)
end

-- _compared(answer, r) -> r with its drift and spill: an inpaint's figures,
-- made here or by a decoder thread (deliver.lua).
function M._compared(_, r)
  r.drift = r.keep > 0 and r.drifted / r.keep or 0
  r.spill = r.edit > 0 and r.unchanged / r.edit or 0
  return r
end

-- compare(answer, base, mask [, {tolerance = 30}]) -> report | nil, err
-- report.drift: the share of the area the mask keeps (alpha > 0) whose
-- pixels changed past the tolerance; report.spill: the share of the area to
-- edit (alpha 0) left unchanged. Image 1 (base) and the mask are scaled to
-- the answer's size when theirs differ (report.scaled). Also keep, edit,
-- drifted, unchanged (pixel counts), width, height.
function M.compare(answer, base, mask, o)
  return inpaint(answer, base, mask, o, false, "compare")
end

-- The Image fields a composite takes over from the service's picture.
local CARRIED = { usage = true, url = true, model = true, created = true, request_id = true, revised_prompt = true,
  cost = true, more = true }

-- preserve(answer, base, mask [, {feather = 4, tolerance = 30, quality = 90, pixels = false}]) -> Image | nil, err
-- The answer composited onto image 1: the service's pixels where the mask
-- edits, image 1's wherever it keeps (exactly, when the sizes match), with
-- a seam of `feather` pixels blended inside the edit area. In the answer's
-- format (quality for jpeg and webp). img.raw is the answer as it came;
-- img.mask_drift and img.mask_spill are its figures; img.preserved =
-- {feather=, scaled=}. With pixels = true the composite comes with its
-- img.pixels when it has them at no cost (a PNG: what was encoded).
function M.preserve(answer, base, mask, o)
  local r, err = inpaint(answer, base, mask, o, true, "preserve")
  if not r then return nil, err end
  return M._preserved(answer, r, o)
end

-- _preserved(answer, r, o) -> the composite's Image from an inpaint made
-- with preserve, here or by a decoder thread (its pixels then come as
-- r.buffer, no copy).
function M._preserved(answer, r, o)
  M._compared(answer, r)
  local fields = { mask_drift = r.drift, mask_spill = r.spill,
    preserved = { feather = (o and o.feather) or M.FEATHER, scaled = r.scaled } }
  if image.is(answer) then
    fields.raw = answer
    for k in pairs(CARRIED) do fields[k] = answer[k] end
    if answer.more then -- a list of its own: its entries may be composited in turn
      fields.more = {}
      for i, v in ipairs(answer.more) do fields.more[i] = v end
    end
  end
  local img, msg = image.from_bytes(r.bytes, fields)
  if not img then return nil, errors.new("invalid_request", "the composite: " .. tostring(msg), { param = "mask" }) end
  if r.rgba then img.pixels = r.rgba end
  if r.buffer then img.buffer = r.buffer end
  return img
end

return M
