-- The pace of a batch: how many jobs may run at once and when the next may
-- start, from what the service says.
--
--   * AIMD on the number of jobs at once: each success adds 1/limit (one
--     more slot per `limit` successes), a 429 halves it, down to 1, and the
--     429s of requests already in flight at the cut do not cut again.
--   * A 429's Retry-After holds every new launch until it has passed (the
--     service asked the account to wait, not one request).
--   * x-ratelimit-limit-*/remaining-*/reset-* (requests, tokens, images)
--     space the launches once little is left (less than the ceiling's
--     worth of jobs). `reset` is the time until the window is whole again,
--     so it refills at (limit - remaining) / reset a second: launches go at
--     that rate, and with nothing left the next waits for one job's worth.
--     A group whose limit is absent or 0 is no signal, nor is one with
--     nothing remaining and no reset time.
-- The clock is the caller's (core.now() in a batch), so tests can drive it.
local retry = require "imgedit.retry"

local M = {}

-- Launches aim a little under the rate the headers allow: answers arrive
-- late and in bursts, and the window they describe has moved on.
local MARGIN = 1.25

local Pace = {}
Pace.__index = Pace
M.Pace = Pace

-- new(ceiling) -> a pace that starts at the ceiling and never goes above it.
function M.new(ceiling)
  return setmetatable({ ceiling = ceiling, limit = ceiling, lowest = ceiling, hold = 0, next_at = 0, spacing = 0,
    cut_until = -math.huge, throttles = 0 }, Pace)
end

-- slots() -> how many jobs may run at once now.
function Pace:slots() return math.max(1, math.floor(self.limit)) end

-- wait(now) -> seconds until the next launch may start (0: now).
function Pace:wait(now) return math.max(0, self.hold - now, self.next_at - now) end

-- launched(now): a job started; the next waits the spacing.
function Pace:launched(now) self.next_at = now + self.spacing end

-- headers(now, raw, tokens): read an answer's x-ratelimit-* (raw, as the
-- transfer kept them); tokens is what one job is expected to use.
function Pace:headers(now, raw, tokens)
  local rl = retry.ratelimit(raw)
  if not rl then return end
  local spacing = 0
  for what, per_job in pairs { requests = 1, tokens = tokens or 0, images = 1 } do
    local g = rl[what]
    if g and per_job > 0 and g.reset > 0 then
      -- The window refills at (limit - remaining) / reset a second (a
      -- bucket that is whole again after `reset`); near empty, launch at
      -- that rate, and with nothing left wait for one job's worth of it.
      local per = MARGIN * g.reset * per_job / math.max(per_job, g.limit - g.remaining)
      if g.remaining < per_job then
        -- Nothing left: the next waits, and those after it keep the rate.
        self.hold = math.max(self.hold, now + MARGIN * g.reset * per_job / g.limit)
        spacing = math.max(spacing, MARGIN * g.reset * per_job / g.limit)
      elseif g.remaining < 2 * self.ceiling * per_job then
        spacing = math.max(spacing, per)
      end
    end
  end
  self.spacing = spacing
end

-- success(now, raw, tokens): a job was answered.
function Pace:success(now, raw, tokens)
  self.limit = math.min(self.ceiling, self.limit + 1 / self.limit)
  self:headers(now, raw, tokens)
end

-- throttled(now, wait, raw, tokens): the service answered 429 (or asked to
-- wait `wait` seconds).
function Pace:throttled(now, wait, raw, tokens)
  self.throttles = self.throttles + 1
  if now >= self.cut_until then
    self.limit = math.max(1, self.limit / 2)
    self.lowest = math.min(self.lowest, self.limit)
    self.cut_until = now + math.max(wait or 0, 1)
  end
  if wait and wait > 0 then self.hold = math.max(self.hold, now + wait) end
  self:headers(now, raw, tokens)
end

return M
