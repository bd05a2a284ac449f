-- The job state machine. A job moves through
--   queued (waiting for a transfer slot) -> running (a transfer in flight)
--   -> waiting (backing off before a retry) -> queued ...
-- and ends "done" or "failed". Everything happens inside client:poll(), in
-- the caller's Lua state; libcurl never calls into Lua.
--
-- Every change of a job's state and of its client's count of transfers in
-- flight (`_inflight`) is in this file: `M.new`, `M.wake`, `launch`,
-- `advance`, `retry_or_fail`, `finish`, `abort` and `Job:cancel`. What a
-- paid picture gets before it is handed over is deliver.lua's. Every
-- callback of the caller is called through `call`,
-- under pcall. A callback may call the library back (cancel any job, submit,
-- poll, even wait): after each callback the machine looks again at what the
-- job has become, and a cancel always wins.
local compat = require "imgedit.compat"
local core = require "imgedit.core"
local errors = require "imgedit.errors"
local answer = require "imgedit.answer"
local deliver = require "imgedit.deliver"
local image = require "imgedit.image"
local masks = require "imgedit.mask"
local retry = require "imgedit.retry"
local stream = require "imgedit.stream"

local M = {}

local Job = {}
Job.__index = Job
M.Job = Job

function Job.__tostring(j)
  return string.format("imgedit.job(%s, %s)", j.kind, j.state)
end

function Job:done() return self.state == "done" or self.state == "failed" end

-- new(client, kind) -> a queued job of the client's.
function M.new(c, kind)
  c._seq = (c._seq or 0) + 1
  c._inflight = c._inflight or 0 -- its transfers in flight: counted here alone
  return setmetatable({ client = c, kind = kind, state = "queued", attempts = 0, phase = "api",
    t0 = core.now(), last_report = 0, seq = c._seq }, Job)
end

-- wake(job): its backoff is over; it waits for a slot again.
function M.wake(job) job.state = "queued" end

-- in_flight(client) -> how many of its transfers are in flight.
function M.in_flight(c) return c._inflight or 0 end

-- free_slot(client) -> whether another transfer may start.
function M.free_slot(c) return M.in_flight(c) < c.max_concurrency end

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
  if self._busy then
    -- Inside one of this job's own callbacks: it cannot end while they run.
    error("wait() called from a callback of the same job", 2)
  end
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

local function finish(job, img, err)
  if job:done() then return end
  if img and job.kind ~= "api" then img = deliver.picture(job, img) end
  if job.cb_err then
    -- A callback failed after the request could be billed: the job fails
    -- as the callback's, but what was paid for comes along.
    local e = job.cb_err
    e.image = img
    if err then e.url, e.cause_error = e.url or err.url, err end
    img, err = nil, e
  end
  job.image, job.err = img, err
  job.state = err and "failed" or "done"
  job.client:_retire(job)
end

-- Stop the transfer (if any) and free its slot. Returns whether the
-- service may have the request: the whole of it went out, or it began to
-- answer (the core's cancel returns once the network thread let go, so
-- these figures are final).
local function abort(job)
  local t = job.transfer
  if not t then return false end
  job.transfer = nil
  t:cancel()
  -- a client's __gc may run after its transfers' own: a closed one says nothing
  local ok, res = pcall(t.result, t)
  if not ok then res = nil end
  t:close()
  job.client._inflight = job.client._inflight - 1
  return res ~= nil and (res.sent_all or res.answered) and true or false
end

-- cancel() aborts the transfer at once; the job fails with kind "canceled",
-- with maybe_billed when the whole request had gone out (the service bills
-- what it received, answered or not). Returns false when the job had
-- already finished.
function Job:cancel(why)
  if self:done() then return false end
  local phase = self.phase
  local billed = abort(self) or phase == "download" or self.answered
  self.state = "failed"
  local msg = why or "canceled by the caller"
  if billed then
    msg = msg .. (phase == "download" and "; the picture is paid for and can still be downloaded from " .. self.url
      or "; the whole request had reached the service, which may bill it")
  end
  self.err = errors.new("canceled", msg, { attempts = self.attempts, maybe_billed = billed or nil,
    url = phase == "download" and self.url or nil, request_id = self.request_id })
  self.client:_retire(self)
  return true
end

-- Whether the service may already hold (and bill) what this job sent.
local function billable_now(job)
  if job.phase == "download" or job.answered then return true end
  local t = job.transfer
  if not t then return false end
  local up, up_total, _, _, answering = t:progress()
  return answering or (up_total > 0 and up >= up_total)
end

