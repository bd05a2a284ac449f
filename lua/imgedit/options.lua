-- Checking option tables, shared by the client (request.lua) and the
-- emulator (emulator/init.lua), each with its own options: a value's
-- check, the error naming the option and what was given, like Lua's own
-- argument errors, and "did you mean" for a misspelt name. Pure Lua.
local compat = require "imgedit.compat"
local text = require "imgedit.text"

local M = {}

local function positive(v) return type(v) == "number" and v > 0 and v == v, "a number > 0" end
local function nonneg(v) return type(v) == "number" and v >= 0 and v == v, "a number >= 0" end
local function count(v) return compat.tointeger(v) ~= nil and v >= 0, "a whole number >= 0" end
local function is(ty) return function(v) return type(v) == ty, ty end end
M.checks = { positive = positive, nonneg = nonneg, count = count, is = is }

-- The edit distance of two short names, for "did you mean".
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

-- The known name nearest to name, if within `within` edits (default: a
-- third of the name, at least 2).
local function closest(name, known, within)
  local best, best_d
  for k in pairs(known) do
    local d = distance(name, k)
    if not best_d or d < best_d or (d == best_d and k < best) then best, best_d = k, d end
  end
  if best_d and best_d <= (within or math.max(2, math.floor(#name / 3))) then return best end
end

-- check_option(name, value, checks, level): raises for a value of the wrong
-- type or range; nil is always allowed (the default applies).
function M.check_option(name, v, checks, level)
  if v == nil then return v end
  local ok, want = checks[name](v)
  if not ok then
    -- A url given is shown without its user and password (base_url, proxy).
    local got = type(v) == "number" and tostring(v) or type(v) == "string" and string.format("%q", text.redact(v))
      or type(v)
    error(string.format("bad option '%s' (%s expected, got %s)", name, want, got), level + 1)
  end
  return v
end

function M.unknown(what, k, known, level, where)
  local hint = type(k) == "string" and closest(k, known)
  error(string.format("unknown %s '%s'%s%s", what, tostring(k), where or "",
    hint and (" (did you mean '" .. hint .. "'?)") or ""), level + 1)
end

-- check_options(opts, checks, fn, level): every key of opts is one of checks
-- (name -> check) with a value it accepts; fn names the function taking them.
function M.check_options(opts, checks, fn, level)
  for k, v in pairs(opts) do
    if type(k) ~= "string" or not checks[k] then M.unknown("option", k, checks, level + 1, " to " .. fn) end
    M.check_option(k, v, checks, level + 1)
  end
end

M.closest = closest

return M
