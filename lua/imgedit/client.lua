-- The client: validates a request against the model's rules, builds the
-- multipart or JSON body, runs it as a job on the C core's curl multi handle,
-- and turns the answer into an Image or a structured error. The blocking
-- calls are a submit plus a wait on the same jobs.
local core = require "imgedit.core"
local cjson = require "cjson.safe"
local errors = require "imgedit.errors"
local image = require "imgedit.image"
local rules = require "imgedit.rules"

local M = {}

local DEFAULT_BASE_URL = "https://api.apiyi.com/v1"
local USER_AGENT = "imgedit/" .. core.version .. " libcurl/" .. core.curl_version()
M.USER_AGENT = USER_AGENT

-- Keys live here, not in the client table, so that printing or serialising a
-- client can never show one.
local secrets = setmetatable({}, { __mode = "k" })

-- Request keys that steer the client; everything else is sent as a field.
local CONTROL = {
  prompt = true, images = true, mask = true, model = true, on_progress = true,
  on_retry = true, timeout = true, connect_timeout = true, max_retries = true,
  retry_timeouts = true, _no_checks = true,
}

local Client = {}
Client.__index = Client
M.Client = Client

function Client.__tostring(c)
  return string.format("imgedit.client(%s, %s)", c.base_url, c.model)
end

local function opt(v, ty, name, level)
  if v ~= nil and type(v) ~= ty then
    error(string.format("bad option '%s' (%s expected, got %s)", name, ty, type(v)), level or 3)
  end
  return v
end

function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  local base = opt(opts.base_url, "string", "base_url") or os.getenv("IMGEDIT_BASE_URL")
  if base == nil or base == "" then base = DEFAULT_BASE_URL end
  local c = setmetatable({
    base_url = (base:gsub("/+$", "")),
    model = opt(opts.model, "string", "model") or "gpt-image-2",
    timeout = opt(opts.timeout, "number", "timeout") or 600,
    connect_timeout = opt(opts.connect_timeout, "number", "connect_timeout") or 15,
    max_retries = opt(opts.max_retries, "number", "max_retries") or 2,
    max_concurrency = opt(opts.max_concurrency, "number", "max_concurrency") or 8,
    max_response_bytes = opt(opts.max_response_bytes, "number", "max_response_bytes") or 128 * 1024 * 1024,
    max_download_bytes = opt(opts.max_download_bytes, "number", "max_download_bytes") or 64 * 1024 * 1024,
    limits = opt(opts.limits, "table", "limits"),
    _multi = core.multi(),
    _active = {},
  }, Client)
  local key = opt(opts.api_key, "string", "api_key") or os.getenv("IMGEDIT_API_KEY")
  secrets[c] = key ~= "" and key or nil
  return c
end

-- ---- building a request ----

local function fail(kind, message, fields, key)
  return nil, errors.new(kind, message, fields, key)
end

local function stem(name)
  return (name:gsub("%.[%w]+$", ""))
end

-- Resolve one image source into {path|data, info, filename, label}.
local function resolve(src, label, default_name)
  local info, msg, entry
  if type(src) == "string" then
    info, msg = core.inspect(src)
    entry = { path = src, filename = image.basename(src) }
    label = string.format("%s (%s)", label, entry.filename)
  elseif type(src) == "table" and type(src.bytes) == "string" then
    info, msg = core.inspect(src.bytes, true)
    entry = { data = src.bytes, filename = src.filename or default_name }
    if src.filename then label = string.format("%s (%s)", label, src.filename) end
  else
    return nil, nil, true
  end
  if not info then return nil, label .. ": " .. msg end
  if not info.accepted then
    return nil, string.format("%s: %s images are not accepted; use png, jpeg or webp", label, info.format)
  end
  -- The part's name follows the bytes, not the caller's file name.
  entry.filename = stem(entry.filename) .. "." .. image.EXT[info.format]
  entry.info, entry.label = info, label
  return entry
end

