-- Real network components for the tests, started on free ports and stopped
-- by the tests: a certificate authority and certificates made with openssl,
-- nghttpx as a TLS and HTTP/2 front of the emulator, tinyproxy as a forward
-- proxy. Where a tool is missing, N.missing() names it and the tests that
-- need it are skipped (and counted as such).
local H = require "helpers"

local N = {}

local TOOLS = { openssl = "openssl", nghttpx = "nghttp2-proxy", tinyproxy = "tinyproxy" }

-- The Debian packages missing for these tests, or nil when all are there.
function N.missing()
  local miss = {}
  for cmd, pkg in pairs(TOOLS) do
    if not H.ok("command -v " .. cmd .. " >/dev/null 2>&1 || test -x /usr/sbin/" .. cmd) then miss[#miss + 1] = pkg end
  end
  table.sort(miss)
  return #miss > 0 and table.concat(miss, ", ") or nil
end

local function sh(cmd)
  assert(H.ok(cmd .. " >/dev/null 2>&1"), "failed: " .. cmd)
end

-- A port nobody listens on now: an emulator binds one, then lets it go.
function N.free_port()
  local e = assert(require("imgedit.emulator").start {})
  local p = e.port
  e:stop()
  return p
end

-- A certificate authority and, signed by it, certificates for 127.0.0.1
-- (and the name localhost): server.pem (valid now) and expired.pem (valid
-- in 2020 only); and other.pem, valid now for another host only. The tests
-- reach the servers by address: a machine without /etc/hosts may not
-- resolve localhost, and a proxy resolves the names it is given itself.
function N.make_ca(dir)
  local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  sh(string.format("cd '%s' && openssl req -x509 %s -keyout ca.key -out ca.pem -days 3 -subj '/CN=imgedit test CA'"
    .. " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign", dir, ec))
  H.write(dir .. "/ext.cnf", "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
    .. "extendedKeyUsage=serverAuth\n")
  H.write(dir .. "/other.cnf", "subjectAltName=DNS:other.invalid\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
  sh(string.format("cd '%s' && openssl req %s -keyout server.key -out server.csr -subj /CN=127.0.0.1", dir, ec))
  sh(string.format("cd '%s' && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
    .. " -out server.pem -days 2 -extfile ext.cnf", dir))
  sh(string.format("cd '%s' && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
    .. " -out other.pem -days 2 -extfile other.cnf", dir))
  -- openssl x509 cannot date a certificate in the past; openssl ca can.
  H.write(dir .. "/ca.cnf", table.concat({
    "[ca]", "default_ca = d", "[d]", "dir = " .. dir, "database = " .. dir .. "/index.txt",
    "new_certs_dir = " .. dir, "serial = " .. dir .. "/serial", "certificate = " .. dir .. "/ca.pem",
    "private_key = " .. dir .. "/ca.key", "default_md = sha256", "policy = p", "copy_extensions = none",
    "[p]", "commonName = supplied", "" }, "\n"))
  H.write(dir .. "/index.txt", "")
  H.write(dir .. "/serial", "1000\n")
  sh(string.format("cd '%s' && openssl ca -batch -notext -config ca.cnf -startdate 20200101000000Z"
    .. " -enddate 20200201000000Z -extfile ext.cnf -in server.csr -out expired.pem", dir))
  return { ca = dir .. "/ca.pem", cert = dir .. "/server.pem", key = dir .. "/server.key",
    expired = dir .. "/expired.pem", other = dir .. "/other.pem" }
end

-- Start a command in the background; its pid.
local function spawn(cmd, log)
  local p = io.popen(cmd .. " >'" .. log .. "' 2>&1 & echo $!")
  local pid = tonumber(p:read("*l"))
  p:close()
  return pid
end

-- Wait until the process pid listens on 127.0.0.1:port; fail at once if it ended.
local function wait_port(pid, port, what, log)
  for _ = 1, 200 do
    if H.ok("bash -c 'exec 3<>/dev/tcp/127.0.0.1/" .. port .. "' 2>/dev/null") then return end
    if not H.ok("kill -0 " .. pid .. " 2>/dev/null") then break end
    H.ok("sleep 0.05")
  end
  error(what .. " did not start: " .. (H.read(log) or ""))
end

local Server = {}
Server.__index = Server
function Server:stop()
  if self.pid then
    H.ok("kill " .. self.pid .. " 2>/dev/null; for i in $(seq 50); do kill -0 " .. self.pid
      .. " 2>/dev/null || exit 0; sleep 0.05; done; kill -9 " .. self.pid .. " 2>/dev/null")
    self.pid = nil
  end
end
function Server:log() return H.read(self.access) or "" end

-- nghttpx on 127.0.0.1 in front of backend_port (HTTP/1.1), TLS with the
-- given certificate. Its access log says, per request, "$alpn $remote_port
-- $status $tls_session_reused".
function N.nghttpx(dir, o)
  local port = N.free_port()
  local s = setmetatable({ port = port, access = dir .. "/access-" .. port .. ".log" }, Server)
  local args = {
    "nghttpx", "--conf=/dev/null", "-f'127.0.0.1," .. port .. "'", "-b'127.0.0.1," .. o.backend .. "'", "--workers=1", "--no-ocsp",
    "--accesslog-file='" .. s.access .. "'",
    "--accesslog-format='$alpn $remote_port $status $tls_session_reused $request'",
    "--errorlog-file='" .. dir .. "/nghttpx-" .. port .. ".err'",
    "--backend-read-timeout=" .. (o.backend_read_timeout or "60s"),
    o.alpn and ("--npn-list=" .. o.alpn) or "",
    o.keep_alive and ("--frontend-keep-alive-timeout=" .. o.keep_alive) or "",
    o.max_streams and ("--frontend-http2-max-concurrent-streams=" .. o.max_streams) or "",
    "'" .. o.key .. "'", "'" .. o.cert .. "'",
  }
  local log = dir .. "/nghttpx-" .. port .. ".out"
  s.pid = spawn(table.concat(args, " "), log)
  wait_port(s.pid, port, "nghttpx", log)
  s.url = "https://127.0.0.1:" .. port .. "/v1"
  return s
end

-- tinyproxy on 127.0.0.1, any CONNECT port allowed (or only o.connect_port);
-- its log names each request. o.basic_auth = "user password": it wants them.
function N.tinyproxy(dir, o)
  local port = N.free_port()
  local s = setmetatable({ port = port, access = dir .. "/tinyproxy-" .. port .. ".log" }, Server)
  local conf = dir .. "/tinyproxy-" .. port .. ".conf"
  H.write(conf, table.concat({ "Port " .. port, "Listen 127.0.0.1", "Timeout 60", "Allow 127.0.0.1",
    "LogFile \"" .. s.access .. "\"", "LogLevel Info", "MaxClients 50", "DisableViaHeader Yes",
    o and o.connect_port and ("ConnectPort " .. o.connect_port) or "",
    o and o.basic_auth and ("BasicAuth " .. o.basic_auth) or "", "" }, "\n"))
  local log = dir .. "/tinyproxy-" .. port .. ".out"
  s.pid = spawn("tinyproxy -d -c '" .. conf .. "'", log)
  wait_port(s.pid, port, "tinyproxy", log)
  s.url = "http://127.0.0.1:" .. port
  return s
end

return N
