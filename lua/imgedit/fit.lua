-- Fitting an input to a limit: downscale (stb_image_resize) and re-encode
-- so it fits the service's 10 MB or a size the caller chooses. Smaller
-- inputs upload faster and cost fewer vision tokens.
local compat = require "imgedit.compat"
local core = require "imgedit.core"
local errors = require "imgedit.errors"
local image = require "imgedit.image"

local MB = 1024 * 1024

local function encode(px, w, h, fmt, quality)
  return core.encode(px, w, h, fmt, quality)
end

local function name_for(name, fmt)
  return image.stem(name or "image") .. "." .. image.EXT[fmt]
end

-- fit(src, {max_edge=, max_bytes=10 MB, format=, quality=90, mask=}) -> Image [, mask Image] | nil, err
-- Keeps the aspect ratio. A mask given with the base is resized to exactly
-- the base's new size, so the pair still matches. An input that already fits
-- comes back as it is, without decoding.
return function(src, o)
  o = o or {}
  if type(o) ~= "table" then error("bad argument #2 to 'fit' (table expected)", 2) end
  local max_bytes = o.max_bytes or 10 * MB
  local max_edge = o.max_edge
  if max_edge ~= nil and (not compat.is_integer(max_edge) or max_edge < 1) then
    error("bad option 'max_edge' (a positive whole number expected)", 2)
  end
  local info, err = image.inspect(src)
  if not info then return nil, err end
  if not info.accepted then
    return nil, errors.new("invalid_request", "cannot fit " .. info.format .. " images", { param = "src" })
  end
  local fmt = o.format or info.format
  if not image.EXT[fmt] then error("bad option 'format' (png, jpeg or webp expected)", 2) end
  local quality = o.quality or 90
  local fits = info.bytes <= max_bytes and (not max_edge or math.max(info.width, info.height) <= max_edge)
    and fmt == info.format
  local bytes_in, name = image.bytes_of(src, "src")
  if not bytes_in then return nil, name end
  local out
  if fits then
    out = image.from_bytes(bytes_in, { filename = name })
  else
    local px, w, h = image.pixels({ bytes = bytes_in, filename = name }, "src")
    if not px then return nil, w end
    local scale = max_edge and math.min(1, max_edge / math.max(w, h)) or 1
    local bytes, nw, nh
    for _ = 1, 12 do
      nw, nh = math.max(1, math.floor(w * scale + 0.5)), math.max(1, math.floor(h * scale + 0.5))
      local scaled = (nw == w and nh == h) and px or core.resize(px, w, h, nw, nh)
      bytes = encode(scaled, nw, nh, fmt, quality)
      if #bytes <= max_bytes then break end
      -- bytes grow about with the pixel count: shrink the area to match, with a margin
      scale = scale * math.sqrt(max_bytes / #bytes) * 0.95
      bytes = nil
    end
    if not bytes then
      return nil, errors.new("invalid_request", string.format("cannot fit the image under %d bytes", max_bytes),
        { param = "max_bytes" })
    end
    out = image.from_bytes(bytes, { filename = name_for(name, fmt) })
  end
  if o.mask == nil then return out end
  local mpx, mw, mh, mbytes, mname = image.pixels(o.mask, "mask")
  if not mpx then return nil, mw end
  if mw == out.width and mh == out.height then
    return out, image.from_bytes(mbytes, { filename = mname })
  end
  local resized = core.resize(mpx, mw, mh, out.width, out.height)
  return out, image.from_bytes(core.encode(resized, out.width, out.height, "png"), { filename = name_for(mname, "png") })
end
