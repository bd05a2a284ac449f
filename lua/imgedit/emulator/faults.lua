-- Faults that tests inject into the emulator: one per request, in arrival
-- order, for the API and for its CDN apart. A fault either replaces the
-- service's answer (a status, a gateway's page, a closed connection), bends
-- a normal one (cut short, broken JSON, a stalled or cut stream), or strikes
-- while the request is still arriving.
--
-- Batch faults ({batch = ...}) have a queue of their own and apply to the
-- next batch created (batches.lua), one each:
--   {batch = "fail"}                 its validation fails (status failed, errors.data)
--   {batch = "expire", finished = N} it expires once N lines ran: those in the
--                                    output, the rest in the error file as batch_expired
--   {batch = "drop", lines = K}      K finished lines are in neither file while
--                                    request_counts count them done (a provider's bug)
--   {batch = "slow", seconds = S}    it takes S seconds instead of batch_seconds
local cjson = require "cjson"

local F = {}

local api_q, cdn_q, batch_q = {}, {}, {}
local BATCH = { fail = true, expire = true, drop = true, slow = true }

local REASONS = {
  [408] = "Request Timeout", [413] = "Request Entity Too Large", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

-- JSON numbers arrive as floats on 5.3+; a status of 503 must read "503".
local function whole_numbers(t)
  for k, v in pairs(t) do
    if type(v) == "number" and v == math.floor(v) and math.abs(v) < 2 ^ 53 and math.tointeger then
      t[k] = math.tointeger(v)
    elseif type(v) == "table" then
      whole_numbers(v)
    end
  end
  return t
end

-- inject(json): {cdn = true, ...} is a fault of the url host (a status or a
-- drop), for downloads; anything else is the API's.
function F.inject(s)
  local f = whole_numbers(cjson.decode(s))
  if f.batch ~= nil and not BATCH[f.batch] then
    error("unknown batch fault '" .. tostring(f.batch) .. "' (fail, expire, drop or slow)", 0)
  end
  local q = f.batch and batch_q or f.cdn and cdn_q or api_q
  q[#q + 1] = f
end

function F.clear()
  api_q, cdn_q, batch_q = {}, {}, {}
end

function F.take_batch() return table.remove(batch_q, 1) end

function F.take() return table.remove(api_q, 1) end
function F.take_cdn() return table.remove(cdn_q, 1) end

-- The next fault if it strikes before the body is read (drop_early, or
-- drop_upload = N: after N bytes of it, or pause_upload = seconds: stop
-- reading it for that long once pause_at bytes arrived); it is used up.
function F.take_early()
  local f = api_q[1]
  if f and (f.drop_early or f.drop_upload or f.pause_upload) then return table.remove(api_q, 1) end
end

local function request_id(entry) return "req_emu_" .. entry.id end

-- The answer that replaces the service's, or nil for a fault that bends it.
function F.answer(f, entry)
  -- The whole request was read: the service has it (and bills it), but the
  -- connection closes (drop) or resets (reset) before any answer.
  if f.drop or f.reset then return { drop = true, reset = f.reset, delay = f.delay or f.latency } end
  if f.html then
    -- A gateway's own page, as nginx or a CDN would send it.
    local status = f.status or 502
    local title = status .. " " .. (REASONS[status] or "Error")
    entry.status = status
    local h = { ["Content-Type"] = "text/html", ["x-request-id"] = request_id(entry) }
    if f.retry_after then h["Retry-After"] = tostring(f.retry_after) end
    return { status = status, delay = f.delay, headers = h,
      body = "<html><head><title>" .. title .. "</title></head><body><center><h1>" .. title
        .. "</h1></center><hr><center>nginx</center></body></html>" }
  end
  if f.header_flood then
    local h = { ["Content-Type"] = "application/json" }
    for i = 1, f.header_flood do h["X-Flood-" .. i] = string.rep("x", 100) end
    entry.status = 200
    return { status = 200, headers = h, body = '{"data":[]}' }
  end
  if f.status then
    local h = { ["Content-Type"] = f.content_type or "application/json", ["x-request-id"] = request_id(entry) }
    if f.retry_after then h["Retry-After"] = tostring(f.retry_after) end
    if f.retry_after_ms then h["retry-after-ms"] = tostring(f.retry_after_ms) end
    for k, v in pairs(f.headers or {}) do h[k] = tostring(v) end
    local body = f.body or cjson.encode({ error = {
      message = f.message or ("injected status " .. f.status),
      type = f.type or (f.status >= 500 and "server_error" or "invalid_request_error"),
      param = cjson.null, code = f.code or cjson.null } })
    entry.status = f.status
    return { status = f.status, body = body, headers = h, delay = f.delay }
  end
end

-- Bend a normal answer a; sse(event, t) encodes a stream's event.
function F.bend(f, a, sse)
  if f.url and a.status == 200 then
    local t = cjson.decode(a.body)
    t.data[1] = { url = f.url }
    a.body = cjson.encode(t)
  end
  if f.bad_json then a.body = a.body:sub(1, math.floor(#a.body / 2)) .. "<<not json" end
  if f.bad_base64 and a.status == 200 then
    a.body = a.body:gsub('"b64_json":"([^"]*)"', function(s) return '"b64_json":"' .. s:sub(1, 10) .. '!!!' .. s:sub(11) .. '"' end)
  end
  if a.events then
    if f.cut_after then a.cut_after = f.cut_after end
    if f.stream_error then
      a.events[#a.events] = sse("error", { type = "error", error = { type = "image_generation_server_error",
        code = f.code or "server_error", message = f.message or "the image could not be finished" } })
    end
    if f.no_completed then a.events[#a.events] = nil end
  end
  if f.truncate then a.truncate = f.truncate end
  -- The whole JSON, then the connection breaks before the declared end.
  if f.whole_then_cut and not a.events then
    a.truncate = #a.body
    a.body = a.body .. string.rep(" ", 64)
  end
  -- The headers at once, then the model thinks before the body (gateways
  -- that flush their headers early).
  if f.think and not a.events then a.stall, a.stall_at = f.think, 0 end
  -- A stream that stays open after its completed event, then breaks.
  if f.hang_after_completed and a.events then a.hang_end = f.hang_after_completed end
  if f.stall then a.stall, a.stall_at = f.stall, f.stall_at or 64 end
  if f.oversize then a.body = a.body .. string.rep(" ", f.oversize) end
  a.delay = f.delay or f.latency
end

return F
