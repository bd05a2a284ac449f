-- A batch's numbers as it runs, and its report, from its journals: batch-report.json (per job of this
-- run's share, in manifest order: status, tokens, cost, attempts, request
-- id, error) and failed.jsonl (every job not done, as a manifest that runs
-- from anywhere).
local core = require "imgedit.core"
local cjson = require "cjson"
local files = require "imgedit.files"
local J = require "imgedit.batch_journal"

local M = {}

-- numbers(run [, now]) -> the live numbers, for on_tick and the report.
function M.numbers(self, now)
  local s = self.stats
  now = now or core.now()
  local secs = now - self.t0
  -- Requests a minute over the last minute (or since the start).
  local rq = self.rpm_marks
  rq[#rq + 1] = { now, s.requests }
  while #rq > 2 and now - rq[2][1] >= 60 do table.remove(rq, 1) end
  local span = now - rq[1][1]
  local rpm = span > 0.5 and (s.requests - rq[1][2]) / span * 60 or 0
  local ended = s.done + s.failed
  local left = self.total and math.max(0, self.total - s.before - ended) or nil
  local eta
  if left and ended > 0 and secs > 0 then eta = left / (ended / secs) end
  return { total = self.total, done = s.done, failed = s.failed, before = s.before, running = self.running,
    left = left, requests = s.requests, tokens = s.tokens, usd = s.usd, rpm = rpm, eta = eta, seconds = secs,
    concurrency = self.pace:slots(), throttled = self.pace.throttles, stopping = self.stopping or nil }
end

-- Write batch-report.json and failed.jsonl from the journals: every job of
-- this run's share of the manifest, in manifest order.
function M.write(self, src)
  local known = J.read_journals(self.dir, self.names)
  local list, failed = {}, {}
  local t = { done = 0, failed = 0, not_run = 0 }
  src.each(function(entry)
    if not J.in_shard(self.shard, entry.name) then return end
    local k = known[entry.name]
    local ev = k and k.last
    local rec
    if ev and ev.event == "done" then
      rec = { name = entry.name, status = "done", file = ev.file, files = ev.files, tokens = ev.tokens,
        cost = ev.cost, attempts = ev.attempts, request_id = ev.request_id, seconds = ev.seconds, at = ev.at,
        resumed = ev.resumed, maybe_paid_twice = ev.maybe_paid_twice, batch = ev.batch }
      t.done = t.done + 1
    else
      rec = { name = entry.name, status = ev and "failed" or "not_run" }
      if ev then
        rec.error, rec.attempts, rec.request_id, rec.url, rec.at = ev.error, ev.attempts, ev.request_id, ev.url, ev.at
        rec.maybe_paid_twice, rec.batch = ev.maybe_paid_twice, ev.batch
        t.failed = t.failed + 1
      else
        t.not_run = t.not_run + 1
      end
      -- The job as a manifest line that runs from anywhere.
      local line = {}
      for key, v in pairs(entry) do
        if key:sub(1, 1) ~= "_" and type(v) ~= "function" then line[key] = v end
      end
      local ok_paths = true
      if line.images then
        local abs = {}
        for i, p in ipairs(line.images) do
          if type(p) ~= "string" then ok_paths = false else abs[i] = core.realpath(p) or p end
        end
        line.images = abs
      end
      if type(line.mask) == "string" then line.mask = core.realpath(line.mask) or line.mask end
      if line.mask ~= nil and type(line.mask) ~= "string" then ok_paths = false end
      if ok_paths then failed[#failed + 1] = cjson.encode(line) end
    end
    list[#list + 1] = rec
  end)
  local s = self.stats
  local n = self:numbers()
  local report = {
    dir = self.dir, shard = self.shard and (self.shard.i .. "/" .. self.shard.n) or nil,
    started = J.iso(self.started), seconds = n.seconds, stopped = self.stopped,
    totals = { jobs = #list, done = t.done, failed = t.failed, not_run = t.not_run },
    this_run = { done = s.done, failed = s.failed, skipped_done_before = s.before,
      not_sent_maybe_billed = s.held, in_provider_batches = s.in_batch, requests = s.requests,
      tokens = s.tokens, usd = s.usd, rpm = n.rpm, throttled = self.pace.throttles,
      concurrency = { ceiling = self.pace.ceiling, lowest = math.max(1, math.floor(self.pace.lowest)),
        final = self.pace:slots() } },
    maybe_paid_twice = s.paid_twice,
    jobs = list,
    route = self.route, -- the provider's route (batch_provider.lua)
  }
  local ext = J.suffix(self.shard)
  report.report = files.join(self.dir, "batch-report" .. ext .. ".json")
  report.failed_manifest = files.join(self.dir, "failed" .. ext .. ".jsonl")
  local empty = setmetatable({}, cjson.empty_array_mt or {})
  local enc = {}
  for k, v in pairs(report) do enc[k] = v end
  if #s.paid_twice == 0 then enc.maybe_paid_twice = empty end
  if #list == 0 then enc.jobs = empty end
  local ok, msg = files.own(report.report, cjson.encode(enc) .. "\n")
  if not ok then report.report_error = msg end
  ok, msg = files.own(report.failed_manifest, #failed > 0 and table.concat(failed, "\n") .. "\n" or "")
  if not ok then report.report_error = msg end
  return report
end

return M