-- A callback raised: the job ends as kind "callback". If nothing can have
-- been billed yet it ends now; otherwise its transfer runs to the end (the
-- service bills it either way) so that the picture is not lost, and the
-- job fails then, with err.image.
local function callback_failed(job, name, e)
  if job:done() or job.cb_err then return end
  local msg = type(e) == "string" and e or errors.is(e) and e.message or tostring(e)
  job.cb_err = errors.new("callback", name .. " raised an error: " .. tostring(msg),
    { callback = name, cause = e, attempts = job.attempts, retryable = false })
  if billable_now(job) then
    job.cb_err.maybe_billed = true
    return
  end
  abort(job)
  finish(job, nil, job.cb_err)
end

-- call(job, t, name, ...) -> whether the job goes on: it is not done, and if
-- `t` is given, that transfer is still the job's.
local function call(job, t, name, ...)
  local fn = job[name]
  if fn and not job.cb_err and not job:done() then
    local ok, e = pcall(fn, ...)
    if not ok then callback_failed(job, name, e) end
  end
  return not job:done() and (t == nil or job.transfer == t)
end

local PHASES = { upload = 1, wait = 2, download = 3 }
local PHASE_LIST = { "upload", "wait", "download" }

-- Tell on_progress, at most every `progress_interval` seconds, but every
-- phase at least once and in order, however fast the transfer. Returns
-- whether the job goes on.
local function report(job, phase, up, up_total, down, down_total, now, force)
  if not job.on_progress or job.cb_err then return not job:done() end
  local last = job.last_phase and PHASES[job.last_phase] or 0
  if PHASES[phase] < last then return true end
  if PHASES[phase] == last and not force and now - job.last_report < job.client.progress_interval then
    return true
  end
  job.last_phase, job.last_report = phase, now
  -- the phases not told yet, in order; or the same phase again, with its new figures
  for i = math.min(last + 1, PHASES[phase]), PHASES[phase] do
    local p = { phase = PHASE_LIST[i], uploaded = up, upload_total = up_total, downloaded = 0, download_total = 0,
      elapsed = now - job.t0, attempt = job.attempts }
    if i == PHASES[phase] then p.downloaded, p.download_total = down, down_total end
    if not call(job, nil, "on_progress", p) then return false end
  end
  return true
end

-- Schedule another try of the current phase, or fail for good.
local function retry_or_fail(job, err, res)
  local tries = job.phase == "download" and job.dl_attempts or job.attempts
  err.attempts = tries
  local wait = not job.cb_err and retry.wait(err, res, job.opts, tries)
  if not wait then
    -- The caller opted in (retry_unanswered) or the server said so: it was.
    if err.maybe_billed and tries > 1 then answer.sent_again(err, tries) end
    if job.phase == "download" then
      -- The edit is paid for: say where the picture is, to fetch it later.
      err.url, err.request_id, err.maybe_billed = job.url, job.request_id, true
      err.message = err.message .. "; the picture is paid for and can still be downloaded from " .. job.url
    end
    return finish(job, nil, err)
  end
  -- The state first: a cancel inside on_retry then wins over the retry.
  job.state, job.retry_at = "waiting", core.now() + wait
  call(job, nil, "on_retry", { attempt = tries, wait = wait, status = err.status, kind = err.kind, error = err,
    phase = job.phase })
end

-- Move a job on once its transfer has finished.
local function advance(job, t, now, finished)
  local c = job.client
  finished[t] = nil
  local res = t:take()
  if res.part then res.file = job.spec.parts and job.spec.parts[res.part] and job.spec.parts[res.part].path end
  job.transfer, job._last_byte = nil, res.last_byte
  -- The service's rate-limit headers of its last answer, for callers that pace themselves.
  if job.phase ~= "download" then job.ratelimit = res.ratelimit end
  c._inflight = c._inflight - 1
  local key = c:_key()
  if res.ok or job.phase == "download" then
    -- The last report before the answer is read; a cancel here wins.
    job.answered = res.ok
    local go = report(job, "download", res.bytes_up, res.bytes_up, res.bytes_down, res.bytes_down, now, true)
    job.answered = nil
    if not go then return end
  end
  if job.kind == "api" then
    local out, err = answer.api(res, job.spec.max_response_bytes, key, job.spec.billable, job.raw)
    if out then return finish(job, out) end
    return retry_or_fail(job, err, res)
  end
  if job.phase == "download" then
    local img, err = answer.download(res, job.fields, job.body, job.url, c.max_download_bytes, key)
    if img then
      img.request_id = job.request_id or img.request_id
      return finish(job, img)
    end
    return retry_or_fail(job, err, res)
  end
  if res.stream then
    local img, err = stream.result(job, res, c.max_response_bytes, key)
    if img then return finish(job, img) end
    return retry_or_fail(job, err, res)
  end
  local img, err, url, body = answer.read(res, job.fields, c.max_response_bytes, key)
  if img then return finish(job, img) end
  if err then return retry_or_fail(job, err, res) end
  -- A url answer: fetch it without the Authorization header, http(s) only.
  -- The edit is paid for; from here on only the download is retried.
  job.phase, job.body, job.url, job.dl_attempts, job.request_id = "download", body, url, 0, res.request_id
  job.state = "queued"
