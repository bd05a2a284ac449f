-- Batches: the same kind of edit over hundreds or thousands of pictures,
-- at the provider's pace, resumable after a crash.
--
-- On disk, in the batch's folder:
--   <name>.<ext>                 each output (atomic, with its lineage inside)
--   .imgedit-batch[.I-of-N].jsonl the journal: one line when a request is
--                                sent, one when its job ends; append only,
--                                so a kill -9 loses at most the last line
--   batch-report[.I-of-N].json   per job: status, tokens, cost, attempts,
--                                request id, error
--   failed[.I-of-N].jsonl        the jobs that did not end done, as a
--                                manifest to run again
-- A second run reads every journal in the folder: a job that ended done
-- is skipped, a picture paid for whose download failed is fetched from its
-- url, and a job that was sent but never ended (in flight at the crash) is
-- the only kind sent again: the report names those (maybe_paid_twice). A
-- job that ended failed with maybe_billed (the service may have made and
-- billed it) is not sent again unless asked (retry_maybe_billed). Each
-- journal line is on the disk (fdatasync), not only in the kernel, before
-- the next request goes out: after a power cut a paid job never looks
-- unpaid.
--
-- Memory does not grow with the batch: the manifest is read a line at a
-- time, jobs are submitted only as slots free up, and a finished job is
-- written out and dropped. What stays per job is its name (to refuse a
-- name used twice) and, on a resume, what the journal said of it.
local core = require "imgedit.core"
local client_mod = require "imgedit.client"
local budgets = require "imgedit.budget"
local errors = require "imgedit.errors"
local files = require "imgedit.files"
local image = require "imgedit.image"
local lineage = require "imgedit.lineage"
local manifest = require "imgedit.manifest"
local pace_mod = require "imgedit.pace"
local prices = require "imgedit.prices"
local request = require "imgedit.request"
local store = require "imgedit.store"
local J = require "imgedit.batch_journal"
local report_mod = require "imgedit.batch_report"

local M = {}

-- How often a job refused with 429 (never billed) goes back in line,
-- after the client's own retries, before it fails as rate_limit.
local REQUEUES = 50

-- ---- options ----

local CHECK = {
  client = true, jobs = true, manifest = true, prompt = true, pictures = true, dir = true, defaults = true,
  concurrency = true, budget = true, overwrite = true, shard = true, cache = true, lineage = true, on_job = true, on_tick = true,
  interrupts = true, tick = true, retry_maybe_billed = true,
  -- the provider's route (batch_provider.lua)
  route = true, poll_interval = true, detach = true, cancel = true, dry_run = true, keep_files = true, uploads = true,
  max_lines = true, max_bytes = true, _on_step = true,
}
local PROVIDER_ONLY = { "poll_interval", "detach", "cancel", "dry_run", "keep_files", "uploads", "max_lines", "max_bytes" }

-- ---- one job ----

-- The request a job sends: its fields, without what only the batch reads.
local function request_of(entry)
  local req = {}
  for k, v in pairs(entry) do
    if k ~= "name" and k:sub(1, 1) ~= "_" then req[k] = v end
  end
  return req
end

-- ---- the run ----

local Run = {}
Run.__index = Run

-- Budget: what is spent plus what the jobs in flight may still cost.
function Run:_afford(item)
  if not self.budget then return true end
  local s, f = self.stats, self.reserved
  local usd, msg = budgets.check(self.budget, { requests = s.requests + f.requests, tokens = s.tokens + f.tokens,
    usd = s.usd + f.usd }, { item }, self.client)
  if not usd then return nil, msg end
  item.usd_estimate = usd
  return true
end

function Run:_reserve(item, sign)
  local f = self.reserved
  f.requests = f.requests + sign
  f.tokens = f.tokens + sign * item.estimate
  f.usd = f.usd + sign * (item.usd_estimate or 0)
end

