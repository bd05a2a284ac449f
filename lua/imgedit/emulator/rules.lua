-- The service's rules, as the emulator applies them: its models, the checks
-- of fields, images and masks, the error answers' shape, and token usage.
-- From the contract (docs/architecture.md) and the vendor pages; it
-- shares no code with the client's
-- rules (imgedit/rules.lua), so each can be tested against the other.
local core = require "imgedit.core"
local cjson = require "cjson"

local R = {}

local MB = 1024 * 1024

-- Each provider's models as the emulator plays them, from the contract (docs/architecture.md), the
-- seeds and each provider's pages (docs/sources/providers.md). Limits are
-- the largest accepted value: "less than 50MB" is 50 MB - 1.
--   max_images, image_max, mask_max, max_prompt    counts and bytes
--   strict            the options are checked (else passed through)
--   sizes             a fixed list, else gpt-image-2's free WxH rule
--   fidelity          input_fidelity allowed (high/low), else refused
--   transparent       the output formats a transparent background takes
--   image_formats, output_formats, quality, max_n     the other checks
--   b64 "raw" | "dataurl", usage, response_formats, default_response
--   gone              the shutdown date: refused as the service does after it
--   edits = false     generation only
local FORMATS3 = { png = true, jpeg = true, webp = true }
local QUALITY4 = { low = true, medium = true, high = true, auto = true }
local QUALITY5 = { low = true, medium = true, high = true, auto = true, standard = true }
local FIXED = { ["1024x1024"] = true, ["1536x1024"] = true, ["1024x1536"] = true, auto = true }

local APIYI = {
  ["gpt-image-2"] = {
    max_images = 5, image_max = 10 * MB, mask_max = 50 * MB, strict = true, quality = QUALITY4, max_prompt = 32000,
    image_formats = FORMATS3, output_formats = FORMATS3, b64 = "raw", usage = true,
    response_formats = { b64_json = true },
  },
  ["gpt-image-2-all"] = {
    image_max = 10 * MB, b64 = "dataurl", usage = false, image_formats = FORMATS3,
    response_formats = { url = true, b64_json = true }, default_response = "url",
  },
}

local function gpt(extra)
  local m = {
    max_images = 16, image_max = 50 * MB - 1, mask_max = 4 * MB - 1, max_prompt = 32000, strict = true,
    sizes = FIXED, fidelity = true, transparent = { png = true, webp = true }, quality = QUALITY5,
    image_formats = FORMATS3, output_formats = FORMATS3, max_n = 10, b64 = "raw", usage = true,
    response_formats = { b64_json = true },
  }
  for k, v in pairs(extra) do m[k] = v end
  return m
end

local OPENAI = {
  ["gpt-image-2"] = gpt { sizes = false, fidelity = false, transparent = false, quality = QUALITY4 },
  ["gpt-image-2-2026-04-21"] = gpt { sizes = false, fidelity = false, transparent = false, quality = QUALITY4 },
  ["gpt-image-1.5"] = gpt { gone = "2026-12-01" },
  ["gpt-image-1.5-2025-12-16"] = gpt { gone = "2026-12-01" },
  ["gpt-image-1"] = gpt {},
  ["gpt-image-1-mini"] = gpt { fidelity = false, gone = "2026-12-01" },
  ["chatgpt-image-latest"] = gpt { gone = "2026-12-01" },
  ["dall-e-2"] = { gone = "2026-05-12" },
  ["dall-e-3"] = { gone = "2026-05-12", edits = false },
}

-- Azure: PNG or JPEG in, PNG or JPEG out, compression for JPEG only.
local AZURE = {}
for name, m in pairs(OPENAI) do
  local a = {}
  for k, v in pairs(m) do a[k] = v end
  if a.strict then
    a.image_formats, a.output_formats = { png = true, jpeg = true }, { png = true, jpeg = true }
    a.compression = { jpeg = true }
    a.transparent = a.transparent and { png = true }
  end
  AZURE[name] = a
end

-- Any other OpenAI-compatible service: every model name, one lenient
-- model (no limits it would not need), b64 answers, n pictures for n.
local ANY = { image_formats = FORMATS3, output_formats = FORMATS3, b64 = "raw", usage = true, max_n = 10,
  response_formats = { b64_json = true, url = true } }

