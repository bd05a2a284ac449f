-- `imgedit run --watch`: a script re-run on each save of itself or of a
-- step's input, paying only for the steps that changed; a broken script is
-- shown and the watcher keeps waiting. The requests are counted by the
-- test's own emulator.
local H = require "helpers"

describe("imgedit run --watch", function()
  local emu, dir
  H.world(function(e, d) emu, dir = e, d end)

  it("re-runs on each save, pays only for what changed, and survives a broken script", function()
    H.write(dir .. "/in.png", H.png(48, 48))
    local script = dir .. "/chain.lua"
    local function save(prompt2, broken)
      H.write(script, string.format([[
local p = imgedit.pipeline { dir = %q, cache = %q, quiet = true }
local a = assert(p:edit("one", { prompt = "first", images = { %q } }))
assert(p:edit("two", { prompt = %q, images = { a } }))
%s
]], dir .. "/out", dir .. "/cache", dir .. "/in.png", prompt2, broken and "this is not lua" or ""))
    end
    save("second v1")
    local child = io.popen("IMGEDIT_BASE_URL=" .. emu.url .. " IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_PROVIDER=apiyi "
      .. "timeout 60 " .. H.CHILD .. H.LUA .. " bin/imgedit run --watch --runs 5 '" .. script .. "' 2>&1; echo exit=$?")
    local log = {}
    -- read(until) -> the lines up to the one matching `until`
    local function upto(pattern)
      for line in child:lines() do
        log[#log + 1] = line
        if line:find(pattern) then return line end
      end
      error("the watcher ended early:\n" .. table.concat(log, "\n"))
    end
    upto("^watching 2 files")
    assert.are.equal(2, #H.api_requests(emu))
    -- 1: the second step's prompt changes: only it is paid for
    save("second v2")
    upto("^watching")
    assert.are.equal(3, #H.api_requests(emu))
    -- 2: a broken script: the error is shown, nothing is sent, the watch goes on
    save("second v2", true)
    local failed = upto("^run 3 failed")
    assert.matches("chain%.lua:%d+:", failed)
    upto("^watching")
    assert.are.equal(3, #H.api_requests(emu))
    -- 3: fixed: every step from the cache
    save("second v2")
    upto("^run 4 done")
    upto("^watching")
    assert.are.equal(3, #H.api_requests(emu))
    -- 4: the input picture changed: both steps are paid again
    H.write(dir .. "/in.png", H.png(48, 40))
    upto("^run 5 done")
    for line in child:lines() do log[#log + 1] = line end
    child:close()
    local text = table.concat(log, "\n")
    assert.matches("exit=0", text)
    assert.are.equal(5, #H.api_requests(emu))
    assert.matches("contact sheet: " .. (dir .. "/out/index.html"):gsub("%p", "%%%0"), text)
    assert.matches("one%s+cached", text)
  end)
end)

describe("imgedit run --emulate", function()
  it("hits the cache from one run to the next (the emulator keeps its port)", function()
    local dir = H.tmpdir()
    H.write(dir .. "/in.png", H.png(32, 32))
    H.write(dir .. "/s.lua", string.format([[
local p = imgedit.pipeline { dir = %q, cache = %q, quiet = true }
assert(p:edit("one", { prompt = "first", images = { %q }, quality = "low" }))
local r = p:report { quiet = true }
print(string.format("hits=%%d requests=%%d", r.hits, r.requests))
]], dir .. "/out", dir .. "/cache", dir .. "/in.png"))
    local function run()
      local p = io.popen(H.CHILD .. H.LUA .. " bin/imgedit run --emulate '" .. dir .. "/s.lua' 2>&1")
      local out = p:read("*a")
      p:close()
      return out
    end
    assert.matches("hits=0 requests=1", run())
    assert.matches("hits=1 requests=0", run())
    H.rmtree(dir)
  end)
end)
