local H = require "helpers"
local core = require "imgedit.core"
local imgedit = require "imgedit"

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

describe("the edit call end to end", function()
  local emu, dir, person, scene
  H.world(function(e, d)
    emu, dir = e, d
    person = H.write(dir .. "/person.png", H.png(64, 96, function(x) return x < 32 and 255 or 200 end))
    scene = H.write(dir .. "/scene.jpg", H.jpeg(96, 64))
  end)

  describe("gpt-image-2", function()
    it("sends an Image without reading its header again (it was read when the Image was made)", function()
      local c = H.client(emu)
      local first = assert(c:edit { prompt = "a", images = { person } })
      local real, seen = core.inspect, {}
      core.inspect = function(src, ...)
        seen[#seen + 1] = src
        return real(src, ...)
      end
      local ok, second = pcall(c.edit, c, { prompt = "b", images = { first } })
      core.inspect = real
      assert(ok, second)
      assert.truthy(second)
      local again = 0
      for _, src in ipairs(seen) do if src == first.bytes then again = again + 1 end end
      assert.are.equal(0, again, "image 1's header was read again")
      assert.are.equal(first.sha256, H.api_requests(emu)[2].files[1].sha256)
      assert.are.equal(2, #H.api_requests(emu))
    end)

    it("edits: fields, parts in order, content types from the bytes, usage", function()
      local c = H.client(emu)
      local img, err = c:edit { prompt = "Put the person from image 1 into image 2", images = { person, scene },
        size = "1536x1024", quality = "high" }
      assert.is_nil(err)
      assert.are.equal("png", img.format)
      assert.are.same({ 1536, 1024 }, { img.width, img.height })
      assert.are.equal("gpt-image-2", img.model)
      assert.is_true(img.usage.total_tokens > 0 and img.usage.total_tokens == math.floor(img.usage.total_tokens))
      if math.type then assert.are.equal("integer", math.type(img.usage.total_tokens)) end
      assert.are.equal(img.usage.input_tokens + img.usage.output_tokens, img.usage.total_tokens)
      assert.are.equal(64, #img.sha256)
      local r = H.api_requests(emu)
      assert.are.equal(1, #r)
      assert.are.equal("/v1/images/edits", r[1].path)
      assert.is_true(r[1].authorization)
      assert.are.equal("gpt-image-2", r[1].fields.model)
      assert.are.equal("1536x1024", r[1].fields.size)
      assert.are.equal("high", r[1].fields.quality)
      assert.is_nil(r[1].fields.response_format)
      local f = r[1].files
      assert.are.same({ "image[]", "image[]" }, { f[1].field, f[2].field })
      assert.are.same({ "person.png", "scene.jpg" }, { f[1].filename, f[2].filename })
      assert.are.same({ "image/png", "image/jpeg" }, { f[1].content_type, f[2].content_type })
      assert.are.equal(core.sha256_file(person), f[1].sha256)
      assert.are.equal(core.sha256_file(scene), f[2].sha256)
      assert.matches("^imgedit/%d+%.%d+%.%d+ libcurl/", r[1].user_agent)
    end)

    it("takes paths, Image objects and {bytes=, filename=} in one request, in order", function()
      local c = H.client(emu)
      local opened = assert(imgedit.open(scene))
      local raw = H.png(32, 32)
      local img, err = c:edit { prompt = "fuse", images = { opened, { bytes = raw, filename = "raw.png" }, person } }
      assert.is_nil(err)
      assert.truthy(img)
      local f = H.api_requests(emu)[1].files
      assert.are.same({ opened.sha256, core.sha256(raw), core.sha256_file(person) },
        { f[1].sha256, f[2].sha256, f[3].sha256 })
      assert.are.same({ "scene.jpg", "raw.png", "person.png" }, { f[1].filename, f[2].filename, f[3].filename })
    end)

    it("names a part by its bytes: a PNG called .jpg goes as image/png", function()
      local liar = H.write(dir .. "/liar.jpg", H.png(16, 16))
      local img, err = H.client(emu):edit { prompt = "x", images = { liar } }
      assert.is_nil(err)
      assert.truthy(img)
      local f = H.api_requests(emu)[1].files[1]
      assert.are.equal("image/png", f.content_type)
      assert.are.equal("liar.png", f.filename)
    end)

    it("feeds an output back as the next input byte for byte", function()
      local c = H.client(emu)
      local a = assert(c:edit { prompt = "step one", images = { person } })
      local b = assert(c:edit { prompt = "step two", images = { a } })
      local r = H.api_requests(emu)
      assert.are.equal(a.sha256, r[2].files[1].sha256)
      assert.are.equal(#a.bytes, r[2].files[1].size)
      assert.are_not.equal(a.sha256, b.sha256)
      -- and the emulator's picture depends on the prompt, deterministically
      local again = assert(c:edit { prompt = "step one", images = { person } })
      assert.are.equal(a.sha256, again.sha256)
    end)

    it("sends the mask as a PNG part", function()
      local m = H.write(dir .. "/mask.png", H.png(64, 96, function(x, y) return (x > 20 and y > 20) and 0 or 255 end))
      local img, err = H.client(emu):edit { prompt = "inpaint", images = { person }, mask = m }
      assert.is_nil(err)
      assert.truthy(img)
      local f = H.api_requests(emu)[1].files
      assert.are.same({ "image[]", "mask" }, { f[1].field, f[2].field })
      assert.are.equal("image/png", f[2].content_type)
    end)

    it("generates from JSON, keeping numbers as numbers", function()
      local img, err = H.client(emu):generate { prompt = "a lighthouse", size = "1024x1536",
        output_format = "jpeg", output_compression = 60 }
      assert.is_nil(err)
      assert.are.equal("jpeg", img.format)
      assert.are.same({ 1024, 1536 }, { img.width, img.height })
      local r = H.api_requests(emu)[1]
      assert.are.equal("/v1/images/generations", r.path)
      assert.are.equal(60, r.json.output_compression)
      assert.are.equal("a lighthouse", r.json.prompt)
    end)

    it("saves an answer that can be opened again", function()
      local img = assert(H.client(emu):generate { prompt = "x" })
      assert(img:save(dir .. "/gen.png"))
      local back = assert(imgedit.open(dir .. "/gen.png"))
      assert.are.equal(img.sha256, back.sha256)
      assert.are.equal("gen.png", back.filename)
    end)
  end)

  describe("gpt-image-2-all", function()
    it("downloads url answers without the Authorization header", function()
      local c = H.client(emu, { model = "gpt-image-2-all" })
      local img, err = c:edit { prompt = "fuse", images = { person, scene } }
      assert.is_nil(err)
      assert.matches("^http://127%.0%.0%.1:%d+/files/", img.url)
      assert.is_nil(img.usage)
      local all = emu:requests()
      assert.are.equal(2, #all)
      assert.are.same({ "api", "cdn" }, { all[1].listener, all[2].listener })
      assert.is_true(all[1].authorization)
      assert.is_false(all[2].authorization)
      assert.are.equal(all[1].output_sha256, img.sha256)
    end)

    it("decodes data-URL b64_json answers", function()
      local c = H.client(emu, { model = "gpt-image-2-all" })
      local img, err = c:edit { prompt = "fuse", images = { person }, response_format = "b64_json" }
      assert.is_nil(err)
      assert.are.equal("png", img.format)
      local all = emu:requests()
      assert.are.equal(1, #all)
      assert.are.equal("b64_json", all[1].fields.response_format)
      local gen = assert(c:generate { prompt = "sky", response_format = "b64_json" })
      assert.are.equal("png", gen.format)
    end)

    it("generates with a url answer", function()
      local img = assert(H.client(emu, { model = "gpt-image-2-all" }):generate { prompt = "sky" })
      assert.truthy(img.url)
      assert.are.equal(2, #emu:requests())
    end)
  end)

  describe("keys", function()
    it("gives a clear auth error without a key, before any request", function()
      local saved = os.getenv("IMGEDIT_API_KEY")
      assert.is_nil(saved, "tests run without IMGEDIT_API_KEY")
      local c = imgedit.new { base_url = emu.url }
      local img, err = c:edit { prompt = "x", images = { person } }
      assert.is_nil(img)
      assert.are.equal("auth", err.kind)
      assert.matches("IMGEDIT_API_KEY", err.message)
      assert.are.equal(0, #emu:requests())
    end)

    it("refuses a key with control characters, before any request", function()
      local bad = emu.key .. "\r\nX-Evil: 1"
      local c = imgedit.new { base_url = emu.url, api_key = bad }
      local _, err = c:generate { prompt = "x" }
      assert.are.equal("auth", err.kind)
      assert.is_nil(tostring(err):find(emu.key, 1, true))
      assert.are.equal(0, #emu:requests())
    end)

    it("maps a 401 to auth and never shows the key", function()
      local wrong = "sk-this-is-the-wrong-key-0123456789"
      local c = imgedit.new { base_url = emu.url, api_key = wrong }
      local _, err = c:edit { prompt = "x", images = { person } }
      assert.are.equal("auth", err.kind)
      assert.are.equal(401, err.status)
      assert.are.equal("invalid_api_key", err.code)
      assert.is_false(err.retryable)
      assert.is_nil(tostring(err):find(wrong, 1, true))
      assert.is_nil(tostring(c):find(wrong, 1, true))
    end)

    it("scrubs the key from an error body that echoes it", function()
      emu:inject { status = 401, message = "bad key " .. emu.key .. " given" }
      local _, err = H.client(emu):generate { prompt = "x" }
      assert.are.equal("auth", err.kind)
      assert.matches("%[redacted%]", err.message)
      assert.is_nil(tostring(err):find(emu.key, 1, true))
    end)
  end)

  describe("answers the client refuses", function()
    it("refuses a file:// or ftp:// url in an answer", function()
      for _, url in ipairs { "file:///etc/passwd", "ftp://127.0.0.1/x.png", "gopher://127.0.0.1/" } do
        emu:clear()
        emu:inject { url = url }
        local img, err = H.client(emu, { model = "gpt-image-2-all" }):edit { prompt = "x", images = { person } }
        assert.is_nil(img)
        assert.are.equal("protocol", err.kind)
        assert.matches("not http or https", err.message)
        assert.are.equal(1, #emu:requests())
      end
    end)

    it("refuses a redirect from the download to file://", function()
      emu:inject { url = emu.cdn_url .. "/redirect/" .. hex("file:///etc/passwd") }
      local img, err = H.client(emu, { model = "gpt-image-2-all" }):edit { prompt = "x", images = { person } }
      assert.is_nil(img)
      assert.are.equal("protocol", err.kind)
      local all = emu:requests()
      assert.are.equal("cdn", all[2].listener)
      assert.are.equal(302, all[2].status)
    end)

    it("follows an http redirect on the download, still without Authorization", function()
      local first = assert(H.client(emu, { model = "gpt-image-2-all" }):edit { prompt = "y", images = { person } })
      emu:clear()
      emu:inject { url = emu.cdn_url .. "/redirect/" .. hex(first.url) }
      local img = assert(H.client(emu, { model = "gpt-image-2-all" }):edit { prompt = "y", images = { person } })
      assert.are.equal(first.sha256, img.sha256)
      local all = emu:requests()
      assert.are.equal(3, #all)
      assert.is_false(all[2].authorization)
      assert.is_false(all[3].authorization)
    end)

    it("reports bad JSON, bad base64 and non-images as protocol errors", function()
      for _, fault in ipairs { { bad_json = true }, { bad_base64 = true },
        { status = 200, body = '{"data":[{"b64_json":"' .. core.b64encode("not an image at all") .. '"}]}' },
        { status = 200, body = '{"data":[]}' }, { status = 200, body = '{"data":[{"b64_json":5}]}' } } do
        emu:inject(fault)
        local img, err = H.client(emu):generate { prompt = "x" }
        assert.is_nil(img)
        assert.are.equal("protocol", err.kind)
        assert.is_false(err.retryable)
      end
    end)

    it("caps the answer at max_response_bytes", function()
      emu:inject { oversize = 200000 }
      local img, err = H.client(emu, { max_response_bytes = 100000 }):generate { prompt = "x" }
      assert.is_nil(img)
      assert.are.equal("protocol", err.kind)
      assert.matches("^the answer is larger than the 100000%-byte limit %(max_response_bytes%)", err.message)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("caps url downloads at max_download_bytes", function()
      local c = H.client(emu, { model = "gpt-image-2-all", max_download_bytes = 1000 })
      local img, err = c:edit { prompt = "x", images = { person } }
      assert.is_nil(img)
      assert.are.equal("protocol", err.kind)
      assert.matches("download is larger than the 1000%-byte limit %(max_download_bytes%)", err.message)
    end)

    it("maps service errors to kinds, JSON or HTML", function()
      emu:inject { status = 500, message = "the model fell over" }
      local _, err = H.client(emu, { max_retries = 0 }):generate { prompt = "x" }
      assert.are.equal("server", err.kind)
      assert.are.equal("the model fell over", err.message)
      assert.is_true(err.retryable)
      emu:inject { status = 502, html = true }
      _, err = H.client(emu, { max_retries = 0 }):generate { prompt = "x" }
      assert.are.equal("server", err.kind)
      assert.are.equal(502, err.status)
      assert.matches("HTTP 502", err.message)
      emu:inject { status = 400, code = "moderation_blocked", message = "blocked" }
      _, err = H.client(emu):generate { prompt = "x" }
      assert.are.equal("moderation", err.kind)
      emu:inject { status = 404 }
      _, err = H.client(emu):generate { prompt = "x" }
      assert.are.equal("not_found", err.kind)
      assert.matches("imgedit: not_found: ", tostring(err))
    end)

    it("reports an unreachable service as a network error", function()
      local c = imgedit.new { base_url = "http://127.0.0.1:1/v1", api_key = "sk-x" }
      local _, err = c:generate { prompt = "x" }
      assert.are.equal("network", err.kind)
      assert.is_true(err.retryable)
    end)
  end)

  describe("local files", function()
    it("names a missing file, a directory, a GIF and a truncated PNG, with no request", function()
      local gif = H.write(dir .. "/anim.gif", "GIF89a" .. H.pack("<I2I2", 8, 8) .. string.rep("\0", 20))
      local cut = H.write(dir .. "/cut.png", H.png(64, 64):sub(1, 100))
      local cases = {
        { dir .. "/nope.png", "image 2 %(nope%.png%): cannot open" },
        { dir, "is a directory" },
        { gif, "image 2 %(anim%.gif%): gif images are not accepted" },
        { cut, "image 2 %(cut%.png%): truncated PNG" },
      }
      for _, case in ipairs(cases) do
        local img, err = H.client(emu):edit { prompt = "x", images = { person, case[1] } }
        assert.is_nil(img)
        assert.are.equal("invalid_request", err.kind)
        assert.are.equal("images", err.param)
        assert.are.equal(2, err.index)
        assert.matches(case[2], err.message)
      end
      assert.are.equal(0, #emu:requests())
    end)

    it("raises on programming mistakes", function()
      local c = H.client(emu)
      assert.has_error(function() c:edit("prompt") end)
      assert.has_error(function() c:edit { prompt = 5, images = { person } } end)
      assert.has_error(function() c:edit { prompt = "x", images = { 42 } } end)
      assert.has_error(function() c:edit { prompt = "x", images = { person }, size = {} } end)
      assert.has_error(function() imgedit.new("key") end)
      assert.has_error(function() imgedit.new { timeout = "slow" } end)
      assert.has_error(function() c:submit("paint", {}) end)
      assert.are.equal(0, #emu:requests())
    end)
  end)
end)
