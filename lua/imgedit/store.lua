-- Pipeline storage: step keys, the verified content-addressed cache, the
-- journal and each step's files. A finished step is saved to
-- dir/<name>.<ext> with a JSON sidecar, stored in the cache under its key,
-- and recorded in dir/.imgedit-journal.json; all three writes are atomic,
-- and what is read back is verified by its SHA-256. A store is an object
-- (store.new): a pipeline holds one per folder, a batch one that keeps
-- no journal of its own. The run loops are pipeline.lua's and batch.lua's.
local core = require "imgedit.core"
local cjson = require "cjson"
local request = require "imgedit.request"
local errors = require "imgedit.errors"
local files = require "imgedit.files"
local image = require "imgedit.image"
local lineage = require "imgedit.lineage"
local masks = require "imgedit.mask"
local tokens = require "imgedit.tokens"

local M = {}
local Store = {}
Store.__index = Store
M.Store = Store

local JOURNAL = ".imgedit-journal.json"

-- Keys the pipeline itself reads from a step's request.
M.OWN = { refresh = true }
local OWN = M.OWN
-- Fields that change how the answer travels, not what it is: not in the key.
local NOT_IN_KEY = { stream = true, partial_images = true }

-- ---- small helpers ----

-- A canonical JSON text: sorted keys, so equal requests give equal keys.
local canon = lineage.canon
M.canon = canon

local function read_json(path)
  local bytes = core.read_file(path)
  if not bytes then return nil end
  local ok, t = pcall(cjson.decode, bytes)
  if ok and type(t) == "table" then return t end
  return nil
end

local function write_json(path, t)
  return files.own(path, cjson.encode(t) .. "\n")
end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)) end

-- Read an image file back only if its bytes still hash to what was recorded.
-- What an edit with a mask says of its picture (mask.lua), kept beside it.
local HELD = { "mask_drift", "mask_spill", "preserved", "preserve_error" }
local function with_held(t, from)
  for _, k in ipairs(HELD) do t[k] = from[k] end
  return t
end

local function load_verified(path, sha, fields)
  local bytes = path and core.read_file(path)
  if not bytes or core.sha256(bytes) ~= sha then return nil end
  local img = image.from_bytes(bytes, fields)
  return img
end

-- The journal of the folder `dir`, or a new one.
-- new{dir, client, shared, prefix = "", journal = true} -> a store: its
-- folder, the client whose service keys name, what stores of one run
-- share (cache = a folder or nil, read = the input files read, or nil,
-- files = the files.run that writes, lineage, records, on_step), the step
-- names' prefix, and whether it keeps
-- dir/.imgedit-journal.json (a batch has a journal of its own).
function M.new(o)
  o.shared.files = o.shared.files or files.run()
  local keep = o.journal ~= false
  return setmetatable({ dir = o.dir, client = o.client, shared = o.shared, prefix = o.prefix or "",
    keep_journal = keep, journal = keep and M.read_journal(o.dir) or { steps = {} } }, Store)
end

function M.read_journal(dir)
  local j = read_json(files.join(dir, JOURNAL))
  return (j and type(j.steps) == "table") and j or { version = 1, steps = {} }
end

-- ---- keys and inputs ----

-- A path is read once, here: its bytes are hashed for the key and are
-- what the request sends, so the service gets the content the key names
-- however the file changes meanwhile.
local function source_of(src)
  if type(src) == "string" then
    local bytes, msg = core.read_file(src)
    if not bytes then return nil, msg end
    local info
    info, msg = core.inspect(bytes, true)
    if not info then return nil, msg end
    return { sha256 = lineage.sha256(bytes), width = info.width, height = info.height, source = src, bytes = bytes }
  elseif image.is(src) then
    return { sha256 = src.picture_sha256, width = src.width, height = src.height, source = src.step or src.filename }
  elseif type(src) == "table" and type(src.bytes) == "string" then
    local info = core.inspect(src.bytes, true) or {}
    return { sha256 = lineage.sha256(src.bytes), width = info.width, height = info.height, source = src.filename }
  end
  error("bad request field 'images' (path, Image or {bytes=...} expected)", 5)
