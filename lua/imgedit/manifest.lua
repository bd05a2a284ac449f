-- A batch's jobs: read from a manifest (JSON Lines or CSV), a Lua list, or
-- made from one prompt over pictures (files, folders, globs). Entries come
-- one at a time, so that a manifest of any length costs the memory of one
-- line; `each` may be called again for a second pass.
local core = require "imgedit.core"
local cjson = require "cjson"
local image = require "imgedit.image"
local files = require "imgedit.files"

local M = {}

-- CSV cells are text: these request fields are numbers or booleans.
local NUMBERS = { n = true, output_compression = true, partial_images = true }
local BOOLEANS = { stream = true }
local PICTURE_EXT = { png = true, jpg = true, jpeg = true, webp = true }

local function is_abs(p) return p:sub(1, 1) == "/" end

local function dirname(p)
  local d = p:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  return d == "" and "/" or d
end

-- ---- CSV (RFC 4180: quoted cells may hold commas, quotes and line breaks) ----

local function csv_row(line)
  local cells, i, n = {}, 1, #line
  while true do
    if line:sub(i, i) == '"' then
      local buf, j = {}, i + 1
      while true do
        local q = line:find('"', j, true)
        if not q then return nil, "an unclosed quote" end
        buf[#buf + 1] = line:sub(j, q - 1)
        if line:sub(q + 1, q + 1) == '"' then
          buf[#buf + 1] = '"'
          j = q + 2
        else
          i = q + 1
          break
        end
      end
      cells[#cells + 1] = table.concat(buf)
      local c = line:sub(i, i)
      if c == "," then
        i = i + 1
      elseif i > n then
        return cells
      else
        return nil, "text after a closing quote"
      end
    else
      local comma = line:find(",", i, true)
      cells[#cells + 1] = line:sub(i, (comma or n + 1) - 1)
      if not comma then return cells end
      i = comma + 1
    end
  end
end

-- A quote count that is odd means a quoted cell goes on to the next line.
local function open_quote(s)
  local _, k = s:gsub('"', "")
  return k % 2 == 1
end

-- ---- sources ----

-- Each source is a function each(fn) that calls fn(where, entry) in order
-- and returns true, or nil, message at the first unreadable line.

local function jsonl_source(path)
  return function(fn)
    local f, msg = io.open(path, "rb")
    if not f then return nil, msg end
    local lineno = 0
    for line in f:lines() do
      lineno = lineno + 1
      if lineno == 1 then line = line:gsub("^\239\187\191", "") end -- a BOM
      if line:match("%S") and not line:match("^%s*//") then
        local ok, t = pcall(cjson.decode, line)
        if not ok or type(t) ~= "table" then
          f:close()
          return nil, string.format("%s:%d: not a JSON object", path, lineno)
        end
        local stop = fn(path .. ":" .. lineno, t)
        if stop then break end
      end
    end
    f:close()
    return true
  end
end

local function csv_source(path)
  return function(fn)
    local f, msg = io.open(path, "rb")
    if not f then return nil, msg end
    local header, lineno, pending, first = nil, 0, nil, nil
    for line in f:lines() do
      lineno = lineno + 1
      line = line:gsub("\r$", "")
      if lineno == 1 then line = line:gsub("^\239\187\191", "") end
      if pending then
        line = pending .. "\n" .. line
      else
        first = lineno
      end
      if open_quote(line) then
        pending = line
      else
        pending = nil
        if line:match("%S") then
          local cells, why = csv_row(line)
          if not cells then
            f:close()
            return nil, string.format("%s:%d: %s", path, first, why)
          end
          if not header then
            header = cells
            for i, h in ipairs(header) do header[i] = h:match("^%s*(.-)%s*$") end
          else
            local t = {}
            for i, h in ipairs(header) do
              local v = cells[i]
              if h ~= "" and v ~= nil and v ~= "" then
                if NUMBERS[h] and tonumber(v) then
                  v = tonumber(v)
                elseif BOOLEANS[h] and (v == "true" or v == "false") then
                  v = v == "true"
                end
                t[h] = v
              end
            end
            -- Several pictures in one cell: separated by ";".
            if type(t.images) == "string" and t.images:find(";", 1, true) then
              local list = {}
              for p in t.images:gmatch("[^;]+") do list[#list + 1] = p:match("^%s*(.-)%s*$") end
              t.images = list
            end
            if fn(path .. ":" .. first, t) then break end
          end
        end
      end
    end
    f:close()
    if pending then return nil, string.format("%s:%d: an unclosed quote", path, first) end
    return true
  end
end

local function list_source(jobs)
  return function(fn)
    for i, t in ipairs(jobs) do
      if type(t) ~= "table" then return nil, string.format("jobs[%d]: a table expected, got %s", i, type(t)) end
      if fn("jobs[" .. i .. "]", t) then break end
    end
    return true
  end
end

-- A glob's last part as a Lua pattern: * and ? within one name.
local function glob_pattern(g)
  local p = g:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", "[^/]*"):gsub("%?", "[^/]")
  return "^" .. p .. "$"
end

-- pictures(list) -> the picture files named by paths, folders (their
-- png/jpg/webp files, sorted) and globs (in the last part of the path).
function M.pictures(list)
  local out = {}
  for _, arg in ipairs(list) do
    local st = core.stat(arg)
    if st and st.dir then
      local names = {}
      for _, e in ipairs(core.listdir(arg) or {}) do
        local ext = e.name:match("%.([%w]+)$")
        if not e.dir and ext and PICTURE_EXT[ext:lower()] and e.name:sub(1, 1) ~= "." then names[#names + 1] = e.name end
      end
      table.sort(names)
      for _, n in ipairs(names) do out[#out + 1] = files.join(arg, n) end
    elseif st then
      out[#out + 1] = arg
    elseif arg:find("[*?]") then
      local dir, pat = dirname(arg), arg:match("[^/]*$")
      local names = {}
      for _, e in ipairs(core.listdir(dir) or {}) do
        if not e.dir and e.name:match(glob_pattern(pat)) then names[#names + 1] = e.name end
      end
      table.sort(names)
      for _, n in ipairs(names) do out[#out + 1] = dir == "." and n or files.join(dir, n) end
      if #names == 0 then return nil, arg .. ": no file matches" end
    else
      return nil, arg .. ": no such file or folder"
    end
  end
  return out
end

-- A name for a job from its first picture, or its place.
local function name_of(t, where)
  local first = type(t.images) == "table" and t.images[1] or t.images
  if type(first) == "string" then
    local base = image.stem(image.basename(first)):gsub("[^%w%-_.]", "_")
    if base ~= "" then return base end
  end
  local n = where:match("(%d+)%]?$")
  return "job-" .. (n or "0")
end

local function resolve(p, base)
  if type(p) ~= "string" or base == nil or is_abs(p) then return p end
  return base == "." and p or files.join(base, p)
end

local function type_of(v) return v == cjson.null and "null" or type(v) end

-- Whether v cannot be a picture of a job: a path, or from Lua (no `base`)
-- an Image or {bytes=}.
local function not_a_picture(v, base)
  if type(v) == "string" then return false end
  return base ~= nil or not (type(v) == "table" and type(v.bytes) == "string")
end

-- A job, field by field: its pictures are paths (or from Lua Images), and
-- the other fields of a file's line strings, numbers or booleans.
-- -> nil | message
local function bad_field(e, line, where, base)
  local want = base and "a path" or "a path, an Image or {bytes=}"
  if e.images then
    local n = 0
    for _ in pairs(e.images) do n = n + 1 end
    if n ~= #e.images then return where .. ": images must be a list" end
    for i, p in ipairs(e.images) do
      if not_a_picture(p, base) then
        return string.format("%s: images[%d] must be %s, not %s", where, i, want, type_of(p))
      end
    end
  end
  if e.mask ~= nil and not_a_picture(e.mask, base) then
    return string.format("%s: mask must be %s, not %s", where, want, type_of(e.mask))
  end
  if not base then return nil end -- a Lua list: its options are checked as a request's
  for k, v in pairs(line) do
    if k ~= "images" and v ~= cjson.null and type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
      return string.format("%s: field '%s' must be a string, a number or a boolean, not %s", where, tostring(k), type(v))
    end
  end
end

-- normalize(t, where, base) -> entry | nil, message: the job's request with
-- its name, paths made relative to `base` (the manifest's folder).
function M.normalize(t, where, base, defaults)
  local e = {}
  for k, v in pairs(defaults or {}) do e[k] = v end
  for k, v in pairs(t) do
    if v ~= cjson.null then e[k] = v end -- a JSON null: the field is not given
  end
  if e.name == nil then e.name = name_of(e, where) end
  local named, why = files.check_name(e.name)
  if not named then
    return nil, where .. ": bad name " .. (type(e.name) == "string" and "'" .. e.name .. "'" or type(e.name))
      .. " (" .. why .. ")"
  end
  if type(e.prompt) ~= "string" or e.prompt == "" then return nil, where .. ": no prompt" end
  if type(e.images) == "string" then e.images = { e.images } end
  if e.images ~= nil and type(e.images) ~= "table" then return nil, where .. ": images must be a path or a list" end
  local bad = bad_field(e, t, where, base)
  if bad then return nil, bad end
  if e.images then
    local list = {}
    for i, p in ipairs(e.images) do list[i] = resolve(p, base) end
    e.images = list
  end
  e.mask = resolve(e.mask, base)
  return e
end

-- open{manifest = path | jobs = list | prompt =, pictures = list, defaults = {}}
-- -> source | nil, message. source.each(fn) calls fn(entry, where) for each
-- job in order (fn returns true to stop); it returns true or nil, message.
function M.open(o)
  local raw, base
  if o.manifest then
    local path = o.manifest
    local f = io.open(path, "rb")
    if not f then return nil, path .. ": cannot be read" end
    local head = f:read(4096) or ""
    f:close()
    base = dirname(path)
    local is_json = path:lower():match("%.jsonl?$") or path:lower():match("%.ndjson$")
    if not is_json and not path:lower():match("%.csv$") then
      is_json = head:match("^\239?\187?\191?%s*{") ~= nil
    end
    raw = is_json and jsonl_source(path) or csv_source(path)
  elseif o.jobs then
    raw = list_source(o.jobs)
  else
    local files, msg = M.pictures(o.pictures or {})
    if not files then return nil, msg end
    if #files == 0 then return nil, "no pictures given" end
    local jobs = {}
    for i, p in ipairs(files) do jobs[i] = { images = { p }, prompt = o.prompt } end
    raw = list_source(jobs)
  end
  local src = {}
  function src.each(fn)
    local bad
    local ok, msg = raw(function(where, t)
      local e, why = M.normalize(t, where, base, o.defaults)
      if not e then
        bad = why
        return true
      end
      return fn(e, where)
    end)
    if not ok then return nil, msg end
    if bad then return nil, bad end
    return true
  end
  return src
end

return M
