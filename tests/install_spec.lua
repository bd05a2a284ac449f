-- make install puts the Lua files, the .so files and bin/imgedit in the
-- standard layout, and the library loads from there alone.
local H = require "helpers"

describe("make install", function()
  it("installs a tree that works on its own", function()
    local dir = H.tmpdir()
    local p = io.popen("make --no-print-directory install DESTDIR='" .. dir .. "' PREFIX=/usr/local 2>&1; echo exit=$?")
    local out = p:read("a")
    p:close()
    assert.matches("exit=0", out)
    for _, f in ipairs { "/usr/local/share/lua/5.4/imgedit/init.lua", "/usr/local/share/lua/5.4/imgedit/emulator/service.lua",
      "/usr/local/lib/lua/5.4/imgedit/core.so", "/usr/local/lib/lua/5.4/imgedit/emulator.so", "/usr/local/bin/imgedit" } do
      assert.is_true(H.exists(dir .. f), f)
    end
    local root = dir .. "/usr/local"
    p = io.popen("cd / && LUA_PATH='" .. root .. "/share/lua/5.4/?.lua;" .. root .. "/share/lua/5.4/?/init.lua;;' "
      .. "LUA_CPATH='" .. root .. "/lib/lua/5.4/?.so;;' lua5.4 -e '"
      .. "local e = require(\"imgedit.emulator\").start{} local c = require(\"imgedit\").new{base_url=e.url, api_key=e.key} "
      .. "local img = assert(c:generate{prompt=\"x\"}) io.write(img.format) e:stop()' 2>&1")
    out = p:read("a")
    p:close()
    assert.are.equal("png", out)
    H.rmtree(dir)
  end)
end)
