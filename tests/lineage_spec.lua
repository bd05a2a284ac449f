-- Lineage in every picture: an XMP packet in PNG (iTXt), JPEG (APP1) and
-- WebP (XMP chunk, announced by VP8X), written by pipelines and the CLI,
-- read back by imgedit.inspect, the same bytes on every run.
local H = require "helpers"
local imgedit = require "imgedit"
local core = require "imgedit.core"
local lineage = require "imgedit.lineage"

describe("lineage", function()
  local emu, dir
  H.world(function(e, d) emu, dir = e, d end)

  it("goes into PNG, JPEG and WebP and comes back, replacing an older one, the files still decoding", function()
    local px = H.rgba(40, 24, function() return 128 end)
    for _, fmt in ipairs { "png", "jpeg", "webp" } do
      local plain = core.encode(px, 40, 24, fmt, 90)
      local rec = lineage.record { prompt = "p <&> \"q\"", model = "m", params = { size = "40x24", n = 1 },
        parents = { "ab", "cd" }, step = "s" }
      local with = assert(core.xmp_embed(plain, lineage.packet(rec)))
      assert.are.same(rec, lineage.read(with))
      assert.is_nil(lineage.read(plain))
      -- the same record twice: the same bytes; another record replaces it
      assert.are.equal(with, core.xmp_embed(with, lineage.packet(rec)))
      local other = assert(core.xmp_embed(with, lineage.packet(lineage.record { prompt = "other" })))
      assert.are.equal("other", lineage.read(other).prompt)
      local d, w, h = core.decode(other)
      assert.truthy(d, fmt)
      assert.are.same({ 40, 24 }, { w, h })
      local info = core.inspect(other, true)
      assert.are.equal(fmt, info.format)
      assert.are.equal(fmt ~= "jpeg", info.has_alpha)
      H.write(dir .. "/lin." .. fmt, other)
    end
    if H.ok("command -v djpeg >/dev/null") then assert.is_true(H.ok("djpeg " .. dir .. "/lin.jpeg >/dev/null")) end
    -- broken files get a clear refusal, not a crash
    local _, msg = core.xmp_embed("\137PNG\r\n\26\n\0\0\0\13IHDR" .. string.rep("\0", 17) .. "\255\255\255\255IDAT" .. string.rep("x", 8), "x")
    assert.matches("runs past the end", msg)
    _, msg = core.xmp_embed("GIF89a....", "x")
    assert.matches("only into PNG, JPEG and WebP", msg)
  end)

  it("comes out again: strip gives back the bytes it went into, and leaves what is not its own", function()
    local opaque, clear = H.rgba(40, 24), H.rgba(40, 24, function(x) return x * 6 end)
    local files = {
      png = core.encode(opaque, 40, 24, "png"), png_alpha = core.encode(clear, 40, 24, "png"),
      jpeg = core.encode(opaque, 40, 24, "jpeg", 80),
      webp_lossy = core.encode(opaque, 40, 24, "webp", 80), -- simple: one VP8 chunk
      webp_lossless = core.encode(clear, 40, 24, "webp", 80, true), -- simple: one VP8L chunk, alpha in it
      webp_alpha = core.encode(clear, 40, 24, "webp", 80), -- extended: VP8X, ALPH, VP8
    }
    assert.are.equal("VP8 ", files.webp_lossy:sub(13, 16))
    assert.are.equal("VP8L", files.webp_lossless:sub(13, 16))
    assert.are.equal("VP8X", files.webp_alpha:sub(13, 16))
    local rec = lineage.record { prompt = "p", model = "m", request_id = "req_1", parents = { "ab" } }
    for name, plain in pairs(files) do
      assert.are.equal(plain, lineage.strip(plain), name) -- nothing to strip: the same bytes
      local with = assert(core.xmp_embed(plain, lineage.packet(rec)))
      assert.are_not.equal(plain, with, name)
      assert.are.equal(plain, lineage.strip(with), name)
      assert.are.equal(core.sha256(plain), lineage.sha256(with), name)
      -- another record (another request id) on the same picture: the same picture
      local other = assert(core.xmp_embed(with, lineage.packet(lineage.record { prompt = "p", request_id = "req_2" })))
      assert.are.equal(plain, lineage.strip(other), name)
    end
    -- a packet that is not imgedit's stays: strip takes only its own
    local foreign = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    for _, name in ipairs { "png", "jpeg", "webp_alpha" } do
      local theirs = assert(core.xmp_embed(files[name], foreign))
      assert.are.equal(theirs, lineage.strip(theirs), name)
      assert.are.equal(foreign, core.xmp_read(lineage.strip(theirs)), name)
    end
    -- not a picture, or a broken one: handed back as it came
    for _, junk in ipairs { "", "GIF89a", "RIFF\0\0\0\0WEBPVP8X", "\255\216\255\225\0" } do
      assert.are.equal(junk, lineage.strip(junk))
    end
  end)

  it("is in every step a pipeline saves, in all three formats, the same bytes on a re-run", function()
    H.write(dir .. "/in.png", H.png(64, 48))
    local function run()
      local p = imgedit.pipeline { client = H.client(emu), dir = dir .. "/out", cache = dir .. "/cache", quiet = true }
      local a = assert(p:edit("first", { prompt = "first", images = { dir .. "/in.png" }, quality = "low",
        output_format = "jpeg" }))
      local b = assert(p:edit("second", { prompt = "second", images = { a }, output_format = "webp" }))
      local c = assert(p:edit("third", { prompt = "third", images = { b, dir .. "/in.png" } }))
      return a, b, c
    end
    local a, b, c = run()
    assert.are.equal(3, #H.api_requests(emu))
    local la = imgedit.inspect(a.path).lineage
    assert.are.same({ v = 1, prompt = "first", model = "gpt-image-2", params = { quality = "low", output_format = "jpeg" },
      step = "first", parents = { core.sha256_file(dir .. "/in.png") }, request_id = a.request_id }, la)
    assert.matches("^req_emu_", la.request_id)
    -- each picture names its parents by the pictures it was made from: the
    -- service's bytes, without the lineage saved into them
    assert.are_not.equal(core.sha256_file(a.path), a.picture_sha256)
    assert.are.same({ a.picture_sha256 }, imgedit.inspect(b.path).lineage.parents)
    assert.are.same({ lineage.sha256_file(b.path), core.sha256_file(dir .. "/in.png") },
      imgedit.inspect(c.path).lineage.parents)
    assert.are.equal("webp", imgedit.inspect(b.path).format)
    assert.are.equal("third", imgedit.inspect(c).lineage.step)
    local before = { H.read(a.path), H.read(b.path), H.read(c.path) }
    -- a re-run pays nothing and writes the same bytes, request ids and all
    emu:clear()
    run()
    assert.are.equal(0, #H.api_requests(emu))
    assert.are.same(before, { H.read(a.path), H.read(b.path), H.read(c.path) })
    -- lineage = false leaves it out
    local p = imgedit.pipeline { client = H.client(emu), dir = dir .. "/bare", cache = false, quiet = true, lineage = false }
    local bare = assert(p:generate("g", { prompt = "g", quality = "low" }))
    assert.is_nil(imgedit.inspect(bare.path).lineage)
  end)

  it("is written by the CLI (kept through a conversion), shown by imgedit inspect, left out with --no-lineage", function()
    H.write(dir .. "/c.png", H.png(32, 32))
    local env = "IMGEDIT_BASE_URL=" .. emu.url .. " IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_PROVIDER=apiyi "
    assert.is_true(H.ok(env .. H.CHILD .. H.LUA .. " bin/imgedit edit -q -p 'a \"cat\"' -i " .. dir .. "/c.png --quality low"
      .. " -o " .. dir .. "/c-out.jpg"))
    local l = imgedit.inspect(dir .. "/c-out.jpg").lineage
    assert.are.equal('a "cat"', l.prompt)
    assert.are.same({ core.sha256_file(dir .. "/c.png") }, l.parents)
    -- a model that takes no output_format: the PNG answer is converted, the lineage kept
    assert.is_true(H.ok(env .. H.CHILD .. H.LUA .. " bin/imgedit generate -q -p conv --model gpt-image-2-all --size 64x64"
      .. " --response-format b64_json -o " .. dir .. "/conv.webp"))
    assert.are.equal("conv", imgedit.inspect(dir .. "/conv.webp").lineage.prompt)
    local p = io.popen(H.CHILD .. H.LUA .. " bin/imgedit inspect " .. dir .. "/c-out.jpg")
    local text = p:read("*a")
    p:close()
    assert.matches('made by gpt%-image%-2 from 1 input: "a \\"cat\\""', text)
    assert.matches("input 1 sha256 " .. core.sha256_file(dir .. "/c.png"), text)
    assert.is_true(H.ok(env .. H.CHILD .. H.LUA .. " bin/imgedit generate -q -p bare --quality low --no-lineage -o " .. dir .. "/bare.png"))
    assert.is_nil(imgedit.inspect(dir .. "/bare.png").lineage)
  end)

  local browser
  for _, name in ipairs { "chromium", "chromium-browser" } do
    if not browser and H.ok("command -v " .. name .. " >/dev/null 2>&1") then browser = name end
  end
  local test = browser and it
    or function(name) it(name, function() pending("needs a browser (the Debian package chromium)") end) end

  test("leaves pictures a browser shows: all three formats load in headless Chromium", function()
    local px = H.rgba(40, 24, function() return 200 end)
    local tags = {}
    for _, fmt in ipairs { "png", "jpeg", "webp" } do
      local path = dir .. "/b." .. fmt
      H.write(path, assert(core.xmp_embed(core.encode(px, 40, 24, fmt, 90), lineage.packet(lineage.record { prompt = fmt }))))
      tags[#tags + 1] = '<img src="b.' .. fmt .. '">'
    end
    H.write(dir .. "/b.html", "<!doctype html><body>" .. table.concat(tags) .. [[<script>addEventListener("load",
      function(){var n=0;for(var i of document.images)if(i.naturalWidth==40&&i.naturalHeight==24)n++;
      document.body.dataset.ok=n})</script></body>]])
    local cwd = io.popen("pwd"):read("*l")
    local path = dir:sub(1, 1) == "/" and dir or (cwd .. "/" .. dir)
    local p = io.popen(browser .. " --headless --no-sandbox --disable-gpu --user-data-dir=" .. dir .. "/chrome"
      .. " --dump-dom file://" .. path .. "/b.html 2>/dev/null")
    local dom = p:read("*a")
    p:close()
    assert.matches('data%-ok="3"', dom)
  end)
end)
