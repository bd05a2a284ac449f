-- Decodes bounded by memory, not only pixels (issue, point 8): a 16-bit
-- PNG of 7000x7000 is 2.5 MB here (381 KB at zlib's best) and under the
-- pixel bound, yet decoding it takes about 1 GB. Every path that decodes
-- refuses it from its header, before any allocation: an input, an answer
-- with decode = "rgba", a streamed partial, preserve's composite, fit, a
-- conversion on save. Each test checks the process's peak memory too.
local H = require "helpers"
local core = require "imgedit.core"
local imgedit = require "imgedit"
local image = require "imgedit.image"

-- The peak resident memory in MB; reset first where the kernel allows
-- (clear_refs 5), so that one test's peak is its own.
local function peak()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmHWM:%s*(%d+)")
    if kb then return tonumber(kb) / 1024 end
  end
end
local function reset_peak()
  local f = io.open("/proc/self/clear_refs", "w")
  if f then
    f:write("5")
    f:close()
  end
  return peak()
end

-- No decode above this: the bomb takes ~750 MB, everything else here ~0.
local SPARE_MB = 100

local function refused(err)
  assert.truthy(err, "the bomb was decoded")
  assert.are.equal("too_large", err.reason)
  assert.matches("7000x7000 16%-bit png needs %d+ MiB to decode", err.message)
  assert.matches("max_decode_bytes", err.message)
end

describe("decompression bombs", function()
  local emu, dir, bomb, bomb_path, small, small_mask
  H.world(function(e, d)
    emu, dir = e, d
    bomb = H.png16_bomb(7000, 7000)
    bomb_path = H.write(dir .. "/bomb.png", bomb)
    small = H.write(dir .. "/small.png", H.png(64, 64))
    small_mask = assert(imgedit.mask.rect { width = 64, height = 64, x = 16, y = 16, w = 32, h = 32 })
  end)

  local before
  before_each(function() before = reset_peak() end)
  after_each(function()
    collectgarbage()
    assert.is_true(peak() - before < SPARE_MB, string.format("the peak grew by %.0f MB", peak() - before))
  end)

  it("passes inspection and the pixel bound: only its memory gives it away", function()
    local info = assert(imgedit.inspect(bomb_path))
    assert.are.same({ 7000, 7000, 16 }, { info.width, info.height, info.bit_depth })
    assert.is_true(info.width * info.height <= image.max_pixels)
    assert.are.equal(268435456, image.max_decode_bytes)
  end)

  it("is refused as an input: img:rgba(), image.pixels, the mask functions, preserve and fit", function()
    local img = assert(imgedit.open(bomb_path))
    local px, err = img:rgba()
    assert.is_nil(px)
    assert.are.equal("invalid_request", err.kind)
    refused(err)
    assert.is_nil(rawget(img, "pixels"))
    local _, perr = image.pixels(bomb_path, "src")
    refused(perr)
    local _, merr = imgedit.mask.from_alpha(bomb_path)
    refused(merr)
    -- image 1 of a composite, and the answer of one
    local _, cerr = imgedit.mask.preserve({ bytes = H.png(64, 64) }, bomb_path, small_mask)
    refused(cerr)
    assert.matches("^image 1: ", cerr.message)
    _, cerr = imgedit.mask.preserve({ bytes = bomb }, small, small_mask)
    refused(cerr)
    local _, ferr = imgedit.fit(bomb_path, { max_edge = 1024 })
    refused(ferr)
  end)

  it("keeps the old call forms of the core, and its bounds can be moved", function()
    local png = H.png(64, 64)
    assert.are.equal(64 * 64 * 4, #core.decode(png))
    assert.are.equal(64 * 64 * 4, #core.decode(png, 4096))
    local none, msg, reason = core.decode(png, 4095)
    assert.is_nil(none)
    assert.are.equal("too_large", reason)
    assert.matches("more than 4095 pixels", msg)
    -- 64x64 RGBA at 8 bits: rows 64 * (1 + 256), the picture, no conversion
    local need = 64 * 257 + 64 * 64 * 4
    assert.truthy(core.decode(png, nil, need))
    none, msg, reason = core.decode(png, nil, need - 1)
    assert.is_nil(none)
    assert.are.equal("too_large", reason)
    assert.matches("needs 0 MiB to decode %(" .. need .. " bytes%), more than max_decode_bytes %(" .. need - 1 .. "%)",
      msg)
    -- the inputs too, through image.max_decode_bytes
    local saved = image.max_decode_bytes
    image.max_decode_bytes = need - 1
    local img = assert(image.from_bytes(png))
    local px, err = img:rgba()
    local ok, merr = imgedit.mask.compare({ bytes = png }, { bytes = png }, small_mask)
    image.max_decode_bytes = saved
    assert.is_nil(px)
    assert.are.equal("too_large", err.reason)
    assert.is_nil(ok)
    assert.are.equal("too_large", merr.reason)
    assert.truthy(img:rgba())
    assert.truthy(img:rgba(nil, need))
    -- core.inpaint's option
    assert.truthy(core.inpaint(png, png, small_mask.bytes, { max_bytes = need }))
    local r, imsg, ireason = core.inpaint(png, png, small_mask.bytes, { max_bytes = need - 1 })
    assert.is_nil(r)
    assert.are.equal("too_large", ireason)
    assert.matches("^the answer: ", imsg)
  end)

  it("is refused by a conversion on save, and no file is written", function()
    local img = assert(imgedit.open(bomb_path))
    local before_ls = H.ls(dir)
    local path, err = img:save(dir .. "/x.jpg")
    assert.is_nil(path)
    assert.are.equal("invalid_request", err.kind)
    refused(err)
    assert.matches("cannot convert the png picture to jpeg", err.message)
    assert.is_false(H.exists(dir .. "/x.jpg"))
    assert.are.same(before_ls, H.ls(dir))
    -- the same format is written as it is, without a decode
    assert.are.equal(dir .. "/same.png", img:save(dir .. "/same.png"))
    assert.are.equal(bomb, H.read(dir .. "/same.png"))
    os.remove(dir .. "/same.png")
  end)

  it("as the service's answer with decode = \"rgba\": handed over (it was paid), with img.pixels_error", function()
    emu:inject { status = 200, body = '{"created":1,"data":[{"b64_json":"' .. core.b64encode(bomb) .. '"}]}' }
    local c = H.client(emu, { max_retries = 0 })
    local img, err = c:generate { prompt = "x", size = "1024x1024", decode = "rgba" }
    assert.truthy(img, tostring(err))
    assert.are.equal(bomb, img.bytes)
    assert.are.same({ 7000, 7000 }, { img.width, img.height })
    assert.is_nil(rawget(img, "pixels"))
    assert.matches("^cannot decode the picture: 7000x7000 16%-bit png needs", img.pixels_error)
    assert.matches("max_decode_bytes", img.pixels_error)
    -- and img:rgba() refuses it as well, on this thread
    local px, rerr = img:rgba()
    assert.is_nil(px)
    assert.are.equal("protocol", rerr.kind)
    refused(rerr)
    assert.are.equal(1, #H.api_requests(emu))
    c:close()
  end)

  it("as a downloaded answer with decode = \"rgba\"", function()
    -- the answer names a url; the download that follows gets the bomb
    emu:inject { url = emu.url .. "/files/bomb.png" }
    emu:inject { status = 200, content_type = "image/png", body = bomb }
    local c = H.client(emu, { max_retries = 0, model = "gpt-image-2-all" })
    local img, err = c:generate { prompt = "x", decode = "rgba" }
    assert.truthy(img, tostring(err))
    assert.are.equal(bomb, img.bytes)
    assert.is_nil(rawget(img, "pixels"))
    assert.matches("max_decode_bytes", img.pixels_error)
    assert.are.equal(2, #H.api_requests(emu))
    c:close()
  end)

  it("as a streamed partial with decode = \"rgba\": the partial is handed over without pixels, the stream goes on",
    function()
      local final = H.png(64, 64)
      local function event(t) return "event: " .. t.type .. "\ndata: " .. require("cjson").encode(t) .. "\n\n" end
      emu:inject { status = 200, content_type = "text/event-stream", body = event {
        type = "image_generation.partial_image", b64_json = core.b64encode(bomb), partial_image_index = 0,
      } .. event {
        type = "image_generation.completed", b64_json = core.b64encode(final),
        usage = { input_tokens = 10, output_tokens = 100, total_tokens = 110,
          input_tokens_details = { text_tokens = 10, image_tokens = 0 } },
      } }
      local c = H.client(emu, { max_retries = 0 })
      local partials = {}
      local img, err = c:generate { prompt = "x", size = "1024x1024", stream = true, partial_images = 1,
        decode = "rgba", on_partial = function(p) partials[#partials + 1] = p end }
      assert.truthy(img, tostring(err))
      assert.are.equal(1, #partials)
      assert.are.equal(bomb, partials[1].bytes)
      assert.is_nil(rawget(partials[1], "pixels"))
      assert.matches("max_decode_bytes", partials[1].pixels_error)
      assert.are.equal(final, img.bytes)
      assert.are.equal(64 * 64 * 4, #img.pixels)
      assert.are.equal(1, #H.api_requests(emu))
      c:close()
    end)

  it("as a preserve answer: the edit is handed over with preserve_error, nothing decoded", function()
    emu:inject { status = 200, body = '{"created":1,"data":[{"b64_json":"' .. core.b64encode(bomb) .. '"}],'
      .. '"usage":{"input_tokens":10,"output_tokens":100,"total_tokens":110}}' }
    local warnings = {}
    local c = H.client(emu, { max_retries = 0, on_warning = function(m) warnings[#warnings + 1] = m end })
    local img, err = c:edit { prompt = "x", images = { small }, mask = small_mask, preserve = true,
      decode = "rgba" }
    assert.truthy(img, tostring(err))
    assert.are.equal(bomb, img.bytes)
    assert.matches("preserve failed: the answer: 7000x7000", warnings[1])
    assert.matches("max_decode_bytes", img.preserve_error)
    assert.matches("max_decode_bytes", img.pixels_error)
    assert.are.equal(1, #H.api_requests(emu))
    c:close()
  end)

  it("sent as an input, is not decoded by the emulator either", function()
    local c = H.client(emu, { max_retries = 0 })
    local img, err = c:edit { prompt = "x", images = { bomb_path }, size = "1024x1024" }
    assert.truthy(img, tostring(err))
    assert.are.equal(1, #H.api_requests(emu))
    c:close()
  end)

  it("leaves an ordinary 3840x2160 8-bit RGBA PNG, the largest a provider makes, to decode under the default", function()
    local w, h = 3840, 2160
    local rows = {}
    for y = 0, h - 1, 240 do rows[#rows + 1] = string.rep(string.char(y % 256, 40, 200, 128 + y % 100), w * 240) end
    local png = assert(core.encode(table.concat(rows), w, h, "png"))
    rows = nil -- luacheck: ignore
    local img = assert(image.from_bytes(png))
    assert.are.equal(4, img.channels)
    local px, pw, ph = img:rgba()
    assert.are.equal(w * h * 4, #px, tostring(pw))
    assert.are.same({ w, h }, { pw, ph })
    img.pixels, px = nil, nil -- luacheck: ignore
    collectgarbage()
    before = reset_peak() -- the picture and its pixels above are this test's own
  end)
end)
