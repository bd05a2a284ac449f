-- `imgedit batch`: the command line over imgedit.batch, with its live view.
-- cli.lua owns the parser and the exit codes; this file the command.
local compat = require "imgedit.compat"
local cjson = require "cjson"
local core = require "imgedit.core"
local text = require "imgedit.text"
local human = require("imgedit.cli_common").human

local M = {}

local function plural(n, word) return string.format("%d %s%s", n, word, n == 1 and "" or "s") end

local function stderr(...) io.stderr:write(...) end

-- The options of the command, added to cli.lua's parser, which adds the
-- request's fields (--model, --size, ...: for jobs that do not give them)
-- and the client's settings, as for edit.
function M.options(cmd)
  cmd:argument("inputs", "A manifest (.jsonl or .csv), or with --prompt: pictures, folders or globs."):args("+")
  cmd:option("-o --output", "The batch's folder: outputs, journal, batch-report.json, failed.jsonl."):count(1)
  cmd:option("-p --prompt", "One prompt for every picture given (instead of a manifest).")
  cmd:option("--concurrency", "Jobs at once, at most (default 8); fewer while the service pushes back.")
  cmd:option("--budget-tokens", "Start no job that could take the tokens spent past this.")
  cmd:option("--budget-usd", "Start no job that could take the cost past this many dollars.")
  cmd:option("--shard", "I/N: run the I-th of N shares of the manifest (split by job name).")
  cmd:option("--cache", "A folder of finished pictures by content address, shared with pipelines.")
  cmd:option("--route", "direct (default): each job its own request; provider: the provider's Batch API, at half"
    .. " the price, within its 24-hour window."):choices { "direct", "provider" }
  cmd:option("--poll-interval", "With --route provider: seconds between looks at the provider's batches (default 30).")
  cmd:flag("--detach", "With --route provider: submit the batches and exit; the same command later collects them.")
  cmd:flag("--cancel", "With --route provider: cancel this folder's batches; what finished before is collected.")
  cmd:flag("--dry-run", "With --route provider: print the lines, uploads, batches and estimated cost; send nothing.")
  cmd:flag("--keep-files", "With --route provider: keep the uploaded pictures at the provider for later runs.")
  cmd:flag("--emulate", "Run against a local emulator instead of the service.")
  cmd:flag("-f --force", "Replace files in the output folder that this batch did not make (never its inputs).")
  cmd:flag("--retry-maybe-billed", "Send again the jobs that ended failed although the service may have made and"
    .. " billed them (maybe paid twice).")
  cmd:flag("--no-lineage", "Do not write how each picture was made into it.")
  cmd:flag("--json", "One JSON line per finished job on stdout, then one for the batch.")
  cmd:flag("-q --quiet", "No progress display.")
end

local function clock(s)
  if not s then return "--" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", math.floor(s / 3600), math.floor(s % 3600 / 60)) end
  if s >= 60 then return string.format("%dm%02ds", math.floor(s / 60), s % 60) end
  return s .. "s"
end

local function count(n)
  if n >= 1e6 then return string.format("%.1fM", n / 1e6) end
  if n >= 1e4 then return string.format("%.0fk", n / 1e3) end
  return tostring(math.floor(n))
end

-- line(numbers, width) -> the live view's one line: bar, counts, pace, spend, ETA.
function M.line(n, width)
  local total = n.total or 0
  local finished = n.done + n.failed + n.before
  local frac = total > 0 and finished / total or 1
  local w = width or 20
  local full = math.floor(frac * w + 0.5)
  return string.format("[%s%s] %d/%d  done %d  failed %d  in flight %d | %.0f req/min | %s tokens | $%.2f | ETA %s%s",
    string.rep("#", full), string.rep("-", w - full), finished, total, n.done + n.before, n.failed, n.running,
    n.rpm, count(n.tokens), n.usd, clock(n.eta), n.stopping and " | stopping" or "")
end

-- route_line(numbers) -> the provider route's live line: its phase, each
-- batch's status and counts, the time waited.
function M.route_line(n)
  local r = n.route
  local list = {}
  for _, b in ipairs(r.batches) do
    list[#list + 1] = string.format("%s %s %d/%d done, %d failed", b.id or "(new)", b.status, b.completed, b.total or 0,
      b.failed)
  end
  local up = r.uploading
  if r.phase == "uploading" and up then
    return string.format("uploading %d/%d pictures, %s of %s", up.done, up.files, human(up.sent), human(up.bytes))
  end
  return string.format("%s | %s | %s uploaded this run | waited %s", r.phase or "", #list > 0
    and table.concat(list, "; ") or "no batch", plural(r.uploads or 0, "picture"), clock(r.waited))
end

