-- The emulated image service. This module runs inside the emulator's private
-- Lua state (see src/emulator.c), one request at a time. It implements the
-- service's rules from DESIGN.md and the vendor pages on its own: it shares no
-- validation code with the client, so the client's checks can be tested
-- against it.
local core = require "imgedit.core"
local render = require "imgedit.emulator"
local cjson = require "cjson"

local M = {}

local MB = 1024 * 1024
local cfg = { latency = 0 }
local log, faults, cdn_faults, files = {}, {}, {}, {}
local seq = 0

local MODELS = {
  ["gpt-image-2"] = {
    max_images = 5, image_bytes = 10 * MB, mask_bytes = 50 * MB, strict = true,
    b64 = "raw", usage = true, response_formats = { b64_json = true },
  },
  ["gpt-image-2-all"] = {
    image_bytes = 10 * MB, b64 = "dataurl", usage = false,
    response_formats = { url = true, b64_json = true }, default_response = "url",
  },
}

-- A key of its own for every emulator: from the system's random source
-- (math.random is not seeded on 5.1, 5.3 and LuaJIT, so it would repeat).
local function random_key()
  local f = io.open("/dev/urandom", "rb")
  local seed = f and f:read(16) or ""
  if f then f:close() end
  seed = seed .. tostring(os.time()) .. tostring(os.clock()) .. tostring({})
  return "sk-emu-" .. core.sha256(seed):sub(1, 24)
end

function M.configure_json(s)
  for k, v in pairs(cjson.decode(s)) do
    if v ~= cjson.null then cfg[k] = v end
  end
  cfg.key = cfg.key or random_key()
end

function M.key() return cfg.key end

-- ---- answers ----

local function json_answer(status, t, headers)
  local h = headers or {}
  h["Content-Type"] = "application/json"
  return { status = status, body = cjson.encode(t), headers = h }
end

local function fail(status, message, param, code, typ)
  return json_answer(status, { error = {
    message = message, type = typ or "invalid_request_error",
    param = param or cjson.null, code = code or cjson.null,
  } })
end

local function invalid(message, param, code)
  return fail(400, message, param, code or "invalid_value")
end

-- ---- the request log ----

