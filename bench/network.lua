-- What 32 edits cost in connections and TLS handshakes through a real TLS
-- front (nghttpx, its certificate from a CA made for the run), over HTTP/1.1
-- and over HTTP/2: sent one after another, and all submitted at once (the
-- client runs 8 at a time). Counted from nghttpx's access log: distinct
-- client ports are connections; a handshake is full (".") or a resumed TLS
-- session ("r"). Prints JSON; {} where nghttpx or openssl is missing.
package.path = "tests/?.lua;" .. package.path
local cjson = require "cjson"
local imgedit = require "imgedit"
local H = require "helpers"
local N = require "net"

if N.missing() then
  print("{}")
  return
end

local EDITS = 32
local dir = H.tmpdir()
local certs = N.make_ca(dir)
local emu = assert(require("imgedit.emulator").start {})
local input = H.write(dir .. "/in.png", H.png(256, 256))

local function run(alpn, parallel)
  local front = N.nghttpx(dir, { backend = emu.port, cert = certs.cert, key = certs.key, alpn = alpn })
  local c = imgedit.new { base_url = front.url, api_key = emu.key, model = "gpt-image-2-all", ca_file = certs.ca,
    proxy = "" }
  local req = { prompt = "bench", images = { input }, size = "64x64", response_format = "b64_json" }
  if parallel then
    local jobs = {}
    for i = 1, EDITS do jobs[i] = c:submit("edit", req) end
    for _, j in ipairs(jobs) do assert(j:wait()) end
  else
    for _ = 1, EDITS do assert(c:edit(req)) end
  end
  c:close()
  local conns, full, resumed, lines = {}, 0, 0, 0
  for l in front:log():gmatch("[^\n]+") do
    local port, reused = l:match("^%S+ (%d+) %d+ (%S+)")
    lines = lines + 1
    if not conns[port] then
      conns[port] = true
      if reused == "r" then resumed = resumed + 1 else full = full + 1 end
    end
  end
  front:stop()
  assert(lines == EDITS, "nghttpx logged " .. lines .. " requests")
  return { connections = full + resumed, full = full, resumed = resumed }
end

local out = { edits = EDITS }
for _, proto in ipairs { { "h1", "http/1.1" }, { "h2", "h2" } } do
  out[proto[1]] = { sequential = run(proto[2], false), parallel = run(proto[2], true) }
end
emu:stop()
H.rmtree(dir)
print(cjson.encode(out))
