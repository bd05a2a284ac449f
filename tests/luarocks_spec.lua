-- The rockspec builds and installs with `luarocks make` into a temporary
-- tree, and the library works from that tree alone (the Debian packages
-- provide cjson and argparse, so dependencies are not fetched).
local H = require "helpers"

describe("luarocks make", function()
  it("installs a working tree", function()
    assert.is_true(H.ok("command -v luarocks >/dev/null"), "luarocks is needed: make deps")
    local dir = H.tmpdir()
    local src, tree = dir .. "/src", dir .. "/tree"
    -- build in a copy, so the suite's own build/ is not rebuilt under it
    assert.is_true(H.ok("mkdir -p '" .. src .. "' && cp -r src lua bin types Makefile imgedit-scm-1.rockspec '" .. src .. "'"))
    local lv = H.LUAV
    local p = io.popen("cd '" .. src .. "' && luarocks --lua-version=" .. lv .. " make --deps-mode=none --tree='" .. tree
      .. "' imgedit-scm-1.rockspec 2>&1; echo exit=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("exit=0", out)
    assert.matches("imgedit scm%-1 is now installed", out)
    local lpath = tree .. "/share/lua/" .. lv .. "/?.lua;" .. tree .. "/share/lua/" .. lv .. "/?/init.lua;;"
    local cpath = tree .. "/lib/lua/" .. lv .. "/?.so;;"
    p = io.popen("cd / && LUA_PATH='" .. lpath .. "' LUA_CPATH='" .. cpath .. "' " .. H.LUA .. " -e '"
      .. "local e = require(\"imgedit.emulator\").start{} local c = require(\"imgedit\").new{base_url=e.url, api_key=e.key} "
      .. "local img = assert(c:generate{prompt=\"x\"}) io.write(img.format, \" \", package.searchpath and "
      .. "package.searchpath(\"imgedit.core\", package.cpath) or \"\") e:stop()' 2>&1")
    out = p:read("*a")
    p:close()
    assert.matches("^png", out)
    if out:find(" ", 1, true) and #out > 4 then assert.truthy(out:find(tree, 1, true), out) end
    assert.is_true(H.exists(tree .. "/bin/imgedit"))
    H.rmtree(dir)
  end)
end)
