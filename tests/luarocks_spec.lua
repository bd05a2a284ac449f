-- The README's install commands, run as written in a fresh copy of the
-- checkout, for the Lua this suite runs on (make test-all covers 5.4, 5.3,
-- 5.1 and LuaJIT): `luarocks make` with the version named (into the system
-- tree, which a private mount namespace makes a temporary folder), `luarocks
-- make --local` as a user who is not root, `make rock` then `luarocks
-- install` of the source rock into a fresh tree, `make install PREFIX=` as
-- that user. Each is followed by `require "imgedit"` and an `imgedit edit`
-- through the installed command against the emulator. And a build for one
-- Lua followed by `make demo` for another.
local H = require "helpers"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

describe("installing", function()
  local emu, dir, src
  local root = H.ok("test \"$(id -u)\" = 0")
  -- Under a sanitizer the interpreter is this suite's, the builds are the
  -- plain suite's: that suite runs these.
  local sanitized = os.getenv("LD_PRELOAD") ~= nil
  local jit = H.LUA:find("luajit", 1, true) ~= nil
  local V = H.LUAV
  -- The README's words for this Lua: LuaJIT's tree is 5.1's (one build
  -- of the 5.1 ABI serves lua5.1 and LuaJIT).
  local ROCKS = "luarocks --lua-version=" .. V
  local USER = "imgedit-ci"

  lazy_setup(function()
    emu, dir = H.emulator(), H.tmpdir()
    src = dir .. "/src"
    assert(H.ok("mkdir -p " .. q(src) .. " && git ls-files | tar -cf - -T - | tar -xf - -C " .. q(src)))
    H.write(dir .. "/in.png", H.png(64, 64))
    if root then
      H.sh("id " .. USER .. " >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh " .. USER)
    end
  end)
  lazy_teardown(function()
    emu:stop()
    if root then H.sh("userdel " .. USER .. " 2>/dev/null") end
    H.rmtree(dir)
  end)

  -- What every install must give: the library, and the command doing an
  -- edit that reaches the emulator. `env` sets up the shell for the tree.
  local function works(run, env, label)
    local before = #H.api_requests(emu)
    local out, code = run(env .. "; cd " .. q(dir) .. " && " .. H.LUA
      .. " -e 'local i = require \"imgedit\" io.write(\"version \", i.version, \"\\n\")'"
      .. " && IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL=" .. emu.url .. " IMGEDIT_PROVIDER=apiyi"
      .. " imgedit edit -p x -i in.png -o " .. q(label .. ".png") .. " --force --quiet")
    assert.are.equal(0, code, label .. ": " .. out)
    assert.matches("version %d+%.%d+", out)
    assert.are.equal(before + 1, #H.api_requests(emu), label .. ": one edit reached the service")
  end

  -- A fresh copy of the checkout for one command, so each builds from nothing.
  local n = 0
  local function copy()
    n = n + 1
    local d = dir .. "/copy" .. n
    assert(H.ok("cp -r " .. q(src) .. " " .. q(d)))
    return d
  end

  local function as_root(cmd) return H.sh("sh -c " .. q(cmd)) end

  local why = sanitized and "run by the plain suite, not under a sanitizer"
    or "needs root (a private mount namespace, a user to install as)"
  local function rooted(name, fn)
    if root and not sanitized then return it(name, fn) end
    it(name, function() pending(why) end)
  end

  rooted("luarocks make, the version named, into the system tree", function()
    local d, usr = copy(), dir .. "/usr-local"
    assert(H.ok("mkdir -p " .. q(usr)))
    -- /usr/local is a temporary folder here, in this command's mount namespace only
    local out, code = H.sh("unshare -m sh -c " .. q("mount --bind " .. q(usr) .. " /usr/local && cd " .. q(d)
      .. " && " .. ROCKS .. " make --deps-mode=none"))
    assert.are.equal(0, code, out)
    assert.matches("imgedit scm%-1 is now installed in /usr/local", out)
    assert.is_true(H.exists(usr .. "/lib/lua/" .. V .. "/imgedit/core.so"))
    assert.is_true(H.exists(usr .. "/bin/imgedit"))
    works(function(cmd) return H.sh("unshare -m sh -c " .. q("mount --bind " .. q(usr) .. " /usr/local && " .. cmd)) end,
      "true", "system")
  end)

  rooted("luarocks make --local, as a user who is not root, and luarocks path", function()
    local home = dir .. "/home"
    assert(H.ok("mkdir -p " .. q(home) .. " && cp -r " .. q(src) .. " " .. q(home .. "/src") .. " && chown -R " .. USER
      .. " " .. q(home) .. " " .. q(dir) .. " && chmod 755 " .. q(dir)))
    local function as_user(cmd)
      return H.sh("runuser -u " .. USER .. " -- env -i HOME=" .. q(home) .. " PATH=/usr/bin:/bin sh -c " .. q(cmd))
    end
    local out, code = as_user("cd ~/src && " .. ROCKS .. " make --local --deps-mode=none")
    assert.are.equal(0, code, out)
    assert.matches("is now installed in " .. home:gsub("%p", "%%%0") .. "/%.luarocks", out)
    works(as_user, "eval \"$(" .. ROCKS .. " path)\"", "local")
    -- make install into the user's own prefix: the command works from there,
    -- and the lines it prints make require work too
    out, code = as_user("cd ~/src && make --no-print-directory install PREFIX=$HOME/.local "
      .. (jit and "LUA=luajit" or "LUA_VERSION=" .. V))
    assert.are.equal(0, code, out)
    local export = out:match("\n%s*(export LUA_PATH=[^\n]+)")
    assert.truthy(export, out)
    works(as_user, export .. "; export PATH=$HOME/.local/bin:/usr/bin:/bin", "prefix")
  end)

  rooted("make rock, then luarocks install of the source rock into a fresh tree", function()
    local d, tree = copy(), dir .. "/tree"
    local out, code = as_root("cd " .. q(d) .. " && make --no-print-directory rock "
      .. (jit and "LUA=luajit" or "LUA_VERSION=" .. V))
    assert.are.equal(0, code, out)
    local rock = out:match("Packed: (%S+%.src%.rock)")
    assert.truthy(rock, out)
    -- the rock builds from its own tarball: the copy it came from goes away
    local kept = dir .. "/" .. rock:match("[^/]+$")
    assert(H.ok("cp " .. q(rock) .. " " .. q(kept) .. " && rm -rf " .. q(d)))
    out, code = as_root("cd " .. q(dir) .. " && " .. ROCKS .. " install --tree=" .. q(tree) .. " --deps-mode=none "
      .. q(kept))
    assert.are.equal(0, code, out)
    works(as_root, "eval \"$(" .. ROCKS .. " --tree=" .. q(tree) .. " path)\"", "rock")
  end)

  it("the first steps are quiet: no pkg-config noise before it is installed", function()
    local out, code = H.sh("make --no-print-directory -n all PKG_CONFIG=pkg-config-not-installed")
    assert.are.equal(0, code, out)
    assert.is_nil(out:find("pkg-config-not-installed", 1, true), out) -- the shell's "...: not found"
    assert.matches("libmicrohttpd not found: built the client only", out)
  end)

  rooted("make deps without root or sudo names what is missing and how to install it", function()
    -- a PATH with what the recipe needs, and no sudo
    local bin = dir .. "/nosudo"
    assert(H.ok("mkdir -p " .. q(bin) .. " && for t in sh make dpkg-query grep id; do ln -sf \"$(command -v $t)\" "
      .. q(bin) .. "/$t; done && chmod 755 " .. q(dir)))
    local out, code = H.sh("runuser -u " .. USER .. " -- env -i HOME=/nonexistent PATH=" .. q(bin) .. " make -C "
      .. q(src) .. " --no-print-directory deps DEB_PKGS=imgedit-no-such-package")
    assert.are.equal(0, code, out)
    assert.matches("these Debian packages are missing: imgedit%-no%-such%-package", out)
    assert.matches("apt%-get install %-%-no%-install%-recommends imgedit%-no%-such%-package", out)
  end)

  it("a build for one Lua, then make demo for another: each loads its own build", function()
    if not H.ok("command -v lua5.1 >/dev/null && command -v lua5.4 >/dev/null") then
      return pending("needs lua5.1 and lua5.4")
    end
    local d = copy()
    -- The default builds, whatever make test was given (PORTABLE=1 reaches
    -- a child make through MAKEFLAGS and the environment).
    local out, code = H.sh("cd " .. q(d) .. " && unset MAKEFLAGS MAKELEVEL PORTABLE LUA_VERSION LUA && make --no-print-directory LUA_VERSION=5.1 all >/dev/null"
      .. " && env -u IMGEDIT_API_KEY make --no-print-directory demo")
    assert.are.equal(0, code, out)
    assert.matches("done: %d+ tokens", out)
    assert.are.same({ "lua=lua5.1", "lua=lua5.4" }, {
      (H.read(d .. "/build/lua5.1/built-for") or ""):match("^%S+"), (H.read(d .. "/build/lua5.4/built-for") or ""):match("^%S+") })
    -- and switching back needs no make clean: the 5.1 build is still the 5.1 build
    out, code = H.sh("cd " .. q(d) .. " && unset MAKEFLAGS MAKELEVEL PORTABLE LUA_VERSION LUA && make --no-print-directory LUA_VERSION=5.1 all && env LUA_PATH='lua/?.lua;lua/?/init.lua;;'"
      .. " LUA_CPATH='build/lua5.1/?.so;;' lua5.1 -e 'print(require(\"imgedit\").version)'")
    assert.are.equal(0, code, out)
    assert.is_nil(out:find("cc ", 1, true), "nothing rebuilt")
  end)
end)