local function record(req)
  local e = {
    id = #log + 1, listener = req.listener, method = req.method, path = req.path,
    authorization = req.authorization ~= nil,
    user_agent = req.user_agent, content_type = req.content_type, client_port = req.client_port,
    fields = {}, field_order = {}, files = {},
  }
  for _, p in ipairs(req.parts or {}) do
    if p.filename or p.name == "image[]" or p.name == "image" or p.name == "mask" then
      local info = core.inspect(p.data, true)
      e.files[#e.files + 1] = {
        field = p.name, filename = p.filename, content_type = p.type,
        size = #p.data, sha256 = core.sha256(p.data), format = info and info.format or nil,
      }
    else
      e.fields[p.name] = p.data
      e.field_order[#e.field_order + 1] = p.name
    end
  end
  if req.body and #req.body > 0 and not (req.parts and #req.parts > 0) then
    local ok, t = pcall(cjson.decode, req.body)
    if ok and type(t) == "table" then
      e.json = t
      for k, v in pairs(t) do
        if type(v) ~= "table" then e.fields[k] = tostring(v) end
      end
    end
  end
  log[#log + 1] = e
  return e
end

-- ---- rules ----

local function parse_size(s)
  local w, h = tostring(s):match("^(%d+)x(%d+)$")
  return tonumber(w), tonumber(h)
end

local function check_size(size)
  if size == nil or size == "auto" then return nil end
  local w, h = parse_size(size)
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
local function check_options(f, m)
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

local function check_image(p, i, m)
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

-- ---- the picture ----

local function tint_of(prompt)
  local h = core.sha256(prompt or "")
  local function byte(i) return tonumber(h:sub(2 * i - 1, 2 * i), 16) end
  return { byte(1), byte(2), byte(3) }, { 255 - byte(1), 255 - byte(2), 255 - byte(3) }
end

local function layer(bytes)
  local px, w, h = core.decode(bytes)
  if not px then return nil end
  return { px = px, w = w, h = h }
end

local function output_size(size, first)
  local w, h = parse_size(size or "")
  if w and w > 0 and h > 0 and w <= 4096 and h <= 4096 then return w, h end
  if first and first.width and first.height then
    if first.width > first.height * 1.2 then return 1536, 1024 end
    if first.height > first.width * 1.2 then return 1024, 1536 end
  end
  return 1024, 1024
end

local function picture(prompt, images, mask, w, h, fmt, compression)
  local tint, fill = tint_of(prompt)
  local spec = { width = w, height = h, tint = tint, fill = fill, insets = {} }
  for i, bytes in ipairs(images) do
    local l = layer(bytes)
    if i == 1 then spec.base = l elseif l then spec.insets[#spec.insets + 1] = l end
  end
  if mask then spec.mask = layer(mask) end
  local px = render._compose(spec)
  return core.encode(px, w, h, fmt, tonumber(compression) or 90), px
end

-- Output tokens by quality for a 1024x1024 image, scaled by area (the vendor's
-- published gpt-image figures); input tokens from the prompt and images.
local OUT_TOKENS = { low = 272, medium = 1056, high = 4160, auto = 1056 }

local function usage(prompt, images, w, h, quality)
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

-- ---- faults injected by tests ----

local REASONS = {
  [408] = "Request Timeout", [413] = "Request Entity Too Large", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

local function take_fault()
  return table.remove(faults, 1)
end

local function apply_fault(f, entry)
  -- The whole request was read: the service has it (and bills it), but the
  -- connection closes (drop) or resets (reset) before any answer.
  if f.drop or f.reset then return { drop = true, reset = f.reset, delay = f.delay or f.latency } end
  if f.html then
    -- A gateway's own page, as nginx or a CDN would send it.
    local status = f.status or 502
    local title = status .. " " .. (REASONS[status] or "Error")
    entry.status = status
    local h = { ["Content-Type"] = "text/html", ["x-request-id"] = "req_emu_" .. entry.id }
    if f.retry_after then h["Retry-After"] = tostring(f.retry_after) end
    return { status = status, delay = f.delay, headers = h,
      body = "<html><head><title>" .. title .. "</title></head><body><center><h1>" .. title
        .. "</h1></center><hr><center>nginx</center></body></html>" }
  end
  if f.header_flood then
    local h = { ["Content-Type"] = "application/json" }
    for i = 1, f.header_flood do h["X-Flood-" .. i] = string.rep("x", 100) end
    entry.status = 200
    return { status = 200, headers = h, body = '{"data":[]}' }
  end
  if f.status then
    local h = { ["Content-Type"] = f.content_type or "application/json", ["x-request-id"] = "req_emu_" .. entry.id }
    if f.retry_after then h["Retry-After"] = tostring(f.retry_after) end
    if f.retry_after_ms then h["retry-after-ms"] = tostring(f.retry_after_ms) end
    for k, v in pairs(f.headers or {}) do h[k] = tostring(v) end
    local body = f.body or cjson.encode({ error = {
      message = f.message or ("injected status " .. f.status),
      type = f.type or (f.status >= 500 and "server_error" or "invalid_request_error"),
      param = cjson.null, code = f.code or cjson.null } })
    entry.status = f.status
    return { status = f.status, body = body, headers = h, delay = f.delay }
  end
  return nil -- a fault that modifies the normal answer
end

-- ---- endpoints ----

local function parts_of(req)
  local fields, images, mask = {}, {}, nil
  for _, p in ipairs(req.parts or {}) do
    if p.name == "image[]" or p.name == "image" then
      images[#images + 1] = p
    elseif p.name == "mask" then
      mask = p
    elseif not p.filename then
      fields[p.name] = p.data
    end
  end
  return fields, images, mask
end

local function sse(event, t)
  return "event: " .. event .. "\ndata: " .. cjson.encode(t) .. "\n\n"
end

-- A streamed answer: k partial images, each a coarser version of the final
-- one, then the completed event; the model's time is spread across them.
local function stream_answer(kind, f, bytes, px, w, h, fmt, use, entry)
  local prefix = kind == "edit" and "image_edit." or "image_generation."
  local k = tonumber(f.partial_images) or 0
  local common = { size = w .. "x" .. h, quality = f.quality or "auto", background = f.background or "auto",
    output_format = fmt, created_at = os.time() }
  local events = {}
  for i = 0, k - 1 do
    local f2 = 2 ^ (k - i + 1) -- coarse first, finer later
    local sw, sh = math.max(1, math.floor(w / f2)), math.max(1, math.floor(h / f2))
    local coarse = core.resize(core.resize(px, w, h, sw, sh), sw, sh, w, h)
    local t = { type = prefix .. "partial_image", b64_json = core.b64encode(core.encode(coarse, w, h, fmt)),
      partial_image_index = i }
    for key, v in pairs(common) do t[key] = v end
    events[#events + 1] = sse(prefix .. "partial_image", t)
  end
  local done = { type = prefix .. "completed", b64_json = core.b64encode(bytes), usage = use }
  for key, v in pairs(common) do done[key] = v end
  events[#events + 1] = sse(prefix .. "completed", done)
  entry.output_sha256 = core.sha256(bytes)
  entry.status = 200
  entry.stream = true
  return { status = 200, events = events, headers = { ["Content-Type"] = "text/event-stream",
    ["Cache-Control"] = "no-cache", ["x-request-id"] = "req_emu_" .. entry.id }, stream_parts = k + 1 }
end

local function wants_stream(m, f)
  return m.strict and (f.stream == true or f.stream == "true")
end

local function image_answer(m, f, bytes, fmt, use, entry)
  seq = seq + 1
  local item = {}
  local rf = f.response_format or m.default_response or "b64_json"
  if rf == "url" then
    local name = string.format("%d-%s.%s", seq, core.sha256(bytes):sub(1, 12), fmt)
    files[name] = { bytes = bytes, type = "image/" .. fmt }
    item.url = cfg.cdn_url .. "/files/" .. name
  elseif m.b64 == "dataurl" then
    item.b64_json = "data:image/" .. fmt .. ";base64," .. core.b64encode(bytes)
  else
    item.b64_json = core.b64encode(bytes)
  end
  local t = { created = os.time(), data = { item } }
  if m.usage then t.usage = use end
  if m.strict then
    t.output_format = fmt
    t.size = nil
  end
  entry.output_sha256 = core.sha256(bytes)
  entry.status = 200
  return json_answer(200, t, { ["x-request-id"] = "req_emu_" .. entry.id })
end

local function edits(req, entry)
  if not (req.content_type or ""):lower():find("multipart/form-data", 1, true) then
    return invalid("Edits take multipart/form-data", nil, "invalid_content_type")
  end
  if req.malformed then return invalid("Malformed multipart body", nil, "invalid_body") end
  local f, images, mask = parts_of(req)
  if not f.model then return invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter") end
  local m = MODELS[f.model]
  if not m then return invalid("Invalid model '" .. f.model .. "' for image edits", "model", "model_not_found") end
  entry.model = f.model
  if not f.prompt or f.prompt == "" then
    return invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
  end
  if #images == 0 then
    return invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
  end
  if m.max_images and #images > m.max_images then
    return invalid(string.format("Too many images: %d given, at most %d", #images, m.max_images), "image")
  end
  local err = check_options(f, m)
  if err then return err end
  local infos = {}
  for i, p in ipairs(images) do
    local info, e = check_image(p, i, m)
    if not info then return e end
    infos[i] = info
  end
  if mask and m.strict then
    local info, why = core.inspect(mask.data, true)
    if not info then return invalid("Invalid mask: " .. why, "mask") end
    if info.format ~= "png" then return invalid("Invalid mask: must be a PNG image", "mask", "invalid_mask") end
    if not info.has_alpha then return invalid("Invalid mask: must have an alpha channel", "mask", "invalid_mask") end
    if info.width ~= infos[1].width or info.height ~= infos[1].height then
      return invalid(string.format("Invalid mask: %dx%d does not match the first image (%dx%d)",
        info.width, info.height, infos[1].width, infos[1].height), "mask", "invalid_mask")
    end
    if #mask.data > m.mask_bytes then return invalid("Invalid mask: over 50 MB", "mask", "image_too_large") end
  end
  local fmt = m.strict and f.output_format or "png"
  local w, h = output_size(f.size, infos[1])
  local datas = {}
  for i, p in ipairs(images) do datas[i] = p.data end
  local bytes, px = picture(f.prompt, datas, mask and mask.data, w, h, fmt, f.output_compression)
  local use = usage(f.prompt, infos, w, h, f.quality)
  if wants_stream(m, f) then return stream_answer("edit", f, bytes, px, w, h, fmt, use, entry) end
  return image_answer(m, f, bytes, fmt, use, entry)
end

local function generations(req, entry)
  local ok, f = pcall(cjson.decode, req.body or "")
  if not ok or type(f) ~= "table" then
    return invalid("We could not parse the JSON body of your request.", nil, "invalid_json")
  end
  for k, v in pairs(f) do if v == cjson.null then f[k] = nil end end
  if type(f.model) ~= "string" then return invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter") end
  local m = MODELS[f.model]
  if not m then return invalid("Invalid model '" .. f.model .. "' for image generation", "model", "model_not_found") end
  entry.model = f.model
  if type(f.prompt) ~= "string" or f.prompt == "" then
    return invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
  end
  local err = check_options(f, m)
  if err then return err end
  local fmt = m.strict and f.output_format or "png"
  local w, h = output_size(f.size)
  local bytes, px = picture(f.prompt, {}, nil, w, h, fmt, f.output_compression)
  local use = usage(f.prompt, {}, w, h, f.quality)
  if wants_stream(m, f) then return stream_answer("generate", f, bytes, px, w, h, fmt, use, entry) end
  return image_answer(m, f, bytes, fmt, use, entry)
end

local function unhex(s)
  return (s:gsub("%x%x", function(b) return string.char(tonumber(b, 16)) end))
end

local function cdn(req, entry)
  local f = table.remove(cdn_faults, 1)
  if f then
    if f.drop or f.reset then entry.status = 0 return { drop = true, reset = f.reset, delay = f.delay } end
    entry.status = f.status or 503
    return { status = entry.status, body = "unavailable", headers = { ["Content-Type"] = "text/plain" }, delay = f.delay }
  end
  -- /redirect/<hex of a url>: a 302 there, for redirect-chain tests.
  local target = req.path:match("^/redirect/(%x+)$")
  if target then
    entry.status = 302
    return { status = 302, body = "", headers = { Location = unhex(target) } }
  end
  local name = req.path:match("^/files/([%w%-%.]+)$")
  local file = name and files[name]
  if req.method ~= "GET" or not file then
    entry.status = 404
    return { status = 404, body = "not found", headers = { ["Content-Type"] = "text/plain" } }
  end
  entry.status = 200
  return { status = 200, body = file.bytes, headers = { ["Content-Type"] = file.type } }
end

local function api(req, entry)
  local fault = take_fault()
  -- {fail = "message"}: the service itself fails, to test that path
  if fault and fault.fail then error(fault.fail, 0) end
  if fault then
    local a = apply_fault(fault, entry)
    if a then return a end
  end
  local a
  if req.too_big then
    a = fail(413, "Request body too large", nil, "request_too_large")
  elseif req.authorization ~= "Bearer " .. cfg.key then
    local given = (req.authorization or ""):match("^Bearer%s+(.*)$")
    -- Like the real service: name the problem, show only the key's ends.
    local shown = given and #given > 8 and (given:sub(1, 3) .. "..." .. given:sub(-2)) or "none"
    a = fail(401, "Incorrect API key provided: " .. shown .. ".", nil, "invalid_api_key")
  elseif req.method ~= "POST" then
    a = fail(405, "Method not allowed", nil, "method_not_allowed")
  elseif req.path == "/v1/images/edits" then
    a = edits(req, entry)
  elseif req.path == "/v1/images/generations" then
    a = generations(req, entry)
  else
    a = fail(404, "Unknown request URL: " .. req.method .. " " .. req.path, nil, "unknown_url")
  end
  entry.status = entry.status or a.status
  -- Every answer names its request, as the service's do.
  a.headers = a.headers or {}
  a.headers["x-request-id"] = a.headers["x-request-id"] or ("req_emu_" .. entry.id)
  if fault then
    -- Faults that bend an otherwise normal answer.
    if fault.url and a.status == 200 then
      local t = cjson.decode(a.body)
      t.data[1] = { url = fault.url }
      a.body = cjson.encode(t)
    end
    if fault.bad_json then a.body = a.body:sub(1, math.floor(#a.body / 2)) .. "<<not json" end
    if fault.bad_base64 and a.status == 200 then
      a.body = a.body:gsub('"b64_json":"([^"]*)"', function(s) return '"b64_json":"' .. s:sub(1, 10) .. '!!!' .. s:sub(11) .. '"' end)
    end
    if a.events then
      if fault.cut_after then a.cut_after = fault.cut_after end
      if fault.stream_error then
        a.events[#a.events] = sse("error", { type = "error", error = { type = "image_generation_server_error",
          code = fault.code or "server_error", message = fault.message or "the image could not be finished" } })
      end
      if fault.no_completed then a.events[#a.events] = nil end
    end
    if fault.truncate then a.truncate = fault.truncate end
    if fault.stall then a.stall, a.stall_at = fault.stall, fault.stall_at or 64 end
    if fault.oversize then a.body = a.body .. string.rep(" ", fault.oversize) end
    a.delay = fault.delay or fault.latency
  end
  return a
end

function M.handle(req)
  local entry = record(req)
  local a
  if req.listener == "cdn" then
    a = cdn(req, entry)
  else
    a = api(req, entry)
  end
  a.delay = a.delay or (req.listener == "api" and cfg.latency or 0)
  if a.events then -- a stream answers at once, then spreads the wait over its events
    a.event_delay = a.delay / #a.events
    a.delay = 0
  end
  entry.status = entry.status or a.status
  return a
end

-- The fixed answer of sink mode (benchmarks): a small real PNG, raw base64.
function M.sink_body()
  local px = string.rep("\40\120\200\255", 16 * 16)
  return cjson.encode { created = os.time(), data = { { b64_json = core.b64encode(core.encode(px, 16, 16, "png")) } },
    usage = { input_tokens = 1, output_tokens = 1, total_tokens = 2 } }
end

-- Faults that strike while the request is still arriving: asked for when
-- its headers are in, before any of the body is read.
function M.early(req)
  local f = faults[1]
  if not f or not (f.drop_early or f.drop_upload) then return { status = 0 } end
  table.remove(faults, 1)
  local entry = record(req)
  entry.status = 0
  if f.drop_early then return { drop = true } end
  return { truncate = f.drop_upload } -- drop once this many body bytes arrived
end

-- The answer when the service itself failed: its message, JSON-escaped.
function M.failure_json(msg)
  return cjson.encode { error = { message = "emulator failure: " .. tostring(msg), type = "server_error" } }
end

-- ---- control from the caller's state (JSON in, JSON out) ----

function M.requests_json()
  return #log == 0 and "[]" or cjson.encode(log)
end

function M.stats_json()
  return cjson.encode({ requests = #log })
end

function M.inject_json(s)
  local f = cjson.decode(s)
  -- {cdn = true, ...}: a fault of the url host (status or drop), for downloads.
  local q = f.cdn and cdn_faults or faults
  q[#q + 1] = f
  return "true"
end

function M.clear()
  log, faults, cdn_faults = {}, {}, {}
  return "true"
end

return M
