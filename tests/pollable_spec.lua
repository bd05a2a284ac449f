-- The pollable client: client:fd() is readable whenever poll has something
-- to hand over, client:timeout() says when poll must run anyway, and a
-- client is a cqueues pollable object as it is. Waited on here by real
-- loops (cqueues and luv, from Debian), against the emulator.
local H = require "helpers"
local core = require "imgedit.core"

local small = H.small
local have_cq, cqueues = pcall(require, "cqueues")
local have_uv, uv = pcall(require, "luv")

local function sleep(s) os.execute("sleep " .. s) end

local readable = H.readable

describe("a pollable client", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(32, 32))
  end)

  local function client(opts) return H.all_client(emu, opts) end

  it("fd() is readable once an answer waits for poll, and quiet again after poll(0) took it", function()
    if not have_cq then return pending("lua-cqueues is not installed") end
    emu:configure { latency = 0.4 }
    local c = client()
    local fd = assert(c:fd())
    assert.are.equal("number", math.type and math.type(fd) == "integer" and "number" or type(fd))
    assert.are.equal(fd, c:fd()) -- one descriptor per client
    local job = c:submit("edit", small { images = { pic }, prompt = "wait on me" })
    c:poll(0)
    assert.is_false(readable(fd, 0)) -- the model is still at work
    assert.is_true(readable(fd, 10))
    assert.is_false(job:done())
    c:poll(0)
    assert.is_true(job:done())
    assert.truthy(job:result())
    assert.is_false(readable(fd, 0)) -- poll read it
    assert.are.equal(1, #H.api_requests(emu))
    c:close()
  end)

  it("fd() made after the answer came is readable at once: nothing is missed", function()
    if not have_cq then return pending("lua-cqueues is not installed") end
    local c = client()
    local job = c:submit("generate", small { prompt = "early" })
    -- every byte of the answer went out (the emulator says so), then a
    -- moment for the network thread to take it in: not taken by a poll
    local t0 = core.now()
    local function sent()
      local r = emu:requests()[1]
      return r and r.delivered
    end
    while not sent() and core.now() - t0 < 10 * H.SLOW do sleep(0.02) end
    assert.truthy(sent())
    sleep(0.3 * H.SLOW)
    local fd = assert(c:fd())
    assert.is_true(readable(fd, 0))
    c:poll(0)
    assert.is_true(job:done())
    c:close()
  end)

  it("timeout() is nil when nothing waits on a clock, and the back-off's seconds while a retry waits", function()
    local c = client { retry_base = 0.5, retry_cap = 0.5 }
    assert.is_nil(c:timeout())
    emu:inject { status = 503, retry_after = 1 }
    local job = c:submit("generate", small { prompt = "retry me" })
    local t0 = core.now()
    while c._live > 0 and #c._waiting == 0 and core.now() - t0 < 5 do c:poll(0.05) end
    local t = c:timeout()
    assert.is_number(t)
    assert.is_true(t >= 0 and t <= 1, tostring(t)) -- what is left of Retry-After's second
    assert.truthy(job:wait())
    assert.is_nil(c:timeout())
    assert.are.equal(2, #H.api_requests(emu)) -- a 503 is not billed: sent again, once
    c:close()
  end)

  it("timeout() is 0 while a queued job could start, and reports progress on its interval", function()
    local c = client { max_concurrency = 1, progress_interval = 0.25 }
    emu:configure { latency = 0.3 }
    local a = c:submit("generate", small { prompt = "a", on_progress = function() end })
    local b = c:submit("generate", small { prompt = "b" })
    assert.are.equal(0.25, c:timeout())
    a:cancel("the slot is wanted")
    assert.are.equal(0, c:timeout())
    assert.truthy(b:wait())
    c:close()
  end)

  it("is a cqueues pollable: a loop waits on the client, wakes a few times per answer, and every answer arrives", function()
    if not have_cq then return pending("lua-cqueues is not installed") end
    emu:configure { latency = 0.5 }
    local c = client { decode = "rgba" }
    local list = {}
    for i = 1, 4 do list[i] = c:submit("edit", small { images = { pic }, prompt = "cq " .. i }) end
    local cq, wakes = cqueues.new(), 0
    cq:wrap(function()
      while c:poll(0) > 0 do
        cqueues.poll(c, c:timeout())
        wakes = wakes + 1
      end
    end)
    assert(cq:loop())
    for _, j in ipairs(list) do
      local img = assert(j:result())
      assert.are.equal(img.width * img.height * 4, #img.pixels)
    end
    assert.is_true(wakes >= 1 and wakes <= 30, tostring(wakes)) -- no spinning through the model's half second (hundreds)
    assert.are.equal(4, #H.api_requests(emu))
    c:close()
  end)

  it("pictures over one poll's budget keep the descriptor readable until all are taken", function()
    if not have_cq then return pending("lua-cqueues is not installed") end
    local c = client { decode = "rgba" }
    local list = {}
    -- four 1024x1024 pictures: 4 MiB of pixels each, one poll(0) hands over one
    for i = 1, 4 do
      list[i] = c:submit("generate", { prompt = "big " .. i, size = "1024x1024", response_format = "b64_json" })
    end
    local t0 = core.now()
    while emu:stats().requests < 4 and core.now() - t0 < 10 do sleep(0.02) end
    local fd, taken = c:fd(), 0
    while taken < 4 and core.now() - t0 < 20 do
      assert.is_true(readable(fd, 10))
      c:poll(0)
      taken = 0
      for _, j in ipairs(list) do taken = taken + (j:done() and 1 or 0) end
    end
    for _, j in ipairs(list) do assert.truthy(j:result()) end
    assert.are.equal(4, #H.api_requests(emu))
    c:close()
  end)

  it("luv: a poll handle on fd() and a timer on timeout() drive edits while the loop's own timer keeps firing", function()
    if not have_uv then return pending("lua-luv is not installed") end
    emu:configure { latency = 0.5 }
    local c = client()
    local list = {}
    for i = 1, 3 do list[i] = c:submit("edit", small { images = { pic }, prompt = "uv " .. i }) end
    local ticks, wakes = 0, 0
    local tick = uv.new_timer()
    tick:start(10, 10, function() ticks = ticks + 1 end)
    local poll, timer = uv.new_poll(assert(c:fd())), uv.new_timer()
    local function step()
      wakes = wakes + 1
      if c:poll(0) == 0 then
        poll:stop()
        timer:stop()
        tick:stop()
        return
      end
      local t = c:timeout()
      timer:stop()
      if t then timer:start(math.ceil(t * 1000), 0, step) end
    end
    poll:start("r", step)
    step()
    uv.run()
    for h in pairs { [poll] = 1, [timer] = 1, [tick] = 1 } do h:close() end
    uv.run()
    for _, j in ipairs(list) do assert.truthy(j:result()) end
    assert.is_true(ticks >= 2, tostring(ticks)) -- the loop ran its timer while the edits waited
    assert.is_true(wakes <= 30, tostring(wakes)) -- a spinning loop wakes hundreds of times
    assert.are.equal(3, #H.api_requests(emu))
    c:close()
  end)

  it("fd() raises on a closed client, like every call", function()
    local c = client()
    assert.truthy(c:fd())
    c:close()
    assert.has_error(function() c:fd() end, "client is closed (fd after close)")
    assert.has_error(function() c:timeout() end, "client is closed (timeout after close)")
  end)
end)
