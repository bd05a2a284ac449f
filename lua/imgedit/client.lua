-- The client: its options, its jobs on the C core's curl multi handle, and
-- the calls a caller makes (edit, generate, submit, poll, map, download,
-- close). Building a request is request.lua's job, running one jobs.lua's,
-- reading a stream stream.lua's. The blocking calls are a submit plus a
-- wait on the same jobs.
local cjson = require "cjson"
local core = require "imgedit.core"
local errors = require "imgedit.errors"
local image = require "imgedit.image"
local masks = require "imgedit.mask"
local providers = require "imgedit.providers"
local request = require "imgedit.request"
local rules = require "imgedit.rules"
local jobs = require "imgedit.jobs"
local text = require "imgedit.text"

local M = {}

local DEFAULT_BASE_URL = "https://api.apiyi.com/v1"
local USER_AGENT = "imgedit/" .. core.version .. " libcurl/" .. core.curl_version()
M.USER_AGENT = USER_AGENT
M.CONTROL = request.CONTROL
M.Job = jobs.Job

-- Keys live here, not in the client table, so that printing or serialising a
-- client can never show one.
local secrets = setmetatable({}, { __mode = "k" })

-- Process-wide fallbacks before the environment, for hosts that configure
-- once (the command line's `run --emulate` points them at an emulator).
M.defaults = {}

local Client = {}
Client.__index = Client
M.Client = Client

-- The base url without its user and password, like the key: never shown.
function Client.__tostring(c)
  return string.format("imgedit.client(%s, %s, %s%s)", c.provider, text.safe(c.base_url), text.safe(c.model),
    c._closed and ", closed" or "")
end

local DEFAULTS = {
  model = "gpt-image-2", timeout = 600, connect_timeout = 15, idle_timeout = 60, max_retries = 2,
  retry_unanswered = false, retry_timeouts = false, retry_protocol = false, max_retry_after = 60,
  retry_base = 0.5, retry_cap = 8, max_concurrency = 8, max_response_bytes = 128 * 1024 * 1024,
  max_download_bytes = 64 * 1024 * 1024, progress_interval = 0.1,
  preserve = false, feather = masks.FEATHER, drift_tolerance = masks.TOLERANCE, drift_warning = masks.DRIFT_WARNING,
  decode = false,
}

-- Where an option lives in the client, when its own name is a method's:
-- timeout() is the event loop's (cqueues calls obj:timeout()).
local OPTION_FIELD = { timeout = "_timeout" }

-- _option(k) -> the client's value of option k, the fallback of each job's.
function Client:_option(k) return self[OPTION_FIELD[k] or k] end

-- new(opts) -> client. Every option is checked here, where it is given: an
-- unknown name or a value of the wrong type or range raises.
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  local env_provider = M.defaults.provider or os.getenv("IMGEDIT_PROVIDER")
  if opts.provider == nil and env_provider and env_provider ~= "" then
    if not providers.list[env_provider] then
      error("IMGEDIT_PROVIDER must be apiyi, openai, azure or compatible, got '" .. env_provider .. "'", 2)
    end
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.provider, opts = env_provider, o
  end
  request.check_new(opts, 2)
  local named = opts.provider and providers.list[opts.provider]
  local base, from = opts.base_url or M.defaults.base_url, nil
  if base == nil then base, from = os.getenv("IMGEDIT_BASE_URL"), "IMGEDIT_BASE_URL" end
  if (base == nil or base == "") and named then -- the provider's own address
    base, from = named.base_url, nil
    if not base and named.endpoint_env then base, from = os.getenv(named.endpoint_env), named.endpoint_env end
    if base == nil or base == "" then
      error("provider '" .. opts.provider .. "' needs base_url ("
        .. (named.endpoint_env and "its resource endpoint) or " .. named.endpoint_env
          or "the service's address, such as https://HOST/v1) or IMGEDIT_BASE_URL"), 2)
    end
  end
  if base == nil or base == "" then base, from = DEFAULT_BASE_URL, nil end
  if from then -- from the environment: checked all the same
    local ok, msg = pcall(request.check_option, "base_url", base, request.CLIENT_OPTIONS, 1)
    if not ok then error((tostring(msg):gsub("^[^:]*:%d+: ", "")) .. " (from " .. from .. ")", 2) end
  end
  -- The key goes in a header: over plain http to another machine, anyone
  -- on the way reads it. A typo of https is refused, not sent.
  local host = base:match("^[Hh][Tt][Tt][Pp]://([^/?#]*)")
  if host and not (opts.allow_http or os.getenv("IMGEDIT_ALLOW_HTTP") == "1") then
    host = (host:gsub("^.*@", ""):match("^%[([^%]]*)%]") or host:gsub("^.*@", ""):match("^[^:]*")):lower()
    local loopback = host == "localhost" or host:match("%.localhost$") or host:match("^127%.%d+%.%d+%.%d+$")
      or host == "::1" or host == "0:0:0:0:0:0:0:1"
    if not loopback then
      error("base_url '" .. text.redact(base) .. "' is plain http to another machine: the API key would travel"
        .. " unencrypted. Use https, or pass allow_http = true (--allow-http, IMGEDIT_ALLOW_HTTP=1) if you mean it",
        2)
    end
  end
  local provider = opts.provider or providers.detect(base)
  if provider == "azure" and (base:find("/openai/v1/*$") or base:find("/openai/deployments", 1, true)) then
    error("provider 'azure' takes the resource endpoint as base_url (https://NAME.openai.azure.com), not '"
      .. text.redact(base)
      .. "': images go through Azure's deployments API, /openai/deployments/{deployment}/images/...", 2)
  end
  local c = { base_url = (base:gsub("/+$", "")), user_agent = USER_AGENT, limits = opts.limits, provider = provider,
    on_progress = opts.on_progress, on_retry = opts.on_retry, on_warning = opts.on_warning, _warned = {}, prices = opts.prices,
    -- The scheduler's lists, so that a submit or a poll costs what happened,
    -- not how many jobs wait: new jobs in a FIFO (_queue[_qhead.._qtail]), jobs
    -- ready again (a retry whose backoff is over, a url to fetch) before
    -- them in _ready, jobs in backoff in _waiting, transfers in _running
    -- (in launch order), and every live job in _all (for close).
    _queue = {}, _qhead = 1, _qtail = 0, _ready = {}, _waiting = {}, _running = {}, _all = {}, _live = 0,
    -- transfers that finished and wait for their job to read them: kept
    -- here, so that one finished inside a nested poll is not missed
    _finished = setmetatable({}, { __mode = "k" }) }
  for k, v in pairs(DEFAULTS) do
    if opts[k] ~= nil then c[OPTION_FIELD[k] or k] = opts[k] else c[OPTION_FIELD[k] or k] = v end
  end
  local y = opts.yield
  if y == true then y = coroutine.yield end
  c.yield = y
  -- The network settings belong to the connection pool: every transfer shares them.
  c._multi = core.multi { ca_file = opts.ca_file, ca_path = opts.ca_path, proxy = opts.proxy }
  setmetatable(c, Client)
  if provider == "azure" then
    c.deployment = opts.deployment
    c.api_version = opts.api_version or os.getenv("OPENAI_API_VERSION") or providers.AZURE_API_VERSION
  end
  local key = opts.api_key or M.defaults.api_key or os.getenv("IMGEDIT_API_KEY")
  local key_env = providers.list[provider].key_env
  if (key == nil or key == "") and key_env then key = os.getenv(key_env) end
  secrets[c] = key ~= "" and key or nil
  return c
end

function Client:_key() return secrets[self] end

-- _warn(msg): tells the caller once per client (on_warning, else stderr)
-- of something that works today and will not for long.
function Client:_warn(msg)
  if not msg or self._warned[msg] then return end
  self._warned[msg] = true
  if self.on_warning then return self.on_warning(msg) end
  io.stderr:write("imgedit: warning: ", text.safe(msg, true), "\n")
end

-- rules([model]) -> the rules this client checks a request for model (its
-- own model by default) against: its provider's, with its limits over them.
function Client:rules(model)
  if model ~= nil and type(model) ~= "string" then error("bad argument #1 to 'rules' (string expected)", 2) end
  return rules.for_model(model or self.model, self.limits, self.provider)
end

local function check_open(c, fn)
  if getmetatable(c) ~= Client then
    error(string.format("bad self to '%s' (a client expected: call it as client:%s(...))", fn, fn), 3)
  end
  if c._closed then error("client is closed (" .. fn .. " after close)", 3) end
end

-- close(): cancels every live job (kind "canceled") and frees the
-- connections. Idempotent; also the client's __close and __gc. Any later
-- call on the client raises "client is closed".
function Client:close()
  if self._closed then return end
  self._closed = true
  local live = {}
  for job in pairs(self._all) do live[#live + 1] = job end
  table.sort(live, function(a, b) return a.seq < b.seq end)
  for _, job in ipairs(live) do job:cancel("the client was closed") end
  self._multi:close()
end

-- _retire(job): a job of this client ended (done, failed or canceled).
function Client:_retire(job)
  if not self._all[job] then return end
  self._all[job] = nil
  self._live = self._live - 1
end

-- Jobs that stopped running (finished, or back to waiting or queued) leave
-- _running for the list their state says.
function Client:_sort_out()
  local still = {}
  for _, job in ipairs(self._running) do
    local st = job.state
    if st == "running" then
      still[#still + 1] = job
    elseif st == "waiting" then
      self._waiting[#self._waiting + 1] = job
    elseif st == "queued" then
      self._ready[#self._ready + 1] = job
    end
  end
  self._running = still
end

-- The next job to launch, or nil: ready ones first, then new ones; jobs
-- canceled while they waited are dropped here.
local function next_queued(c)
  while #c._ready > 0 do
    local job = table.remove(c._ready, 1)
    if job.state == "queued" then return job end
  end
  -- Head and tail are counted: with the taken slots set to nil, # of the
  -- array would not say where its end is.
  local q = c._queue
  while c._qhead <= c._qtail do
    local job = q[c._qhead]
    q[c._qhead] = nil
    c._qhead = c._qhead + 1
    if job.state == "queued" then return job end
  end
  -- Empty: start the array again from 1.
  c._queue, c._qhead, c._qtail = {}, 1, 0
end
Client.__close = Client.close
Client.__gc = Client.close

-- A job that reports progress must be looked at every progress_interval,
-- even while nothing arrives (the wait for the model): that interval, or nil.
local function progress_wake(c)
  for _, job in ipairs(c._running) do
    if job.state == "running" and job.on_progress then return math.max(c.progress_interval, 0.02) end
  end
end

-- Start queued jobs while slots are free; wake jobs whose backoff is over.
-- Returns the seconds until the next wake-up (or nil), and whether any
-- transfer was started.
function Client:_pump(now)
  local next_wake, started = nil, false
  if self._closed then return nil, false end
  self:_sort_out()
  if #self._waiting > 0 then
    local still = {}
    for _, job in ipairs(self._waiting) do
      if job.state == "waiting" then
        if now >= job.retry_at then
          jobs.wake(job)
          self._ready[#self._ready + 1] = job
        else
          still[#still + 1] = job
          next_wake = math.min(next_wake or math.huge, job.retry_at - now)
        end
      end
    end
    self._waiting = still
  end
  while jobs.free_slot(self) and not self._closed do
    local job = next_queued(self)
    if not job then break end
    jobs.launch(job)
    self._running[#self._running + 1] = job
    started = true
  end
  local p = progress_wake(self)
  if p then next_wake = math.min(next_wake or math.huge, p) end
  return next_wake, started
end


local function enqueue(c, job)
  c._all[job] = true
  c._live = c._live + 1
  c._qtail = c._qtail + 1
  c._queue[c._qtail] = job
  -- Only a free slot makes a submit do more than queue the job.
  if jobs.free_slot(c) then c:_pump(job.t0) end
  return job
end

-- start(c, kind, req, level) -> job; `level` is the caller's frame as the
-- caller of start sees it, so that errors point at the user's line.
local function start(self, kind, req, level)
  if kind ~= "edit" and kind ~= "generate" and kind ~= "download" then
    error("bad argument #1 to 'submit' ('edit', 'generate' or 'download' expected)", level + 1)
  end
  if type(req) ~= "table" then
    error(string.format("bad argument #2 to '%s' (table expected, got %s)", kind, type(req)), level + 1)
  end
  local opts = request.job_options(self, req, level + 1)
  local job = jobs.new(self, kind)
  job.opts = opts
  job.on_progress, job.on_retry, job.on_partial = opts.on_progress, opts.on_retry, req.on_partial
  if kind == "download" then
    -- A picture already paid for, fetched from the url its answer gave.
    local url = req.url
    local scheme = type(url) == "string" and url:match("^(%a[%w+.-]*)://")
    if not scheme or (scheme:lower() ~= "http" and scheme:lower() ~= "https") then
      error("bad argument #1 to 'download' (an http or https url, or an error with err.url, expected)", level + 1)
    end
    job.phase, job.url, job.dl_attempts, job.request_id = "download", url, 0, req.request_id
    job.fields, job.body = { model = req.model }, { data = { {} } }
    return enqueue(self, job)
  end
  local spec, fields, inpaint = request.prepare(self, kind, req, secrets[self], level + 1)
  if not spec then
    fields.attempts = 0
    jobs.finish(job, nil, fields)
    return job
  end
  spec.timeout, spec.connect_timeout, spec.idle_timeout = opts.timeout, opts.connect_timeout, opts.idle_timeout
  -- The network thread hands each picture of the answer to the decoder threads.
  if opts.decode == "rgba" then
    spec.decode, spec.max_pixels, spec.max_decode_bytes = "json", image.max_pixels, image.max_decode_bytes
  end
  -- An edit with a mask: the decoder makes the mask's figures (or the
  -- composite) too, so that no pixel work is left for the caller's thread.
  if inpaint then
    spec.inpaint = jobs.inpaint_spec(self, opts, fields, inpaint)
    spec.drop_pixels = opts.decode ~= "rgba"
    spec.decode, spec.max_pixels, spec.max_decode_bytes = "json", image.max_pixels, image.max_decode_bytes
  end
  job.spec, job.fields, job.inpaint = spec, fields, inpaint
  return enqueue(self, job)
end

-- submit(kind, req) -> job. A request that fails the local checks gives a job
-- that is already failed (attempts = 0), so callers handle every failure in
-- one place; nothing is sent for it. Options of the wrong type raise, and
-- leave nothing behind in the client.
function Client:submit(kind, req)
  check_open(self, "submit")
  return start(self, kind, req, 2)
end

-- poll(timeout_s) drives every transfer, waiting up to timeout_s for
-- something to happen (0: never blocks). Returns how many jobs still run.
-- It may be called again from inside a callback.
function Client:poll(timeout)
  check_open(self, "poll")
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    error("bad argument #1 to 'poll' (number >= 0 expected)", 2)
  end
  local wake = self:_pump(core.now())
  local wait = timeout or 0
  if wake and wake < wait then wait = wake end
  local finished = self._finished
  local _, now = self._multi:perform(wait, finished)
  -- A copy of the running jobs (at most max_concurrency): callbacks may
  -- submit or cancel while it is walked. Only jobs with something to do
  -- cost a call into C.
  local list = {}
  for i, job in ipairs(self._running) do list[i] = job end
  for _, job in ipairs(list) do
    if self._closed then return 0 end
    local t = job.transfer
    if t and (finished[t] or job.on_progress or job.spec and job.spec.stream) then jobs.step(job, now, finished) end
  end
  if self._closed then return 0 end
  -- New transfers go to the network thread at once: nothing more to drive.
  self:_pump(now)
  return self._live
end

-- fd() -> a file descriptor (an integer) that becomes readable whenever
-- poll has something to hand over | nil, err. An event loop waits on it
-- for reading, and on timeout()'s seconds, then calls poll(0). Reading it
-- is poll's business; it lives until close.
function Client:fd()
  check_open(self, "fd")
  local fd, why = self._multi:fd()
  if not fd then return nil, errors.new("io", why) end
  return fd
end

-- timeout() -> the seconds until poll must run although fd() stayed quiet
-- (a retry's back-off over, progress to report, a queued job to start),
-- or nil when nothing waits on a clock.
function Client:timeout()
  check_open(self, "timeout")
  local now, wake = core.now(), nil
  local free = jobs.free_slot(self)
  if free and (#self._ready > 0 or self._qhead <= self._qtail) then return 0 end
  for _, job in ipairs(self._waiting) do
    if job.state == "waiting" then wake = math.min(wake or math.huge, math.max(job.retry_at - now, 0)) end
  end
  for _, job in ipairs(self._running) do -- not sorted out yet: the next poll does it
    if job.state == "queued" and free then return 0 end
    if job.state == "waiting" then wake = math.min(wake or math.huge, math.max(job.retry_at - now, 0)) end
  end
  local p = progress_wake(self)
  if p then wake = math.min(wake or math.huge, p) end
  return wake
end

-- A client is a cqueues pollable object as it is: cqueues.poll(client)
-- returns when poll(0) has work.
function Client:pollfd()
  local fd, err = self:fd()
  if not fd then error(tostring(err), 2) end
  return fd
end

function Client:events() return "r" end

function Client:edit(req)
  check_open(self, "edit")
  return start(self, "edit", req, 2):wait()
end

function Client:generate(req)
  check_open(self, "generate")
  return start(self, "generate", req, 2):wait()
end

-- download(url | err [, req]) -> Image | nil, err: fetch a picture the
-- service already made, from its url (or from the error of a url answer
-- whose download failed: its url and request id), without the
-- Authorization header, with the download's retries.
function Client:download(url, req)
  check_open(self, "download")
  local r = {}
  for k, v in pairs(req or {}) do r[k] = v end
  if type(url) == "table" and url.url then
    r.request_id = r.request_id or url.request_id
    url = url.url
  end
  r.url = url
  return start(self, "download", r, 2):wait()
end

-- _api{method=, path=, json=, parts=, raw=, billable=, max_response_bytes=,
-- timeout=, max_retries=, on_progress=} -> job, whose result is {status=,
-- json= (or body=, with raw), request_id=} | nil, err: a call of the Files and Batch
-- routes (batch_provider.lua), with the jobs' retries and errors. billable:
-- it must not be sent twice unasked (a batch's creation).
function Client:_api(call)
  check_open(self, "_api")
  if self.provider == "azure" then
    error("the Files and Batch routes are not supported with provider azure (its batches take other urls)", 2)
  end
  local opts = request.job_options(self, { timeout = call.timeout, max_retries = call.max_retries,
    on_progress = call.on_progress }, 2)
  local job = jobs.new(self, "api")
  job.opts, job.on_progress, job.fields = opts, opts.on_progress, {}
  local key = secrets[self]
  if not key then
    jobs.finish(job, nil, errors.new("auth", "no API key: pass api_key to imgedit.new or set IMGEDIT_API_KEY",
      { param = "api_key", attempts = 0 }))
    return job
  end
  local spec = { url = self.base_url .. call.path, method = call.method, parts = call.parts,
    headers = { providers.auth(self, key), "Accept: application/json", "Expect:" }, user_agent = self.user_agent,
    max_response_bytes = call.max_response_bytes or self.max_response_bytes, billable = call.billable or nil,
    timeout = opts.timeout, connect_timeout = opts.connect_timeout, idle_timeout = opts.idle_timeout }
  if call.json ~= nil then
    spec.body = cjson.encode(call.json)
    spec.headers[#spec.headers + 1] = "Content-Type: application/json"
  end
  job.spec, job.raw = spec, call.raw
  return enqueue(self, job)
end

-- map(reqs [, {kind = "edit"|"generate"}]) runs the requests in parallel
-- (up to max_concurrency at once) and returns a list in request order: each
-- entry an Image, or the error for that request.
function Client:map(reqs, opts)
  check_open(self, "map")
  if type(reqs) ~= "table" then error("bad argument #1 to 'map' (table expected)", 2) end
  local kind = opts and opts.kind or "edit"
  local list, results = {}, {}
  for i, r in ipairs(reqs) do list[i] = start(self, kind, r, 2) end
  for i, j in ipairs(list) do
    local img, err = j:wait()
    results[i] = img or err
  end
  return results
end

return M
