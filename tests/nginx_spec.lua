-- examples/nginx in the real host: nginx with its Lua module (Debian's
-- nginx-core and libnginx-mod-http-lua) runs edits from a worker's handler
-- through imgedit.ngx, and the same single worker keeps answering other
-- requests at once while the service thinks. nginx's Lua is LuaJIT, so this
-- uses the LuaJIT build of the C modules (made here if missing). Everything
-- nginx writes goes to a temporary prefix; curl, the command line, talks
-- to it.
local H = require "helpers"
local core = require "imgedit.core"
local cjson = require "cjson"

local MODULE_DIRS = { "/usr/lib/nginx/modules", "/usr/share/nginx/modules" }

local function module_path(name)
  for _, d in ipairs(MODULE_DIRS) do
    if H.exists(d .. "/" .. name) then return d .. "/" .. name end
  end
end

local function nginx_bin()
  local found = H.lines("command -v nginx 2>/dev/null")[1]
  if found then return found end
  if H.ok("test -x /usr/sbin/nginx") then return "/usr/sbin/nginx" end
end

local function sleep(s) os.execute("sleep " .. s) end

-- wait_for(f, secs) -> f()'s first true value, or nil after secs.
local function wait_for(f, secs)
  local t0 = core.now()
  repeat
    local v = f()
    if v then return v end
    sleep(0.02)
  until core.now() - t0 > secs
end

local function free_port()
  local ok, socket = pcall(require, "socket")
  if ok then
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
  end
  math.randomseed(os.time() + math.floor(core.now() * 1000) % 100000)
  return 20000 + math.random(0, 30000)
end

local function alive(pid) return pid and H.ok("kill -0 " .. pid .. " 2>/dev/null") end

