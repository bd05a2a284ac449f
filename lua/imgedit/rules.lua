-- The service's rules, one table per model, checked before a byte is sent.
-- A client can override any entry (`limits = {max_images = 16}`); a model
-- that is not listed gets only the generic checks, so new models work
-- without a release.
local compat = require "imgedit.compat"
local M = {}

local MB = 1024 * 1024

local ENUM_QUALITY = { "low", "medium", "high", "auto" }
local ENUM_FORMAT = { "png", "jpeg", "webp" }
local ENUM_BACKGROUND = { "auto", "opaque" }

-- The seeds' gateway (provider "apiyi"): DESIGN.md and shared/seeds/.
local APIYI = {
  ["gpt-image-2"] = {
    min_images = 1, max_images = 5, max_image_bytes = 10 * MB,
    mask = { format = "png", alpha = true, same_size = true, max_bytes = 50 * MB },
    rejected = { input_fidelity = "gpt-image-2 always uses high input fidelity; do not send input_fidelity" },
    enums = { quality = ENUM_QUALITY, output_format = ENUM_FORMAT, background = ENUM_BACKGROUND },
    size = { multiple = 16, max_edge = 3840, max_ratio = 3, min_pixels = 655360, max_pixels = 8294400 },
    compression_formats = { jpeg = true, webp = true },
    integers = { partial_images = { 0, 3 } },
    booleans = { stream = true },
    response_formats = {}, -- always base64: response_format is not sent
    images_per_answer = 1,
  },
  ["gpt-image-2-all"] = {
    min_images = 1, max_image_bytes = 10 * MB,
    response_formats = { url = true, b64_json = true },
    images_per_answer = 1,
  },
}

-- OpenAI (provider "openai"); the sources are quoted in docs/sources/providers.md.
-- [PY-EDIT] openai-python src/openai/types/image_edit_params.py: "each image
-- should be a png, webp, or jpg file less than 50MB. You can provide up to 16
-- images." Mask: "Must be a valid PNG file, less than 4MB, and have the same
-- dimensions as image." Prompt: "1000 characters for dall-e-2, and 32000
-- characters for the GPT image models." n: "Must be between 1 and 10."
local function gpt_image(extra)
  local r = {
    min_images = 1, max_images = 16, max_image_bytes = 50 * MB - 1, max_prompt = 32000,
    mask = { format = "png", alpha = true, same_size = true, max_bytes = 4 * MB - 1 },
    enums = { quality = { "low", "medium", "high", "auto", "standard" }, output_format = ENUM_FORMAT,
      background = { "transparent", "opaque", "auto" }, input_fidelity = { "high", "low" },
      -- [PY-EDIT] size: the fixed sizes before gpt-image-2
      size = { "1024x1024", "1536x1024", "1024x1536", "auto" } },
    compression_formats = { jpeg = true, webp = true },
    integers = { partial_images = { 0, 3 }, n = { 1, 10 } },
    booleans = { stream = true },
    response_formats = {}, -- "GPT image models always return base64-encoded images"
  }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

-- gpt-image-2, [GUIDE] "Size constraints": edge <= 3840, multiples of 16,
-- ratio <= 3:1, 655,360 to 8,294,400 pixels; "For gpt-image-2, omit this
-- parameter" (input_fidelity); [PY-EDIT] "gpt-image-2 ... do not support
-- transparent backgrounds".
local GPT_IMAGE_2 = gpt_image {
  size = { multiple = 16, max_edge = 3840, max_ratio = 3, min_pixels = 655360, max_pixels = 8294400 },
  rejected = { input_fidelity = "gpt-image-2 processes every input at high fidelity; do not send input_fidelity" },
  enums = { quality = ENUM_QUALITY, output_format = ENUM_FORMAT, background = ENUM_BACKGROUND },
}

-- [DEPR] as quoted in docs/sources/providers.md: dall-e-2 and dall-e-3 shut
-- down on 2026-05-12, replaced by gpt-image-1 and gpt-image-1-mini;
-- gpt-image-1-mini, gpt-image-1.5 and chatgpt-image-latest shut down on
-- 2026-12-01 (one crawl of the deprecations page).
local OPENAI = {
  ["gpt-image-2"] = GPT_IMAGE_2,
  ["gpt-image-2-2026-04-21"] = GPT_IMAGE_2,
  ["gpt-image-1.5"] = gpt_image { shutdown = { date = "2026-12-01", replacement = "gpt-image-2" } },
  ["gpt-image-1"] = gpt_image(),
  ["gpt-image-1-mini"] = gpt_image {
    rejected = { input_fidelity = "gpt-image-1-mini does not support input_fidelity" },
    shutdown = { date = "2026-12-01", replacement = "gpt-image-2" } },
  ["chatgpt-image-latest"] = gpt_image { shutdown = { date = "2026-12-01", replacement = "gpt-image-2" } },
  -- [PY-EDIT] "For dall-e-2, you can only provide one image, and it should be
  -- a square png file less than 4MB."
  ["dall-e-2"] = { retired = { date = "2026-05-12", replacement = "gpt-image-1 or gpt-image-1-mini" } },
  ["dall-e-3"] = { retired = { date = "2026-05-12", replacement = "gpt-image-1 or gpt-image-1-mini" } },
}

-- Rules by provider; "compatible" services get the generic checks only.
M.providers = { apiyi = APIYI, openai = OPENAI, azure = OPENAI, compatible = {} }

-- imgedit.rules: the gateway's table, as before providers.
M.models = APIYI

-- The generic checks every model gets.
local GENERIC = { min_images = 1 }

