-- The emulated Files API (OpenAI's /v1/files): upload (multipart: file,
-- purpose, expires_after[anchor], expires_after[seconds]), list, retrieve,
-- content and delete, and the store the batches' input and output files and
-- JSON edits' file_id references are read from. Files are held as Lua
-- strings in the emulator's own state; one that expired answers 404 like a
-- deleted one. Shapes from the OpenAPI spec (OpenAIFile, CreateFileRequest,
-- FileExpirationAfter, ListFilesResponse, DeleteFileResponse).
local core = require "imgedit.core"
local cjson = require "cjson"
local rules = require "imgedit.emulator.rules"
local S = require "imgedit.emulator.state"

local F = {}

local json_answer, fail, invalid = rules.json_answer, rules.fail, rules.invalid

local PURPOSES = { batch = true, vision = true, user_data = true, assistants = true, ["fine-tune"] = true,
  evals = true }
local DAY = 86400

local by_id, order, seq = {}, {}, 0

-- A fresh id: prefix and 24 hex digits, from a counter and the clock (not
-- math.random, whose seeded sequence the load faults use).
function F.new_id(prefix)
  seq = seq + 1
  return prefix .. core.sha256(seq .. ":" .. tostring(S.cfg.key) .. ":" .. os.clock() .. ":" .. core.now()):sub(1, 24)
end

local function expired(f)
  return f.object.expires_at ~= cjson.null and S.time() >= f.object.expires_at
end

-- lookup(id) -> {object=, data=, content_type=} of a live file, or nil.
function F.lookup(id)
  local f = by_id[id]
  if f and expired(f) then
    by_id[id] = nil -- its bytes go with it
    return nil
  end
  return f
end

-- add(data, filename, purpose, content_type, seconds) -> the file: the
-- service's own files (batch outputs) and uploads alike.
function F.add(data, filename, purpose, content_type, seconds)
  local now = S.time()
  local f = {
    object = { id = F.new_id("file-"), object = "file", bytes = #data, created_at = now,
      expires_at = seconds and now + seconds or cjson.null, filename = filename, purpose = purpose,
      status = "processed", status_details = cjson.null },
    data = data, content_type = content_type or "application/octet-stream",
  }
  by_id[f.object.id] = f
  order[#order + 1] = f.object.id
  return f
end

local function not_found(id)
  return fail(404, "No such File object: " .. tostring(id), "id", cjson.null)
end

local function upload(req)
  local fields, file = {}, nil
  for _, p in ipairs(req.parts or {}) do
    if p.name == "file" then file = p elseif not p.filename then fields[p.name] = p.data end
  end
  if not file then return invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter") end
  local purpose = fields.purpose
  if not purpose then return invalid("Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter") end
  if not PURPOSES[purpose] then
    return invalid("Invalid value for 'purpose': '" .. purpose .. "'. Supported values are: 'assistants', 'batch',"
      .. " 'fine-tune', 'vision', 'user_data' and 'evals'.", "purpose", "invalid_value")
  end
  local seconds
  local anchor, secs = fields["expires_after[anchor]"], fields["expires_after[seconds]"]
  if anchor ~= nil or secs ~= nil then
    if anchor ~= "created_at" then
      return invalid("Invalid value for 'expires_after[anchor]': the supported anchor is 'created_at'.",
        "expires_after.anchor", "invalid_value")
    end
    seconds = tonumber(secs)
    if not seconds or seconds ~= math.floor(seconds) or seconds < 3600 or seconds > 2592000 then
      return invalid("Invalid 'expires_after[seconds]': must be an integer from 3600 (1 hour) to 2592000 (30 days).",
        "expires_after.seconds", "invalid_value")
    end
    seconds = math.floor(seconds)
  elseif purpose == "batch" then
    seconds = 30 * DAY -- "files with purpose=batch expire after 30 days" by default
  end
  local name = file.filename or "file"
  if purpose == "batch" then
    -- "The Batch API only supports .jsonl files up to 200 MB in size"; the
    -- lines themselves are read when a batch is validated.
    if not name:lower():match("%.jsonl$") then
      return invalid("Invalid file format for Batch API. Must be .jsonl", "file", "invalid_file_format")
    end
    local max = tonumber(S.cfg.batch_max_bytes) or 200 * 1000 * 1000
    if #file.data > max then
      return invalid(string.format("File is too large for Batch API: %d bytes, the limit is %d bytes.", #file.data,
        max), "file", "file_too_large")
    end
  end
  local f = F.add(file.data, name, purpose, file.type, seconds)
  return json_answer(200, f.object)
end

local function list(req)
  local q = req.query or {}
  local limit = tonumber(q.limit) or 10000
  if limit ~= math.floor(limit) or limit < 1 or limit > 10000 then
    return invalid("Invalid 'limit': must be an integer from 1 to 10000.", "limit", "invalid_value")
  end
  local asc = q.order == "asc"
  local all = {}
  for i = 1, #order do
    local f = F.lookup(order[asc and i or #order + 1 - i])
    if f and (not q.purpose or f.object.purpose == q.purpose) then all[#all + 1] = f.object end
  end
  local from = 1
  if q.after then
    for i, o in ipairs(all) do if o.id == q.after then from = i + 1 end end
  end
  local data = {}
  for i = from, math.min(#all, from + limit - 1) do data[#data + 1] = all[i] end
  return json_answer(200, { object = "list", data = setmetatable(data, cjson.array_mt),
    first_id = data[1] and data[1].id or cjson.null, last_id = data[#data] and data[#data].id or cjson.null,
    has_more = from + limit - 1 < #all })
end

-- route(req, entry) -> the answer of a /v1/files request, or nil for
-- another path.
function F.route(req, entry)
  local path, method = req.path, req.method
  if path == "/v1/files" then
    if method == "POST" then return upload(req, entry) end
    if method == "GET" then return list(req) end
    return fail(405, "Method not allowed", nil, "method_not_allowed")
  end
  local id, rest = path:match("^/v1/files/([^/]+)(.*)$")
  if not id then return nil end
  if rest == "/content" then
    if method ~= "GET" then return fail(405, "Method not allowed", nil, "method_not_allowed") end
    local f = F.lookup(id)
    if not f then return not_found(id) end
    return { status = 200, body = f.data, headers = { ["Content-Type"] = f.content_type } }
  end
  if rest ~= "" then return nil end
  if method == "GET" then
    local f = F.lookup(id)
    if not f then return not_found(id) end
    return json_answer(200, f.object)
  end
  if method == "DELETE" then
    if not F.lookup(id) then return not_found(id) end
    by_id[id] = nil
    return json_answer(200, { id = id, object = "file", deleted = true })
  end
  return fail(405, "Method not allowed", nil, "method_not_allowed")
end

-- Every live file's object (no content), oldest first: emu:files().
function F.objects()
  local out = {}
  for _, id in ipairs(order) do
    local f = F.lookup(id)
    if f then out[#out + 1] = f.object end
  end
  return out
end

function F.clear()
  by_id, order = {}, {}
end

return F