end

-- Describe one item: its key and what the sidecar records.
function Store:describe(kind, name, req)
  if type(req) ~= "table" then error("bad argument #2 to '" .. kind .. "' (table expected)", 4) end
  local c = self.client
  local fields = {}
  for k, v in pairs(req) do
    if type(k) == "string" and not request.CONTROL[k] and not OWN[k] and not NOT_IN_KEY[k] then fields[k] = v end
  end
  local inputs, mask = {}, nil
  if kind == "edit" then
    for i, src in ipairs(request.image_list(req.images)) do
      local s, msg = source_of(src)
      if not s then
        return nil, errors.new("invalid_request", string.format("step %s: image %d (%s): %s", self.prefix .. name, i,
          type(src) == "string" and src or "bytes", msg), { param = "images", index = i })
      end
      inputs[i] = s
    end
    if req.mask ~= nil then
      local s, msg = source_of(req.mask)
      if not s then
        return nil, errors.new("invalid_request", string.format("step %s: mask (%s): %s", self.prefix .. name,
          type(req.mask) == "string" and req.mask or "bytes", msg), { param = "mask" })
      end
      mask = s
    end
  end
  -- The files this run read: for `imgedit run --watch`, and so that no
  -- output replaces one. What is sent is the bytes read (source_of).
  local read, run = self.shared.read, self.shared.files
  local send = {}
  for k, v in pairs(req) do send[k] = v end
  local function sent(s) return { bytes = s.bytes, filename = image.basename(s.source) } end
  if kind == "edit" then
    local list = request.image_list(req.images)
    send.images = {}
    for i, src in ipairs(list) do
      send.images[i] = inputs[i].bytes and sent(inputs[i]) or src
      if type(src) == "string" then
        if read then read[src] = true end
        if run then run:input(src) end
      end
    end
  end
  if type(req.mask) == "string" then
    if read then read[req.mask] = true end
    if run then run:input(req.mask) end
    send.mask = sent(mask)
  end
  local model = req.model or c.model
  -- preserve changes the picture kept, so it is in the key (the drift figures do not).
  local preserve = req.preserve
  if preserve == nil then preserve = c.preserve end
  preserve = mask and preserve and { feather = req.feather or c.feather } or nil
  local material = { v = 1, endpoint = kind, service = c.base_url, model = model, fields = fields,
    prompt = req.prompt, images = {}, mask = mask and mask.sha256, preserve = preserve }
  for i, s in ipairs(inputs) do material.images[i] = s.sha256 end
  local key = core.sha256(canon(material))
  -- The same without the service's address: a batch's job is the same job
  -- when it moves to another url (or another emulator port).
  material.service = nil
  return {
    kind = kind, name = self.prefix .. name, file_base = files.join(self.dir, name), req = req, send = send, model = model,
    key = key, request_key = core.sha256(canon(material)), inputs = inputs, mask = mask, fields = fields,
    preserve = preserve and { feather = preserve.feather, quality = masks._quality(fields.output_compression) },
    estimate = tokens.estimate(req.prompt, inputs, req.size, req.quality),
    parts = { tokens.parts(req.prompt, inputs, req.size, req.quality) },
  }
end

-- ---- cache and journal ----

-- The journal on disk, unless the store keeps none (a batch's: it has a
-- journal of its own).
function Store:write_journal()
  if self.keep_journal then write_json(files.join(self.dir, JOURNAL), self.journal) end
end

function Store:cache_paths(key)
  local d = files.join(self.shared.cache, key:sub(1, 2))
  return d, files.join(d, key .. ".json")
end

