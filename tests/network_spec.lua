-- The real network: HTTPS through nghttpx (a TLS and HTTP/2 front of the
-- emulator, with a certificate authority made by openssl for the test) and
-- a forward proxy (tinyproxy). Skipped, and counted, where they are missing.
local H = require "helpers"
local N = require "net"
local imgedit = require "imgedit"

local missing = N.missing()

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

if missing then
  describe("the real network", function()
    it("runs against nghttpx and tinyproxy", function() pending("needs the Debian packages " .. missing) end)
  end)
  return
end

describe("the real network", function()
  local emu, dir, certs, front
  H.world(function(e, d) emu, dir = e, d end)

  lazy_setup(function()
    certs = N.make_ca(dir)
    front = N.nghttpx(dir, { backend = emu.port, cert = certs.cert, key = certs.key })
  end)
  lazy_teardown(function() if front then front:stop() end end)

  -- proxy = "": this machine's own proxy variables stay out of these tests.
  local function client(opts)
    local o = { base_url = front.url, api_key = emu.key, model = "gpt-image-2-all", retry_base = 0.01, proxy = "" }
    for k, v in pairs(opts or {}) do o[k] = v end
    return imgedit.new(o)
  end
  local function edit(c)
    return c:edit { prompt = "tls", images = { H.write(dir .. "/in.png", H.png(64, 64)) }, size = "64x64",
      response_format = "b64_json" }
  end

  describe("HTTPS", function()
    it("edits with the caller's CA file", function()
      assert.matches("^https://127%.0%.0%.1:%d+/v1$", front.url) -- verified by address, no name looked up
      local img = assert(edit(client { ca_file = certs.ca }))
      assert.are.equal("png", img.format)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("edits with the caller's CA folder (hashed as openssl rehash makes it)", function()
      local cas = dir .. "/cas"
      assert.is_true(H.ok("mkdir -p '" .. cas .. "' && cp '" .. certs.ca .. "' '" .. cas .. "/' && openssl rehash '"
        .. cas .. "' >/dev/null 2>&1"))
      assert(edit(client { ca_path = cas }))
    end)

    it("refuses a server whose CA it does not know, saying so, and sends nothing", function()
      local img, err = edit(client())
      assert.is_nil(img)
      assert.are.equal("network", err.kind)
      assert.are.equal("unknown_ca", err.tls)
      assert.matches("cannot trust 127%.0%.0%.1:%d+ over TLS: its certificate is signed by an unknown certificate"
        .. " authority", err.message)
      assert.matches("ca_file", err.message)
      assert.is_false(err.retryable)
      assert.are.equal(1, err.attempts)
      assert.are.equal(0, #H.api_requests(emu))
    end)

    it("refuses a certificate that is not for the host name", function()
      local other = N.nghttpx(dir, { backend = emu.port, cert = certs.other, key = certs.key })
      local img, err = edit(client { ca_file = certs.ca, base_url = other.url })
      other:stop()
      assert.is_nil(img)
      assert.are.equal("network", err.kind)
      assert.are.equal("host_mismatch", err.tls)
      assert.matches("cannot trust 127%.0%.0%.1:%d+ over TLS: its certificate is not for this host name", err.message)
      assert.are.equal(0, #H.api_requests(emu))
    end)

    it("refuses an expired certificate", function()
      local old = N.nghttpx(dir, { backend = emu.port, cert = certs.expired, key = certs.key })
      local img, err = edit(client { ca_file = certs.ca, base_url = old.url })
      old:stop()
      assert.is_nil(img)
      assert.are.equal("expired", err.tls)
      assert.matches("its certificate has expired", err.message)
      assert.are.equal(0, #H.api_requests(emu))
    end)

    it("takes --ca-file and --proxy on the command line", function()
      local proxy = N.tinyproxy(dir)
      local out = dir .. "/cli.png"
      local p = io.popen("env -u IMGEDIT_API_KEY -u IMGEDIT_BASE_URL LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='"
        .. H.BUILD .. "/?.so;;' IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL=" .. front.url .. " " .. H.LUA
        .. " bin/imgedit generate -q --model gpt-image-2-all --size 64x64 --response-format b64_json -p cli -o '"
        .. out .. "' --ca-file '" .. certs.ca .. "' --proxy " .. proxy.url .. " 2>&1; echo exit=$?")
      local text = p:read("*a")
      p:close()
      proxy:stop()
      assert.matches("exit=0", text)
      assert.is_true(H.exists(out))
      assert.matches("CONNECT 127.0.0.1:" .. front.port, proxy:log())
      p = io.popen("env -u IMGEDIT_API_KEY LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;' "
        .. "IMGEDIT_API_KEY=k IMGEDIT_BASE_URL=" .. front.url .. " " .. H.LUA .. " bin/imgedit generate -p x -o '"
        .. dir .. "/no.png' --ca-file '" .. dir .. "/none.pem' 2>&1; echo exit=$?")
      text = p:read("*a")
      p:close()
      assert.matches("%-%-ca%-file: .*none%.pem: No such file or directory", text)
      assert.matches("exit=3", text)
      -- the hint names the flags
      p = io.popen("env -u IMGEDIT_API_KEY LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;' "
        .. "IMGEDIT_API_KEY=k IMGEDIT_BASE_URL=" .. front.url .. " " .. H.LUA .. " bin/imgedit generate -q -p x -o '"
        .. dir .. "/no.png' --proxy '' 2>&1; echo exit=$?")
      text = p:read("*a")
      p:close()
      assert.matches("unknown certificate authority", text)
      assert.matches("give its CA with %-%-ca%-file or %-%-ca%-path", text)
      assert.matches("exit=6", text)
    end)

    it("checks the CA options where they are given", function()
      assert.has_error(function() client { ca_file = dir .. "/none.pem" } end,
        "bad option 'ca_file' (a readable PEM file of certificates expected, got \"" .. dir .. "/none.pem\")")
      assert.has_error(function() client { ca_file = H.write(dir .. "/empty.pem", "") } end)
      assert.has_error(function() client { ca_file = certs.key } end) -- a key, no certificate
      assert.has_error(function() client { ca_file = dir } end)
      assert.has_error(function() client { ca_path = certs.ca } end)
      assert.has_error(function() client { proxy = "ftp://x" } end)
      assert.has_error(function() client { prox = "http://x" } end, "unknown option 'prox' to imgedit.new"
        .. " (did you mean 'proxy'?)")
    end)
  end)

  describe("mistakes", function()
    it("an https url for a plain http server says so", function()
      -- The emulator answers the TLS hello with a plain-text 400 and closes;
      -- now and then the close's reset overtakes that answer and only a bare
      -- handshake failure is seen. A few tries make sure the answer is read.
      local img, err
      for _ = 1, 5 do
        img, err = edit(client { base_url = emu.url:gsub("^http:", "https:") })
        assert.is_nil(img)
        assert.are.equal("network", err.kind)
        if err.tls == "not_tls" then break end
        assert.are.equal("handshake", err.tls)
      end
      assert.are.equal("not_tls", err.tls)
      assert.matches("does not speak TLS on this port", err.message)
      assert.are.equal(0, #H.api_requests(emu))
    end)

    it("a proxy that cannot be reached, or refuses the tunnel, is named as the proxy, and not retried", function()
      local dead = "http://127.0.0.1:" .. N.free_port()
      local img, err = edit(client { ca_file = certs.ca, proxy = dead })
      assert.is_nil(img)
      assert.are.equal("network", err.kind)
      assert.matches("the proxy could not be reached", err.message)
      assert.are.equal(1, err.attempts)
      -- tinyproxy allowed only CONNECT to another port: a 403 for this one
      local strict = N.tinyproxy(dir, { connect_port = 1 })
      img, err = edit(client { ca_file = certs.ca, proxy = strict.url })
      strict:stop()
      assert.is_nil(img)
      assert.matches("the proxy refused the tunnel to 127%.0%.0%.1:%d+ with HTTP 403", err.message)
      assert.are.equal(1, err.attempts)
      assert.are.equal(0, #H.api_requests(emu))
    end)

    it("NO_PROXY does not bypass a proxy the caller chose", function()
      local proxy = N.tinyproxy(dir)
      local script = H.write(dir .. "/np.lua", string.format([[
        local imgedit = require "imgedit"
        local c = imgedit.new { base_url = %q, api_key = %q, model = "gpt-image-2-all", ca_file = %q, proxy = %q }
        local img, err = c:generate { prompt = "np", size = "64x64", response_format = "b64_json" }
        io.write(img and "ok" or tostring(err))
      ]], front.url, emu.key, certs.ca, proxy.url))
      local p = io.popen("env NO_PROXY=127.0.0.1 LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD
        .. "/?.so;;' " .. H.LUA .. " '" .. script .. "' 2>&1")
      local out = p:read("*a")
      p:close()
      proxy:stop()
      assert.are.equal("ok", out)
      assert.matches("CONNECT 127.0.0.1:" .. front.port, proxy:log())
    end)
  end)

  describe("HTTP/2", function()
    it("sends parallel edits as streams of one connection", function()
      local before = #lines(front:log())
      local c = client { ca_file = certs.ca }
      local input = H.write(dir .. "/par.png", H.png(64, 64))
      local jobs = {}
      for i = 1, 8 do
        jobs[i] = c:submit("edit", { prompt = "p" .. i, images = { input }, size = "64x64", response_format = "b64_json" })
      end
      for _, j in ipairs(jobs) do assert(j:wait()) end
      local log = lines(front:log())
      assert.are.equal(before + 8, #log)
      local ports = {}
      for i = before + 1, #log do
        local alpn, port, status = log[i]:match("^(%S+) (%d+) (%d+)")
        assert.are.equal("h2", alpn)
        assert.are.equal("200", status)
        ports[port] = true
      end
      local n = 0
      for _ in pairs(ports) do n = n + 1 end
      assert.are.equal(1, n, front:log())
      assert.are.equal(8, #H.api_requests(emu))
    end)
  end)

  describe("HTTP/2 streams the server refuses", function()
    it("are sent again: the server promises it did nothing with them", function()
      -- One stream at a time: the streams libcurl opens before the server's
      -- SETTINGS arrive are refused (RST_STREAM REFUSED_STREAM).
      local narrow = N.nghttpx(dir, { backend = emu.port, cert = certs.cert, key = certs.key, max_streams = 1 })
      emu:configure { latency = 0.2 }
      local c = client { ca_file = certs.ca, base_url = narrow.url, max_retries = 0 }
      local jobs = {}
      for i = 1, 8 do jobs[i] = c:submit("generate", { prompt = "r" .. i, size = "64x64", response_format = "b64_json" }) end
      for _, j in ipairs(jobs) do assert(j:wait()) end
      local log = lines(narrow:log())
      narrow:stop()
      assert.are.equal(8, #log)
      assert.are.equal(8, #H.api_requests(emu)) -- each reached the service once
    end)

    it("but not a stream lost with its connection after it was sent", function()
      local doomed = N.nghttpx(dir, { backend = emu.port, cert = certs.cert, key = certs.key })
      emu:configure { latency = 1.0 }
      local c = client { ca_file = certs.ca, base_url = doomed.url }
      local jobs = {}
      for i = 1, 4 do jobs[i] = c:submit("generate", { prompt = "d" .. i, size = "64x64", response_format = "b64_json" }) end
      local t0 = require("imgedit.core").now()
      while #H.api_requests(emu) < 4 and require("imgedit.core").now() - t0 < 5 do c:poll(0.05) end
      assert.are.equal(4, #H.api_requests(emu))
      doomed:stop() -- SIGTERM: nghttpx drops its connections at once
      for _, j in ipairs(jobs) do
        local img, err = j:wait()
        assert.is_nil(img)
        assert.is_true(err.maybe_billed, tostring(err))
      end
      assert.are.equal(4, #H.api_requests(emu)) -- none sent again
    end)
  end)

  describe("HTTP/1.1 over TLS", function()
    it("resumes the TLS session when a new connection is needed", function()
      local h1 = N.nghttpx(dir, { backend = emu.port, cert = certs.cert, key = certs.key, alpn = "http/1.1",
        keep_alive = "300ms" })
      local c = client { ca_file = certs.ca, base_url = h1.url }
      assert(c:generate { prompt = "one", size = "64x64", response_format = "b64_json" })
      H.ok("sleep 0.8") -- the front closes the idle connection
      assert(c:generate { prompt = "two", size = "64x64", response_format = "b64_json" })
      local log = lines(h1:log())
      h1:stop()
      assert.are.equal(2, #log)
      local a1, p1, _, r1 = log[1]:match("^(%S+) (%d+) (%d+) (%S+)")
      local a2, p2, _, r2 = log[2]:match("^(%S+) (%d+) (%d+) (%S+)")
      assert.are.equal("http/1.1", a1)
      assert.are.equal("http/1.1", a2)
      assert.are_not.equal(p1, p2) -- two connections
      assert.are.equal(".", r1)    -- a full handshake
      assert.are.equal("r", r2)    -- then a resumed one
    end)
  end)

  describe("a gateway that gives up", function()
    it("after the whole request went through: not sent again, and said to be maybe billed", function()
      local slow = N.nghttpx(dir, { backend = emu.port, cert = certs.cert, key = certs.key,
        backend_read_timeout = "500ms" })
      emu:configure { latency = 1.5 }
      local img, err = edit(client { ca_file = certs.ca, base_url = slow.url })
      slow:stop()
      assert.is_nil(img)
      assert.are.equal(504, err.status)
      assert.is_true(err.maybe_billed)
      assert.matches("not sent again", err.message)
      assert.are.equal(1, err.attempts)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("because the service dropped the request it read: not sent again either (HTTP 502)", function()
      emu:inject { drop = true }
      local img, err = edit(client { ca_file = certs.ca })
      assert.is_nil(img)
      assert.are.equal(502, err.status)
      assert.is_true(err.maybe_billed)
      assert.are.equal(1, err.attempts)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("is tried again when the caller opts in with retry_unanswered", function()
      local slow = N.nghttpx(dir, { backend = emu.port, cert = certs.cert, key = certs.key,
        backend_read_timeout = "500ms" })
      emu:configure { latency = 1.5 }
      local _, err = edit(client { ca_file = certs.ca, base_url = slow.url, retry_unanswered = true, max_retries = 1 })
      slow:stop()
      assert.are.equal(2, err.attempts)
      assert.are.equal(2, #H.api_requests(emu))
    end)
  end)

  describe("a forward proxy", function()
    local proxy
    lazy_setup(function() proxy = N.tinyproxy(dir) end)
    lazy_teardown(function() if proxy then proxy:stop() end end)

    it("carries an https edit through CONNECT", function()
      assert(edit(client { ca_file = certs.ca, proxy = proxy.url }))
      assert.matches("CONNECT 127.0.0.1:" .. front.port, proxy:log())
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("is taken from HTTPS_PROXY, and NO_PROXY still works", function()
      local function child(env)
        local script = H.write(dir .. "/child.lua", string.format([[
          local imgedit = require "imgedit"
          local c = imgedit.new { base_url = %q, api_key = %q, model = "gpt-image-2-all", ca_file = %q, max_retries = 0 }
          local img, err = c:generate { prompt = "env", size = "64x64", response_format = "b64_json" }
          io.write(img and "ok" or tostring(err))
        ]], front.url, emu.key, certs.ca))
        local p = io.popen("env -u https_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY -u no_proxy -u NO_PROXY " .. env .. " LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='"
          .. H.BUILD .. "/?.so;;' " .. H.LUA .. " '" .. script .. "' 2>&1")
        local out = p:read("*a")
        p:close()
        return out
      end
      local seen = select(2, proxy:log():gsub("CONNECT 127%.0%.0%.1:", ""))
      assert.are.equal("ok", child("HTTPS_PROXY=" .. proxy.url))
      assert.are.equal(seen + 1, select(2, proxy:log():gsub("CONNECT 127%.0%.0%.1:", "")))
      -- a dead proxy, bypassed for the address
      local dead = "http://127.0.0.1:" .. N.free_port()
      assert.are.equal("ok", child("HTTPS_PROXY=" .. dead .. " NO_PROXY=127.0.0.1"))
      assert.matches("network", child("HTTPS_PROXY=" .. dead))
    end)

    it("is not used with proxy = \"\", whatever the environment says", function()
      local seen = select(2, proxy:log():gsub("CONNECT 127%.0%.0%.1:", ""))
      assert(edit(client { ca_file = certs.ca, proxy = "" }))
      assert.are.equal(seen, select(2, proxy:log():gsub("CONNECT 127%.0%.0%.1:", "")))
    end)
  end)
end)

-- The tests above reach their servers by address, so that they pass on a
-- machine that cannot resolve localhost (no /etc/hosts). Here the TLS
-- front's and the proxy's tests run again where it cannot: in a private
-- mount namespace (as root) with an empty /etc/hosts and files the only
-- source of host names.
describe("the real network, on a machine with an empty /etc/hosts", function()
  it("still passes the TLS front's and the forward proxy's tests", function()
    local dir = H.tmpdir()
    H.write(dir .. "/hosts", "")
    H.write(dir .. "/nsswitch.conf", "hosts: files\n")
    -- a bind in a namespace of its own: what this needs, and touches nothing outside
    if not H.ok("unshare -m sh -c 'mount --bind \"$0\" \"$0\"' '" .. dir .. "/hosts' >/dev/null 2>&1") then
      H.rmtree(dir)
      pending("needs root, to hide /etc/hosts in a private mount namespace (unshare -m, mount --bind)")
      return
    end
    local function hosts()
      local f = io.open("/etc/hosts", "rb")
      local s = f and f:read("*a")
      if f then f:close() end
      return s
    end
    local before = hosts()
    local script = H.write(dir .. "/run.sh", table.concat({
      "set -e",
      "for f in hosts nsswitch.conf; do [ ! -e /etc/$f ] || mount --bind '" .. dir .. "'/$f /etc/$f; done",
      "if getent hosts localhost >/dev/null; then echo 'localhost still resolves'; exit 1; fi",
      "echo 'localhost does not resolve'",
      H.CHILD .. H.LUA .. " /usr/bin/busted -o tests/summary.lua --filter='the real network HTTPS'"
        .. " --filter='a forward proxy' --filter='NO_PROXY' --filter-out='empty /etc/hosts' tests/network_spec.lua",
      "" }, "\n"))
    local out, code = H.sh("unshare -m sh '" .. script .. "'")
    H.rmtree(dir)
    assert.matches("^localhost does not resolve\n", out)
    assert.are.equal(0, code, out)
    local passed, failed, skipped = out:match("\n(%d+) passed, (%d+) failed, (%d+) skipped\n$")
    assert.are.same({ "0", "0" }, { failed, skipped }, out)
    assert.is_true(tonumber(passed) >= 10, out) -- HTTPS, the forward proxy, NO_PROXY
    assert.are.equal(before, hosts()) -- the bind stayed in its namespace
  end)

  it("is skipped, saying why, for a user who may not bind", function()
    local nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups "
    if not H.ok(nobody .. "test -r tests/network_spec.lua -a -r " .. H.BUILD .. "/imgedit/core.so 2>/dev/null") then
      pending("needs root and setpriv (util-linux), and this checkout readable by the user nobody")
      return
    end
    local out = H.sh(nobody .. H.CHILD .. H.LUA .. " /usr/bin/busted -o tests/summary.lua --filter='empty /etc/hosts'"
      .. " --filter-out='saying why' tests/network_spec.lua")
    assert.truthy(out:find("\nSKIP: the real network, on a machine with an empty /etc/hosts still passes the TLS front's"
      .. " and the forward proxy's tests\n  tests/network_spec.lua:%d+: needs root, to hide /etc/hosts"), out)
    assert.matches("\n0 passed, 0 failed, 1 skipped\n$", out)
  end)
end)
