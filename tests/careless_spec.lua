-- Careless calls get a clear answer at once, and the client stays usable:
-- options checked where given, callbacks that raise or call the library
-- back, close. Every test counts what the emulator received.
local H = require "helpers"
local imgedit = require "imgedit"

local small = H.small

describe("careless calls", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(64, 64))
  end)

  local function client(opts)
    local o = { retry_base = 0.01 }
    for k, v in pairs(opts or {}) do o[k] = v end
    return H.all_client(emu, o)
  end

  describe("options", function()
    it("refuses unknown options to new, naming the closest one", function()
      local ok, msg = pcall(imgedit.new, { timout = 5 })
      assert.is_false(ok)
      assert.matches("unknown option 'timout' to imgedit.new %(did you mean 'timeout'%?%)", msg)
      ok, msg = pcall(imgedit.new, { max_retry = 1 })
      assert.matches("did you mean 'max_retries'", msg)
      ok, msg = pcall(imgedit.new, { zzzzzzzzzz = 1 })
      assert.is_false(ok)
      assert.not_matches("did you mean", msg)
    end)

    it("checks every option of new for type and range", function()
      for _, case in ipairs {
        { { timeout = "soon" }, "timeout" }, { { timeout = -1 }, "timeout" }, { { timeout = 0 }, "timeout" },
        { { connect_timeout = 0 }, "connect_timeout" }, { { max_retries = -1 }, "max_retries" },
        { { max_retries = 1.5 }, "max_retries" }, { { max_concurrency = 0 }, "max_concurrency" },
        { { retry_unanswered = "yes" }, "retry_unanswered" }, { { on_retry = true }, "on_retry" },
        { { base_url = "ftp://example.com/v1" }, "base_url" }, { { base_url = "api.example.com" }, "base_url" },
        { { api_key = 42 }, "api_key" }, { { limits = "many" }, "limits" }, { { idle_timeout = -5 }, "idle_timeout" },
        { { timeout = 0 / 0 }, "timeout" },
      } do
        local ok, msg = pcall(imgedit.new, case[1])
        assert.is_false(ok, case[2])
        assert.matches("bad option '" .. case[2] .. "'", msg)
      end
      assert.truthy(imgedit.new { base_url = "HTTPS://example.com/v1", idle_timeout = 0, max_retries = 0 })
    end)

    it("checks a per-request option where it is given, and leaves nothing behind", function()
      local c = client()
      for _, bad in ipairs { { timeout = "soon" }, { timeout = -1 }, { max_retries = "2" }, { on_progress = 1 },
        { on_partial = "f" }, { retry_base = -1 } } do
        local ok, msg = pcall(c.generate, c, small(bad))
        assert.is_false(ok)
        assert.matches("bad option", msg)
        assert.are.equal(0, c._live)
        assert.are.equal(0, require("imgedit.jobs").in_flight(c))
      end
      assert.are.equal(0, #emu:requests())
      assert.truthy(c:generate(small()))
      assert.are.equal(1, #emu:requests())
    end)

    it("refuses a misspelt request option, or a client's, rather than send it as a paid field", function()
      local c = client()
      for _, case in ipairs {
        { { timout = 5 }, "unknown request option 'timout' %(did you mean 'timeout'%?%)" },
        { { on_progres = function() end }, "did you mean 'on_progress'" },
        { { image = { pic } }, "did you mean 'images'" },
        { { base_url = "http://elsewhere/v1" }, "option 'base_url' belongs to imgedit.new" },
        { { max_concurrency = 2 }, "belongs to imgedit.new" },
        { { qualty = "low" }, "unknown request field 'qualty' %(did you mean 'quality'%?%)" },
        { { output_fromat = "png" }, "did you mean 'output_format'" },
        { { size = 64 }, "bad field 'size' %(string expected, got number%)" },
      } do
        local ok, msg = pcall(c.generate, c, small(case[1]))
        assert.is_false(ok)
        assert.matches(case[2], msg)
      end
      -- the service's own fields, known or new, still go out
      assert.truthy(c:generate(small { user = "me", moderation = "low", some_new_field = "v", seed = 7 }))
      assert.are.equal("v", emu:requests()[1].json.some_new_field)
      assert.are.equal(7, emu:requests()[1].json.seed) -- two letters from 'size': a field of its own
      assert.are.equal(1, #emu:requests())
      local ok, msg = pcall(imgedit.new, { limits = { max_imgs = 3 } })
      assert.is_false(ok)
      assert.matches("unknown entry of limits 'max_imgs' %(did you mean 'max_images'%?%)", msg)
    end)

    it("points a bad call at the caller's line, and a dot for a colon gets a clear answer", function()
      local c = client()
      local ok, msg = pcall(function() local img = c:edit(small { timeout = "soon" }); return img end)
      assert.is_false(ok)
      assert.matches("careless_spec%.lua:%d+: bad option 'timeout'", msg)
      ok, msg = pcall(c.edit, small())
      assert.matches("call it as client:edit", msg)
      ok, msg = pcall(c.download, c, { kind = "network" })
      assert.matches("an error with err%.url", msg)
    end)

    it("refuses images or a mask on generate, and sends JSON numbers", function()
      local c = client()
      local img, err = c:generate(small { images = { pic } })
      assert.is_nil(img)
      assert.are.equal("invalid_request", err.kind)
      assert.are.equal("images", err.param)
      _, err = c:generate(small { mask = pic })
      assert.are.equal("mask", err.param)
      _, err = c:generate(small { n = "one" })
      assert.are.equal("n", err.param)
      assert.are.equal(0, #emu:requests())
      assert.truthy(c:generate(small { n = "1" }))
      local sent = emu:requests()[1].json
      assert.are.equal("number", type(sent.n))
      assert.are.equal(1, sent.n)
    end)
  end)

  describe("callbacks that raise", function()
    it("end their own job as kind callback, while the other jobs go on", function()
      emu:configure { latency = 0.2 * H.SLOW }
      local c = client()
      local bad = c:submit("generate", small { on_progress = function() error("boom in progress") end })
      local good = c:submit("generate", small())
      assert.truthy(good:wait())
      local img, err = bad:wait()
      assert.is_nil(img)
      assert.are.equal("callback", err.kind)
      assert.are.equal("on_progress", err.callback)
      assert.matches("boom in progress", err.message)
      assert.are.equal(0, c:poll(0))
    end)

    it("in the last progress report still hand over the paid picture", function()
      local c = client()
      local img, err = c:generate(small { on_progress = function(p)
        if p.phase == "download" then error({ code = 7 }) end
      end })
      assert.is_nil(img)
      assert.are.equal("callback", err.kind)
      assert.are.same({ code = 7 }, err.cause)
      assert.are.equal("png", err.image.format)
      assert.is_true(err.maybe_billed)
      assert.are.equal(1, #emu:requests())
    end)

    it("in on_retry end the job without another request", function()
      emu:inject { status = 500 }
      local c = client()
      local img, err = c:generate(small { on_retry = function() error("no retries here") end })
      assert.is_nil(img)
      assert.are.equal("callback", err.kind)
      assert.matches("no retries here", err.message)
      assert.are.equal(1, #emu:requests())
      assert.are.equal(0, c:poll(0))
    end)

    it("in on_partial let the paid stream finish and keep its picture", function()
      local c = H.client(emu)
      local calls = 0
      local img, err = c:edit { prompt = "x", images = { pic }, size = "1024x1024", stream = true, partial_images = 2,
        on_partial = function() calls = calls + 1; error("bad partial") end }
      assert.is_nil(img)
      assert.are.equal("callback", err.kind)
      assert.are.equal(1, calls)
      assert.are.equal("png", err.image.format)
      assert.are.equal(1, #emu:requests())
    end)

    it("in a pipeline's on_step fail the step, which a re-run then takes from the journal", function()
      local out = dir .. "/steps"
      local p = imgedit.pipeline { client = client(), dir = out, cache = false, quiet = true,
        on_step = function() error("step hook failed") end }
      local img, err = p:generate("a", small())
      assert.is_nil(img)
      assert.are.equal("callback", err.kind)
      assert.matches("step hook failed", err.message)
      assert.truthy(err.image)
      local again = imgedit.pipeline { client = client(), dir = out, cache = false, quiet = true }
      assert.truthy(again:generate("a", small()))
      assert.are.equal(1, #emu:requests())
    end)
  end)

  describe("callbacks that call the library back", function()
    -- Each callback, each call: the outcome is the one asked for.
    local CALLBACKS = {
      on_progress = function(c, req, fn)
        req.on_progress = function(p) if p.phase == "wait" or p.phase == "download" then fn() end end
        return c:submit("generate", req)
      end,
      on_retry = function(c, req, fn)
        emu:inject { status = 500 }
        req.on_retry = fn
        return c:submit("generate", req)
      end,
      on_partial = function(c, req, fn)
        req.on_partial, req.stream, req.partial_images, req.images = fn, true, 1, { pic }
        req.model, req.response_format, req.size = "gpt-image-2", nil, "1024x1024"
        return c:submit("edit", req)
      end,
    }

    for name, start in pairs(CALLBACKS) do
      it(name .. " cancels its own job: canceled, and a cancel wins over a retry", function()
        local c = client()
        local job
        local fired = false
        job = start(c, small(), function()
          fired = true
          job:cancel()
        end)
        local img, err = job:wait()
        assert.is_true(fired)
        assert.is_nil(img)
        assert.are.equal("canceled", err.kind)
        -- Sent once at most: in the wait phase the cancel may beat the
        -- emulator's reading of the body; after a 500 no retry follows.
        local n = #H.api_requests(emu)
        assert.is_true(n == 1 or (name == "on_progress" and n == 0), "requests: " .. n)
        assert.are.equal(0, c:poll(0))
        assert.are.equal(0, require("imgedit.jobs").in_flight(c))
        assert.truthy(c:generate(small()))
      end)

      it(name .. " cancels another job", function()
        -- One slot: the other job waits in the queue behind this one.
        local c = client { max_concurrency = 1 }
        local other
        local job = start(c, small(), function() other:cancel() end)
        other = c:submit("generate", small { prompt = "other" })
        assert.truthy(job:wait())
        local _, err = other:wait()
        assert.are.equal("canceled", err.kind)
        for _, r in ipairs(H.api_requests(emu)) do assert.are_not.equal("other", r.fields.prompt or r.json.prompt) end
      end)

      it(name .. " submits a new job", function()
        local c = client()
        local extra
        local job = start(c, small(), function()
          if not extra then extra = c:submit("generate", small { prompt = "from a callback" }) end
        end)
        assert.truthy(job:wait())
        assert.truthy(extra)
        assert.truthy(extra:wait())
      end)

      it(name .. " polls, and waits on another job", function()
        local c = client()
        local polled = 0
        local job = start(c, small(), function()
          c:poll(0)
          polled = polled + 1
          if polled == 1 then assert(c:generate(small { prompt = "nested" })) end
        end)
        assert.truthy(job:wait())
        assert.is_true(polled >= 1)
      end)
    end
  end)

  describe("close", function()
    it("cancels live jobs, is idempotent, and any later call raises", function()
      emu:configure { latency = 2 }
      local c = client()
      local job = c:submit("generate", small())
      c:poll(0.05)
      c:close()
      c:close()
      local img, err = job:result()
      assert.is_nil(img)
      assert.are.equal("canceled", err.kind)
      for _, call in ipairs {
        function() return c:generate(small()) end, function() return c:submit("generate", small()) end,
        function() return c:poll(0) end, function() return c:map({}) end,
        function() return c:download("http://127.0.0.1:1/x.png") end,
      } do
        local ok, msg = pcall(call)
        assert.is_false(ok)
        assert.matches("client is closed", msg)
      end
      assert.matches("closed", tostring(c))
    end)

    it("marks the transfers of a closed multi handle canceled", function()
      emu:configure { latency = 2 }
      local core = require "imgedit.core"
      local m = core.multi()
      local t = m:start { url = emu.url .. "/images/generations", body = "{}", timeout = 5 }
      m:perform(0.05)
      m:close()
      m:close()
      assert.is_true(t:done())
      local res = t:result()
      assert.is_false(res.ok)
      assert.are.equal("canceled", res.reason)
      t:close()
    end)

    it("is the client's __close, and a collected client frees its connections", function()
      if _VERSION == "Lua 5.4" then
        local chunk = assert(load([[
          local H, emu, small = ...
          local job
          do
            local c <close> = H.client(emu, { model = "gpt-image-2-all" })
            job = c:submit("generate", small())
          end
          return job
        ]]))
        emu:configure { latency = 2 }
        local job = chunk(H, emu, small)
        local _, err = job:result()
        assert.are.equal("canceled", err.kind)
      end
      emu:configure { latency = 0 }
      local weak = setmetatable({}, { __mode = "k" })
      do
        local c = client()
        assert(c:generate(small()))
        weak[c] = true
        -- and one with a job still running when it is collected: its
        -- transfers are finalised before it, and nothing may raise
        emu:configure { latency = 2 }
        local live = client()
        live:submit("generate", small())
        live:poll(0.05)
        weak[live] = true
      end
      collectgarbage()
      collectgarbage()
      assert.is_nil(next(weak))
      emu:configure { latency = 0 }
      assert.truthy(client():generate(small()))
    end)
  end)
end)
