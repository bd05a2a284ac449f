-- Image objects: bytes plus what the header says about them. The SHA-256s
-- are computed on first use, since most images are never hashed: sha256 of
-- the bytes, picture_sha256 of the picture without its lineage (what cache
-- keys and lineage parents name).
local core = require "imgedit.core"
local errors = require "imgedit.errors"
local lineage = require "imgedit.lineage"

local M = {}

local Image = {}
M.Image = Image

local methods = {}

Image.__index = function(self, k)
  if k == "sha256" then
    local h = core.sha256(rawget(self, "bytes"))
    rawset(self, "sha256", h)
    return h
  elseif k == "picture_sha256" then
    local h = lineage.sha256(rawget(self, "bytes"))
    rawset(self, "picture_sha256", h)
    return h
  elseif k == "pixels" then
    -- A string of the decoder's buffer, made on first use: code that reads
    -- img.buffer never pays for the copy.
    local buf = rawget(self, "buffer")
    if buf and #buf > 0 then
      local s = buf:string()
      rawset(self, "pixels", s)
      return s
    end
    return nil
  end
  return methods[k]
end

function Image.__tostring(self)
  return string.format("imgedit.Image(%s %dx%d, %d bytes)", self.format, self.width or 0,
    self.height or 0, #self.bytes)
end

local EXT = { png = "png", jpeg = "jpg", webp = "webp" }
M.EXT = EXT

-- The format a file name asks for, from its extension; nil for others.
local FORMAT_OF_EXT = { png = "png", jpg = "jpeg", jpeg = "jpeg", webp = "webp" }

function M.format_of_name(path)
  local ext = tostring(path):match("%.(%w+)$")
  return ext and FORMAT_OF_EXT[ext:lower()]
end

-- A file name without its extension.
function M.stem(name)
  return (name:gsub("%.[%w]+$", ""))
end

-- The bytes in another format: decoded and encoded again (JPEG has no
-- alpha: a transparent pixel keeps its colour and loses its transparency).
local function convert(img, fmt, quality)
  local px, w, h = core.decode(img.bytes, M.max_pixels, M.max_decode_bytes)
  if not px then return nil, w, h end
  local out, msg = core.encode(px, w, h, fmt, quality or 90)
  -- The picture's metadata (its lineage) survives the new format.
  local xmp = out and core.xmp_read(img.bytes)
  if xmp then out = core.xmp_embed(out, xmp) or out end
  return out, msg
end

-- save(path [, {quality = 90}]) -> path | nil, err. Atomic: a temp file in
-- the same folder, fsync, rename. A name that asks for another format
-- (x.jpg for PNG bytes) gets the picture converted to it: a file's name and
-- its bytes always agree. Other names get the bytes as they are.
function methods:save(path, opts)
  if type(path) ~= "string" then error("bad argument #1 to 'save' (path expected)", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("bad argument #2 to 'save' (table expected)", 2) end
  local bytes = self.bytes
  local want = M.format_of_name(path)
  if want and want ~= self.format then
    local out, msg, reason = convert(self, want, opts and opts.quality)
    if not out then
      return nil, errors.new("invalid_request", string.format("%s: cannot convert the %s picture to %s: %s", path,
        self.format, want, tostring(msg)), { param = "path", reason = reason })
    end
    bytes = out
  end
  local ok, msg = core.write_atomic(path, bytes)
  if not ok then
    return nil, errors.new("io", path .. ": " .. msg, { param = "path" })
  end
  return path
end

-- rgba([max_pixels [, max_bytes]]) -> pixels, width, height | nil, err: the picture as
-- RGBA8 (width * height * 4 bytes, rows top to bottom). A picture asked
-- for with decode = "rgba" has them already in img.buffer, decoded off the
-- caller's thread (img.pixels is its string, made on first use); any other
-- is decoded here, on the calling thread, once: the result stays in
-- img.pixels (set it to nil to free it).
function methods:rgba(max_pixels, max_bytes)
  local px = self.pixels
  if px then return px, self.width, self.height end
  local w, h
  px, w, h = core.decode(self.bytes, max_pixels or M.max_pixels, max_bytes or M.max_decode_bytes)
  if not px then
    -- a picture the service made and sent broken, or one of the caller's
    return nil, errors.new(rawget(self, "model") and "protocol" or "invalid_request",
      "cannot decode the picture: " .. tostring(w), { reason = h })
  end
  self.pixels, self.width, self.height = px, w, h
  return px, w, h
end

function M.is(v) return getmetatable(v) == Image end

-- from_bytes(bytes [, fields]) -> Image | nil, message, reason
-- What an Image's header said, kept with the bytes it was read from, so
-- that sending the Image does not read the header again (weak: it goes
-- with the Image).
local HEADERS = setmetatable({}, { __mode = "k" })

function M.from_bytes(bytes, fields)
  local info, msg, reason = core.inspect(bytes, true)
  if not info then return nil, msg, reason end
  local img = setmetatable({
    bytes = bytes, format = info.format, width = info.width, height = info.height,
    channels = info.channels, has_alpha = info.has_alpha,
  }, Image)
  for k, v in pairs(fields or {}) do img[k] = v end
  HEADERS[img] = { bytes = bytes, info = info }
  return img
end

-- header_of(img) -> what core.inspect said of img's bytes, or nil when
-- they were replaced since.
function M.header_of(img)
  local h = HEADERS[img]
  if h and rawequal(h.bytes, rawget(img, "bytes")) then return h.info end
end

local function basename(path) return (path:match("([^/]*)$")) end
M.basename = basename

-- open(path) -> Image | nil, err
function M.open(path)
  if type(path) ~= "string" then error("bad argument #1 to 'open' (path expected)", 2) end
  local bytes, msg = core.read_file(path)
  if not bytes then
    return nil, errors.new("invalid_request", path .. ": " .. msg, { param = "path" })
  end
  local img, why = M.from_bytes(bytes, { filename = basename(path), path = path })
  if not img then
    return nil, errors.new("invalid_request", path .. ": " .. why, { param = "path" })
  end
  return img
end

-- bytes_of(src) -> bytes, name | nil, err; src is a path, an Image or {bytes=...}.
function M.bytes_of(src, what)
  if type(src) == "string" then
    local bytes, msg = core.read_file(src)
    if not bytes then return nil, errors.new("invalid_request", src .. ": " .. msg, { param = what }) end
    return bytes, basename(src)
  elseif type(src) == "table" and type(src.bytes) == "string" then
    return src.bytes, src.filename
  end
  error(string.format("bad argument '%s' (path, Image or {bytes=...} expected, got %s)", what, type(src)), 3)
end

-- Decoding is bounded: a picture whose header declares more than this many
-- pixels is refused before any pixel memory is allocated.
M.max_pixels = 50000000

-- ... and so is the memory a decode takes at its peak (bit depth and
-- channels count: a 16-bit PNG of 7000x7000 weighs 381 KB and takes ~1 GB).
-- 256 MiB: the largest picture a provider makes (3840x2160) needs ~66 MB
-- as an 8-bit RGBA PNG, a 24 MP camera JPEG as an edit input ~170 MB.
M.max_decode_bytes = 268435456

-- pixels(src) -> rgba, w, h, bytes, name | nil, err (decodes; use only when a
-- header cannot answer the question).
function M.pixels(src, what, max_pixels)
  local bytes, name = M.bytes_of(src, what)
  if not bytes then return nil, name end
  local px, w, h = core.decode(bytes, max_pixels or M.max_pixels, M.max_decode_bytes)
  if not px then
    return nil, errors.new("invalid_request", (name and name .. ": " or "") .. w, { param = what, reason = h })
  end
  return px, w, h, bytes, name
end

-- inspect(src) -> info | nil, err; src is a path, an Image or {bytes=...}.
function M.inspect(src)
  local info, msg
  if type(src) == "string" then
    info, msg = core.inspect(src)
    if not info then return nil, errors.new("invalid_request", src .. ": " .. msg, { param = "path" }) end
    info.stamp, info.racy = nil, nil -- the transport's, for the bytes sent
  elseif type(src) == "table" and type(src.bytes) == "string" then
    info, msg = core.inspect(src.bytes, true)
    if not info then return nil, errors.new("invalid_request", msg, { param = "bytes" }) end
  else
    error("bad argument #1 to 'inspect' (path, Image or {bytes=...} expected)", 2)
  end
  -- How the picture was made (lineage.lua), read on first use only: the
  -- other facts come from the header, and fit, mask checks and the CLI
  -- inspect whole files that they never ask the lineage of.
  return setmetatable(info, { __index = function(t, k)
    if k ~= "lineage" then return nil end
    local bytes = type(src) == "string" and core.read_file(src) or src.bytes
    local l, dropped = false, nil
    if bytes then l, dropped = lineage.read(bytes) end
    rawset(t, "lineage", l or nil)
    -- fields of the wrong type, left out (the picture may come from anywhere)
    if dropped and #dropped > 0 then rawset(t, "lineage_dropped", dropped) end
    return l or nil
  end })
end

-- What from_bytes reads from the bytes themselves.
local FROM_BYTES = { bytes = true, sha256 = true, picture_sha256 = true, format = true, width = true, height = true,
  channels = true, has_alpha = true }

-- with_lineage(img, record) -> a new Image whose bytes carry the record
-- (lineage.record; the other fields kept), or img itself if its format
-- cannot carry it.
function M.with_lineage(img, record)
  local bytes = core.xmp_embed(img.bytes, lineage.packet(record))
  if not bytes then return img end
  local fields = {}
  for k, v in pairs(img) do
    if not FROM_BYTES[k] then fields[k] = v end
  end
  return M.from_bytes(bytes, fields) or img
end

return M
