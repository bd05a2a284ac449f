-- The network thread keeps every money promise (issue 27): a paid picture
-- is never dropped between polls, a slow model's delivered answer is never
-- thrown away as stalled, a cancel after the whole request went out says it
-- may be billed, close never deadlocks on a progress report, queued pixels
-- count toward the memory bound. Every test counts the requests the
-- emulator received.
local H = require "helpers"
local core = require "imgedit.core"

local function sleep(s) os.execute("sleep " .. s) end

-- Wait until the emulator has answered n requests in full (or 10 s).
local function answered(emu, n)
  for _ = 1, 200 do
    local done = 0
    for _, r in ipairs(H.api_requests(emu)) do
      if r.delivered then done = done + 1 end
    end
    if done >= n then return true end
    sleep(0.05)
  end
  return false
end

describe("money", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(64, 64))
  end)

  describe("a stream in a frame loop", function()
    it("hands over the final picture when everything arrived between two polls", function()
      local c = H.client(emu)
      for round = 1, 3 do
        emu:clear()
        local partials = 0
        local job = c:submit("edit", { prompt = "x", images = { pic }, stream = true, partial_images = 1,
          decode = "rgba", on_partial = function() partials = partials + 1 end })
        assert.is_true(answered(emu, 1), "the emulator delivered the stream")
        sleep(0.3 * H.SLOW) -- the decoder has it all: the next polls find events and the end together
        local polls = 0
        while not job:done() and polls < 100000 do
          c:poll(0)
          polls = polls + 1
        end
        local img, err = job:result()
        assert.truthy(img, "round " .. round .. ": " .. tostring(err))
        assert.are.equal(1024 * 1024 * 4, #img.pixels)
        assert.are.equal(1, partials)
        assert.are.equal(1, #H.api_requests(emu))
      end
      c:close()
    end)

    it("hands over every event when they exceed what one poll(0) may take", function()
      local c = H.client(emu)
      local seen = {}
      local job = c:submit("edit", { prompt = "x", images = { pic }, stream = true, partial_images = 3,
        decode = "rgba", on_partial = function(_, i) seen[#seen + 1] = i end })
      assert.is_true(answered(emu, 1))
      sleep(0.5 * H.SLOW)
      local polls = 0
      while not job:done() do
        c:poll(0)
        polls = polls + 1
      end
      local img, err = job:result()
      assert.truthy(img, tostring(err))
      assert.are.same({ 0, 1, 2 }, seen)
      assert.is_true(polls >= 4, "4 MiB of pixels a poll: the three partials and the final spread over polls")
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)
  end)

  describe("a slow model", function()
    -- the model past idle_timeout: before the answer, or after its headers
    for _, case in ipairs {
      { "before its answer's headers", function() emu:configure { latency = 2 * H.SLOW } end },
      { "when the headers come first and the body after", function() emu:inject { think = 2 * H.SLOW } end },
    } do
      it("is not stalled past idle_timeout " .. case[1], function()
        case[2]()
        local c = H.client(emu, { idle_timeout = 0.5 * H.SLOW })
        local img, err = c:edit { prompt = "x", images = { pic }, size = "1024x1024" }
        assert.truthy(img, tostring(err))
        assert.are.equal(1, #H.api_requests(emu))
        c:close()
      end)
    end

    it("is not stalled between a stream's events", function()
      emu:configure { latency = 3 * H.SLOW }
      local c = H.client(emu, { idle_timeout = 0.5 * H.SLOW })
      local img, err = c:edit { prompt = "x", images = { pic }, stream = true, partial_images = 2 }
      assert.truthy(img, tostring(err))
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)

    it("still stalls when an answer's body stops part way", function()
      emu:inject { stall = 3 * H.SLOW, stall_at = 100 }
      local c = H.client(emu, { idle_timeout = 0.5 * H.SLOW, max_retries = 0 })
      local img, err = c:edit { prompt = "x", images = { pic }, size = "1024x1024" }
      assert.is_nil(img)
      assert.are.equal("timeout", err.kind)
      assert.matches("stalled", err.message)
      assert.is_true(err.maybe_billed)
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)

    it("hands over a stream's completed picture when the stream then fails", function()
      emu:inject { hang_after_completed = 10 * H.SLOW }
      local c = H.client(emu, { timeout = 2 * H.SLOW, max_retries = 3 })
      local img, err = c:edit { prompt = "x", images = { pic }, stream = true, partial_images = 1 }
      assert.is_nil(img)
      assert.are.equal("timeout", err.kind)
      assert.truthy(err.image, "the completed picture came along")
      assert.are.equal(1024, err.image.width)
      assert.is_true(err.maybe_billed)
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)

    it("hands over a whole answer's picture when the connection then breaks", function()
      emu:inject { whole_then_cut = true }
      local c = H.client(emu, { max_retries = 3 })
      local img, err = c:edit { prompt = "x", images = { pic }, size = "1024x1024" }
      assert.is_nil(img)
      assert.truthy(err.image, tostring(err))
      assert.are.equal(1024, err.image.width)
      assert.is_true(err.maybe_billed)
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)
  end)

  describe("cancel", function()
    it("after the whole request was sent says maybe_billed", function()
      emu:configure { latency = 3 * H.SLOW }
      local c = H.client(emu)
      local job = c:submit("edit", { prompt = "x", images = { pic } })
      for _ = 1, 100 do
        c:poll(0.05)
        if #H.api_requests(emu) == 1 then break end
      end
      sleep(0.2)
      c:poll(0)
      assert.is_true(job:cancel())
      local _, err = job:result()
      assert.are.equal("canceled", err.kind)
      assert.is_true(err.maybe_billed)
      assert.matches("may bill it", err.message)
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)

    it("is carried out by the network thread before result() reads the answer (the internal API)", function()
      for round = 1, 12 do
        local body = '{"model":"gpt-image-2","prompt":"internal ' .. round .. '","size":"1024x1024"}'
        if round <= 6 then -- in the send or the model's time
          emu:configure { latency = 0.3 }
        else -- while the answer's body is arriving
          emu:configure { latency = 0 }
          emu:inject { stall = 2, stall_at = 4000 }
        end
        local m = core.multi()
        local t = m:start { url = emu.url .. "/images/generations", body = body, timeout = 10,
          headers = { "Authorization: Bearer " .. emu.key, "Content-Type: application/json" } }
        if round <= 6 then
          for _ = 1, round do m:perform(0.005) end
        else
          for _ = 1, 400 do
            m:perform(0.01)
            if select(3, t:progress()) > 0 then break end
          end
          assert.is_true(select(3, t:progress()) > 0, "the answer began")
        end
        t:cancel()
        local res = t:result()
        assert.is_true(res.reason == "canceled" or res.ok, "canceled, or finished just before")
        assert.is_string(res.body) -- the network thread no longer writes it
        t:close()
        m:close()
      end
      -- each round's request went out once at most (a cancel never sends again)
      local seen = {}
      for _, r in ipairs(H.api_requests(emu)) do
        local p = r.fields.prompt
        assert.is_nil(seen[p], p .. " sent twice")
        seen[p] = true
      end
    end)

    it("before anything was sent says nothing of billing", function()
      local c = H.client(emu, { max_concurrency = 1 })
      emu:configure { latency = 1 * H.SLOW }
      local first = c:submit("edit", { prompt = "x", images = { pic } })
      local queued = c:submit("edit", { prompt = "y", images = { pic } })
      assert.is_true(queued:cancel())
      local _, err = queued:result()
      assert.are.equal("canceled", err.kind)
      assert.is_nil(err.maybe_billed)
      assert.truthy(first:wait())
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)
  end)

  it("closes a client while its uploads report progress, without a deadlock", function()
    local big = H.write(dir .. "/big.png", H.png(1024, 1024, function(x, y) return (x * 7 + y * 13) % 256 end))
    local script = H.write(dir .. "/close.lua", [[
      local imgedit = require "imgedit"
      local url, key, path = ...
      for round = 1, 20 do
        local c = imgedit.new { base_url = url, api_key = key, provider = "apiyi", progress_interval = 0 }
        local n = 0
        for i = 1, 6 do
          c:submit("edit", { prompt = "x", images = { path }, on_progress = function() n = n + 1 end })
        end
        for _ = 1, round do c:poll(0.002) end
        c:close()
      end
      print("closed")
    ]])
    -- an emulator of its own: the closed uploads would reach the next tests' log
    local own = H.emulator { latency = 0.5 }
    local out, code = H.sh("timeout 60 " .. H.CHILD .. H.LUA .. " " .. script .. " " .. own.url .. " " .. own.key
      .. " " .. big)
    local n = #H.api_requests(own)
    own:stop()
    assert.are.equal(0, code, out)
    assert.matches("closed", out)
    assert.is_true(n <= 120)
  end)

  it("bounds a stream's queued pixels by max_response_bytes, and loses no picture", function()
    local c = H.client(emu, { max_response_bytes = 6 * 2 ^ 20, max_retries = 0 })
    local partials = {}
    local job = c:submit("edit", { prompt = "x", images = { pic }, stream = true, partial_images = 3,
      decode = "rgba", on_partial = function(p) partials[#partials + 1] = p end })
    -- nobody takes the events meanwhile: three 4 MiB partials wait in the queue
    assert.is_true(answered(emu, 1))
    sleep(1 * H.SLOW)
    local img, err = job:wait()
    assert.truthy(img, tostring(err))
    assert.are.equal(3, #partials)
    assert.truthy(partials[1].pixels, "the first fits")
    assert.is_nil(rawget(partials[3], "pixels"))
    assert.matches("max_response_bytes", partials[3].pixels_error)
    assert.are.equal((core.decode(partials[3].bytes)), (partials[3]:rgba()), "rgba() decodes it where asked")
    assert.are.equal(1, #H.api_requests(emu))
    c:close()
  end)

  -- Issue 33: what the service gets is what was checked. A slow reader (the
  -- emulator stops reading the upload for a while) holds the upload part
  -- way while the test changes the file; the file is larger than what the
  -- loopback buffers hold, so its last chunk is still to be read.
  describe("the bytes sent are the bytes checked", function()
    local BIG = 9 * 2 ^ 20 -- under the 10 MB of the emulated gateway
    local function big(name, fill)
      return H.write(dir .. "/" .. name, H.png(64, 64) .. string.rep(fill, BIG))
    end
    -- rewrite in place: same file, same size, other bytes
    local function scribble(path)
      local f = assert(io.open(path, "r+b"))
      f:seek("set", 5 * 2 ^ 20)
      f:write(string.rep("!", 4096))
      f:close()
    end
    local function changed_during_send(path, change)
      local c = H.client(emu, { max_retries = 2 })
      emu:inject { pause_upload = 1.5 * H.SLOW, pause_at = 65536 }
      local job = c:submit("edit", { prompt = "x", images = { path } })
      sleep(0.5 * H.SLOW) -- the upload is part way, waiting on the reader
      change(path)
      local img, err = job:wait()
      c:close()
      return img, err, job
    end

    it("stops the upload before its end when the file is rewritten while it is sent (a file just made)", function()
      local path = big("fresh.png", "a")
      local img, err, job = changed_during_send(path, scribble)
      assert.is_nil(img)
      assert.are.equal("io", err.kind)
      assert.matches("fresh.png changed on disk after it was checked", err.message, 1, true)
      assert.matches("nothing was billed", err.message, 1, true)
      assert.is_nil(err.maybe_billed)
      assert.is_false(err.retryable)
      assert.are.equal(1, job.attempts, "not sent again")
      assert.are.equal(0, #H.api_requests(emu), "no whole request reached the service")
    end)

    it("stops it too for a file older than its timestamps' tick, by its stamp", function()
      local path = big("old.png", "b")
      sleep(2.2) -- now its ctime vouches for it: no hash at submit
      assert.is_false(core.inspect(path).racy)
      local img, err = changed_during_send(path, scribble)
      assert.is_nil(img)
      assert.are.equal("io", err.kind)
      assert.matches("old.png changed on disk", err.message, 1, true)
      assert.are.equal(0, #H.api_requests(emu))
      -- unchanged, the same file goes through whole
      local c = H.client(emu)
      assert.truthy(c:edit { prompt = "x", images = { path } })
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)

    it("a file replaced by another while it is sent: what completes carries the bytes checked", function()
      local path = big("swap.png", "c")
      local checked = core.sha256(H.read(path))
      local img, err = changed_during_send(path, function(p)
        H.write(p .. ".new", H.png(64, 64) .. string.rep("d", BIG))
        assert(os.rename(p .. ".new", p))
      end)
      -- The open file is still the one checked: sent whole, or stopped.
      local got = H.api_requests(emu)
      if img then
        assert.are.equal(1, #got)
        assert.are.equal(checked, got[1].files[1].sha256)
      else
        assert.are.equal("io", err.kind)
        assert.are.equal(0, #got)
      end
    end)

    it("a file changed or replaced while its job waited for a slot: no whole request with the new bytes", function()
      local function swap(p)
        H.write(p .. ".new", H.png(64, 64) .. string.rep("z", BIG))
        assert(os.rename(p .. ".new", p))
      end
      local paths = { old_scribble = big("q1.png", "e"), old_swap = big("q2.png", "f") }
      sleep(2.2) -- these two are checked by their stamps; the next two by their bytes
      paths.new_scribble, paths.new_swap = big("q3.png", "g"), big("q4.png", "h")
      for _, case in ipairs { "old_scribble", "old_swap", "new_scribble", "new_swap" } do
        emu:clear()
        local path = paths[case]
        local c = H.client(emu, { max_concurrency = 1 })
        emu:configure { latency = 1 * H.SLOW }
        local first = c:submit("edit", { prompt = "x", images = { pic } })
        local queued = c:submit("edit", { prompt = "y", images = { path } })
        if case:find("scribble") then scribble(path) else swap(path) end
        assert.truthy(first:wait())
        local img, err = queued:wait()
        c:close()
        assert.is_nil(img, case)
        assert.are.equal("io", err.kind, case)
        assert.matches(path:match("[^/]+$"), err.message, 1, true)
        assert.is_nil(err.maybe_billed, case)
        assert.are.equal(1, #H.api_requests(emu), case .. ": only the first")
      end
    end)
  end)
end)
