-- Money: a request that reached the service is never sent again unless the
-- caller asks, and a paid picture is never lost. Every test counts the
-- requests the emulator received.
local H = require "helpers"
local core = require "imgedit.core"
local cjson = require "cjson"

local small = H.small

-- A PNG far larger than the loopback socket buffers, so that a connection
-- dropped at the start of the upload is seen while the body is still
-- going out. Only its header is read by the client (never decoded), so the
-- IDAT is random bytes and its CRC is not computed.
local function huge_png(path, mb)
  local f = assert(io.open("/dev/urandom", "rb"))
  local data = f:read(mb * 1024 * 1024)
  f:close()
  local ihdr = "IHDR" .. H.pack(">I4I4BBBBB", 4000, 4000, 8, 6, 0, 0, 0)
  return H.write(path, "\137PNG\r\n\26\n" .. H.png_chunk("IHDR", ihdr:sub(5)) .. H.pack(">I4", #data) .. "IDAT"
    .. data .. "\0\0\0\0" .. H.png_chunk("IEND", ""))
end

describe("billing", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(64, 64))
  end)

  local function client(opts) return H.all_client(emu, opts) end

  -- A client whose connection to the emulator is open and idle (keep-alive).
  local function warm(opts)
    local c = client(opts)
    assert(c:generate(small()))
    emu:clear()
    return c
  end

  describe("a request sent in full, then no answer", function()
    for _, case in ipairs {
      { "closed", { drop = true } },
      { "reset", { reset = true } },
      { "closed after a second", { drop = true, delay = 1 } },
      { "reset after a second", { reset = true, delay = 1 } },
    } do
      it("is sent once on a warm keep-alive connection when the connection is " .. case[1], function()
        for _, retries in ipairs { 0, 2 } do
          emu:clear()
          local c = warm { max_retries = retries, retry_base = 0.01 }
          -- Enough faults for every re-send libcurl or the library could make.
          for _ = 1, 8 do emu:inject(case[2]) end
          local retried = 0
          local img, err = c:edit(small { images = { pic }, on_retry = function() retried = retried + 1 end })
          assert.is_nil(img)
          assert.are.equal(1, #H.api_requests(emu), case[1] .. ", max_retries " .. retries)
          assert.are.equal("network", err.kind)
          assert.is_true(err.maybe_billed)
          assert.is_false(err.retryable)
          assert.are.equal(1, err.attempts)
          assert.are.equal(0, retried)
          assert.matches("may have received and billed it", err.message)
          c:close()
        end
      end)
    end

    it("is sent once with several pooled connections", function()
      emu:configure { latency = 0.3 * H.SLOW }
      local c = client { max_retries = 0 }
      -- Four connections in the pool, all warm.
      local res = c:map({ small(), small(), small(), small() }, { kind = "generate" })
      for _, r in ipairs(res) do assert.are.equal("png", r.format) end
      local ports = {}
      for _, r in ipairs(emu:requests()) do ports[r.client_port] = true end
      local n = 0
      for _ in pairs(ports) do n = n + 1 end
      assert.is_true(n >= 2, "pooled connections: " .. n)
      emu:clear()
      for _ = 1, 8 do emu:inject { reset = true, delay = 0.2 } end
      local img, err = c:generate(small())
      assert.is_nil(img)
      assert.is_true(err.maybe_billed)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("is sent again only when the caller opts in with retry_unanswered", function()
      local c = warm { retry_unanswered = true, retry_base = 0.01 }
      emu:inject { drop = true }
      local seen = {}
      local img = c:edit(small { images = { pic }, on_retry = function(i) seen[#seen + 1] = i end })
      assert.truthy(img)
      assert.are.equal(2, #H.api_requests(emu))
      assert.are.equal(1, #seen)
      assert.are.equal("network", seen[1].kind)
      assert.is_true(seen[1].error.maybe_billed)
    end)

    it("says so when it was sent again as asked and still failed", function()
      local c = warm { retry_unanswered = true, retry_base = 0.01, max_retries = 2 }
      for _ = 1, 3 do emu:inject { drop = true } end
      local img, err = c:edit(small { images = { pic } })
      assert.is_nil(img)
      assert.are.equal(3, #H.api_requests(emu))
      assert.are.equal(3, err.attempts)
      assert.is_true(err.maybe_billed)
      assert.is_nil(err.message:find("not sent again", 1, true))
      assert.matches("sent again as asked %(3 attempts in all, each may be billed%)", err.message)
    end)

    it("in a soak of 40 generations with every fifth reset, sends each exactly once", function()
      local c = warm { max_concurrency = 4, retry_base = 0.01 }
      local reqs = {}
      for i = 1, 40 do
        reqs[i] = small { prompt = "soak " .. i }
      end
      -- Faults apply in arrival order; every fifth request is reset.
      for i = 1, 40 do emu:inject(i % 5 == 0 and { reset = true } or { delay = 0 }) end
      local res = c:map(reqs, { kind = "generate" })
      local billed, ok = 0, 0
      for _, r in ipairs(res) do
        if r.maybe_billed then billed = billed + 1 elseif r.format then ok = ok + 1 end
      end
      assert.are.equal(40, #H.api_requests(emu))
      assert.are.equal(8, billed)
      assert.are.equal(32, ok)
    end)
  end)

  it("retries, visibly, a connection lost before the body was sent", function()
    -- 32 MB: more than the socket buffers hold, so the drop is seen mid-upload.
    local big = huge_png(dir .. "/huge.png", 32)
    local c = warm { retry_base = 0.01 }
    emu:inject { drop_early = true }
    local seen = {}
    local job = c:submit("edit", { prompt = "x", images = { big }, size = "64x64", response_format = "b64_json",
      _no_checks = true, on_retry = function(i) seen[#seen + 1] = i end })
    job:wait()
    assert.are.equal(2, job.attempts)
    assert.are.equal(1, #seen)
    assert.are.equal("network", seen[1].kind)
    assert.is_nil(seen[1].error.maybe_billed)
    assert.are.equal(2, #H.api_requests(emu))
    os.remove(big)
  end)

  describe("the server's hints", function()
    it("obeys x-should-retry: false on a 503", function()
      local c = client { retry_base = 0.01 }
      emu:inject { status = 503, headers = { ["x-should-retry"] = "false" } }
      local img, err = c:generate(small())
      assert.is_nil(img)
      assert.are.equal("server", err.kind)
      assert.is_false(err.retryable)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("obeys x-should-retry: true on an answer that is otherwise final", function()
      local c = client { retry_base = 0.01 }
      emu:inject { status = 400, headers = { ["x-should-retry"] = "true" } }
      assert.truthy(c:generate(small()))
      assert.are.equal(2, #H.api_requests(emu))
    end)

    it("fails at once on a 429 whose Retry-After is past max_retry_after", function()
      local c = client { max_retry_after = 5 }
      emu:inject { status = 429, retry_after = 120 }
      local retried = 0
      c.on_retry = function() retried = retried + 1 end
      local img, err = c:generate(small())
      assert.is_nil(img)
      assert.are.equal("rate_limit", err.kind)
      assert.are.equal(120, err.retry_after)
      assert.are.equal(0, retried, "no wait was scheduled")
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("gives every error from an answer its request id", function()
      local c = client { max_retries = 0 }
      for _, fault in ipairs { { status = 500 }, { status = 400 }, { status = 502, html = true }, { bad_json = true } } do
        emu:clear()
        emu:inject(fault)
        local _, err = c:generate(small())
        assert.are.equal("req_emu_1", err.request_id, cjson.encode(fault))
        assert.matches("request req_emu_1", tostring(err))
      end
      emu:clear()
      local _, err = c:generate { prompt = "x", model = "gpt-image-2", quality = "ultra", _no_checks = true }
      assert.are.equal(400, err.status)
      assert.are.equal("req_emu_1", err.request_id)
    end)
  end)

  describe("a paid picture", function()
    it("whose download fails keeps its url and request id, and can be fetched later", function()
      local c = client { retry_base = 0.01 }
      for _ = 1, 3 do emu:inject { cdn = true, status = 503 } end
      local img, err = c:generate { prompt = "u", size = "64x64" }
      assert.is_nil(img)
      assert.are.equal("server", err.kind)
      assert.matches("^http://127%.0%.0%.1:%d+/files/", err.url)
      assert.matches("^req_emu_", err.request_id)
      assert.is_true(err.maybe_billed)
      assert.matches("can still be downloaded from http://127", err.message)
      assert.are.equal(1, #H.api_requests(emu))
      local again = assert(c:download(err))
      assert.are.equal("png", again.format)
      assert.are.equal(err.request_id, again.request_id)
      assert.are.equal(again.bytes, assert(c:download(err.url)).bytes)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("is fetched again by a pipeline re-run from its journal, not paid again", function()
      local out = dir .. "/pipe-url"
      local function run()
        local c = client { retry_base = 0.01 }
        local p = require("imgedit").pipeline { client = c, dir = out, cache = out .. "/cache", quiet = true }
        return p:generate("a", { prompt = "a lamp", size = "64x64" })
      end
      for _ = 1, 3 do emu:inject { cdn = true, drop = true } end
      local img, err = run()
      assert.is_nil(img)
      assert.truthy(err.url)
      local journal = cjson.decode(H.read(out .. "/.imgedit-journal.json"))
      assert.are.equal(err.url, journal.steps.a.pending_url)
      img = assert(run())
      assert.are.equal("png", img.format)
      assert.truthy(H.exists(out .. "/a.png"))
      assert.are.equal(1, #H.api_requests(emu))
      journal = cjson.decode(H.read(out .. "/.imgedit-journal.json"))
      assert.is_nil(journal.steps.a.pending_url)
      -- and a third run takes it from the cache: no request at all
      emu:clear()
      assert(run())
      assert.are.equal(0, #emu:requests())
    end)

    it("whose url is gone is paid for again by a pipeline re-run", function()
      local out = dir .. "/pipe-gone"
      local function run()
        local c = client { retry_base = 0.01, max_retries = 0 }
        local p = require("imgedit").pipeline { client = c, dir = out, cache = false, quiet = true }
        return p:generate("a", { prompt = "a chair", size = "64x64" })
      end
      emu:inject { cdn = true, drop = true }
      assert.is_nil(run())
      emu:inject { cdn = true, status = 404 }
      assert(run())
      assert.are.equal(2, #H.api_requests(emu))
    end)
  end)
end)
