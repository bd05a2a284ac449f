-- The emulator's JSON edit body, Files API and Batch API, spoken to over
-- real loopback HTTP with the curl command line (the client library's own
-- support comes apart). Batches run on the emulator's clock: batch_seconds
-- small, and the lines run when the batch is read.
local H = require "helpers"
local core = require "imgedit.core"
local cjson = require "cjson"

describe("emulator: JSON edits, Files and Batch APIs", function()
  local emu, dir, png, mask

  lazy_setup(function()
    emu = H.emulator { provider = "openai" }
    dir = H.tmpdir()
    png = H.png(64, 64)
    mask = H.png(64, 64, function(x) return x < 32 and 0 or 255 end)
    H.write(dir .. "/p.png", png)
    H.write(dir .. "/m.png", mask)
  end)
  lazy_teardown(function()
    emu:stop()
    H.rmtree(dir)
  end)
  before_each(function()
    emu:clear()
    emu:configure { latency = 0, batch_seconds = 0.5, batch_max_lines = 50000, time_offset = 0 }
  end)

  local n = 0
  -- curl(args) -> status, body (args: curl's own, after the key and url)
  local function curl(path, args)
    local cmd = "curl -s -w '\\n%{http_code}' -H 'Authorization: Bearer " .. emu.key .. "' " .. (args or "")
      .. " '" .. emu.url .. path .. "'"
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    local body, code = out:match("^(.*)\n(%d+)$")
    return tonumber(code), body
  end
  local function json(status_want, path, args)
    local status, body = curl(path, args)
    assert.are.equal(status_want, status, body)
    return cjson.decode(body)
  end
  local function post_json(path, t)
    n = n + 1
    local f = H.write(dir .. "/body" .. n .. ".json", cjson.encode(t))
    return curl(path, "-H 'Content-Type: application/json' --data-binary @" .. f)
  end
  local function upload(bytes, name, purpose, extra)
    n = n + 1
    local f = H.write(dir .. "/" .. n .. "-" .. name, bytes)
    local status, body = curl("/files", "-F purpose=" .. purpose .. " -F 'file=@" .. f .. ";filename=" .. name
      .. "' " .. (extra or ""))
    return status, cjson.decode(body)
  end
  local function dataurl(bytes) return "data:image/png;base64," .. core.b64encode(bytes) end

  local function edit_body(prompt, images, extra)
    local b = { model = "gpt-image-1", prompt = prompt, images = images, size = "1024x1024", quality = "low" }
    for k, v in pairs(extra or {}) do b[k] = v end
    return b
  end
  local function jsonl(lines)
    local out = {}
    for i, l in ipairs(lines) do out[i] = type(l) == "string" and l or cjson.encode(l) end
    return table.concat(out, "\n") .. "\n"
  end
  local function edit_line(id, prompt, extra)
    return { custom_id = id, method = "POST", url = "/v1/images/edits",
      body = edit_body(prompt, { { image_url = dataurl(png) } }, extra) }
  end
  -- a batch of the given lines: its object as created
  local function batch(lines, metadata)
    local status, file = upload(jsonl(lines), "in.jsonl", "batch")
    assert.are.equal(200, status, cjson.encode(file))
    local s, body = post_json("/batches", { input_file_id = file.id, endpoint = "/v1/images/edits",
      completion_window = "24h", metadata = metadata })
    assert.are.equal(200, s, body)
    return cjson.decode(body)
  end
  local function get(id) return json(200, "/batches/" .. id) end
  local function wait(id, statuses, limit)
    local t0 = core.now()
    while true do
      local b = get(id)
      if statuses[b.status] then return b end
      assert(core.now() - t0 < (limit or 10), "batch still " .. b.status)
      os.execute("sleep 0.05")
    end
  end
  local function content(id)
    local status, body = curl("/files/" .. id .. "/content")
    assert.are.equal(200, status)
    local out = {}
    for l in body:gmatch("[^\n]+") do out[#out + 1] = cjson.decode(l) end
    return out
  end
  local function line_entries()
    local out = {}
    for _, e in ipairs(emu:requests()) do if e.batch_line then out[#out + 1] = e end end
    return out
  end

  describe("the JSON edit body", function()
    local function multipart()
      return curl("/images/edits", "-F model=gpt-image-1 -F prompt=same -F size=1024x1024 -F quality=low"
        .. " -F 'image[]=@" .. dir .. "/p.png;type=image/png' -F 'mask=@" .. dir .. "/m.png;type=image/png'")
    end

    it("makes the multipart request's very picture and usage, images given as data URLs or file ids", function()
      local s1, b1 = multipart()
      assert.are.equal(200, s1, b1)
      local s2, b2 = post_json("/images/edits", edit_body("same", { { image_url = dataurl(png) } },
        { mask = { image_url = dataurl(mask) } }))
      assert.are.equal(200, s2, b2)
      local _, img = upload(png, "p.png", "vision")
      local _, m = upload(mask, "m.png", "vision")
      local s3, b3 = post_json("/images/edits", edit_body("same", { { file_id = img.id } },
        { mask = { file_id = m.id } }))
      assert.are.equal(200, s3, b3)
      local a1, a2, a3 = cjson.decode(b1), cjson.decode(b2), cjson.decode(b3)
      assert.are.equal(a1.data[1].b64_json, a2.data[1].b64_json)
      assert.are.equal(a1.data[1].b64_json, a3.data[1].b64_json)
      assert.are.same(a1.usage, a2.usage)
      assert.are.same(a1.usage, a3.usage)
      -- the log names the pictures of either body alike
      local log = emu:requests()
      local multi, by_ref = log[1], log[#log]
      assert.are.equal("gpt-image-1", by_ref.model)
      assert.are.equal(multi.files[1].sha256, by_ref.files[1].sha256)
      assert.are.equal(core.sha256(mask), by_ref.files[2].sha256)
    end)

    it("runs the multipart path's checks: a mask of another size is refused alike", function()
      local other = H.png(32, 32, function() return 0 end)
      local s, b = post_json("/images/edits", edit_body("x", { { image_url = dataurl(png) } },
        { mask = { image_url = dataurl(other) } }))
      assert.are.equal(400, s)
      assert.are.equal("invalid_mask", cjson.decode(b).error.code)
    end)

    it("is refused for dall-e-2, whose edits take multipart only", function()
      local s, b = post_json("/images/edits", edit_body("x", { { image_url = dataurl(png) } }, { model = "dall-e-2" }))
      assert.are.equal(400, s)
      assert.are.equal("invalid_content_type", cjson.decode(b).error.code)
    end)

    it("names an unknown file id, and refuses a url it cannot reach", function()
      local s, b = post_json("/images/edits", edit_body("x", { { file_id = "file-nosuch" } }))
      assert.are.equal(400, s)
      local e = cjson.decode(b).error
      assert.truthy(e.message:find("file-nosuch", 1, true))
      assert.are.equal("images[0].file_id", e.param)
      s, b = post_json("/images/edits", edit_body("x", { { image_url = "https://example.com/a.png" } }))
      assert.are.equal(400, s)
      assert.are.equal("invalid_image_url", cjson.decode(b).error.code)
      assert.are.equal(0, #line_entries())
    end)
  end)

  describe("the Files API", function()
    it("uploads, lists by purpose, retrieves, serves the content and deletes", function()
      local s, f = upload(png, "p.png", "vision")
      assert.are.equal(200, s)
      assert.truthy(f.id:match("^file%-"))
      assert.are.same({ "file", #png, "p.png", "vision", "processed" },
        { f.object, f.bytes, f.filename, f.purpose, f.status })
      assert.are.equal(cjson.null, f.expires_at)
      local _, g = upload(jsonl { edit_line("a", "x") }, "in.jsonl", "batch")
      assert.are.equal(g.created_at + 30 * 86400, g.expires_at) -- batch files: 30 days by default
      local list = json(200, "/files?purpose=vision")
      assert.are.equal(1, #list.data)
      assert.are.equal(f.id, list.data[1].id)
      assert.are.equal(2, #json(200, "/files").data)
      assert.are.same(f, json(200, "/files/" .. f.id))
      local status, body = curl("/files/" .. f.id .. "/content")
      assert.are.equal(200, status)
      assert.are.equal(png, body)
      assert.are.same({ id = f.id, object = "file", deleted = true }, json(200, "/files/" .. f.id, "-X DELETE"))
      assert.are.equal(404, (curl("/files/" .. f.id)))
      assert.are.equal(404, (curl("/files/" .. f.id .. "/content")))
      assert.are.equal(1, #emu:files())
    end)

    it("lets a file expire after expires_after, then answers 404 like a deleted one", function()
      local s, f = upload(png, "p.png", "user_data", "-F 'expires_after[anchor]=created_at' -F 'expires_after[seconds]=3600'")
      assert.are.equal(200, s)
      assert.are.equal(f.created_at + 3600, f.expires_at)
      assert.are.equal(200, (curl("/files/" .. f.id)))
      emu:configure { time_offset = 3601 }
      assert.are.equal(404, (curl("/files/" .. f.id)))
      assert.are.equal(0, #json(200, "/files").data)
      assert.are.equal(400, (upload(png, "p.png", "user_data", "-F 'expires_after[anchor]=created_at' -F 'expires_after[seconds]=60'")))
    end)

    it("takes only .jsonl files for batches, and only known purposes", function()
      local s, e = upload("{}", "in.txt", "batch")
      assert.are.equal(400, s)
      assert.truthy(e.error.message:find(".jsonl", 1, true))
      assert.are.equal(400, (upload(png, "p.png", "pictures")))
    end)

    it("needs the key", function()
      local p = assert(io.popen("curl -s -o /dev/null -w '%{http_code}' '" .. emu.url .. "/files'"))
      local code = p:read("*a")
      p:close()
      assert.are.equal("401", code)
    end)
  end)

  describe("a batch", function()
    it("validates, runs its lines over batch_seconds, and writes them in an order of its own", function()
      local b = batch({ edit_line("a", "one"), edit_line("b", "two"), edit_line("c", "three") }, { job = "nightly" })
      assert.truthy(b.id:match("^batch_"))
      assert.are.same({ "batch", "validating", "/v1/images/edits", "24h" },
        { b.object, b.status, b.endpoint, b.completion_window })
      assert.are.same({ total = 0, completed = 0, failed = 0 }, b.request_counts)
      assert.are.equal("nightly", b.metadata.job)
      for _, k in ipairs { "output_file_id", "error_file_id", "in_progress_at", "finalizing_at", "completed_at",
        "failed_at", "expired_at", "cancelling_at", "cancelled_at", "errors" } do
        assert.are.equal(cjson.null, b[k], k)
      end
      local first = get(b.id)
      assert.are.equal("in_progress", first.status)
      assert.is_true(first.request_counts.completed < 3) -- they finish as time passes
      local done = wait(b.id, { completed = true })
      assert.are.same({ total = 3, completed = 3, failed = 0 }, done.request_counts)
      assert.are.equal("gpt-image-1", done.model)
      assert.are.equal(cjson.null, done.error_file_id) -- no failed line: no error file
      assert.is_true(done.usage.total_tokens > 0)
      local out = content(done.output_file_id)
      assert.are.same({ "c", "b", "a" }, { out[1].custom_id, out[2].custom_id, out[3].custom_id })
      -- each line as the service writes it, the body a direct request's answer
      local _, direct = post_json("/images/edits", edit_body("one", { { image_url = dataurl(png) } }))
      direct = cjson.decode(direct)
      local a = out[3]
      assert.truthy(a.id:match("^batch_req_"))
      assert.are.equal(200, a.response.status_code)
      assert.truthy(a.response.request_id:match("^req_"))
      assert.are.equal(cjson.null, a.error)
      assert.are.equal(direct.data[1].b64_json, a.response.body.data[1].b64_json)
      assert.are.same(direct.usage, a.response.body.usage)
      local file = json(200, "/files/" .. done.output_file_id)
      assert.are.equal("batch_output", file.purpose)
    end)

    it("bills each line once, at half price, however often it is read", function()
      local b = batch({ edit_line("a", "one"), edit_line("b", "two"), edit_line("c", "three") })
      local before = emu:stats().requests
      for _ = 1, 20 do get(b.id) end
      emu:batches()
      json(200, "/batches")
      wait(b.id, { completed = true })
      for _ = 1, 5 do get(b.id) end
      local st = emu:stats()
      assert.are.equal(3, st.batch_lines_run)
      assert.are.equal(3, st.batch_lines_billed)
      assert.are.equal(0.5, st.batch_price)
      local lines = line_entries()
      assert.are.equal(3, #lines)
      local seen = {}
      for _, e in ipairs(lines) do
        assert.is_nil(seen[e.custom_id])
        seen[e.custom_id] = true
        assert.are.same({ b.id, "gpt-image-1", 200, "batch" }, { e.batch, e.model, e.status, e.listener })
      end
      -- the HTTP requests are counted as before: the lines are not among them
      local http = 0
      for _, e in ipairs(emu:requests()) do if not e.batch_line then http = http + 1 end end
      assert.are.equal(http, st.requests)
      assert.is_true(st.requests > before)
      local tokens = 0
      for _, e in ipairs(lines) do tokens = tokens + e.usage.total_tokens end
      assert.are.equal(tokens, st.batch_usage.total_tokens)
    end)

    it("writes a line the service refused to the error file, with its status and error body", function()
      local bad = edit_line("bad", "x", { quality = "ultra" })
      local multipart_only = { custom_id = "mp", method = "POST", url = "/v1/images/edits",
        body = { model = "gpt-image-1", prompt = "x", image = "@p.png" } }
      local b = wait(batch({ edit_line("ok", "x"), bad, multipart_only }).id, { completed = true })
      assert.are.same({ total = 3, completed = 1, failed = 2 }, b.request_counts)
      local errs = content(b.error_file_id)
      assert.are.equal(2, #errs)
      for _, l in ipairs(errs) do
        assert.are.equal(400, l.response.status_code)
        assert.truthy(l.response.body.error.message)
        assert.are.equal(cjson.null, l.error)
      end
      assert.are.equal(1, #content(b.output_file_id))
      assert.are.equal(1, emu:stats().batch_lines_billed)
    end)

    it("fails validation with errors naming the line: a duplicate custom_id, another url, a broken line", function()
      local other = edit_line("b", "x")
      other.url = "/v1/images/generations"
      local b = wait(batch({ edit_line("a", "x"), edit_line("a", "y"), other, "{not json" }).id, { failed = true })
      local codes = {}
      for _, e in ipairs(b.errors.data) do codes[e.code] = e.line end
      assert.are.same({ duplicate_custom_id = 2, url_mismatch = 3, invalid_json_line = 4 }, codes)
      assert.are.equal("number", type(b.failed_at))
      assert.are.equal(0, #line_entries())
    end)

    it("fails when batch_max_lines is lowered below its lines, naming the limit", function()
      emu:configure { batch_max_lines = 2 }
      local b = wait(batch({ edit_line("a", "x"), edit_line("b", "x"), edit_line("c", "x") }).id, { failed = true })
      assert.are.equal("too_many_tasks", b.errors.data[1].code)
      assert.truthy(b.errors.data[1].message:find("2 requests per batch", 1, true))
      assert.truthy(b.errors.data[1].message:find("batch_max_lines", 1, true))
      assert.are.equal(0, emu:stats().batch_lines_run)
    end)

    it("keeps the lines that finished when cancelled, and runs no other", function()
      emu:configure { batch_seconds = 3 }
      local lines = {}
      for i = 1, 5 do lines[i] = edit_line("l" .. i, "x" .. i) end
      local b = batch(lines)
      local t0 = core.now()
      repeat os.execute("sleep 0.1") until get(b.id).request_counts.completed >= 1 or core.now() - t0 > 5
      local c = json(200, "/batches/" .. b.id .. "/cancel", "-X POST")
      assert.are.equal("cancelling", c.status)
      local ran = c.request_counts.completed
      assert.is_true(ran >= 1 and ran < 5)
      local done = get(b.id)
      assert.are.equal("cancelled", done.status)
      assert.are.equal("number", type(done.cancelled_at))
      os.execute("sleep 0.3")
      get(b.id)
      assert.are.equal(ran, #line_entries())
      assert.are.equal(ran, #content(done.output_file_id))
      local rest = content(done.error_file_id)
      assert.are.equal(5 - ran, #rest)
      assert.are.equal("batch_cancelled", rest[1].error.code)
      assert.are.equal(cjson.null, rest[1].response)
      assert.are.equal(409, (curl("/batches/" .. b.id .. "/cancel", "-X POST")))
    end)

    it("lists newest first, with its metadata, a page at a time", function()
      local ids = {}
      for i = 1, 3 do ids[i] = batch({ edit_line("a", "x") }, { n = tostring(i) }).id end
      local page = json(200, "/batches?limit=2")
      assert.are.equal("list", page.object)
      assert.are.same({ ids[3], ids[2] }, { page.data[1].id, page.data[2].id })
      assert.are.equal("3", page.data[1].metadata.n)
      assert.are.same({ ids[3], ids[2], true }, { page.first_id, page.last_id, page.has_more })
      local rest = json(200, "/batches?limit=2&after=" .. page.last_id)
      assert.are.equal(1, #rest.data)
      assert.are.same({ ids[1], false }, { rest.data[1].id, rest.has_more })
      assert.are.equal(3, #emu:batches())
      local many = {}
      for i = 1, 17 do many["k" .. i] = "v" end
      local _, file = upload(jsonl { edit_line("a", "x") }, "in.jsonl", "batch")
      local s, body = post_json("/batches", { input_file_id = file.id, endpoint = "/v1/images/edits",
        completion_window = "24h", metadata = many })
      assert.are.equal(400, s, body)
      assert.are.equal("metadata", cjson.decode(body).error.param)
    end)
  end)

  describe("batch faults", function()
    local function three() return { edit_line("a", "x"), edit_line("b", "y"), edit_line("c", "z") } end

    it("fail: validation fails, nothing runs", function()
      emu:inject { batch = "fail" }
      local b = wait(batch(three()).id, { failed = true })
      assert.is_true(#b.errors.data >= 1)
      assert.are.equal(0, emu:stats().batch_lines_run)
      -- the fault was for that batch only
      assert.are.equal("completed", wait(batch(three()).id, { completed = true, failed = true }).status)
    end)

    it("expire: the finished lines in the output, the rest batch_expired in the error file", function()
      emu:inject { batch = "expire", finished = 1 }
      local b = wait(batch(three()).id, { expired = true })
      assert.are.equal("number", type(b.expired_at))
      assert.are.equal(1, b.request_counts.completed)
      assert.are.equal(1, #content(b.output_file_id))
      local errs = content(b.error_file_id)
      assert.are.equal(2, #errs)
      for _, l in ipairs(errs) do
        assert.are.equal("batch_expired", l.error.code)
        assert.are.equal(cjson.null, l.response)
      end
      assert.are.equal(1, emu:stats().batch_lines_billed)
    end)

    it("drop: lines counted done that are in neither file", function()
      emu:inject { batch = "drop", lines = 1 }
      local b = wait(batch(three()).id, { completed = true })
      assert.are.equal(3, b.request_counts.completed)
      assert.are.equal(2, #content(b.output_file_id))
      assert.are.equal(cjson.null, b.error_file_id)
      assert.are.equal(3, emu:stats().batch_lines_billed)
    end)

    it("slow: this batch takes the seconds given", function()
      emu:inject { batch = "slow", seconds = 1.5 }
      local slow = batch(three())
      local quick = batch(three())
      wait(quick.id, { completed = true })
      assert.are_not.equal("completed", get(slow.id).status)
      local t0 = core.now()
      wait(slow.id, { completed = true })
      assert.is_true(core.now() - t0 > 0.2)
    end)
  end)

  it("checks the batch settings like the others", function()
    assert.has_error(function() emu:configure { batch_max_lines = 0 } end)
    assert.has_error(function() emu:configure { batch_seconds = -1 } end)
    assert.has_error(function() emu:configure { batch_max_bytes = 1.5 } end)
    local ok, e = pcall(emu.configure, emu, { batch_max_lines = 0 })
    assert.is_false(ok)
    assert.truthy(tostring(e):find("batch_max_lines", 1, true))
  end)
end)