-- for_model(model, overrides [, provider]) -> a merged copy
function M.for_model(model, overrides, provider)
  local models = M.providers[provider or "apiyi"] or {}
  local base = models[model] or GENERIC
  local r = {}
  for k, v in pairs(base) do r[k] = v end
  for k, v in pairs(overrides or {}) do r[k] = v end
  return r
end

local function mb(n)
  if n < MB / 10 then return string.format("%d bytes", n) end
  return string.format("%.1f MB", n / MB)
end
M.mb = mb

local function limit_mb(n)
  return (n % MB == 0 and n > 0) and string.format("%d MB", compat.idiv(n, MB)) or mb(n)
end

local function one_of(v, list)
  for _, x in ipairs(list) do
    if v == x then return true end
  end
  return false
end

-- check_size(size, rule) -> nil | message
local function check_size(size, s)
  if size == "auto" then return nil end
  local w, h = tostring(size):match("^(%d+)x(%d+)$")
  w, h = tonumber(w), tonumber(h)
  if not w then return "size must be 'auto' or WIDTHxHEIGHT, got '" .. tostring(size) .. "'" end
  if w % s.multiple ~= 0 or h % s.multiple ~= 0 then
    return string.format("size %dx%d: width and height must be multiples of %d", w, h, s.multiple)
  end
  if math.max(w, h) > s.max_edge then
    return string.format("size %dx%d: the long edge exceeds %d", w, h, s.max_edge)
  end
  if math.max(w, h) > s.max_ratio * math.min(w, h) then
    return string.format("size %dx%d: aspect ratio beyond %d:1", w, h, s.max_ratio)
  end
  if w * h < s.min_pixels or w * h > s.max_pixels then
    return string.format("size %dx%d: %d pixels, outside %d to %d", w, h, w * h, s.min_pixels, s.max_pixels)
  end
end

-- check(rules, kind, fields, images, mask) -> nil | message, param [, index]
-- `fields` are the text fields; `images` and `mask` carry `info` and `label`.
function M.check(r, kind, fields, images, mask)
  if r.retired then
    return string.format("%s was shut down on %s; use %s", fields.model, r.retired.date, r.retired.replacement), "model"
  end
  if type(fields.prompt) ~= "string" or fields.prompt == "" then
    return "prompt is required", "prompt"
  end
  if r.max_prompt and #fields.prompt > r.max_prompt then
    return string.format("the prompt is %d characters; %s takes at most %d", #fields.prompt, fields.model, r.max_prompt),
      "prompt"
  end
  if kind == "edit" then
    if #images < (r.min_images or 1) then
      return "at least " .. (r.min_images or 1) .. " image is required", "images"
    end
    if r.max_images and #images > r.max_images then
      return string.format("%d images given; %s accepts at most %d", #images, fields.model, r.max_images), "images"
    end
    for i, im in ipairs(images) do
      if r.max_image_bytes and im.info.bytes > r.max_image_bytes then
        return string.format("%s: %s exceeds the %s limit", im.label, mb(im.info.bytes), limit_mb(r.max_image_bytes)),
          "images", i
      end
    end
    if mask and r.mask then
      local m, first = r.mask, images[1].info
      if m.format and mask.info.format ~= m.format then
        return string.format("%s: a mask must be a PNG, not %s", mask.label, mask.info.format), "mask"
      end
      if m.alpha and not mask.info.has_alpha then
        return mask.label .. ": a mask needs an alpha channel (alpha 0 marks the area to edit)", "mask"
      end
      if m.same_size and (mask.info.width ~= first.width or mask.info.height ~= first.height) then
        return string.format("%s: %dx%d does not match the first image's %dx%d", mask.label,
          mask.info.width, mask.info.height, first.width, first.height), "mask"
      end
      if m.max_bytes and mask.info.bytes > m.max_bytes then
        return string.format("%s: %s exceeds the %s limit", mask.label, mb(mask.info.bytes), limit_mb(m.max_bytes)), "mask"
      end
    end
  end
  for name, why in pairs(r.rejected or {}) do
    if fields[name] ~= nil then return why, name end
  end
  for name, list in pairs(r.enums or {}) do
    local v = fields[name]
    if v ~= nil and not one_of(v, list) then
      return string.format("%s must be one of %s, got '%s'", name, table.concat(list, ", "), tostring(v)), name
    end
  end
  for name, range in pairs(r.integers or {}) do
    local v = fields[name]
    if v ~= nil then
      local n = tonumber(v)
      if not n or n ~= math.floor(n) or n < range[1] or n > range[2] then
        return string.format("%s must be an integer from %d to %d", name, range[1], range[2]), name
      end
    end
  end
  for name in pairs(r.booleans or {}) do
    local v = fields[name]
    if v ~= nil and v ~= "true" and v ~= "false" then return name .. " must be true or false", name end
  end
  if r.size and r.size.multiple and fields.size ~= nil then
    local msg = check_size(fields.size, r.size)
    if msg then return msg, "size" end
  end
  if r.compression_formats and fields.output_compression ~= nil then
    local c = tonumber(fields.output_compression)
    if not c or c ~= math.floor(c) or c < 0 or c > 100 then
      return "output_compression must be an integer from 0 to 100", "output_compression"
    end
    if not r.compression_formats[fields.output_format or "png"] then
      return "output_compression applies only to jpeg and webp output", "output_compression"
    end
  end
  if r.response_formats and fields.response_format ~= nil and not r.response_formats[fields.response_format] then
    if next(r.response_formats) == nil then
      return fields.model .. " always answers with base64; response_format is not accepted", "response_format"
    end
    return "response_format must be url or b64_json", "response_format"
  end
  if r.images_per_answer and fields.n ~= nil and tonumber(fields.n) ~= r.images_per_answer then
    return string.format("n must be %d: the service returns one image per call", r.images_per_answer), "n"
  end
  return nil
end

return M
