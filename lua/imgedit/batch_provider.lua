-- The provider's route of a batch (imgedit.batch{route = "provider"}): the
-- jobs that are not done or cached become lines of the provider's Batch API,
-- at its batch price (half), answered within its 24-hour window.
--
--   1. Each job is checked as the direct route checks it; its pictures are
--      uploaded once (uploads.lua remembers them by SHA-256 across batches
--      and runs) and each line names them by file id (the JSON edit body).
--   2. The lines go into parts of at most max_lines lines and max_bytes
--      bytes; each part's custom_ids are in the route's journal, on the disk,
--      before its input file is uploaded and its batch created, with a tag in
--      the batch's metadata by which a run that died during the create call
--      finds it in the provider's list instead of creating another.
--   3. The batches are polled at poll_interval; each finished one is
--      collected: its pictures written as the direct route writes them
--      (batch.lua's Run: lineage, cache, journal, report), its lines that
--      failed, expired, were cancelled, or that neither file names, reported
--      failed. The input file, and the pictures' files once no other part
--      needs them, are deleted unless keep_files.
--
-- The route's journal (.imgedit-route[.I-of-N].jsonl, append only) holds
-- one line per step: "lines" (a part's custom_ids and job names), "input"
-- (its uploaded file), "creating", "created" (its batch id), "cancel",
-- "collected". The jobs' own "done" and "failed" lines go to the batch's
-- journal, as the direct route's do.
local core = require "imgedit.core"
local cjson = require "cjson"
local cjson_safe = require "cjson.safe"
local answer = require "imgedit.answer"
local budgets = require "imgedit.budget"
local errors = require "imgedit.errors"
local files = require "imgedit.files"
local image = require "imgedit.image"
local prices = require "imgedit.prices"
local request = require "imgedit.request"
local uploads_mod = require "imgedit.uploads"
local J = require "imgedit.batch_journal"

local M = {}

-- The provider's batch price: half the direct one (OpenAI's Batch API).
M.DISCOUNT = 0.5
-- One batch's input, at most (OpenAI's Batch API: 50,000 lines, 200 MB).
M.MAX_LINES, M.MAX_BYTES = 50000, 200 * 1024 * 1024
-- A polite pace for the real service: batches take minutes to hours.
M.POLL_INTERVAL = 30
-- Polls of one batch that fail in a row (each after the client's retries)
-- before the run stops and leaves the batch to a re-run.
M.POLL_MISSES = 5

local FINAL = { completed = true, failed = true, expired = true, cancelled = true }

local function route_name(shard) return ".imgedit-route" .. J.suffix(shard) .. ".jsonl" end

-- A job's line id: its name and request, so a changed job is a new line.
local function custom_id(name, key) return "imgedit-" .. core.sha256(name .. "\0" .. key):sub(1, 32) end

-- ---- the route's journal ----

-- read_route(path) -> parts (in order), by id: {id=, tag=, k=, ids = {custom_id -> {name, key}},
-- names = {name -> custom_id}, input=, creating=, batch=, cancel=, collected=, abandoned=}
local function read_route(path)
  local parts, by = {}, {}
  local f = io.open(path, "rb")
  for line in f and f:lines() or function() end do
    local ev = cjson_safe.decode(line)
    if type(ev) == "table" and type(ev.part) == "string" then
      local p = by[ev.part]
      if ev.ev == "lines" and not p and type(ev.ids) == "table" then
        p = { id = ev.part, tag = ev.tag, k = ev.k, ids = {}, names = {}, at = ev.at, count = 0 }
        for _, l in ipairs(ev.ids) do
          if type(l) == "table" and type(l[1]) == "string" and type(l[2]) == "string" then
            p.ids[l[1]] = { name = l[2], key = l[3] }
            p.names[l[2]] = l[1]
            p.count = p.count + 1
          end
        end
        by[ev.part], parts[#parts + 1] = p, p
      elseif p then
        if ev.ev == "input" then p.input = ev.file_id end
        if ev.ev == "creating" then p.creating = ev.at or "" end
        if ev.ev == "created" then p.batch = ev.batch_id end
        if ev.ev == "cancel" then p.cancel = true end
        if ev.ev == "collected" then p.collected = true end
        if ev.ev == "abandoned" then p.abandoned = true end
      end
    end
  end
  if f then f:close() end
  return parts, by
end

-- ---- calls ----

local Route = {}
Route.__index = Route

-- One call, waited for; counted. -> result | nil, err
function Route:call(c)
  local res, err = self.client:_api(c):wait()
  self.calls = self.calls + 1
  return res, err
end

-- Calls at once, at most the client's concurrency, each started by start(item)
-- (a job) and ended by done(item, res, err).
function Route:many(list, start, done)
  local live, i = {}, 1
  while i <= #list or #live > 0 do
    while i <= #list and #live < self.client.max_concurrency do
      live[#live + 1] = { item = list[i], job = start(list[i]) }
      i = i + 1
    end
    self.client:poll(0.05)
    local still = {}
    for _, l in ipairs(live) do
      if l.job:done() then
        self.calls = self.calls + 1
        done(l.item, l.job:result())
      else
        still[#still + 1] = l
      end
    end
    live = still
    self:tick()
  end
end

function Route:journal(ev)
  ev.at = J.iso(os.time())
  J.append(self.rj, ev, true)
end

-- The tests' hook: a step reached (they kill -9 the run there).
function Route:step(name)
  if self.on_step then self.on_step(name) end
end

function Route:tick(force)
  local run = self.run
  if not run.on_tick then return end
  local now = core.now()
  if not force and now - (self.last_tick or -math.huge) < (run.tick or 0.25) then return end
  self.last_tick = now
  local n = run:numbers(now)
  n.route = self:numbers(now)
  run.on_tick(n)
end

-- The route's own figures: where its batches are.
function Route:numbers(now)
  local r = { phase = self.phase, uploads = self.uploaded, upload_bytes = self.upload_bytes, calls = self.calls,
    lines = self.lines, batches = {}, waited = self.poll_t0 and (now or core.now()) - self.poll_t0 or 0 }
  if self.up then
    r.uploading = { files = self.up.files, done = self.up.done, bytes = self.up.total, sent = self.up.sent() }
  end
  for _, p in ipairs(self.pending) do
    local b = p.status or {}
    local rc = type(b.request_counts) == "table" and b.request_counts or {}
    r.batches[#r.batches + 1] = { id = p.batch, status = b.status or (p.batch and "?" or "creating"),
      completed = rc.completed or 0, failed = rc.failed or 0, total = rc.total or p.count }
  end
  return r
end

-- claimed(dir, shard) -> {job name -> request key}: the jobs in this
-- folder's provider batches that are not collected yet (the direct route
-- leaves them alone: sending them would pay twice).
function M.claimed(dir, shard)
  local out = {}
  for _, p in ipairs(read_route(files.join(dir, route_name(shard)))) do
    if not p.collected and not p.abandoned then
      for _, l in pairs(p.ids) do out[l.name] = l.key end
    end
  end
  return out
end

-- ---- uploads ----

-- The file id of a picture (bytes), uploading it once: remembered across
-- batches and runs (uploads.lua), and in the route's journal.
function Route:upload_all(list)
  local todo, seen, known = {}, {}, {}
  for _, u in ipairs(list) do
    if not seen[u.sha] and not self.refs[u.sha] then
      seen[u.sha] = true
      local id = self.memory:lookup(u.sha)
      if id then known[#known + 1] = { u = u, id = id } else todo[#todo + 1] = u end
    end
  end
  -- A remembered file may be gone (deleted by another program, or by the
  -- account's owner): a line naming it would fail. One GET each tells.
  self.phase = "checking uploads"
  self:many(known, function(k) return self.client:_api { method = "GET", path = "/files/" .. k.id } end,
    function(k, res, err)
      if res and type(res.json) == "table" and res.json.id == k.id then
        self.refs[k.u.sha] = k.id
        self.memory:use(k.id, self.dirkey)
      else
        if err and err.kind == "not_found" then self.memory:gone(k.id) end
        todo[#todo + 1] = k.u
      end
    end)
  self.phase = "uploading"
  -- The progress report: bytes sent of the pictures to upload, live.
  local sent, total = {}, 0
  for _, u in ipairs(todo) do total = total + #u.bytes end
  self.up = { total = total, files = #todo, done = 0, sent = function()
    local n = 0
    for _, b in pairs(sent) do n = n + b end
    return math.min(n, total)
  end }
  local failed = {}
  self:many(todo, function(u)
    return self.client:_api { method = "POST", path = "/files", on_progress = function(pr)
      sent[u.sha] = math.min(pr.uploaded or 0, #u.bytes)
    end, parts = {
      { name = "purpose", value = "vision" },
      { name = "expires_after[anchor]", value = "created_at" },
      { name = "expires_after[seconds]", value = tostring(uploads_mod.EXPIRES) },
      { name = "file", data = u.bytes, filename = u.filename, type = u.mime } } }
  end, function(u, res, err)
    local f = res and res.json
    if not (f and type(f.id) == "string") then
      failed[u.sha] = err or errors.new("protocol", "the upload's answer has no file id")
      return
    end
    self.refs[u.sha] = f.id
    sent[u.sha], self.up.done = #u.bytes, self.up.done + 1
    self.mine[f.id] = true
    self.uploaded, self.upload_bytes = self.uploaded + 1, self.upload_bytes + #u.bytes
    self.memory:add(u.sha, f.id, #u.bytes, tonumber(f.expires_at), self.dirkey)
    self:journal { ev = "upload", part = "-", sha256 = u.sha, file_id = f.id }
  end)
  return failed
end

-- ---- building the lines ----

-- The pictures a job sends, as {sha, bytes, filename, mime}.
local function pictures_of(item)
  local list = {}
  local function add(s)
    if s and s.bytes then
      local info = core.inspect(s.bytes, true)
      list[#list + 1] = { sha = core.sha256(s.bytes), bytes = s.bytes, mime = info and info.mime or "image/png",
        filename = image.stem(s.filename or "image") .. "." .. (info and image.EXT[info.format] or "png") }
    end
  end
  for _, s in ipairs(item.send.images or {}) do add(s) end
  add(item.send.mask)
  return list
end

-- A job's line, or nil, err (its checks failed: nothing is sent for it).
function Route:line(item, refs)
  local req = {}
  for k, v in pairs(item.send) do req[k] = v end
  req.body, req._refs = item.kind == "edit" and "json" or nil, refs
  -- The answer must carry the picture: a url could expire before the batch
  -- is collected (up to 24 hours on), and a line's result is not fetched.
  local r = self.client:rules(item.model)
  if req.response_format == "url" then
    return nil, errors.new("invalid_request", "a batch line's answer must carry the picture (its url could expire"
      .. " before the batch is collected): drop response_format = \"url\"", { param = "response_format" })
  end
  -- A model whose rules are unknown (a compatible service's own) is asked
  -- too: a refusal costs nothing, a url answer a paid picture.
  if req.response_format == nil and not (r and r.response_formats and not r.response_formats.b64_json) then
    req.response_format = "b64_json"
  end
  local ok, spec, err = pcall(request.prepare, self.client, item.kind, req, self.client:_key(), 1)
  if not ok then return nil, errors.new("invalid_request", (tostring(spec):gsub("^[^:]*:%d+: ", ""))) end
  if not spec then return nil, err end
  if spec.stream then return nil, errors.new("invalid_request", "a batch line cannot stream; drop stream") end
  return { custom_id = custom_id(item.name, item.key), method = "POST",
    url = "/v1/images/" .. (item.kind == "edit" and "edits" or "generations"), body = spec.json }
end

-- ---- batches ----

-- Create a part's batch; a run that died during the create call finds it
-- by its tag in the provider's list instead.
function Route:find(p)
  local after
  for _ = 1, 50 do
    local res = self:call { method = "GET", path = "/batches?limit=100" .. (after and ("&after=" .. after) or "") }
    local list = res and res.json
    if not (list and type(list.data) == "table") then return nil end
    for _, b in ipairs(list.data) do
      local md = type(b) == "table" and type(b.metadata) == "table" and b.metadata
      if md and md.imgedit_part == p.id then return b end
    end
    if not list.has_more or #list.data == 0 then return nil end
    after = list.data[#list.data].id
  end
end

function Route:create(p)
  local found = p.creating and self:find(p)
  if found then
    p.batch, p.status = found.id, found
    self:journal { ev = "created", part = p.id, batch_id = found.id, found = true }
    return true
  end
  self:journal { ev = "creating", part = p.id }
  p.creating = true
  self:step("creating")
  local res, err = self:call { method = "POST", path = "/batches", billable = true, json = {
    input_file_id = p.input, endpoint = p.endpoint, completion_window = "24h",
    metadata = { imgedit_part = p.id, imgedit_lines = tostring(p.count) } } }
  self:step("sent")
  local b = res and res.json
  if not (b and type(b.id) == "string") then
    -- Maybe made although no answer came: look for it before saying so.
    found = self:find(p)
    if not found then return nil, err or errors.new("protocol", "the batch's answer has no id") end
    b = found
  end
  p.batch, p.status = b.id, b
  self:journal { ev = "created", part = p.id, batch_id = b.id }
  self:step("created")
  return true
end

-- Write a part's input file and send it; -> true | nil, err
function Route:send_part(p)
  local path = files.join(self.run.dir, ".imgedit-route-" .. p.id .. ".jsonl")
  if not p.input then
    local res, err = self:call { method = "POST", path = "/files", parts = {
      { name = "purpose", value = "batch" },
      { name = "file", path = path, filename = "imgedit-" .. p.id .. ".jsonl", type = "application/jsonl" } } }
    local f = res and res.json
    if not (f and type(f.id) == "string") then return nil, err or errors.new("protocol", "no file id") end
    p.input = f.id
    self:journal { ev = "input", part = p.id, file_id = f.id }
    self:step("input")
  end
  return self:create(p)
end

-- ---- collecting ----

-- Index a JSONL file of results: custom_id -> the offset of its line.
local function index(path)
  local at, f = {}, io.open(path, "rb")
  if not f then return at end
  local pos = 0
  for line in f:lines() do
    local id = line:match('"custom_id"%s*:%s*"([^"]*)"')
    if id then at[id] = pos end
    pos = pos + #line + 1
  end
  f:close()
  return at
end

local function read_at(path, pos)
  local f = io.open(path, "rb")
  if not f then return nil end
  f:seek("set", pos)
  local line = f:read("*l")
  f:close()
  return cjson_safe.decode(line or "")
end

-- Download one of a batch's files into dir; -> path | nil (none), err
function Route:fetch(id, what, p)
  if type(id) ~= "string" then return nil end
  local path = files.join(self.run.dir, ".imgedit-route-" .. p.id .. "." .. what .. ".jsonl")
  -- Held whole, then written: an output of pictures is as large as they are.
  local res, err = self:call { method = "GET", path = "/files/" .. id .. "/content", raw = true,
    max_response_bytes = 1024 * 1024 * 1024 * 4 }
  if not res then return nil, err end
  local ok, werr = files.own(path, res.body)
  if not ok then return nil, errors.new("io", "cannot write " .. path .. ": " .. tostring(werr)) end
  return path
end

-- What one result line says: Image | nil, err
function Route:result_of(item, rec, status)
  local resp = type(rec.response) == "table" and rec.response or nil
  local key = self.client:_key()
  if resp and tonumber(resp.status_code) and resp.status_code >= 200 and resp.status_code <= 299 then
    local res = { ok = true, status = math.floor(resp.status_code), request_id = resp.request_id,
      body = cjson.encode(resp.body), sent_all = true }
    local img, err = answer.read(res, { model = item.model, prompt = item.req.prompt }, math.huge, key)
    if img then return img end
    return nil, err or errors.new("protocol", "the line's answer gave a url, which a batch does not download",
      { maybe_billed = true })
  end
  if resp and tonumber(resp.status_code) then
    local body = type(resp.body) == "table" and resp.body or nil
    local e = errors.from_status(math.floor(resp.status_code), body, { request_id = resp.request_id }, key)
    return nil, e
  end
  local e = type(rec.error) == "table" and rec.error or {}
  local code = tostring(e.code or "")
  local kind = code == "batch_expired" and "timeout" or code == "batch_cancelled" and "canceled" or "server"
  return nil, errors.new(kind, string.format("the provider's batch %s did not run it (%s): %s", self.batch_of,
    code ~= "" and code or status, tostring(e.message or "no reason given")), { code = e.code })
end

-- owed(p, entry) -> item, custom_id | nil [, "superseded"]: what part p
-- still owes the job: its line is of the job's current request and the job
-- is not done. A line of an older request ("superseded": the job changed
-- while its batch ran) is not this job's.
function Route:owed(p, entry)
  local cid, item = p.names[entry.name], self.items[entry.name]
  if not (cid and item) then return nil end
  if p.ids[cid].key ~= item.key then return nil, "superseded" end
  local prior = self.run.known[entry.name]
  local last = prior and prior.last
  if last and last.event == "done" and last.key == item.key then return nil end
  return item, cid
end

function Route:collect(p, entries)
  local b = p.status or {}
  self.batch_of = p.batch
  -- A file the batch has not is JSON null (cjson.null, which is true in Lua).
  local oid = type(b.output_file_id) == "string" and b.output_file_id or nil
  local eid = type(b.error_file_id) == "string" and b.error_file_id or nil
  local out, oerr = self:fetch(oid, "output", p)
  local bad, berr = self:fetch(eid, "errors", p)
  if (oid and not out) or (eid and not bad) then return nil, oerr or berr end
  local oi, ei = out and index(out) or {}, bad and index(bad) or {}
  local run = self.run
  for _, entry in ipairs(entries) do
    local item, cid = self:owed(p, entry)
    if cid == "superseded" then
      self.superseded = (self.superseded or 0) + 1
    elseif item then
      local rec = oi[cid] and read_at(out, oi[cid]) or ei[cid] and read_at(bad, ei[cid])
      local ev = { name = entry.name, key = item.key, attempts = 1, model = item.model, batch = p.batch }
      local img, err
      if type(rec) == "table" then
        img, err = self:result_of(item, rec, b.status)
      elseif b.status == "failed" then
        local why = {}
        local list = type(b.errors) == "table" and type(b.errors.data) == "table" and b.errors.data or {}
        for _, e in ipairs(list) do why[#why + 1] = tostring(e.message or e.code) end
        err = errors.new("invalid_request", "the provider refused the batch " .. p.batch .. ": "
          .. (#why > 0 and table.concat(why, "; ") or "no reason given"))
      else
        -- Counted by the provider, named by neither file: lost, maybe made.
        err = errors.new("protocol", string.format("the provider's batch %s (%s) names this line in neither its"
          .. " output nor its error file: it may have been made and billed; it is not sent again unless asked"
          .. " (retry_maybe_billed)", p.batch, tostring(b.status)), { maybe_billed = true })
      end
      if img then
        local c = prices.cost(self.client, item.model, img.usage, 1 + #(img.more or {}))
        local usd = (c and c.usd or prices.estimate(self.client, item.model, item.parts) or 0) * M.DISCOUNT
        img.cost = { usd = usd, basis = c and c.basis or "estimate", batch = true }
        local saved, serr = run:_save({ item = item }, img)
        local usage = img.usage
        local spent = usage and usage.total_tokens or item.estimate
        run.stats.tokens, run.stats.usd = run.stats.tokens + spent, run.stats.usd + usd
        ev.tokens, ev.usage, ev.cost, ev.request_id = spent, usage, usd, img.request_id
        if saved then
          ev.event, ev.file, ev.files, ev.bytes, ev.sha256 = "done", saved.file, saved.files, saved.bytes, saved.sha256
          run:_ended(ev)
          self:step("wrote")
        else
          err = serr
        end
      end
      if not ev.event then
        ev.event = "failed"
        ev.error = { kind = err.kind, message = err.message, status = err.status, maybe_billed = err.maybe_billed }
        ev.request_id = err.request_id
        run:_ended(ev)
      end
    end
  end
  self:journal { ev = "collected", part = p.id, batch_id = p.batch }
  p.collected = true
  -- (out or bad may be nil: not ipairs, which stops at the first nil)
  for _, f in pairs { out or false, bad or false, files.join(run.dir, ".imgedit-route-" .. p.id .. ".jsonl") } do
    if f then os.remove(f) end
  end
  -- The input and result files are this part's; the pictures' files go at the end.
  if not self.keep_files then
    for _, id in pairs { p.input or false, oid or false, eid or false } do
      if id then self:call { method = "DELETE", path = "/files/" .. id } end
    end
  end
  return true
end

-- abandon(p, entries, err): a part the service does not know; its lines
-- fail, maybe billed (its batch was created), and are not sent again unasked.
function Route:abandon(p, entries, err)
  self:journal { ev = "abandoned", part = p.id, batch_id = p.batch }
  p.abandoned = true
  for _, entry in ipairs(entries) do
    local item = self:owed(p, entry)
    if item then
      self.run:_ended { event = "failed", name = entry.name, key = item.key, attempts = 1, batch = p.batch,
        error = { kind = err.kind, status = err.status, maybe_billed = true,
          message = "the provider does not know batch " .. p.batch .. " (another key or base_url?): "
            .. tostring(err.message) } }
    end
  end
  os.remove(files.join(self.run.dir, ".imgedit-route-" .. p.id .. ".jsonl"))
end

-- The dry run's answer: what a real run would send, and its price.
function Route:dry_report()
  local run, usd, direct, unpriced = self.run, 0, 0, nil
  for _, name in ipairs(self.new or {}) do
    local item = self.items[name]
    local u = prices.estimate(self.client, item.model, item.parts)
    if u then
      usd, direct = usd + u * M.DISCOUNT, direct + u
    else
      unpriced = unpriced or item.model
    end
  end
  local lines = #(self.new or {})
  local batches = 0
  if lines > 0 then
    batches = math.max(math.ceil(lines / (self.max_lines or M.MAX_LINES)),
      math.ceil(self.dry_bytes / (self.max_bytes or M.MAX_BYTES)))
  end
  local s = run.stats
  return { dry_run = true, route = "provider", jobs = run.total, lines = lines, input_bytes = self.dry_bytes,
    uploads = self.dry and self.dry.uploads or 0, upload_bytes = self.dry and self.dry.upload_bytes or 0,
    batches = batches, usd = usd, usd_direct = direct, unpriced_model = unpriced, done_before = s.before,
    cached = s.cached or 0, held = s.held, failed = s.failed, pending_batches = #self.pending,
    stopped = run.stopped }
end

-- ---- the run ----

-- execute(run, src, o): the route over batch.lua's run (its store, journal,
-- stats, _save and _ended). Returns nothing; run.stopped says why it stopped early.
function M.execute(run, src, o)
  local self = setmetatable({ run = run, client = run.client, calls = 0, uploaded = 0, upload_bytes = 0, lines = 0,
    refs = {}, mine = {}, items = {}, pending = {}, keep_files = o.keep_files and true or false, dry_bytes = 0,
    phase = "checking", on_step = o._on_step }, Route)
  local rpath = files.join(run.dir, route_name(run.shard))
  local parts = read_route(rpath)
  local rj, jerr
  if o.dry_run then
    rj = { write = function() return true end, sync = function() return true end, close = function() end }
  else
    rj, jerr = core.append(rpath)
  end
  if not rj then error("cannot write the route's journal in " .. run.dir .. ": " .. tostring(jerr), 0) end
  self.rj = rj
  self.memory = uploads_mod.open(o.uploads, run.client, o.cache, o.dry_run)
  self.dirkey = core.realpath(run.dir) or run.dir
  local max_lines, max_bytes = o.max_lines or M.MAX_LINES, o.max_bytes or M.MAX_BYTES
  self.max_lines, self.max_bytes = max_lines, max_bytes
  local poll = o.poll_interval or M.POLL_INTERVAL
  local ok, e = pcall(function()
    -- The parts of earlier runs that are not collected: theirs are their lines.
    local claimed = {}
    for _, p in ipairs(parts) do
      if not p.collected and not p.abandoned then
        local local_input = files.join(run.dir, ".imgedit-route-" .. p.id .. ".jsonl")
        if not p.input and not p.batch and not core.stat(local_input) then
          -- Never sent, and its input is gone: its lines are new again.
          self:journal { ev = "abandoned", part = p.id }
        else
          for name in pairs(p.names) do claimed[name] = p end
          self.pending[#self.pending + 1] = p
        end
      end
    end
    -- Every job of the share: done before, cached, held, in a part, or new.
    local entries, new = {}, {}
    src.each(function(entry)
      if not J.in_shard(run.shard, entry.name) then return end
      entries[#entries + 1] = { name = entry.name }
      local r = run:_prepare(entry)
      if not r then return end
      if r.slot.kind == "download" then -- paid for before, its download failed: fetched, not sent again
        if not run.dry then run:_start(entry, r) end
        return
      end
      local item = r.item
      self.items[entry.name] = item
      local p = claimed[entry.name]
      if p and p.ids[p.names[entry.name]] and p.ids[p.names[entry.name]].key == item.key then return end
      if o.cancel then return end -- --cancel sends nothing new
      local ok_line, lerr = self:line(item, setmetatable({}, { __index = function() return "file-checked" end }))
      if ok_line then item.line_bytes = #cjson.encode(ok_line) + 1 end
      if not ok_line then
        run:_ended { event = "failed", name = entry.name, key = item.key, attempts = 0,
          error = { kind = lerr.kind, message = lerr.message } }
        return
      end
      new[#new + 1] = entry.name
      self.items[entry.name] = item
    end)
    -- Budgets at the batch price: what is left out is not run.
    if run.budget then
      local keep = {}
      for _, name in ipairs(new) do
        local item = self.items[name]
        local s, f = run.stats, run.reserved
        local usd, why = budgets.check(run.budget, { requests = s.requests + f.requests, tokens = s.tokens + f.tokens,
          usd = s.usd + f.usd }, { item }, run.client, M.DISCOUNT)
        if not usd then
          run.stopping, run.stopped = true, "budget: " .. why
          break
        end
        f.requests, f.tokens, f.usd = f.requests + 1, f.tokens + item.estimate, f.usd + usd
        keep[#keep + 1] = name
      end
      new = keep
    end
    self.new = new
    for _, name in ipairs(new) do self.dry_bytes = self.dry_bytes + (self.items[name].line_bytes or 0) end
    -- Fetches of pictures paid for before: the direct route's, driven here.
    while #run.slots > 0 do
      run.client:poll(0.1)
      local still = {}
      for _, slot in ipairs(run.slots) do
        if slot.job:done() then run:_finish(slot) else still[#still + 1] = slot end
      end
      run.slots = still
    end
    if o.dry_run then
      local seen, n, bytes = {}, 0, 0
      for _, name in ipairs(new) do
        for _, u in ipairs(pictures_of(self.items[name])) do
          if not seen[u.sha] and not self.memory:lookup(u.sha) then n, bytes = n + 1, bytes + #u.bytes end
          seen[u.sha] = true
        end
      end
      self.dry = { uploads = n, upload_bytes = bytes }
      return
    end
    -- Uploads first: each picture once.
    local ups = {}
    for _, name in ipairs(new) do
      for _, u in ipairs(pictures_of(self.items[name])) do ups[#ups + 1] = u end
    end
    local upfail = self:upload_all(ups)
    self:step("uploaded")
    -- The lines, into parts.
    local tag = core.sha256(run.dir .. os.time() .. core.now() .. tostring({})):sub(1, 12)
    local part
    local function close_part()
      if not part then return end
      part.f:close()
      part.f = nil
      local ids = {}
      for cid, l in pairs(part.ids) do ids[#ids + 1] = { cid, l.name, l.key } end
      table.sort(ids, function(a, b) return a[1] < b[1] end)
      J.append(self.rj, { ev = "lines", part = part.id, tag = tag, k = part.k, ids = ids, at = J.iso(os.time()),
        endpoint = part.endpoint }, true)
      self.pending[#self.pending + 1] = part
      part = nil
      self:step("lines")
    end
    local k = 0
    for _, name in ipairs(new) do
      local item = self.items[name]
      local bad
      for _, u in ipairs(pictures_of(item)) do bad = bad or upfail[u.sha] end
      local line, lerr
      if bad then
        lerr = errors.new(bad.kind, "a picture of it could not be uploaded: " .. bad.message)
      else
        line, lerr = self:line(item, self.refs)
      end
      if not line then
        run:_ended { event = "failed", name = name, key = item.key, attempts = 0,
          error = { kind = lerr.kind, message = lerr.message } }
      else
        local text = cjson.encode(line) .. "\n"
        if part and (part.count >= max_lines or part.bytes + #text > max_bytes or part.endpoint ~= line.url) then
          close_part()
        end
        if not part then
          k = k + 1
          local id = tag .. "-" .. k
          local f = assert(io.open(files.join(run.dir, ".imgedit-route-" .. id .. ".jsonl"), "wb"))
          part = { id = id, tag = tag, k = k, f = f, ids = {}, names = {}, count = 0, bytes = 0, endpoint = line.url }
        end
        part.f:write(text)
        part.ids[line.custom_id] = { name = name, key = item.key }
        part.names[name] = line.custom_id
        part.count, part.bytes = part.count + 1, part.bytes + #text
        self.lines = self.lines + 1
      end
      self.items[name].send = nil -- the bytes are sent: let them go
    end
    close_part()
    -- Send and create what is not created yet.
    self.phase = "creating"
    for _, p in ipairs(self.pending) do
      p.endpoint = p.endpoint or "/v1/images/edits"
      if not p.batch then
        local sent, serr = self:send_part(p)
        if not sent then
          run.stopping, run.stopped = true, "the provider's batch could not be created: " .. tostring(serr)
          return
        end
      end
    end
    if o.cancel then
      for _, p in ipairs(self.pending) do
        if p.batch and not p.cancel then
          self:journal { ev = "cancel", part = p.id, batch_id = p.batch }
          self:call { method = "POST", path = "/batches/" .. p.batch .. "/cancel", json = {} }
        end
      end
    end
    -- Poll until every batch is final, collecting each as it ends (with
    -- detach: once, so that a detached re-run collects what has ended).
    self.phase, self.poll_t0 = "waiting", core.now()
    local last_poll = -math.huge
    while #self.pending > 0 do
      local n = run.interrupts and run.interrupts:take() or 0
      if n > 0 then
        run.stopped = "interrupted"
        return
      end
      local now = core.now()
      if now - last_poll >= poll then
        last_poll = now
        local still = {}
        for _, p in ipairs(self.pending) do
          local res, perr = self:call { method = "GET", path = "/batches/" .. p.batch }
          if res and type(res.json) == "table" then p.status, p.misses = res.json, 0 end
          self:step("polled")
          if not res and perr.kind == "not_found" then
            -- The service does not know it (another key or base_url?): its
            -- lines were maybe run; the part is given up, not polled forever.
            self:abandon(p, entries, perr)
          elseif not res then
            -- Failed after the client's retries: stop, the batch runs on and a
            -- re-run collects it.
            p.misses = (p.misses or 0) + 1
            if p.misses >= M.POLL_MISSES then
              run.stopped = "the provider's batch " .. p.batch .. " could not be polled: " .. tostring(perr)
              return
            end
          end
          if p.abandoned then
            self.phase = "waiting"
          elseif p.status and FINAL[p.status.status] then
            self.phase = "collecting"
            local done, cerr = self:collect(p, entries)
            if not done then
              run.stopped = "the results of batch " .. p.batch .. " could not be downloaded: " .. tostring(cerr)
              return
            end
            self.phase = "waiting"
          else
            still[#still + 1] = p
          end
        end
        self.pending = still
        self:tick(true)
        if o.detach and #self.pending > 0 then
          run.stopped = "detached"
          return
        end
      end
      if #self.pending > 0 then
        -- With nothing in flight, poll only waits.
        self.client:poll(math.min(0.2, math.max(0.01, poll - (core.now() - last_poll))))
        self:tick()
      end
    end
    -- Every part is collected: the pictures' files go, unless kept.
    if not self.keep_files then
      for id in pairs(self.memory:release(self.dirkey)) do
        self:call { method = "DELETE", path = "/files/" .. id }
      end
    end
  end)
  rj:sync()
  rj:close()
  self.memory:close()
  run.route = { calls = self.calls, uploads = self.uploaded, upload_bytes = self.upload_bytes, lines = self.lines,
    superseded = self.superseded or 0, pending = setmetatable({}, cjson.empty_array_mt or {}) }
  for _, p in ipairs(self.pending) do
    run.route.pending[#run.route.pending + 1] = p.batch
  end
  if not ok then error(e, 0) end
  return self
end

return M
