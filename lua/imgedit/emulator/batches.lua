-- The emulated Batch API (OpenAI's /v1/batches) for the image endpoints: a
-- batch reads its .jsonl input from the Files store (files.lua), is
-- validated, then its lines run through the very edits and generations code
-- of a direct request (endpoints.lua: same checks, picture and usage), each
-- once, and its output and error files are written when it ends. Time is
-- the emulator's clock: batch_seconds from creation to completion, the
-- lines finishing evenly over it, run lazily whenever the batch (or the
-- list) is read. Shapes from the OpenAPI spec (Batch, BatchError,
-- ListBatchesResponse, BatchRequestOutput) and the Batch guide.
local cjson = require "cjson"
local rules = require "imgedit.emulator.rules"
local faults = require "imgedit.emulator.faults"
local files = require "imgedit.emulator.files"
local endpoints = require "imgedit.emulator.endpoints"
local S = require "imgedit.emulator.state"

local B = {}

local json_answer, fail, invalid = rules.json_answer, rules.fail, rules.invalid

-- What the emulator runs, and the endpoints the service takes that it does not play.
local RUNS = { ["/v1/images/edits"] = endpoints.edits, ["/v1/images/generations"] = endpoints.generations }
local OTHER = { ["/v1/responses"] = true, ["/v1/chat/completions"] = true, ["/v1/embeddings"] = true,
  ["/v1/completions"] = true, ["/v1/moderations"] = true, ["/v1/videos"] = true }
local DAY = 86400

local by_id, order = {}, {}
local totals = { run = 0, billed = 0, usage = { input_tokens = 0, output_tokens = 0, total_tokens = 0 } }

local function null_or(v) if v == nil then return cjson.null end return v end

local function usage_zero()
  return { input_tokens = 0, input_tokens_details = { cached_tokens = 0 }, output_tokens = 0,
    output_tokens_details = { reasoning_tokens = 0 }, total_tokens = 0 }
end

-- ---- creation ----

local function create(req)
  local ok, t = pcall(cjson.decode, req.body or "")
  if not ok or type(t) ~= "table" then
    return invalid("We could not parse the JSON body of your request.", nil, "invalid_json")
  end
  for _, k in ipairs { "input_file_id", "endpoint", "completion_window" } do
    if type(t[k]) ~= "string" then
      return invalid("Missing required parameter: '" .. k .. "'.", k, "missing_required_parameter")
    end
  end
  if not RUNS[t.endpoint] then
    if OTHER[t.endpoint] then
      return invalid("The emulator plays the image endpoints only: '" .. t.endpoint .. "' is not run here.",
        "endpoint", "unsupported_value")
    end
    return invalid("Invalid value for 'endpoint': '" .. t.endpoint .. "'.", "endpoint", "invalid_value")
  end
  if t.completion_window ~= "24h" then
    return invalid("Invalid value for 'completion_window': '" .. t.completion_window
      .. "'. Supported values are: '24h'.", "completion_window", "invalid_value")
  end
  local metadata = t.metadata
  if metadata == cjson.null then metadata = nil end
  if metadata ~= nil then
    if type(metadata) ~= "table" then
      return invalid("Invalid type for 'metadata': expected an object.", "metadata", "invalid_type")
    end
    local n = 0
    for k, v in pairs(metadata) do
      n = n + 1
      if type(k) ~= "string" or #k > 64 then
        return invalid("Invalid 'metadata': keys must be strings of at most 64 characters.", "metadata",
          "invalid_value")
      end
      if type(v) ~= "string" or #v > 512 then
        return invalid("Invalid 'metadata': values must be strings of at most 512 characters.", "metadata",
          "invalid_value")
      end
    end
    if n > 16 then
      return invalid(string.format("Invalid 'metadata': too many properties. Expected at most 16, got %d.", n),
        "metadata", "object_above_max_properties")
    end
  end
  local input = files.lookup(t.input_file_id)
  if not input then return fail(404, "No such File object: " .. t.input_file_id, "input_file_id") end
  if input.object.purpose ~= "batch" then
    return invalid("The input file must be uploaded with purpose 'batch'.", "input_file_id", "invalid_value")
  end
  local fault = faults.take_batch()
  local now = S.time()
  local b = {
    obj = { id = files.new_id("batch_"), object = "batch", endpoint = t.endpoint, model = cjson.null,
      errors = cjson.null, input_file_id = t.input_file_id, completion_window = "24h", status = "validating",
      output_file_id = cjson.null, error_file_id = cjson.null, created_at = now, in_progress_at = cjson.null,
      expires_at = now + DAY, finalizing_at = cjson.null, completed_at = cjson.null, failed_at = cjson.null,
      expired_at = cjson.null, cancelling_at = cjson.null, cancelled_at = cjson.null,
      request_counts = { total = 0, completed = 0, failed = 0 }, usage = usage_zero(),
      metadata = metadata or cjson.null },
    t0 = S.now(), fault = fault or {}, done = 0, results = {}, lines = {},
  }
  b.duration = (b.fault.batch == "slow" and tonumber(b.fault.seconds)) or tonumber(S.cfg.batch_seconds) or 2
  by_id[b.obj.id] = b
  order[#order + 1] = b.obj.id
  return json_answer(200, b.obj)
end

-- ---- validation: the input file's lines (the Batch guide's rules) ----

local function validate(b)
  local errs = {}
  local function err(code, message, line, param)
    if #errs < 100 then
      errs[#errs + 1] = { code = code, message = message, line = null_or(line), param = null_or(param) }
    end
  end
  local input = files.lookup(b.obj.input_file_id)
  if b.fault.batch == "fail" then
    err("invalid_request", "The batch failed validation (an injected fault).")
  elseif not input then
    err("file_not_found", "The input file " .. b.obj.input_file_id .. " was not found (deleted or expired).")
  else
    local data = input.data
    local max_bytes = tonumber(S.cfg.batch_max_bytes) or 200 * 1000 * 1000
    local max_lines = tonumber(S.cfg.batch_max_lines) or 50000
    if #data > max_bytes then
      err("file_too_large", string.format("The input file is %d bytes; the limit is %d bytes (batch_max_bytes).",
        #data, max_bytes))
    end
    local seen, model, n, count = {}, nil, 0, 0
    for text in (data:sub(-1) == "\n" and data or data .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      local ok, t = pcall(cjson.decode, text)
      if text:match("^%s*$") then
        count = count - 1 -- a blank line (the last newline's) is no request
      elseif not ok or type(t) ~= "table" or t[1] ~= nil then
        err("invalid_json_line", "This line is not parseable as valid JSON.", n)
      elseif type(t.custom_id) ~= "string" or t.custom_id == "" then
        err("missing_required_parameter", "Missing required parameter: 'custom_id'.", n, "custom_id")
      elseif seen[t.custom_id] then
        err("duplicate_custom_id", string.format("The custom_id '%s' is used on lines %d and %d; each request"
          .. " must have a unique custom_id.", t.custom_id, seen[t.custom_id], n), n, "custom_id")
      elseif t.method ~= "POST" then
        err("invalid_method", "Invalid 'method': only POST is supported.", n, "method")
      elseif t.url ~= b.obj.endpoint then
        err("url_mismatch", string.format("The url '%s' does not match the batch's endpoint '%s'.", tostring(t.url),
          b.obj.endpoint), n, "url")
      elseif type(t.body) ~= "table" then
        err("missing_required_parameter", "Missing required parameter: 'body'.", n, "body")
      elseif model and t.body.model ~= model then
        err("model_mismatch", "Every request of a batch must use the same model.", n, "body.model")
      else
        seen[t.custom_id] = n
        model = model or t.body.model
        b.lines[#b.lines + 1] = { custom_id = t.custom_id, url = t.url, body = t.body }
      end
    end
    count = count + n
    if count == 0 then err("empty_file", "The input file is empty.") end
    if count > max_lines then
      err("too_many_tasks", string.format("The input file has %d requests; the limit is %d requests per batch"
        .. " (batch_max_lines).", count, max_lines))
    end
    b.model = model
  end
  if #errs > 0 then
    b.lines = {}
    b.obj.status, b.obj.failed_at = "failed", S.time()
    b.obj.errors = { object = "list", data = errs }
    return false
  end
  b.obj.status, b.obj.in_progress_at = "in_progress", S.time()
  b.obj.model = null_or(b.model)
  b.obj.request_counts.total = #b.lines
  return true
end

-- ---- running a line: the same code as a direct request ----

local function add_usage(into, u)
  if type(u) ~= "table" then return end
  into.input_tokens = into.input_tokens + (tonumber(u.input_tokens) or 0)
  into.output_tokens = into.output_tokens + (tonumber(u.output_tokens) or 0)
  into.total_tokens = into.total_tokens + (tonumber(u.total_tokens) or 0)
end

local function run_line(b, i)
  local line = b.lines[i]
  -- the log's entry, as a direct request's, told apart by listener and batch_line
  local entry = { id = #S.log + 1, listener = "batch", batch_line = true, batch = b.obj.id,
    custom_id = line.custom_id, method = "POST", path = line.url, content_type = "application/json",
    fields = {}, field_order = {}, files = {}, json = line.body }
  -- the body's plain fields, as a direct JSON request's entry has them
  for k, v in pairs(type(line.body) == "table" and line.body or {}) do
    if type(v) ~= "table" then entry.fields[k] = tostring(v) end
  end
  S.log[#S.log + 1] = entry
  local a
  if line.body.stream == true then
    a = invalid("Streaming is not supported in batches.", "stream", "unsupported_value")
  else
    local req = { listener = "batch", method = "POST", path = line.url, content_type = "application/json",
      body = cjson.encode(line.body), parts = {}, query = {} }
    local ok, r = pcall(RUNS[line.url], req, entry)
    a = ok and r or fail(500, "The server had an error while processing your request.", nil, nil, "server_error")
    if a.events then a = invalid("Streaming is not supported in batches.", "stream", "unsupported_value") end
  end
  entry.status = a.status
  local r = { custom_id = line.custom_id, status = a.status, body = a.body, id = files.new_id("batch_req_"),
    request_id = files.new_id("req_") }
  b.results[#b.results + 1] = r
  b.done = i
  totals.run = totals.run + 1
  if a.status == 200 then
    b.obj.request_counts.completed = b.obj.request_counts.completed + 1
    -- billed, at half the direct price
    local ok, t = pcall(cjson.decode, a.body)
    local u = ok and type(t) == "table" and t.usage or nil
    entry.usage, entry.billed = u, "batch"
    totals.billed = totals.billed + 1
    add_usage(totals.usage, u)
    add_usage(b.obj.usage, u)
  else
    b.obj.request_counts.failed = b.obj.request_counts.failed + 1
  end
end

-- ---- the end: output and error files ----

local function line_json(r)
  -- the body exactly as a direct request's answer carries it
  return '{"id":' .. cjson.encode(r.id) .. ',"custom_id":' .. cjson.encode(r.custom_id)
    .. ',"response":{"status_code":' .. math.floor(r.status) .. ',"request_id":' .. cjson.encode(r.request_id)
    .. ',"body":' .. r.body .. '},"error":null}'
end

local function finish(b, status)
  local out, errs = {}, {}
  local drop = b.fault.batch == "drop" and tonumber(b.fault.lines) or 0
  for _, r in ipairs(b.results) do
    if r.status == 200 then
      -- {batch = "drop"}: the provider loses finished lines, counted as done
      if drop > 0 then drop = drop - 1 else out[#out + 1] = line_json(r) end
    else
      errs[#errs + 1] = line_json(r)
    end
  end
  -- lines that never ran: in the error file, with the reason and no response
  local code = status == "expired" and "batch_expired" or "batch_cancelled"
  local message = status == "expired" and "This request could not be executed before the completion window expired."
    or "This request was not executed because the batch was cancelled."
  for i = b.done + 1, #b.lines do
    errs[#errs + 1] = cjson.encode { id = files.new_id("batch_req_"), custom_id = b.lines[i].custom_id,
      response = cjson.null, error = { code = code, message = message } }
  end
  -- order is not promised: written the other way round from the input
  local function reversed(t)
    local r = {}
    for i = #t, 1, -1 do r[#r + 1] = t[i] end
    return table.concat(r, "\n") .. "\n"
  end
  -- the files exist only when they have lines
  if #out > 0 then
    b.obj.output_file_id = files.add(reversed(out), b.obj.id .. "_output.jsonl", "batch_output",
      "application/jsonl").object.id
  end
  if #errs > 0 then
    b.obj.error_file_id = files.add(reversed(errs), b.obj.id .. "_error.jsonl", "batch_output",
      "application/jsonl").object.id
  end
  b.lines = {} -- the requests are done with; their pictures stay in the output file
  b.obj.status = status
  b.obj[status .. "_at"] = S.time()
end

-- advance(b): run the lines now due, and move the batch along its life.
local function advance(b)
  local st = b.obj.status
  if st == "validating" then
    if not validate(b) then return end
    st = b.obj.status
  end
  local now = S.now()
  local n, d = #b.lines, b.duration
  if st == "in_progress" then
    while b.done < n do
      if now < b.t0 + d * (b.done + 1) / (n + 1) then break end
      if b.fault.batch == "expire" and b.done >= (tonumber(b.fault.finished) or 0) then
        return finish(b, "expired")
      end
      run_line(b, b.done + 1)
    end
    if b.done == n then
      b.obj.status, b.obj.finalizing_at = "finalizing", S.time()
      st = "finalizing"
    end
  end
  if st == "finalizing" and now >= b.t0 + d then return finish(b, "completed") end
  if st == "cancelling" and now > b.cancel_t then return finish(b, "cancelled") end
end

-- ---- the routes ----

local function not_found(id) return fail(404, "No such batch: " .. tostring(id), "batch_id") end

local function list(req)
  local q = req.query or {}
  local limit = tonumber(q.limit or 20)
  if not limit or limit ~= math.floor(limit) or limit < 1 or limit > 100 then
    return invalid("Invalid 'limit': must be an integer from 1 to 100.", "limit", "invalid_value")
  end
  local from = #order
  if q.after then
    for i = #order, 1, -1 do if order[i] == q.after then from = i - 1 end end
  end
  local data = {}
  for i = from, 1, -1 do
    if #data == limit then break end
    local b = by_id[order[i]]
    advance(b)
    data[#data + 1] = b.obj
  end
  local last = data[#data]
  local has_more = false
  if last then
    for i = 1, #order do if order[i] == last.id then has_more = i > 1 end end
  end
  return json_answer(200, { object = "list", data = setmetatable(data, cjson.array_mt),
    first_id = data[1] and data[1].id or cjson.null, last_id = last and last.id or cjson.null, has_more = has_more })
end

-- route(req, entry) -> the answer of a /v1/batches request, or nil.
function B.route(req)
  local path, method = req.path, req.method
  if path == "/v1/batches" then
    if method == "POST" then return create(req) end
    if method == "GET" then return list(req) end
    return fail(405, "Method not allowed", nil, "method_not_allowed")
  end
  local id, rest = path:match("^/v1/batches/([^/]+)(.*)$")
  if not id then return nil end
  local b = by_id[id]
  if rest == "" then
    if method ~= "GET" then return fail(405, "Method not allowed", nil, "method_not_allowed") end
    if not b then return not_found(id) end
    advance(b)
    return json_answer(200, b.obj)
  end
  if rest == "/cancel" then
    if method ~= "POST" then return fail(405, "Method not allowed", nil, "method_not_allowed") end
    if not b then return not_found(id) end
    advance(b)
    local st = b.obj.status
    if st ~= "validating" and st ~= "in_progress" and st ~= "finalizing" then
      return fail(409, "Cannot cancel a batch with status '" .. st .. "'.", nil, "batch_not_cancellable")
    end
    -- cancelling now, cancelled at the next read: what ran stays in the output
    b.obj.status, b.obj.cancelling_at, b.cancel_t = "cancelling", S.time(), S.now()
    if st == "validating" then b.lines = {} end
    return json_answer(200, b.obj)
  end
end

-- Every batch, oldest first, each advanced to now: emu:batches().
function B.objects()
  local out = {}
  for _, id in ipairs(order) do
    advance(by_id[id])
    out[#out + 1] = by_id[id].obj
  end
  return out
end

-- The lines run and billed (at half the direct price), for stats().
function B.stats(t)
  t.batch_lines_run = totals.run
  t.batch_lines_billed = totals.billed
  t.batch_usage = { input_tokens = totals.usage.input_tokens, output_tokens = totals.usage.output_tokens,
    total_tokens = totals.usage.total_tokens }
  t.batch_price = 0.5
  return t
end

function B.clear()
  by_id, order = {}, {}
  totals = { run = 0, billed = 0, usage = { input_tokens = 0, output_tokens = 0, total_tokens = 0 } }
end

return B