local function field_value(k, v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then
    return (math.type and math.type(v) == "integer" or v == math.floor(v)) and string.format("%d", v) or tostring(v)
  end
  if t == "boolean" then return tostring(v) end
  error(string.format("bad request field '%s' (string, number or boolean expected, got %s)", k, t), 4)
end

-- prepare(kind, req) -> spec, fields | nil, err
function Client:_prepare(kind, req)
  if type(req) ~= "table" then
    error(string.format("bad argument #1 to '%s' (table expected, got %s)", kind, type(req)), 4)
  end
  if req.prompt ~= nil and type(req.prompt) ~= "string" then
    error("bad request field 'prompt' (string expected, got " .. type(req.prompt) .. ")", 4)
  end
  local key = secrets[self]
  if not key then
    return fail("auth", "no API key: pass api_key to imgedit.new or set IMGEDIT_API_KEY", { param = "api_key" })
  end
  if key:find("%c") then
    return fail("auth", "the API key contains control characters", { param = "api_key" })
  end
  local model = req.model or self.model
  local fields = { model = model, prompt = req.prompt }
  local names = {}
  for k, v in pairs(req) do
    if not CONTROL[k] and type(k) == "string" then
      fields[k] = field_value(k, v)
      names[#names + 1] = k
    end
  end
  table.sort(names)
  local images, mask = {}, nil
  if kind == "edit" then
    local list = req.images
    if type(list) ~= "table" or image.is(list) or list.bytes then list = { list } end
    for i, src in ipairs(list) do
      local e, msg, bad = resolve(src, "image " .. i, "image-" .. i)
      if bad then
        error(string.format("bad request field 'images[%d]' (path, Image or {bytes=...} expected, got %s)", i, type(src)), 4)
      end
      if not e then return fail("invalid_request", msg, { param = "images", index = i }, key) end
      images[i] = e
    end
    if req.mask ~= nil then
      local e, msg, bad = resolve(req.mask, "mask", "mask")
      if bad then error("bad request field 'mask' (path, Image or {bytes=...} expected)", 4) end
      if not e then return fail("invalid_request", msg, { param = "mask" }, key) end
      mask = e
    end
  end
  if not req._no_checks then
    local r = rules.for_model(model, self.limits)
    local msg, param, index = rules.check(r, kind, fields, images, mask)
    if msg then return fail("invalid_request", msg, { param = param, index = index }, key) end
  end
  local r = rules.models[model]
  if r and r.response_formats and next(r.response_formats) == nil and not req._no_checks then
    fields.response_format = nil -- the model always answers base64
  end
  local spec = {
    headers = { "Authorization: Bearer " .. key, "Accept: application/json", "Expect:" },
    user_agent = USER_AGENT,
    timeout = req.timeout or self.timeout,
    connect_timeout = req.connect_timeout or self.connect_timeout,
    max_response_bytes = self.max_response_bytes,
  }
  if kind == "edit" then
    spec.url = self.base_url .. "/images/edits"
    local parts = { { name = "model", value = model }, { name = "prompt", value = fields.prompt } }
    for _, k in ipairs(names) do
      if fields[k] ~= nil then parts[#parts + 1] = { name = k, value = fields[k] } end
    end
    for _, e in ipairs(images) do
      parts[#parts + 1] = { name = "image[]", path = e.path, data = e.data, filename = e.filename, type = e.info.mime }
    end
    if mask then
      parts[#parts + 1] = { name = "mask", path = mask.path, data = mask.data, filename = mask.filename, type = mask.info.mime }
    end
    spec.parts = parts
  else
    spec.url = self.base_url .. "/images/generations"
    -- JSON keeps the caller's types (numbers stay numbers).
    local body = { model = model, prompt = fields.prompt }
    for _, k in ipairs(names) do
      if fields[k] ~= nil then body[k] = req[k] end
    end
    spec.body = cjson.encode(body)
    spec.headers[#spec.headers + 1] = "Content-Type: application/json"
  end
  return spec, fields
end

-- ---- reading an answer ----

local function protocol(msg, res, key)
  return nil, errors.new("protocol", msg, { status = res.status, request_id = res.request_id }, key)
end

local TRANSPORT_KIND = {
  timeout = "timeout", too_large = "protocol", read = "invalid_request", canceled = "canceled",
  headers = "protocol", protocol = "protocol", redirects = "protocol", tls = "network",
  network = "network",
}

local function transport_error(res, what, max, key)
  local kind = TRANSPORT_KIND[res.reason] or "network"
  local msg
  if res.reason == "too_large" then
    msg = string.format("%s is larger than the %d-byte limit", what, max)
  elseif res.reason == "headers" then
    msg = what .. " has too many header bytes"
  elseif res.reason == "read" then
    msg = "a local file could not be read during the upload: " .. res.error
  elseif res.reason == "canceled" then
    msg = "canceled"
  else
    msg = what .. " failed: " .. res.error
  end
  return nil, errors.new(kind, msg, { status = res.status ~= 0 and res.status or nil }, key)
end

-- The image inside one answer item: bytes, or a url to download.
local function decode_item(item, res, key)
  local b64 = item.b64_json
  if b64 ~= nil and b64 ~= cjson.null then
    if type(b64) ~= "string" then return protocol("b64_json in the answer is not a string", res, key) end
    local bytes, msg
    if b64:sub(1, 5):lower() == "data:" then
      bytes, msg = core.dataurl_decode(b64)
    else
      bytes, msg = core.b64decode(b64)
    end
    if not bytes then return protocol("the answer's image data: " .. msg, res, key) end
    return bytes
  end
  local url = item.url
  if type(url) == "string" then return nil, nil, url end
  return protocol("the answer holds neither b64_json nor url", res, key)
end

local function to_image(bytes, res, fields, body, url, key)
  local usage = type(body.usage) == "table" and body.usage or nil
  if usage then -- JSON numbers arrive as floats; token counts are integers
    for k, v in pairs(usage) do
      if type(v) == "number" then usage[k] = math.tointeger(v) or v end
    end
  end
  local img, msg = image.from_bytes(bytes, {
    usage = usage, url = url, model = fields.model, created = body.created,
    request_id = res.request_id, revised_prompt = body.data[1].revised_prompt,
  })
  if not img then return protocol("the answer is not a usable image: " .. msg, res, key) end
  if not img.url then img.url = nil end
  return img
end

-- ---- jobs ----

local Job = {}
Job.__index = Job
M.Job = Job

function Job.__tostring(j)
  return string.format("imgedit.job(%s, %s)", j.kind, j.state)
end

function Job:done() return self.state ~= "running" end

function Job:result()
  if self.state == "running" then return nil, nil end
  if self.err then return nil, self.err end
  return self.image
end

function Job:wait()
  while self.state == "running" do self.client:poll(1) end
  return self:result()
end

local function finish(job, img, err)
  job.client._active[job] = nil
  if job.transfer then job.transfer:close() end
  job.transfer = nil
  if err then err.attempts = job.attempts end
  job.image, job.err = img, err
  job.state = err and "failed" or "done"
end

function Client:_start(job, spec)
  job.transfer = self._multi:start(spec)
end

-- Move a job on once its transfer has finished.
function Client:_advance(job)
  local res = job.transfer:result()
  job.transfer:close()
  job.transfer = nil
  local key = secrets[self]
  if job.phase == "download" then
    if not res.ok then return finish(job, transport_error(res, "the image download", self.max_download_bytes, key)) end
    if res.status ~= 200 then
      return finish(job, nil, errors.new("protocol", string.format("the image download answered HTTP %d", res.status),
        { status = res.status }, key))
    end
    return finish(job, to_image(res.body, res, job.fields, job.body, job.url, key))
  end
  if not res.ok then return finish(job, transport_error(res, "the request", self.max_response_bytes, key)) end
  local body = cjson.decode(res.body)
  if res.status < 200 or res.status > 299 then
    return finish(job, nil, errors.from_status(res.status, body, res, key))
  end
  if type(body) ~= "table" then return finish(job, protocol("the answer is not JSON", res, key)) end
  if type(body.data) ~= "table" or type(body.data[1]) ~= "table" then
    return finish(job, protocol("the answer has no data[1] object", res, key))
  end
  local bytes, err, url = decode_item(body.data[1], res, key)
  if err then return finish(job, nil, err) end
  if bytes then return finish(job, to_image(bytes, res, job.fields, body, body.data[1].url, key)) end
  -- url answers: fetch without the Authorization header, http(s) only.
  local scheme = url:match("^(%a[%w+.-]*):")
  if not scheme or (scheme:lower() ~= "http" and scheme:lower() ~= "https") then
    return finish(job, protocol("refusing to download the answer's url: scheme '"
      .. tostring(scheme) .. "' is not http or https", res, key))
  end
  job.phase, job.body, job.url = "download", body, url
  self:_start(job, {
    url = url, follow = true, user_agent = USER_AGENT, headers = { "Accept: image/*" },
    timeout = self.timeout, connect_timeout = self.connect_timeout,
    max_response_bytes = self.max_download_bytes,
  })
end

-- submit(kind, req) -> job. A request that fails the local checks gives a job
-- that is already failed, so callers handle every failure in one place.
function Client:submit(kind, req)
  if kind ~= "edit" and kind ~= "generate" then
    error("bad argument #1 to 'submit' ('edit' or 'generate' expected)", 2)
  end
  local job = setmetatable({ client = self, kind = kind, state = "running", attempts = 1, phase = "api" }, Job)
  local spec, fields = self:_prepare(kind, req)
  if not spec then
    finish(job, nil, fields)
    job.attempts = 0
    job.err.attempts = 0
    return job
  end
  job.fields, job.req = fields, req
  self._active[job] = true
  self:_start(job, spec)
  return job
end

-- poll(timeout_s) drives every transfer; returns how many jobs are running.
function Client:poll(timeout)
  if timeout ~= nil and type(timeout) ~= "number" then
    error("bad argument #1 to 'poll' (number expected)", 2)
  end
  self._multi:perform(timeout or 0)
  local n = 0
  for job in pairs(self._active) do
    if job.transfer and job.transfer:done() then self:_advance(job) end
    if job.state == "running" then n = n + 1 end
  end
  return n
end

function Client:edit(req)
  return self:submit("edit", req):wait()
end

function Client:generate(req)
  return self:submit("generate", req):wait()
end

return M
