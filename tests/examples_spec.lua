-- The examples are part of the product: each one runs here, against the
-- emulator, exactly as a user would run it.
local H = require "helpers"

local function run(cmd)
  local p = io.popen("env -u IMGEDIT_API_KEY -u IMGEDIT_BASE_URL LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
    .. "LUA_CPATH='" .. H.BUILD .. "/?.so;;' " .. cmd .. " 2>&1; echo \"exit=$?\"")
  local out = p:read("*a")
  p:close()
  return out, tonumber(out:match("exit=(%d+)%s*$"))
end

describe("examples", function()
  it("pipeline.lua fuses, inpaints and restyles into the output folder", function()
    local dir = H.tmpdir()
    local out, code = run("" .. H.LUA .. " examples/pipeline.lua '" .. dir .. "'")
    assert.are.equal(0, code, out)
    assert.matches("using the local emulator", out)
    assert.matches("the service changed %d+%.%d%% of the area the mask keeps; preserve put the input back there", out)
    for _, name in ipairs { "1-fused.png", "2-inpainted.png", "3-restyled.png", "mask.png" } do
      local info = assert(require("imgedit").inspect(dir .. "/" .. name), name)
      assert.are.equal("png", info.format)
      assert.are.same({ 1536, 1024 }, { info.width, info.height })
    end
    -- each step left its record: the contact sheet of the folder shows the three, as a chain
    out, code = run(H.LUA .. " bin/imgedit report '" .. dir .. "/'")
    assert.are.equal(0, code, out)
    assert.truthy(out:find("contact sheet: " .. dir .. "/index.html (3 steps)\n", 1, true), out)
    local page = H.read(dir .. "/index.html")
    for _, step in ipairs { "1-fused", "2-inpainted", "3-restyled" } do
      assert.truthy(page:find('id="step-' .. step .. '"', 1, true), step)
    end
    assert.truthy(page:find("<dt>from</dt><dd><a href=\"#step-1-fused\">1-fused</a>, mask mask.png</dd>", 1, true))
    H.rmtree(dir)
  end)

  it("pipeline.lua run again against the same service pays for nothing", function()
    local dir = H.tmpdir()
    local emu = H.emulator()
    local cmd = "IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL=" .. emu.url .. " " .. H.LUA .. " examples/pipeline.lua '"
      .. dir .. "'"
    local out, code = run(cmd)
    assert.are.equal(0, code, out)
    assert.are.equal(3, #H.api_requests(emu))
    emu:clear()
    out, code = run(cmd)
    assert.are.equal(0, code, out)
    assert.are.equal(0, #emu:requests())
    assert.matches("3%. restyled .* %(cached%)", out)
    assert.matches("done: 0 tokens in all", out)
    emu:stop()
    H.rmtree(dir)
  end)
end)

describe("examples (non-blocking)", function()
  it("frameloop.lua keeps frames coming while edits run, with jobs and with a coroutine", function()
    local dir = H.tmpdir()
    local out, code = run("" .. H.LUA .. " examples/frameloop.lua '" .. dir .. "'")
    assert.are.equal(0, code, out)
    local frames = tonumber(out:match("jobs: (%d+) frames"))
    assert.is_true(frames >= 10, out)
    assert.is_true(tonumber(out:match("coroutine: two chained edits over (%d+) frames")) >= 10, out)
    assert.are.equal("png", require("imgedit").inspect(dir .. "/frameloop-2.png").format)
    H.rmtree(dir)
  end)
end)

describe("streaming example", function()
  it("stream.lua saves each partial image, then the final one", function()
    local dir = H.tmpdir()
    local out, code = run("" .. H.LUA .. " examples/stream.lua '" .. dir .. "'")
    assert.are.equal(0, code, out)
    for i = 0, 2 do assert.truthy(require("imgedit").inspect(dir .. "/partial-" .. i .. ".png")) end
    assert.truthy(require("imgedit").inspect(dir .. "/final.png"))
    assert.matches("partial 2", out)
    H.rmtree(dir)
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
      local cmd = "IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL=" .. emu.url .. " " .. H.LUA .. " examples/" .. name
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
