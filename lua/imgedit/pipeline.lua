-- Pipelines: multi-turn edit scripts that read top to bottom, where a re-run
-- pays only for the steps whose inputs changed, and a crash loses nothing.
--
-- Every step has a key: the SHA-256 of the endpoint, the service's url, the
-- model, every request field, the prompt and the SHA-256 of every input
-- image and the mask, in order (never the API key). A finished step is
-- saved to dir/<name>.<ext> with a JSON sidecar, stored in the cache under
-- its key, and recorded in dir/.imgedit-journal.json before the next step
-- starts; all three writes are atomic, and what is read back is verified by
-- its SHA-256.
local core = require "imgedit.core"
local cjson = require "cjson"
local client_mod = require "imgedit.client"
local request = require "imgedit.request"
local errors = require "imgedit.errors"
local image = require "imgedit.image"
local tokens = require "imgedit.tokens"

local M = {}

local Pipeline = {}
Pipeline.__index = Pipeline
M.Pipeline = Pipeline

local JOURNAL = ".imgedit-journal.json"

-- Keys the pipeline itself reads from a step's request.
local OWN = { refresh = true }
-- Fields that change how the answer travels, not what it is: not in the key.
local NOT_IN_KEY = { stream = true, partial_images = true }

-- ---- small helpers ----

-- A canonical JSON text: sorted keys, so equal requests give equal keys.
local function canon(v)
  local t = type(v)
  if t ~= "table" then return cjson.encode(v) end
  if #v > 0 or next(v) == nil then
    local parts = {}
    for i = 1, #v do parts[i] = canon(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = cjson.encode(k) .. ":" .. canon(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end
M.canon = canon

local function read_json(path)
  local bytes = core.read_file(path)
  if not bytes then return nil end
  local ok, t = pcall(cjson.decode, bytes)
  if ok and type(t) == "table" then return t end
  return nil
end

local function write_json(path, t)
  return core.write_atomic(path, cjson.encode(t) .. "\n")
end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)) end

-- Read an image file back only if its bytes still hash to what was recorded.
local function load_verified(path, sha, fields)
  local bytes = path and core.read_file(path)
  if not bytes or core.sha256(bytes) ~= sha then return nil end
  local img = image.from_bytes(bytes, fields)
  return img
end

-- ---- construction ----

