-- Every rule of the service's table (docs/architecture.md, "The
-- contract"), twice: the client refuses locally (and the
-- emulator sees nothing), and with the local check bypassed the emulator
-- answers 400 itself, so both sides implement the rule.
local H = require "helpers"
local core = require "imgedit.core"

describe("service rules", function()
  local emu, dir, img, big, jpgmask, flatmask, smallmask, goodmask
  H.world(function(e, d)
    emu, dir = e, d
    img = H.write(dir .. "/base.png", H.png(64, 48))
    local f = assert(io.open("/dev/urandom", "rb"))
    local noise = f:read(1700 * 1600 * 4)
    f:close()
    big = H.write(dir .. "/scene.png", core.encode(noise, 1700, 1600, "png"))
    jpgmask = H.write(dir .. "/mask.jpg", H.jpeg(64, 48))
    flatmask = H.write(dir .. "/flat.png", H.png_raw { w = 64, h = 48, ctype = 2 })
    smallmask = H.write(dir .. "/small.png", H.png(32, 32, function() return 0 end))
    goodmask = H.write(dir .. "/good.png", H.png(64, 48, function(x) return x < 10 and 0 or 255 end))
  end)

  local function six() return { img, img, img, img, img, img } end

  -- name, request, the client's param, the service's param, message pattern
  local cases = {
    { "more than 5 images", function() return { images = six() } end, "images", "image", "6 images given" },
    { "an image over 10 MB", function() return { images = { img, img, big } } end, "images", "image",
      "image 3 %(scene%.png%): 10%.4 MB exceeds the 10 MB limit" },
    { "a JPEG mask", function() return { images = { img }, mask = jpgmask } end, "mask", "mask", "must be a PNG" },
    { "a mask without alpha", function() return { images = { img }, mask = flatmask } end, "mask", "mask", "alpha" },
    { "a mask of another size", function() return { images = { img }, mask = smallmask } end, "mask", "mask",
      "32x32 does not match the first image's 64x48" },
    { "input_fidelity", function() return { images = { img }, input_fidelity = "high" } end, "input_fidelity",
      "input_fidelity", "input_fidelity" },
    { "background transparent", function() return { images = { img }, background = "transparent" } end,
      "background", "background", "background" },
    { "background other", function() return { images = { img }, background = "pink" } end, "background", "background" },
    { "size not a multiple of 16", function() return { images = { img }, size = "1000x1000" } end, "size", "size",
      "multiples of 16" },
    { "size long edge over 3840", function() return { images = { img }, size = "4096x1024" } end, "size", "size" },
    { "size ratio beyond 3:1", function() return { images = { img }, size = "3520x1024" } end, "size", "size",
      "aspect ratio" },
    { "size under 655,360 pixels", function() return { images = { img }, size = "512x512" } end, "size", "size" },
    { "size over 8,294,400 pixels", function() return { images = { img }, size = "3840x2176" } end, "size", "size" },
    { "size not WxH", function() return { images = { img }, size = "large" } end, "size", "size" },
    { "quality", function() return { images = { img }, quality = "ultra" } end, "quality", "quality" },
    { "output_format", function() return { images = { img }, output_format = "gif" } end, "output_format",
      "output_format" },
    { "output_compression with png", function() return { images = { img }, output_compression = 50 } end,
      "output_compression", "output_compression", "only to jpeg and webp" },
    { "output_compression out of range", function()
      return { images = { img }, output_format = "jpeg", output_compression = 101 } end,
      "output_compression", "output_compression" },
    { "response_format url", function() return { images = { img }, response_format = "url" } end,
      "response_format", "response_format" },
    { "n other than 1", function() return { images = { img }, n = 2 } end, "n", "n" },
    { "no prompt", function() return { prompt = false, images = { img } } end, "prompt", "prompt" },
    { "no image", function() return { images = {} } end, "images", "image" },
  }

  for _, case in ipairs(cases) do
    local name, make, param, service_param, pattern = (table.unpack or unpack)(case)

    it("refuses " .. name .. " locally, sending nothing", function()
      local req = make()
      req.prompt = req.prompt == nil and "edit" or nil
      local res, err = H.client(emu):edit(req)
      assert.is_nil(res)
      assert.are.equal("invalid_request", err.kind)
      assert.are.equal(param, err.param)
      if pattern then assert.matches(pattern, err.message) end
      assert.are.equal(0, #emu:requests())
    end)

    it("is refused by the emulator too: " .. name, function()
      local req = make()
      req.prompt = req.prompt == nil and "edit" or nil
      req._no_checks = true
      local res, err = H.client(emu):edit(req)
      assert.is_nil(res)
      assert.are.equal("invalid_request", err.kind)
      assert.are.equal(400, err.status)
      assert.are.equal(service_param, err.param)
      assert.are.equal(1, #emu:requests())
    end)
  end

  it("applies the generation rules too", function()
    local c = H.client(emu)
    local _, err = c:generate { prompt = "x", size = "100x100" }
    assert.are.equal("size", err.param)
    _, err = c:generate { prompt = "x", background = "transparent" }
    assert.are.equal("background", err.param)
    assert.are.equal(0, #emu:requests())
    _, err = c:generate { prompt = "x", size = "100x100", _no_checks = true }
    assert.are.equal(400, err.status)
    assert.are.equal("size", err.param)
  end)

  it("accepts the edges of the size rule", function()
    local c = H.client(emu)
    for _, size in ipairs { "auto", "1024x1024", "3840x2160", "2400x800", "1024x640" } do
      local _, err = require("imgedit.rules").check(require("imgedit.rules").for_model("gpt-image-2"), "generate",
        { model = "gpt-image-2", prompt = "x", size = size }, {}, nil)
      assert.is_nil(err, size)
    end
    local res = assert(c:generate { prompt = "x", size = "1024x640" })
    assert.are.same({ 1024, 640 }, { res.width, res.height })
  end)

  describe("gpt-image-2-all", function()
    it("takes more than 5 images and passes size through", function()
      local c = H.client(emu, { model = "gpt-image-2-all" })
      local res, err = c:edit { prompt = "fuse", images = six(), size = "1000x1000", response_format = "b64_json" }
      assert.is_nil(err)
      assert.truthy(res)
      assert.are.equal(6, #emu:requests()[1].files)
    end)

    it("checks response_format", function()
      local c = H.client(emu, { model = "gpt-image-2-all" })
      local _, err = c:edit { prompt = "x", images = { img }, response_format = "png" }
      assert.are.equal("response_format", err.param)
      assert.are.equal(0, #emu:requests())
      _, err = c:edit { prompt = "x", images = { img }, response_format = "png", _no_checks = true }
      assert.are.equal(400, err.status)
      assert.are.equal("response_format", err.param)
    end)

    it("still refuses files that are not png, jpeg or webp", function()
      local gif = H.write(dir .. "/a.gif", "GIF89a" .. H.pack("<I2I2", 8, 8) .. string.rep("\0", 20))
      local _, err = H.client(emu, { model = "gpt-image-2-all" }):edit { prompt = "x", images = { gif } }
      assert.are.equal("images", err.param)
      assert.are.equal(0, #emu:requests())
    end)
  end)

  it("lets a client override the limits", function()
    local c = H.client(emu, { limits = { max_images = 16 } })
    local _, err = c:edit { prompt = "x", images = six() }
    -- the local check passes; the emulator keeps the real limit
    assert.are.equal(400, err.status)
    assert.are.equal(1, #emu:requests())
    local tight = H.client(emu, { limits = { max_image_bytes = 100 } })
    _, err = tight:edit { prompt = "x", images = { img } }
    assert.are.equal("images", err.param)
    assert.matches("image 1 %(base%.png%): %d+ bytes exceeds the 100 bytes limit", err.message)
  end)

  it("gives an unknown model only the generic checks", function()
    local c = H.client(emu, { model = "gpt-image-9" })
    local _, err = c:edit { prompt = "x", images = six(), size = "17x17", input_fidelity = "high" }
    assert.are.equal(400, err.status) -- sent; the emulator does not know the model
    assert.are.equal("model", err.param)
    assert.are.equal(1, #emu:requests())
    _, err = c:edit { prompt = "x", images = {} }
    assert.are.equal("images", err.param)
  end)
end)