R.PROVIDERS = { apiyi = APIYI, openai = OPENAI, azure = AZURE, compatible = setmetatable({}, {
  __index = function() return ANY end }) }

-- model(provider, name) -> the model's table, or nil
function R.model(provider, name)
  return R.PROVIDERS[provider or "apiyi"][name]
end

-- ---- error answers ----

function R.json_answer(status, t, headers)
  local h = headers or {}
  h["Content-Type"] = "application/json"
  return { status = status, body = cjson.encode(t), headers = h }
end

function R.fail(status, message, param, code, typ)
  return R.json_answer(status, { error = {
    message = message, type = typ or "invalid_request_error",
    param = param or cjson.null, code = code or cjson.null,
  } })
end

function R.invalid(message, param, code)
  return R.fail(400, message, param, code or "invalid_value")
end

local invalid = R.invalid

-- ---- fields, images, masks ----

function R.parse_size(s)
  local w, h = tostring(s):match("^(%d+)x(%d+)$")
  return tonumber(w), tonumber(h)
end

local function check_size(size)
  if size == nil or size == "auto" then return nil end
  local w, h = R.parse_size(size)
  if not w then return "Invalid size '" .. tostring(size) .. "': use 'auto' or WIDTHxHEIGHT" end
  if w % 16 ~= 0 or h % 16 ~= 0 then return "Invalid size: width and height must be multiples of 16" end
  if math.max(w, h) > 3840 then return "Invalid size: the longest edge must be at most 3840" end
  if math.max(w, h) > 3 * math.min(w, h) then return "Invalid size: the aspect ratio must be within 3:1" end
  local px = w * h
  if px < 655360 or px > 8294400 then
    return "Invalid size: total pixels must be between 655360 and 8294400"
  end
end

