-- Structured run-time errors: tables with a stable `kind` a program can
-- compare, the service's status/code/param when there is one, and a
-- __tostring for people. Messages are scrubbed of the API key and of the
-- user and password of any url in them.
local text = require "imgedit.text"

local M = {}

M.KINDS = {
  invalid_request = true, moderation = true, auth = true, not_found = true,
  too_large = true, rate_limit = true, server = true, network = true,
  timeout = true, protocol = true, canceled = true, budget = true,
  io = true, callback = true,
}

local Error = {}
Error.__index = Error
M.Error = Error

-- For people, and so for terminals: the service's words arrive, their
-- control characters shown escaped (\x1b), never emitted; a message keeps
-- its newlines. err.message itself stays exactly as the service sent it.
function Error.__tostring(e)
  local function safe(v) return text.safe(v) end
  local extra = {}
  if e.status then extra[#extra + 1] = "status " .. safe(e.status) end
  if e.param then extra[#extra + 1] = "param " .. safe(e.param) end
  if e.code then extra[#extra + 1] = "code " .. safe(e.code) end
  if e.attempts and e.attempts > 1 then extra[#extra + 1] = e.attempts .. " attempts" end
  if e.request_id then extra[#extra + 1] = "request " .. safe(e.request_id) end
  local s = "imgedit: " .. e.kind .. ": " .. text.safe(e.message, true)
  if #extra > 0 then s = s .. " (" .. table.concat(extra, ", ") .. ")" end
  return s
end

-- Replace every occurrence of the secret; plain find, no patterns.
local function scrub(s, secret)
  if type(s) ~= "string" or not secret or #secret < 4 then return s end
  local out, i = {}, 1
  while true do
    local a, b = s:find(secret, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1)
    out[#out + 1] = "[redacted]"
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end
M.scrub = scrub

local RETRYABLE = { rate_limit = true, server = true, network = true, timeout = true }

-- new(kind, message [, fields [, secret]])
function M.new(kind, message, fields, secret)
  assert(M.KINDS[kind], "unknown error kind")
  local e = setmetatable({ kind = kind, message = message, attempts = 1 }, Error)
  for k, v in pairs(fields or {}) do e[k] = v end
  if e.retryable == nil then e.retryable = RETRYABLE[kind] or false end
  for _, k in ipairs { "message", "code", "param", "type", "request_id", "url" } do
    e[k] = scrub(e[k], secret)
  end
  -- A url's credentials are kept out like the key; err.url is left whole,
  -- as it is the service's own address of a paid picture (client:download).
  for _, k in ipairs { "message", "code", "param", "type", "request_id" } do
    e[k] = text.redact(e[k])
  end
  return e
end

function M.is(v) return getmetatable(v) == Error end

-- The kind for an HTTP status, before the body is looked at.
local function kind_of_status(status)
  if status == 401 or status == 403 then return "auth" end
  if status == 404 then return "not_found" end
  if status == 408 then return "timeout" end
  if status == 413 then return "too_large" end
  if status == 429 then return "rate_limit" end
  if status == 409 or status >= 500 then return "server" end
  return "invalid_request"
end

local MODERATION = { moderation_blocked = true, contentFilter = true, content_filter = true,
  content_policy_violation = true }

-- An error for a non-2xx answer; `body` is the decoded JSON or nil.
function M.from_status(status, body, res, secret)
  local kind = kind_of_status(status)
  local info = type(body) == "table" and type(body.error) == "table" and body.error or {}
  local function str(v) return type(v) == "string" and v or nil end
  local message = str(info.message)
  if not message then
    local ct = res and res.content_type or "no content type"
    message = string.format("HTTP %d from the service (%s answer)", status, ct:match("^[^;]*"))
  end
  local code, typ = str(info.code), str(info.type)
  -- OpenAI's safety refusal, and Azure's (contentFilter, with an inner
  -- error ResponsibleAIPolicyViolation; its docs spell it inner_error).
  local inner = type(info.inner_error) == "table" and info.inner_error
    or type(info.innererror) == "table" and info.innererror or {}
  if MODERATION[code] or typ == "image_generation_user_error" or inner.code == "ResponsibleAIPolicyViolation" then
    kind = "moderation"
  end
  return M.new(kind, message, {
    status = status, code = code, param = str(info.param), type = typ,
    request_id = res and res.request_id,
    retryable = status == 408 or status == 409 or status == 429 or status >= 500,
  }, secret)
end

return M
