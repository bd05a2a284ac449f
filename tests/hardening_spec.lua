-- Hostile servers, bad input and secrets: each case ends in a clear error of
-- the right kind, never a crash, and the key never shows.
local H = require "helpers"
local sse_hook = require "imgedit_test.sse"
local core = require "imgedit.core"
local cjson = require "cjson"
local imgedit = require "imgedit"

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

describe("hostile servers", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(64, 64, function(x, y) return (x + y) % 256 end))
  end)

  local function gen(fault, opts)
    if fault then emu:inject(fault) end
    local o = { max_retries = 0 }
    for k, v in pairs(opts or {}) do o[k] = v end
    return H.client(emu, o):generate { prompt = "x", size = "1024x1024" }
  end

  local function edit(fault)
    if fault then emu:inject(fault) end
    return H.client(emu, { max_retries = 0 }):edit { prompt = "x", images = { pic } }
  end

  it("resets the connection at every phase: each a clear error of the right kind", function()
    local cases = {
      { "before the request is read", { drop_early = true }, "network" },
      { "in the middle of the upload", { drop_upload = 300 }, "network" },
      { "after the upload, before an answer", { drop = true }, "network" },
      { "after the status line", { truncate = 0 }, "protocol" },
      { "in the middle of the body", { truncate = 100 }, "protocol" },
    }
    for _, case in ipairs(cases) do
      emu:clear()
      local img, err = edit(case[2])
      assert.is_nil(img, case[1])
      assert.are.equal(case[3], err.kind, case[1] .. ": " .. tostring(err))
      assert.is_string(err.message)
      assert.are.equal(1, #emu:requests(), case[1])
    end
    -- and a reset that is retried recovers: the upload is larger than the
    -- sockets' buffers, so that the client sees it cut short
    local f = assert(io.open("/dev/urandom", "rb"))
    local big = H.write(dir .. "/big.png", core.encode(f:read(1024 * 1024 * 4), 1024, 1024, "png"))
    f:close()
    emu:clear()
    emu:inject { drop_upload = 1000 }
    assert(H.client(emu, { retry_base = 0.01 }):edit { prompt = "x", images = { big } })
    assert.are.equal(2, #emu:requests())
  end)

  it("refuses answers of the wrong shape as protocol errors", function()
    for _, body in ipairs {
      "{}", '{"data":[]}', '{"data":"x"}', '{"data":{"b64_json":"aGVsbG8="}}', '{"data":[5]}',
      '{"data":[{"b64_json":["a"]}]}', '{"data":[{"url":7}]}', "[]", "null", '"just a string"',
      '{"data":[{"b64_json":"' .. core.b64encode("GIF89a....") .. '"}]}',
    } do
      local img, err = gen { status = 200, body = body }
      assert.is_nil(img, body)
      assert.are.equal("protocol", err.kind, body)
    end
  end)

  it("refuses HTML where JSON should be, whatever the status", function()
    local _, err = gen { status = 200, content_type = "text/html", body = "<html><body>Welcome!</body></html>" }
    assert.are.equal("protocol", err.kind)
    assert.matches("not JSON", err.message)
    _, err = gen { status = 503, html = true }
    assert.are.equal("server", err.kind)
    assert.matches("HTTP 503", err.message)
  end)

  it("refuses a header flood", function()
    local _, err = gen { header_flood = 1000 }
    assert.are.equal("protocol", err.kind)
    assert.matches("header", err.message)
  end)

  it("caps the answer size (default 128 MiB, as documented)", function()
    assert.are.equal(128 * 1024 * 1024, H.client(emu).max_response_bytes)
    local _, err = gen({ oversize = 300000 }, { max_response_bytes = 200000 })
    assert.are.equal("protocol", err.kind)
  end)

  it("refuses url answers and redirects outside http(s), and never sends the key to another host", function()
    for _, url in ipairs { "file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/x", "dict://127.0.0.1/x",
      emu.cdn_url .. "/redirect/" .. hex("file:///etc/passwd"),
      emu.cdn_url .. "/redirect/" .. hex(emu.cdn_url .. "/redirect/" .. hex("ftp://127.0.0.1/x")) } do
      emu:clear()
      emu:inject { url = url }
      local img, err = H.client(emu, { model = "gpt-image-2-all", max_retries = 0 }):generate { prompt = "x" }
      assert.is_nil(img, url)
      assert.are.equal("protocol", err.kind, url)
    end
    -- a url on another host name: fetched, without Authorization
    emu:clear()
    local first = assert(H.client(emu, { model = "gpt-image-2-all" }):generate { prompt = "y" })
    emu:clear()
    emu:inject { url = first.url:gsub("127%.0%.0%.1", "localhost") }
    local img = assert(H.client(emu, { model = "gpt-image-2-all" }):generate { prompt = "y" })
    assert.are.equal(first.sha256, img.sha256)
    assert.is_false(emu:requests()[2].authorization)
  end)

  it("stops a body that trickles slower than the idle limit", function()
    local _, err = gen({ stall = 3, stall_at = 10 }, { idle_timeout = 0.4 })
    assert.are.equal("timeout", err.kind)
  end)

  it("refuses an answer whose header lies about its size, and never decodes a large one", function()
    local liar = "\137PNG\r\n\26\n" .. H.png_chunk("IHDR", H.pack(">I4I4BBBBB", 60000, 60000, 8, 6, 0, 0, 0))
      .. H.png_chunk("IDAT", "x") .. H.png_chunk("IEND", "")
    local _, perr = gen { status = 200, body = '{"data":[{"b64_json":"' .. core.b64encode(liar) .. '"}]}' }
    assert.are.equal("protocol", perr.kind)
    assert.matches("cannot hold them", perr.message)
    local bomb = H.png_bomb(9000, 9000)
    local img = assert(gen { status = 200, body = '{"data":[{"b64_json":"' .. core.b64encode(bomb) .. '"}]}' })
    assert.are.same({ 9000, 9000 }, { img.width, img.height })
    local m, err = imgedit.mask.from_alpha(img)
    assert.is_nil(m)
    assert.matches("more than", err.message)
  end)
end)

describe("bad input", function()
  local emu, dir, pic, c
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(64, 64))
    c = H.client(emu)
  end)

  it("raises a clear Lua error for wrong types in every public function", function()
    local img = assert(imgedit.open(pic))
    local p = imgedit.pipeline { client = c, dir = dir .. "/pl", cache = false, quiet = true }
    local job = c:submit("generate", { prompt = "x" })
    job:wait()
    local calls = {
      function() imgedit.new(1) end, function() imgedit.new { api_key = 5 } end,
      function() imgedit.open(1) end, function() imgedit.inspect(nil) end, function() imgedit.from_bytes({}) end,
      function() c:edit(1) end, function() c:generate("x") end, function() c:submit(1, {}) end,
      function() c:submit("edit", { prompt = {}, images = { pic } }) end, function() c:poll("soon") end,
      function() c:map(1) end, function() c:edit { prompt = "x", images = { true } } end,
      function() c:edit { prompt = "x", images = { pic }, on_progress = 5 } end,
      function() img:save(1) end, function() imgedit.mask.rect(1) end, function() imgedit.mask.ellipse("x") end,
      function() imgedit.mask.compose(1) end, function() imgedit.mask.from_gray(1) end,
      function() imgedit.mask.from_alpha(pic, 5) end, function() imgedit.fit(pic, 5) end,
      function() imgedit.fit(pic, { max_edge = -1 }) end, function() imgedit.pipeline(1) end,
      function() imgedit.pipeline { client = 5 } end, function() p:edit(1, {}) end, function() p:fan_out("x", 1) end,
      function() p:iterate("y", img, 1) end, function() p:branch(1) end, function() p:generate("z", 5) end,
      function() core.inspect() end, function() core.decode({}) end, function() core.encode("x", 1, 1, "png") end,
      function() core.encode(string.rep("x", 4), 1, 1, "bmp") end, function() core.resize("x", 0, 0, 1, 1) end,
      function() core.mask_shapes(0, 5, {}) end, function() core.mask_from_gray("abcd", 1, 1, { threshold = 9 }) end,
      function() core.sha256(nil) end, function() core.b64decode({}) end, function() core.write_atomic(1) end,
      function() core.multi():start(5) end, function() core.multi():start { url = {} } end,
      function() sse_hook.parse(5) end, function() require("imgedit.emulator").start("x") end,
      function() emu:inject(1) end, function() emu:configure(1) end,
    }
    for i, fn in ipairs(calls) do
      local ok, msg = pcall(fn)
      assert.is_false(ok, "call " .. i .. " did not raise")
      assert.is_string(msg, "call " .. i)
    end
  end)

  it("uses an object after close only with a clear error", function()
    local m = core.multi()
    m:close()
    m:close() -- twice is harmless
    assert.matches("closed", tostring(m))
    assert.has_error(function() m:perform(0) end)
    local e = H.emulator()
    e:stop()
    e:stop()
    assert.matches("stopped", tostring(e))
    assert.has_error(function() e:requests() end)
  end)

  it("handles PNGs with CRC errors and truncated chunks without crashing", function()
    local png = H.png(32, 32)
    local bad = png:sub(1, 29) .. "\0\0\0\0" .. png:sub(34) -- IHDR's CRC zeroed
    local path = H.write(dir .. "/crc.png", bad)
    local info = assert(imgedit.inspect(path)) -- the header is readable; CRCs are the service's to judge
    assert.are.equal(32, info.width)
    local img, err = c:edit { prompt = "x", images = { path } }
    assert.is_true(img ~= nil or err ~= nil)
    local _, terr = c:edit { prompt = "x", images = { H.write(dir .. "/cut.png", png:sub(1, #png - 20)) } }
    assert.are.equal("invalid_request", terr.kind)
  end)

  it("refuses special files without blocking, and a directory", function()
    local fifo = dir .. "/fifo.png"
    assert(H.ok("mkfifo '" .. fifo .. "'"))
    local _, err = c:edit { prompt = "x", images = { fifo } }
    assert.are.equal("invalid_request", err.kind)
    assert.matches("not a regular file", err.message)
    _, err = c:edit { prompt = "x", images = { dir } }
    assert.matches("directory", err.message)
    assert.are.equal(0, #emu:requests())
  end)

  it("reports a file deleted between the check and the upload, and sends nothing for it", function()
    -- One slot, held by a slow edit: the doomed one is checked at submit and
    -- waits its turn (a transfer starts at once on the network thread, so
    -- with a free slot its upload would race the removal).
    emu:configure { latency = 0.5 }
    local one = H.client(emu, { max_concurrency = 1, max_retries = 0 })
    local first = one:submit("edit", { prompt = "x", images = { pic } })
    local doomed = H.write(dir .. "/doomed.png", H.png(32, 32))
    local job = one:submit("edit", { prompt = "x", images = { doomed } })
    assert.are.equal("queued", job.state)
    os.remove(doomed)
    local img, err = job:wait() -- an error of the job's, not one raised from poll
    assert.is_nil(img)
    assert.are.equal("io", err.kind)
    assert.matches("doomed.png could not be read when its upload was to start", err.message)
    assert.truthy(first:wait())
    assert.are.equal(1, #emu:requests()) -- the first edit only
    one:close()
  end)

  it("sends prompts with NUL bytes, invalid UTF-8, line breaks and megabytes intact", function()
    -- megabytes go to a model with no prompt limit (gpt-image-2 takes 32,000 characters)
    local all = H.all_client(emu)
    for _, prompt in ipairs { "before\0after", "\255\254 bad utf-8 \195", "line one\r\nline two", string.rep("long ", 6400),
      string.rep("long ", 400000) } do
      emu:clear()
      local img = assert((#prompt > 32000 and all or c):edit { prompt = prompt, images = { pic } })
      assert.truthy(img)
      assert.are.equal(prompt, emu:requests()[1].fields.prompt)
    end
    emu:clear()
    local img = assert(c:generate { prompt = "nul\0inside", size = "1024x1024" })
    assert.truthy(img)
    assert.are.equal("nul\0inside", emu:requests()[1].json.prompt)
  end)

  it("keeps field values with CR/LF inside their part, never in a header", function()
    local v = "value\r\nX-Injected: yes\r\n\r\n--boundary"
    assert(c:edit { prompt = "x", images = { pic }, user = v })
    local r = emu:requests()[1]
    assert.are.equal(v, r.fields.user)
    assert.are.equal(1, #r.files)
    local _, err = c:edit { prompt = "x", images = { pic }, size = "1024x1024\r\nX: y" }
    assert.are.equal("size", err.param)
  end)
end)

describe("secrets", function()
  it("never shows the key in anything the library prints, returns or writes", function()
    local key = "sk-SECRET-" .. string.rep("7", 24)
    local emu = H.emulator { key = key }
    local dir = H.tmpdir()
    local pic = H.write(dir .. "/p.png", H.png(32, 32))
    local seen = {}
    local function keep(v) seen[#seen + 1] = type(v) == "table" and cjson.encode(v) or tostring(v) end
    local c = imgedit.new { base_url = emu.url, api_key = key, retry_base = 0.01,
      on_retry = function(info) keep(tostring(info.error)); keep(info.kind) end,
      on_progress = function(p) keep(p) end }
    keep(tostring(c))
    -- errors, including a service that echoes the key back
    emu:inject({ status = 500, message = "boom " .. key }, { status = 401, message = "bad key " .. key })
    local _, err = c:generate { prompt = "x" }
    keep(tostring(err)); keep(err.message)
    for k, v in pairs(err) do keep(k); keep(v) end
    -- results, pipeline files, request records
    local p = imgedit.pipeline { client = c, dir = dir .. "/out", cache = dir .. "/cache", quiet = true }
    local img = assert(p:edit("step", { prompt = "x", images = { pic } }))
    for k, v in pairs(img) do if k ~= "bytes" then keep(k); keep(v) end end
    keep(p:report { quiet = true })
    keep(cjson.encode(emu:requests()))
    local files = io.popen("find '" .. dir .. "' -type f -name '*.json'")
    for f in files:lines() do keep(H.read(f)) end
    files:close()
    -- the command line, verbose, with a retry and a failure
    emu:inject { status = 503, message = "again " .. key }
    local out = io.popen("env LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;' IMGEDIT_API_KEY=" .. key
      .. " IMGEDIT_BASE_URL=" .. emu.url .. " " .. H.LUA .. " bin/imgedit generate -p x --verbose -o " .. dir .. "/cli.png 2>&1;"
      .. " IMGEDIT_API_KEY=" .. key .. "x IMGEDIT_BASE_URL=" .. emu.url .. " " .. H.LUA .. " bin/imgedit generate -p x -o "
      .. dir .. "/cli2.png 2>&1")
    keep(out:read("*a"))
    out:close()
    emu:stop()
    H.rmtree(dir)
    assert.is_true(#seen > 20)
    for i, s in ipairs(seen) do
      assert.is_nil(s:find(key, 1, true), "the key appears in item " .. i .. ": " .. s:sub(1, 200))
    end
  end)
end)
