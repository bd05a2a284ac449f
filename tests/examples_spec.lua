-- The examples are part of the product: each one runs here, against the
-- emulator, exactly as a user would run it.
local H = require "helpers"

local function run(cmd)
  local p = io.popen("env -u IMGEDIT_API_KEY -u IMGEDIT_BASE_URL LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
    .. "LUA_CPATH='build/?.so;;' " .. cmd .. " 2>&1; echo \"exit=$?\"")
  local out = p:read("a")
  p:close()
  return out, tonumber(out:match("exit=(%d+)%s*$"))
end

describe("examples", function()
  it("pipeline.lua fuses, inpaints and restyles into the output folder", function()
    local dir = H.tmpdir()
    local out, code = run("lua5.4 examples/pipeline.lua '" .. dir .. "'")
    assert.are.equal(0, code, out)
    assert.matches("using the local emulator", out)
    for _, name in ipairs { "1-fused.png", "2-inpainted.png", "3-restyled.png", "mask.png" } do
      local info = assert(require("imgedit").inspect(dir .. "/" .. name), name)
      assert.are.equal("png", info.format)
      assert.are.same({ 1536, 1024 }, { info.width, info.height })
    end
    H.rmtree(dir)
  end)
end)

describe("examples (non-blocking)", function()
  it("frameloop.lua keeps frames coming while edits run, with jobs and with a coroutine", function()
    local dir = H.tmpdir()
    local out, code = run("lua5.4 examples/frameloop.lua '" .. dir .. "'")
    assert.are.equal(0, code, out)
    local frames = tonumber(out:match("jobs: (%d+) frames"))
    assert.is_true(frames >= 10, out)
    assert.is_true(tonumber(out:match("coroutine: two chained edits over (%d+) frames")) >= 10, out)
    assert.are.equal("png", require("imgedit").inspect(dir .. "/frameloop-2.png").format)
    H.rmtree(dir)
  end)
end)

describe("the imgedit command", function()
  local emu, dir
  lazy_setup(function()
    emu = H.emulator()
    dir = H.tmpdir()
    H.write(dir .. "/a.png", H.png(32, 32))
    H.write(dir .. "/b.gif", "GIF89a" .. string.pack("<I2I2", 8, 8) .. string.rep("\0", 20))
  end)
  lazy_teardown(function()
    emu:stop()
    H.rmtree(dir)
  end)

  local function cli(args)
    return run("IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL=" .. emu.url .. " lua5.4 bin/imgedit " .. args)
  end

  it("edits and writes the output", function()
    local out, code = cli("edit -p 'make it dusk' -i " .. dir .. "/a.png -i " .. dir .. "/a.png --size 1024x1024 -o "
      .. dir .. "/out.png")
    assert.are.equal(0, code, out)
    assert.matches("1024x1024", out)
    assert.are.equal("png", require("imgedit").inspect(dir .. "/out.png").format)
    assert.is_nil(out:find(emu.key, 1, true))
  end)

  it("generates, and reports a refused request with exit 1", function()
    local out, code = cli("generate -p sky --size 100x100 -o " .. dir .. "/g.png")
    assert.are.equal(1, code)
    assert.matches("invalid_request", out)
    out, code = cli("generate -p sky -o " .. dir .. "/g.png")
    assert.are.equal(0, code, out)
  end)

  it("inspects files, as text and as JSON", function()
    local out, code = cli("inspect " .. dir .. "/a.png " .. dir .. "/b.gif")
    assert.are.equal(0, code, out)
    assert.matches("a%.png: png 32x32, 4 channels with alpha", out)
    assert.matches("not accepted for upload", out)
    out = cli("inspect --json " .. dir .. "/a.png")
    local rows = require("cjson").decode(out:match("^(.-)\nexit="))
    assert.is_true(rows[1].ok_as_mask)
  end)
end)

describe("pipeline examples", function()
  local emu
  lazy_setup(function() emu = H.emulator() end)
  lazy_teardown(function() emu:stop() end)

  -- Each example runs twice against this emulator: the second run must be
  -- served entirely from the cache.
  for _, case in ipairs {
    { "character_sheet", { "pose-1.png", "pose-4.png", "sheet.png" }, 5 },
    { "product_shot", { "shot-1.jpg", "shot-3.jpg" }, 3 },
    { "refine", { "round-3.png", "winter/final.png", "autumn/final.png" }, 5 },
  } do
    local name, files, requests = case[1], case[2], case[3]
    it(name .. ".lua runs, and a second run sends no request", function()
      local dir = H.tmpdir()
      local cmd = "IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL=" .. emu.url .. " lua5.4 examples/" .. name
        .. ".lua '" .. dir .. "'"
      emu:clear()
      local out, code = run(cmd)
      assert.are.equal(0, code, out)
      for _, f in ipairs(files) do assert.truthy(require("imgedit").inspect(dir .. "/" .. f), f) end
      assert.are.equal(requests, #H.api_requests(emu))
      emu:clear()
      out, code = run(cmd)
      assert.are.equal(0, code, out)
      assert.are.equal(0, #emu:requests())
      assert.matches("0 requests", out)
      H.rmtree(dir)
    end)
  end
end)
