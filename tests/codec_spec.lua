local H = require "helpers"
local core = require "imgedit.core"
local imgedit = require "imgedit"

describe("base64 and data URLs", function()
  it("round-trips every byte value and every padding length", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    for n = 0, 5 do
      local s = all:sub(1, 250 + n)
      assert.are.equal(s, core.b64decode(core.b64encode(s)))
    end
    assert.are.equal("hello", core.b64decode("aGVsbG8="))
    assert.are.equal("hell", core.b64decode("aGVsbA=="))
  end)

  it("refuses invalid base64 instead of returning garbage", function()
    for _, bad in ipairs { "aGVsbG8", "aGV=bG8=", "aGVs$G8=", " aGVsbG8=", "aGVsbG8=\n", "", "a===" } do
      local v, msg, reason = core.b64decode(bad)
      assert.is_nil(v, bad)
      assert.are.equal("base64", reason)
      assert.is_string(msg)
    end
  end)

  it("decodes data URLs and names the media type", function()
    local png = H.png(4, 4)
    local bytes, mime = core.dataurl_decode("data:image/png;base64," .. core.b64encode(png))
    assert.are.equal(png, bytes)
    assert.are.equal("image/png", mime)
  end)

  it("refuses data URLs that are not base64 images", function()
    for _, bad in ipairs {
      "data:text/plain;base64,aGVsbG8=", "data:image/png,aGVsbG8=", "image/png;base64,aGVsbG8=",
      "data:image/png;base64", "data:image/png;base64,@@@@",
    } do
      assert.is_nil(core.dataurl_decode(bad), bad)
    end
  end)
end)

describe("hashing", function()
  it("computes SHA-256 of strings and files alike", function()
    assert.are.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", core.sha256("abc"))
    local dir = H.tmpdir()
    local big = string.rep("0123456789abcdef", 20000)
    H.write(dir .. "/f", big)
    assert.are.equal(core.sha256(big), core.sha256_file(dir .. "/f"))
    assert.is_nil(core.sha256_file(dir .. "/missing"))
    H.rmtree(dir)
  end)
end)

describe("Image:save", function()
  local dir
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmtree(dir) end)

  it("writes the bytes and leaves no temp file", function()
    local img = assert(imgedit.from_bytes(H.png(8, 8)))
    assert.are.equal(dir .. "/a.png", img:save(dir .. "/a.png"))
    assert.are.equal(img.bytes, H.read(dir .. "/a.png"))
    assert.are.same({ "a.png" }, H.ls(dir))
  end)

  it("never writes a picture under another format's name: it converts", function()
    local img = assert(imgedit.from_bytes(H.png(8, 8, function(x) return x * 30 end)))
    for _, case in ipairs { { "c.jpg", "jpeg" }, { "c.JPEG", "jpeg" }, { "c.webp", "webp" }, { "c.png", "png" },
      { "c.bin", "png" } } do
      assert(img:save(dir .. "/" .. case[1]))
      assert.are.equal(case[2], imgedit.inspect(dir .. "/" .. case[1]).format, case[1])
      os.remove(dir .. "/" .. case[1])
    end
    assert.are.equal(img.bytes, (function() img:save(dir .. "/same.png"); return H.read(dir .. "/same.png") end)())
    os.remove(dir .. "/same.png")
  end)

  it("fails cleanly when the target cannot be replaced, leaving no temp file", function()
    os.execute("mkdir -p '" .. dir .. "/taken/inner'")
    local img = assert(imgedit.from_bytes(H.png(8, 8)))
    local ok, err = img:save(dir .. "/taken")
    assert.is_nil(ok)
    assert.are.equal("io", err.kind)
    assert.matches("Is a directory", err.message)
    assert.are.same({ "taken" }, H.ls(dir))
  end)

  it("keeps the old file intact when the write fails part way", function()
    H.write(dir .. "/old.png", "OLD CONTENT")
    -- A child limited to 1 KiB per file: writing 64 KiB fails with EFBIG.
    local script = H.write(dir .. "/save.lua", string.format([[
      local imgedit = require "imgedit"
      local img = assert(imgedit.from_bytes(%q))
      local ok, err = img:save(%q)
      io.write(ok and "saved" or err.message)
    ]], H.png(128, 128, function(x, y) return (x * y) % 256 end), dir .. "/old.png"))
    local p = io.popen("cd '" .. os.getenv("PWD") .. "' && ulimit -f 1 && trap '' XFSZ && "
      .. "LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;' " .. H.LUA .. " '" .. script .. "' 2>&1")
    local out = p:read("*a")
    p:close()
    assert.matches("cannot write", out)
    assert.are.equal("OLD CONTENT", H.read(dir .. "/old.png"))
    assert.are.same({ "old.png", "save.lua" }, H.ls(dir))
  end)
end)
