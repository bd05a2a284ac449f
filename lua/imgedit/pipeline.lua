-- Pipelines: multi-turn edit scripts that read top to bottom, where a re-run
-- pays only for the steps whose inputs changed, and a crash loses nothing.
-- This file is the run loop (steps, fan-out, iteration, budget, report);
-- keys, the cache, the journal and each step's files are store.lua's.
local core = require "imgedit.core"
local client_mod = require "imgedit.client"
local budgets = require "imgedit.budget"
local errors = require "imgedit.errors"
local files = require "imgedit.files"
local image = require "imgedit.image"
local prices = require "imgedit.prices"
local store = require "imgedit.store"
local text = require "imgedit.text"

local M = {}

local Pipeline = {}
Pipeline.__index = Pipeline
M.Pipeline = Pipeline
M.canon = store.canon

local OWN = store.OWN

-- ---- construction ----

-- pipeline{client=, dir="out", cache=".imgedit-cache"|false, budget=N|{tokens=, requests=, usd=}, on_step=,
-- quiet=, lineage=true, overwrite=false}
function M.new(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'pipeline' (table expected)", 2) end
  local client = opts.client or client_mod.new {}
  if getmetatable(client) ~= client_mod.Client then error("bad option 'client' (an imgedit client expected)", 2) end
  local budget = budgets.option(opts.budget, 2)
  local cache = opts.cache
  if cache == nil then cache = ".imgedit-cache" end
  if cache ~= false and type(cache) ~= "string" then error("bad option 'cache' (folder or false expected)", 2) end
  if opts.on_step ~= nil and type(opts.on_step) ~= "function" then error("bad option 'on_step' (function expected)", 2) end
  if opts.lineage ~= nil and type(opts.lineage) ~= "boolean" then error("bad option 'lineage' (boolean expected)", 2) end
  if opts.overwrite ~= nil and type(opts.overwrite) ~= "boolean" then
    error("bad option 'overwrite' (boolean expected)", 2)
  end
  local shared = {
    files = files.run { overwrite = opts.overwrite },
    client = client, cache = cache, budget = budget or {}, on_step = opts.on_step, quiet = opts.quiet,
    lineage = opts.lineage ~= false, read = {},
    spent = { tokens = 0, input = 0, output = 0, requests = 0, usd = 0 }, records = {}, names = {}, t0 = core.now(),
  }
  return M._open(shared, opts.dir or "out", "")
end

function M._open(shared, dir, prefix)
  local ok, msg = core.mkdir_p(dir)
  if not ok then error("cannot use the pipeline folder " .. dir .. ": " .. msg, 3) end
  local p = setmetatable({ dir = dir, prefix = prefix, shared = shared, client = shared.client }, Pipeline)
  p.store = store.new { dir = dir, prefix = prefix, shared = shared, client = shared.client }
  return p
end

-- branch(name) -> a pipeline writing into dir/name, sharing the client,
-- cache, budget and report: try alternatives from one intermediate result.
function Pipeline:branch(name)
  files.name(name, "branch name", 2)
  return M._open(self.shared, files.join(self.dir, name), self.prefix .. name .. "/")
end

-- ---- budget ----

function Pipeline:_afford(items)
  local ok, msg = budgets.check(self.shared.budget, self.shared.spent, items, self.client)
  if not ok then return nil, errors.new("budget", msg) end
  return true
end

function Pipeline:_spend(item, img, attempts)
  local s = self.shared.spent
  s.requests = s.requests + attempts
  if img and img.cost then
    s.usd = s.usd + img.cost.usd
  elseif img then -- no price from the answer: the estimate keeps the budget safe
    s.usd = s.usd + (prices.estimate(self.client, item.model, item.parts) or 0)
  end
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
  local ok, why = files.check_name(name)
  if not ok then
    error(string.format("bad argument #1 to '%s' (step name %s: %s)", fn,
      type(name) == "string" and string.format("%q", name) or type(name), why), 3)
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
    local img, how = self.store:lookup(it)
    if img then
      local saved, err = self.store:finish(it, img, how, core.now(), 0)
      out[i] = saved or err
    else
      todo[#todo + 1] = i
    end
  end
  if #todo == 0 then return out end
  -- Where each picture will go, asked before anything is paid for.
  local free = {}
  for _, i in ipairs(todo) do
    local ok, err = self.store:may_save(items[i])
    if ok then free[#free + 1] = i else out[i] = err end
  end
  todo = free
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
    local it, pend = items[i], self.store:pending_url(items[i])
    if pend then
      return { job = self.client:submit("download", { url = pend.pending_url, request_id = pend.request_id,
        model = pend.model }), started = core.now(), from_url = true }
    end
    local req = {}
    for k, v in pairs(it.send) do if not OWN[k] then req[k] = v end end
    if req.stream == true or req.stream == "true" then
      -- Partial pictures are kept beside the step's output, for the sheet's strip.
      local user = it.req.on_partial
      it.partials = {}
      req.on_partial = function(img, index)
        local path = string.format("%s.partial-%d.%s", it.file_base, index, image.EXT[img.format])
        if self.shared.files:write(path, img.bytes, function(p) return self.store:ours_partial(it, p) end) then
          it.partials[#it.partials + 1] = path
        end
        if user then return user(img, index) end
      end
    end
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
          self.store:record_pending(items[i], {})
          jobs[i] = submit(i)
        else
          j.recorded = true
          left = left - 1
          if not j.from_url then self:_spend(items[i], img, j.job.attempts) end
          if img then
            local saved, serr = self.store:finish(items[i], img, j.from_url and "url" or nil, j.started, j.job.attempts)
            out[i] = saved or serr
          else
            self.store:record_pending(items[i], e)
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
  local item, err = self.store:describe(kind, name, req)
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
    local item, err = self.store:describe(kind, step, req)
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

-- report([{quiet = true, html = path, title = text}]) -> a table; prints a
-- summary unless quiet; with html, also writes the contact sheet there
-- (r.html is its path; a failure to write it raises no error: r.html_error).
function Pipeline:report(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #1 to 'report' (table expected)", 2) end
  if opts.html ~= nil and type(opts.html) ~= "string" then error("bad option 'html' (a file path expected)", 2) end
  local sh = self.shared
  local r = { steps = #sh.records, hits = 0, requests = sh.spent.requests, tokens_in = sh.spent.input,
    tokens_out = sh.spent.output, tokens = sh.spent.tokens, usd = sh.spent.usd, seconds = core.now() - sh.t0,
    list = sh.records }
  for _, rec in ipairs(sh.records) do if rec.hit then r.hits = r.hits + 1 end end
  if opts.html then
    -- This run's steps: earlier runs' leftovers in the folder are not shown.
    local names = {}
    for _, rec in ipairs(sh.records) do names[rec.name] = true end
    local path, msg = require("imgedit.sheet").write(self.dir, opts.html, opts.title, names)
    r.html, r.html_error = path, not path and msg or nil
  end
  -- Step names and paths come from the script and its folder: printed safe.
  if not opts.quiet and not sh.quiet then
    local safe = text.safe
    print(string.format("pipeline: %d steps, %d from cache, %d requests, %d tokens in, %d out, $%.4f, %.1f s",
      r.steps, r.hits, r.requests, r.tokens_in, r.tokens_out, r.usd, r.seconds))
    for _, rec in ipairs(sh.records) do
      print(string.format("  %-24s %-6s %7d tokens %9s %6.1f s  %s%s", safe(rec.name), rec.hit and "cached" or "paid",
        rec.tokens_in + rec.tokens_out, rec.usd and string.format("$%.4f", rec.usd) or "-", rec.seconds, safe(rec.file),
        rec.mask_drift and string.format("  mask drift %.1f%%, spill %.1f%%%s", rec.mask_drift * 100,
          rec.mask_spill * 100, rec.preserved and ", preserved" or "") or ""))
    end
    if r.html then print("contact sheet: " .. safe(r.html)) end
  end
  return r
end

return M
