-- imgedit: edit and fuse images through OpenAI-compatible image APIs.
-- The public face of the library; the C core is imgedit.core.
local core = require "imgedit.core"
local client = require "imgedit.client"
local errors = require "imgedit.errors"
local image = require "imgedit.image"
local rules = require "imgedit.rules"

local M = {
  _VERSION = "imgedit " .. core.version,
  version = core.version,
  new = client.new,
  defaults = client.defaults,
  open = image.open,
  inspect = image.inspect,
  rules = rules.api,
  errors = errors,
  is_image = image.is,
  is_error = errors.is,
}

-- The helpers load on first use: a script that only edits pays for none.
local lazy = {
  pipeline = function() return require("imgedit.pipeline").new end,
  mask = function() return require "imgedit.mask" end,
  prices = function() return require "imgedit.prices" end,
  sheet = function() return require "imgedit.sheet" end,
  fit = function() return require "imgedit.fit" end,
  batch = function() return require("imgedit.batch").run end,
}
setmetatable(M, { __index = function(t, k)
  local load = lazy[k]
  if not load then return nil end
  local v = load()
  rawset(t, k, v)
  return v
end })

-- from_bytes(bytes [, filename]) -> Image | nil, err
function M.from_bytes(bytes, filename)
  if type(bytes) ~= "string" then error("bad argument #1 to 'from_bytes' (string expected)", 2) end
  local img, msg = image.from_bytes(bytes, { filename = filename })
  if not img then return nil, errors.new("invalid_request", msg, { param = "bytes" }) end
  return img
end

return M
