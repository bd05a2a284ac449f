-- The contact sheet: one self-contained HTML page of a pipeline's folder,
-- made from the steps' JSON sidecars (store.lua writes them). Pictures are
-- linked by relative path, the CSS is inline and nothing is fetched from
-- the network, so the page works from a disk, a zip or a static server.
local core = require "imgedit.core"
local cjson = require "cjson.safe"
local files = require "imgedit.files"
local lineage = require "imgedit.lineage"

local M = {}

-- What marks a page as a contact sheet, so that it may be replaced.
local GENERATOR = '<meta name="generator" content="imgedit contact sheet">'

-- ---- reading a folder ----

local function read_json(path)
  local bytes = core.read_file(path)
  local t = bytes and cjson.decode(bytes)
  return type(t) == "table" and t or nil
end

-- What each field of a sidecar must be (store.lua writes them; a folder
-- may hold anything): a field of another type is left out, and a sidecar
-- without its step name or output file is not one.
local SIDECAR = { step = "string", kind = "string", model = "string", prompt = "string", params = "table",
  mask = "table", usage = "map", tokens_spent = "number", cache_hit = "boolean", resumed_from = "string",
  requests = "number", started = "string", seconds = "number", request_id = "string", cost = "table",
  partials = "strings", order = "number", mask_drift = "number", mask_spill = "number", preserved = "table",
  preserve_error = "string" }
local OUTPUT = { file = "string", sha256 = "string", picture = "string", format = "string", width = "number",
  height = "number" }
local INPUT = { sha256 = "string", source = "string" }