-- Checks shared by edits and generations.
function R.check_options(f, m)
  if type(f.prompt) == "string" and #f.prompt > 0 and not f.prompt:find("%S") then
    return invalid("Invalid 'prompt': the prompt must not be blank.", "prompt", "invalid_value")
  end
  if m.max_prompt and #f.prompt > m.max_prompt then
    return invalid(string.format("Invalid 'prompt': string too long. Expected a string with maximum length %d,"
      .. " but got a string with length %d instead.", m.max_prompt, #f.prompt), "prompt", "string_above_max_length")
  end
  if f.n ~= nil then
    local n, max = tonumber(f.n), m.max_n or 1
    if not n or n ~= math.floor(n) or n < 1 or n > max then
      return invalid(max == 1 and "n must be 1: this model returns one image per call"
        or string.format("Invalid 'n': must be an integer from 1 to %d", max), "n")
    end
  end
  if f.response_format ~= nil and not m.response_formats[tostring(f.response_format)] then
    return invalid("Invalid value for response_format: '" .. tostring(f.response_format) .. "'", "response_format")
  end
  if not m.strict then return nil end
  if f.partial_images ~= nil then
    local k = tonumber(f.partial_images)
    if not k or k ~= math.floor(k) or k < 0 or k > 3 then
      return invalid("partial_images must be an integer from 0 to 3", "partial_images")
    end
  end
  if f.stream ~= nil and not (f.stream == true or f.stream == false or f.stream == "true" or f.stream == "false") then
    return invalid("stream must be true or false", "stream")
  end
  if f.input_fidelity ~= nil and (not m.fidelity or (f.input_fidelity ~= "high" and f.input_fidelity ~= "low")) then
    return invalid(m.fidelity and "Invalid value for input_fidelity: use high or low"
      or "input_fidelity is not supported for this model", "input_fidelity", "unsupported_parameter")
  end
  local fmt = f.output_format or "png"
  if f.output_format ~= nil and not m.output_formats[tostring(f.output_format)] then
    return invalid("Invalid value for output_format: '" .. tostring(f.output_format) .. "'", "output_format")
  end
  if f.quality ~= nil and not m.quality[tostring(f.quality)] then
    return invalid("Invalid value for quality: '" .. tostring(f.quality) .. "'", "quality")
  end
  if f.background == "transparent" then
    if not m.transparent then return invalid("Transparent background is not supported for this model", "background") end
    if not m.transparent[fmt] then
      return invalid("Transparent background needs an output format that supports transparency", "background")
    end
  elseif f.background ~= nil and f.background ~= "auto" and f.background ~= "opaque" then
    return invalid("Invalid value for background: '" .. tostring(f.background) .. "'", "background")
  end
  if m.sizes then
    if f.size ~= nil and not m.sizes[tostring(f.size)] then
      return invalid("Invalid value for size: '" .. tostring(f.size) .. "'. Supported values are: '1024x1024',"
        .. " '1024x1536', '1536x1024', and 'auto'.", "size")
    end
  else
    local msg = check_size(f.size)
    if msg then return invalid(msg, "size") end
  end
  if f.output_compression ~= nil then
    local c = tonumber(f.output_compression)
    if not c or c ~= math.floor(c) or c < 0 or c > 100 then
      return invalid("output_compression must be an integer from 0 to 100", "output_compression")
    end
    if not (m.compression or { jpeg = true, webp = true })[fmt] then
      return invalid("output_compression is not supported for " .. fmt .. " output", "output_compression")
    end
  end
end

function R.check_image(p, i, m)
  local info, why = core.inspect(p.data, true)
  if not info then
    return nil, invalid(string.format("Invalid image file for image %d: %s", i, why), "image")
  end
  if not info.accepted or not m.image_formats[info.format] then
    local names = {}
    for k in pairs(m.image_formats) do names[#names + 1] = k end
    table.sort(names)
    return nil, invalid(string.format("Invalid image file for image %d: unsupported format %s; use %s",
      i, info.format, table.concat(names, ", ")), "image", "invalid_image_format")
  end
  if m.image_max and #p.data > m.image_max then
    return nil, invalid(string.format("Image %d is %d bytes, over the limit of %d bytes", i, #p.data, m.image_max),
      "image", "image_too_large")
  end
  local declared = p.type and p.type:lower():match("^[^;%s]+")
  if declared ~= info.mime then
    return nil, invalid(string.format("Invalid image file for image %d: content type '%s' does not match its %s data",
      i, tostring(p.type), info.format), "image", "invalid_image_format")
  end
  return info
end

function R.check_mask(mask, first, m)
  local info, why = core.inspect(mask.data, true)
  if not info then return invalid("Invalid mask: " .. why, "mask") end
  if info.format ~= "png" then return invalid("Invalid mask: must be a PNG image", "mask", "invalid_mask") end
  if not info.has_alpha then return invalid("Invalid mask: must have an alpha channel", "mask", "invalid_mask") end
  if info.width ~= first.width or info.height ~= first.height then
    return invalid(string.format("Invalid mask: %dx%d does not match the first image (%dx%d)",
      info.width, info.height, first.width, first.height), "mask", "invalid_mask")
  end
  if #mask.data > m.mask_max then
    return invalid(string.format("Invalid mask: %d bytes, over the limit of %d bytes", #mask.data, m.mask_max), "mask",
      "image_too_large")
  end
end

-- ---- usage ----

-- Output tokens by quality for a 1024x1024 image, scaled by area (the vendor's
-- published gpt-image figures); input tokens from the prompt and images.
local OUT_TOKENS = { low = 272, medium = 1056, high = 4160, auto = 1056 }

function R.usage(prompt, images, w, h, quality, n)
  local text = math.ceil(#(prompt or "") / 4)
  local img = 0
  for _, info in ipairs(images) do
    -- the vendor's vision rule: fit 2048x2048, short side to 768, 512 tiles
    local w, h = info.width or 512, info.height or 512
    local s = math.min(1, 2048 / math.max(w, h))
    w, h = w * s, h * s
    s = math.min(1, 768 / math.min(w, h))
    w, h = w * s, h * s
    img = img + 65 + 129 * math.ceil(w / 512) * math.ceil(h / 512)
  end
  local out = math.floor((OUT_TOKENS[quality or "auto"] or 1056) * (w * h) / (1024 * 1024) + 0.5) * (n or 1)
  return {
    input_tokens = text + img, output_tokens = out, total_tokens = text + img + out,
    input_tokens_details = { text_tokens = text, image_tokens = img },
  }
end

return R
