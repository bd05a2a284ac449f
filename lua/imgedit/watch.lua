-- `imgedit run --watch`: run a pipeline script, then again each time it or
-- one of its steps' input files is saved. Unchanged steps come from the
-- cache, so a re-run pays only for what changed. Waiting uses inotify
-- (core.wait_change); where that is missing (macOS, Windows) it sleeps, and
-- there, as a safety net for a save that lands before the watch is set,
-- the files' mtimes are compared every `interval` seconds.
local core = require "imgedit.core"

local M = {}

local function stamp(path)
  local st = core.stat(path)
  return st and string.format("%.9f:%.0f", st.mtime, st.size) or "missing"
end

-- files(script, pipelines) -> the sorted list of files a run depends on
function M.files(script, pipelines)
  local set, list = { [script] = true }, { script }
  for _, p in ipairs(pipelines) do
    for path in pairs(p.shared.read or {}) do
      if not set[path] then set[path], list[#list + 1] = true, path end
    end
  end
  table.sort(list)
  return list
end

-- stamps(files [, into]) -> path -> mtime and size, as they are now
function M.stamps(files, into)
  local t = into or {}
  for _, f in ipairs(files) do
    if t[f] == nil then t[f] = stamp(f) end
  end
  return t
end

-- wait(files, interval, before) -> the path that changed (blocks until one
-- does). `before` are the stamps taken before anyone could have been told
-- that the watch began: a save right after that message still counts.
function M.wait(files, interval, before)
  while true do
    local hit = core.wait_change(files, interval)
    -- inotify names a file, or times out; either way the mtimes decide,
    -- so a touch without a change of content still counts (a save).
    if hit then
      core.wait_change(files, 0.1) -- let an editor finish its writes
      return hit
    end
    for _, f in ipairs(files) do
      if stamp(f) ~= before[f] then
        core.wait_change(files, 0.1)
        return f
      end
    end
  end
end

-- loop{script=, run=function() -> ok, err, pipelines end, out=function(line),
--      runs=N (stop after N runs; nil: until interrupted), interval=1}
-- -> the last run's ok, err
function M.loop(o)
  local n, ok, err = 0, nil, nil
  while true do
    n = n + 1
    local t0 = core.now()
    -- The script's stamp before it runs: a save during the run is a change.
    local before = M.stamps { o.script }
    local pipelines
    ok, err, pipelines = o.run()
    pipelines = pipelines or {}
    for _, p in ipairs(pipelines) do
      for _, rec in ipairs(p.shared.records) do
        o.out(string.format("  %-24s %-6s %s", rec.name, rec.hit and "cached" or "paid",
          rec.usd and rec.usd > 0 and string.format("$%.4f", rec.usd) or ""))
      end
      if p.prefix == "" then
        local path, msg = require("imgedit.sheet").write(p.dir, require("imgedit.files").join(p.dir, "index.html"))
        o.out(path and ("contact sheet: " .. path) or ("contact sheet not written: " .. tostring(msg)))
      end
    end
    if ok then
      o.out(string.format("run %d done in %.1f s", n, core.now() - t0))
    else
      o.out(string.format("run %d failed: %s", n, tostring(err)))
    end
    if o.runs and n >= o.runs then return ok, err end
    local files = M.files(o.script, pipelines)
    M.stamps(files, before)
    o.out(string.format("watching %d file%s (%s); Ctrl-C to stop", #files, #files == 1 and "" or "s",
      table.concat(files, ", ")))
    local changed = M.wait(files, o.interval or 1, before)
    o.out("changed: " .. changed)
  end
end

return M
