-- The emulated image service. This module runs inside the emulator's private
-- Lua state (src/emulator/bridge.c), one request at a time: it records each
-- request, applies the service's rules (rules.lua) and the faults tests
-- inject (faults.lua), and makes the picture. It shares no validation code
-- with the client, so the client's checks can be tested against it.
local core = require "imgedit.core"
local render = require "imgedit.emulator.core"
local faults = require "imgedit.emulator.faults"
local rules = require "imgedit.emulator.rules"
local cjson = require "cjson"

local M = {}

local json_answer, fail, invalid = rules.json_answer, rules.fail, rules.invalid
local cfg = { latency = 0 }
local log, files = {}, {}
-- The log's epoch: a request's answer delivered after a clear() is not
-- mistaken for one of the new log.
local epoch = 0
local seq = 0

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
  local t = cjson.decode(s)
  for k, v in pairs(t) do
    if v ~= cjson.null then cfg[k] = v end
  end
  cfg.key = cfg.key or random_key()
  if t.seed ~= nil or not cfg.seeded then
    math.randomseed(tonumber(cfg.seed) or 1)
    cfg.seeded = true
  end
end

-- ---- the load a service sheds: a rate limit, random failures ----

local window = {} -- arrival times of the API requests let through in the last second

-- shed(entry) -> an answer that refuses or drops the request, or nil.
-- The rate limit answers as OpenAI's does: 429, Retry-After (seconds) and
-- retry-after-ms, and x-ratelimit-*-requests on every answer, the window
-- being one second: remaining is what is left of it, reset the time until
-- it is whole again ("resets to its initial state"), e.g. "840ms".
local function shed(entry, headers)
  local limit = tonumber(cfg.rate_limit) or 0
  if limit > 0 then
    local now = core.now()
    local keep = {}
    for _, t in ipairs(window) do if now - t < 1 then keep[#keep + 1] = t end end
    window = keep
    local full = #window >= limit
    if not full then window[#window + 1] = now end
    local wait = full and (window[1] + 1 - now) or 0
    headers["x-ratelimit-limit-requests"] = tostring(math.floor(limit))
    headers["x-ratelimit-remaining-requests"] = tostring(math.max(0, math.floor(limit) - #window))
    headers["x-ratelimit-reset-requests"] = string.format("%dms", math.ceil(math.max(window[#window] + 1 - now, 0) * 1000))
    if full then
      entry.status = 429
      headers["Retry-After"] = tostring(math.max(1, math.ceil(wait)))
      headers["retry-after-ms"] = tostring(math.ceil(wait * 1000))
      return fail(429, string.format("Rate limit reached for requests: limit %d per second. Please try again in %dms.",
        math.floor(limit), math.ceil(wait * 1000)), nil, "rate_limit_exceeded", "requests")
    end
  end
  local r = math.random()
  local fail_rate, reset_rate = tonumber(cfg.fail_rate) or 0, tonumber(cfg.reset_rate) or 0
  if r < fail_rate then
    entry.status = 500
    return fail(500, "The server had an error while processing your request.", nil, nil, "server_error")
  end
  if r < fail_rate + reset_rate then
    entry.status = 0
    return { drop = true, reset = true }
  end
end

function M.key() return cfg.key end

-- ---- the request log ----

local function record(req)
  local e = {
    id = #log + 1, listener = req.listener, method = req.method, path = req.path,
    authorization = req.authorization ~= nil, api_key = req.api_key ~= nil, api_version = req.api_version,
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
  local w, h = rules.parse_size(size or "")
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

-- The answer's data: one item per picture (n of them where the model takes n).
local function image_answer(m, f, pictures, fmt, use, entry)
  local data = {}
  for i, bytes in ipairs(pictures) do
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
    data[i] = item
  end
  local bytes = pictures[1]
  local t = { created = os.time(), data = data }
  if m.usage then t.usage = use end
  if m.strict then
    t.output_format = fmt
    t.size = nil
  end
  entry.output_sha256 = core.sha256(bytes)
  entry.status = 200
  return json_answer(200, t, { ["x-request-id"] = "req_emu_" .. entry.id })
end

-- The model a request names, or the service's refusal of it.
local function model_of(f, what)
  if type(f.model) ~= "string" then
    return nil, invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
  end
  local m = rules.model(cfg.provider, f.model)
  if m and m.gone and os.date("!%Y-%m-%d") >= m.gone then
    return nil, fail(404, "The model `" .. f.model .. "` has been deprecated, learn more here:"
      .. " https://platform.openai.com/docs/deprecations", nil, "model_not_found")
  end
  if not m or (what == "edits" and m.edits == false) then
    return nil, invalid("Invalid model '" .. f.model .. "' for image " .. what, "model", "model_not_found")
  end
  return m
end

-- n pictures of a request: the first is the prompt's, the others its variations.
local function pictures_for(f, datas, mask, w, h, fmt)
  local out, first_px = {}, nil
  for i = 1, tonumber(f.n) or 1 do
    local bytes, px = picture(i == 1 and f.prompt or (f.prompt .. "#" .. i), datas, mask, w, h, fmt,
      f.output_compression)
    out[i], first_px = bytes, first_px or px
  end
  return out, first_px
end

local function edits(req, entry)
  if not (req.content_type or ""):lower():find("multipart/form-data", 1, true) then
    return invalid("Edits take multipart/form-data", nil, "invalid_content_type")
  end
  if req.malformed then return invalid("Malformed multipart body", nil, "invalid_body") end
  local f, images, mask = parts_of(req)
  f.model = f.model or req.deployment
  local m, bad = model_of(f, "edits")
  if not m then return bad end
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
  local err = rules.check_options(f, m)
  if err then return err end
  local infos = {}
  for i, p in ipairs(images) do
    local info, e = rules.check_image(p, i, m)
    if not info then return e end
    infos[i] = info
  end
  if mask and m.strict then
    local e = rules.check_mask(mask, infos[1], m)
    if e then return e end
  end
  local fmt = m.output_formats and m.output_formats[f.output_format or ""] and f.output_format or "png"
  local w, h = output_size(f.size, infos[1])
  local datas = {}
  for i, p in ipairs(images) do datas[i] = p.data end
  local use = rules.usage(f.prompt, infos, w, h, f.quality, tonumber(f.n))
  if wants_stream(m, f) then
    local bytes, px = picture(f.prompt, datas, mask and mask.data, w, h, fmt, f.output_compression)
    return stream_answer("edit", f, bytes, px, w, h, fmt, use, entry)
  end
  return image_answer(m, f, pictures_for(f, datas, mask and mask.data, w, h, fmt), fmt, use, entry)
end

local function generations(req, entry)
  local ok, f = pcall(cjson.decode, req.body or "")
  if not ok or type(f) ~= "table" then
    return invalid("We could not parse the JSON body of your request.", nil, "invalid_json")
  end
  for k, v in pairs(f) do if v == cjson.null then f[k] = nil end end
  f.model = f.model or req.deployment
  local m, bad = model_of(f, "generations")
  if not m then return bad end
  entry.model = f.model
  if type(f.prompt) ~= "string" or f.prompt == "" then
    return invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
  end
  local err = rules.check_options(f, m)
  if err then return err end
  local fmt = m.output_formats and m.output_formats[f.output_format or ""] and f.output_format or "png"
  local w, h = output_size(f.size)
  local use = rules.usage(f.prompt, {}, w, h, f.quality, tonumber(f.n))
  if wants_stream(m, f) then
    local bytes, px = picture(f.prompt, {}, nil, w, h, fmt, f.output_compression)
    return stream_answer("generate", f, bytes, px, w, h, fmt, use, entry)
  end
  return image_answer(m, f, pictures_for(f, {}, nil, w, h, fmt), fmt, use, entry)
end

local function unhex(s)
  return (s:gsub("%x%x", function(b) return string.char(tonumber(b, 16)) end))
end

local function cdn(req, entry)
  local f = faults.take_cdn()
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

-- Azure OpenAI's shape: the key in an api-key header (Bearer is not it),
-- the deployment in the path, the api-version in the query, and its own
-- error bodies ({"error": {"code", "message"}}).
local function azure_error(status, code, message)
  return json_answer(status, { error = { code = code, message = message } })
end

local function azure(req, entry)
  if req.api_key ~= cfg.key then
    return azure_error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure"
      .. " to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.")
  end
  local deployment, what = req.path:match("^/openai/deployments/([^/]+)/images/(%a+)$")
  if not deployment then return azure_error(404, "404", "Resource not found") end
  if not req.api_version then return azure_error(400, "BadRequest", "Missing required query parameter: api-version") end
  if req.method ~= "POST" then return azure_error(405, "405", "Method not allowed") end
  entry.deployment = deployment
  req.deployment = deployment -- the model a request names none of
  if what == "edits" then return edits(req, entry) end
  if what == "generations" then return generations(req, entry) end
  return azure_error(404, "404", "Resource not found")
end

-- A prompt the safety system refuses ({moderation = true}), in the
-- provider's words: OpenAI's image_generation_user_error, Azure's
-- contentFilter with its inner_error (the REST reference's dalleErrorResponse).
local function moderation(entry)
  entry.status = 400
  local h = { ["x-request-id"] = "req_emu_" .. entry.id }
  if cfg.provider == "azure" then
    return json_answer(400, { created = os.time(), error = { code = "contentFilter", param = "prompt",
      message = "Your task failed as a result of our safety system.",
      inner_error = { code = "ResponsibleAIPolicyViolation",
        content_filter_results = { violence = { filtered = true, severity = "medium" } } } } }, h)
  end
  return json_answer(400, { error = { type = "image_generation_user_error", code = "moderation_blocked", param = cjson.null,
    message = "Your request was rejected by the safety system.",
    moderation_details = { moderation_stage = "input", categories = { "violence" } } } }, h)
end

local function api(req, entry)
  local fault = faults.take()
  -- {fail = "message"}: the service itself fails, to test that path
  if fault and fault.fail then error(fault.fail, 0) end
  if fault and fault.moderation then return moderation(entry) end
  if fault then
    local a = faults.answer(fault, entry)
    if a then return a end
  end
  local a
  local shed_headers = {}
  local shed_answer = not fault and shed(entry, shed_headers)
  if shed_answer then
    shed_answer.headers = shed_answer.headers or {}
    for k, v in pairs(shed_headers) do shed_answer.headers[k] = v end
    shed_answer.headers["x-request-id"] = "req_emu_" .. entry.id
    return shed_answer
  end
  if req.too_big then
    a = fail(413, "Request body too large", nil, "request_too_large")
  elseif cfg.provider == "azure" then
    a = azure(req, entry)
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
  for k, v in pairs(shed_headers) do a.headers[k] = v end
  a.headers["x-request-id"] = a.headers["x-request-id"] or ("req_emu_" .. entry.id)
  -- Faults that bend an otherwise normal answer.
  if fault then faults.bend(fault, a, sse) end
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
  if not a.drop then a.entry = epoch .. ":" .. entry.id end
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
  local f = faults.take_early()
  if not f then return { status = 0 } end
  local entry = record(req)
  entry.status, entry.early = 0, true -- cut while the body arrived: never billed
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
  faults.inject(s)
  return "true"
end

-- delivered("epoch:id"): every byte of that request's answer went out.
function M.delivered(s)
  local e, id = tostring(s):match("^(%d+):(%d+)$")
  local entry = tonumber(e) == epoch and log[tonumber(id)]
  if entry then entry.delivered = true end
  return "true"
end

function M.clear()
  epoch = epoch + 1
  log = {}
  faults.clear()
  return "true"
end

return M
