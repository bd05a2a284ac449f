-- The money soak (issue 27): seeded random mixes of edits and generations,
-- streams with partials, decode = "rgba" or not, edits with a mask (its
-- figures or preserve's composite made on the decoder threads), driven by
-- poll(0) frame loops (tight, and with frames), poll(t), wait, and an event
-- loop waiting on client:fd() and client:timeout() (issue 31: a wake-up it
-- missed is a violation); model times on both
-- sides of idle_timeout and timeout; the emulator's faults (5xx, 429,
-- resets and closes before and after the whole upload, headers then a
-- thinking model, stalls, cut streams, streams held open after their
-- completed event, whole answers whose connection then breaks, a reader
-- that stops reading the upload a while); cancels, closes and dropped
-- clients at random moments; an input file rewritten in place or replaced
-- while its uploads are queued or under way (issue 33). Then the invariants:
--   - every request the emulator answered in full (a 200, every byte sent)
--     reaches its caller, as an Image, err.image or err.url, unless the
--     caller let the job go (cancel, close, a dropped client);
--   - no job's request reached the service twice (a 200, or a connection
--     closed after the whole upload) without the caller asking;
--   - no job is left running;
--   - every request that reached the service carries the bytes its job
--     checked when it was submitted.
-- Used by tests/soak_spec.lua (bounded, in make test) and `make soak`
-- (longer, under ASan and ThreadSanitizer builds).
local core = require "imgedit.core"
local imgedit = require "imgedit"
local H = require "helpers"

local S = {}

-- Faults injected in arrival order; r(n) draws 1..n. Times are drawn
-- well clear of the round's limits (under half, or over twice): an answer
-- that comes as the client gives up is a race of the test, not a promise
-- kept or broken (its last bytes reach the server's kernel either way).
-- idle and total are the round's idle_timeout and timeout.
local function clear_of(r, limit) return r(2) == 1 and limit * r(4) / 10 or limit * (2 + r(5) / 10) end
-- The model's time: past idle_timeout yet well within timeout (which it
-- must survive) when the round allows, else clear of the timeout.
local function model_time(r, idle, total)
  if r(2) == 1 and 2.5 * idle < 0.4 * total then return 2.5 * idle end
  return clear_of(r, total)
end
local FAULTS = {
  function(r) return { status = ({ 500, 502, 503 })[r(3)] } end,
  function() return { status = 429, retry_after_ms = 30 } end,
  function() return { drop = true } end,
  function() return { reset = true } end,
  function() return { drop_early = true } end,
  function(r) return { drop_upload = 100 + r(3000) } end,
  function(r, idle) return { stall = clear_of(r, idle), stall_at = 60 + r(200) } end,
  function(r, idle, total) return { think = model_time(r, idle, total) } end,
  function(r, idle, total) return { latency = model_time(r, idle, total) } end,
  function(r) return { cut_after = r(2) } end,
  function(r, _, total) return { hang_after_completed = clear_of(r, total) } end,
  function() return { whole_then_cut = true } end,
  function(r) return { truncate = r(400) } end,
  function(r, idle) return { pause_upload = clear_of(r, idle), pause_at = r(2) == 1 and 0 or r(60000) } end,
}

-- An input that changes: a PNG header, then `fill` over 2 MB (more than the
-- loopback buffers hold while a reader pauses). Rewritten in place or
-- replaced by a rename.
local SHIFTY = 2 * 2 ^ 20
local function shifty_bytes(fill) return H.png(48, 48) .. string.rep(string.char(fill % 256), SHIFTY) end
local function rewrite(path, fill, in_place)
  local bytes = shifty_bytes(fill)
  if in_place then
    local f = assert(io.open(path, "r+b"))
    f:write(bytes)
    f:close()
  else
    H.write(path .. ".new", bytes)
    assert(os.rename(path .. ".new", path))
  end
  return core.sha256(bytes)
end

