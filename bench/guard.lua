-- The cost of the guard that stops libcurl from re-sending a billable
-- request by itself (a pre-request callback per send): sequential small
-- generations with the guard on and off, client CPU over interleaved rounds,
-- and the connections each needed (keep-alive must be untouched). Prints JSON.
local cjson = require "cjson"
local imgedit = require "imgedit"
local request = require "imgedit.request"

local prepare = request.prepare
local function client(emu, guard)
  request.prepare = function(...)
    local spec, fields = prepare(...)
    if spec then spec.billable = guard end
    return spec, fields
  end
  return imgedit.new { base_url = emu.url, api_key = emu.key, model = "gpt-image-2-all" }
end

local N, ROUNDS = 1000, 3
local sink = assert(require("imgedit.emulator").start { sink = true })
local cpu = { [true] = 0, [false] = 0 }
for _ = 1, ROUNDS do
  for _, guard in ipairs { true, false } do
    local c = client(sink, guard)
    local c0 = os.clock()
    for _ = 1, N do assert(c:generate { prompt = "x" }) end
    cpu[guard] = cpu[guard] + (os.clock() - c0) / ROUNDS
    c:close()
  end
end
sink:stop()

-- Connections: a logging emulator sees each request's client port.
local emu = assert(require("imgedit.emulator").start {})
local conns = {}
for _, guard in ipairs { true, false } do
  emu:clear()
  local c = client(emu, guard)
  for _ = 1, 50 do assert(c:generate { prompt = "x", size = "64x64", response_format = "b64_json" }) end
  c:close()
  local ports, n = {}, 0
  for _, r in ipairs(emu:requests()) do
    if not ports[r.client_port] then ports[r.client_port], n = true, n + 1 end
  end
  conns[guard] = n
end
emu:stop()
request.prepare = prepare
print(cjson.encode { n = N, cpu_on = cpu[true], cpu_off = cpu[false], conns_on = conns[true],
  conns_off = conns[false] })