end

-- inpaint_spec(client, opts, fields, inpaint) -> what the decoder needs to
-- make an edit's mask figures, or with preserve its composite: image 1
-- and the mask as they were sent, and the options deliver.lua would use.
function M.inpaint_spec(c, opts, fields, inpaint)
  return { base = inpaint.base.data, mask = inpaint.mask.data, preserve = opts.preserve or false,
    feather = opts.feather, tolerance = opts.drift_tolerance, quality = masks._quality(fields.output_compression),
    keep_rgba = opts.decode == "rgba" }
end

function M.launch(job)
  local c = job.client
  if job.phase == "download" then
    job.dl_attempts = job.dl_attempts + 1
    local rgba = job.opts.decode == "rgba"
    local t, msg = c._multi:start {
      url = job.url, follow = true, user_agent = c.user_agent, headers = { "Accept: image/*" },
      timeout = job.opts.timeout, connect_timeout = job.opts.connect_timeout,
      idle_timeout = job.opts.idle_timeout, max_response_bytes = c.max_download_bytes,
      decode = (rgba or job.inpaint) and "bytes" or nil, max_pixels = image.max_pixels,
      max_decode_bytes = image.max_decode_bytes,
      inpaint = job.inpaint and M.inpaint_spec(c, job.opts, job.fields, job.inpaint) or nil,
      drop_pixels = not rgba,
    }
    if not t then -- a forked child's inherited client: the picture stays the parent's to fetch
      return finish(job, nil, errors.new("canceled", msg .. "; the picture is paid for and can still be downloaded"
        .. " from " .. job.url, { attempts = job.attempts, url = job.url, request_id = job.request_id,
        maybe_billed = true, retryable = false }, c:_key()))
    end
    job.transfer = t
  else
    job.attempts = job.attempts + 1
    local t, msg, why, i = c._multi:start(job.spec)
    if not t and why == "forked" then
      return finish(job, nil, errors.new("canceled", msg, { attempts = job.attempts, retryable = false }, c:_key()))
    end
    if not t then
      -- A file checked at submit cannot be opened now: deleted, or made
      -- unreadable, while the job waited for a slot. Nothing was sent.
      local part = job.spec.parts[i]
      return finish(job, nil, errors.new("io", string.format("%s could not be read when its upload was to start"
        .. " (deleted or changed after the request was checked); nothing was sent", tostring(part.path or part.name)),
        { param = part.name == "mask" and "mask" or "images", attempts = job.attempts, retryable = false },
        c:_key()))
    end
    job.transfer = t
    job.partials, job.completed, job.stream_err = job.partials or 0, nil, nil
  end
  job.state = "running"
  c._inflight = c._inflight + 1
end

-- step(job, now, finished): look at a running job after the transfers
-- moved; `finished` holds the transfers known to have finished. A poll from
-- inside one of the job's callbacks leaves the job to the outer one.
local step
function M.step(job, now, finished)
  if job._busy then return end
  job._busy = true
  local ok, e = pcall(step, job, now, finished)
  job._busy = nil
  if not ok then error(e, 0) end
end

-- Hand the stream's new events on; false once the job must stop.
local function drain(job, t)
  stream.drain(job, t:events(), job.client:_key(), function(img, index)
    return call(job, t, "on_partial", img, index)
  end)
  return job.transfer == t and not job:done()
end

function step(job, now, finished)
  local t = job.transfer
  if not t or job:done() then return end
  local streaming = job.spec and job.spec.stream and job.phase ~= "download"
  if streaming and not drain(job, t) then return end
  if finished[t] then
    -- The transfer may have ended while callbacks ran: its last events too.
    if streaming and not drain(job, t) then return end
    return advance(job, t, now, finished)
  end
  if job.on_progress and not job.cb_err then
    local up, up_total, down, down_total, answering = t:progress()
    local phase = job.phase == "download" and "download"
      or answering and "download" or (up_total > 0 and up >= up_total) and "wait" or "upload"
    report(job, phase, up, up_total, down, down_total, now)
  end
end

M.finish = finish

return M