local PATTERNS = { "tight", "frames", "poll", "wait", "fd" }
local have_cq = pcall(require, "cqueues")
local readable = H.readable

-- What a poll(0) handed over, seen from Lua: jobs done, partials taken.
local function progress(mine)
  local k = 0
  for _, m in ipairs(mine) do k = k + (m.job:done() and 1000 or 0) + (m.rec.partials or 0) end
  return k
end

-- ---- the provider's batch route (issue 34) ----

-- The steps a batch round may crash at (an error from the test's hook,
-- where a kill -9 would stop the process; the journals are synced first).
local STEPS = { "uploaded", "lines", "input", "creating", "sent", "created", "polled", "wrote" }
local BATCH_FAULTS = {
  function(r, k) return { batch = "expire", finished = r(k) - 1 } end,
  function() return { batch = "drop", lines = 1 } end,
  function() return { batch = "slow", seconds = 0.4 * H.SLOW } end,
  function() return { batch = "fail" } end,
}

-- A folder's files, then the folder (no shell: see above).
local function rmtree(dir)
  for _, e in ipairs(core.listdir(dir) or {}) do os.remove(dir .. "/" .. e.name) end
  os.remove(dir)
end

-- batch_round(r, emu, pic, seed, n, violations, stats): a batch of edits and
-- generations through the provider's route, under the emulator's random
-- 5xx and resets, a batch fault, a small max_lines, and a crash at a
-- random step; re-run until it ends. Then: no line run twice, no line run
-- that the caller does not get (a picture, or a failure naming it maybe
-- billed when the service dropped it), nothing left pending.
local function batch_round(r, emu, pic, seed, n, violations, stats)
  local dir = os.tmpname()
  os.remove(dir)
  assert(core.mkdir_p(dir))
  local jobs, by_prompt = {}, {}
  for i = 1, 2 + r(8) do
    local prompt = string.format("soak-batch-%d-%d-%d", seed, n, i)
    jobs[i] = { name = "b" .. i, prompt = prompt, images = r(3) > 1 and { pic } or nil }
    by_prompt[prompt] = jobs[i]
  end
  local fault = r(5)
  fault = BATCH_FAULTS[fault] and BATCH_FAULTS[fault](r, #jobs) or nil
  if fault then emu:inject(fault) end
  emu:configure { batch_seconds = r(3) * 0.1 * H.SLOW }
  local crash_at, crashed = r(2) == 1 and STEPS[r(#STEPS)] or nil, false
  local c = imgedit.new { base_url = emu.url, api_key = emu.key, provider = "compatible", model = "gpt-image-2-all",
    retry_base = 0.01, max_concurrency = 1 + r(4), on_warning = function() end }
  local report, runs = nil, 0
  local deadline = core.now() + 30 * H.SLOW
  while core.now() < deadline do
    runs = runs + 1
    local ok, rep = pcall(imgedit.batch, { client = c, jobs = jobs, dir = dir, route = "provider",
      poll_interval = 0.02, max_lines = r(2) == 1 and 1 + r(3) or nil, uploads = dir .. "/uploads.jsonl",
      defaults = { size = "64x64", response_format = "b64_json" },
      _on_step = function(step)
        if step == crash_at and not crashed then
          crashed = true
          error("soak: a crash at " .. step, 0)
        end
      end })
    if ok and rep and not rep.stopped and #rep.route.pending == 0 then
      report = rep
      break
    end
  end
  c:close()
  stats.batch_rounds, stats.batch_runs = (stats.batch_rounds or 0) + 1, (stats.batch_runs or 0) + runs
  if not report then
    violations[#violations + 1] = string.format("batch round %d: not ended after %d runs", n, runs)
    rmtree(dir)
    return
  end
  local status = {}
  for _, j in ipairs(report.jobs) do status[j.name] = j end
  local ran = {}
  for _, e in ipairs(emu:requests()) do
    local job = by_prompt[e.fields and e.fields.prompt or ""]
    if job and e.listener == "api" and e.path:match("^/v1/images/") then
      violations[#violations + 1] = job.prompt .. ": went the direct route"
    elseif job and e.listener == "batch" and e.billed then
      ran[job] = (ran[job] or 0) + 1
      stats.batch_lines = (stats.batch_lines or 0) + 1
    end
  end
  for _, job in ipairs(jobs) do
    local j, k = status[job.name], ran[job] or 0
    if k > 1 then violations[#violations + 1] = string.format("%s: run in %d batch lines", job.prompt, k) end
    if not j or (j.status ~= "done" and j.status ~= "failed") then
      violations[#violations + 1] = job.prompt .. ": left " .. tostring(j and j.status)
    elseif k > 0 and j.status ~= "done" and not (fault and fault.batch == "drop" and j.error.maybe_billed) then
      violations[#violations + 1] = string.format("%s: a line the service ran was lost (%s)", job.prompt,
        tostring(j.error and j.error.message))
    elseif j.status == "done" and not core.stat(j.file) then
      violations[#violations + 1] = job.prompt .. ": done without its picture"
    end
  end
  rmtree(dir)
end

-- run{seed, seconds, log} -> stats, violations (a list of strings)
function S.run(o)
  local seed = o.seed or 1
  math.randomseed(seed)
  local function r(n) return math.random(n) end
  local log = o.log or function() end
  local emu = H.emulator { provider = "apiyi" }
  emu:configure { fail_rate = 0.04, reset_rate = 0.02, seed = seed }
  -- no shell: under a ThreadSanitizer preload a child shell cannot start
  local pic = os.tmpname()
  H.write(pic, H.png(48, 48, function(x, y) return (x * 5 + y) % 256 end))
  local mask = os.tmpname()
  H.write(mask, assert(imgedit.mask.rect { width = 48, height = 48, x = 12, y = 12, w = 24, h = 24 }).bytes)
  local pic_sha = core.sha256(H.read(pic))
  local shifty, fill = os.tmpname(), 1
  H.write(shifty, shifty_bytes(fill))
  local shifty_sha = core.sha256(shifty_bytes(fill))
  local sleeper = imgedit.new { base_url = emu.url, api_key = emu.key } -- idle: its poll(t) sleeps t
  local jobs = {} -- prompt -> { outcome = ..., let_go = why }
  local stats = { jobs = 0, rounds = 0, images = 0, err_image = 0, err_url = 0, failed = {}, canceled = 0,
    closed = 0, dropped = 0, left_running = 0 }
  local violations = {}
  local n = 0
  local t_end = core.now() + (o.seconds or 40)
  local bemu -- the batch rounds' emulator

  while core.now() < t_end do
    stats.rounds = stats.rounds + 1
    emu:clear()
    repeat -- (once; a batch round breaks out: no goto, for Lua 5.1 and LuaJIT)
      if r(4) == 1 then
        -- this round goes the provider's batch route, on an emulator of a
        -- service that has it (the seeds' gateway has not)
        bemu = bemu or H.emulator { provider = "compatible" }
        bemu:clear()
        bemu:configure { fail_rate = 0.04, reset_rate = 0.02, latency = 0, seed = seed + n }
        n = n + 1
        batch_round(r, bemu, pic, seed, n, violations, stats)
        log(stats)
        break
      end
      local idle = ({ 0.3, 0.6, 1.2 })[r(3)] * H.SLOW
      local total = ({ 2.5, 4 })[r(2)] * H.SLOW
      -- the model's time for every answer of the round: well under the timeout
      emu:configure { fail_rate = 0.04, reset_rate = 0.02, latency = r(3) == 1 and total * r(3) / 10 or 0 }
      for _ = 1, r(6) do emu:inject(FAULTS[r(#FAULTS)](r, idle, total)) end
      local c = imgedit.new { base_url = emu.url, api_key = emu.key, provider = "apiyi", idle_timeout = idle,
        timeout = total, max_retries = r(3) - 1, retry_base = 0.01, max_concurrency = 2 + r(6),
        decode = r(2) == 1 and "rgba" or nil, on_warning = function() end }
      local mine = {}
      for _ = 1, 2 + r(8) do
        n = n + 1
        local prompt = string.format("soak-%d-%d", seed, n)
        local req = { prompt = prompt, size = "1024x640", quality = "low", output_format = r(2) == 1 and "jpeg" or "png" }
        local rec
        if r(3) > 1 then
          req.stream, req.partial_images = true, r(3) - 1
          req.on_partial = function(p)
            rec.partials = (rec.partials or 0) + 1
            if rawget(p, "buffer") and r(2) == 1 then p.buffer:close() end
          end
        end
        if r(4) == 1 then req.decode = "rgba" end
        local kind = r(2) == 1 and "edit" or "generate"
        rec = { kind = kind, stream = req.stream }
        if kind == "edit" and r(3) == 1 then req.mask, req.preserve = mask, r(2) == 1 end
        if kind == "edit" and r(3) == 1 then
          req.images, rec.sent_sha = { shifty }, shifty_sha
        elseif kind == "edit" then
          req.images, rec.sent_sha = { pic }, pic_sha
        end
        jobs[prompt] = rec
        mine[#mine + 1] = { prompt = prompt, job = c:submit(kind, req), rec = rec }
        stats.jobs = stats.jobs + 1
      end
      local pattern = PATTERNS[r(#PATTERNS)]
      if pattern == "fd" and not have_cq then pattern = "tight" end
      local fd = pattern == "fd" and assert(c:fd())
      if fd then stats.fd_rounds = (stats.fd_rounds or 0) + 1 end
      local chaos = r(6) -- 1: cancel some, 2: close mid-way, 3: drop the client, else none
      local shift_at = r(2) == 1 and r(40) or nil -- the poll at which the changing input changes
      local deadline = core.now() + 25 * H.SLOW
      local polls = 0
      local function pending()
        for _, m in ipairs(mine) do if not m.job:done() then return true end end
        return false
      end
      while pending() and core.now() < deadline do
        polls = polls + 1
        if polls == shift_at then
          fill = fill + 1
          shifty_sha = rewrite(shifty, fill, r(2) == 1)
          stats.shifted = (stats.shifted or 0) + 1
        end
        if chaos == 1 and r(40) == 1 then
          local m = mine[r(#mine)]
          if m.job:cancel("soak") then m.rec.let_go = "canceled" end
        end
        if (chaos == 2 or chaos == 3) and polls == 1 + r(60) then break end
        if pattern == "tight" then
          c:poll(0)
        elseif pattern == "frames" then
          c:poll(0)
          sleeper:poll(0.016)
        elseif pattern == "poll" then
          c:poll(r(20) / 100)
        elseif pattern == "fd" then
          -- an event loop: sleep until the descriptor or the client's clock,
          -- capped; woken by the cap with the descriptor quiet, a poll that
          -- still hands something over is a wake-up the descriptor missed
          local t = c:timeout()
          local cap = 3 * H.SLOW
          local woke = readable(fd, t and math.min(t, cap) or cap)
          if not woke and not t and not readable(fd, 0.02) then
            local before = progress(mine)
            c:poll(0)
            if progress(mine) ~= before then
              violations[#violations + 1] = string.format("round %d: the descriptor stayed quiet %.1f s while poll had"
                .. " something to hand over", stats.rounds, cap)
            end
          else
            c:poll(0)
          end
        else
          mine[r(#mine)].job:wait()
        end
      end
      if chaos == 2 or chaos == 3 then
        for _, m in ipairs(mine) do
          if not m.job:done() then m.rec.let_go = chaos == 2 and "closed" or "dropped" end
        end
      end
      for _, m in ipairs(mine) do
        local rec, job = m.rec, m.job
        if not job:done() and not rec.let_go then
          stats.left_running = stats.left_running + 1
          violations[#violations + 1] = string.format("%s: left running (%s, pattern %s)", m.prompt, job.state, pattern)
          rec.let_go = "stuck"
        elseif job:done() then
          local img, err = job:result()
          rec.img, rec.err = img, err
          if img then
            stats.images = stats.images + 1
            if rawget(img, "buffer") and r(2) == 1 then img.buffer:close() end
          elseif err.image then
            stats.err_image = stats.err_image + 1
          elseif err.url then
            stats.err_url = stats.err_url + 1
          else
            stats.failed[err.kind] = (stats.failed[err.kind] or 0) + 1
          end
          if err and err.kind == "canceled" then rec.let_go = rec.let_go or "canceled" end
        end
      end
      if chaos == 3 then
        mine, c = nil, nil -- the client and its jobs are dropped: __gc closes them
        collectgarbage()
        collectgarbage()
      else
        c:close()
      end
      -- the emulator's answers are in; give a cut connection's last word time to land
      sleeper:poll(0.05)
      S.check(emu, jobs, violations, stats)
      for _, rec in pairs(jobs) do
        if rec.let_go then stats[rec.let_go] = (stats[rec.let_go] or 0) + 1 end
      end
      jobs = {}
      log(stats)
    until true
  end
  sleeper:close()
  emu:stop()
  if bemu then bemu:stop() end
  os.remove(pic)
  os.remove(mask)
  os.remove(shifty)
  return stats, violations
end

-- The invariants over one round's log.
function S.check(emu, jobs, violations, stats)
  local billed, delivered = {}, {}
  stats.requests = (stats.requests or 0)
  stats.delivered = (stats.delivered or 0)
  for _, e in ipairs(H.api_requests(emu)) do
    local p = e.fields and e.fields.prompt
    if p and jobs[p] then
      stats.requests = stats.requests + 1
      local sent = e.files and e.files[1] and e.files[1].sha256
      if sent and jobs[p].sent_sha and sent ~= jobs[p].sent_sha then
        violations[#violations + 1] = string.format("%s: the service got bytes that were not checked", p)
      end
      local status = tonumber(e.status)
      if status == 200 or (status == 0 and not e.early) then billed[p] = (billed[p] or 0) + 1 end
      if status == 200 and e.delivered then
        delivered[p] = true
        stats.delivered = stats.delivered + 1
      end
    end
  end
  for p, k in pairs(billed) do
    if k > 1 then violations[#violations + 1] = string.format("%s: reached the service %d times unasked", p, k) end
  end
  for p in pairs(delivered) do
    local rec = jobs[p]
    if not rec.let_go and not (rec.img or (rec.err and (rec.err.image or rec.err.url))) then
      violations[#violations + 1] = string.format("%s: a delivered answer was lost (%s%s): %s", p, rec.kind,
        rec.stream and ", stream" or "", tostring(rec.err))
    end
  end
end

-- A line of counts.
function S.summary(s)
  local kinds = {}
  for k, v in pairs(s.failed) do kinds[#kinds + 1] = k .. "=" .. v end
  table.sort(kinds)
  return string.format("soak: %d rounds, %d jobs, %d requests, %d answers delivered in full; reached the caller:"
    .. " %d images, %d err.image, %d err.url; let go by the caller: %d canceled, %d closed, %d dropped;"
    .. " failed: %s; left running: %d; an input changed %d times; %d rounds waited on fd(); %d batch rounds (%d runs,"
    .. " %d lines run)", s.rounds, s.jobs, s.requests or 0, s.delivered or 0, s.images, s.err_image,
    s.err_url, s.canceled or 0, s.closed or 0, s.dropped or 0, #kinds > 0 and table.concat(kinds, " ") or "none",
    s.left_running, s.shifted or 0, s.fd_rounds or 0, s.batch_rounds or 0, s.batch_runs or 0, s.batch_lines or 0)
end

return S