-- run(a, ctx) -> exit code. ctx: the cli's helpers (fail, fail_err, number_opt, json_out, exit codes).
function M.run(a, ctx)
  local imgedit = require "imgedit"
  -- First, before any thread exists (the emulator's, curl's resolver), so
  -- that Ctrl-C reaches this loop and no other thread.
  local interrupts = core.interrupts()
  local function finish(code)
    if interrupts then interrupts:close() end
    return code
  end
  local emu
  local base_url, api_key, provider = nil, nil, a.provider
  if a.emulate then
    -- run --emulate's port when free: the cache's keys name the service's url.
    local E = require "imgedit.emulator"
    emu = E.start { port = ctx.EMULATE_PORT } or assert(E.start {})
    base_url, api_key, provider = emu.url, emu.key, emu.provider
  end
  local concurrency = a.concurrency and compat.tointeger(ctx.number_opt(a.concurrency, "concurrency"))
  local cok, client = pcall(imgedit.new, {
    base_url = base_url, api_key = api_key, provider = provider, model = a.model, deployment = a.deployment,
    timeout = ctx.number_opt(a.timeout, "timeout"), max_retries = ctx.number_opt(a.retries, "retries"),
    ca_file = a.ca_file, ca_path = a.ca_path, proxy = a.proxy, allow_http = a.allow_http or nil, max_concurrency = concurrency,
  })
  if not cok then
    if emu then emu:stop() end
    finish()
    error({ usage = (tostring(client):gsub("^[^:]*:%d+: ", "")) })
  end
  local defaults = { model = a.model, size = a.size, quality = a.quality, output_format = a.format,
    background = a.background, response_format = a.response_format,
    output_compression = a.compression and compat.tointeger(ctx.number_opt(a.compression, "compression")) }
  local budget
  if a.budget_tokens or a.budget_usd then
    budget = { tokens = ctx.number_opt(a.budget_tokens, "budget-tokens"), usd = ctx.number_opt(a.budget_usd, "budget-usd") }
  end
  local opts = { client = client, dir = a.output, defaults = defaults, budget = budget, shard = a.shard,
    cache = a.cache, lineage = not a.no_lineage, interrupts = interrupts,
    retry_maybe_billed = a.retry_maybe_billed or nil, overwrite = a.force or nil }
  if a.route == "provider" then
    opts.route, opts.detach, opts.cancel, opts.dry_run = "provider", a.detach or nil, a.cancel or nil, a.dry_run or nil
    opts.keep_files = a.keep_files or nil
    opts.poll_interval = a.poll_interval and ctx.number_opt(a.poll_interval, "poll-interval")
  else
    for _, k in ipairs { "poll_interval", "detach", "cancel", "dry_run", "keep_files" } do
      if a[k] then
        finish()
        error({ usage = "--" .. k:gsub("_", "-") .. " goes with --route provider" })
      end
    end
  end
  if a.prompt then
    opts.pictures, opts.prompt = a.inputs, a.prompt
  elseif #a.inputs > 1 then
    finish()
    error({ usage = "one manifest at a time; to run a prompt over pictures, give --prompt" })
  else
    opts.manifest = a.inputs[1]
  end
  local tty = not a.quiet and not a.json and core.isatty(2)
  local last_plain, shown, told = core.now(), false, false
  opts.on_tick = function(n)
    if n.stopping and (n.running or 0) > 0 and not told and not a.quiet then
      told = true
      stderr(tty and "\r\27[K" or "", string.format("imgedit: stopping: no new jobs; waiting for %d in flight"
        .. " (Ctrl-C again cancels them)\n", n.running))
    end
    local line = n.route and M.route_line(n) or M.line(n)
    if tty then
      stderr("\r", line, "\27[K")
      shown = true
    elseif not a.quiet and not a.json and core.now() - last_plain >= 10 then
      last_plain = core.now()
      stderr(line, "\n")
    end
  end
  -- A dry run names the jobs the checks refused, and why.
  local refused = setmetatable({}, cjson.empty_array_mt)
  if a.dry_run then
    opts.on_job = function(ev)
      if ev.event == "failed" then refused[#refused + 1] = { name = ev.name, error = ev.error } end
    end
  elseif a.json then
    opts.on_job = function(ev)
      local out = { name = ev.name, status = ev.event, file = ev.file, tokens = ev.tokens, cost = ev.cost,
        attempts = ev.attempts, request_id = ev.request_id, seconds = ev.seconds, error = ev.error,
        resumed = ev.resumed, maybe_paid_twice = ev.maybe_paid_twice }
      io.stdout:write(text.json(cjson.encode(out)), "\n")
      io.stdout:flush()
    end
  end
  local rok, report, err = pcall(imgedit.batch, opts)
  if shown then stderr("\r\27[K") end
  client:close()
  if emu then emu:stop() end
  finish()
  if not rok then
    if type(report) == "string" and report:match("^[^:]*:%d+: bad option") then
      error({ usage = (report:gsub("^[^:]*:%d+: ", "")) })
    end
    error(report, 0)
  end
  if not report then return ctx.fail_err(err) end
  if report.dry_run then
    if a.json then
      report.refused = refused
      ctx.json_out(report)
    else
      print(string.format("dry run (nothing sent): %d jobs: %s for the provider's batch in %d batch%s"
        .. " (%d bytes of input); %s to upload (%d bytes); %d done before, %d cached, %d refused by the"
        .. " checks; estimated $%.4f at the batch price ($%.4f direct)%s", report.jobs, plural(report.lines, "line"),
        report.batches, report.batches == 1 and "" or "es", report.input_bytes, plural(report.uploads, "picture"),
        report.upload_bytes,
        report.done_before, report.cached, report.failed, report.usd, report.usd_direct,
        report.unpriced_model and (" (no price known for " .. text.safe(report.unpriced_model) .. ")") or ""))
      if report.pending_batches > 0 then
        print(string.format("%d batch%s of an earlier run still to collect", report.pending_batches,
          report.pending_batches == 1 and "" or "es"))
      end
      for i, f in ipairs(refused) do
        if i > 5 then
          print(string.format("(%d more refused)", #refused - 5))
          break
        end
        print(string.format("refused: %s: %s", text.safe(f.name), text.safe(f.error and f.error.message or "?")))
      end
      if report.stopped then print("stopped: " .. text.safe(report.stopped)) end
    end
    return report.failed > 0 and ctx.EXIT.failure or ctx.EXIT.ok
  end
  local r, t = report.this_run, report.totals
  -- Stopped because jobs wait in this folder's provider batches (not a budget).
  local waiting = report.stopped and (r.in_provider_batches or 0) > 0 and not report.stopped:match("^budget")
  if a.json then
    ctx.json_out { ok = t.done == t.jobs, summary = true, totals = t, this_run = r, stopped = report.stopped,
      route = report.route,
      report = report.report, failed_manifest = report.failed_manifest,
      maybe_paid_twice = #report.maybe_paid_twice > 0 and report.maybe_paid_twice or nil }
  elseif not a.quiet then
    -- Job names come from a manifest, paths and reasons from outside: safe().
    local safe = text.safe
    print(string.format("batch: %d jobs: %d done (%d before this run), %d failed, %d not run; %d requests,"
      .. " %d tokens, $%.4f, %.1f s", t.jobs, t.done, r.skipped_done_before, t.failed, t.not_run, r.requests, r.tokens,
      r.usd, report.seconds))
    if #report.maybe_paid_twice > 0 then
      print("sent again after a crash (maybe paid twice): " .. safe(table.concat(report.maybe_paid_twice, ", ")))
    end
    local rt = report.route
    if rt then
      print(string.format("provider route: %s sent in batches, %s uploaded, %s", plural(rt.lines, "line"),
        plural(rt.uploads, "picture"), plural(rt.calls, "API call")))
    end
    -- Why jobs failed, the first few (all are in the report).
    local shown_failed = 0
    for _, j in ipairs(report.jobs) do
      if j.status == "failed" and j.error and shown_failed < 5 then
        shown_failed = shown_failed + 1
        print(string.format("failed: %s: %s: %s", safe(j.name), safe(j.error.kind or "?"), safe(j.error.message or "")))
      end
    end
    if t.failed > shown_failed and shown_failed > 0 then
      print(string.format("(%d more in the report)", t.failed - shown_failed))
    end
    if (r.not_sent_maybe_billed or 0) > 0 then
      print(string.format("%s ended failed and maybe billed before: not sent again unless --retry-maybe-billed"
        .. " (which may pay twice)", plural(r.not_sent_maybe_billed, "job")))
    end
    if report.stopped == "detached" or (report.stopped == "interrupted" and rt and #rt.pending > 0) then
      -- The same command: other options (model, size) are part of each job's key.
      print(string.format("the provider's batch%s %s %s still running; to collect, run the same imgedit batch"
        .. " command again%s (add --cancel to cancel)", #rt.pending == 1 and "" or "es",
        safe(table.concat(rt.pending, ", ")), #rt.pending == 1 and "is" or "are",
        a.detach and " without --detach" or ""))
    elseif waiting then
      print(string.format("%s wait%s in this folder's provider batches: not sent again by the direct route; to"
        .. " collect, run this command with --route provider", plural(r.in_provider_batches, "job"),
        r.in_provider_batches == 1 and "s" or ""))
    elseif report.stopped then
      print("stopped: " .. safe(report.stopped))
    end
    print("report: " .. safe(report.report))
    -- What a re-run of failed.jsonl would send: not the jobs held back.
    local left = t.jobs - t.done - (r.not_sent_maybe_billed or 0) - (r.in_provider_batches or 0)
    if left > 0 and not (rt and #rt.pending > 0) then
      print("to run what is left: imgedit batch " .. (rt and "--route provider " or "") .. safe(report.failed_manifest)
        .. " -o " .. safe(a.output))
    end
  end
  if report.stopped == "detached" then return ctx.EXIT.ok end
  if report.stopped == "interrupted" then return 130 end
  if waiting then return ctx.EXIT.failure end
  if report.stopped then return ctx.EXIT.limit end
  if t.failed > 0 or t.not_run > 0 then return ctx.EXIT.failure end
  return ctx.EXIT.ok
end

return M
