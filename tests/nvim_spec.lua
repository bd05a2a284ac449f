-- imgedit.uv drives a client from a libuv loop: here a plain luv loop
-- (lua-luv on the suite's Lua), against the emulator. The loop must keep
-- firing its timers while edits run, and sleep, not spin, while the model
-- works.
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
      assert.is_true(ticks >= elapsed / 0.01 / 2, ticks .. " ticks in " .. elapsed .. " s")
      assert.is_true(d.wakes >= 1 and d.wakes <= 12, tostring(d.wakes)) -- a handful over the model's half second
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
end)
