-- A batch's journal and shards: the append-only journal (one line when a
-- request is sent, one when its job ends, on the disk before the next
-- request goes out), reading every journal of a folder back, and which
-- jobs a shard I of N runs; and which files in the folder are a job's own
-- output (its lineage or its "done" line says so).
local core = require "imgedit.core"
local cjson = require "cjson"
local files = require "imgedit.files"
local image = require "imgedit.image"
local lineage = require "imgedit.lineage"

local M = {}

function M.iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)) end

function M.parse_shard(s)
  if s == nil then return nil end
  local i, n
  if type(s) == "table" then
    i, n = s[1], s[2]
  else
    i, n = tostring(s):match("^(%d+)/(%d+)$")
    i, n = tonumber(i), tonumber(n)
  end
  if type(i) ~= "number" or type(n) ~= "number" or n < 1 or i < 1 or i > n or i % 1 ~= 0 or n % 1 ~= 0 then
    error("bad option 'shard' (I/N with 1 <= I <= N expected, got " .. tostring(s) .. ")", 3)
  end
  return { i = i, n = n }
end

-- A job belongs to shard I of N by its name's hash: the same split on every
-- machine, whatever the order of the manifest's lines.
function M.in_shard(shard, name)
  if not shard or shard.n == 1 then return true end
  return tonumber(core.sha256(name):sub(1, 8), 16) % shard.n == shard.i - 1
end

-- ".I-of-N" in a shard's own file names; "" without shards.
function M.suffix(shard)
  return shard and shard.n > 1 and string.format(".%d-of-%d", shard.i, shard.n) or ""
end

function M.journal_name(shard) return ".imgedit-batch" .. M.suffix(shard) .. ".jsonl" end

-- The fields of a journal line, and of its error (lineage.sane's types).
local EVENT = { event = "string", name = "string", key = "string", at = "string", model = "string",
  attempts = "number", seconds = "number", maybe_paid_twice = "boolean", resumed = "string", tokens = "number",
  usage = "map", cost = "number", request_id = "string", file = "string", files = "strings", bytes = "number",
  sha256 = "string", url = "string", error = "map", batch = "string" }
local ERROR = { kind = "string", message = "string", status = "number", maybe_billed = "boolean",
  retry_after = "number" }

-- One line of a journal as a record, field by field; nil for one that is
-- not a job's event. A field of the wrong type is left out, and named in
-- warn(message). A line cut short by a kill is skipped without a word.
local function event_of(line, where, warn)
  local ok, t = pcall(cjson.decode, line)
  if not ok or type(t) ~= "table" then return nil end
  local ev, dropped = lineage.sane(t, EVENT)
  if ev.error then
    local err, bad = lineage.sane(ev.error, ERROR)
    ev.error = err
    for _, k in ipairs(bad) do dropped[#dropped + 1] = "error." .. k end
  end
  if not (ev.name and ev.event) then
    if warn then warn(string.format("%s: a line without a job's name and event, skipped", where)) end
    return nil
  end
  if warn and #dropped > 0 then
    warn(string.format("%s: field%s %s of the wrong type, left out", where, #dropped > 1 and "s" or "",
      table.concat(dropped, ", ")))
  end
  return ev
end

-- When a job's record in one journal last moved ("" when unsaid).
local function moved(k) return (k.open and k.open.at) or (k.last and k.last.at) or "" end

-- Every journal in dir, read into name -> what is known: `last` (the last
-- ended event) and `open` (sent after it, never ended: in flight at a crash).
-- Within a journal its order rules; across journals (shards, runs with and
-- without them) the one that moved last. warn(message), when given, hears
-- of lines and fields left out.
function M.read_journals(dir, names, warn)
  local known, list = {}, {}
  for _, e in ipairs(core.listdir(dir) or {}) do
    if e.name:match("^%.imgedit%-batch.*%.jsonl$") and not e.link then list[#list + 1] = e.name end
  end
  table.sort(list)
  for _, name in ipairs(list) do
    local path = files.join(dir, name)
    local f = io.open(path, "rb")
    local mine, n = {}, 0
    for line in f and f:lines() or function() end do
      n = n + 1
      local ev = event_of(line, path .. ":" .. n, warn)
      if ev and (names == nil or names[ev.name]) then
        local k = mine[ev.name] or {}
        mine[ev.name] = k
        if ev.event == "sent" then
          k.open = ev
        elseif ev.event == "requeued" then
          k.open = nil
        elseif ev.event == "done" or ev.event == "failed" then
          k.last, k.open = ev, nil
        end
      end
    end
    if f then f:close() end
    for job, k in pairs(mine) do
      if not known[job] or moved(k) >= moved(known[job]) then known[job] = k end
    end
  end
  return known
end

-- One write of one line, flushed: the kernel has it before the next step.
-- With durable, it and every line before it are on the disk: the "sent"
-- line before its request goes out (one fdatasync a job; measured in
-- bench/README.md).
function M.append(f, ev, durable)
  local ok, msg = f:write(cjson.encode(ev), "\n")
  if ok and durable then ok, msg = f:sync() end
  if not ok then error("cannot write the batch journal to the disk: " .. tostring(msg), 0) end
end

-- What a picture's lineage must say for it to be this job's output.
function M.made_by(path, item)
  local bytes = core.read_file(path)
  local l = bytes and lineage.read(bytes)
  if not l or l.prompt ~= item.req.prompt or l.model ~= item.model or l.step ~= item.name then return nil end
  if type(l.parents) ~= "table" or #l.parents ~= #item.inputs then return nil end
  for i, s in ipairs(item.inputs) do
    if l.parents[i] ~= s.sha256 then return nil end
  end
  if (l.mask or false) ~= (item.mask and item.mask.sha256 or false) then return nil end
  return image.from_bytes(bytes, { request_id = l.request_id })
end

-- Whether the file at path is this job's, made by an earlier run: its
-- lineage says so, or the journal's "done" names it with these bytes.
-- ours(prior, item, path) -> boolean; prior: what the journals said of the job.
function M.ours(prior, item, path)
  if M.made_by(path, item) then return true end
  local last = prior and prior.last
  if not (last and last.event == "done") then return false end
  local named = files.same(last.file, path)
  for _, f in ipairs(type(last.files) == "table" and last.files or {}) do named = named or files.same(f, path) end
  return named and (not files.same(last.file, path) or core.sha256_file(path) == last.sha256)
end

return M
