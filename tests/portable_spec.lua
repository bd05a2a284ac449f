-- The portable core: `make PORTABLE=1` builds the plain POSIX path of every
-- system call (what macOS and the BSDs build) and none of Linux's own. The
-- whole suite runs on that build in CI (make PORTABLE=1 test); here, its
-- imports are read, so a Linux-only call that slips in fails at once.
local H = require "helpers"

-- What only Linux (or glibc) has, by the names a module imports.
local LINUX_ONLY = { "signalfd", "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
  "accept4", "pipe2", "dup3", "mkostemp", "mkostemps", "fdatasync", "epoll_create", "epoll_create1", "epoll_ctl",
  "epoll_wait", "eventfd", "memmem", "prctl", "sendfile", "splice", "timerfd_create", "memfd_create", "getrandom",
  "sched_getcpu", "syncfs" }

local function imports(so)
  local out, code = H.sh("nm -D --undefined-only '" .. so .. "'")
  assert.are.equal(0, code, out)
  local set = {}
  for name in out:gmatch("U ([%w_]+)") do set[name] = true end
  return set
end

local function linux_calls(so)
  local set, found = imports(so), {}
  for _, name in ipairs(LINUX_ONLY) do
    if set[name] then found[#found + 1] = name end
  end
  return found
end

-- The builds of this suite's Lua (never a sanitizer build's runtime flags):
-- build/lua5.4 and build/lua5.4-portable, build/luajit and build/luajit-portable ...
local ID = H.LUA:match("luajit") and "luajit" or "lua" .. H.LUAV
local VARS = (os.getenv("IMGEDIT_TEST_MAKEVARS") or ""):gsub("PORTABLE=%S*", "")

local function build(portable)
  -- make PORTABLE=1 test hands PORTABLE to a child make (MAKEFLAGS, the
  -- environment): each build says for itself.
  local out, code = H.sh("unset MAKEFLAGS MAKELEVEL PORTABLE; make --no-print-directory " .. (portable and "PORTABLE=1 " or "")
    .. VARS .. " all")
  assert.are.equal(0, code, out)
  return "build/" .. ID .. (portable and "-portable" or "")
end

describe("the portable core", function()
  it("imports none of Linux's own calls, in the module and the emulator", function()
    local dir = build(true)
    for _, so in ipairs { dir .. "/imgedit/core.so", dir .. "/imgedit/emulator/core.so" } do
      assert.are.same({}, linux_calls(so), so)
      -- and reads nothing from /proc
      local text = H.read(so)
      assert.is_nil(text:find("/proc/", 1, true), so)
    end
  end)

  it("is a different build: the Linux one does use them (the check can fail)", function()
    local found = linux_calls(build(false) .. "/imgedit/core.so")
    table.sort(found)
    assert.are.same({ "eventfd", "fdatasync", "inotify_add_watch", "inotify_init1", "mkostemp", "signalfd" }, found)
  end)

  it("with STB_INCDIR (no libstb, as on macOS) compiles stb's implementation in, and encodes and decodes", function()
    local dir = H.tmpdir()
    local out, code = H.sh("unset MAKEFLAGS MAKELEVEL PORTABLE; make --no-print-directory PORTABLE=1 STB_INCDIR=/usr/include/stb " .. VARS .. " BUILD='" .. dir
      .. "/b' " .. "'" .. dir .. "/b/imgedit/core.so'")
    assert.are.equal(0, code, out)
    local deps = H.sh("ldd '" .. dir .. "/b/imgedit/core.so'")
    local run, rc = H.sh(H.LUA .. " -e 'package.cpath = \"" .. dir .. "/b/?.so;\" .. package.cpath; "
      .. "local c = require \"imgedit.core\"; local png = c.encode(string.rep(\"\\255\\0\\0\\255\", 16), 4, 4, \"png\"); "
      .. "print(c.inspect(png, true).width, #c.decode(png))'")
    H.rmtree(dir)
    assert.is_nil(deps:find("libstb", 1, true), deps)
    assert.are.equal(0, rc, run)
    assert.are.equal("4\t64\n", run)
  end)

  it("loads and answers in this interpreter: base64, SHA-256 and an atomic write without OpenSSL's coder", function()
    local so = build(true)
    local dir = H.tmpdir()
    local out, code = H.sh(string.format([[%s -e '
      package.cpath = "%s/?.so;" .. package.cpath
      package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
      local core = require "imgedit.core"
      assert(core.b64decode("aGVsbG8=") == "hello")
      assert(core.b64encode("hello!?") == "aGVsbG8hPw==")
      assert(core.sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
      assert(core.write_atomic("%s/x", "one"))
      assert(core.write_atomic("%s/x", "two"))
      print(core.read_file("%s/x"))']], H.LUA, so, dir, dir, dir))
    H.rmtree(dir)
    assert.are.equal(0, code, out)
    assert.are.equal("two\n", out)
  end)
end)
