-- The emulated image service. This module runs inside the emulator's private
-- Lua state (src/emulator/bridge.c), one request at a time: it records each
-- request, applies the service's rules (rules.lua) and the faults tests
-- inject (faults.lua), and makes the picture. It shares no validation code
-- with the client, so the client's checks can be tested against it.
local core = require "imgedit.core"
local faults = require "imgedit.emulator.faults"
local rules = require "imgedit.emulator.rules"
local cjson = require "cjson"
local S = require "imgedit.emulator.state"
local endpoints = require "imgedit.emulator.endpoints"
local files = require "imgedit.emulator.files"
local batches = require "imgedit.emulator.batches"

local M = {}

local json_answer, fail, invalid = rules.json_answer, rules.fail, rules.invalid

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
    if v ~= cjson.null then S.cfg[k] = v end
  end
  S.cfg.key = S.cfg.key or random_key()
  if t.seed ~= nil or not S.cfg.seeded then
    math.randomseed(tonumber(S.cfg.seed) or 1)
    S.cfg.seeded = true
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
  local limit = tonumber(S.cfg.rate_limit) or 0
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
  local fail_rate, reset_rate = tonumber(S.cfg.fail_rate) or 0, tonumber(S.cfg.reset_rate) or 0
  if r < fail_rate then
    entry.status = 500
    return fail(500, "The server had an error while processing your request.", nil, nil, "server_error")
  end
  if r < fail_rate + reset_rate then
    entry.status = 0
    return { drop = true, reset = true }
  end
end

function M.key() return S.cfg.key end

-- ---- the request log ----

local function record(req)
  local e = {
    id = #S.log + 1, listener = req.listener, method = req.method, path = req.path,
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
  S.log[#S.log + 1] = e
  return e
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
  local file = name and S.files[name]
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
  if req.api_key ~= S.cfg.key then
    return azure_error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure"
      .. " to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.")
  end
  local deployment, what = req.path:match("^/openai/deployments/([^/]+)/images/(%a+)$")
  if not deployment then return azure_error(404, "404", "Resource not found") end
  if not req.api_version then return azure_error(400, "BadRequest", "Missing required query parameter: api-version") end
  if req.method ~= "POST" then return azure_error(405, "405", "Method not allowed") end
  entry.deployment = deployment
  req.deployment = deployment -- the model a request names none of
  if what == "edits" then return endpoints.edits(req, entry) end
  if what == "generations" then return endpoints.generations(req, entry) end
  return azure_error(404, "404", "Resource not found")
end

-- A prompt the safety system refuses ({moderation = true}), in the
-- provider's words: OpenAI's image_generation_user_error, Azure's
-- contentFilter with its inner_error (the REST reference's dalleErrorResponse).
local function moderation(entry)
  entry.status = 400
  local h = { ["x-request-id"] = "req_emu_" .. entry.id }
  if S.cfg.provider == "azure" then
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
  elseif S.cfg.provider == "azure" then
    a = azure(req, entry)
  elseif req.authorization ~= "Bearer " .. S.cfg.key then
    local given = (req.authorization or ""):match("^Bearer%s+(.*)$")
    -- Like the real service: name the problem, show only the key's ends.
    local shown = given and #given > 8 and (given:sub(1, 3) .. "..." .. given:sub(-2)) or "none"
    a = fail(401, "Incorrect API key provided: " .. shown .. ".", nil, "invalid_api_key")
  elseif req.path == "/v1/images/edits" or req.path == "/v1/images/generations" then
    if req.method ~= "POST" then
      a = fail(405, "Method not allowed", nil, "method_not_allowed")
    elseif req.path == "/v1/images/edits" then
      a = endpoints.edits(req, entry)
    else
      a = endpoints.generations(req, entry)
    end
  else
    -- the Files and Batch APIs (an Azure emulator answers them 404, above:
    -- it plays only the deployments' image routes; the seeds' gateway
    -- documents neither, so its emulator has none)
    a = (S.cfg.provider or "apiyi") ~= "apiyi" and (files.route(req, entry) or batches.route(req, entry))
      or fail(404, "Unknown request URL: " .. req.method .. " " .. req.path, nil, "unknown_url")
  end
  entry.status = entry.status or a.status
  -- Every answer names its request, as the service's do.
  a.headers = a.headers or {}
  for k, v in pairs(shed_headers) do a.headers[k] = v end
  a.headers["x-request-id"] = a.headers["x-request-id"] or ("req_emu_" .. entry.id)
  -- Faults that bend an otherwise normal answer.
  if fault then faults.bend(fault, a, endpoints.sse) end
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
  a.delay = a.delay or (req.listener == "api" and S.cfg.latency or 0)
  if a.events then -- a stream answers at once, then spreads the wait over its events
    a.event_delay = a.delay / #a.events
    a.delay = 0
  end
  entry.status = entry.status or a.status
  if not a.drop then a.entry = S.epoch .. ":" .. entry.id end
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
  -- A slow reader: the request goes on, and is answered, once it is all in.
  if f.pause_upload then return { status = 0, stall = f.pause_upload, stall_at = f.pause_at or 0 } end
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
  return #S.log == 0 and "[]" or cjson.encode(S.log)
end

-- requests: the HTTP requests (a batch's lines have entries of their own
-- in the log, listener "batch", and are counted apart by batches.stats).
function M.stats_json()
  local n = 0
  for _, e in ipairs(S.log) do if not e.batch_line then n = n + 1 end end
  return cjson.encode(batches.stats({ requests = n }))
end

-- The batches and files (objects, no content), oldest first.
local function array_json(t)
  return #t == 0 and "[]" or cjson.encode(t)
end
function M.batches_json() return array_json(batches.objects()) end
function M.files_json() return array_json(files.objects()) end

function M.inject_json(s)
  faults.inject(s)
  return "true"
end

-- delivered("epoch:id"): every byte of that request's answer went out.
function M.delivered(s)
  local e, id = tostring(s):match("^(%d+):(%d+)$")
  local entry = tonumber(e) == S.epoch and S.log[tonumber(id)]
  if entry then entry.delivered = true end
  return "true"
end

function M.clear()
  S.epoch = S.epoch + 1
  S.log = {}
  faults.clear()
  files.clear()
  batches.clear()
  return "true"
end

return M
