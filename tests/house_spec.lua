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
    assert.is_true(H.exists(dir .. "/src/build/imgedit/core.so"))
    assert.is_false(H.exists(dir .. "/src/build/imgedit/emulator.so"))
    H.rmtree(dir)
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
end)

