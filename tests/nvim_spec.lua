-- imgedit.uv drives a client from a libuv loop: here a plain luv loop
-- (lua-luv on the suite's Lua) and Neovim's own, in a real headless
-- editor on the LuaJIT build (imgedit.nvim), against the emulator. The
-- editor must keep answering RPC and firing its timers while edits run,
-- and the loop must sleep, not spin, while the model works.
local H = require "helpers"
local core = require "imgedit.core"
local drive = require "imgedit.uv"

local have_uv, uv = pcall(require, "luv")
local small = H.small

-- IMGEDIT_TEST_VERBOSE=1 prints the figures the tests measured.
local function figures(s) if os.getenv("IMGEDIT_TEST_VERBOSE") then print(s) end end

describe("imgedit.uv", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(32, 32))
  end)

  describe("on a plain luv loop", function()
    local function need_uv() if not have_uv then pending("lua-luv is not installed") end return have_uv end

    it("drives two jobs, calls each callback once, and the loop ends by itself when they are done", function()
      if not need_uv() then return end
      emu:configure { latency = 0.5 }
      local c = H.all_client(emu)
      local d = assert(drive.attach(c, uv))
      local calls, ticks = {}, 0
      local tick = uv.new_timer()
      tick:start(10, 10, function() ticks = ticks + 1 end)
      local t0 = core.now()
      local jobs = {}
      for i = 1, 2 do
        jobs[i] = d:submit("edit", small { images = { pic }, prompt = "uv " .. i }, function(img, err)
          calls[#calls + 1] = { i = i, img = img, err = err }
          if #calls == 2 then tick:stop() end
        end)
      end
      assert.are.equal(0, #calls) -- never from inside submit
      -- uv.run returns only once no handle is active: the driver stopped its own.
      uv.run()
      local elapsed = core.now() - t0
      assert.are.equal(2, #calls)
      local seen = {}
      for _, call in ipairs(calls) do
        assert.is_nil(seen[call.i])
        seen[call.i] = true
        assert.are.equal(64, call.img.width)
        assert.are.equal(jobs[call.i]:result(), call.img)
      end
      -- the loop's own timer ran while the edits waited (a loop blocked in
      -- a wait runs no timer until it ends); wakes: a spinning loop makes hundreds
      assert.is_true(ticks >= 2, ticks .. " ticks")
      assert.is_true(d.wakes >= 1 and d.wakes <= 30, tostring(d.wakes))
      figures(string.format("luv: %d ticks in %.0f ms, %d wakes", ticks, elapsed * 1000, d.wakes))
      assert.are.equal(2, #H.api_requests(emu))
      d:close()
      tick:close()
      uv.run()
      c:close()
    end)

    it("starts again on the next submit, and calls back a job refused locally from the loop", function()
      if not need_uv() then return end
      local c = H.all_client(emu)
      local d = assert(drive.attach(c, uv))
      local got = {}
      d:submit("generate", small { prompt = "first" }, function(img) got[#got + 1] = img end)
      uv.run()
      assert.are.equal(1, #got)
      local wakes = d.wakes
      -- idle: nothing left to run, the loop returns at once
      uv.run()
      assert.are.equal(wakes, d.wakes)
      local refused
      d:submit("generate", { prompt = "" }, function(img, err) refused = { img, err } end)
      assert.is_nil(refused)
      d:submit("generate", small { prompt = "second" }, function(img) got[#got + 1] = img end)
      uv.run()
      assert.are.equal(2, #got)
      assert.is_nil(refused[1])
      assert.are.equal("invalid_request", refused[2].kind)
      assert.are.equal(2, #H.api_requests(emu)) -- the refused one sent nothing
      d:close()
      uv.run()
      c:close()
    end)

    it("close() cancels the jobs still running, and calls each back once", function()
      if not need_uv() then return end
      emu:configure { latency = 5 }
      local c = H.all_client(emu)
      local d = assert(drive.attach(c, uv))
      local calls = {}
      d:submit("generate", small { prompt = "slow" }, function(img, err) calls[#calls + 1] = { img, err } end)
      local t0 = core.now()
      while emu:stats().requests < 1 and core.now() - t0 < 5 do uv.run("nowait") end
      d:close()
      d:close()
      uv.run()
      assert.are.equal(1, #calls)
      assert.is_nil(calls[1][1])
      assert.are.equal("canceled", calls[1][2].kind)
      assert.has_error(function() d:submit("generate", small {}) end, "driver is closed (submit after close)")
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)

    it("raises on what is a mistake in the calling code", function()
      local c = H.all_client(emu)
      local fake_uv = { new_poll = function() end, new_timer = function() end }
      assert.has_error(function() drive.attach({}, fake_uv) end, "bad argument #1 to 'attach' (an imgedit client expected)")
      assert.has_error(function() drive.attach(c, {}) end,
        "bad argument #2 to 'attach' (a libuv binding expected: luv, vim.uv or vim.loop)")
      assert.has_error(function() drive.attach(c, fake_uv, { schedule = 1 }) end,
        "bad argument #3 to 'attach' (schedule: function expected)")
      if have_uv then
        local d = assert(drive.attach(c, uv))
        assert.has_error(function() d:submit("edit", small {}, "cb") end,
          "bad argument #3 to 'submit' (function expected, got string)")
        d:close()
        uv.run()
      end
      assert.are.equal(0, #H.api_requests(emu))
      c:close()
    end)
  end)

  describe("in Neovim", function()
    -- what is missing, by its Debian package, so the skip says what to install
    local missing = {}
    for _, need in ipairs { { "command -v nvim", "neovim" },
      { "pkg-config --exists luajit", "libluajit-5.1-dev (libluajit2-5.1-dev beside nginx's Lua module)" } } do
      if not H.ok(need[1] .. " >/dev/null 2>&1") then missing[#missing + 1] = need[2] end
    end
    local runner = #missing == 0 and it or function(name)
      it(name, function()
        pending("needs nvim and LuaJIT's headers (missing the Debian packages " .. table.concat(missing, ", ") .. ")")
      end)
    end

    -- Whether a process is still there (a zombie is not).
    local function alive(pid)
      local st = H.lines("ps -o stat= -p " .. pid .. " 2>/dev/null")[1]
      return st ~= nil and not st:match("^Z")
    end

    runner("edits through imgedit.nvim while the editor answers RPC, its timer fires and its loop sleeps", function()
      assert.is_true(H.ok("unset MAKEFLAGS MAKELEVEL PORTABLE LUA_VERSION LUA; make --no-print-directory LUA=luajit all >/dev/null 2>&1"))
      emu:configure { latency = 1 }
      local home, pid = H.tmpdir(), nil
      finally(function()
        if pid and alive(pid) then os.execute("kill -9 " .. pid .. " 2>/dev/null") end
        H.rmtree(home)
      end)
      local sock, out, log = home .. "/nvim.sock", home .. "/out", home .. "/log"
      local photo = H.write(home .. "/photo.png", H.png(32, 32))
      -- Both editors in their own folders (no config, shada or log of the
      -- user's), without the sanitizer runtime a child lacks.
      local env = "env -u LD_PRELOAD -u IMGEDIT_API_KEY XDG_CONFIG_HOME=" .. home .. " XDG_DATA_HOME=" .. home
        .. " XDG_STATE_HOME=" .. home .. " XDG_CACHE_HOME=" .. home .. " NVIM_LOG_FILE=" .. home .. "/nvim.log "
      pid = H.lines(env .. "IMGEDIT_NVIM_OUT=" .. out .. " IMGEDIT_NVIM_URL=" .. emu.url .. " IMGEDIT_NVIM_KEY=" .. emu.key
        .. " IMGEDIT_NVIM_PIC=" .. photo .. " nvim --headless -u NONE -i NONE --listen " .. sock
        .. " -c 'luafile tests/nvim/edit.lua' </dev/null >" .. log .. " 2>&1 & echo $!")[1]
      assert.truthy(pid and pid:match("^%d+$"), "nvim did not start")
      -- RPC from another process meanwhile: a remote expression, each timed.
      local probes, t0 = {}, core.now()
      while not H.exists(out) and core.now() - t0 < 40 * H.SLOW and alive(pid) do
        if H.ok("test -S " .. sock) then
          local t = core.now()
          local answer = H.sh(env .. "nvim --server " .. sock .. " --remote-expr \"luaeval('imgedit_probe()')\" </dev/null")
          local state, ticks = answer:match("^(%a+) (%d+)")
          if state then probes[#probes + 1] = { state = state, ticks = tonumber(ticks), seconds = core.now() - t } end
        end
        os.execute("sleep 0.05")
      end
      local t = core.now()
      while alive(pid) and core.now() - t < 5 do os.execute("sleep 0.05") end
      assert.is_false(alive(pid), "nvim did not quit")
      assert.is_true(H.exists(out), "no results; the editor said: " .. H.read(log))
      local r = {}
      for k, v in H.read(out):gmatch("([%w_]+)=([^\n]*)") do r[k] = v end
      assert.are.equal("done", r["end"], H.read(out) .. H.read(log))
      -- the call's picture and the command's file arrived, each called back
      -- on the main loop, where vim.api works
      assert.are.equal("64x64 png", r.call_image)
      assert.are.equal("none", r.call_error)
      assert.are.equal("imgedit: saved " .. home .. "/photo-edit.png", r.command_notify)
      local saved = assert(require("imgedit").inspect(home .. "/photo-edit.png"))
      assert.are.equal("png", saved.format) -- the service's default size: whatever it is, a picture
      assert.is_true(saved.width > 0 and saved.height > 0)
      for _, name in ipairs { "call", "command" } do
        assert.are.equal("false", r[name .. "_fast"])
        assert.are.equal("true", r[name .. "_api"])
      end
      -- it answered RPC while the edits ran (a blocked editor answers only
      -- after them), and its own timer fired between those answers: the
      -- ticks each answer reported grew while the edits were pending
      local ticks, elapsed = tonumber(r.ticks), tonumber(r.elapsed_ms)
      local pending_ones, worst, first, last = 0, 0, nil, nil
      for _, p in ipairs(probes) do
        if p.state == "pending" then
          pending_ones = pending_ones + 1
          worst = math.max(worst, p.seconds)
          first, last = first or p.ticks, p.ticks
        end
      end
      assert.is_true(pending_ones >= 3, pending_ones .. " answers while the edits ran")
      assert.is_true(last > first, "the timer did not fire between answers while the edits ran")
      -- a handful of polls, not one per turn of the loop
      local wakes = tonumber(r.wakes)
      assert.is_true(wakes >= 1 and wakes <= 30, r.wakes)
      figures(string.format("nvim: %d ticks in %.0f ms, %d wakes, %d answers while pending, slowest %.1f ms",
        ticks, elapsed, wakes, pending_ones, worst * 1000))
      -- two edits; the command's answer was a url, fetched from the cdn listener
      assert.are.equal(2, #H.api_requests(emu))
    end)
  end)
end)
