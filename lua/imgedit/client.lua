-- The client: validates a request against the model's rules, builds the
-- multipart or JSON body, runs it as a job on the C core's curl multi handle,
-- and turns the answer into an Image or a structured error. The blocking
-- calls are a submit plus a wait on the same jobs.
local compat = require "imgedit.compat"
local core = require "imgedit.core"
local cjson = require "cjson.safe"
local errors = require "imgedit.errors"
local image = require "imgedit.image"
local rules = require "imgedit.rules"
local answer = require "imgedit.answer"
local retry = require "imgedit.retry"

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
  on_retry = true, timeout = true, connect_timeout = true, idle_timeout = true,
  max_retries = true, retry_timeouts = true, retry_protocol = true, max_retry_after = true,
  retry_base = true, retry_cap = true, on_partial = true, _no_checks = true,
}

M.CONTROL = CONTROL

-- Process-wide fallbacks before the environment, for hosts that configure
-- once (the command line's `run --emulate` points them at an emulator).
M.defaults = {}

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
  local base = opt(opts.base_url, "string", "base_url") or M.defaults.base_url or os.getenv("IMGEDIT_BASE_URL")
  if base == nil or base == "" then base = DEFAULT_BASE_URL end
  local y = opts.yield
  if y == true then y = coroutine.yield end
  local c = setmetatable({
    base_url = (base:gsub("/+$", "")),
    model = opt(opts.model, "string", "model") or "gpt-image-2",
    timeout = opt(opts.timeout, "number", "timeout") or 600,
    connect_timeout = opt(opts.connect_timeout, "number", "connect_timeout") or 15,
    idle_timeout = opt(opts.idle_timeout, "number", "idle_timeout") or 60,
    max_retries = opt(opts.max_retries, "number", "max_retries") or 2,
    retry_timeouts = opt(opts.retry_timeouts, "boolean", "retry_timeouts") or false,
    retry_protocol = opt(opts.retry_protocol, "boolean", "retry_protocol") or false,
    max_retry_after = opt(opts.max_retry_after, "number", "max_retry_after") or 60,
    retry_base = opt(opts.retry_base, "number", "retry_base") or 0.5,
    retry_cap = opt(opts.retry_cap, "number", "retry_cap") or 8,
    max_concurrency = opt(opts.max_concurrency, "number", "max_concurrency") or 8,
    max_response_bytes = opt(opts.max_response_bytes, "number", "max_response_bytes") or 128 * 1024 * 1024,
    max_download_bytes = opt(opts.max_download_bytes, "number", "max_download_bytes") or 64 * 1024 * 1024,
    progress_interval = opt(opts.progress_interval, "number", "progress_interval") or 0.1,
    limits = opt(opts.limits, "table", "limits"),
    on_progress = opt(opts.on_progress, "function", "on_progress"),
    on_retry = opt(opts.on_retry, "function", "on_retry"),
    yield = opt(y, "function", "yield"),
    _multi = core.multi(),
    _jobs = {},
    _inflight = 0,
  }, Client)
  if c.max_concurrency < 1 then error("bad option 'max_concurrency' (at least 1)", 2) end
  local key = opt(opts.api_key, "string", "api_key") or M.defaults.api_key or os.getenv("IMGEDIT_API_KEY")
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
    return compat.is_integer(v) and string.format("%d", v) or tostring(v)
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
  local stream = req.stream == true or req.stream == "true"
  local spec = {
    stream = stream,
    headers = { "Authorization: Bearer " .. key, stream and "Accept: text/event-stream, application/json"
      or "Accept: application/json", "Expect:" },
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

-- ---- jobs ----
-- A job moves through: queued (waiting for a transfer slot) -> running (a
-- transfer in flight) -> waiting (backing off before a retry) -> queued ...
-- and ends done or failed. Everything happens inside client:poll(), in the
-- caller's Lua state; libcurl never calls into Lua.

local Job = {}
Job.__index = Job
M.Job = Job

function Job.__tostring(j)
  return string.format("imgedit.job(%s, %s)", j.kind, j.state)
end

function Job:done() return self.state == "done" or self.state == "failed" end

-- result() -> Image | nil, err; nil, nil while the job runs.
function Job:result()
  if not self:done() then return nil, nil end
  if self.err then return nil, self.err end
  return self.image
end

-- wait() -> Image | nil, err. In a coroutine, with the client's `yield`
-- set, it polls without blocking and yields to the caller's scheduler.
function Job:wait()
  local c = self.client
  if c.yield and compat.isyieldable() then
    while not self:done() do
      c:poll(0)
      if not self:done() then c.yield(self) end
    end
  else
    while not self:done() do c:poll(1) end
  end
  return self:result()
end

-- cancel() aborts the transfer at once; the job fails with kind "canceled".
-- Returns false when the job had already finished.
function Job:cancel()
  if self:done() then return false end
  local c = self.client
  if self.transfer then
    self.transfer:cancel()
    self.transfer:close()
    self.transfer = nil
    c._inflight = c._inflight - 1
  end
  self.state = "failed"
  self.err = errors.new("canceled", "canceled by the caller", { attempts = self.attempts })
  return true
end

local PHASES = { upload = 1, wait = 2, download = 3 }
local PHASE_LIST = { "upload", "wait", "download" }

-- Tell on_progress, at most every `progress_interval` seconds, but every
-- phase at least once and in order, however fast the transfer.
local function report(job, phase, up, up_total, down, down_total, now, force)
  local fn = job.on_progress
  if not fn then return end
  local last = job.last_phase and PHASES[job.last_phase] or 0
  if PHASES[phase] < last then return end
  if PHASES[phase] == last and not force and now - job.last_report < job.client.progress_interval then return end
  for i = last + 1, PHASES[phase] - 1 do
    fn { phase = PHASE_LIST[i], uploaded = up, upload_total = up_total, downloaded = 0, download_total = 0,
      elapsed = now - job.t0, attempt = job.attempts }
  end
  job.last_phase, job.last_report = phase, now
  fn { phase = phase, uploaded = up, upload_total = up_total, downloaded = down, download_total = down_total,
    elapsed = now - job.t0, attempt = job.attempts }
end

local function finish(job, img, err)
  job.image, job.err = img, err
  job.state = err and "failed" or "done"
end

-- Take the server-sent events that arrived: partial images go to
-- on_partial at once (in the caller's state, from poll), the completed event
-- and any error are kept for the end of the stream.
function Client:_drain(job)
  local key = secrets[self]
  for _, ev in ipairs(job.transfer:events()) do
    local data = cjson.decode(ev.data)
    local typ = type(data) == "table" and type(data.type) == "string" and data.type or ev.event
    if type(data) ~= "table" then
      job.stream_err = job.stream_err or errors.new("protocol", "a stream event is not JSON", nil, key)
    elseif typ == "error" or ev.event == "error" then
      local e = type(data.error) == "table" and data.error or data
      local code, etype = type(e.code) == "string" and e.code or nil, type(e.type) == "string" and e.type or nil
      local moderated = code == "moderation_blocked" or etype == "image_generation_user_error"
      job.stream_err = errors.new(moderated and "moderation" or "server",
        "the stream reported an error: " .. tostring(type(e.message) == "string" and e.message or "no message"),
        { code = code, type = etype, retryable = false }, key)
    elseif typ:match("partial_image$") then
      local bytes, msg = answer.b64(data.b64_json)
      local img = bytes and image.from_bytes(bytes, { partial = true, model = job.fields.model })
      if not img then
        job.stream_err = job.stream_err or errors.new("protocol", "a partial image is not usable: " .. tostring(msg), nil, key)
      else
        local index = compat.tointeger(data.partial_image_index) or job.partials
        img.partial_index = index
        job.partials = job.partials + 1
        if job.on_partial then job.on_partial(img, index) end
      end
    elseif typ:match("completed$") then
      job.completed = data
    end
  end
end

-- The end of a streamed answer: the completed image, or why there is none.
function Client:_stream_result(job, res)
  local key = secrets[self]
  if job.stream_err then return nil, job.stream_err end
  if not res.ok then
    local _, err = answer.transport_error(res, "the stream", self.max_response_bytes, key)
    if res.reason == "partial" or res.reason == "network" then
      err.kind, err.retryable = "network", true
      err.message = "the stream was cut off before its completed event: " .. res.error
    end
    if job.partials > 0 then
      err.message = string.format("%s (after %d partial image%s)", err.message, job.partials, job.partials == 1 and "" or "s")
      err.retryable = false -- the edit is under way and billed; partials were shown
    end
    return nil, err
  end
  local done = job.completed
  if not done then
    return nil, errors.new("protocol", "the stream ended without a completed event", { status = res.status }, key)
  end
  local bytes, msg = answer.b64(done.b64_json)
  if not bytes then return nil, errors.new("protocol", "the completed image: " .. tostring(msg), nil, key) end
  return answer.image(bytes, res, job.fields, { usage = done.usage, created = done.created_at, data = { done } }, nil, key)
end

-- Schedule another try of the current phase, or fail for good.
function Client:_retry_or_fail(job, err, res)
  local tries = job.phase == "download" and job.dl_attempts or job.attempts
  err.attempts = tries
  local wait = retry.wait(err, res, job.opts, tries)
  if not wait then return finish(job, nil, err) end
  if job.on_retry then
    job.on_retry { attempt = tries, wait = wait, status = err.status, kind = err.kind, error = err, phase = job.phase }
  end
  job.state, job.retry_at = "waiting", core.now() + wait
end

-- Move a job on once its transfer has finished.
function Client:_advance(job, now)
  local res = job.transfer:result()
  job.transfer:close()
  job.transfer = nil
  self._inflight = self._inflight - 1
  local key = secrets[self]
  if job.phase == "download" then
    report(job, "download", res.bytes_up, res.bytes_up, res.bytes_down, res.bytes_down, now, true)
    local img, err = answer.download(res, job.fields, job.body, job.url, self.max_download_bytes, key)
    if img then return finish(job, img) end
    return self:_retry_or_fail(job, err, res)
  end
  if res.ok then report(job, "download", res.bytes_up, res.bytes_up, res.bytes_down, res.bytes_down, now, true) end
  if res.stream then
    local img, err = self:_stream_result(job, res)
    if img then return finish(job, img) end
    return self:_retry_or_fail(job, err, res)
  end
  local img, err, url, body = answer.read(res, job.fields, self.max_response_bytes, key)
  if img then return finish(job, img) end
  if err then return self:_retry_or_fail(job, err, res) end
  -- A url answer: fetch it without the Authorization header, http(s) only.
  -- The edit is paid for; from here on only the download is retried.
  job.phase, job.body, job.url, job.dl_attempts = "download", body, url, 0
  job.state = "queued"
end

function Client:_launch(job)
  if job.phase == "download" then
    job.dl_attempts = job.dl_attempts + 1
    job.transfer = self._multi:start {
      url = job.url, follow = true, user_agent = USER_AGENT, headers = { "Accept: image/*" },
      timeout = job.opts.timeout, connect_timeout = job.opts.connect_timeout,
      idle_timeout = job.opts.idle_timeout, max_response_bytes = self.max_download_bytes,
    }
  else
    job.attempts = job.attempts + 1
    job.transfer = self._multi:start(job.spec)
    job.partials, job.completed, job.stream_err = job.partials or 0, nil, nil
  end
  job.state = "running"
  self._inflight = self._inflight + 1
end

-- Start queued jobs while slots are free; wake jobs whose backoff is over.
-- Returns the seconds until the next wake-up (or nil), and whether any
-- transfer was started.
function Client:_pump(now)
  local next_wake, started = nil, false
  for _, job in ipairs(self._jobs) do
    if job.state == "waiting" then
      if now >= job.retry_at then
        job.state = "queued"
      else
        next_wake = math.min(next_wake or math.huge, job.retry_at - now)
      end
    end
    if job.state == "queued" and self._inflight < self.max_concurrency then
      self:_launch(job)
      started = true
    end
  end
  return next_wake, started
end

local JOB_OPTS = { "timeout", "connect_timeout", "idle_timeout", "max_retries", "retry_timeouts",
  "retry_protocol", "max_retry_after", "retry_base", "retry_cap" }

-- submit(kind, req) -> job. A request that fails the local checks gives a job
-- that is already failed (attempts = 0), so callers handle every failure in
-- one place; nothing is sent for it.
function Client:submit(kind, req)
  if kind ~= "edit" and kind ~= "generate" then
    error("bad argument #1 to 'submit' ('edit' or 'generate' expected)", 2)
  end
  local job = setmetatable({ client = self, kind = kind, state = "queued", attempts = 0, phase = "api",
    t0 = core.now(), last_report = 0 }, Job)
  local spec, fields = self:_prepare(kind, req)
  if not spec then
    fields.attempts = 0
    finish(job, nil, fields)
    return job
  end
  local o = {}
  for _, k in ipairs(JOB_OPTS) do
    if req[k] ~= nil then o[k] = req[k] else o[k] = self[k] end
  end
  spec.idle_timeout = o.idle_timeout
  job.spec, job.fields, job.opts = spec, fields, o
  job.on_progress = opt(req.on_progress, "function", "on_progress", 3) or self.on_progress
  job.on_retry = opt(req.on_retry, "function", "on_retry", 3) or self.on_retry
  job.on_partial = opt(req.on_partial, "function", "on_partial", 3)
  self._jobs[#self._jobs + 1] = job
  self:_pump(job.t0)
  return job
end

-- poll(timeout_s) drives every transfer, waiting up to timeout_s for
-- something to happen (0: never blocks). Returns how many jobs still run.
function Client:poll(timeout)
  if timeout ~= nil and type(timeout) ~= "number" then
    error("bad argument #1 to 'poll' (number expected)", 2)
  end
  local now = core.now()
  local wake = self:_pump(now)
  local wait = timeout or 0
  if wake and wake < wait then wait = wake end
  self._multi:perform(wait)
  now = core.now()
  for _, job in ipairs(self._jobs) do
    local t = job.transfer
    if t then
      if job.spec.stream then self:_drain(job) end
      if t:done() then
        self:_advance(job, now)
      elseif job.on_progress then
        local up, up_total, down, down_total, answering = t:progress()
        local phase = job.phase == "download" and "download"
          or answering and "download" or (up_total > 0 and up >= up_total) and "wait" or "upload"
        report(job, phase, up, up_total, down, down_total, now)
      end
    end
  end
  local _, started = self:_pump(now)
  if started then self._multi:perform(0) end
  local live = {}
  for _, job in ipairs(self._jobs) do
    if not job:done() then live[#live + 1] = job end
  end
  self._jobs = live
  return #live
end

function Client:edit(req)
  return self:submit("edit", req):wait()
end

function Client:generate(req)
  return self:submit("generate", req):wait()
end

-- map(reqs [, {kind = "edit"|"generate"}]) runs the requests in parallel
-- (up to max_concurrency at once) and returns a list in request order: each
-- entry an Image, or the error for that request.
function Client:map(reqs, opts)
  if type(reqs) ~= "table" then error("bad argument #1 to 'map' (table expected)", 2) end
  local kind = opts and opts.kind or "edit"
  local jobs, results = {}, {}
  for i, r in ipairs(reqs) do jobs[i] = self:submit(kind, r) end
  for i, j in ipairs(jobs) do
    local img, err = j:wait()
    results[i] = img or err
  end
  return results
end

return M
