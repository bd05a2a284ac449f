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

-- The seeds' gateway (provider "apiyi"): shared/seeds/001 (gpt-image-2):
-- "Reference images (max 5). Each <= 10MB, formats: png/jpg/webp"; the mask
-- "Same size and format as original, <= 50MB"; "input_fidelity - gpt-image-2
-- forces high-fidelity; passing it returns 400"; sizes as OpenAI's guide.
-- shared/seeds/000 (gpt-image-2-all): "Recommended <= 10MB per image";
-- url or b64_json answers. Both answer one image per call (docs/architecture.md, "The contract").
local APIYI = {
  ["gpt-image-2"] = {
    -- the gateway serves OpenAI's model: its prompt limit is OpenAI's ([PY-EDIT])
    min_images = 1, max_images = 5, max_image_bytes = 10 * MB, max_prompt = 32000,
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
-- background: "If transparent, the output format needs to support
-- transparency, so it should be set to either png (default value) or webp."
local function gpt_image(extra)
  local r = {
    min_images = 1, max_images = 16, max_image_bytes = 50 * MB - 1, max_prompt = 32000,
    mask = { format = "png", alpha = true, same_size = true, max_bytes = 4 * MB - 1 },
    enums = { quality = { "low", "medium", "high", "auto", "standard" }, output_format = ENUM_FORMAT,
      background = { "transparent", "opaque", "auto" }, input_fidelity = { "high", "low" },
      -- [PY-EDIT] size: the fixed sizes before gpt-image-2
      size = { "1024x1024", "1536x1024", "1024x1536", "auto" } },
    compression_formats = { jpeg = true, webp = true },
    transparent_formats = { png = true, webp = true },
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
-- 2026-12-01 (one crawl of the deprecations page; its replacement column
-- names models the SDKs do not, so gpt-image-2 is named instead).
local DEC_2026 = { date = "2026-12-01", replacement = "gpt-image-2" }
-- The page named gpt-image-1 and gpt-image-1-mini for the DALL-E models, but
-- gpt-image-1-mini is itself shutting down, and OpenAI's own (Japanese)
-- gpt-image-1 page says it shut down on 2026-10-23: the advice is gpt-image-2.
-- gpt-image-1 is not refused, on that one page's word alone.
local MAY_2026 = { date = "2026-05-12", replacement = "gpt-image-2" }
local OPENAI = {
  ["gpt-image-2"] = GPT_IMAGE_2,
  ["gpt-image-2-2026-04-21"] = GPT_IMAGE_2,
  ["gpt-image-1.5"] = gpt_image { shutdown = DEC_2026 },
  ["gpt-image-1.5-2025-12-16"] = gpt_image { shutdown = DEC_2026 },
  ["gpt-image-1"] = gpt_image(),
  -- [PY-EDIT] input_fidelity: "unsupported for gpt-image-1-mini"
  ["gpt-image-1-mini"] = gpt_image {
    rejected = { input_fidelity = "gpt-image-1-mini does not support input_fidelity" }, shutdown = DEC_2026 },
  ["chatgpt-image-latest"] = gpt_image { shutdown = DEC_2026 },
  -- [PY-EDIT] "For dall-e-2, you can only provide one image, and it should be
  -- a square png file less than 4MB."; sizes 256x256, 512x512, 1024x1024.
  ["dall-e-2"] = {
    min_images = 1, max_images = 1, max_image_bytes = 4 * MB - 1, image_formats = { png = true }, square = true,
    max_prompt = 1000, enums = { size = { "256x256", "512x512", "1024x1024" } },
    mask = { format = "png", alpha = true, same_size = true, max_bytes = 4 * MB - 1 },
    integers = { n = { 1, 10 } }, response_formats = { url = true, b64_json = true }, shutdown = MAY_2026,
    -- [PY-EDIT] the JSON edit body: "Only supported for GPT image models"
    json_edits = false,
  },
  -- [CLI] generate: 4000 characters for dall-e-3; [PY-EDIT] edits name
  -- dall-e-2 or a GPT image model only.
  ["dall-e-3"] = { edits = false, max_prompt = 4000, images_per_answer = 1,
    enums = { size = { "1024x1024", "1792x1024", "1024x1792" }, quality = { "hd", "standard" },
      style = { "vivid", "natural" } },
    response_formats = { url = true, b64_json = true }, shutdown = MAY_2026 },
}

-- Azure OpenAI (provider "azure"): OpenAI's models, with the differences its
-- own pages state. [AZ-HOWTO] azure-ai-docs articles/ai-foundry/openai/how-to/dall-e.md:
-- "The input image must be less than 50 MB in size and must be a PNG or JPG
-- file."; output_format "Supported formats are PNG and JPEG ... WEBP images
-- aren't supported"; "DALL-E models don't support the Image Edit API".
-- [AZ-REF] output_compression: "only supported for gpt-image-1 series models
-- with the jpeg output format"; mask "less than 4MB". Azure's image count is
-- not documented: OpenAI's 16 is kept.
local function copy(t)
  if type(t) ~= "table" then return t end
  local r = {}
  for k, v in pairs(t) do r[k] = copy(v) end
  return r
end

local function on_azure(r)
  r = copy(r)
  if r.edits == false or r.max_images == 1 then return { edits = false, shutdown = r.shutdown, max_prompt = r.max_prompt } end
  r.image_formats = { png = true, jpeg = true }
  r.enums.output_format = { "png", "jpeg" }
  r.compression_formats = { jpeg = true }
  r.transparent_formats = { png = true }
  return r
end

local AZURE = {}
for name, r in pairs(OPENAI) do AZURE[name] = on_azure(r) end

-- Rules by provider. A service the library does not know ("compatible": a
-- loopback server, a company proxy, a self-hosted gateway) has no rules of
-- its own: a model it serves that OpenAI makes is checked by OpenAI's rules,
-- wherever it is served, and never by a gateway's stricter ones; any other
-- name gets the generic checks alone, so new models work at once.
M.providers = { apiyi = APIYI, openai = OPENAI, azure = AZURE, compatible = {} }

-- The generic checks every model gets.
local GENERIC = { min_images = 1 }

-- What any service takes as a mask (alpha 0 marks the area to edit), for
-- imgedit.mask.check where the model has no mask rules of its own.
M.GENERIC_MASK = { format = "png", alpha = true, same_size = true }

-- for_model(model, overrides [, provider]) -> a merged copy
function M.for_model(model, overrides, provider)
  local models = M.providers[provider or "apiyi"] or {}
  local base = models[model] or OPENAI[model] or GENERIC
  local r = {}
  for k, v in pairs(base) do r[k] = v end
  for k, v in pairs(overrides or {}) do r[k] = v end
  return r
end

-- Today's date, "YYYY-MM-DD" in UTC: shutdown dates are days.
function M.today() return os.date("!%Y-%m-%d") end

-- How many days before its shutdown a model starts to warn: OpenAI gives
-- image models "At least 3 months" of notice ([DEPR]).
M.WARN_DAYS = 90

local function days_until(date, today)
  local function t(d)
    local y, m, dd = d:match("^(%d+)-(%d+)-(%d+)$")
    return os.time { year = tonumber(y), month = tonumber(m), day = tonumber(dd), hour = 12 }
  end
  return math.floor((t(date) - t(today)) / 86400 + 0.5)
end

-- shutdown_warning(rules, model [, today]) -> message | nil: for a model whose
-- shutdown is near (and not yet past).
function M.shutdown_warning(r, model, today)
  local s = r.shutdown
  if not s then return nil end
  local left = days_until(s.date, today or M.today())
  if left <= 0 or left > M.WARN_DAYS then return nil end
  return string.format("%s shuts down on %s (in %d day%s); use %s", model, s.date, left, left == 1 and "" or "s",
    s.replacement)
end

local function mb(n)
  if n < MB / 10 then return string.format("%d bytes", n) end
  return string.format("%.1f MB", n / MB)
end
M.mb = mb

local function limit_mb(n)
  return (n % MB == 0 and n > 0) and string.format("%d MB", compat.idiv(n, MB)) or mb(n)
end

-- "jpeg, png": a set's names, sorted.
function M.list_of(set, last)
  local t = {}
  for k in pairs(set) do t[#t + 1] = k end
  table.sort(t)
  if last and #t > 1 then return table.concat(t, ", ", 1, #t - 1) .. last .. t[#t] end
  return table.concat(t, ", ")
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

-- check(rules, kind, fields, images, mask [, json]) -> nil | message, param [, index]
-- `fields` are the text fields; `images` and `mask` carry `info` and `label`
-- (no info: a picture by url or file id, which only the service sees).
-- json: the edit goes as the JSON body.
function M.check(r, kind, fields, images, mask, json)
  if r.shutdown and r.shutdown.date <= (M.today()) then
    return string.format("%s was shut down on %s; use %s", fields.model, r.shutdown.date, r.shutdown.replacement),
      "model"
  end
  if kind == "edit" and r.edits == false then
    return fields.model .. " does not edit images; it only generates them", "model"
  end
  if type(fields.prompt) ~= "string" or fields.prompt == "" then
    return "prompt is required", "prompt"
  end
  if not fields.prompt:find("%S") then -- every provider refuses it, after the upload
    return "the prompt is blank: say what to make", "prompt"
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
    if json and r.json_edits == false then
      return fields.model .. " takes edits only as multipart/form-data: give its pictures as files or bytes, not"
        .. " urls or file ids, and leave body unset", "body"
    end
    for i, im in ipairs(images) do
      local info = im.info
      if info and r.image_formats and not r.image_formats[info.format] then
        return string.format("%s: %s does not take %s images; use %s", im.label, fields.model, info.format,
          M.list_of(r.image_formats)), "images", i
      end
      if info and r.square and info.width ~= info.height then
        return string.format("%s: %s takes only square images, not %dx%d", im.label, fields.model, info.width,
          info.height), "images", i
      end
      if info and r.max_image_bytes and info.bytes > r.max_image_bytes then
        return string.format("%s: %s exceeds the %s limit", im.label, mb(info.bytes), limit_mb(r.max_image_bytes)),
          "images", i
      end
    end
    if mask and mask.info and r.mask then
      local m, first = r.mask, images[1].info
      if m.format and mask.info.format ~= m.format then
        return string.format("%s: a mask must be a PNG, not %s", mask.label, mask.info.format), "mask"
      end
      if m.alpha and not mask.info.has_alpha then
        return mask.label .. ": a mask needs an alpha channel (alpha 0 marks the area to edit)", "mask"
      end
      if m.same_size and first and (mask.info.width ~= first.width or mask.info.height ~= first.height) then
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
      return "output_compression applies only to " .. M.list_of(r.compression_formats, " and ") .. " output",
        "output_compression"
    end
  end
  if r.transparent_formats and fields.background == "transparent"
    and not r.transparent_formats[fields.output_format or "png"] then
    return string.format("a transparent background needs %s output, not %s", M.list_of(r.transparent_formats, " or "),
      fields.output_format), "background"
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

-- ---- asking what a provider and model accept ----

-- Where each provider's numbers come from (quoted in docs/sources/providers.md).
M.SOURCES = {
  apiyi = "the gateway's own API pages (api.apiyi.com)",
  openai = "openai-python src/openai/types/image_edit_params.py; developers.openai.com image-generation guide"
    .. " and deprecations",
  azure = "learn.microsoft.com Azure OpenAI how-to (dall-e.md) and REST reference 2025-04-01-preview;"
    .. " otherwise OpenAI's",
  compatible = "none of its own: any OpenAI-compatible service; OpenAI's rules for OpenAI's models (gpt-image-2,"
    .. " ...), only the generic checks (a prompt, one image or more) for other model names",
}

local function under(n)
  if (n + 1) % MB == 0 then return "under " .. limit_mb(n + 1) end
  return "at most " .. limit_mb(n)
end

-- describe(rules) -> { {name, text}, ... }: what a rule table accepts, in words.
function M.describe(r)
  local out = {}
  local function add(k, v) out[#out + 1] = { k, v } end
  if r.shutdown then
    add("shutdown", (r.shutdown.date <= M.today() and "shut down on " or "shuts down on ") .. r.shutdown.date
      .. "; use " .. r.shutdown.replacement)
  end
  if r.edits == false then
    add("edits", "none: generation only")
  else
    local t = r.max_images and string.format("%d to %d", r.min_images or 1, r.max_images)
      or string.format("%d or more", r.min_images or 1)
    t = t .. ", " .. (r.image_formats and M.list_of(r.image_formats, " or ") or "png, jpeg or webp")
    if r.square then t = t .. ", square" end
    if r.max_image_bytes then t = t .. ", each " .. under(r.max_image_bytes) end
    add("images", t)
    if r.mask then
      local m = r.mask
      add("mask", string.format("%s%s%s%s", m.format and m.format:upper() or "any format",
        m.alpha and " with an alpha channel" or "", m.same_size and ", the size of image 1" or "",
        m.max_bytes and (", " .. under(m.max_bytes)) or ""))
    else
      add("mask", "passed through unchecked")
    end
  end
  add("prompt", r.max_prompt and ("1 to " .. r.max_prompt .. " characters") or "required; no length limit known")
  local s = r.size
  if s and s.multiple then
    add("size", string.format("auto or WxH: multiples of %d, long edge at most %d, ratio within %d:1, %d to %d pixels",
      s.multiple, s.max_edge, s.max_ratio, s.min_pixels, s.max_pixels))
  end
  local seen, names = {}, {}
  for _, t in ipairs { r.enums or {}, r.integers or {}, r.rejected or {} } do
    for k in pairs(t) do
      if not seen[k] then seen[k], names[#names + 1] = true, k end
    end
  end
  if r.compression_formats then names[#names + 1] = "output_compression" end
  table.sort(names)
  for _, k in ipairs(names) do
    if r.rejected and r.rejected[k] then
      add(k, "refused: " .. r.rejected[k])
    elseif k == "output_compression" then
      add(k, "0 to 100, with " .. M.list_of(r.compression_formats, " or ") .. " output")
    elseif r.enums and r.enums[k] then
      local t = table.concat(r.enums[k], ", ")
      if k == "background" and r.transparent_formats and one_of("transparent", r.enums[k]) then
        t = t .. " (transparent needs " .. M.list_of(r.transparent_formats, " or ") .. " output)"
      end
      add(k, t)
    else
      add(k, string.format("%d to %d", r.integers[k][1], r.integers[k][2]))
    end
  end
  if r.response_formats then
    add("response_format", next(r.response_formats) == nil and "not sent: the answer is always base64"
      or M.list_of(r.response_formats, " or "))
  end
  if r.images_per_answer then add("n", tostring(r.images_per_answer) .. " (one image per call)") end
  return out
end

-- models(provider) -> the sorted names of the models a provider has rules for.
function M.models(provider)
  local t = {}
  for k in pairs(M.providers[provider] or {}) do t[#t + 1] = k end
  table.sort(t)
  return t
end

-- imgedit.rules: read-only questions, plus the data itself.
M.api = {
  providers = M.providers, sources = M.SOURCES, models = M.models, describe = M.describe, today = M.today,
  -- get(provider, model [, limits]) -> the merged table a client would apply
  get = function(provider, model, limits)
    if M.providers[provider] == nil then
      error("bad argument #1 to 'get' (apiyi, openai, azure or compatible expected, got " .. tostring(provider) .. ")", 2)
    end
    if type(model) ~= "string" then error("bad argument #2 to 'get' (a model name expected)", 2) end
    return M.for_model(model, limits, provider)
  end,
}

return M
