-- `imgedit run` (a pipeline script, --watch, --emulate) and `imgedit
-- emulate` (the local service in the foreground).
local compat = require "imgedit.compat"
local imgedit = require "imgedit"
local C = require "imgedit.cli_common"
local EMULATE_PORT, fail, fail_err, number_opt, safe = C.EMULATE_PORT, C.fail, C.fail_err, C.number_opt, C.safe

local M = {}

local function cmd_run(a)
  local emu
  if a.emulate then
    -- One port from run to run, when free: the pipeline's cache keys name
    -- the service's url, so a new port each run would never hit the cache.
    local E = require "imgedit.emulator"
    emu = E.start { port = EMULATE_PORT } or assert(E.start {})
  end
  -- With --emulate, the script's clients go to the emulator unless it names
  -- its own service: the script's library hands the choice to imgedit.new
  -- (no global is written).
  local steer = emu and { base_url = emu.url, api_key = emu.key, provider = emu.provider } or {}
  local function new(opts)
    local o = {}
    for k, v in pairs(steer) do o[k] = v end
    for k, v in pairs(opts or {}) do o[k] = v end
    return imgedit.new(o)
  end
  -- pipeline{} and batch{} without a client get one of those
  local function with_client(opts)
    if type(opts) ~= "table" or opts.client ~= nil or not emu then return opts end
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.client = new { max_concurrency = o.concurrency }
    return o
  end
  local script_arg = { [0] = a.script }
  for i, v in ipairs(a.args) do script_arg[i] = v end
  -- The script sees the library as `imgedit` and its own arguments as `arg`.
  -- assert passes an error table through on every Lua (5.1's wants a string).
  local function assert_any(v, msg, ...)
    if not v then error(msg == nil and "assertion failed!" or msg, 2) end
    return v, msg, ...
  end
  -- One run of the script: ok, err, and the pipelines it made (for --watch).
  local function once()
    local made = {}
    local lib = setmetatable({ new = new, pipeline = function(opts)
      local p = imgedit.pipeline(with_client(opts))
      made[#made + 1] = p
      return p
    end, batch = function(opts) return imgedit.batch(with_client(opts)) end }, { __index = imgedit })
    local env = setmetatable({ imgedit = lib, arg = script_arg, assert = assert_any }, { __index = _G })
    local chunk, lerr = compat.loadfile(a.script, env)
    if not chunk then return false, setmetatable({ load = lerr }, { __tostring = function() return lerr end }), made end
    local ok, e = pcall(chunk, compat.unpack(script_arg))
    return ok, e, made
  end
  local ok, e
  if a.watch then
    local runs = a.runs and compat.tointeger(number_opt(a.runs, "runs"))
    -- The lines name steps, files and errors: made safe here, where they are printed.
    ok, e = require("imgedit.watch").loop { script = a.script, run = once, runs = runs, out = function(line)
      io.stdout:write(safe(line), "\n")
      io.stdout:flush()
    end }
  else
    ok, e = once()
  end
  if emu then emu:stop() end
  if ok then return 0 end
  if type(e) == "table" and e.load then return fail(3, e.load) end
  if imgedit.is_error(e) then return fail_err(e) end
  return fail(1, tostring(e))
end

local function cmd_emulate(a)
  local started, emu, err = pcall(require("imgedit.emulator").start, {
    port = compat.tointeger(number_opt(a.port, "port")), latency = number_opt(a.latency, "latency"), sink = a.sink,
    provider = a.provider, batch_seconds = a.batch_seconds and number_opt(a.batch_seconds, "batch-seconds"),
  })
  if not started then error({ usage = (tostring(emu):gsub("^[^:]*:%d+: ", "")) }) end
  if not emu then return fail(1, err) end
  print("url " .. safe(emu.url))
  print("key " .. emu.key)
  print("provider " .. emu.provider .. " (a client on 127.0.0.1 needs --provider " .. emu.provider .. ")")
  if emu.provider == "azure" then
    print(string.format("export AZURE_OPENAI_ENDPOINT=%s AZURE_OPENAI_API_KEY=%s", emu.url, emu.key))
  end
  print(string.format("export IMGEDIT_BASE_URL=%s IMGEDIT_API_KEY=%s IMGEDIT_PROVIDER=%s", emu.url, emu.key,
    emu.provider))
  io.stdout:flush()
  -- Serve until interrupted; the emulator runs in its own threads.
  local sleeper = imgedit.new { base_url = emu.url, api_key = emu.key }
  while true do sleeper:poll(3600) end
end

M.run, M.emulate = cmd_run, cmd_emulate

return M
