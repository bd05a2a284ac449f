local H = require "helpers"
local sse_hook = require "imgedit_test.sse"
local core = require "imgedit.core"
local imgedit = require "imgedit"

-- A recorded stream with every feature of the format: CRLF and LF, a
-- comment, a multi-line data field, an event without data, an id field.
local RECORDED = table.concat {
  ": keep-alive comment\r\n",
  "event: image_edit.partial_image\r\n",
  "id: 1\r\n",
  'data: {"type":"image_edit.partial_image","b64_json":"aGVsbG8=","partial_image_index":0}\r\n',
  "\r\n",
  "event: ignored-without-data\n\n",
  "event: image_edit.completed\n",
  'data: {"type":"image_edit.completed",\n',
  'data:"b64_json":"d29ybGQ=","usage":{"total_tokens":7}}\n',
  "\n",
  "data: last\r\r",
}

local WANT = {
  { event = "image_edit.partial_image",
    data = '{"type":"image_edit.partial_image","b64_json":"aGVsbG8=","partial_image_index":0}' },
  { event = "image_edit.completed",
    data = '{"type":"image_edit.completed",\n"b64_json":"d29ybGQ=","usage":{"total_tokens":7}}' },
  { event = "message", data = "last" },
}

describe("the SSE parser", function()
  it("parses a recorded stream", function()
    local ev, ok = sse_hook.parse { RECORDED }
    assert.is_true(ok)
    assert.are.same(WANT, ev)
  end)

  it("gives the same events for every split point, and byte by byte", function()
    for i = 0, #RECORDED do
      local ev = sse_hook.parse { RECORDED:sub(1, i), RECORDED:sub(i + 1) }
      assert.are.same(WANT, ev, "split at " .. i)
    end
    for i = 1, #RECORDED - 1, 7 do
      for j = i + 1, #RECORDED, 11 do
        local ev = sse_hook.parse { RECORDED:sub(1, i), RECORDED:sub(i + 1, j), RECORDED:sub(j + 1) }
        assert.are.same(WANT, ev, "splits at " .. i .. ", " .. j)
      end
    end
    local bytes = {}
    for i = 1, #RECORDED do bytes[i] = RECORDED:sub(i, i) end
    assert.are.same(WANT, (sse_hook.parse(bytes)))
  end)

  it("drops an event that never ends, and bounds its buffers", function()
    local ev, ok = sse_hook.parse { "data: unfinished" }
    assert.are.same({}, ev)
    assert.is_true(ok)
    ev, ok = sse_hook.parse({ "data: " .. string.rep("x", 5000) .. "\n\n" }, 1024)
    assert.is_false(ok)
    assert.are.same({}, ev)
  end)
end)