-- A stored result, or nil when absent or corrupt (then it will be replaced).
function Store:lookup(item)
  if item.req.refresh then return nil end
  if self.shared.cache then
    local d, meta_path = self:cache_paths(item.key)
    local meta = read_json(meta_path)
    if meta and type(meta.sha256) == "string" and type(meta.file) == "string" and meta.file:match("^%x+%.%a+$") then
      local img = load_verified(files.join(d, meta.file), meta.sha256, with_held({ usage = meta.usage,
        model = meta.model, url = meta.url, cost = meta.cost, cached = true }, meta))
      if img then return self:settle(item, img), "cache" end
    end
  end
  local j = self.journal.steps[item.name:sub(#self.prefix + 1)]
  if type(j) == "table" and j.key == item.key then
    local img = load_verified(j.file, j.sha256, with_held({ usage = j.usage, model = j.model, cost = j.cost,
      cached = true }, j))
    if img then return self:settle(item, img), "journal" end
  end
  return nil
end

-- A stored picture whose composite failed when it was paid for (say image
-- 1 could not be read then) is composited now: never paid for again.
function Store:settle(item, img)
  if not (item.preserve and img.preserve_error) then return img end
  local first = request.image_list(item.send.images)[1]
  local held = masks.preserve(img, first, item.send.mask, { feather = item.preserve.feather,
    quality = item.preserve.quality })
  if not held then return img end
  held.cached, held.settled = true, true -- stored again, composited, by _finish
  return held
end

function Store:put(item, img)
  if not self.shared.cache then return true end
  local d, meta_path = self:cache_paths(item.key)
  local ok, msg = core.mkdir_p(d)
  local file = item.key .. "." .. image.EXT[img.format]
  if ok then ok, msg = files.own(files.join(d, file), img.bytes) end
  -- The metadata is written last: it is what makes the entry visible.
  if ok then
    ok, msg = write_json(meta_path, with_held({ sha256 = img.sha256, file = file, format = img.format,
      usage = img.usage, model = img.model, url = img.url, created = img.created, cost = img.cost }, img))
  end
  return ok, msg
end

-- A picture that was paid for but whose download failed: its url is kept
-- in the journal, so that a re-run fetches it instead of paying again.
function Store:pending_url(item)
  if item.req.refresh then return nil end
  local j = self.journal.steps[item.name:sub(#self.prefix + 1)]
  if type(j) == "table" and j.key == item.key and type(j.pending_url) == "string" then return j end
end

function Store:record_pending(item, err)
  local name = item.name:sub(#self.prefix + 1)
  if err.url then
    self.journal.steps[name] = { key = item.key, pending_url = err.url, request_id = err.request_id,
      model = item.model }
  elseif type(self.journal.steps[name]) == "table" and self.journal.steps[name].pending_url then
    self.journal.steps[name] = nil -- gone: the next run pays for a new one
  end
  self:write_journal()
end

-- Whether the file at path is the one the library made for this step (an
-- earlier run's output): the journal or the sidecar names it, and its
-- bytes are unchanged since. A picture touched up by hand is not.
function Store:ours(item, path)
  local j = self.journal.steps[item.name:sub(#self.prefix + 1)]
  local side = read_json(item.file_base .. ".json")
  local want = type(j) == "table" and files.same(j.file, path) and j.sha256
  if not want and side and type(side.output) == "table" and files.same(side.output.file, path) then
    want = side.output.sha256
  end
  return type(want) == "string" and core.sha256_file(path) == want
end

-- Whether the file at path is this step's sidecar.
function Store:ours_sidecar(item, path)
  local t = read_json(path)
  return t ~= nil and t.step == item.name
end

-- Whether the file at path is a partial picture this step's sidecar lists.
function Store:ours_partial(item, path)
  local t = read_json(item.file_base .. ".json")
  for _, f in ipairs(t and t.step == item.name and type(t.partials) == "table" and t.partials or {}) do
    if files.same(f, path) then return true end
  end
  return false
end

-- may_save(item) -> true | nil, err: whether the step's output (in the
-- format asked for) and its sidecar may be written, asked before anything
-- is paid for.
function Store:may_save(item)
  local fmt = item.fields.output_format
  local path = item.file_base .. "." .. (image.EXT[fmt] or "png")
  local ok, err = self.shared.files:may_write(path, function(p) return self:ours(item, p) end)
  if ok and self.keep_journal then
    ok, err = self.shared.files:may_write(item.file_base .. ".json", function(p) return self:ours_sidecar(item, p) end)
  end
  return ok, err
end

-- Save the output and its sidecar, then record the step in the journal.
function Store:finish(item, img, how, started, attempts)
  if self.shared.lineage then
    -- How it was made, inside the file. A picture from the cache keeps the
    -- request id its first run wrote there.
    local old = lineage.read(img.bytes)
    local parents = {}
    for i, s in ipairs(item.inputs) do parents[i] = s.sha256 end
    img = image.with_lineage(img, lineage.record {
      prompt = item.req.prompt, model = item.model, params = item.fields, step = item.name, parents = parents,
      mask = item.mask and item.mask.sha256, request_id = img.request_id or (old and old.request_id), held = img,
    })
  end
  local path = item.file_base .. "." .. image.EXT[img.format]
  local ok, werr = self.shared.files:write(path, img.bytes, function(p) return self:ours(item, p) end)
  if not ok then
    werr.image = img
    return nil, werr
  end
  img.path, img.step = path, item.name
  local function src(s) return s and { sha256 = s.sha256, source = type(s.source) == "string" and s.source or nil } end
  local inputs = {}
  for i, s in ipairs(item.inputs) do inputs[i] = src(s) end
  local params = {}
  for k, v in pairs(item.fields) do if k ~= "prompt" then params[k] = v end end
  local seconds = core.now() - started
  local usage = img.usage
  local spent_now = how == nil and usage and usage.total_tokens or 0
  -- Partial pictures: this run's, or on a cache hit the earlier run's that are still there.
  local partials = item.partials
  if how ~= nil and not partials then
    local old = read_json(item.file_base .. ".json")
    partials = {}
    for _, f in ipairs(old and type(old.partials) == "table" and old.partials or {}) do
      if type(f) == "string" and core.read_file(f) then partials[#partials + 1] = f end
    end
  end
  local side = item.file_base .. ".json"
  local msg
  ok, msg = self.shared.files:may_write(side, function(p) return self:ours_sidecar(item, p) end)
  if ok then ok, msg = write_json(side, with_held({
    step = item.name, kind = item.kind, model = item.model, prompt = item.req.prompt, params = params,
    inputs = inputs, mask = src(item.mask), usage = usage or cjson.null, tokens_spent = spent_now,
    cache_hit = how ~= nil, resumed_from = how or cjson.null, requests = attempts, started = iso(os.time() - seconds),
    seconds = seconds, output = { file = path, sha256 = img.sha256, picture = img.picture_sha256,
      format = img.format, width = img.width, height = img.height }, request_id = img.request_id, cost = img.cost or cjson.null,
    partials = partials and #partials > 0 and partials or nil, order = #self.shared.records + 1,
  }, img)) end
  if not ok then
    if errors.is(msg) then
      msg.image = img
      return nil, msg
    end
    return nil, errors.new("io", side .. ": " .. tostring(msg), { param = "dir", image = img })
  end
  if how == nil or how == "url" or img.settled then self:put(item, img) end
  self.journal.steps[item.name:sub(#self.prefix + 1)] = with_held({ key = item.key, file = path,
    sha256 = img.sha256, usage = usage, model = img.model, cost = img.cost }, img)
  self:write_journal()
  local rec = { name = item.name, hit = how ~= nil, requests = attempts, seconds = seconds,
    tokens_in = how == nil and usage and usage.input_tokens or 0,
    tokens_out = how == nil and usage and usage.output_tokens or 0, file = path,
    usd = (how ~= nil) and 0 or (img.cost and img.cost.usd), mask_drift = img.mask_drift,
    mask_spill = img.mask_spill, preserved = img.preserved }
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


return M