-- An ended job: counted, journaled, told.
function Run:_ended(ev)
  local s = self.stats
  if ev.event == "done" then s.done = s.done + 1 else s.failed = s.failed + 1 end
  ev.at = J.iso(os.time())
  J.append(self.journal, ev)
  if self.on_job then self.on_job(ev) end
  if ev.event == "done" and ev.maybe_paid_twice then s.paid_twice[#s.paid_twice + 1] = ev.name end
end

-- Whether the file at path is this job's (batch_journal.lua).
function Run:_ours(item, path) return J.ours(self.known[item.name], item, path) end

-- Save a picture the job got (paid now, or fetched from an old url).
function Run:_save(slot, img)
  local item = slot.item
  if self.lineage then
    local parents = {}
    for i, s in ipairs(item.inputs) do parents[i] = s.sha256 end
    img = image.with_lineage(img, lineage.record {
      prompt = item.req.prompt, model = item.model, params = item.fields, step = item.name, parents = parents,
      mask = item.mask and item.mask.sha256, request_id = img.request_id,
    })
  end
  -- The cache first: a kill between the two then finds it there.
  if self.cache then self.store:put({ key = item.cache_key }, img) end
  local path = files.join(self.dir, item.name .. "." .. image.EXT[img.format])
  local w = self.store.shared.files
  local ok, err = w:write(path, img.bytes, function(p) return self:_ours(item, p) end)
  if not ok then
    err.image = img
    return nil, err
  end
  local list = { path }
  for i, more in ipairs(img.more or {}) do
    if image.is(more) then
      local p = files.join(self.dir, string.format("%s.%d.%s", item.name, i + 1, image.EXT[more.format]))
      if w:write(p, more.bytes, function(q) return self:_ours(item, q) end) then list[#list + 1] = p end
    end
  end
  return { file = path, files = #list > 1 and list or nil, bytes = #img.bytes, sha256 = img.sha256 }
end

function Run:_finish(slot)
  local item, job = slot.item, slot.job
  local img, err = job:result()
  local now = core.now()
  self.running = self.running - 1
  self:_reserve(item, -1)
  local s = self.stats
  if slot.kind ~= "download" then s.requests = s.requests + job.attempts end
  local ev = { name = item.name, key = item.key, attempts = job.attempts, model = item.model,
    seconds = now - slot.t0, maybe_paid_twice = slot.paid_twice or nil, resumed = slot.resumed }
  if img then
    self.pace:success(now, job.ratelimit, item.estimate)
    local saved, serr = self:_save(slot, img)
    local usage = img.usage
    local spent = usage and usage.total_tokens or (slot.kind ~= "download" and item.estimate or 0)
    local usd = slot.kind ~= "download" and (img.cost and img.cost.usd
      or prices.estimate(self.client, item.model, item.parts)) or 0
    s.tokens, s.usd = s.tokens + spent, s.usd + usd
    ev.tokens, ev.usage, ev.cost, ev.request_id = spent, usage, usd, img.request_id
    if not saved then
      err = serr
    else
      ev.event, ev.file, ev.files, ev.bytes, ev.sha256 = "done", saved.file, saved.files, saved.bytes, saved.sha256
      return self:_ended(ev)
    end
  end
  if err.status == 429 or err.kind == "rate_limit" then
    self.pace:throttled(now, err.retry_after, job.ratelimit, item.estimate)
    if not err.maybe_billed and (slot.requeued or 0) < REQUEUES and not self.stopping then
      -- Never billed: back in line, first, once the service's wait is over.
      slot.entry._requeued = (slot.requeued or 0) + 1
      table.insert(self.again, 1, slot.entry)
      -- Closes its "sent": refused, so a crash now does not make it look paid.
      J.append(self.journal, { event = "requeued", name = item.name, key = item.key })
      return
    end
  end
  ev.event = "failed"
  -- Canceled after it was sent (a second Ctrl-C): the service may have it.
  local billed = err.maybe_billed or (err.kind == "canceled" and job.attempts > 0) or nil
  ev.error = { kind = err.kind, message = err.message, status = err.status, maybe_billed = billed,
    retry_after = err.retry_after }
  ev.url, ev.request_id = err.url, err.request_id
  return self:_ended(ev)
end

-- A job had without a request (its output already on disk, or in the
-- cache): finished as a free one, through the same path as the others.
function Run:_settle(slot, img, how)
  self.running = self.running + 1
  self:_reserve(slot.item, 1)
  slot.job, slot.kind, slot.resumed, slot.paid_twice = { result = function() return img end, attempts = 0 },
    "download", how, nil
  self:_finish(slot)
  return true
end

-- What an entry needs: nil when it is settled here (done before, held,
-- failed its description, found on disk or in the cache, or its output
-- path not free), else {item=, slot=, req=} to send (slot.kind "download"
-- when its picture is paid for and only to be fetched).
function Run:_prepare(entry)
  local name = entry.name
  local req = request_of(entry)
  local kind = req.images and "edit" or "generate"
  local item, derr = self.store:describe(kind, name, req)
  local prior = self.known[name]
  if not item then
    self:_ended { event = "failed", name = name, attempts = 0,
      error = { kind = derr.kind, message = derr.message } }
    return nil
  end
  -- The journal's key is the request alone; the cache's (the pipelines')
  -- names the service too.
  item.cache_key, item.key = item.key, item.request_key
  local last, open = prior and prior.last, prior and prior.open
  if last and last.event == "done" and last.key == item.key then
    local st = type(last.file) == "string" and core.stat(last.file)
    if st and st.size == last.bytes then
      self.stats.before = self.stats.before + 1
      return nil
    end
  end
  -- The same request waits in a provider's batch of this folder: sent here
  -- too, it would be paid twice. The provider's route collects it.
  if self.claimed and self.claimed[name] == item.key then
    self.stats.in_batch = self.stats.in_batch + 1
    return nil
  end
  local slot = { item = item, entry = entry, t0 = core.now(), requeued = entry._requeued }
  -- Sent by a run that died before it was answered: the output may be on
  -- disk already (the kill came between the file and the journal), or in
  -- the cache; otherwise it is sent again, and maybe paid twice.
  if open and open.key == item.key then
    local path
    for _, e in pairs(image.EXT) do
      local p = files.join(self.dir, name .. "." .. e)
      if core.stat(p) then path = p end
    end
    local img = path and J.made_by(path, item)
    if img then return self:_settle(slot, img, "file") and nil end
    slot.paid_twice = true
  elseif last and last.event == "failed" and last.key == item.key and last.error and last.error.maybe_billed
    and not last.url then
    -- It ended failed, and the service may have made and billed it: sent
    -- again only when the caller asks; the report keeps it failed.
    if not self.retry_maybe_billed then
      self.stats.held = self.stats.held + 1
      return nil
    end
    slot.paid_twice = true
  end
  -- Paid for earlier, its download failed: fetch it, do not pay again.
  if last and last.event == "failed" and last.key == item.key and type(last.url) == "string" then
    slot.kind, slot.resumed, slot.paid_twice = "download", "url", nil
    req = { url = last.url, request_id = last.request_id, model = item.model }
  elseif self.cache then
    local img = self.store:lookup { key = item.cache_key, req = item.req, name = item.name }
    if img and self.dry then
      self.stats.cached = (self.stats.cached or 0) + 1
      return nil
    end
    if img then return self:_settle(slot, img, "cache") and nil end
  end
  -- Where the picture will go, asked before it is paid for.
  local out = files.join(self.dir, name .. "." .. (image.EXT[req.output_format] or "png"))
  local free, werr = self.store.shared.files:may_write(out, function(p) return self:_ours(item, p) end)
  if not free then
    self:_ended { event = "failed", name = name, key = item.key, attempts = 0,
      error = { kind = werr.kind, message = werr.message } }
    return nil
  end
  return { item = item, slot = slot, req = req, kind = kind }
end

-- Start one entry, or settle it without a request. Returns false when the
-- budget stops the batch.
function Run:_start(entry, prepared)
  local p = prepared or self:_prepare(entry)
  if not p then return true end
  local item, slot, req, kind, name = p.item, p.slot, p.req, p.kind, entry.name
  local now = core.now()
  local ok, why = self:_afford(item)
  if not ok then
    self.stopping, self.stopped = true, "budget: " .. why
    return false
  end
  slot.kind = slot.kind or kind
  if slot.kind ~= "download" then
    -- the bytes the key was made of, read once (store.lua)
    req.images, req.mask = item.send.images, item.send.mask
    -- A wait the service asks for comes back here (kind rate_limit, never
    -- billed) rather than being waited out inside the client: the batch
    -- then holds every launch, not just this job's retry.
    if req.max_retry_after == nil then req.max_retry_after = 0 end
    -- Every 429 the client retries by itself paces the batch too.
    local user = req.on_retry
    req.on_retry = function(info)
      if info.status == 429 then self.pace:throttled(core.now(), info.wait, slot.job and slot.job.ratelimit, item.estimate) end
      if user then return user(info) end
    end
  end
  J.append(self.journal, { event = "sent", name = name, key = item.key, at = J.iso(os.time()) }, true)
  self.running = self.running + 1
  self:_reserve(item, 1)
  local sok, job = pcall(self.client.submit, self.client, slot.kind, req)
  if not sok then
    -- A field of the wrong type: refused before anything was sent.
    self.running = self.running - 1
    self:_reserve(item, -1)
    self:_ended { event = "failed", name = name, key = item.key, attempts = 0,
      error = { kind = "invalid_request", message = (tostring(errors.is(job) and job.message or job):gsub("^[^:]*:%d+: ", "")) } }
    return true
  end
  slot.job = job
  self.slots[#self.slots + 1] = slot
  self.pace:launched(now)
  return true
end

-- The live numbers, for on_tick and the report (batch_report.lua).
function Run:numbers(now) return report_mod.numbers(self, now) end

-- Write batch-report.json and failed.jsonl (batch_report.lua).
function Run:_report(src) return report_mod.write(self, src) end

function Run:_interrupted()
  local n = self.interrupts and self.interrupts:take() or 0
  if n <= 0 then return end
  self.signals = self.signals + n
  if not self.stopping then self.stopping, self.stopped = true, "interrupted" end
  if self.signals >= 2 then
    for _, slot in ipairs(self.slots) do slot.job:cancel("interrupted twice") end
  end
end

-- run(opts) -> report | nil, err (a manifest that cannot be read, a name
-- used twice). Jobs that fail are in the report, not errors of the call.
function M.run(o)
  if type(o) ~= "table" then error("bad argument #1 to 'batch' (table expected)", 2) end
  for k in pairs(o) do
    if not CHECK[k] then error("bad option '" .. tostring(k) .. "' to 'batch'", 2) end
  end
  local given = (o.jobs and 1 or 0) + (o.manifest and 1 or 0) + (o.pictures and 1 or 0)
  if given ~= 1 then error("batch takes one of jobs, manifest or pictures (with prompt)", 2) end
  if o.jobs and type(o.jobs) ~= "table" then error("bad option 'jobs' (list expected)", 2) end
  if o.manifest and type(o.manifest) ~= "string" then error("bad option 'manifest' (a path expected)", 2) end
  if o.pictures and (type(o.pictures) ~= "table" or type(o.prompt) ~= "string") then
    error("bad option 'pictures' (a list of paths, folders or globs, with prompt, expected)", 2)
  end
  if o.defaults ~= nil and type(o.defaults) ~= "table" then error("bad option 'defaults' (table expected)", 2) end
  for _, k in ipairs { "on_job", "on_tick" } do
    if o[k] ~= nil and type(o[k]) ~= "function" then error("bad option '" .. k .. "' (function expected)", 2) end
  end
  local route = o.route or "direct"
  if route ~= "direct" and route ~= "provider" then
    error("bad option 'route' (\"direct\" or \"provider\" expected, got " .. tostring(o.route) .. ")", 2)
  end
  for _, k in ipairs(PROVIDER_ONLY) do
    if o[k] ~= nil and route ~= "provider" then error("option '" .. k .. "' is for route = \"provider\"", 2) end
  end
  -- Above 0: a loop of polls at no interval floods the service.
  if o.poll_interval ~= nil and (type(o.poll_interval) ~= "number" or not (o.poll_interval > 0)) then
    error("bad option 'poll_interval' (seconds > 0 expected)", 2)
  end
  for _, k in ipairs { "max_lines", "max_bytes" } do
    if o[k] ~= nil and (type(o[k]) ~= "number" or o[k] < 1 or o[k] % 1 ~= 0) then
      error("bad option '" .. k .. "' (a whole number >= 1 expected)", 2)
    end
  end
  if o.uploads ~= nil and type(o.uploads) ~= "string" then error("bad option 'uploads' (a path expected)", 2) end
  if o.detach and o.cancel then error("bad option 'cancel' (it goes without 'detach')", 2) end
  local budget = budgets.option(o.budget, 2)
  local shard = J.parse_shard(o.shard)
  local client = o.client
  if client == nil then
    client = client_mod.new { max_concurrency = o.concurrency }
  elseif getmetatable(client) ~= client_mod.Client then
    error("bad option 'client' (an imgedit client expected)", 2)
  end
  if route == "provider" and client.provider == "azure" then
    error("bad option 'route' (provider azure: its batches take other urls, which this route does not speak)", 2)
  end
  if route == "provider" and client.provider == "apiyi" then
    error("bad option 'route' (provider apiyi documents no Files or Batch API, and edits as multipart alone:"
      .. " the provider's route needs provider openai or compatible)", 2)
  end
  local ceiling = o.concurrency or client.max_concurrency
  if type(ceiling) ~= "number" or ceiling < 1 or ceiling % 1 ~= 0 then
    error("bad option 'concurrency' (an integer >= 1 expected)", 2)
  end
  if ceiling > client.max_concurrency then
    error(string.format("bad option 'concurrency' (%d is more than the client's max_concurrency, %d)", ceiling,
      client.max_concurrency), 2)
  end
  local dir = o.dir or "out"
  local ok, msg = core.mkdir_p(dir)
  if not ok then error("cannot use the batch folder " .. dir .. ": " .. msg, 2) end
  local cache = o.cache
  if cache ~= nil and cache ~= false and type(cache) ~= "string" then
    error("bad option 'cache' (folder or false expected)", 2)
  end

  -- A first pass: every line readable, every name used once and valid
  -- (bad fields raise here, before anything is sent), the share counted.
  local src, serr = manifest.open { manifest = o.manifest, jobs = o.jobs, pictures = o.pictures, prompt = o.prompt,
    defaults = o.defaults }
  if not src then return nil, errors.new("invalid_request", serr, { param = "manifest" }) end
  local names, total, dup = {}, 0, nil
  local pok, read_ok, rerr = pcall(src.each, function(entry, where)
    if names[entry.name] then
      dup = string.format("%s: the name '%s' is used twice (%s)", where, entry.name, names[entry.name])
      return true
    end
    local jok, jerr = pcall(request.job_options, client, request_of(entry), 1)
    if not jok then -- a misspelt field, a wrong type: named with its line
      dup = where .. ": " .. (tostring(errors.is(jerr) and jerr.message or jerr):gsub("^[^:]*:%d+: ", ""))
      return true
    end
    names[entry.name] = where
    if J.in_shard(shard, entry.name) then total = total + 1 end
  end)
  local bad = dup or (not pok and (tostring(read_ok):gsub("^[^:]*:%d+: ", ""))) or (not read_ok and rerr)
  if bad then return nil, errors.new("invalid_request", bad, { param = "manifest" }) end
  for n in pairs(names) do names[n] = true end

  local jf, jerr
  if o.dry_run then
    -- A dry run writes nothing: its journal goes nowhere.
    jf = { write = function() return true end, sync = function() return true end, close = function() end }
  else
    jf, jerr = core.append(files.join(dir, J.journal_name(shard)))
  end
  if not jf then error("cannot write the batch journal in " .. dir .. ": " .. tostring(jerr), 2) end
  local run = setmetatable({
    client = client, dir = dir, shard = shard, budget = budget, lineage = o.lineage ~= false, cache = cache or nil,
    on_job = o.on_job, on_tick = o.on_tick, interrupts = o.interrupts, signals = 0, names = names,
    retry_maybe_billed = o.retry_maybe_billed and true or nil, dry = o.dry_run and true or nil, tick = o.tick,
    known = J.read_journals(dir, names, function(m) client:_warn(m) end), journal = jf, total = total, running = 0,
    slots = {}, again = {},
    pace = pace_mod.new(ceiling), t0 = core.now(), started = os.time(), rpm_marks = {},
    stats = { done = 0, failed = 0, before = 0, held = 0, in_batch = 0, requests = 0, tokens = 0, usd = 0,
      paid_twice = {} },
    reserved = { requests = 0, tokens = 0, usd = 0 },
  }, Run)
  -- The pipelines' keys and cache; the batch's journal is its own.
  run.store = store.new { dir = dir, client = client, journal = false,
    shared = { cache = cache or nil, files = files.run { overwrite = o.overwrite } } }

  if route == "provider" then
    local ok_run, r = pcall(require("imgedit.batch_provider").execute, run, src, o)
    jf:sync()
    jf:close()
    if not ok_run then error(r, 0) end
    if run.on_tick then run.on_tick(run:numbers()) end
    if o.dry_run then return r:dry_report() end
    return run:_report(src)
  end

  run.claimed = require("imgedit.batch_provider").claimed(dir, shard)
  -- The second pass runs the jobs, in a coroutine that hands them over one
  -- at a time, so that the manifest is never held whole.
  local feed = coroutine.wrap(function()
    src.each(function(entry)
      if J.in_shard(shard, entry.name) then coroutine.yield(entry) end
    end)
    return nil
  end)
  local exhausted = false
  local function next_entry()
    if #run.again > 0 then return table.remove(run.again, 1) end
    if exhausted then return nil end
    local e = feed()
    if e == nil then exhausted = true end
    return e
  end
  local tick = o.tick or 0.25
  local last_tick = -math.huge
  local ok_run, run_err = pcall(function()
    while true do
      run:_interrupted()
      local now = core.now()
      -- Launch while the pace allows.
      while not run.stopping and #run.slots < run.pace:slots() and run.pace:wait(now) == 0 do
        local entry = next_entry()
        if not entry then break end
        if not run:_start(entry) then break end
        now = core.now()
      end
      -- Settle what ended.
      local still = {}
      for _, slot in ipairs(run.slots) do
        if slot.job:done() then run:_finish(slot) else still[#still + 1] = slot end
      end
      run.slots = still
      if run.on_tick and now - last_tick >= tick then
        last_tick = now
        run.on_tick(run:numbers(now))
      end
      local more = not run.stopping and not (exhausted and #run.again == 0)
      if #run.slots == 0 and not more then break end
      local wait = math.min(tick, 0.1)
      if more and #run.slots < run.pace:slots() then wait = math.min(wait, run.pace:wait(core.now())) end
      client:poll(wait)
    end
  end)
  jf:sync()
  jf:close()
  if not ok_run then error(run_err, 0) end
  if run.stats.in_batch > 0 and not run.stopped then
    run.stopped = string.format("%d job%s wait%s in this folder's provider batches, not sent again by the direct"
      .. " route: the provider's route collects them", run.stats.in_batch, run.stats.in_batch == 1 and "" or "s",
      run.stats.in_batch == 1 and "s" or "")
  end
  if run.on_tick then run.on_tick(run:numbers()) end
  return run:_report(src)
end

return M