local function median(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end

describe("nginx with imgedit.ngx (examples/nginx)", function()
  local NGINX, NDK, LUA_MOD = nginx_bin(), module_path("ndk_http_module.so"), module_path("ngx_http_lua_module.so")
  -- what is missing, by its Debian package, so the skip says what to install
  local missing = {}
  if not NGINX then missing[#missing + 1] = "nginx-core" end
  if not LUA_MOD then missing[#missing + 1] = "libnginx-mod-http-lua" end
  if not NDK then missing[#missing + 1] = "libnginx-mod-http-ndk" end
  if not H.ok("command -v curl >/dev/null 2>&1") then missing[#missing + 1] = "curl" end
  if not H.ok("pkg-config --exists luajit 2>/dev/null") then missing[#missing + 1] = "libluajit-5.1-dev" end
  if #missing > 0 then
    it("serves edits without blocking its worker", function()
      pending("needs nginx with its Lua module, curl and LuaJIT's headers (missing the Debian packages "
        .. table.concat(missing, ", ") .. ")")
    end)
    return
  end

  local repo = H.lines("pwd")[1]
  local emu, dir, base, master
  local pics = {}

  -- The example's configuration, with its paths moved into the temporary
  -- prefix and the repository, the modules where this system keeps them,
  -- and a free port. Each change must find its target.
  local function config(port)
    local conf = H.read("examples/nginx/nginx.conf")
    local function sub(from, to)
      local n
      conf, n = conf:gsub(from:gsub("%p", "%%%0"), (to:gsub("%%", "%%%%")))
      assert(n > 0, "examples/nginx/nginx.conf has no " .. from)
    end
    sub("/usr/lib/nginx/modules/ndk_http_module.so", NDK)
    sub("/usr/lib/nginx/modules/ngx_http_lua_module.so", LUA_MOD)
    sub("error_log stderr notice;", "error_log " .. dir .. "/error.log info;")
    sub("build/nginx/", dir .. "/")
    sub("$prefix/", repo .. "/")
    sub("examples/nginx/edit.lua", repo .. "/examples/nginx/edit.lua")
    sub("listen 127.0.0.1:8080;", "listen 127.0.0.1:" .. port .. ";")
    H.write(dir .. "/nginx.conf", conf)
  end

  local function log() return H.exists(dir .. "/error.log") and H.read(dir .. "/error.log") or "(no error.log)" end

  local function stop()
    if not alive(master) then return end
    os.execute("kill -QUIT " .. master) -- graceful: the worker ends its requests, then its client
    if not wait_for(function() return not alive(master) end, 10) then
      os.execute("kill -TERM " .. master)
      if not wait_for(function() return not alive(master) end, 5) then
        os.execute("pkill -KILL -P " .. master .. "; kill -KILL " .. master) -- its worker, then itself
      end
    end
    master = nil
  end

  local function start()
    for _ = 1, 3 do
      local port = free_port()
      config(port)
      os.remove(dir .. "/error.log")
      local p = io.popen("env IMGEDIT_API_KEY='" .. emu.key .. "' IMGEDIT_BASE_URL='" .. emu.url
        .. "' IMGEDIT_NGINX_IMAGES='" .. pics.b .. "' " .. NGINX .. " -p '" .. dir .. "/' -c '" .. dir
        .. "/nginx.conf' -g 'master_process on;' >'" .. dir .. "/stdout.log' 2>&1 & echo $!")
      master = p:read("*l")
      p:close()
      base = "http://127.0.0.1:" .. port
      local up = wait_for(function()
        if not alive(master) then return "died" end
        local code = H.lines("curl -s -o /dev/null -w '%{http_code}' " .. base .. "/ping")[1]
        return code == "200" and "up"
      end, 15)
      if up == "up" then return end
      stop()
      if not log():find("Address already in use", 1, true) then
        error("nginx did not start:\n" .. log() .. H.read(dir .. "/stdout.log"))
      end
    end
    error("nginx found no free port:\n" .. log())
  end

  H.world(function(e, d)
    emu, dir = e, d
    -- build/luajit whatever make test was given (PORTABLE=1 and LUA_VERSION
    -- reach a child make through MAKEFLAGS and the environment)
    assert.is_true(H.ok("unset MAKEFLAGS MAKELEVEL PORTABLE LUA_VERSION LUA; make --no-print-directory LUA=luajit all >/dev/null 2>&1"))
    pics.a = H.write(dir .. "/a.png", H.png(256, 256))
    pics.b = H.write(dir .. "/b.png", H.png(128, 96))
    start()
  end, function() stop() end)

  -- edit(i, prompt): an edit of pics.a (the body) and pics.b (the server's
  -- file) in the background; its answer goes to dir/out-i, curl's status,
  -- seconds and content type to dir/edit-i.
  local function edit(i, prompt)
    os.remove(dir .. "/out-" .. i)
    os.remove(dir .. "/edit-" .. i)
    os.execute("curl -s -o '" .. dir .. "/out-" .. i .. "' -w '%{http_code} %{time_total} %{content_type};' "
      .. "--data-binary @'" .. pics.a .. "' '" .. base .. "/edit?size=1024x1024&prompt=" .. prompt .. "' >'" .. dir .. "/edit-" .. i .. "' 2>&1 &")
  end

  -- finished(i) -> status, seconds, content type, body of edit i once curl ended.
  local function finished(i, secs)
    local line = wait_for(function()
      local s = H.exists(dir .. "/edit-" .. i) and H.read(dir .. "/edit-" .. i) or ""
      return s:match(";$") and s
    end, secs or 30)
    assert.truthy(line, "edit " .. i .. " did not end")
    local code, t, ctype = line:match("^(%d+) ([%d.]+) (.-);$")
    local out = dir .. "/out-" .. i
    return tonumber(code), tonumber(t), ctype, H.exists(out) and H.read(out) or ""
  end

  -- ended(i) -> whether curl ended edit i.
  local function ended(i)
    local s = H.exists(dir .. "/edit-" .. i) and H.read(dir .. "/edit-" .. i) or ""
    return s:match(";$") ~= nil
  end

  -- pings(edits) -> how many /ping requests, sent one after another, were
  -- answered while none of the edits had ended, and their times in ms. A
  -- worker blocked on the service answers none before the edits end: the
  -- count tells, whatever the machine's speed; the times are figures.
  local function pings(edits)
    local during, lat = 0, {}
    local function waiting()
      for _, i in ipairs(edits) do if ended(i) then return false end end
      return true
    end
    while waiting() and during < 200 do
      local line = H.lines("curl -s -o /dev/null -w '%{http_code} %{time_total}' " .. base .. "/ping")[1] or ""
      local code, t = line:match("^(%d+) ([%d.]+)$")
      assert.are.equal("200", code, line)
      if not waiting() then break end
      during, lat[#lat + 1] = during + 1, tonumber(t) * 1000
    end
    return during, lat
  end

  it("keeps answering other requests while three edits wait on the service", function()
    emu:configure { latency = 2 }
    for i = 1, 3 do edit(i, "edit%20" .. i) end
    -- all three reached the service: from here the worker waits on it
    assert.truthy(wait_for(function() return emu:stats().requests >= 3 end, 10), log())
    local during, lat = pings { 1, 2, 3 }
    local secs = {}
    for i = 1, 3 do
      local code, t, ctype, bytes = finished(i)
      assert.are.equal(200, code, bytes)
      assert.are.equal("image/png", ctype)
      local info = assert(require("imgedit").inspect { bytes = bytes })
      assert.are.same({ "png", 1024, 1024 }, { info.format, info.width, info.height })
      secs[i] = t
    end
    local max = 0
    for _, v in ipairs(lat) do max = math.max(max, v) end
    if os.getenv("IMGEDIT_TEST_VERBOSE") then
      print(string.format("nginx: %d pings during 3 edits: median %.2f ms, max %.2f ms; edits took %.2f, %.2f, %.2f s",
        during, #lat > 0 and median(lat) or 0, max, secs[1], secs[2], secs[3]))
    end
    -- a worker blocked on the service answers no ping before the edits end
    assert.is_true(during >= 3, during .. " pings answered while the edits waited")
    -- each edit sent once, with both pictures: the uploaded body and the server's file
    local reqs = H.api_requests(emu)
    assert.are.equal(3, #reqs)
    local prompts = {}
    for _, r in ipairs(reqs) do
      assert.are.equal("/v1/images/edits", r.path)
      assert.are.same({ core.sha256(H.read(pics.a)), core.sha256(H.read(pics.b)) }, { r.files[1].sha256, r.files[2].sha256 })
      assert.are.equal(2, #r.files)
      prompts[#prompts + 1] = r.fields.prompt
    end
    table.sort(prompts)
    assert.are.same({ "edit 1", "edit 2", "edit 3" }, prompts)
  end)

  it("answers a connection lost after the request went out with a JSON error of kind network, sent once", function()
    emu:inject { reset = true }
    edit(1, "reset")
    local code, _, ctype, body = finished(1)
    assert.are.equal(502, code, body)
    assert.are.equal("application/json", ctype)
    local e = cjson.decode(body).error
    assert.are.equal("network", e.kind)
    assert.is_true(e.maybe_billed)
    assert.matches("not sent again", e.message)
    assert.are.equal(1, #H.api_requests(emu)) -- a resend would be paid twice
  end)

  it("retries the service's 500s in the worker, then answers a JSON error of kind server", function()
    for _ = 1, 3 do emu:inject { status = 500 } end
    edit(1, "fail")
    -- the retries' back-off is spent in the worker too: it keeps answering
    assert.truthy(wait_for(function() return emu:stats().requests >= 1 end, 10))
    local during = pings { 1 }
    assert.is_true(during >= 3, during .. " pings answered during the retries' back-off")
    local code, _, _, body = finished(1)
    assert.are.equal(502, code, body)
    local e = cjson.decode(body).error
    assert.are.same({ "server", 500 }, { e.kind, e.status })
    assert.are.equal(3, #H.api_requests(emu)) -- a 500 is not billed: sent again twice, as the rule says
  end)

  it("refuses a request the rules refuse with 400 and the field, sending nothing", function()
    edit(1, "")
    local code, _, _, body = finished(1)
    assert.are.equal(400, code, body)
    local e = cjson.decode(body).error
    assert.are.same({ "invalid_request", "prompt" }, { e.kind, e.param })
    assert.are.equal(0, #H.api_requests(emu))
  end)
end)
