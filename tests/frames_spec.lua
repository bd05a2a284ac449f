-- A frame loop's share of the work (issue 19): the network runs on a thread
-- of its own, so poll(0) only takes what it handed over; decode = "rgba"
-- brings pictures decoded to RGBA off the caller's thread; img:rgba()
-- decodes the others where it is called. Every test counts the requests
-- the emulator received: decoding never sends anything again.
local H = require "helpers"
local core = require "imgedit.core"
local imgedit = require "imgedit"

local function sleep(s) os.execute("sleep " .. s) end

-- on_thread(fn, ...) -> how many pictures the caller's thread decoded
-- (core.decode, where image.lua decodes) while fn ran, then fn's results.
local function on_thread(fn, ...)
  local real, n = core.decode, 0
  core.decode = function(...)
    n = n + 1
    return real(...)
  end
  local ok, a, b = pcall(fn, ...)
  core.decode = real
  assert(ok, a)
  return n, a, b
end

describe("frames", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(64, 64, function(x, y) return (x * 3 + y) % 256 end))
  end)

  it("moves transfers on between polls: one poll(0) after a wait finds the job done", function()
    local c = H.all_client(emu)
    local job = c:submit("generate", H.small { prompt = "a" })
    -- no poll at all while the request goes out and the answer comes back
    for _ = 1, 50 do
      sleep(0.1)
      if #H.api_requests(emu) == 1 and emu:requests()[1].status then break end
    end
    sleep(0.2 * H.SLOW)
    c:poll(0)
    assert.is_true(job:done(), "a single poll(0) took the finished answer")
    assert.truthy(job:result())
    assert.are.equal(1, #H.api_requests(emu))
    c:close()
  end)

  it("decodes the answer's picture off the caller's thread: img.pixels, width, height", function()
    local c = H.client(emu)
    local n, img = on_thread(c.edit, c, { prompt = "x", images = { pic }, decode = "rgba" })
    assert.truthy(img)
    assert.are.equal(0, n)
    assert.are.equal(1024, img.width)
    assert.are.equal(1024 * 1024 * 4, #img.pixels)
    local px, w, h = core.decode(img.bytes)
    assert.are.equal(px, img.pixels)
    assert.are.same({ 1024, 1024 }, { w, h })
    -- rgba() hands over what is there, decoding nothing
    local again, w2 = img:rgba()
    assert.are.equal(img.pixels, again)
    assert.are.equal(1024, w2)
    assert.are.equal(1, #H.api_requests(emu))
  end)

  it("hands the pixels over in the decoder's own memory: img.buffer, no string until img.pixels is read", function()
    local c = H.client(emu)
    local img = assert(c:edit { prompt = "x", images = { pic }, decode = "rgba" })
    local buf = img.buffer
    assert.are.equal("userdata", type(buf))
    assert.matches("^imgedit.buffer %(4194304 bytes%)$", tostring(buf))
    assert.is_nil(rawget(img, "pixels")) -- nothing copied yet
    assert.are.equal(1024 * 1024 * 4, #buf)
    assert.are.equal("userdata", type(buf:ptr()))
    local px = core.decode(img.bytes)
    assert.are.equal(px, buf:string())
    assert.are.equal(px, img.pixels) -- made on first use, then kept
    assert.are.equal(img.pixels, rawget(img, "pixels"))
    -- the core's pixel functions read a buffer where it is
    local png = assert(core.encode(buf, 1024, 1024, "png"))
    assert.are.equal(px, (core.decode(png)))
    if jit then
      local ffi = require "ffi"
      assert.are.equal(px, ffi.string(buf:ptr(), #buf))
    end
    buf:close()
    buf:close() -- idempotent
    assert.are.equal(0, #buf)
    assert.matches("closed", tostring(buf))
    assert.has_error(function() buf:ptr() end, "attempt to use a closed buffer")
    assert.has_error(function() buf:string() end, "attempt to use a closed buffer")
    assert.has_error(function() core.encode(buf, 1024, 1024, "png") end)
    assert.are.equal(px, img.pixels) -- the string made before stays
    assert.are.equal(1, #H.api_requests(emu))
  end)

  it("a buffer closed before img.pixels was read leaves img:rgba() to decode again, on the calling thread", function()
    local c = H.client(emu)
    local img = assert(c:edit { prompt = "x", images = { pic }, decode = "rgba" })
    img.buffer:close()
    assert.is_nil(img.pixels)
    local n, px = on_thread(img.rgba, img)
    assert.are.equal(1, n)
    assert.are.equal(1024 * 1024 * 4, #px)
    assert.are.equal(1, #H.api_requests(emu))
  end)

  it("decodes every partial and the final picture of a stream", function()
    local c = H.client(emu)
    local seen, partials = {}, {}
    local n, img = on_thread(c.edit, c, { prompt = "x", images = { pic }, stream = true, partial_images = 2,
      decode = "rgba", on_partial = function(p, i)
        partials[#partials + 1] = p
        seen[#seen + 1] = i
      end })
    assert.truthy(img)
    assert.are.equal(0, n)
    assert.are.same({ 0, 1 }, seen)
    for i, p in ipairs(partials) do
      assert.are.equal((core.decode(p.bytes)), p.pixels, "partial " .. i)
    end
    assert.are.equal((core.decode(img.bytes)), img.pixels)
    assert.are.equal(1, #H.api_requests(emu))
  end)

  it("decodes each picture of an answer with several, and url answers' downloads", function()
    local other = H.emulator { provider = "compatible" }
    local c = imgedit.new { base_url = other.url, api_key = other.key, model = "local-model", decode = "rgba" }
    -- the base64 is decoded once, on the decoder thread: never again here
    local b64, real_b64, real_url = 0, core.b64decode, core.dataurl_decode
    core.b64decode = function(...) b64 = b64 + 1 return real_b64(...) end
    core.dataurl_decode = function(...) b64 = b64 + 1 return real_url(...) end
    local ok, n, img = pcall(on_thread, c.generate, c, { prompt = "three", n = 3, size = "64x64" })
    core.b64decode, core.dataurl_decode = real_b64, real_url
    assert(ok, n)
    assert.are.equal(0, n)
    assert.are.equal(0, b64, "base64 decoded again on the caller's thread")
    assert.are.equal(2, #img.more)
    for _, one in ipairs { img, img.more[1], img.more[2] } do
      assert.are.equal((core.decode(one.bytes)), one.pixels)
    end
    -- answered as urls: the first is downloaded and decoded there, the
    -- other downloaded when asked, decoded as well
    n, img = on_thread(c.generate, c, { prompt = "urls", n = 2, size = "64x64", response_format = "url" })
    assert.are.equal(0, n)
    assert.are.equal((core.decode(img.bytes)), img.pixels)
    local second
    n, second = on_thread(c.download, c, img.more[1])
    assert.are.equal(0, n)
    assert.are.equal((core.decode(second.bytes)), second.pixels)
    assert.are.equal(2, #H.api_requests(other)) -- two generations, the rest downloads
    c:close()
    other:stop()
  end)

  it("leaves pictures as they were without the option; img:rgba() decodes them once, where it is called", function()
    local c = H.all_client(emu)
    local img = assert(c:generate(H.small { prompt = "p" }))
    assert.is_nil(rawget(img, "pixels"))
    assert.is_nil(img.pixels)
    local px, w, h = img:rgba()
    assert.are.equal((core.decode(img.bytes)), px)
    assert.are.equal(w * h * 4, #px)
    assert.are.equal(px, img.pixels) -- kept
    -- an Image opened from a file, too; a broken one is a clear error
    local opened = assert(imgedit.open(pic))
    assert.are.equal(64 * 64 * 4, #(opened:rgba()))
    local broken = assert(require("imgedit.image").from_bytes(H.png_bomb(64, 64, 64)))
    local none, err = broken:rgba()
    assert.is_nil(none)
    assert.are.equal("invalid_request", err.kind)
    assert.matches("cannot decode", err.message)
  end)

  it("hands over a paid picture it cannot decode, with img.pixels_error", function()
    local body = '{"created":1,"data":[{"b64_json":"' .. core.b64encode(H.png_bomb(64, 64, 64)) .. '"}]}'
    emu:inject { status = 200, body = body }
    local img, err = H.client(emu, { max_retries = 0 }):generate { prompt = "x", size = "1024x1024", decode = "rgba" }
    assert.truthy(img, tostring(err))
    assert.is_nil(img.pixels)
    assert.matches("cannot decode", img.pixels_error)
    assert.are.equal(1, #H.api_requests(emu))
  end)

  it("finds pictures whose base64 an encoder escaped (\\/), and decodes unusual ones on the caller's thread", function()
    local c = H.client(emu, { max_retries = 0 })
    local png, b64
    for k = 1, 100 do -- a picture whose base64 holds a "/"
      png = H.png(32, 32, function(x, y) return (x * k + y * 7) % 256 end)
      b64 = core.b64encode(png)
      if b64:find("/", 1, true) then break end
    end
    assert.truthy(b64:find("/", 1, true))
    -- "\/" for "/": the decoder thread un-escapes it
    emu:inject { status = 200, body = '{"created":1,"data":[{"b64_json":"' .. b64:gsub("/", "\\/") .. '"}]}' }
    local n, img = on_thread(c.generate, c, { prompt = "x", size = "1024x1024", decode = "rgba" })
    assert.are.equal(0, n)
    assert.are.equal(png, img.bytes)
    assert.are.equal((core.decode(png)), img.pixels)
    -- "\u002f" for "/": not found there, decoded here, the same pixels
    local weird = b64:gsub("/", "\\u002f")
    emu:inject { status = 200, body = '{"created":1,"data":[{"b64_json":"' .. weird .. '"}]}' }
    n, img = on_thread(c.generate, c, { prompt = "x", size = "1024x1024", decode = "rgba" })
    assert.are.equal(1, n)
    assert.are.equal((core.decode(png)), img.pixels)
    assert.are.equal(2, #H.api_requests(emu))
  end)

  it("hands pictures that finished together over one poll(0) at a time", function()
    local c = H.client(emu, { max_concurrency = 3 })
    local list = {}
    for i = 1, 3 do list[i] = c:submit("generate", { prompt = "g" .. i, size = "1024x1024", decode = "rgba" }) end
    -- all three answered and decoded on the threads, none taken yet
    for _ = 1, 100 do
      sleep(0.1)
      local done = 0
      for _, r in ipairs(emu:requests()) do if r.status then done = done + 1 end end
      if done == 3 then break end
    end
    sleep(1 * H.SLOW)
    local per_poll = {}
    while #per_poll < 10 do
      c:poll(0)
      local n = 0
      for _, j in ipairs(list) do if j:done() then n = n + 1 end end
      per_poll[#per_poll + 1] = n
      if n == 3 then break end
    end
    assert.are.same({ 1, 2, 3 }, per_poll)
    for _, j in ipairs(list) do assert.are.equal(1024 * 1024 * 4, #assert(j:result()).pixels) end
    -- a blocking wait takes everything at once
    assert.are.equal(3, #H.api_requests(emu))
  end)

  it("refuses a decode it does not know before anything is sent", function()
    local c = H.client(emu)
    assert.has_error(function() c:submit("edit", { prompt = "x", images = { pic }, decode = "rgb" }) end,
      "bad option 'decode' (\"rgba\" or false expected, got \"rgb\")")
    assert.has_error(function() imgedit.new { base_url = emu.url, decode = true } end)
    -- a client default, and false turns it off for one request
    local c2 = H.all_client(emu, { decode = "rgba" }) -- its answers are data: URLs, escaped ("image\/png")
    local n, img = on_thread(c2.generate, c2, H.small { prompt = "d" })
    assert.are.equal(0, n)
    assert.is_string(img.pixels)
    assert.is_nil(rawget(assert(c2:generate(H.small { prompt = "e", decode = false })), "pixels"))
    assert.are.equal(2, #H.api_requests(emu))
  end)

  it("cancels and closes while pictures are decoded, without a crash or a leak", function()
    for round = 1, 6 do
      local c = H.client(emu)
      local job = c:submit("edit", { prompt = "x", images = { pic }, stream = true, partial_images = 3,
        decode = "rgba" })
      -- stop at a different moment each round: before, during and after the answer
      local deadline = core.now() + 0.15 * round
      while core.now() < deadline and not job:done() do c:poll(0.01) end
      if round % 2 == 0 then job:cancel("enough") end
      c:close()
      assert.is_true(job:done())
      collectgarbage()
    end
    -- and transfers dropped without a close are collected with their threads' work
    local c = H.client(emu)
    for i = 1, 4 do c:submit("generate", { prompt = "gc" .. i, size = "1024x1024", decode = "rgba" }) end
    c = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.is_true(#H.api_requests(emu) <= 10)
  end)
end)
