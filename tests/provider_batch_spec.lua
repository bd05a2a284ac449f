-- The provider's route of a batch (imgedit.batch{route = "provider"}):
-- Batch API lines at half price, pictures uploaded once, resumable after a
-- kill -9 at every step, and every line the service was given accounted
-- for. Against the emulator over loopback; each test counts what it
-- received, billed and kept.
local H = require "helpers"
local cjson = require "cjson"
local imgedit = require "imgedit"
local lineage = require "imgedit.lineage"

local SMALL = { size = "64x64", response_format = "b64_json" }
-- The route needs a service with the Files and Batch APIs and the JSON edit
-- body: the emulator plays a compatible one (the seeds' gateway has
-- neither), whose model's price the client is told.
local PRICES = { ["gpt-image-2-all"] = { per_image = 0.03 } }

describe("imgedit.batch{route = 'provider'}", function()
  local emu, dir, pics
  H.world(function(e, d)
    emu, dir = e, d
    pics = {}
    for i = 1, 4 do
      pics[i] = d .. "/p" .. i .. ".png"
      H.write(pics[i], H.png(16 + i, 16))
    end
  end, nil, { provider = "compatible" })
  local function client(opts)
    local o = { prices = PRICES }
    for k, v in pairs(opts or {}) do o[k] = v end
    return H.all_client(emu, o)
  end
  before_each(function() emu:configure { batch_seconds = 0.3, batch_max_lines = 50000, time_offset = 0 } end)

  local n = 0
  local function fresh(what)
    n = n + 1
    return dir .. "/" .. what .. n
  end

  -- manifest{{name, prompt, picture index}, ...} -> its path
  local function manifest(jobs)
    local out = {}
    for _, j in ipairs(jobs) do
      out[#out + 1] = cjson.encode { name = j[1], prompt = j[2], images = j[3] and { pics[j[3]] } or nil }
    end
    return H.write(fresh("m") .. ".jsonl", table.concat(out, "\n") .. "\n")
  end
  local function six()
    local jobs = {}
    for i = 1, 6 do jobs[i] = { "j" .. i, "edit number " .. i, (i - 1) % 3 + 1 } end
    return manifest(jobs)
  end

  local function run(m, o, opts)
    local t = { client = client(), manifest = m, dir = o, defaults = SMALL, route = "provider",
      poll_interval = 0.05, uploads = dir .. "/uploads-" .. n .. ".jsonl" }
    for k, v in pairs(opts or {}) do t[k] = v end
    return assert(imgedit.batch(t))
  end

  local function billed() return emu:stats().batch_lines_billed end
  -- What the emulator got on its API listener: by "METHOD path" and, for files, by purpose.
  local function calls()
    local by = {}
    for _, r in ipairs(H.api_requests(emu)) do
      local k = r.method .. " " .. r.path:gsub("/[%w_%-]+%-[%w]+", "/{id}")
      by[k] = (by[k] or 0) + 1
      if r.path == "/v1/files" and r.fields and r.fields.purpose then
        by[r.fields.purpose] = (by[r.fields.purpose] or 0) + 1
      end
    end
    return by
  end
  local function status_of(r)
    local by = {}
    for _, j in ipairs(r.jobs) do by[j.name] = j end
    return by
  end

  it("pays each new line once at half price; the cached job costs nothing and the invalid one is not sent", function()
    local cache = fresh("cache")
    local direct = assert(imgedit.batch { client = client(), dir = fresh("direct"), cache = cache,
      defaults = SMALL, jobs = { { name = "a", prompt = "edit number 1", images = { pics[1] } } } })
    local full = direct.jobs[1].cost
    assert.is_true(full > 0)
    H.write(dir .. "/broken.png", "not a picture at all")
    local m = H.write(fresh("m") .. ".jsonl", table.concat({
      cjson.encode { name = "a", prompt = "edit number 1", images = { pics[1] } },
      cjson.encode { name = "b", prompt = "edit number 2", images = { pics[1] } },
      cjson.encode { name = "c", prompt = "edit number 3", images = { pics[2] } },
      cjson.encode { name = "bad", prompt = "edit number 4", images = { dir .. "/broken.png" } },
    }, "\n") .. "\n")
    emu:clear()
    local before, batches = billed(), #emu:batches()
    local o = fresh("out")
    local r = run(m, o, { cache = cache })
    assert.are.same({ jobs = 4, done = 3, failed = 1, not_run = 0 }, r.totals)
    assert.are.equal(2, billed() - before, "b and c, once each")
    assert.are.equal(batches + 1, #emu:batches())
    local c = calls()
    assert.is_nil(c["POST /v1/images/edits"], "nothing went the direct route")
    assert.are.equal(2, c.vision, "two distinct pictures uploaded")
    local s = status_of(r)
    assert.are.equal("invalid_request", s.bad.error.kind)
    assert.are.near(full / 2, s.b.cost, 1e-9)
    assert.are.near(r.this_run.usd, s.b.cost + s.c.cost, 1e-9)
    assert.are.equal("edit number 2", lineage.read(H.read(o .. "/b.png")).prompt)
    assert.truthy(H.exists(o .. "/a.png"), "the cached picture is written too")
    -- Everything the run put on the service is deleted once the pictures are written.
    assert.are.same({}, emu:files())
    assert.are.equal(4, calls()["DELETE /v1/files/{id}"], "2 pictures, the input and the output")
    for _, f in ipairs(H.ls(o)) do assert.is_nil(f:match("^%.imgedit%-route%-"), f) end
    local report = cjson.decode(H.read(o .. "/batch-report.json"))
    assert.are.equal(3, report.totals.done)
    assert.matches("bad", H.read(o .. "/failed.jsonl"))
  end)

  it("uploads a picture once across two batches and two runs, and keeps the files when asked", function()
    local up = dir .. "/shared-uploads.jsonl"
    emu:clear()
    local before, batches = billed(), #emu:batches()
    local r = run(six(), fresh("out"), { max_lines = 4, keep_files = true, uploads = up })
    assert.are.equal(6, r.totals.done)
    assert.are.equal(batches + 2, #emu:batches(), "6 lines at 4 a batch")
    assert.are.equal(3, calls().vision)
    assert.are.equal(3, r.route.uploads)
    assert.are.equal(6, billed() - before)
    assert.is_nil(calls()["DELETE /v1/files/{id}"])
    -- Another run, other prompts, the same pictures: nothing uploaded again.
    local jobs = {}
    for i = 1, 3 do jobs[i] = { "k" .. i, "another edit " .. i, i } end
    local r2 = run(manifest(jobs), fresh("out"), { uploads = up })
    assert.are.equal(3, r2.totals.done)
    assert.are.equal(3, calls().vision)
    assert.are.equal(0, r2.route.uploads)
    -- The first run kept them, so they stay although the second did not.
    local left = {}
    for _, f in ipairs(emu:files()) do left[f.purpose] = (left[f.purpose] or 0) + 1 end
    assert.are.equal(3, left.vision)
    -- A service that lost them (clear() forgets the emulator's files):
    -- the remembered ids are checked, found gone, and uploaded again.
    emu:clear()
    local r3 = run(manifest(jobs), fresh("out"), { uploads = up })
    assert.are.equal(3, r3.totals.done)
    assert.are.equal(3, calls().vision)
    assert.are.equal(3, calls()["GET /v1/files/{id}"], "one check each")
  end)

  it("gives the same picture for the same request by JSON body, form, and batch line", function()
    local c = client()
    local a = assert(c:edit { prompt = "same picture", images = { pics[2] }, size = "64x64", body = "multipart" })
    local b = assert(c:edit { prompt = "same picture", images = { pics[2] }, size = "64x64", body = "json" })
    assert.are.equal(a.picture_sha256, b.picture_sha256)
    local reqs = H.api_requests(emu)
    assert.matches("multipart", reqs[#reqs - 1].content_type or reqs[#reqs - 1].headers["content-type"])
    local m = H.write(fresh("m") .. ".jsonl", cjson.encode { name = "s", prompt = "same picture", images = { pics[2] } }
      .. "\n")
    local o = fresh("out")
    assert.are.equal(1, run(m, o).totals.done)
    assert.are.equal(a.picture_sha256, lineage.sha256(H.read(o .. "/s.png")))
  end)

  it("splits at the service's limit when told it, and a batch the service refuses fails its lines, unpaid", function()
    emu:configure { batch_max_lines = 3 }
    local before, batches = billed(), #emu:batches()
    local o = fresh("out")
    local r = run(six(), o)
    assert.are.same({ jobs = 6, done = 0, failed = 6, not_run = 0 }, r.totals)
    assert.are.equal(0, billed() - before)
    for _, j in ipairs(r.jobs) do
      assert.are.equal("invalid_request", j.error.kind)
      assert.matches("refused the batch", j.error.message)
      assert.is_falsy(j.error.maybe_billed)
    end
    -- Told the limit, a re-run splits and sends them again: nothing was paid.
    local r2 = run(six(), o, { max_lines = 3 })
    assert.are.equal(6, r2.totals.done)
    assert.are.equal(batches + 3, #emu:batches())
    assert.are.equal(6, billed() - before)
  end)

  it("keeps what an expired batch finished and lists the rest, which a re-run sends", function()
    emu:inject { batch = "expire", finished = 2 }
    local before = billed()
    local o = fresh("out")
    local m = six()
    local r = run(m, o)
    assert.are.same({ jobs = 6, done = 2, failed = 4, not_run = 0 }, r.totals)
    assert.are.equal(2, billed() - before)
    local failed = 0
    for _, j in ipairs(r.jobs) do
      if j.status == "failed" then
        failed = failed + 1
        assert.are.equal("timeout", j.error.kind)
        assert.matches("batch_expired", j.error.message)
      end
    end
    assert.are.equal(4, failed)
    local fm = {}
    for l in H.read(o .. "/failed.jsonl"):gmatch("[^\n]+") do fm[#fm + 1] = l end
    assert.are.equal(4, #fm)
    local r2 = run(m, o)
    assert.are.equal(6, r2.totals.done)
    assert.are.equal(6, billed() - before, "the two finished are not paid again")
  end)

  it("reports a line that neither file names as failed, maybe billed, and does not send it again", function()
    emu:inject { batch = "drop", lines = 1 }
    local before, batches = billed(), #emu:batches()
    local o = fresh("out")
    local m = six()
    local r = run(m, o)
    assert.are.same({ jobs = 6, done = 5, failed = 1, not_run = 0 }, r.totals)
    local lost
    for _, j in ipairs(r.jobs) do if j.status == "failed" then lost = j end end
    assert.are.equal("protocol", lost.error.kind)
    assert.is_true(lost.error.maybe_billed)
    assert.matches("neither", lost.error.message)
    local r2 = run(m, o)
    assert.are.equal(batches + 1, #emu:batches(), "the re-run creates no batch")
    assert.are.equal(1, r2.this_run.not_sent_maybe_billed)
    assert.are.equal(6, billed() - before, "the emulator billed the dropped line too")
  end)

  it("gives up a batch the service does not know, failing its lines as maybe billed", function()
    local o = fresh("out")
    local m = six()
    local r = run(m, o, { detach = true })
    assert.are.equal("detached", r.stopped)
    local other = H.emulator { batch_seconds = 0.3, provider = "compatible" }
    local r2 = assert(imgedit.batch { client = H.all_client(other), manifest = m, dir = o, defaults = SMALL,
      route = "provider", poll_interval = 0.05, uploads = dir .. "/other-uploads.jsonl" })
    other:stop()
    assert.are.same({ jobs = 6, done = 0, failed = 6, not_run = 0 }, r2.totals)
    for _, j in ipairs(r2.jobs) do
      assert.are.equal("not_found", j.error.kind)
      assert.is_true(j.error.maybe_billed)
    end
    assert.are.same({}, r2.route.pending)
  end)

  it("keeps a budget at the batch price, and a dry run sends nothing", function()
    local m = six()
    local d = run(m, fresh("out"), { dry_run = true })
    assert.is_true(d.dry_run)
    assert.are.same({ 6, 3, 1 }, { d.lines, d.uploads, d.batches })
    assert.are.near(d.usd_direct / 2, d.usd, 1e-12)
    assert.are.equal(0, #H.api_requests(emu))
    -- Room for 2.5 lines at the batch price (1.25 at the direct one).
    local r = run(m, fresh("out"), { budget = { usd = d.usd / 6 * 2.5 } })
    assert.are.same({ jobs = 6, done = 2, failed = 0, not_run = 4 }, r.totals)
    assert.matches("^budget", r.stopped)
    assert.are.equal(2, emu:stats().batch_lines_billed)
  end)

  it("leaves to the provider's route the jobs its batches hold: the direct route does not pay them twice", function()
    local m, o = six(), fresh("out")
    assert.are.equal("detached", run(m, o, { detach = true }).stopped)
    local d = assert(imgedit.batch { client = client(), manifest = m, dir = o, defaults = SMALL })
    assert.are.same({ jobs = 6, done = 0, failed = 0, not_run = 6 }, d.totals)
    assert.matches("provider batches", d.stopped)
    assert.is_nil(calls()["POST /v1/images/edits"])
    local r = run(m, o)
    assert.are.equal(6, r.totals.done)
    assert.are.equal(6, emu:stats().batch_lines_billed)
  end)

  it("writes a job changed while its batch ran from its new line, not the old one", function()
    local jobs = {}
    for i = 1, 3 do jobs[i] = { "j" .. i, "edit number " .. i, i } end
    local m, o = manifest(jobs), fresh("out")
    assert.are.equal("detached", run(m, o, { detach = true }).stopped)
    H.write(m, table.concat({
      cjson.encode { name = "j1", prompt = "a new prompt", images = { pics[1] } },
      cjson.encode { name = "j2", prompt = "edit number 2", images = { pics[2] } },
      cjson.encode { name = "j3", prompt = "edit number 3", images = { pics[3] } },
    }, "\n") .. "\n")
    local r = run(m, o)
    assert.are.equal(3, r.totals.done)
    assert.are.equal(1, r.route.superseded)
    assert.are.equal(1, r.route.lines, "only the changed job is a new line")
    assert.are.equal("a new prompt", lineage.read(H.read(o .. "/j1.png")).prompt)
    assert.are.equal(2, #emu:batches())
  end)

  it("asks for the picture in the answer, and refuses a url answer before sending", function()
    local m, o = six(), fresh("out")
    -- gpt-image-2-all answers with a url unless told: the route tells it.
    local r = run(m, o, { defaults = { size = "64x64" } })
    assert.are.equal(6, r.totals.done)
    local bad = run(six(), fresh("out"), { defaults = { size = "64x64", response_format = "url" } })
    assert.are.same({ jobs = 6, done = 0, failed = 6, not_run = 0 }, bad.totals)
    assert.matches("response_format", bad.jobs[1].error.message)
    assert.are.equal(6, emu:stats().batch_lines_billed, "the refused ones were not sent")
  end)

  it("collects, when detached again, the batches that have ended; the report file names the route", function()
    local m, o = six(), fresh("out")
    assert.are.equal("detached", run(m, o, { detach = true }).stopped)
    os.execute("sleep " .. 0.5 * H.SLOW)
    local r = run(m, o, { detach = true })
    assert.is_nil(r.stopped)
    assert.are.equal(6, r.totals.done)
    local file = cjson.decode(H.read(o .. "/batch-report.json"))
    assert.are.equal(0, file.route.lines)
    assert.are.same({}, file.route.pending)
    assert.matches("^batch_", file.jobs[1].batch)
  end)

  it("refuses options that do not go together, and polls no faster than asked", function()
    assert.has_error(function() run(six(), fresh("out"), { detach = true, cancel = true }) end,
      "bad option 'cancel' (it goes without 'detach')")
    assert.has_error(function() run(six(), fresh("out"), { poll_interval = 0 }) end,
      "bad option 'poll_interval' (seconds > 0 expected)")
    assert.has_error(function()
      imgedit.batch { client = H.client(emu, { provider = "azure" }), jobs = {}, route = "provider", dir = fresh("o") }
    end)
    assert.has_error(function()
      imgedit.batch { client = H.client(emu, { provider = "apiyi" }), jobs = {}, route = "provider", dir = fresh("o") }
    end)
    assert.are.equal(0, #H.api_requests(emu))
  end)

  it("keeps to the seeds' gateway's multipart edits: its JSON body refused here and by its emulator", function()
    local c = H.client(emu, { provider = "apiyi", model = "gpt-image-2-all" })
    local img, err = c:edit { prompt = "x", images = { pics[1] }, size = "64x64", body = "json" }
    assert.is_nil(img)
    assert.are.equal("invalid_request", err.kind)
    assert.matches("multipart", err.message)
    img, err = c:edit { prompt = "x", images = { { file_id = "file-abc" } }, size = "64x64" }
    assert.is_nil(img)
    assert.matches("multipart", err.message)
    assert.are.equal(0, #H.api_requests(emu))
    local gw = H.emulator {}
    local code = H.sh("curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer " .. gw.key .. "' -H"
      .. " 'Content-Type: application/json' -d '{\"model\":\"gpt-image-2-all\",\"prompt\":\"x\",\"images\":"
      .. "[{\"file_id\":\"file-abc\"}]}' " .. gw.url .. "/images/edits")
    local files = H.sh("curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer " .. gw.key .. "' "
      .. gw.url .. "/files")
    gw:stop()
    assert.are.equal("400", code)
    assert.are.equal("404", files)
  end)

  describe("after kill -9", function()
    local script
    lazy_setup(function()
      script = H.write(dir .. "/killed.lua", [[
local imgedit = require "imgedit"
local at = os.getenv("KILL_AT")
local c = imgedit.new { base_url = os.getenv("EMU_URL"), api_key = os.getenv("EMU_KEY"), provider = "compatible",
  model = "gpt-image-2-all" }
local r = assert(imgedit.batch { client = c, manifest = arg[1], dir = arg[2], uploads = arg[3], route = "provider",
  poll_interval = 0.05, max_lines = 4, defaults = { size = "64x64", response_format = "b64_json" },
  _on_step = function(step) if step == at then os.execute("kill -9 $PPID; sleep 5") end end })
print("totals", r.totals.done, r.totals.failed)
]])
    end)
    for _, step in ipairs { "uploaded", "input", "creating", "sent", "created", "polled", "wrote" } do
      it("at '" .. step .. "', a re-run creates no second batch and writes every picture", function()
        local o, up, m = fresh("out"), fresh("up"), six()
        emu:clear()
        local before, batches = billed(), #emu:batches()
        local out, code = H.sh(H.CHILD .. "EMU_URL=" .. emu.url .. " EMU_KEY=" .. emu.key .. " KILL_AT=" .. step
          .. " " .. H.LUA .. " " .. script .. " " .. m .. " " .. o .. " " .. up)
        assert.are_not.equal(0, code, out)
        assert.is_nil(out:match("totals"), "the run was killed at " .. step)
        local out2, code2 = H.sh(H.CHILD .. "EMU_URL=" .. emu.url .. " EMU_KEY=" .. emu.key .. " " .. H.LUA .. " "
          .. script .. " " .. m .. " " .. o .. " " .. up)
        assert.are.equal(0, code2, out2)
        assert.matches("totals\t6\t0", out2)
        for i = 1, 6 do assert.truthy(H.exists(o .. "/j" .. i .. ".png")) end
        assert.are.equal(batches + 2, #emu:batches(), "two parts of four lines, each created once")
        assert.are.equal(6, billed() - before)
        assert.are.equal(3, calls().vision, "each picture uploaded once")
      end)
    end
  end)

  it("shows its progress: the upload's bytes, then each batch's status, counts and the time waited", function()
    local ticks = {}
    local r = run(six(), fresh("out"), { max_lines = 4, tick = 0, on_tick = function(t)
      if t.route then ticks[#ticks + 1] = require("imgedit.cli_batch").route_line(t) end
    end })
    assert.are.equal(6, r.totals.done)
    local all = table.concat(ticks, "\n")
    assert.matches("uploading %d/3 pictures, %d+ B of %d+ B", all)
    assert.matches("waiting | batch_%x+ %a+ %d/4 done, 0 failed; batch_%x+ %a+ %d/2 done, 0 failed | 3 pictures"
      .. " uploaded this run | waited %d", all)
  end)

  describe("the command line", function()
    local function cli(args)
      return H.sh(H.CHILD .. "XDG_CACHE_HOME=" .. dir .. "/xdg IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL="
        .. emu.url .. " IMGEDIT_PROVIDER=compatible " .. H.LUA .. " bin/imgedit batch --model gpt-image-2-all --size 64x64"
        .. " --response-format b64_json --route provider --poll-interval 0.05 " .. args)
    end

    it("--dry-run tells the lines, uploads, batches and cost, and sends nothing", function()
      emu:clear()
      local out, code = cli("--dry-run " .. six() .. " -o " .. fresh("out"))
      assert.are.equal(0, code, out)
      assert.matches("6 lines", out)
      assert.matches("3 pictures to upload", out)
      assert.matches("1 batch", out)
      assert.matches("%$", out)
      assert.are.equal(0, #H.api_requests(emu))
      local js = cli("--dry-run --json " .. six() .. " -o " .. fresh("out"))
      local d = cjson.decode(js:match("{.*}"))
      assert.are.equal(6, d.lines)
      assert.are.near(d.usd_direct / 2, d.usd, 1e-9)
      assert.are.equal(0, #H.api_requests(emu))
    end)

    it("says why jobs are held back, and which hint would send them", function()
      local m, o = six(), fresh("out")
      local out, code = cli("--detach " .. m .. " -o " .. o)
      assert.are.equal(0, code, out)
      -- The direct route, meanwhile: nothing sent, the reason, exit 1.
      local d, dcode = H.sh(H.CHILD .. "XDG_CACHE_HOME=" .. dir .. "/xdg IMGEDIT_API_KEY=" .. emu.key
        .. " IMGEDIT_BASE_URL=" .. emu.url .. " IMGEDIT_PROVIDER=compatible " .. H.LUA .. " bin/imgedit batch --model"
        .. " gpt-image-2-all --size 64x64 --response-format b64_json " .. m .. " -o " .. o)
      assert.are.equal(1, dcode, d)
      assert.matches("6 jobs wait in this folder's provider batches", d)
      assert.matches("%-%-route provider", d)
      assert.is_nil(d:match("to run what is left"))
      assert.is_nil(calls()["POST /v1/images/edits"])
      -- A dry run names what its checks refuse.
      H.write(dir .. "/broken.png", "not a picture")
      local bm = H.write(fresh("m") .. ".jsonl", cjson.encode { name = "x", prompt = "p", images = { dir .. "/broken.png" } }
        .. "\n")
      local dry = cli("--dry-run " .. bm .. " -o " .. fresh("out"))
      assert.matches("refused: x: ", dry)
    end)

    it("--detach submits and says how to collect; the same command without it collects", function()
      local m, o = six(), fresh("out")
      local before, batches = billed(), #emu:batches()
      local out, code = cli("--detach " .. m .. " -o " .. o)
      assert.are.equal(0, code, out)
      assert.matches("imgedit batch", out)
      assert.matches("still running", out)
      assert.are.equal(batches + 1, #emu:batches())
      assert.is_false(H.exists(o .. "/j1.png"))
      local out2, code2 = cli(m .. " -o " .. o)
      assert.are.equal(0, code2, out2)
      for i = 1, 6 do assert.truthy(H.exists(o .. "/j" .. i .. ".png")) end
      assert.are.equal(batches + 1, #emu:batches(), "collected, not created again")
      assert.are.equal(6, billed() - before)
    end)

    it("--cancel stops a running batch; what finished before is still collected", function()
      emu:configure { batch_seconds = 100 }
      local m, o = six(), fresh("out")
      local before = billed()
      local _, code = cli("--detach " .. m .. " -o " .. o)
      assert.are.equal(0, code)
      -- Half the batch's time goes by on the emulator's clock: three lines are made.
      emu:configure { time_offset = 50 }
      local out, code2 = cli("--cancel --json " .. m .. " -o " .. o)
      assert.are_not.equal(0, code2, out)
      local done, canceled = 0, 0
      for l in out:gmatch("[^\n]+") do
        local ev = cjson.decode(l)
        if type(ev) == "table" and ev.status == "done" then done = done + 1 end
        if type(ev) == "table" and ev.status == "failed" and ev.error.kind == "canceled" then
          canceled = canceled + 1
        end
      end
      assert.is_true(done >= 2 and done <= 4, out)
      assert.are.equal(6, done + canceled)
      assert.are.equal(done, billed() - before)
      for _, b in ipairs(emu:batches()) do assert.are_not.equal("in_progress", b.status) end
    end)

    it("Ctrl-C while waiting leaves the batch running and says so", function()
      emu:configure { batch_seconds = 100 }
      local m, o = six(), fresh("out")
      local log = fresh("log")
      os.execute(H.CHILD .. "XDG_CACHE_HOME=" .. dir .. "/xdg IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL="
        .. emu.url .. " IMGEDIT_PROVIDER=compatible " .. H.LUA .. " bin/imgedit batch --model gpt-image-2-all --size 64x64"
        .. " --response-format b64_json --route provider --poll-interval 0.05 " .. m .. " -o " .. o .. " >" .. log
        .. " 2>&1 & echo $! >" .. log .. ".pid")
      local pid = H.read(log .. ".pid"):match("%d+")
      local waited = 0
      local function created()
        local f = io.open(o .. "/.imgedit-route.jsonl", "rb")
        local s = f and f:read("*a") or ""
        if f then f:close() end
        return s:find('"created"', 1, true)
      end
      while not created() and waited < 20 * H.SLOW do
        os.execute("sleep 0.1")
        waited = waited + 0.1
      end
      os.execute("kill -INT " .. pid)
      while H.ok("kill -0 " .. pid .. " 2>/dev/null") and waited < 40 * H.SLOW do
        os.execute("sleep 0.1")
        waited = waited + 0.1
      end
      local text = H.read(log)
      assert.matches("still running", text)
      assert.matches("imgedit batch", text)
      local running = 0
      for _, b in ipairs(emu:batches()) do if b.status == "in_progress" then running = running + 1 end end
      assert.is_true(running >= 1)
      -- Leave no batch of this test running for the next ones.
      cli("--cancel " .. m .. " -o " .. o)
    end)
  end)
end)
