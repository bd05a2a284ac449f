-- The Windows folder (tools/windows/build.sh) under Wine: Windows' lua.exe
-- and luajit.exe load the cross-built imgedit\core.dll and talk to the
-- emulator, which runs on the Linux side, over loopback. Every case counts
-- the requests the emulator received, as every fault test does.
--
-- Run by `make test-windows` (busted -p _check tests/windows), never by
-- `make test`: it needs the folder built and wine. Wine is not Windows;
-- the README says what was tested where.
local H = require "helpers"

local ROOT = os.getenv("IMGEDIT_WIN_FOLDER") or "build/windows/imgedit-windows"
local ENV_SH = os.getenv("IMGEDIT_WIN_ENV") or ((os.getenv("IMGEDIT_WIN_CACHE")
  or (os.getenv("XDG_CACHE_HOME") or (os.getenv("HOME") .. "/.cache")) .. "/imgedit-windows") .. "/env.sh")

-- Z:\ is Wine's drive for the Linux root.
local function winpath(p) return "Z:" .. p:gsub("/", "\\") end
local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

describe("the Windows folder under Wine", function()
  local emu, dir, abs_root, game
  local cafe = "caf\195\169 \226\152\149" -- "café ☕": UTF-8, not in any ANSI code page whole

  H.world(function(e, d)
    emu, dir = e, d
    assert(H.ok("test -f " .. q(ROOT .. "/imgedit/core.dll")), "build the folder first: make windows")
    assert(H.ok("test -f " .. q(ENV_SH)), "no " .. ENV_SH .. ": run tools/windows/deps.sh")
    abs_root = H.sh("cd " .. q(ROOT) .. " && pwd"):gsub("%s+$", "")
    -- One wineserver for all the runs, its own output apart: started by a
    -- run, it would hold that run's output open and print into it (Wine's
    -- dump of what a process left at exit, a socket in the middle of a wait).
    -- (It fails when one is already running: that one serves as well.)
    os.execute(". " .. q(ENV_SH) .. " && \"$(dirname \"$WINE\")/wineserver\" -p30 >/dev/null 2>&1 </dev/null")
    H.write(dir .. "/a.png", H.png(64, 64))
    H.write(dir .. "/b.png", H.png(64, 64))
    H.write(dir .. "/m.png", H.png(64, 64, function(x) return x > 20 and 0 or 255 end))
    H.write(dir .. "/" .. cafe .. ".png", H.png(48, 48))
    -- A LÖVE game's folder: LuaJIT's lua51.dll beside the exe, the library
    -- DLLs and the love\ modules next to it, as the README tells.
    game = dir .. "/game"
    assert(H.ok(". " .. q(ENV_SH) .. " && mkdir -p " .. q(game) .. " && cp \"$WIN_LUAJIT_DIR/luajit.exe\" \"$WIN_LUAJIT_DIR/lua51.dll\" "
      .. q(game) .. " && cp " .. q(abs_root) .. "/*.dll " .. q(game) .. " && rm " .. q(game) .. "/lua54.dll " .. q(game)
      .. "/cjson.dll && cp -r " .. q(abs_root) .. "/love/. " .. q(game)))
  end, function() os.execute(". " .. q(ENV_SH) .. " && \"$(dirname \"$WINE\")/wineserver\" -k >/dev/null 2>&1") end)

  -- wine(cmd) -> output, exit code of a shell command that starts Wine. The
  -- output goes through a file: a pipe stays open past the program's exit
  -- (Wine's processes hold it), and Wine may print its own leftovers late.
  local function wine(cmd)
    local log = dir .. "/wine.log"
    local _, code = H.sh(cmd .. " > " .. q(log) .. " 2>&1")
    return H.read(log), code
  end

  -- run(which, script, ...) -> output, exit code: script run by Windows'
  -- lua.exe ("lua54") or the game folder's luajit.exe ("luajit") under Wine,
  -- with the arguments given; the url and key of the emulator in its env.
  local function run(which, script, ...)
    local path = dir .. "/script.lua"
    H.write(path, script)
    local args = {}
    for i, a in ipairs { ... } do args[i] = q(a) end
    local exe, cwd, lpath, cpath
    if which == "lua54" then
      exe, cwd, lpath, cpath = "lua.exe", abs_root, "lua\\?.lua;lua\\?\\init.lua;;", ".\\?.dll;;"
    else
      exe, cwd, lpath, cpath = "luajit.exe", game, winpath(abs_root) .. "\\lua\\?.lua;" .. winpath(abs_root)
        .. "\\lua\\?\\init.lua;;", ".\\?.dll;;"
    end
    return wine(". " .. q(ENV_SH) .. " && cd " .. q(cwd) .. " && env -u LD_PRELOAD IMGEDIT_BASE_URL=" .. emu.url
      .. " IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_PROVIDER=apiyi WT=" .. q(winpath(dir)) .. " LUA_PATH=" .. q(lpath)
      .. " LUA_CPATH=" .. q(cpath) .. " timeout 120 \"$WINE\" " .. exe .. " " .. q(winpath(path)) .. " " .. table.concat(args, " "))
  end

  local PRELUDE = [[
    local imgedit = require "imgedit"
    local WT = os.getenv("WT")
    local function client(o)
      o = o or {}
      o.base_url, o.api_key, o.provider = os.getenv("IMGEDIT_BASE_URL"), os.getenv("IMGEDIT_API_KEY"), "apiyi"
      return assert(imgedit.new(o))
    end
  ]]

  for _, which in ipairs { "lua54", "luajit" } do
    describe(which, function()
      it("edits with two images and a mask, and saves over an existing file (replaced whole)", function()
        H.write(dir .. "/out-" .. which .. ".png", "old bytes")
        local out, code = run(which, PRELUDE .. [[
          local c = client()
          local img = assert(c:edit { prompt = "wine edit", images = { WT .. "\\a.png", WT .. "\\b.png" },
            mask = WT .. "\\m.png", size = "1024x1024" })
          assert(img:save(WT .. "\\out-]] .. which .. [[.png", { overwrite = true }))
          print("edit", img.width, img.height, img.format)
          c:close()
        ]])
        assert.are.equal(0, code, out)
        assert.matches("edit\t1024\t1024\tpng", out)
        local reqs = H.api_requests(emu)
        assert.are.equal(1, #reqs)
        local fields = {}
        for _, f in ipairs(reqs[1].files) do fields[#fields + 1] = f.field end
        assert.are.same({ "image[]", "image[]", "mask" }, fields)
        local saved = H.read(dir .. "/out-" .. which .. ".png")
        assert.are.equal("\137PNG", saved:sub(1, 4))
        -- no temp file left beside it
        assert.are.equal("", H.sh("ls " .. q(dir) .. " | grep tmp- || true"))
      end)

      it("generates, and streams partials decoded to RGBA", function()
        local out, code = run(which, PRELUDE .. [[
          local c = client { decode = "rgba" }
          local g = assert(c:generate { prompt = "wine generate", size = "1024x1024" })
          local n, px = 0, 0
          local s = assert(c:generate { prompt = "wine stream", size = "1024x1024", stream = true, partial_images = 2,
            on_partial = function(p) n = n + 1; px = px + #(p.pixels or "") end })
          print("generate", g.width, #g.pixels, "stream", n, px, #s.pixels)
          c:close()
        ]])
        assert.are.equal(0, code, out)
        local w, gpx, n, ppx, spx = out:match("generate\t(%d+)\t(%d+)\tstream\t(%d+)\t(%d+)\t(%d+)")
        assert.are.equal("1024", w, out)
        assert.are.equal(1024 * 1024 * 4, tonumber(gpx))
        assert.are.equal("2", n)
        assert.are.equal(2 * 1024 * 1024 * 4, tonumber(ppx))
        assert.are.equal(1024 * 1024 * 4, tonumber(spx))
        assert.are.equal(2, #H.api_requests(emu))
      end)

      it("runs jobs polled with poll(0) in a frame loop, and downloads a url answer", function()
        local out, code = run(which, PRELUDE .. [[
          local c = client()
          local jobs = {}
          for i = 1, 3 do
            jobs[i] = c:submit("edit", { prompt = "job " .. i, images = { WT .. "\\a.png" }, size = "1024x1024" })
          end
          jobs[4] = c:submit("generate", { prompt = "a url", model = "gpt-image-2-all", size = "1024x1024" })
          local frames = 0
          while not (jobs[1]:done() and jobs[2]:done() and jobs[3]:done() and jobs[4]:done()) do
            c:poll(0)
            frames = frames + 1
            local t = os.clock() + 0.002
            while os.clock() < t do end -- a frame's work
          end
          local ok = 0
          for i = 1, 4 do if jobs[i]:result() then ok = ok + 1 end end
          local u = jobs[4]:result()
          print("jobs", ok, frames > 3, u and u.width)
          c:close()
        ]])
        assert.are.equal(0, code, out)
        assert.matches("jobs\t4\ttrue\t1024", out)
        assert.are.equal(4, #H.api_requests(emu))
        local cdn = 0
        for _, r in ipairs(emu:requests()) do
          if r.listener == "cdn" then cdn = cdn + 1 end
        end
        assert.are.equal(1, cdn) -- the url was fetched once
      end)

      it("client:fd() is a socket that becomes readable when an answer waits (WSAPoll through LuaJIT's FFI)", function()
        emu:configure { latency = 0.5 }
        local out, code = run(which, PRELUDE .. [[
          local c = client()
          local fd = assert(c:fd())
          local job = c:submit("edit", { prompt = "wine fd", images = { WT .. "\\a.png" }, size = "1024x1024" })
          local woke = "n/a"
          if jit then
            local ffi = require "ffi"
            ffi.cdef [=[
              typedef struct { uintptr_t fd; short events; short revents; } ie_wsapollfd;
              int WSAPoll(ie_wsapollfd *fds, unsigned long n, int timeout);
            ]=]
            local ws = ffi.load("ws2_32")
            local p = ffi.new("ie_wsapollfd[1]")
            p[0].fd, p[0].events = fd, 0x0100 -- POLLRDNORM
            c:poll(0)
            local quiet = ws.WSAPoll(p, 1, 0) == 0
            local n = ws.WSAPoll(p, 1, 20000)
            woke = tostring(quiet and n == 1 and not job:done())
          end
          while not job:done() do c:poll(0.05) end
          print("fd", type(fd), woke, job:result() ~= nil, c:timeout())
          c:close()
        ]])
        emu:configure { latency = 0 }
        assert.are.equal(0, code, out)
        assert.matches("fd\tnumber\t" .. (which == "luajit" and "true" or "n/a") .. "\ttrue\tnil", out)
        assert.are.equal(1, #H.api_requests(emu))
      end)

      it("a reset after the whole upload: sent once, and said to be maybe billed", function()
        emu:inject { reset = true }
        local out, code = run(which, PRELUDE .. [[
          local c = client()
          local img, err = c:edit { prompt = "wine reset", images = { WT .. "\\a.png" }, size = "1024x1024" }
          print("reset", img == nil, err and err.kind, err and err.maybe_billed)
          c:close()
        ]])
        assert.are.equal(0, code, out)
        assert.matches("reset\ttrue\tnetwork\ttrue", out)
        assert.are.equal(1, #H.api_requests(emu))
      end)

      it("reads and writes paths with non-ASCII characters", function()
        -- The name as a script holds it: UTF-8 in the source.
        local out, code = run(which, PRELUDE .. "local name = " .. string.format("%q", cafe) .. [[
          local info = assert(imgedit.inspect(WT .. "\\" .. name .. ".png"))
          local c = client()
          local img = assert(c:edit { prompt = "wine unicode", images = { WT .. "\\" .. name .. ".png" }, size = "1024x1024" })
          assert(img:save(WT .. "\\" .. name .. "-]] .. which .. [[.png"))
          print("unicode", info.width, img.width)
          c:close()
        ]])
        assert.are.equal(0, code, out)
        assert.matches("unicode\t48\t1024", out)
        assert.are.equal("\137PNG", H.read(dir .. "/" .. cafe .. "-" .. which .. ".png"):sub(1, 4))
        assert.are.equal(1, #H.api_requests(emu))
      end)

      it("exits with its code while transfers are in flight, without a hang or a crash", function()
        emu:configure { latency = 0.3 }
        local out, code = run(which, PRELUDE .. [[
          local c = client()
          for i = 1, 3 do c:submit("edit", { prompt = "wine exit " .. i, images = { WT .. "\\a.png" }, size = "1024x1024" }) end
          c:poll(0.1)
          os.exit(3)
        ]])
        emu:configure { latency = 0 }
        assert.are.equal(3, code, out)
        assert.is_true(#H.api_requests(emu) <= 3)
      end)
    end)
  end

  describe("waiting for a save (run --watch)", function()
    it("hears a file written in a watched folder (ReadDirectoryChangesW), and times out on silence", function()
      H.write(dir .. "/watched.lua", "-- v1")
      -- The save comes from this side, half a second after the wait began
      -- (Wine takes seconds to start: the script says when it is ready).
      local saver = "(for i in $(seq 300); do [ -f " .. q(dir .. "/ready") .. " ] && break; sleep 0.1; done; sleep 0.5; "
        .. "echo '-- v2' > " .. q(dir .. "/watched.lua") .. ") >/dev/null 2>&1 &"
      assert(H.ok(saver))
      local out, code = run("lua54", PRELUDE .. [[
        local core = require "imgedit.core"
        local t0 = core.now()
        assert(core.write_atomic(WT .. "\\ready", ""))
        local hit = core.wait_change({ WT .. "\\watched.lua", WT .. "\\a.png" }, 20)
        local t1 = core.now()
        local quiet = core.wait_change({ WT .. "\\a.png" }, 0.5)
        print("watch", hit, string.format("%.1f", t1 - t0), quiet, string.format("%.1f", core.now() - t1))
      ]])
      assert.are.equal(0, code, out)
      local hit, quiet = out:match("watch\t(%S+)\t[%d.]+\t(%S+)\t[%d.]+")
      -- woken by the save (a timeout answers false), and silence answers false
      assert.are.equal(winpath(dir) .. "\\watched.lua", hit, out)
      assert.are.equal("false", quiet)
    end)
  end)

  describe("the command line, imgedit.cmd", function()
    local function cmd(args)
      return wine(". " .. q(ENV_SH) .. " && cd " .. q(abs_root) .. " && env -u LD_PRELOAD IMGEDIT_BASE_URL=" .. emu.url
        .. " IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_PROVIDER=apiyi timeout 120 \"$WINE\" cmd /c imgedit.cmd " .. args)
    end

    it("edits a file into another", function()
      local out, code = cmd("edit -p " .. q("wine cli") .. " -i " .. q(winpath(dir .. "/a.png")) .. " -o "
        .. q(winpath(dir .. "/cli.png")) .. " --size 1024x1024")
      assert.are.equal(0, code, out)
      assert.are.equal("\137PNG", H.read(dir .. "/cli.png"):sub(1, 4))
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("takes file names with non-ASCII characters from the command line", function()
      local out, code = cmd("edit -p " .. q("wine cli unicode") .. " -i " .. q(winpath(dir .. "/" .. cafe .. ".png"))
        .. " -o " .. q(winpath(dir .. "/" .. cafe .. "-cli.png")) .. " --size 1024x1024")
      assert.are.equal(0, code, out)
      assert.are.equal("\137PNG", H.read(dir .. "/" .. cafe .. "-cli.png"):sub(1, 4))
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("says the rules, and fails a usage error with exit code 2", function()
      local out, code = cmd("rules --model gpt-image-2")
      assert.are.equal(0, code, out)
      assert.matches("gpt%-image%-2", out)
      out, code = cmd("edit --no-such-flag")
      assert.are.equal(2, code, out)
      assert.are.equal(0, #H.api_requests(emu))
    end)
  end)
end)
