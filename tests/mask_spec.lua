local H = require "helpers"
local core = require "imgedit.core"
local imgedit = require "imgedit"

local function alpha_at(img, x, y)
  local px, w = core.decode(img.bytes)
  return px:byte((y * w + x) * 4 + 4)
end

describe("masks", function()
  local dir
  lazy_setup(function() dir = H.tmpdir() end)
  lazy_teardown(function() H.rmtree(dir) end)

  it("rect: a PNG RGBA of the given size, alpha 0 exactly in the box", function()
    local m = assert(imgedit.mask.rect { width = 100, height = 50, x = 10, y = 5, w = 20, h = 10 })
    assert.are.same({ "png", 100, 50, true }, { m.format, m.width, m.height, m.has_alpha })
    assert.are.equal(0, alpha_at(m, 10, 5))
    assert.are.equal(0, alpha_at(m, 29, 14))
    assert.are.equal(255, alpha_at(m, 30, 14))
    assert.are.equal(255, alpha_at(m, 9, 5))
    local r = assert(imgedit.mask.check(m))
    assert.are.equal(200 / 5000, r.coverage)
    assert.are.same({ 200, 4800, 0 }, { r.transparent, r.opaque, r.partial })
  end)

  it("takes its size from a base image's header", function()
    local base = H.write(dir .. "/base.jpg", H.jpeg(64, 48))
    local m = assert(imgedit.mask.rect { like = base, x = 0, y = 0, w = 8, h = 8 })
    assert.are.same({ 64, 48 }, { m.width, m.height })
    assert(imgedit.mask.check(m, base))
  end)

  it("ellipse and combined shapes give exact coverage", function()
    local e = assert(imgedit.mask.ellipse { width = 200, height = 200, x = 0, y = 0, w = 200, h = 200 })
    local px = core.decode(e.bytes)
    local inside = 0
    for y = 0, 199 do
      for x = 0, 199 do
        local dx, dy = (x + 0.5 - 100) / 100, (y + 0.5 - 100) / 100
        if dx * dx + dy * dy <= 1 then inside = inside + 1 end
      end
    end
    local clear = core.mask_stats(px)
    assert.are.equal(inside, clear)
    assert.is_true(math.abs(clear / 40000 - math.pi / 4) < 0.01)
    -- a frame: the whole picture open, the middle kept again
    local frame = assert(imgedit.mask.compose { width = 10, height = 10, shapes = {
      { kind = "rect", x = 0, y = 0, w = 10, h = 10 }, { kind = "rect", x = 2, y = 2, w = 6, h = 6, keep = true } } })
    assert.are.equal(0.64, imgedit.mask.check(frame).coverage)
    local inv = assert(imgedit.mask.compose { width = 10, height = 10, invert = true,
      shapes = { { x = 0, y = 0, w = 5, h = 10 } } })
    assert.are.equal(0.5, imgedit.mask.check(inv).coverage)
    assert.are.equal(255, alpha_at(inv, 0, 0))
    assert.are.equal(0, alpha_at(inv, 9, 9))
  end)

  it("clips shapes at the edges", function()
    local m = assert(imgedit.mask.rect { width = 10, height = 10, x = -5, y = 8, w = 10, h = 10 })
    assert.are.equal(10 / 100, imgedit.mask.check(m).coverage)
  end)

  it("from_gray: white marks the edit, grey gives partial alpha, threshold and invert", function()
    -- left half white, right half black, one grey column
    local rows = {}
    for _ = 1, 8 do
      rows[#rows + 1] = string.rep("\255\255\255\255", 4) .. "\128\128\128\255" .. string.rep("\0\0\0\255", 3)
    end
    local src = H.write(dir .. "/bw.png", core.encode(table.concat(rows), 8, 8, "png"))
    local m = assert(imgedit.mask.from_gray(src))
    assert.are.equal(0, alpha_at(m, 0, 0))
    assert.are.equal(255, alpha_at(m, 7, 0))
    assert.are.equal(127, alpha_at(m, 4, 0))
    local r = imgedit.mask.check(m)
    assert.are.same({ 0.5, 8 }, { r.coverage, r.partial })
    local hard = assert(imgedit.mask.from_gray(src, { threshold = 0.5 }))
    assert.are.equal(0.625, imgedit.mask.check(hard).coverage)
    local inv = assert(imgedit.mask.from_gray(src, { threshold = 0.6, invert = true }))
    assert.are.equal(0.5, imgedit.mask.check(inv).coverage)
    -- also from a JPEG
    local jm = assert(imgedit.mask.from_gray(H.write(dir .. "/g.jpg", H.jpeg(16, 16))))
    assert.are.equal("png", jm.format)
  end)

  it("feathers the edge", function()
    local hard = assert(imgedit.mask.rect { width = 40, height = 40, x = 10, y = 10, w = 20, h = 20 })
    local soft = assert(imgedit.mask.from_alpha(hard, { feather = 3 }))
    assert.are.equal(0, alpha_at(soft, 20, 20))     -- deep inside: still edit
    assert.are.equal(255, alpha_at(soft, 2, 2))     -- far outside: still keep
    local edge = alpha_at(soft, 10, 20)
    assert.is_true(edge > 0 and edge < 255, "edge alpha " .. edge)
  end)

  it("from_alpha keeps a cut-out's transparency, from WebP too", function()
    local px = H.rgba(16, 16, function(x) return x < 4 and 0 or 255 end)
    local webp = H.write(dir .. "/cut.webp", core.encode(px, 16, 16, "webp", 100, true))
    local m = assert(imgedit.mask.from_alpha(webp))
    assert.are.equal("png", m.format)
    assert.are.equal(0.25, imgedit.mask.check(m).coverage)
  end)

  it("check: every rule, with the problem named", function()
    local base = H.write(dir .. "/b.png", H.png(32, 32))
    local _, err = imgedit.mask.check(H.write(dir .. "/m.jpg", H.jpeg(32, 32)), base)
    assert.are.equal("mask", err.param)
    assert.matches("must be a PNG", err.message)
    _, err = imgedit.mask.check(H.write(dir .. "/flat.png", H.png_raw { w = 32, h = 32, ctype = 2 }), base)
    assert.matches("alpha channel", err.message)
    assert.are.equal(0, err.report.coverage)
    _, err = imgedit.mask.check(assert(imgedit.mask.rect { width = 16, height = 32, x = 0, y = 0, w = 1, h = 1 }), base)
    assert.matches("16x32 but the base image is 32x32", err.message)
    _, err = imgedit.mask.check(assert(imgedit.mask.rect { width = 32, height = 32, x = 0, y = 0, w = 1, h = 1 }), base,
      { limits = { mask = { format = "png", alpha = true, same_size = true, max_bytes = 10 } } })
    assert.matches("over the 10 bytes limit", err.message)
  end)

  it("check: warns about masks that edit nothing or everything", function()
    local none = assert(imgedit.mask.rect { width = 8, height = 8, x = 0, y = 0, w = 0, h = 0 })
    local r = assert(imgedit.mask.check(none))
    assert.are.equal(0, r.coverage)
    assert.matches("nothing would be edited", r.warnings[1])
    local all = assert(imgedit.mask.rect { width = 8, height = 8, x = 0, y = 0, w = 8, h = 8 })
    r = assert(imgedit.mask.check(all))
    assert.are.equal(1, r.coverage)
    assert.matches("whole image", r.warnings[1])
  end)

  it("raises on wrong arguments", function()
    assert.has_error(function() imgedit.mask.rect { width = 8, x = 0, y = 0, w = 1, h = 1 } end)
    assert.has_error(function() imgedit.mask.rect { width = 8, height = 8, x = 0.5, y = 0, w = 1, h = 1 } end)
    assert.has_error(function() imgedit.mask.compose { width = 8, height = 8, shapes = { { kind = "star" } } } end)
    assert.has_error(function() imgedit.mask.from_gray(dir .. "/b.png", { threshold = 2 }) end)
    assert.has_error(function() imgedit.mask.from_gray(42) end)
  end)

  it("refuses to decode a decompression bomb, from its header", function()
    local bomb = H.png_bomb(30000, 30000)
    local m, err = imgedit.mask.from_gray { bytes = bomb }
    assert.is_nil(m)
    assert.are.equal("invalid_request", err.kind)
    assert.matches("more than 50000000 pixels", err.message)
  end)
end)

describe("fit", function()
  local dir
  lazy_setup(function() dir = H.tmpdir() end)
  lazy_teardown(function() H.rmtree(dir) end)

  it("returns an input that already fits untouched, without decoding", function()
    local src = H.write(dir .. "/ok.png", H.png(40, 30))
    local img = assert(imgedit.fit(src, { max_edge = 100 }))
    assert.are.equal(H.read(src), img.bytes)
  end)

  it("downscales to max_edge, keeping the aspect ratio", function()
    local src = H.write(dir .. "/wide.png", H.png(400, 100))
    local img = assert(imgedit.fit(src, { max_edge = 100 }))
    assert.are.same({ 100, 25 }, { img.width, img.height })
    local tall = assert(imgedit.fit({ bytes = H.jpeg(90, 300) }, { max_edge = 150 }))
    assert.are.same({ 45, 150, "jpeg" }, { tall.width, tall.height, tall.format })
  end)

  it("meets max_bytes, and re-encodes to another format", function()
    local f = assert(io.open("/dev/urandom", "rb"))
    local noise = f:read(300 * 200 * 4)
    f:close()
    local src = H.write(dir .. "/noise.png", core.encode(noise, 300, 200, "png"))
    assert.is_true(#H.read(src) > 200000)
    local img = assert(imgedit.fit(src, { max_bytes = 50000 }))
    assert.is_true(#img.bytes <= 50000)
    assert.is_true(math.abs(img.width / img.height - 1.5) < 0.02)
    local jpg = assert(imgedit.fit(src, { format = "jpeg" }))
    assert.are.same({ "jpeg", 300, 200 }, { jpg.format, jpg.width, jpg.height })
    assert.are.equal("noise.jpg", jpg.filename)
  end)

  it("fits a mask together with its base so they still match", function()
    local base = H.write(dir .. "/base.png", H.png(400, 300))
    local m = assert(imgedit.mask.rect { like = base, x = 100, y = 100, w = 100, h = 100 })
    local b2, m2 = imgedit.fit(base, { max_edge = 200, mask = m })
    assert.are.same({ 200, 150 }, { b2.width, b2.height })
    assert.are.same({ 200, 150 }, { m2.width, m2.height })
    local r = assert(imgedit.mask.check(m2, b2))
    assert.is_true(math.abs(r.coverage - 10000 / 120000) < 0.01)
  end)
end)
