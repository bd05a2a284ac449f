-- Retry policy: which failures are worth another try, and how long to wait.
local compat = require "imgedit.compat"
local M = {}

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10,
  Nov = 11, Dec = 12 }

-- Days since 1970-01-01 for a civil date (proleptic Gregorian).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = compat.idiv(y >= 0 and y or y - 399, 400)
  local yoe = y - era * 400
  local doy = compat.idiv(153 * (m + (m > 2 and -3 or 9)) + 2, 5) + d - 1
  local doe = yoe * 365 + compat.idiv(yoe, 4) - compat.idiv(yoe, 100) + doy
  return era * 146097 + doe - 719468
end

-- An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") as seconds since the epoch.
function M.http_date(s)
  local d, mon, y, hh, mm, ss = tostring(s):match("^%a+,%s+(%d+)%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s+GMT$")
  if not d or not MONTHS[mon] then return nil end
  return days_from_civil(tonumber(y), MONTHS[mon], tonumber(d)) * 86400 + tonumber(hh) * 3600
    + tonumber(mm) * 60 + tonumber(ss)
end

-- The server's hint in seconds: retry-after-ms first, then Retry-After as
-- seconds or as an HTTP date. nil when absent or unreadable.
function M.hint(res, now_epoch)
  local ms = tonumber(res.retry_after_ms)
  if ms and ms >= 0 then return ms / 1000 end
  local ra = res.retry_after
  if not ra then return nil end
  local secs = tonumber(ra)
  if secs and secs >= 0 then return secs end
  local at = M.http_date(ra)
  if at then return math.max(0, at - (now_epoch or os.time())) end
  return nil
end

-- A duration as OpenAI's x-ratelimit-reset-* give it ("1s", "6m0s",
-- "20ms", "1h2m3.5s") or a bare number of seconds, in seconds; nil if unreadable.
function M.duration(s)
  if type(s) ~= "string" then return nil end
  local n = tonumber(s)
  if n then return n >= 0 and n or nil end
  local total, rest = 0, s
  if rest == "" then return nil end
  while rest ~= "" do
    local num, unit, tail = rest:match("^(%d+%.?%d*)(%a+)(.*)$")
    local scale = ({ h = 3600, m = 60, s = 1, ms = 1e-3, us = 1e-6, ns = 1e-9 })[unit]
    if not num or not scale then return nil end
    total, rest = total + tonumber(num) * scale, tail
  end
  return total
end

-- ratelimit(raw) -> {requests = {limit=, remaining=, reset=}, tokens = ..., images = ...}
-- from the transfer's x-ratelimit-* headers, or nil. A group whose limit
-- is absent or 0 says nothing (gateways that copy the headers send zeros),
-- nor does one without a readable remaining count.
function M.ratelimit(raw)
  if type(raw) ~= "table" then return nil end
  local out
  for _, what in ipairs { "requests", "tokens", "images" } do
    local limit, remaining = tonumber(raw["limit-" .. what]), tonumber(raw["remaining-" .. what])
    if limit and limit > 0 and remaining and remaining >= 0 then
      out = out or {}
      out[what] = { limit = limit, remaining = remaining, reset = M.duration(raw["reset-" .. what]) or 0 }
    end
  end
  return out
end

-- Exponential backoff with jitter: min(base * 2^n, cap), less up to 25 %.
function M.backoff(n, base, cap, rand)
  local w = math.min((base or 0.5) * 2 ^ n, cap or 8)
  return w * (1 - 0.25 * (rand or math.random)())
end

-- wait(err, res, o, tries) -> seconds to wait before the next try, or nil
-- when the failure is final. `tries` counts the attempts made so far; `o`
-- holds the job's options. It may turn `err` into a rate_limit error that
-- names the server's wait (err.retry_after) when that wait is too long.
--
-- The order of the rules:
--   1. max_retries bounds everything.
--   2. The server's x-should-retry: true or false overrides the rest.
--   3. A malformed 2xx answer (protocol) is retried only with retry_protocol.
--   4. A request that may have been billed (sent in full, then no answer:
--      a timeout, a reset, a close) only with retry_unanswered.
--   5. Otherwise err.retryable decides (408, 409, 429, 5xx, connections
--      lost before the body was sent).
--   6. A server hint longer than max_retry_after fails at once.
function M.wait(err, res, o, tries)
  local hint = res and M.hint(res)
  if hint then err.retry_after = hint end
  if tries > o.max_retries then return nil end
  local says = res and type(res.should_retry) == "string" and res.should_retry:lower()
  if says == "false" then
    err.retryable = false
    return nil
  end
  if says ~= "true" then
    if err.kind == "protocol" then
      if not o.retry_protocol then return nil end
    elseif err.maybe_billed then
      if not o.retry_unanswered then return nil end
    elseif not err.retryable then
      return nil
    end
  end
  if hint then
    if hint > o.max_retry_after then
      err.kind, err.retryable = "rate_limit", true
      err.message = string.format("%s (the service asks to wait %.0f s, more than max_retry_after = %g s)",
        err.message, hint, o.max_retry_after)
      return nil
    end
    return hint
  end
  return M.backoff(tries - 1, o.retry_base, o.retry_cap)
end

return M