describe("streamed answers", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/g.png", H.png(96, 96, function(x, y) return (x * y) % 256 end))
  end)

  local function req(extra)
    local r = { prompt = "a gradient", images = { pic }, size = "1024x1024", stream = true, partial_images = 2 }
    for k, v in pairs(extra or {}) do r[k] = v end
    return r
  end

  it("delivers partial images as they come, then the completed image", function()
    emu:configure { latency = 0.6 * H.SLOW }
    local seen = {}
    local c = H.client(emu)
    local t0 = core.now()
    local img, err = c:edit(req { on_partial = function(p, i) seen[#seen + 1] = { p, i, core.now() - t0 } end })
    assert.is_nil(err)
    assert.are.equal(2, #seen)
    assert.are.same({ 0, 1 }, { seen[1][2], seen[2][2] })
    assert.is_true(imgedit.is_image(seen[1][1]))
    assert.are.same({ 1024, 1024 }, { seen[1][1].width, seen[1][1].height })
    assert.is_true(seen[1][1].partial)
    assert.are_not.equal(seen[1][1].sha256, seen[2][1].sha256)
    assert.are_not.equal(seen[2][1].sha256, img.sha256)
    assert.is_true(seen[2][3] < core.now() - t0) -- partials came before the end
    assert.is_true(img.usage.total_tokens > 0)
    -- the same image as without streaming
    local plain = assert(c:edit { prompt = "a gradient", images = { pic }, size = "1024x1024" })
    assert.are.equal(plain.sha256, img.sha256)
    assert.are.equal("true", emu:requests()[1].fields.stream)
    assert.are.equal("2", emu:requests()[1].fields.partial_images)
  end)

  it("streams generations too", function()
    local n = 0
    local img = assert(H.client(emu):generate { prompt = "sky", size = "1024x1024", stream = true, partial_images = 1,
      on_partial = function() n = n + 1 end })
    assert.are.equal(1, n)
    assert.are.equal(true, emu:requests()[1].json.stream)
    assert.are.equal("png", img.format)
  end)

  it("delivers partials during poll for jobs in parallel", function()
    emu:configure { latency = 0.5 * H.SLOW }
    local c = H.client(emu)
    local got = { {}, {}, {} }
    local jobs = {}
    for j = 1, 3 do
      jobs[j] = c:submit("edit", req { prompt = "job " .. j, on_partial = function(_, i) got[j][#got[j] + 1] = i end })
    end
    local polls = 0
    while c:poll(0.05) > 0 do polls = polls + 1 end
    for j = 1, 3 do
      assert.are.same({ 0, 1 }, got[j])
      assert.truthy(jobs[j]:result())
    end
    assert.are.equal(3, emu:stats().max_in_flight)
    assert.is_true(polls > 3)
  end)

  it("reports an error event, keeping the partials already delivered", function()
    emu:inject { stream_error = true, message = "the model gave up" }
    local n = 0
    local img, err = H.client(emu):edit(req { on_partial = function() n = n + 1 end })
    assert.is_nil(img)
    assert.are.equal("server", err.kind)
    assert.matches("the model gave up", err.message)
    assert.are.equal(2, n)
    assert.are.equal(1, #emu:requests())
    emu:inject { stream_error = true, code = "moderation_blocked" }
    _, err = H.client(emu):edit(req())
    assert.are.equal("moderation", err.kind)
  end)

  it("reports a stream cut mid-way, and does not retry after partials", function()
    emu:inject { cut_after = 1 }
    local n = 0
    local img, err = H.client(emu):edit(req { on_partial = function() n = n + 1 end })
    assert.is_nil(img)
    assert.are.equal("network", err.kind)
    assert.matches("after 1 partial image", err.message)
    assert.are.equal(1, n)
    assert.are.equal(1, #emu:requests())
  end)

  it("does not send again a stream the service answered and then cut before any event", function()
    -- The 200 and its headers arrived: the service has the edit and bills it.
    emu:inject { cut_after = 0 }
    local img, err = H.client(emu, { retry_base = 0.01 }):edit(req())
    assert.is_nil(img)
    assert.are.equal("network", err.kind)
    assert.is_true(err.maybe_billed)
    assert.is_false(err.retryable)
    assert.are.equal(1, #emu:requests())
    emu:clear()
    emu:inject { cut_after = 0 }
    assert.truthy(H.client(emu, { retry_base = 0.01, retry_unanswered = true }):edit(req()))
    assert.are.equal(2, #emu:requests())
  end)

  it("reports a stream that ends without its completed event", function()
    emu:inject { no_completed = true }
    local _, err = H.client(emu):edit(req())
    assert.are.equal("protocol", err.kind)
    assert.matches("without a completed event", err.message)
  end)

  it("handles a JSON answer to a streamed request", function()
    -- gpt-image-2-all does not stream: the answer is plain JSON
    local img = assert(H.client(emu, { model = "gpt-image-2-all" }):edit { prompt = "x", images = { pic },
      stream = true, response_format = "b64_json" })
    assert.are.equal("png", img.format)
  end)

  it("checks partial_images and stream locally and at the emulator", function()
    local c = H.client(emu)
    local _, err = c:edit(req { partial_images = 4 })
    assert.are.equal("partial_images", err.param)
    _, err = c:edit(req { stream = "maybe" })
    assert.are.equal("stream", err.param)
    assert.are.equal(0, #emu:requests())
    _, err = c:edit(req { partial_images = 4, _no_checks = true })
    assert.are.equal(400, err.status)
    assert.are.equal("partial_images", err.param)
  end)

  it("caches the final image in a pipeline, never the partials", function()
    local out, cache = dir .. "/pl", dir .. "/plcache"
    local n = 0
    local p = imgedit.pipeline { client = H.client(emu), dir = out, cache = cache, quiet = true }
    local a = assert(p:edit("s", req { on_partial = function() n = n + 1 end }))
    assert.are.equal(2, n)
    emu:clear()
    local p2 = imgedit.pipeline { client = H.client(emu), dir = out, cache = cache, quiet = true }
    local b = assert(p2:edit("s", { prompt = "a gradient", images = { pic }, size = "1024x1024" }))
    assert.are.equal(a.sha256, b.sha256)
    assert.are.equal(0, #emu:requests())
    assert.are.equal(1, #H.ls(cache)) -- one entry folder: the final image
  end)

  it("the command line writes each partial image", function()
    local o = dir .. "/cli.png"
    local p = io.popen("env LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;' IMGEDIT_API_KEY=" .. emu.key
      .. " IMGEDIT_BASE_URL=" .. emu.url .. " " .. H.LUA .. " bin/imgedit edit -p x -i " .. pic
      .. " --size 1024x1024 --stream --partials 2 -o " .. o .. " 2>&1; echo exit=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("exit=0", out)
    for i = 0, 1 do
      local info = assert(imgedit.inspect(dir .. "/cli.partial-" .. i .. ".png"))
      assert.are.equal(1024, info.width)
    end
    assert.truthy(imgedit.inspect(o))
  end)
end)
