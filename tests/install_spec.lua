-- make install puts the Lua files, the .so files and bin/imgedit in the
-- standard layout, and the library loads from there alone.
local H = require "helpers"

describe("make install and uninstall", function()
  it("installs a tree that works on its own", function()
    local dir = H.tmpdir()
    local p = io.popen("make --no-print-directory install " .. (os.getenv("IMGEDIT_TEST_MAKEVARS") or "") .. " DESTDIR='" .. dir .. "' PREFIX=/usr/local 2>&1; echo exit=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("exit=0", out)
    for _, f in ipairs { "/usr/local/share/lua/" .. H.LUAV .. "/imgedit/init.lua", "/usr/local/share/lua/" .. H.LUAV .. "/imgedit/emulator/service.lua",
      "/usr/local/lib/lua/" .. H.LUAV .. "/imgedit/core.so", "/usr/local/lib/lua/" .. H.LUAV .. "/imgedit/emulator/core.so", "/usr/local/bin/imgedit" } do
      assert.is_true(H.exists(dir .. f), f)
    end
    -- the installed command names the interpreter it was built for
    local f = assert(io.open(dir .. "/usr/local/bin/imgedit"))
    assert.are.equal("#!/usr/bin/env " .. H.LUA, f:read("*l"))
    f:close()
    local root = dir .. "/usr/local"
    p = io.popen("cd / && LUA_PATH='" .. root .. "/share/lua/" .. H.LUAV .. "/?.lua;" .. root .. "/share/lua/" .. H.LUAV .. "/?/init.lua;;' "
      .. "LUA_CPATH='" .. root .. "/lib/lua/" .. H.LUAV .. "/?.so;;' " .. H.LUA .. " -e '"
      .. "local e = require(\"imgedit.emulator\").start{} local c = require(\"imgedit\").new{base_url=e.url, api_key=e.key} "
      .. "local img = assert(c:generate{prompt=\"x\"}) io.write(img.format) e:stop()' 2>&1")
    out = p:read("*a")
    p:close()
    assert.are.equal("png", out)
    -- and make uninstall takes it all away again
    p = io.popen("make --no-print-directory uninstall " .. (os.getenv("IMGEDIT_TEST_MAKEVARS") or "") .. " DESTDIR='"
      .. dir .. "' PREFIX=/usr/local 2>&1; echo exit=$?")
    out = p:read("*a")
    p:close()
    assert.matches("exit=0", out)
    for _, f in ipairs { "/usr/local/share/lua/" .. H.LUAV .. "/imgedit", "/usr/local/lib/lua/" .. H.LUAV .. "/imgedit",
      "/usr/local/bin/imgedit" } do
      assert.is_false(H.exists(dir .. f), f)
    end
    H.rmtree(dir)
  end)
end)
