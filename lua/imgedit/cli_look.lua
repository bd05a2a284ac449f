-- The commands that look without paying: `inspect` (a picture's facts and
-- lineage), `mask` (make or check a mask), `report` (a pipeline's folder)
-- and `rules` (what a provider and model accept).
local compat = require "imgedit.compat"
local core = require "imgedit.core"
local files = require "imgedit.files"
local imgedit = require "imgedit"
local providers = require "imgedit.providers"
local C = require "imgedit.cli_common"
local stderr, list, json_out, error_object = C.stderr, C.list, C.json_out, C.error_object
local fail, fail_err, number_opt, human = C.fail, C.fail_err, C.number_opt, C.human
local check_output, mask_line, safe, quote = C.check_output, C.mask_line, C.safe, C.quote

local M = {}

local function cmd_inspect(a)
  local failed, rows = false, {}
  for _, f in ipairs(a.files) do
    local info, err = imgedit.inspect(f)
    if info then local _ = info.lineage end -- read now, so the JSON row holds it
    local row = info or { error = error_object(err) }
    if row.error then row.error.attempts = nil end
    row.file = f
    if info then
      row.ok_as_image = info.accepted
      row.ok_as_mask = info.format == "png" and info.has_alpha
    else
      failed = true
    end
    rows[#rows + 1] = row
    -- Lineage is read from the picture, which may come from anywhere: every
    -- field of it, and the file's name, is printed through safe().
    if not a.json then
      if info then
        print(string.format("%s: %s %dx%d, %d channels%s, %s%s%s", safe(f), info.format, info.width or 0,
          info.height or 0, info.channels or 0, info.has_alpha and " with alpha" or "", human(info.bytes),
          info.accepted and "" or ", not accepted for upload", row.ok_as_mask and ", usable as a mask" or ""))
        local l = info.lineage
        if info.lineage_dropped then
          stderr("imgedit: warning: ", safe(f), ": its lineage's ", safe(table.concat(info.lineage_dropped, ", ")),
            " had the wrong type and ", #info.lineage_dropped == 1 and "is" or "are", " left out\n")
        end
        if l then
          local parents = type(l.parents) == "table" and l.parents or {}
          print(string.format("  made by %s%s from %d input%s: %s", safe(l.model or "an unknown model"),
            l.step and (" as step " .. safe(l.step)) or "", #parents, #parents == 1 and "" or "s", quote(l.prompt or "")))
          local ps = {}
          for k, v in pairs(type(l.params) == "table" and l.params or {}) do ps[#ps + 1] = safe(k) .. "=" .. safe(v) end
          table.sort(ps)
          if #ps > 0 then print("  params " .. table.concat(ps, ", ")) end
          for i, p in ipairs(parents) do print(string.format("  input %d sha256 %s", i, safe(p))) end
          if l.mask then print("  mask sha256 " .. safe(l.mask)) end
          if type(l.mask_drift) == "number" then print(mask_line(l)) end
          if l.request_id then print("  request " .. safe(l.request_id)) end
        end
      else
        print(safe(f) .. ": " .. safe(err.message))
      end
    end
  end
  if a.json then json_out { ok = not failed, files = list(rows) } end
  return failed and 3 or 0
end

local function box(s, what)
  local x, y, w, h = tostring(s):match("^(%-?%d+),(%-?%d+),(%d+),(%d+)$")
  if not x then error({ usage = what .. " expects X,Y,W,H, got '" .. tostring(s) .. "'" }) end
  return { x = compat.tointeger(tonumber(x)), y = compat.tointeger(tonumber(y)), w = compat.tointeger(tonumber(w)),
    h = compat.tointeger(tonumber(h)) }
end

local function cmd_mask(a)
  local okw, why = check_output(a.output, a.force, { a.from_gray or a.from_alpha })
  if not okw then return fail(3, why, { kind = "io", message = why, param = "output" }) end
  local sources = (a.from_gray and 1 or 0) + (a.from_alpha and 1 or 0) + ((#a.rect + #a.ellipse > 0) and 1 or 0)
  if sources ~= 1 then
    error({ usage = "give shapes (--rect, --ellipse), --from-gray or --from-alpha: exactly one kind" })
  end
  local m, err
  if a.from_gray or a.from_alpha then
    local fn = a.from_gray and imgedit.mask.from_gray or imgedit.mask.from_alpha
    m, err = fn(a.from_gray or a.from_alpha, { invert = a.invert, threshold = number_opt(a.threshold, "threshold"),
      feather = compat.tointeger(number_opt(a.feather, "feather")) })
    if m and a.like then -- match the base's size
      local fitted
      fitted, m = imgedit.fit(a.like, { mask = m, max_bytes = math.huge })
      if not fitted then return fail_err(m) end
    end
  else
    local o = { invert = a.invert, shapes = {} }
    if a.like then
      o.like = a.like
    else
      local w, h = tostring(a.size):match("^(%d+)x(%d+)$")
      if not w then error({ usage = "shapes need --like BASE or --size WIDTHxHEIGHT" }) end
      o.width, o.height = compat.tointeger(tonumber(w)), compat.tointeger(tonumber(h))
    end
    for _, s in ipairs(a.rect) do local b = box(s, "--rect"); b.kind = "rect"; o.shapes[#o.shapes + 1] = b end
    for _, s in ipairs(a.ellipse) do local b = box(s, "--ellipse"); b.kind = "ellipse"; o.shapes[#o.shapes + 1] = b end
    for _, s in ipairs(a.keep) do local b = box(s, "--keep"); b.kind, b.keep = "rect", true; o.shapes[#o.shapes + 1] = b end
    m, err = imgedit.mask.compose(o)
  end
  if not m then return fail_err(err) end
  local ok, serr = m:save(a.output)
  if not ok then return fail_err(serr) end
  local report, rerr = imgedit.mask.check(m, a.like)
  if not report then return fail_err(rerr) end
  local warnings = report.warnings
  if a.json then
    local t = {}
    for k, v in pairs(report) do t[k] = v end
    t.ok, t.path, t.warnings, t.problems = true, a.output, list(warnings), list(report.problems)
    json_out(t)
  else
    print(string.format("%s: %dx%d mask, %.1f%% to edit", safe(a.output), m.width, m.height, (report.coverage or 0) * 100))
  end
  for _, w in ipairs(warnings) do stderr("imgedit: warning: ", safe(w), "\n") end
  return 0
end

local function cmd_report(a)
  local sheet = require "imgedit.sheet"
  local f = io.open(a.dir .. "/.", "rb")
  if not f then return fail(3, a.dir .. ": not a readable folder", { kind = "io", message = "not a readable folder" }) end
  f:close()
  local out = a.output or files.join(a.dir, "index.html")
  local problems = {}
  local steps = sheet.steps(a.dir, problems)
  for _, w in ipairs(problems) do stderr("imgedit: warning: ", safe(w), "\n") end
  local ok, msg = sheet.save(out, sheet.render(steps, out:match("^(.*)/[^/]*$") or ".",
    a.title or (a.dir:gsub("/+$", ""):match("[^/]+$") or a.dir)), a.force)
  if not ok then return fail(3, "cannot write " .. out .. ": " .. msg, { kind = "io", message = msg }) end
  if a.json then
    json_out { ok = true, html = out, steps = #steps }
  else
    print(string.format("contact sheet: %s (%d step%s)", safe(out), #steps, #steps == 1 and "" or "s"))
  end
  return 0
end

local function cmd_rules(a)
  local provider = a.provider or os.getenv("IMGEDIT_PROVIDER")
  if provider == nil or provider == "" then
    local base = os.getenv("IMGEDIT_BASE_URL")
    provider = (base and base ~= "") and providers.detect(base) or "apiyi"
  end
  if not providers.list[provider] then
    error({ usage = "--provider must be apiyi, openai, azure or compatible, got '" .. provider .. "'" })
  end
  local R = imgedit.rules
  local names = a.model and { a.model } or R.models(provider)
  if a.json then
    local models = {}
    for _, m in ipairs(names) do models[m] = R.get(provider, m) end
    json_out { ok = true, provider = provider, source = R.sources[provider], models = models }
    return 0
  end
  print(string.format("provider %s (source: %s)", provider, safe(R.sources[provider])))
  if #names == 0 then print("no models listed: every model gets the generic checks (a prompt; an edit needs an image)") end
  for _, m in ipairs(names) do
    local known = R.providers[provider][m] ~= nil
    print("")
    print(safe(m) .. (known and "" or " (not listed for this provider: the generic checks only)"))
    for _, row in ipairs(R.describe(R.get(provider, m))) do
      print(string.format("  %-19s %s", safe(row[1]), safe(row[2])))
    end
  end
  return 0
end

M.inspect, M.mask, M.report, M.rules = cmd_inspect, cmd_mask, cmd_report, cmd_rules

return M
