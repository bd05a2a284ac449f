local H = require "helpers"
local core = require "imgedit.core"
local imgedit = require "imgedit"

describe("image inspection", function()
  local dir
  lazy_setup(function() dir = H.tmpdir() end)
  lazy_teardown(function() H.rmtree(dir) end)

  -- Every fixture is checked from a file and from bytes, and decoded where
  -- it is a complete image, which proves the fixture is real.
  local function check(name, bytes, want, decodable)
    local path = H.write(dir .. "/" .. name, bytes)
    local a = assert(core.inspect(path))
    local b = assert(core.inspect(bytes, true))
    for k, v in pairs(want) do
      assert.are.equal(v, a[k], name .. ": " .. k)
      assert.are.equal(v, b[k], name .. " (bytes): " .. k)
    end
    assert.are.equal(#bytes, a.bytes)
    if decodable ~= false then
      local px, w, h = core.decode(bytes)
      assert.is_string(px, name .. " decodes")
      assert.are.same({ a.width, a.height }, { w, h })
    end
    return a
  end

  it("reads PNG RGB, RGBA, grey and grey+alpha", function()
    check("rgb.png", H.png_raw { w = 7, h = 5, ctype = 2 },
      { format = "png", width = 7, height = 5, channels = 3, has_alpha = false, accepted = true, mime = "image/png" })
    check("rgba.png", H.png_raw { w = 9, h = 4, ctype = 6 }, { width = 9, height = 4, channels = 4, has_alpha = true })
    check("grey.png", H.png_raw { w = 3, h = 3, ctype = 0 }, { channels = 1, has_alpha = false })
    check("greya.png", H.png_raw { w = 3, h = 3, ctype = 4 }, { channels = 2, has_alpha = true })
  end)

  it("reads palette PNGs, with and without tRNS", function()
    local plte = string.rep("\255\0\0", 4)
    check("pal.png", H.png_raw { w = 6, h = 6, ctype = 3, plte = plte }, { has_alpha = false, channels = 3 })
    check("palt.png", H.png_raw { w = 6, h = 6, ctype = 3, plte = plte, trns = "\0\128" },
      { has_alpha = true, channels = 4 })
  end)

  it("reads grey and RGB PNGs with tRNS as having alpha", function()
    check("greyt.png", H.png_raw { w = 4, h = 4, ctype = 0, trns = "\0\7" }, { has_alpha = true })
    check("rgbt.png", H.png_raw { w = 4, h = 4, ctype = 2, trns = "\0\1\0\2\0\3" }, { has_alpha = true })
  end)

  it("reads 16-bit and interlaced PNGs", function()
    check("deep.png", H.png_raw { w = 5, h = 5, ctype = 2, depth = 16 }, { bit_depth = 16, width = 5 })
    check("adam7.png", H.png_raw { w = 13, h = 11, ctype = 6, interlace = true },
      { interlaced = true, width = 13, height = 11, has_alpha = true })
  end)

  it("reads baseline and progressive JPEG", function()
    local base = H.jpeg(40, 30)
    check("base.jpg", base, { format = "jpeg", width = 40, height = 30, channels = 3, has_alpha = false,
      interlaced = false, mime = "image/jpeg" })
    local src = H.write(dir .. "/src.jpg", base)
    local prog = dir .. "/prog.jpg"
    assert.is_true(H.ok("jpegtran -progressive -outfile '" .. prog .. "' '" .. src .. "'"),
      "jpegtran (libjpeg-turbo-progs) is needed; run make deps")
    check("prog2.jpg", H.read(prog), { format = "jpeg", width = 40, height = 30, interlaced = true })
  end)

  it("says a 4-component (CMYK) JPEG has no alpha", function()
    check("cmyk.jpg", H.jpeg_header(20, 10, 4), { channels = 4, has_alpha = false, width = 20 }, false)
  end)

  it("reads lossy and lossless WebP with and without alpha", function()
    local opaque = H.rgba(16, 8)
    local holes = H.rgba(16, 8, function(x) return x < 8 and 0 or 255 end)
    check("lossy.webp", core.encode(opaque, 16, 8, "webp", 80),
      { format = "webp", width = 16, height = 8, has_alpha = false, mime = "image/webp", accepted = true })
    check("lossya.webp", core.encode(holes, 16, 8, "webp", 80), { has_alpha = true, channels = 4 })
    check("lossless.webp", core.encode(opaque, 16, 8, "webp", 100, true), { has_alpha = false })
    check("losslessa.webp", core.encode(holes, 16, 8, "webp", 100, true), { has_alpha = true })
  end)

  it("detects the format from the bytes, not the name", function()
    local info = check("really-png.jpg", H.png(8, 8), { format = "png" })
    assert.are.equal("image/png", info.mime)
    local public = assert(imgedit.inspect(dir .. "/really-png.jpg"))
    assert.are.equal("png", public.format)
  end)

  it("names refused formats and refuses them for upload", function()
    local gif = check("a.gif", "GIF89a" .. H.pack("<I2I2", 30, 20) .. string.rep("\0", 20),
      { format = "gif", width = 30, height = 20, accepted = false }, false)
    assert.is_false(gif.accepted)
    check("a.bmp", "BM" .. string.rep("\0", 16) .. H.pack("<i4i4", 12, -7) .. string.rep("\0", 30),
      { format = "bmp", width = 12, height = 7, accepted = false }, false)
    check("a.tif", "II*\0" .. string.rep("\0", 20), { format = "tiff", accepted = false }, false)
  end)

  it("refuses a 0-byte file and a text file named .png", function()
    local empty = H.write(dir .. "/empty.png", "")
    local info, msg, reason = core.inspect(empty)
    assert.is_nil(info)
    assert.matches("empty", msg)
    assert.are.equal("unknown_format", reason)
    H.write(dir .. "/text.png", "hello, I am not a picture\n")
    info, msg, reason = core.inspect(dir .. "/text.png")
    assert.is_nil(info)
    assert.matches("not a PNG, JPEG or WebP", msg)
    assert.are.equal("unknown_format", reason)
  end)

  it("catches truncated PNG, JPEG and WebP without decoding", function()
    local png = H.png(32, 32)
    for _, cut in ipairs { 20, 40, #png - 12, #png - 1 } do
      local info, msg, reason = core.inspect(png:sub(1, cut), true)
      assert.is_nil(info, "PNG cut at " .. cut)
      assert.are.equal("truncated", reason, msg)
    end
    local jpg = H.jpeg(32, 32)
    local info, msg, reason = core.inspect(jpg:sub(1, #jpg - 10), true)
    assert.is_nil(info)
    assert.are.equal("truncated", reason)
    assert.matches("end%-of%-image", msg)
    local webp = core.encode(H.rgba(32, 32), 32, 32, "webp", 80)
    info, msg, reason = core.inspect(webp:sub(1, #webp - 3), true)
    assert.is_nil(info)
    assert.are.equal("truncated", reason)
    info, msg, reason = core.inspect(webp .. "junk", true)
    assert.is_nil(info)
    assert.are.equal("corrupt", reason)
    assert.matches("RIFF", msg)
  end)

  it("answers a 9000x9000 header without decoding, and decode refuses it", function()
    local bomb = H.png_bomb(9000, 9000)
    local info = assert(core.inspect(bomb, true))
    assert.are.same({ 9000, 9000 }, { info.width, info.height })
    local px, msg, reason = core.decode(bomb)
    assert.is_nil(px)
    assert.are.equal("too_large", reason, msg)
  end)

  it("refuses a header whose data cannot hold its pixels, from the chunk lengths alone", function()
    -- A 74-byte PNG that declares 60000x60000: deflate's 1032:1 needs 13 MB.
    local bomb = "\137PNG\r\n\26\n" .. H.png_chunk("IHDR", H.pack(">I4I4BBBBB", 60000, 60000, 8, 6, 0, 0, 0))
      .. H.png_chunk("IDAT", "x") .. H.png_chunk("IEND", "")
    local info, msg, reason = core.inspect(bomb, true)
    assert.is_nil(info)
    assert.are.equal("corrupt", reason)
    assert.matches("declares 60000x60000 pixels, but its 1 bytes of image data cannot hold them", msg)
    -- One byte short of the bound is refused, the bound itself passes.
    local need = math.ceil(9000 * 9000 / 8 / 1032)
    assert.truthy(core.inspect(H.png_bomb(9000, 9000, need), true))
    assert.is_nil(core.inspect(H.png_bomb(9000, 9000, need - 64), true))
    -- No IDAT at all
    info, msg = core.inspect("\137PNG\r\n\26\n" .. H.png_chunk("IHDR", H.pack(">I4I4BBBBB", 4, 4, 8, 6, 0, 0, 0))
      .. H.png_chunk("IEND", ""), true)
    assert.is_nil(info)
    assert.matches("no image data", msg)
    -- A JPEG with no scan
    info, msg = core.inspect(H.jpeg_header(30000, 30000, 3, nil, false), true)
    assert.is_nil(info)
    assert.matches("no scan data", msg)
    -- A WebP whose canvas (VP8X) is not its image's size, and one with no image at all
    local real = core.encode(H.rgba(16, 8), 16, 8, "webp", 80)
    local vp8x = "VP8X" .. H.pack("<I4", 10) .. string.char(0, 0, 0, 0) .. H.pack("<I2B<I2B", 20000 - 1, 0, 20000 - 1, 0)
    local image_chunk = real:sub(13)
    local function riff(body) return "RIFF" .. H.pack("<I4", 4 + #body) .. "WEBP" .. body end
    info, msg = core.inspect(riff(vp8x .. image_chunk), true)
    assert.is_nil(info)
    assert.matches("corrupt WebP", msg) -- libwebp or the chunk walk, whichever sees it first
    info, msg = core.inspect(riff(vp8x), true)
    assert.is_nil(info)
    assert.matches("no image data", msg)
    -- the same verdict every time (its cost, one pass over the chunk
    -- headers whatever size they declare, is measured in the benchmark)
    for _ = 1, 20 do assert.is_nil((core.inspect(bomb, true))) end
  end)

  it("reports a directory and a missing file", function()
    local info, msg = core.inspect(dir)
    assert.is_nil(info)
    assert.matches("directory", msg)
    local _, err = imgedit.inspect(dir .. "/missing.png")
    assert.are.equal("invalid_request", err.kind)
    assert.matches("missing.png", err.message)
  end)

  it("raises on wrong argument types", function()
    assert.has_error(function() imgedit.inspect(42) end)
    assert.has_error(function() core.inspect() end)
  end)
end)