-- pipeline{client=, dir="out", cache=".imgedit-cache"|false, budget=N|{tokens=, requests=}, on_step=, quiet=}
function M.new(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'pipeline' (table expected)", 2) end
  local client = opts.client or require("imgedit").new {}
  if getmetatable(client) ~= client_mod.Client then error("bad option 'client' (an imgedit client expected)", 2) end
  local budget = opts.budget
  if type(budget) == "number" then budget = { tokens = budget } end
  if budget ~= nil and type(budget) ~= "table" then error("bad option 'budget' (number or table expected)", 2) end
  local cache = opts.cache
  if cache == nil then cache = ".imgedit-cache" end
  if cache ~= false and type(cache) ~= "string" then error("bad option 'cache' (folder or false expected)", 2) end
  if opts.on_step ~= nil and type(opts.on_step) ~= "function" then error("bad option 'on_step' (function expected)", 2) end
  local shared = {
    client = client, cache = cache, budget = budget or {}, on_step = opts.on_step, quiet = opts.quiet,
    spent = { tokens = 0, input = 0, output = 0, requests = 0 }, records = {}, names = {}, t0 = core.now(),
  }
  return M._open(shared, opts.dir or "out", "")
end

function M._open(shared, dir, prefix)
  local ok, msg = core.mkdir_p(dir)
  if not ok then error("cannot use the pipeline folder " .. dir .. ": " .. msg, 3) end
  local p = setmetatable({ dir = dir, prefix = prefix, shared = shared, client = shared.client }, Pipeline)
  local j = read_json(dir .. "/" .. JOURNAL)
  p.journal = (j and type(j.steps) == "table") and j or { version = 1, steps = {} }
  return p
end

-- branch(name) -> a pipeline writing into dir/name, sharing the client,
-- cache, budget and report: try alternatives from one intermediate result.
function Pipeline:branch(name)
  if type(name) ~= "string" or not name:match("^[%w%-_.]+$") then
    error("bad argument #1 to 'branch' (a simple name expected)", 2)
  end
  return M._open(self.shared, self.dir .. "/" .. name, self.prefix .. name .. "/")
end

-- ---- keys and inputs ----

local function source_of(src)
  if type(src) == "string" then
    local info, msg = core.inspect(src)
    if not info then return nil, msg end
    local sha, err = core.sha256_file(src)
    if not sha then return nil, err end
    return { sha256 = sha, width = info.width, height = info.height, source = src }
  elseif image.is(src) then
    return { sha256 = src.sha256, width = src.width, height = src.height, source = src.step or src.filename }
  elseif type(src) == "table" and type(src.bytes) == "string" then
    local info = core.inspect(src.bytes, true) or {}
    return { sha256 = core.sha256(src.bytes), width = info.width, height = info.height, source = src.filename }
  end
  error("bad request field 'images' (path, Image or {bytes=...} expected)", 5)
end

-- Describe one item: its key and what the sidecar records.
function Pipeline:_describe(kind, name, req)
  if type(req) ~= "table" then error("bad argument #2 to '" .. kind .. "' (table expected)", 4) end
  local c = self.client
  local fields = {}
  for k, v in pairs(req) do
    if type(k) == "string" and not client_mod.CONTROL[k] and not OWN[k] and not NOT_IN_KEY[k] then fields[k] = v end
  end
  local inputs, mask = {}, nil
  if kind == "edit" then
    for i, src in ipairs(request.image_list(req.images)) do
      local s, msg = source_of(src)
      if not s then
        return nil, errors.new("invalid_request", string.format("image %d: %s", i, msg), { param = "images", index = i })
      end
      inputs[i] = s
    end
    if req.mask ~= nil then
      local s, msg = source_of(req.mask)
      if not s then return nil, errors.new("invalid_request", "mask: " .. msg, { param = "mask" }) end
      mask = s
    end
  end
  local model = req.model or c.model
  local material = { v = 1, endpoint = kind, service = c.base_url, model = model, fields = fields,
    prompt = req.prompt, images = {}, mask = mask and mask.sha256 }
  for i, s in ipairs(inputs) do material.images[i] = s.sha256 end
  return {
    kind = kind, name = self.prefix .. name, file_base = self.dir .. "/" .. name, req = req, model = model,
    key = core.sha256(canon(material)), inputs = inputs, mask = mask, fields = fields,
    estimate = tokens.estimate(req.prompt, inputs, req.size, req.quality),
  }
end

-- ---- cache and journal ----

function Pipeline:_cache_paths(key)
  local d = self.shared.cache .. "/" .. key:sub(1, 2)
  return d, d .. "/" .. key .. ".json"
end

-- A stored result, or nil when absent or corrupt (then it will be replaced).
function Pipeline:_lookup(item)
  if item.req.refresh then return nil end
  if self.shared.cache then
    local d, meta_path = self:_cache_paths(item.key)
    local meta = read_json(meta_path)
    if meta and type(meta.sha256) == "string" and type(meta.file) == "string" then
      local img = load_verified(d .. "/" .. meta.file, meta.sha256,
        { usage = meta.usage, model = meta.model, url = meta.url, cached = true })
      if img then return img, "cache" end
    end
  end
  local j = self.journal.steps[item.name:sub(#self.prefix + 1)]
  if type(j) == "table" and j.key == item.key then
    local img = load_verified(j.file, j.sha256, { usage = j.usage, model = j.model, cached = true })
    if img then return img, "journal" end
  end
  return nil
end

function Pipeline:_store(item, img)
  if not self.shared.cache then return true end
  local d, meta_path = self:_cache_paths(item.key)
  local ok, msg = core.mkdir_p(d)
  local file = item.key .. "." .. image.EXT[img.format]
  if ok then ok, msg = core.write_atomic(d .. "/" .. file, img.bytes) end
  -- The metadata is written last: it is what makes the entry visible.
  if ok then
    ok, msg = write_json(meta_path, { sha256 = img.sha256, file = file, format = img.format, usage = img.usage,
      model = img.model, url = img.url, created = img.created })
  end
  return ok, msg
end

-- A picture that was paid for but whose download failed: its url is kept
-- in the journal, so that a re-run fetches it instead of paying again.
function Pipeline:_pending_url(item)
  if item.req.refresh then return nil end
  local j = self.journal.steps[item.name:sub(#self.prefix + 1)]
  if type(j) == "table" and j.key == item.key and type(j.pending_url) == "string" then return j end
end

function Pipeline:_record_pending(item, err)
  local name = item.name:sub(#self.prefix + 1)
  if err.url then
    self.journal.steps[name] = { key = item.key, pending_url = err.url, request_id = err.request_id,
      model = item.model }
  elseif type(self.journal.steps[name]) == "table" and self.journal.steps[name].pending_url then
    self.journal.steps[name] = nil -- gone: the next run pays for a new one
  end
  write_json(self.dir .. "/" .. JOURNAL, self.journal)
end

-- Save the output and its sidecar, then record the step in the journal.
function Pipeline:_finish(item, img, how, started, attempts)
  local path = item.file_base .. "." .. image.EXT[img.format]
  local ok, msg = core.write_atomic(path, img.bytes)
  if not ok then return nil, errors.new("io", path .. ": " .. msg, { param = "dir", image = img }) end
  img.path, img.step = path, item.name
  local function src(s) return s and { sha256 = s.sha256, source = type(s.source) == "string" and s.source or nil } end
  local inputs = {}
  for i, s in ipairs(item.inputs) do inputs[i] = src(s) end
  local params = {}
  for k, v in pairs(item.fields) do if k ~= "prompt" then params[k] = v end end
  local seconds = core.now() - started
  local usage = img.usage
  local spent_now = how == nil and usage and usage.total_tokens or 0
  ok, msg = write_json(item.file_base .. ".json", {
    step = item.name, kind = item.kind, model = item.model, prompt = item.req.prompt, params = params,
    inputs = inputs, mask = src(item.mask), usage = usage or cjson.null, tokens_spent = spent_now,
    cache_hit = how ~= nil, resumed_from = how or cjson.null, requests = attempts, started = iso(os.time() - seconds),
    seconds = seconds, output = { file = path, sha256 = img.sha256, format = img.format, width = img.width,
      height = img.height }, request_id = img.request_id,
  })
  if not ok then return nil, errors.new("io", item.file_base .. ".json: " .. msg, { param = "dir", image = img }) end
  if how == nil or how == "url" then self:_store(item, img) end
  self.journal.steps[item.name:sub(#self.prefix + 1)] = { key = item.key, file = path, sha256 = img.sha256,
    usage = usage, model = img.model }
  write_json(self.dir .. "/" .. JOURNAL, self.journal)
  local rec = { name = item.name, hit = how ~= nil, requests = attempts, seconds = seconds,
    tokens_in = how == nil and usage and usage.input_tokens or 0,
    tokens_out = how == nil and usage and usage.output_tokens or 0, file = path }
  local sh = self.shared
  sh.records[#sh.records + 1] = rec
  if sh.on_step then
    -- The step is on disk and in the journal already: a raising on_step
    -- fails the step as kind "callback", and a re-run gets it for free.
    local cok, e = pcall(sh.on_step, { name = item.name, cache_hit = rec.hit, seconds = seconds, usage = usage,
      file = path, image = img })
    if not cok then
      return nil, errors.new("callback", "on_step raised an error: " .. tostring(errors.is(e) and e.message or e),
        { callback = "on_step", cause = e, image = img })
    end
  end
  return img
end

-- ---- budget ----

function Pipeline:_afford(items)
  local b, s = self.shared.budget, self.shared.spent
  local need, n = 0, 0
  for _, it in ipairs(items) do need, n = need + it.estimate, n + 1 end
  if b.requests and s.requests + n > b.requests then
    return nil, errors.new("budget", string.format("%s needs %d request%s; %d of the budget's %d are spent",
      items[1].name, n, n == 1 and "" or "s", s.requests, b.requests))
  end
  if b.tokens and s.tokens + need > b.tokens then
    return nil, errors.new("budget", string.format(
      "%s would need up to %d tokens (estimate); %d of the budget's %d are spent", items[1].name, need, s.tokens, b.tokens))
  end
  return true
end

function Pipeline:_spend(item, img, attempts)
  local s = self.shared.spent
  s.requests = s.requests + attempts
  local u = img and img.usage
  if u and u.total_tokens then
    s.tokens = s.tokens + u.total_tokens
    s.input = s.input + (u.input_tokens or 0)
    s.output = s.output + (u.output_tokens or 0)
  elseif img then
    s.tokens = s.tokens + item.estimate -- no usage in the answer: count the estimate
  end
end

-- ---- running steps ----

local function check_name(self, name, fn)
  if type(name) ~= "string" or not name:match("^[%w%-_.]+$") then
    error("bad argument #1 to '" .. fn .. "' (a step name of letters, digits, - _ . expected)", 3)
  end
  local full = self.prefix .. name
  if self.shared.names[full] then error("step name '" .. full .. "' is used twice", 3) end
  self.shared.names[full] = true
end

-- Run items: stored results first, then the rest in parallel. Returns a list
-- with an Image or an error per item.
function Pipeline:_run(items)
  local out, todo = {}, {}
  for i, it in ipairs(items) do
    local img, how = self:_lookup(it)
    if img then
      local saved, err = self:_finish(it, img, how, core.now(), 0)
      out[i] = saved or err
    else
      todo[#todo + 1] = i
    end
  end
  if #todo == 0 then return out end
  local pending = {}
  for _, i in ipairs(todo) do pending[#pending + 1] = items[i] end
  local ok, err = self:_afford(pending)
  if not ok then
    for _, i in ipairs(todo) do out[i] = err end
    return out
  end
  local jobs = {}
  local function submit(i)
    local it, pend = items[i], self:_pending_url(items[i])
    if pend then
      return { job = self.client:submit("download", { url = pend.pending_url, request_id = pend.request_id,
        model = pend.model }), started = core.now(), from_url = true }
    end
    local req = {}
    for k, v in pairs(it.req) do if not OWN[k] then req[k] = v end end
    return { job = self.client:submit(it.kind, req), started = core.now() }
  end
  for _, i in ipairs(todo) do jobs[i] = submit(i) end
  -- Record each result as it arrives, so that a crash loses only what was in flight.
  local left = #todo
  while left > 0 do
    for _, i in ipairs(todo) do
      local j = jobs[i]
      if j and not j.recorded and j.job:done() then
        local img, e = j.job:result()
        if j.from_url and e and e.status and e.status >= 400 and e.status < 500 then
          -- The url is gone (expired or unknown): the picture cannot be had
          -- any more, so this run pays for a new one.
          self:_record_pending(items[i], {})
          jobs[i] = submit(i)
        else
          j.recorded = true
          left = left - 1
          if not j.from_url then self:_spend(items[i], img, j.job.attempts) end
          if img then
            local saved, serr = self:_finish(items[i], img, j.from_url and "url" or nil, j.started, j.job.attempts)
            out[i] = saved or serr
          else
            self:_record_pending(items[i], e)
            out[i] = e
          end
        end
      end
    end
    if left > 0 then self.client:poll(1) end
  end
  return out
end

local function single(self, kind, name, req)
  check_name(self, name, kind)
  local item, err = self:_describe(kind, name, req)
  if not item then return nil, err end
  local r = self:_run({ item })[1]
  if errors.is(r) then return nil, r end
  return r
end

-- edit(name, req) / generate(name, req) -> Image | nil, err
function Pipeline:edit(name, req) return single(self, "edit", name, req) end
function Pipeline:generate(name, req) return single(self, "generate", name, req) end

-- fan_out(name, reqs [, {kind = "edit"|"generate"}]) runs the requests in
-- parallel as steps <name>-1, <name>-2, ... and returns the Images in order;
-- if any failed: nil, the first error (the others are saved and cached, so
-- a re-run pays only for the failed ones).
function Pipeline:fan_out(name, reqs, opts)
  if type(reqs) ~= "table" then error("bad argument #2 to 'fan_out' (table expected)", 2) end
  local kind = opts and opts.kind or "edit"
  local items = {}
  for i, req in ipairs(reqs) do
    local step = name .. "-" .. i
    check_name(self, step, "fan_out")
    local item, err = self:_describe(kind, step, req)
    if not item then return nil, err end
    items[i] = item
  end
  local res = self:_run(items)
  for _, r in ipairs(res) do
    if errors.is(r) then return nil, r end
  end
  return res
end

-- iterate(name, start, prompts [, extra]) feeds each output into the next
-- edit, as <name>-1, <name>-2, ...; returns the last Image and the list.
function Pipeline:iterate(name, start, prompts, extra)
  if type(prompts) ~= "table" then error("bad argument #3 to 'iterate' (list of prompts expected)", 2) end
  local prev, all = start, {}
  for i, prompt in ipairs(prompts) do
    local req = { prompt = prompt, images = { prev } }
    for k, v in pairs(extra or {}) do if req[k] == nil then req[k] = v end end
    local img, err = self:edit(name .. "-" .. i, req)
    if not img then return nil, err end
    all[i], prev = img, img
  end
  return prev, all
end

-- report([{quiet = true}]) -> a table; prints a summary unless quiet.
function Pipeline:report(opts)
  local sh = self.shared
  local r = { steps = #sh.records, hits = 0, requests = sh.spent.requests, tokens_in = sh.spent.input,
    tokens_out = sh.spent.output, tokens = sh.spent.tokens, seconds = core.now() - sh.t0, list = sh.records }
  for _, rec in ipairs(sh.records) do if rec.hit then r.hits = r.hits + 1 end end
  if not (opts and opts.quiet) and not sh.quiet then
    print(string.format("pipeline: %d steps, %d from cache, %d requests, %d tokens in, %d out, %.1f s",
      r.steps, r.hits, r.requests, r.tokens_in, r.tokens_out, r.seconds))
    for _, rec in ipairs(sh.records) do
      print(string.format("  %-24s %-6s %7d tokens %6.1f s  %s", rec.name, rec.hit and "cached" or "paid",
        rec.tokens_in + rec.tokens_out, rec.seconds, rec.file))
    end
  end
  return r
end

return M
