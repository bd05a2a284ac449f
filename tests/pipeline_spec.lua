local H = require "helpers"
local core = require "imgedit.core"
local cjson = require "cjson"
local imgedit = require "imgedit"
local tokens = require "imgedit.tokens"

local ENV = "LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;'"

describe("pipelines", function()
  local emu, dir, pic, c
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(64, 64))
    c = H.client(emu)
  end)

  local n = 0
  local function fresh()
    n = n + 1
    return dir .. "/run" .. n
  end

  -- a -> b -> c, and d on its own
  local function script(p, prompts)
    local a = assert(p:edit("a", { prompt = prompts.a or "compose", images = { pic }, size = "1024x1024" }))
    local b = assert(p:edit("b", { prompt = prompts.b or "dusk", images = { a } }))
    local cc = assert(p:edit("c", { prompt = prompts.c or "snow", images = { b } }))
    local d = assert(p:generate("d", { prompt = prompts.d or "a lighthouse", size = "1024x1024" }))
    return a, b, cc, d
  end

  local function paths_of(reqs)
    local out = {}
    for _, r in ipairs(reqs) do out[#out + 1] = r.fields.prompt end
    return out
  end

  it("chains steps, saves outputs and sidecars, and a second run sends nothing", function()
    local out, cache = fresh(), fresh()
    local p = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }
    local a, b = script(p, {})
    assert.are.equal(out .. "/a.png", a.path)
    assert.are.equal(a.bytes, H.read(out .. "/a.png"))
    local side = cjson.decode(H.read(out .. "/b.json"))
    assert.are.equal("dusk", side.prompt)
    assert.are.equal("gpt-image-2", side.model)
    assert.are.equal(a.picture_sha256, side.inputs[1].sha256) -- the picture, not the file with its lineage
    assert.are.equal(b.sha256, side.output.sha256)
    assert.are.equal(b.picture_sha256, side.output.picture)
    assert.is_false(side.cache_hit)
    assert.is_true(side.usage.total_tokens > 0)
    assert.are.equal(4, #emu:requests())
    -- the picture a's service made arrived at b byte for byte (a's file adds its lineage)
    assert.are.equal(a.picture_sha256, emu:requests()[2].files[1].sha256)
    assert.are_not.equal(a.sha256, a.picture_sha256)

    emu:clear()
    local p2 = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }
    local a2 = script(p2, {})
    assert.are.equal(0, #emu:requests())
    assert.are.equal(a.sha256, a2.sha256)
    local r = p2:report { quiet = true }
    assert.are.same({ 4, 4, 0, 0 }, { r.steps, r.hits, r.requests, r.tokens })
    assert.is_true(cjson.decode(H.read(out .. "/b.json")).cache_hit)
  end)

  it("re-runs only the changed step and the steps that depend on it", function()
    local out, cache = fresh(), fresh()
    script(imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }, {})
    emu:clear()
    script(imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }, { b = "dawn" })
    assert.are.same({ "dawn", "snow" }, paths_of(emu:requests()))
  end)

  it("shares the cache between folders, and keys on the service and model", function()
    local cache = fresh()
    script(imgedit.pipeline { client = c, dir = fresh(), cache = cache, quiet = true }, {})
    emu:clear()
    script(imgedit.pipeline { client = c, dir = fresh(), cache = cache, quiet = true }, {})
    assert.are.equal(0, #emu:requests())
    local other = H.client(emu, { model = "gpt-image-2-all" })
    local p = imgedit.pipeline { client = other, dir = fresh(), cache = cache, quiet = true }
    assert(p:generate("d", { prompt = "a lighthouse", size = "1024x1024", response_format = "b64_json" }))
    assert.are.equal(1, #emu:requests())
  end)

  it("ignores and replaces a corrupt cache entry", function()
    local out, cache = fresh(), fresh()
    local p = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }
    local d = assert(p:generate("d", { prompt = "x", size = "1024x1024" }))
    local key_dir = H.ls(cache)[1]
    local files = H.ls(cache .. "/" .. key_dir)
    local png
    for _, f in ipairs(files) do if f:match("%.png$") then png = cache .. "/" .. key_dir .. "/" .. f end end
    local bytes = H.read(png)
    H.write(png, bytes:sub(1, 100) .. string.char((bytes:byte(101) + 1) % 256) .. bytes:sub(102))
    core.write_atomic(out .. "/.imgedit-journal.json", "{}") -- no resume from the folder either
    emu:clear()
    local p2 = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }
    local again = assert(p2:generate("d", { prompt = "x", size = "1024x1024" }))
    assert.are.equal(1, #emu:requests())
    assert.are.equal(d.sha256, again.sha256)
    assert.are.equal(d.bytes, H.read(png)) -- replaced
    -- and a metadata file that is not JSON is a miss too
    local meta = png:gsub("%.png$", ".json")
    H.write(meta, "{not json")
    core.write_atomic(out .. "/.imgedit-journal.json", "{}")
    emu:clear()
    assert(imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }:generate("d", { prompt = "x", size = "1024x1024" }))
    assert.are.equal(1, #emu:requests())
  end)

  it("cache = false pays again in a new folder; refresh forces a request", function()
    local p = imgedit.pipeline { client = c, dir = fresh(), cache = false, quiet = true }
    assert(p:generate("d", { prompt = "x", size = "1024x1024" }))
    local p2 = imgedit.pipeline { client = c, dir = fresh(), cache = false, quiet = true }
    assert(p2:generate("d", { prompt = "x", size = "1024x1024" }))
    assert.are.equal(2, #emu:requests())
    local out, cache = fresh(), fresh()
    assert(imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }:generate("d", { prompt = "y", size = "1024x1024" }))
    emu:clear()
    local img = assert(imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }:generate("d",
      { prompt = "y", size = "1024x1024", refresh = true }))
    assert.are.equal(1, #emu:requests())
    assert.is_nil(emu:requests()[1].json.refresh)
    assert.is_nil(img.cached)
  end)

  it("one picture, one key: a step paid for again (a new request id in its file) leaves the steps after it cached",
    function()
      local out, cache = fresh(), fresh()
      local function run(refresh)
        local p = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }
        local a = assert(p:edit("a", { prompt = "day", images = { pic }, refresh = refresh }))
        return a, assert(p:edit("b", { prompt = "dusk", images = { a } }))
      end
      local a1, b1 = run()
      local before = #emu:requests() -- not cleared: the emulator's request ids go on
      local a2, b2 = run(true)
      assert.are.equal(before + 1, #emu:requests()) -- a paid again, b not
      assert.are.equal("day", emu:requests()[before + 1].fields.prompt)
      assert.are_not.equal(a1.request_id, a2.request_id)
      assert.are_not.equal(a1.sha256, a2.sha256) -- the saved files name their requests
      assert.are.equal(a1.picture_sha256, a2.picture_sha256) -- the service made the same picture
      assert.is_true(b2.cached)
      assert.are.equal(b1.sha256, b2.sha256)
    end)

  it("fans out in parallel, in order, and iterates", function()
    emu:configure { latency = 0.3 * H.SLOW }
    local p = imgedit.pipeline { client = c, dir = fresh(), cache = fresh(), quiet = true }
    local shots = assert(p:fan_out("v", {
      { prompt = "one", images = { pic } }, { prompt = "two", images = { pic } }, { prompt = "three", images = { pic } },
    }))
    assert.are.equal(3, emu:stats().max_in_flight) -- all three at once
    assert.are.equal(3, #shots)
    assert.matches("/v%-2%.png$", shots[2].path)
    assert.are_not.equal(shots[1].sha256, shots[2].sha256)
    emu:configure { latency = 0 }
    emu:clear()
    local last, all = p:iterate("it", shots[1], { "warmer", "sharper" })
    assert.are.equal(2, #all)
    assert.are.equal(all[2], last)
    local r = emu:requests()
    -- what is sent is the picture the service made, not the file with its lineage
    assert.are.equal(shots[1].picture_sha256, r[1].files[1].sha256)
    assert.are.equal(all[1].picture_sha256, r[2].files[1].sha256)
    assert.are_not.equal(shots[1].sha256, r[1].files[1].sha256)
  end)

  it("keeps what finished when one fan-out item fails, and pays only for it next time", function()
    local out, cache = fresh(), fresh()
    local p = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }
    local res, err = p:fan_out("v", { { prompt = "one", images = { pic } }, { prompt = "two", images = { pic }, size = "7x7" },
      { prompt = "three", images = { pic } } })
    assert.is_nil(res)
    assert.are.equal("size", err.param)
    assert.is_true(H.exists(out .. "/v-1.png") and H.exists(out .. "/v-3.png"))
    emu:clear()
    local p2 = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }
    assert(p2:fan_out("v", { { prompt = "one", images = { pic } }, { prompt = "two", images = { pic } },
      { prompt = "three", images = { pic } } }))
    assert.are.same({ "two" }, paths_of(emu:requests()))
  end)

  it("branches write into their own folder and share the report", function()
    local out = fresh()
    local p = imgedit.pipeline { client = c, dir = out, cache = fresh(), quiet = true }
    local base = assert(p:generate("base", { prompt = "base", size = "1024x1024" }))
    local w = assert(p:branch("warm"):edit("final", { prompt = "warm", images = { base } }))
    local k = assert(p:branch("cold"):edit("final", { prompt = "cold", images = { base } }))
    assert.are.equal(out .. "/warm/final.png", w.path)
    assert.are.equal(out .. "/cold/final.png", k.path)
    local r = p:report { quiet = true }
    assert.are.equal(3, r.steps)
    assert.are.equal("warm/final", r.list[2].name)
    assert.has_error(function() p:generate("base", { prompt = "again" }) end)
  end)

  describe("budget", function()
    it("refuses before the request when the estimate would pass the limit", function()
      local p = imgedit.pipeline { client = c, dir = fresh(), cache = false, quiet = true, budget = { tokens = 3000 } }
      local _, err = p:generate("big", { prompt = "x", size = "1536x1024", quality = "high" })
      assert.are.equal("budget", err.kind)
      assert.matches("would need up to %d+ tokens", err.message)
      assert.are.equal(0, #emu:requests())
    end)

    it("sums usage from the answers and stops when the next step cannot fit", function()
      local p = imgedit.pipeline { client = c, dir = fresh(), cache = false, quiet = true, budget = { tokens = 5000 } }
      local a = assert(p:generate("a", { prompt = "x", size = "1024x1024", quality = "medium" }))
      assert.are.equal(a.usage.total_tokens, p:report { quiet = true }.tokens)
      local _, err = p:generate("b", { prompt = "y", size = "1024x1024", quality = "high" })
      assert.are.equal("budget", err.kind)
      assert.are.equal(1, #emu:requests())
    end)

    it("limits requests too, and cache hits are free", function()
      local out, cache = fresh(), fresh()
      local p = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true, budget = { requests = 1 } }
      assert(p:generate("a", { prompt = "x", size = "1024x1024" }))
      local _, err = p:generate("b", { prompt = "y", size = "1024x1024" })
      assert.are.equal("budget", err.kind)
      local p2 = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true, budget = { requests = 0 } }
      assert(p2:generate("a", { prompt = "x", size = "1024x1024" }))
    end)

    it("estimates at least what the emulator bills", function()
      for _, case in ipairs { { "1024x1024", "low" }, { "1536x1024", "high" }, { "1024x1536", nil }, { "2048x2048", "medium" } } do
        local big = H.write(dir .. "/big.png", H.png(1800, 1200))
        local req = { prompt = string.rep("word ", 50), images = { big, pic }, size = case[1], quality = case[2] }
        local img = assert(c:edit(req))
        local est = tokens.estimate(req.prompt, { { width = 1800, height = 1200 }, { width = 64, height = 64 } }, case[1], case[2])
        assert.is_true(est >= img.usage.total_tokens, case[1] .. ": " .. est .. " < " .. img.usage.total_tokens)
      end
    end)
  end)

  it("resumes after SIGKILL without repeating any finished request", function()
    emu:configure { latency = 0.4 } -- the child runs at full speed, even under valgrind
    local out = fresh()
    local child = H.write(dir .. "/child.lua", string.format([[
      local imgedit = require "imgedit"
      local c = imgedit.new { base_url = %q, api_key = %q }
      local p = imgedit.pipeline { client = c, dir = %q, cache = false, quiet = true }
      local prev = %q
      for i = 1, 5 do prev = assert(p:edit("s" .. i, { prompt = "step " .. i, images = { prev } })) end
      print("finished")
    ]], emu.url, emu.key, out, pic))
    local pidf = assert(io.popen(ENV .. " sh -c '" .. H.LUA .. " " .. child .. " >/dev/null 2>&1 & echo $!'"))
    local pid = pidf:read("*l")
    pidf:close()
    -- kill it once two steps are in the journal
    local journal = out .. "/.imgedit-journal.json"
    local t0 = core.now()
    while core.now() - t0 < 20 * H.SLOW do
      local j = H.exists(journal) and cjson.decode(H.read(journal))
      if j and j.steps.s2 then break end
      emu:requests() -- a cheap pause
      os.execute("sleep 0.05")
    end
    assert.is_true(H.ok("kill -9 " .. pid))
    os.execute("sleep 0.2")
    local first = #emu:requests()
    assert.is_true(first >= 2 and first <= 3, "requests before the kill: " .. first)
    local p = io.popen(ENV .. " " .. H.LUA .. " " .. child .. " 2>&1")
    local output = p:read("*a")
    p:close()
    assert.matches("finished", output)
    local prompts = paths_of(emu:requests())
    -- every step was asked for once, except at most the one in flight at the kill
    local count = {}
    for _, s in ipairs(prompts) do count[s] = (count[s] or 0) + 1 end
    assert.are.equal(1, count["step 1"])
    assert.are.equal(1, count["step 2"])
    for i = 3, 5 do assert.is_true(count["step " .. i] == 1 or (i == 3 and count["step 3"] == 2)) end
    assert.is_true(#prompts <= 6)
  end)
end)
