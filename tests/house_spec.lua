-- The house: what the build leaves behind and what each emulator is given.
local H = require "helpers"

-- A child interpreter on the ordinary build of this Lua (the sanitizer
-- build needs its runtime preloaded, which children do not get).
local CHILD = "LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;' " .. H.LUA

describe("the house", function()
  it("gives every emulator its own key, in every process and on every Lua", function()
    local keys = {}
    for i = 1, 2 do
      local p = io.popen(CHILD .. " -e 'local e = require(\"imgedit.emulator\").start{} io.write(e.key) e:stop()'")
      keys[i] = p:read("*a")
      p:close()
      assert.matches("^sk%-emu%-%x+$", keys[i])
    end
    assert.are_not.equal(keys[1], keys[2])
    local a, b = H.emulator(), H.emulator()
    assert.are_not.equal(a.key, b.key)
    a:stop()
    b:stop()
  end)

  it("tracks nothing that is built: make clean leaves git status clean", function()
    local dir = H.tmpdir()
    -- a copy of the tracked files, built and cleaned on its own
    assert.is_true(H.ok("git ls-files -z | xargs -0 cp --parents -t '" .. dir .. "' && cd '" .. dir
      .. "' && git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm t"))
    assert.is_true(H.ok("cd '" .. dir .. "' && make --no-print-directory all " .. (os.getenv("IMGEDIT_TEST_MAKEVARS") or "")
      .. " >/dev/null 2>&1 && make --no-print-directory clean >/dev/null"))
    local p = io.popen("cd '" .. dir .. "' && git status --porcelain")
    local out = p:read("*a")
    p:close()
    assert.are.equal("", out)
    H.rmtree(dir)
  end)

  it("builds the client alone where libmicrohttpd is absent", function()
    local dir = H.tmpdir()
    -- pkg-config that does not know libmicrohttpd, and the sources alone
    H.write(dir .. "/pkg-config", "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = libmicrohttpd ] && exit 1; done\n"
      .. "exec pkg-config \"$@\"\n")
    assert.is_true(H.ok("chmod +x '" .. dir .. "/pkg-config' && mkdir '" .. dir .. "/src' && cp -r src lua bin Makefile '"
      .. dir .. "/src'"))
    local p = io.popen("cd '" .. dir .. "/src' && make --no-print-directory PKG_CONFIG='" .. dir .. "/pkg-config' "
      .. (os.getenv("IMGEDIT_TEST_MAKEVARS") or ""):gsub("BUILD=%S+", "") .. " all 2>&1; echo exit=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("exit=0", out)
    assert.matches("libmicrohttpd not found: built the client only", out)
    assert.is_true(H.exists(dir .. "/src/" .. H.BUILD .. "/imgedit/core.so"))
    assert.is_false(H.exists(dir .. "/src/" .. H.BUILD .. "/imgedit/emulator/core.so"))
    -- the client works there; asking for the emulator says what is missing
    p = io.popen("cd '" .. dir .. "/src' && LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;' " .. H.LUA
      .. " -e 'assert(require(\"imgedit\").new{api_key=\"k\"}) local ok, e = pcall(require, \"imgedit.emulator\")"
      .. " io.write(tostring(ok), \" \", e)' 2>&1")
    out = p:read("*a")
    p:close()
    assert.matches("^false imgedit.emulator is not built %(it needs libmicrohttpd%-dev", out)
    H.rmtree(dir)
  end)

  it("keeps the emulator's C part to start, stop and calling its service", function()
    local ecore = require "imgedit.emulator.core"
    local names = {}
    for k in pairs(ecore) do names[#names + 1] = k end
    table.sort(names)
    assert.are.same({ "_compose", "start" }, names)
    local h = assert(ecore.start("{}", 0, 0, false))
    local methods = {}
    for k in pairs(getmetatable(h).__index) do methods[#methods + 1] = k end
    table.sort(methods)
    assert.are.same({ "call", "in_flight", "ports", "reset_peak", "stop", "stopped" }, methods)
    assert.matches("^sk%-emu%-", h:call("key"))
    assert.has_error(function() h:call("no_such_function") end)
    h:stop()
    h:stop()
    assert.is_true(h:stopped())
    assert.has_error(function() h:call("key") end, "attempt to use a stopped emulator")
  end)

  it("checks the emulator's options, naming a misspelt one", function()
    local emulator = require "imgedit.emulator"
    assert.has_error(function() emulator.start { latancy = 1 } end,
      "unknown option 'latancy' to imgedit.emulator.start (did you mean 'latency'?)")
    assert.has_error(function() emulator.start { port = 70000 } end)
    assert.has_error(function() emulator.start { latency = "1" } end)
    local emu = H.emulator()
    assert.has_error(function() emu:configure { port = 1 } end)
    assert.has_error(function() emu:inject({}, 5) end, "bad argument #2 to 'inject' (table expected, got number)")
    emu:configure { latency = 0, key = "sk-mine" }
    assert.are.equal("sk-mine", emu.key)
    emu:stop()
    assert.is_nil(emu.url)
  end)

  it("keeps an injected status a whole number on every Lua", function()
    local emu = H.emulator()
    emu:inject { status = 503, html = true }
    local m = require("imgedit.core").multi()
    local t = m:start { url = emu.url .. "/images/generations", body = "{}", timeout = 5 }
    while not t:done() do m:perform(0.05) end
    local res = t:result()
    t:close()
    m:close()
    assert.are.equal(503, res.status)
    assert.matches("<title>503 Service Unavailable</title>", res.body, 1, true)
    emu:stop()
  end)

  it("marks what finished and gives the time in one perform, and take() reads and closes", function()
    local core = require "imgedit.core"
    local emu = H.emulator()
    local m = core.multi()
    local url = emu.url .. "/images/generations"
    local t = m:start({ url = url, body = "{}", timeout = 5 }, "an extra argument, ignored")
    assert.matches("^imgedit.transfer", tostring(t))
    local forgotten = m:start { url = url, body = "{}", timeout = 5 } -- dropped: never handed back
    forgotten = nil -- luacheck: ignore
    collectgarbage()
    local finished, count, now = {}, 0, nil
    for _ = 1, 100 do
      local running, at, n = m:perform(0.1, finished)
      assert.is_number(running)
      now, count = at, count + n
      if count >= 1 then break end
    end
    assert.are.equal(1, count) -- the collected one left the multi with its object
    local marked = {}
    for k, v in pairs(finished) do marked[#marked + 1] = k assert.is_true(v) end
    assert.are.same({ t }, marked)
    assert.is_true(math.abs(now - core.now()) < 1)
    local res = t:take()
    assert.are.equal(401, res.status) -- no key: the emulator's answer, read in full
    assert.has_error(function() t:result() end)
    assert.has_error(function() m:perform(0, 5) end)
    m:close()
    emu:stop()
  end)

  it("keeps test hooks out of the production module", function()
    assert.is_nil(require("imgedit.core").sse_parse)
    assert.is_function(require("imgedit_test.sse").parse)
  end)

  it("clips mask shapes at any coordinates, without overflow", function()
    local core = require "imgedit.core"
    local big = math.maxinteger or 2 ^ 62
    local small = math.mininteger or -2 ^ 62
    for _, case in ipairs {
      { { x = big, y = big, w = big, h = big }, 0 }, { { x = small, y = small, w = big, h = big }, 0 },
      { { x = -2, y = -2, w = big, h = big }, 16 }, { { x = 1, y = 1, w = 2, h = 2 }, 4 },
      { { x = small, y = 0, w = 3, h = 3 }, 0 }, { { x = 3, y = 3, w = big, h = big }, 1 },
    } do
      local m = core.mask_shapes(4, 4, { case[1] })
      assert.are.equal(64, #m)
      local clear = core.mask_stats(m)
      assert.are.equal(case[2], clear, string.format("%s,%s %sx%s", case[1].x, case[1].y, case[1].w, case[1].h))
    end
  end)

  it("answers a fault whose headers table is a list, without failing itself", function()
    local emu = H.emulator()
    emu:inject { status = 400, message = "mine", headers = { "not a header" } }
    local _, err = H.client(emu, { max_retries = 0, model = "gpt-image-2-all" }):generate(H.small())
    assert.are.equal(400, err.status)
    assert.are.equal("mine", err.message)
    emu:stop()
  end)

  it("escapes the message of a failing service as JSON must", function()
    local emu = H.emulator()
    local msg = 'a "quote", a back\\slash, a new\nline, a tab\t and \1'
    emu:inject { fail = msg }
    local _, err = H.client(emu, { max_retries = 0, model = "gpt-image-2-all" }):generate(H.small())
    assert.are.equal("server", err.kind)
    assert.are.equal(500, err.status)
    assert.are.equal("emulator failure: " .. msg, err.message)
    emu:stop()
  end)

  it("saves files with the permissions the umask gives", function()
    local dir = H.tmpdir()
    for _, case in ipairs { { "077", "600" }, { "022", "644" }, { "002", "664" } } do
      local path = dir .. "/f" .. case[1] .. ".png"
      assert.is_true(H.ok("umask " .. case[1] .. " && " .. CHILD .. " -e 'assert(require(\"imgedit.core\").write_atomic(\""
        .. path .. "\", \"x\"))'"))
      local p = io.popen("stat -c %a '" .. path .. "'")
      assert.are.equal(case[2], p:read("*l"))
      p:close()
    end
    H.rmtree(dir)
  end)

  -- busted with this suite's output handler, run in dir (or here) on this
  -- Lua and the ordinary build, with env added to its environment
  local function busted(args, env, dir)
    return H.sh("L=$(command -v " .. H.LUA .. ") && S=\"$PWD/tests/summary.lua\" && cd '" .. (dir or ".") .. "' && "
      .. H.CHILD .. (env or "") .. " \"$L\" /usr/bin/busted -o \"$S\" " .. args)
  end

  it("ends the test summary with what it skipped and why, before the count", function()
    local dir = H.tmpdir()
    H.write(dir .. "/p_spec.lua", table.concat({
      'describe("outer", function()',
      '  it("passes", function() assert.is_true(true) end)',
      '  it("skips inside", function() pending("needs foo (the Debian package foo)") end)',
      '  pending("a placeholder")',
      '  local runner = false and it or pending',
      '  runner("replaced by pending", function() end)',
      'end)', "" }, "\n"))
    local out, code = busted("p_spec.lua", nil, dir)
    assert.are.equal(0, code, out)
    assert.truthy(out:find("SKIP: outer skips inside\n  p_spec.lua:3: needs foo (the Debian package foo)\n", 1, true), out)
    assert.truthy(out:find("SKIP: outer a placeholder\n  p_spec.lua:4: no reason given\n", 1, true), out)
    assert.truthy(out:find("SKIP: outer replaced by pending\n  p_spec.lua:6: no reason given\n", 1, true), out)
    -- the count stays the last line, as CI reads it
    assert.matches("\n1 passed, 0 failed, 3 skipped\n$", out)
    H.rmtree(dir)
  end)

  it("skips a spec whose programs are missing with the Debian packages that bring them", function()
    local out = busted("tests/love_spec.lua", "PATH=/nonexistent")
    assert.truthy(out:find("SKIP: the LÖVE example keeps drawing frames while an edit streams in", 1, true), out)
    assert.truthy(out:find("missing the Debian packages love, xvfb, libluajit2-5.1-dev)\n", 1, true), out)
    assert.matches("\n0 passed, 0 failed, 1 skipped\n$", out)
  end)

  -- The files of src/ and lua/, from git (what a clone has).
  local function tracked(under) return H.lines("git ls-files '" .. under .. "'") end

  it("names every file under src/ and lua/ in docs/architecture.md", function()
    local doc = H.read("docs/architecture.md")
    local files = tracked("src")
    for _, f in ipairs(tracked("lua")) do files[#files + 1] = f end
    assert.is_true(#files > 40)
    for _, f in ipairs(files) do
      local name = f:match("[^/]+$")
      assert.truthy(doc:find("`" .. name .. "`", 1, true) or doc:find(f, 1, true), f .. " is not in docs/architecture.md")
    end
  end)

  it("has no module that requires another in a cycle, however deep or lazy the require", function()
    local graph, names = {}, {}
    for _, f in ipairs(tracked("lua")) do
      local mod = f:gsub("^lua/", ""):gsub("/init%.lua$", ""):gsub("%.lua$", ""):gsub("/", ".")
      names[#names + 1] = mod
      graph[mod] = {}
      for dep in H.read(f):gmatch("require%s*%(?%s*[\"']([%w_.]+)[\"']") do
        if dep:match("^imgedit") and dep ~= mod then graph[mod][dep] = true end
      end
    end
    table.sort(names)
    -- depth-first, with the path: a module met again on it closes a cycle
    local state, cycles = {}, {}
    local function visit(m, path)
      if state[m] == "done" or not graph[m] then return end
      if state[m] == "open" then
        local from
        for i, p in ipairs(path) do if p == m then from = i end end
        cycles[#cycles + 1] = table.concat(path, " -> ", from) .. " -> " .. m
        return
      end
      state[m] = "open"
      path[#path + 1] = m
      local deps = {}
      for d in pairs(graph[m]) do deps[#deps + 1] = d end
      table.sort(deps)
      for _, d in ipairs(deps) do visit(d, path) end
      path[#path] = nil
      state[m] = "done"
    end
    for _, m in ipairs(names) do visit(m, {}) end
    assert.are.same({}, cycles)
    assert.truthy(graph["imgedit.client"]["imgedit.jobs"], "the walk reads the requires")
  end)
end)
