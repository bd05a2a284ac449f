-- What the user owns stays theirs: no output replaces an input or a file
-- the run did not make, nothing is written through a planted link, and no
-- name leaves the folder it was given (lua/imgedit/files.lua). Every case
-- counts what reached the service: a refusal comes before anything is paid.
local H = require "helpers"
local core = require "imgedit.core"
local files = require "imgedit.files"
local imgedit = require "imgedit"

describe("what the user owns", function()
  local emu, dir
  H.world(function(e, d) emu, dir = e, d end)
  local n = 0
  local function fresh()
    n = n + 1
    local d = dir .. "/o" .. n
    assert(core.mkdir_p(d))
    return d
  end
  local function link(target, path) assert(H.ok("ln -s '" .. target .. "' '" .. path .. "'")) end

  it("a batch into its own input folder leaves the originals, even with overwrite, and pays nothing", function()
    local shots = fresh()
    local a, b = H.png(32, 32), H.png(24, 24)
    H.write(shots .. "/a.png", a)
    H.write(shots .. "/b.png", b)
    for _, over in ipairs { false, true } do
      local r = assert(imgedit.batch { client = H.client(emu), pictures = { shots }, prompt = "x", dir = shots,
        defaults = H.small(), overwrite = over })
      assert.are.same({ 0, 2 }, { r.totals.done, r.totals.failed })
      assert.matches("an input of this run: an output never replaces an input", r.jobs[1].error.message)
    end
    assert.are.equal(a, H.read(shots .. "/a.png"))
    assert.are.equal(b, H.read(shots .. "/b.png"))
    assert.are.equal(0, #H.api_requests(emu))
  end)

  it("a pipeline step whose output is its input is refused before it is sent, however the path is spelt", function()
    local d = fresh()
    local mine = H.png(32, 32)
    H.write(d .. "/in.png", mine)
    local p = imgedit.pipeline { client = H.client(emu), dir = d, cache = false, quiet = true, overwrite = true }
    local img, err = p:edit("in", { prompt = "x", images = { d .. "/./in.png" }, quality = "low" })
    assert.is_nil(img)
    assert.are.same({ "io", "output" }, { err.kind, err.param })
    assert.matches("an input of this run", err.message)
    -- a hard link is the same file by another name
    local other = fresh()
    assert(H.ok("ln '" .. d .. "/in.png' '" .. other .. "/photo.png'"))
    p = imgedit.pipeline { client = H.client(emu), dir = d, cache = false, quiet = true, overwrite = true }
    img, err = p:edit("in", { prompt = "x", images = { other .. "/photo.png" }, quality = "low" })
    assert.is_nil(img)
    assert.matches("an input of this run", err.message)
    assert.are.equal(mine, H.read(d .. "/in.png"))
    assert.are.equal(0, #H.api_requests(emu))
  end)

  it("a pipeline replaces its own outputs on a re-run, but not a file touched by hand, unless asked", function()
    local d, pic = fresh(), dir .. "/src.png"
    H.write(pic, H.png(32, 32))
    local function run(o)
      local p = imgedit.pipeline { client = H.client(emu), dir = d, cache = false, quiet = true,
        overwrite = o and o.overwrite }
      return p:edit("a", { prompt = "x", images = { pic }, quality = "low", refresh = o and o.refresh })
    end
    assert(run())
    assert(run { refresh = true }) -- its own, unchanged: replaced
    assert.are.equal(2, #H.api_requests(emu))
    H.write(d .. "/a.png", "touched up by hand")
    local img, err = run { refresh = true }
    assert.is_nil(img)
    assert.matches("a.png exists and this run did not make it; pass overwrite = true", err.message)
    assert.are.equal("touched up by hand", H.read(d .. "/a.png"))
    assert.are.equal(2, #H.api_requests(emu))
    assert(run { overwrite = true, refresh = true })
    assert.are.equal(3, #H.api_requests(emu))
  end)

  it("joins a folder given as dir/ without a doubled slash, and knows its own files as a run before recorded them", function()
    assert.are.equal("out/a.png", files.join("out/", "a.png"))
    assert.are.equal("out/a.png", files.join("out//", "a.png"))
    assert.are.equal("out/a.png", files.join("out", "a.png"))
    assert.are.equal("/a.png", files.join("/", "a.png"))
    assert.is_true(files.same("out//a.png", "out/a.png"))
    assert.is_false(files.same("out/a.png", "out/b.png"))
    assert.is_false(files.same(nil, "out/a.png"))
    -- a pipeline given d/: its paths and records have no //
    local d, pic = fresh(), dir .. "/src2.png"
    H.write(pic, H.png(32, 32))
    local function run(refresh)
      local p = imgedit.pipeline { client = H.client(emu), dir = d .. "/", cache = false, quiet = true }
      return p:edit("a", { prompt = "x", images = { pic }, quality = "low", refresh = refresh })
    end
    local img = assert(run())
    assert.are.equal(d .. "/a.png", img.path)
    local cjson = require "cjson"
    local side, journal = cjson.decode(H.read(d .. "/a.json")), cjson.decode(H.read(d .. "/.imgedit-journal.json"))
    assert.are.equal(d .. "/a.png", side.output.file)
    assert.are.equal(d .. "/a.png", journal.steps.a.file)
    -- a folder whose records say d//a.png (a run before this join) is still its own
    side.output.file, journal.steps.a.file = d .. "//a.png", d .. "//a.png"
    H.write(d .. "/a.json", cjson.encode(side))
    H.write(d .. "/.imgedit-journal.json", cjson.encode(journal))
    assert(run(true))
    assert.are.equal(2, #H.api_requests(emu))
  end)

  it("writes nothing through a link planted as an output, a sidecar, a journal, a cache entry or a report", function()
    local outside = dir .. "/outside.txt"
    local function plant(path)
      H.write(outside, "mine")
      link(outside, path)
    end
    -- pipeline: the output and the sidecar are refused (not its own), the
    -- journal is replaced, not followed
    local d, cache = fresh(), fresh()
    plant(d .. "/a.png")
    local p = imgedit.pipeline { client = H.client(emu), dir = d, cache = cache, quiet = true }
    local img, err = p:generate("a", { prompt = "a link", quality = "low" })
    assert.is_nil(img)
    assert.matches("exists and this run did not make it", err.message)
    assert.are.equal(0, #H.api_requests(emu))
    os.remove(d .. "/a.png")
    plant(d .. "/a.json")
    p = imgedit.pipeline { client = H.client(emu), dir = d, cache = cache, quiet = true }
    img, err = p:generate("a", { prompt = "a link", quality = "low" })
    assert.is_nil(img)
    assert.matches("a.json exists", err.message)
    os.remove(d .. "/a.json")
    os.remove(d .. "/a.png")
    link(outside, d .. "/.imgedit-journal.json")
    p = imgedit.pipeline { client = H.client(emu), dir = d, cache = cache, quiet = true }
    img = assert(p:generate("a", { prompt = "a link", quality = "low" }))
    assert.are.equal("mine", H.read(outside))
    assert.is_false(core.stat(d .. "/.imgedit-journal.json", true).link)
    -- with overwrite, a planted link is replaced by the file, never followed
    plant(d .. "/b.png")
    p = imgedit.pipeline { client = H.client(emu), dir = d, cache = cache, quiet = true, overwrite = true }
    assert(p:generate("b", { prompt = "b link", quality = "low" }))
    assert.are.equal("mine", H.read(outside))
    assert.is_false(core.stat(d .. "/b.png", true).link)
    -- a cache entry: replaced, not followed
    local key_dir = cache .. "/" .. img.picture_sha256:sub(1, 2)
    for _, e in ipairs(core.listdir(cache)) do
      if e.dir then
        for _, f in ipairs(core.listdir(cache .. "/" .. e.name)) do
          local path = cache .. "/" .. e.name .. "/" .. f.name
          os.remove(path)
          plant(path)
        end
      end
    end
    p = imgedit.pipeline { client = H.client(emu), dir = fresh(), cache = cache, quiet = true }
    assert(p:generate("a", { prompt = "a link", quality = "low", refresh = true }))
    assert.are.equal("mine", H.read(outside))
    assert.truthy(key_dir)
    -- batch: a journal that is a link stops the batch before anything is sent
    local before = #H.api_requests(emu)
    local b = fresh()
    link(outside, b .. "/.imgedit-batch.jsonl")
    local ok, msg = pcall(imgedit.batch, { client = H.client(emu), jobs = { { name = "j", prompt = "j" } }, dir = b,
      defaults = { quality = "low" } })
    assert.is_false(ok)
    assert.matches("is a link", tostring(msg))
    assert.are.equal("mine", H.read(outside))
    -- its report: replaced, not followed
    os.remove(b .. "/.imgedit-batch.jsonl")
    link(outside, b .. "/batch-report.json")
    local r = assert(imgedit.batch { client = H.client(emu), jobs = { { name = "j", prompt = "j" } }, dir = b,
      defaults = { quality = "low" } })
    assert.are.equal(1, r.totals.done, require("cjson").encode(r.jobs))
    assert.are.equal("mine", H.read(outside))
    assert.is_false(core.stat(b .. "/batch-report.json", true).link)
    assert.are.equal(before + 1, #H.api_requests(emu))
  end)

  it("checks every name once, the same way: steps, branches, batch jobs and the command line", function()
    local bad = { "..", ".", ".hidden", "a/b", "a\\b", "", "x\27]0;t\7", "CON", "nul.png", "lpt1", "ends.", "ends ",
      "a:b", "a*b", string.rep("n", 201) }
    for _, name in ipairs(bad) do
      assert.is_nil(files.check_name(name), name)
    end
    for _, name in ipairs { "a", "step-1", "v_2.final", "café", "with space", "a..b" } do
      assert.are.equal(name, files.check_name(name))
    end
    local d = fresh()
    local p = imgedit.pipeline { client = H.client(emu), dir = d, cache = false, quiet = true }
    for _, name in ipairs { "..", "a/b", ".x", "x\27y" } do
      assert.has_error(function() p:generate(name, { prompt = "x" }) end)
      assert.has_error(function() p:branch(name) end)
    end
    assert.is_nil(core.stat(d .. "/../.imgedit-journal.json"))
    for _, name in ipairs { "../up", "a/b", ".x", "x\27y", "CON" } do
      local r, err = imgedit.batch { client = H.client(emu), jobs = { { name = name, prompt = "x" } }, dir = fresh() }
      assert.is_nil(r)
      assert.matches("bad name", err.message)
    end
    local m = dir .. "/bad.jsonl"
    H.write(m, '{"name": "../../etc/x", "prompt": "x"}\n')
    local out, code = H.sh(H.CHILD .. "IMGEDIT_API_KEY=k IMGEDIT_BASE_URL=" .. emu.url .. " " .. H.LUA
      .. " bin/imgedit batch " .. m .. " -o " .. fresh())
    assert.are_not.equal(0, code)
    assert.matches("bad name '../../etc/x'", out)
    assert.are.equal(0, #H.api_requests(emu))
  end)

  it("imgedit edit never writes its output over an input, even with --force, under any spelling", function()
    local d = fresh()
    local mine = H.png(32, 32)
    H.write(d .. "/a.png", mine)
    local out, code = H.sh(H.CHILD .. "IMGEDIT_API_KEY=k IMGEDIT_BASE_URL=" .. emu.url .. " " .. H.LUA
      .. " bin/imgedit edit -q -p x -i " .. d .. "/a.png -o " .. d .. "/../" .. d:match("[^/]+$") .. "/a.png --force")
    assert.are.equal(3, code)
    assert.matches("an input of this run", out)
    assert.are.equal(mine, H.read(d .. "/a.png"))
    assert.are.equal(0, #H.api_requests(emu))
  end)

  it("folder walks end and stay inside: links to . and to / in a pipeline folder", function()
    local d = fresh()
    local p = imgedit.pipeline { client = H.client(emu), dir = d, cache = false, quiet = true }
    assert(p:generate("g", { prompt = "walk", quality = "low" }))
    link(".", d .. "/loop1")
    link(".", d .. "/loop2")
    link("/", d .. "/root")
    local out, code = H.sh("timeout 60 " .. H.CHILD .. H.LUA .. " bin/imgedit report " .. d)
    assert.are.equal(0, code, out)
    assert.matches("%(1 step%)", out)
    local r = p:report { quiet = true, html = d .. "/sheet.html" }
    assert.are.equal(d .. "/sheet.html", r.html)
    assert.are.equal(1, #require("imgedit.sheet").steps(d))
    -- run --watch: a script that reports on the folder each run, run once
    local script = H.write(d .. "/../watch-walk.lua", string.format([[
      local p = imgedit.pipeline { dir = %q, cache = false, quiet = true }
      assert(p:generate("g", { prompt = "walk", quality = "low" }))
      print("steps=" .. p:report({ quiet = true }).steps)
    ]], d))
    out, code = H.sh("timeout 60 " .. H.CHILD .. H.LUA .. " bin/imgedit run --emulate --watch --runs 1 " .. script
      .. " 2>&1")
    assert.are.equal(0, code, out)
    assert.matches("steps=1", out)
  end)

  it("sends no key in clear text by accident: plain http to another machine is refused unless allowed", function()
    for _, url in ipairs { "http://api.example.invalid/v1", "HTTP://10.0.0.1:8080/v1", "http://u:s3cret@evil.invalid/v1",
      "http://127.0.0.1.evil.invalid/v1" } do
      local ok, msg = pcall(imgedit.new, { base_url = url, api_key = "k" })
      assert.is_false(ok, url)
      assert.matches("plain http to another machine.*allow_http = true", tostring(msg))
      assert.is_nil(tostring(msg):find("s3cret", 1, true))
      assert.is_truthy(imgedit.new { base_url = url, api_key = "k", allow_http = true })
    end
    for _, url in ipairs { "http://127.0.0.1:9/v1", "http://localhost:9/v1", "http://[::1]:9/v1", "https://a.invalid/v1" } do
      assert.is_truthy(imgedit.new { base_url = url, api_key = "k" }, url)
    end
    -- the command line: refused before any lookup, allowed with --allow-http
    local cmd = H.CHILD .. "IMGEDIT_API_KEY=k IMGEDIT_BASE_URL=http://api.example.invalid/v1 " .. H.LUA
      .. " bin/imgedit generate -q -p x -o " .. dir .. "/http.png --timeout 2 --retries 0"
    local out, code = H.sh(cmd)
    assert.are_not.equal(0, code)
    assert.matches("allow%-http", out)
    out = H.sh(cmd .. " --allow-http")
    assert.is_nil(out:find("plain http", 1, true), out)
    -- and a provider that needs an address says so
    local ok, msg = pcall(imgedit.new, { provider = "compatible", api_key = "k" })
    assert.is_false(ok)
    assert.matches("provider 'compatible' needs base_url", tostring(msg))
  end)

  it("untrusted records never crash the tools: lineage and sidecars with fields of the wrong type", function()
    local lineage = require "imgedit.lineage"
    local d = fresh()
    local bad = { v = "1", prompt = {}, model = 3, params = "x", step = {}, parents = 7, mask = {}, request_id = true,
      mask_drift = "a", preserved = 5 }
    H.write(d .. "/bad.png", assert(core.xmp_embed(H.png(8, 8), lineage.packet(bad))))
    local out, code = H.sh(H.CHILD .. H.LUA .. " bin/imgedit inspect " .. d .. "/bad.png")
    assert.are.equal(0, code, out)
    assert.matches("its lineage's mask, mask_drift, model, params, parents, preserved, prompt, request_id, step, v"
      .. " had the wrong type and are left out", out)
    assert.is_nil(out:find("traceback", 1, true))
    assert.are.same({}, imgedit.inspect(d .. "/bad.png").lineage)
    -- a pipeline folder with sidecars gone wrong: skipped or trimmed, named, and the page is written
    local p = imgedit.pipeline { client = H.client(emu), dir = d .. "/run", cache = false, quiet = true }
    assert(p:generate("good", { prompt = "fine", quality = "low" }))
    H.write(d .. "/run/s.json", '{"step":"s","output":5,"inputs":3,"usage":"x","started":{},"order":"z"}')
    H.write(d .. "/run/t.json", '{"step":"t","output":{"file":"t.png","width":"w"},"inputs":[5,{"sha256":7}],'
      .. '"usage":{"total_tokens":"a"},"cost":{"usd":"c"},"seconds":"q","partials":7,"prompt":{}}')
    out, code = H.sh(H.CHILD .. H.LUA .. " bin/imgedit report " .. d .. "/run")
    assert.are.equal(0, code, out)
    assert.matches("s.json: not a step's record", out)
    assert.matches("t.json: cost, inputs, partials, prompt, seconds had the wrong type, left out", out)
    assert.matches("%(2 steps%)", out)
    assert.is_nil(out:find("traceback", 1, true))
  end)

  it("untrusted records never crash the tools: batch journals and manifests with fields of the wrong type", function()
    local d = fresh()
    local pics = d .. "/in"
    assert(core.mkdir_p(pics))
    H.write(pics .. "/a.png", H.png(16, 16))
    H.write(pics .. "/b.png", H.png(16, 16))
    local out = d .. "/out"
    assert(core.mkdir_p(out))
    -- a journal another shard (or a hand) left: every field of the wrong type
    H.write(out .. "/.imgedit-batch.2-of-2.jsonl", table.concat({
      '{"event":"done","name":"a","key":5,"file":{},"files":"x","bytes":"b","sha256":[],"error":3,"at":"2020"}',
      '{"event":"failed","name":"b","key":"k","error":{"kind":7,"message":{},"maybe_billed":"yes"},"url":9}',
      '{"event":{},"name":"a"}', '[1,2]', '{"event":"sent","name":', "" }, "\n"))
    local cmd = H.CHILD .. H.LUA .. " bin/imgedit batch --emulate --prompt x " .. pics .. " -o " .. out
    local text, code = H.sh(cmd .. " 2>&1")
    assert.are.equal(0, code, text)
    assert.matches("2%-of%-2%.jsonl:1: fields bytes, error, file, files, key, sha256 of the wrong type, left out", text)
    assert.matches("2%-of%-2%.jsonl:2: fields url, error.kind, error.maybe_billed, error.message of the wrong type", text)
    assert.matches("2%-of%-2%.jsonl:3: a line without a job's name and event, skipped", text)
    assert.matches("2 done", text, 1, true)
    assert.matches("0 failed", text, 1, true)
    assert.is_nil(text:find("traceback", 1, true))
    -- manifests: each field of the wrong type refused with its line and field, exit code 3, nothing sent
    emu:clear()
    for _, case in ipairs {
      { '{"prompt":"x","images":[1]}', "m.jsonl:1: images%[1%] must be a path, not number" },
      { '{"prompt":"x","images":["a.png"],"mask":{}}', "m.jsonl:1: mask must be a path, not table" },
      { '{"prompt":"x","images":{"k":"a.png"}}', "m.jsonl:1: images must be a list" },
      { '{"prompt":"x","images":[["a.png"]]}', "m.jsonl:1: images%[1%] must be a path, not table" },
      { '{"prompt":"x","images":["a.png"],"n":[1]}', "m.jsonl:1: field 'n' must be a string, a number or a boolean" },
      { '{"prompt":{},"images":["a.png"]}', "m.jsonl:1: no prompt" },
      { '{"prompt":"x","images":["a.png"],"name":5}', "m.jsonl:1: bad name number" },
    } do
      H.write(pics .. "/m.jsonl", case[1] .. "\n")
      text, code = H.sh(H.CHILD .. H.LUA .. " bin/imgedit batch --emulate " .. pics .. "/m.jsonl -o " .. d .. "/m 2>&1")
      assert.are.equal(3, code, case[1] .. ": " .. text)
      assert.matches(case[2], text)
      assert.is_nil(text:find("traceback", 1, true))
    end
    -- a JSON null is a field not given
    H.write(pics .. "/m.jsonl", '{"prompt":"x","images":["a.png"],"mask":null,"user":null}\n')
    text, code = H.sh(H.CHILD .. H.LUA .. " bin/imgedit batch --emulate " .. pics .. "/m.jsonl -o " .. d .. "/m 2>&1")
    assert.are.equal(0, code, text)
    assert.matches("1 done", text)
  end)
end)