local function sidecar(t, path, problems)
  if not t then return nil end
  local out, dropped = lineage.sane(t, SIDECAR)
  local o = type(t.output) == "table" and lineage.sane(t.output, OUTPUT)
  if not (out.step and o and o.file) then
    if t.step ~= nil or t.output ~= nil then problems[#problems + 1] = path .. ": not a step's record (no step or output file)" end
    return nil
  end
  out.output, out.inputs = o, {}
  if out.usage then -- token counts are numbers (the details may be tables)
    for k, v in pairs(out.usage) do
      if type(v) ~= "number" and type(v) ~= "table" then out.usage[k] = nil end
    end
  end
  if out.cost and type(out.cost.usd) ~= "number" then out.cost, dropped[#dropped + 1] = nil, "cost" end
  for i, inp in ipairs(type(t.inputs) == "table" and t.inputs or {}) do
    if type(inp) == "table" then out.inputs[i] = lineage.sane(inp, INPUT) else dropped[#dropped + 1] = "inputs" end
  end
  if type(t.inputs) ~= "table" and t.inputs ~= nil then dropped[#dropped + 1] = "inputs" end
  if #dropped > 0 then
    table.sort(dropped)
    problems[#problems + 1] = path .. ": " .. table.concat(dropped, ", ") .. " had the wrong type, left out"
  end
  return out
end

-- steps(dir) -> the sidecars under dir (branches included), each with
-- `_dir`, the folder it was found in. Hidden entries (the journal, a cache
-- kept inside the folder) are skipped, and links to folders are not
-- followed: the walk ends, and stays inside dir.
function M.steps(dir, problems)
  problems = problems or {}
  local out = {}
  local function walk(d)
    local list = core.listdir(d) or {}
    table.sort(list, function(a, b) return a.name < b.name end)
    for _, e in ipairs(list) do
      if e.name:sub(1, 1) ~= "." then
        local path = files.join(d, e.name)
        if e.dir and not e.link then -- a link to . or to / would never end
          walk(path)
        elseif e.name:match("%.json$") then
          local t = sidecar(read_json(path), path, problems)
          if t then
            t._dir = d
            out[#out + 1] = t
          end
        end
      end
    end
  end
  walk(dir)
  -- Run order: by start, then by the order the run finished them (a
  -- cached re-run starts every step within the same second).
  table.sort(out, function(a, b)
    local sa, sb = tostring(a.started or ""), tostring(b.started or "")
    if sa ~= sb then return sa < sb end
    local oa, ob = tonumber(a.order) or math.huge, tonumber(b.order) or math.huge
    if oa ~= ob then return oa < ob end
    return a.step < b.step
  end)
  return out
end

-- ---- paths ----

local function parts_of(path)
  local abs = path:sub(1, 1) == "/"
  local t = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." and #t > 0 and t[#t] ~= ".." then
      t[#t] = nil
    elseif part ~= "." then
      t[#t + 1] = part
    end
  end
  return t, abs
end

-- relative(from_dir, to) -> to as seen from from_dir (both as the caller
-- gave them: relative to the same folder, or absolute).
function M.relative(from_dir, to)
  local a, a_abs = parts_of(from_dir)
  local b, b_abs = parts_of(to)
  if a_abs ~= b_abs then return to end
  local i = 1
  while a[i] and b[i] and a[i] == b[i] do i = i + 1 end
  local out = {}
  for _ = i, #a do out[#out + 1] = ".." end
  for j = i, #b do out[#out + 1] = b[j] end
  return #out > 0 and table.concat(out, "/") or "."
end

local function basename(p) return (p:match("[^/]+$") or p) end

-- ---- HTML ----

local function esc(s)
  return (tostring(s):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;",
    ["'"] = "&#39;" }))
end

-- A URL path: each part percent-encoded where HTML or URLs would misread it.
local function href(p)
  return (p:gsub("[^%w%-%._~/]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function anchor(name) return "step-" .. name:gsub("[^%w%-_]", "_") end

-- Four places below a dollar (a step costs cents or less), two above.
local function money(usd)
  if type(usd) ~= "number" then return nil end
  return string.format(usd < 1 and "$%.4f" or "$%.2f", usd)
end

-- JSON numbers come back as floats on Lua 5.3+: counts print as integers.
local function int(v)
  v = tonumber(v)
  return v and string.format("%d", math.floor(v + 0.5)) or "?"
end

local function seconds(s)
  if type(s) ~= "number" then return "" end
  if s < 10 then return string.format("%.1f s", s) end
  return string.format("%.0f s", s)
end

local CSS = [[
:root{--bg:#f6f5f2;--card:#fff;--ink:#1d1d1f;--mute:#6b6b70;--line:#e2e0da;--accent:#3b5bdb;--paid:#c2410c;--hit:#2f7d4f}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif}
main{max-width:1240px;margin:0 auto;padding:24px 20px 48px}
header h1{font-size:26px;margin:0 0 2px}
.sub{color:var(--mute);margin:0 0 16px;overflow-wrap:anywhere}
.totals{display:flex;flex-wrap:wrap;gap:10px;margin:0;padding:0}
.totals div{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:8px 14px;min-width:104px}
.totals dt{font-size:12px;color:var(--mute);text-transform:uppercase;letter-spacing:.04em}
.totals dd{margin:0;font-size:20px;font-weight:600}
h2{font-size:18px;margin:28px 0 12px}
.tree,.tree ul{list-style:none;margin:0;padding:0}
.tree ul{margin-left:22px;border-left:2px solid var(--line);padding-left:14px}
.tree li{margin:8px 0;position:relative}
.tree ul>li::before{content:"";position:absolute;left:-16px;top:22px;width:14px;border-top:2px solid var(--line)}
.node{display:inline-flex;align-items:center;gap:10px;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:5px 12px 5px 5px;color:inherit;text-decoration:none;max-width:100%}
.node:hover{border-color:var(--accent)}
.node img{width:44px;height:44px;object-fit:cover;border-radius:6px;background:#ddd;flex:none}
.node b{font-weight:600;overflow-wrap:anywhere}
.node small{color:var(--mute);display:block}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;overflow:hidden;display:flex;flex-direction:column;min-width:0}
.thumb{display:block;background:repeating-conic-gradient(#eee 0 25%,#fafafa 0 50%) 0 0/16px 16px}
.thumb img{display:block;width:100%;height:220px;object-fit:contain}
.body{padding:12px 14px 14px}
.card h3{font-size:16px;margin:0 0 6px;display:flex;gap:8px;align-items:center;flex-wrap:wrap;overflow-wrap:anywhere}
.badge{font-size:11px;font-weight:600;border-radius:99px;padding:1px 8px;color:#fff}
.badge.paid{background:var(--paid)}.badge.cached{background:var(--hit)}
.prompt{margin:0 0 10px;white-space:pre-wrap;overflow-wrap:anywhere}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:0;font-size:13px}
.meta dt{color:var(--mute)}.meta dd{margin:0;overflow-wrap:anywhere}
.meta a{color:var(--accent)}
.strip{display:flex;gap:6px;margin-top:10px;overflow-x:auto}
.strip img{height:56px;border-radius:4px;border:1px solid var(--line)}
.strip figcaption{font-size:11px;color:var(--mute);text-align:center}
footer{margin-top:32px;color:var(--mute);font-size:12px}
@media (max-width:600px){main{padding:16px 12px 32px}.thumb img{height:auto;max-height:320px}.totals div{min-width:0;flex:1 1 40%}}
]]

-- Marks each picture loaded or broken, and the page overflowing the
-- viewport; tests read these from the DOM, and a person never sees them.
local SCRIPT = [[
addEventListener("load",function(){var i=document.images,ok=0,bad=0;for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)ok++;else bad++}
var d=document.documentElement;d.dataset.images=i.length;d.dataset.loaded=ok;d.dataset.broken=bad;
d.dataset.overflow=d.scrollWidth>innerWidth+1?"yes":"no"});
]]

-- render(steps, html_dir, title) -> the page's text
function M.render(steps, html_dir, title)
  local by_sha, names = {}, {}
  for _, s in ipairs(steps) do
    -- inputs name pictures (without lineage); records before that, files
    local pic = s.output.picture or s.output.sha256 or ""
    by_sha[pic] = by_sha[pic] or s
    names[s.step] = s
  end
  -- Both sides absolute (links resolved), so any two places relate.
  local from = core.realpath(html_dir) or html_dir
  local function picture_href(s, file)
    return href(M.relative(from, files.join(core.realpath(s._dir) or s._dir, basename(file))))
  end
  -- parents: the steps whose outputs this step took as inputs (a chain,
  -- a fusion, a branch); sources: the files it took from outside.
  local children, roots = {}, {}
  for _, s in ipairs(steps) do
    s._parents, s._sources = {}, {}
    for _, inp in ipairs(s.inputs or {}) do
      local p = by_sha[inp.sha256 or ""]
      if p and p ~= s then s._parents[#s._parents + 1] = p
      else s._sources[#s._sources + 1] = inp.source and basename(tostring(inp.source)) or "an image" end
    end
    local first = s._parents[1]
    if first then
      children[first] = children[first] or {}
      table.insert(children[first], s)
    else
      roots[#roots + 1] = s
    end
  end
  local total = { steps = #steps, hits = 0, requests = 0, tin = 0, tout = 0, usd = 0, priced = false, secs = 0 }
  for _, s in ipairs(steps) do
    if s.cache_hit then total.hits = total.hits + 1 end
    total.requests = total.requests + (tonumber(s.requests) or 0)
    local u = type(s.usage) == "table" and s.usage or {}
    if not s.cache_hit then
      total.tin = total.tin + (tonumber(u.input_tokens) or 0)
      total.tout = total.tout + (tonumber(u.output_tokens) or 0)
      if type(s.cost) == "table" and type(s.cost.usd) == "number" then total.usd = total.usd + s.cost.usd end
    end
    if type(s.cost) == "table" then total.priced = true end
    total.secs = total.secs + (tonumber(s.seconds) or 0)
  end

  local h = {}
  local function w(...) for i = 1, select("#", ...) do h[#h + 1] = select(i, ...) end end
  w('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">', GENERATOR,
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    '<title>', esc(title), ' — imgedit contact sheet</title><style>', CSS, '</style></head>\n<body><main>\n',
    '<header><h1>', esc(title), '</h1><p class="sub">', #steps, ' step', #steps == 1 and "" or "s",
    ' · made by imgedit ', esc(core.version), '</p><dl class="totals">')
  local function stat(k, v) w('<div><dt>', k, '</dt><dd>', esc(v), '</dd></div>') end
  stat("steps", total.steps)
  stat("from cache", total.hits)
  stat("requests", int(total.requests))
  stat("tokens in / out", int(total.tin) .. " / " .. int(total.tout))
  if total.priced then stat("paid now", money(total.usd)) end
  stat("time", seconds(total.secs))
  w('</dl></header>\n')

  -- The chain, as a tree: each step under the step it was first made
  -- from; a fusion also names its other parents.
  w('<section><h2>Chain</h2><ul class="tree">')
  local function node(s)
    w('<li><a class="node" href="#', anchor(s.step), '"><img src="', picture_href(s, s.output.file), '" alt=""><span><b>',
      esc(s.step), '</b><small>')
    local bits = {}
    if #s._sources > 0 then bits[#bits + 1] = "from " .. table.concat(s._sources, ", ") end
    for i = 2, #s._parents do bits[#bits + 1] = "+ " .. s._parents[i].step end
    bits[#bits + 1] = s.cache_hit and "cached" or "paid"
    w(esc(table.concat(bits, " · ")), '</small></span></a>')
    if children[s] then
      w('<ul>')
      for _, c in ipairs(children[s]) do node(c) end
      w('</ul>')
    end
    w('</li>')
  end
  for _, s in ipairs(roots) do node(s) end
  w('</ul></section>\n')

  w('<section><h2>Steps</h2><div class="grid">\n')
  for _, s in ipairs(steps) do
    local src = picture_href(s, s.output.file)
    w('<article class="card" id="', anchor(s.step), '"><a class="thumb" href="', src, '"><img src="', src, '" alt="',
      esc(s.step), '"')
    if s.output.width and s.output.height then w(' width="', int(s.output.width), '" height="', int(s.output.height), '"') end
    w('></a><div class="body"><h3>', esc(s.step), ' <span class="badge ', s.cache_hit and 'cached">cached' or 'paid">paid',
      '</span></h3><p class="prompt">', esc(s.prompt or ""), '</p><dl class="meta">')
    local function row(k, v, raw)
      if v == nil or v == "" then return end
      w('<dt>', k, '</dt><dd>', raw and v or esc(v), '</dd>')
    end
    row("model", s.model)
    local params = {}
    for k, v in pairs(type(s.params) == "table" and s.params or {}) do
      if type(v) ~= "table" then params[#params + 1] = k .. "=" .. tostring(v) end
    end
    table.sort(params)
    row("params", table.concat(params, ", "))
    local from = {}
    for _, p in ipairs(s._parents) do from[#from + 1] = '<a href="#' .. anchor(p.step) .. '">' .. esc(p.step) .. '</a>' end
    for _, f in ipairs(s._sources) do from[#from + 1] = esc(f) end
    if s.mask then from[#from + 1] = "mask " .. esc(s.mask.source and basename(tostring(s.mask.source)) or "") end
    row("from", table.concat(from, ", "), true)
    local u = type(s.usage) == "table" and s.usage or nil
    if u then row("tokens", int(u.input_tokens or 0) .. " in, " .. int(u.output_tokens or 0) .. " out") end
    if type(s.cost) == "table" then row("cost", (s.cache_hit and "paid earlier: " or "") .. money(s.cost.usd)) end
    row("time", s.cache_hit and "cached" or seconds(s.seconds))
    row("request", s.request_id ~= cjson.null and s.request_id or nil)
    row("output", string.format("%s %sx%s", tostring(s.output.format), int(s.output.width), int(s.output.height)))
    if type(s.mask_drift) == "number" then -- how far the answer strayed from the mask
      local feather = type(s.preserved) == "table" and tonumber(s.preserved.feather)
      row("mask", string.format("drift %.1f%%, spill %.1f%%%s", s.mask_drift * 100, (tonumber(s.mask_spill) or 0) * 100,
        feather and string.format("; image 1 kept outside it (%d px seam)", feather) or ""))
    end
    w('</dl>')
    if type(s.partials) == "table" and #s.partials > 0 then
      w('<div class="strip">')
      for i, f in ipairs(s.partials) do
        w('<figure style="margin:0"><a href="', picture_href(s, f), '"><img src="', picture_href(s, f), '" alt="partial ',
          i - 1, '"></a><figcaption>', i - 1, '</figcaption></figure>')
      end
      w('</div>')
    end
    w('</div></article>\n')
  end
  w('</div></section>\n<footer>Pictures are linked by relative path: keep this page beside its folder.</footer>',
    '</main><script>', SCRIPT, '</script></body></html>\n')
  return table.concat(h)
end

-- write(dir, html_path [, title [, names]]) -> html_path | nil, message.
-- save(html_path, page [, overwrite]) -> html_path | nil, message: the page
-- written (files.lua), replacing only a contact sheet (one that carries
-- GENERATOR) unless overwrite.
function M.save(html_path, page, overwrite)
  local ok, err = files.run { overwrite = overwrite }:write(html_path, page, function(p)
    local old = core.read_file(p, 16777216)
    return old ~= nil and old:find(GENERATOR, 1, true) ~= nil
  end)
  if not ok then return nil, err.message end
  return html_path
end

-- With names (a set of step names), only those steps: one run's.
function M.write(dir, html_path, title, names, overwrite)
  local steps = M.steps(dir)
  if names then
    local kept = {}
    for _, s in ipairs(steps) do if names[s.step] then kept[#kept + 1] = s end end
    steps = kept
  end
  local html_dir = html_path:match("^(.*)/[^/]*$") or "."
  local ok, msg = M.save(html_path, M.render(steps, html_dir, title or basename(dir)), overwrite)
  if not ok then return nil, msg end
  return html_path, steps
end

return M
