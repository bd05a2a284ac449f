-- imgedit.emulator: a local stand-in for the image service, for demos, tests
-- and CI with no key and no network (docs/api.md, "Emulator").
--
-- The C part (imgedit.emulator.core) serves HTTP and runs the service
-- (service.lua) in a private Lua state of its own threads; this wrapper is
-- the object users see, and speaks to that state in JSON strings, so no Lua
-- value ever crosses between the two.
local cjson = require "cjson"
local options = require "imgedit.options"

local found, core = pcall(require, "imgedit.emulator.core")
if not found then
  error("imgedit.emulator is not built (it needs libmicrohttpd-dev at build time): " .. tostring(core), 0)
end

local M = {}

local checks = options.checks
local function port(v)
  return checks.count(v) and v <= 65535, "a port number from 0 to 65535"
end

-- Settings the service takes, at start and later through configure.
local function rate(v) return type(v) == "number" and v >= 0 and v <= 1, "a number from 0 to 1" end
-- the providers the emulator plays (emulator/rules.lua)
local function provider(v) return v == "apiyi" or v == "openai" or v == "azure" or v == "compatible",
  "\"apiyi\", \"openai\", \"azure\" or \"compatible\"" end
local function whole(v) return checks.count(v) and v >= 1, "a whole number >= 1" end
local SETTINGS = { latency = checks.nonneg, key = checks.is "string", provider = provider,
  rate_limit = checks.nonneg, fail_rate = rate, reset_rate = rate, seed = checks.count,
  -- the Batch API: seconds from a batch's creation to its completion, the
  -- most lines and bytes an input file may have; time_offset moves the
  -- emulator's clock on (files expire, batches run) by that many seconds
  batch_seconds = checks.nonneg, batch_max_lines = whole, batch_max_bytes = whole,
  time_offset = checks.nonneg }
local START = { port = port, cdn_port = port, sink = checks.is "boolean" }
for k, check in pairs(SETTINGS) do START[k] = check end

local methods = {}
local Emulator = { methods = methods } -- methods: listed for the docs' check

local function h_of(self)
  return rawget(self, "_h")
end

function Emulator.__index(self, k)
  local m = methods[k]
  if m then return m end
  local h = h_of(self)
  if h:stopped() then return nil end
  local api, cdn = h:ports()
  -- Azure's base url is the resource endpoint; the others' end in /v1.
  if k == "url" then return "http://127.0.0.1:" .. api .. (rawget(self, "_azure") and "" or "/v1") end
  if k == "provider" then return rawget(self, "_provider") end
  if k == "cdn_url" then return "http://127.0.0.1:" .. cdn end
  if k == "port" then return api end
  if k == "key" then return h:call("key") end
end

function Emulator.__tostring(self)
  local h = h_of(self)
  if h:stopped() then return "imgedit.emulator (stopped)" end
  return "imgedit.emulator (" .. self.url .. ")"
end

-- stop, __close: idempotent; the C handle's own __gc stops a forgotten one.
function methods.stop(self)
  h_of(self):stop()
end
Emulator.__close = methods.stop

-- The request log: one entry per request, in arrival order.
function methods.requests(self)
  return cjson.decode(h_of(self):call("requests_json"))
end

-- {requests=, in_flight=, max_in_flight=, batch_lines_run=, batch_lines_billed=,
-- batch_usage={input_tokens=, output_tokens=, total_tokens=}, batch_price=0.5}
function methods.stats(self)
  local h = h_of(self)
  local t = cjson.decode(h:call("stats_json"))
  t.in_flight, t.max_in_flight = h:in_flight()
  return t
end

-- The Batch API's batches (each advanced to now, so reading them runs the
-- lines due) and the Files API's files (objects, no content), oldest first.
function methods.batches(self)
  return cjson.decode(h_of(self):call("batches_json"))
end

function methods.files(self)
  return cjson.decode(h_of(self):call("files_json"))
end

-- inject(fault, ...): faults for the next requests, one each, in order
-- ({batch = ...}: for the next batch created, in a queue of their own).
function methods.inject(self, ...)
  local h = h_of(self)
  for i = 1, select("#", ...) do
    local f = select(i, ...)
    if type(f) ~= "table" then
      error(string.format("bad argument #%d to 'inject' (table expected, got %s)", i, type(f)), 2)
    end
    h:call("inject_json", cjson.encode(f))
  end
end

-- clear(): forget the request log, pending faults and the in-flight peak.
function methods.clear(self)
  local h = h_of(self)
  h:call("clear")
  h:reset_peak()
end

-- configure{latency=, key=, rate_limit=, fail_rate=, reset_rate=, seed=,
-- batch_seconds=, batch_max_lines=, batch_max_bytes=, time_offset=}:
-- change settings while running (the provider is chosen at start, as its
-- urls depend on it). rate_limit: API requests a second, 429 beyond (0:
-- none); fail_rate, reset_rate: the share of API requests answered 500, or
-- read and then reset (as a lost answer); seed: their random sequence.
function methods.configure(self, opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'configure' (table expected, got " .. type(opts) .. ")", 2) end
  options.check_options(opts, SETTINGS, "configure", 2)
  if opts.provider ~= nil then error("the provider is chosen at start", 2) end
  h_of(self):call("configure_json", cjson.encode(opts))
end

-- start{port=0, cdn_port=0, latency=0, key=, sink=false} -> emulator | nil, message
function M.start(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("bad argument #1 to 'start' (table expected, got " .. type(opts) .. ")", 2) end
  options.check_options(opts, START, "imgedit.emulator.start", 2)
  local settings = {}
  for k in pairs(SETTINGS) do settings[k] = opts[k] end
  local h, err = core.start(cjson.encode(settings), opts.port or 0, opts.cdn_port or 0, opts.sink)
  if not h then return nil, err end
  local api, cdn = h:ports()
  -- The service writes url answers on its CDN: it needs to know where it is.
  h:call("configure_json", cjson.encode { api_url = "http://127.0.0.1:" .. api .. "/v1",
    cdn_url = "http://127.0.0.1:" .. cdn })
  return setmetatable({ _h = h, _provider = opts.provider or "apiyi", _azure = opts.provider == "azure" }, Emulator)
end

return M
