-- The service's rules, as the emulator applies them: its models, the checks
-- of fields, images and masks, the error answers' shape, and token usage.
-- From DESIGN.md and the vendor pages; it shares no code with the client's
-- rules (imgedit/rules.lua), so each can be tested against the other.
local core = require "imgedit.core"
local cjson = require "cjson"

local R = {}

local MB = 1024 * 1024

R.MODELS = {
  ["gpt-image-2"] = {
    max_images = 5, image_bytes = 10 * MB, mask_bytes = 50 * MB, strict = true,
    b64 = "raw", usage = true, response_formats = { b64_json = true },
  },
  ["gpt-image-2-all"] = {
    image_bytes = 10 * MB, b64 = "dataurl", usage = false,
    response_formats = { url = true, b64_json = true }, default_response = "url",
  },
}

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

local ENUMS = {
  quality = { low = true, medium = true, high = true, auto = true },
  output_format = { png = true, jpeg = true, webp = true },
  background = { auto = true, opaque = true },
}

-- Checks shared by edits and generations for the strict model.
function R.check_options(f, m)
  if f.n ~= nil and tonumber(f.n) ~= 1 then
    return invalid("n must be 1: this model returns one image per call", "n")
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
  if f.input_fidelity ~= nil then
    return invalid("input_fidelity is not supported for this model", "input_fidelity", "unsupported_parameter")
  end
  if f.background == "transparent" then
    return invalid("Transparent background is not supported for this model", "background")
  end
  for k, allowed in pairs(ENUMS) do
    if f[k] ~= nil and not allowed[tostring(f[k])] then
      return invalid("Invalid value for " .. k .. ": '" .. tostring(f[k]) .. "'", k)
    end
  end
  local msg = check_size(f.size)
  if msg then return invalid(msg, "size") end
  if f.output_compression ~= nil then
    local c = tonumber(f.output_compression)
    if not c or c ~= math.floor(c) or c < 0 or c > 100 then
      return invalid("output_compression must be an integer from 0 to 100", "output_compression")
    end
    local fmt = f.output_format or "png"
    if fmt ~= "jpeg" and fmt ~= "webp" then
      return invalid("output_compression applies only to jpeg and webp output", "output_compression")
    end
  end
end

function R.check_image(p, i, m)
  local info, why = core.inspect(p.data, true)
  if not info then
    return nil, invalid(string.format("Invalid image file for image %d: %s", i, why), "image")
  end
  if not info.accepted then
    return nil, invalid(string.format("Invalid image file for image %d: unsupported format %s; use png, jpeg or webp",
      i, info.format), "image", "invalid_image_format")
  end
  if m.image_bytes and #p.data > m.image_bytes then
    return nil, invalid(string.format("Image %d is %d bytes, over the limit of %d bytes", i, #p.data, m.image_bytes),
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
  if #mask.data > m.mask_bytes then return invalid("Invalid mask: over 50 MB", "mask", "image_too_large") end
end

-- ---- usage ----

-- Output tokens by quality for a 1024x1024 image, scaled by area (the vendor's
-- published gpt-image figures); input tokens from the prompt and images.
local OUT_TOKENS = { low = 272, medium = 1056, high = 4160, auto = 1056 }

function R.usage(prompt, images, w, h, quality)
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
  local out = math.floor((OUT_TOKENS[quality or "auto"] or 1056) * (w * h) / (1024 * 1024) + 0.5)
  return {
    input_tokens = text + img, output_tokens = out, total_tokens = text + img + out,
    input_tokens_details = { text_tokens = text, image_tokens = img },
  }
end

return R
