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

return M
