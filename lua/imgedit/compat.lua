-- The few things that differ between Lua 5.1/LuaJIT and 5.3/5.4, in one place.
local M = {}

M.unpack = table.unpack or unpack -- luacheck: ignore

-- An integral number as an integer (5.3+) or as itself (5.1); nil otherwise.
function M.tointeger(v)
  if type(v) ~= "number" then return nil end
  if math.tointeger then return math.tointeger(v) end
  if v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return v end
  return nil
end

function M.is_integer(v) return M.tointeger(v) ~= nil end

-- Floor division without the // operator, which 5.1 cannot parse.
function M.idiv(a, b) return math.floor(a / b) end

function M.isyieldable()
  if coroutine.isyieldable then return coroutine.isyieldable() end
  local co, main = coroutine.running()
  return co ~= nil and not main
end

-- loadfile with an environment, the 5.2+ way or through setfenv.
function M.loadfile(path, env)
  if setfenv then -- luacheck: ignore
    local f, err = loadfile(path)
    if f then setfenv(f, env) end -- luacheck: ignore
    return f, err
  end
  return loadfile(path, "t", env)
end

return M
