-- Providers: the same script against the emulator playing each one, where
-- only the provider option (and its address) changes.
local H = require "helpers"
local imgedit = require "imgedit"

local CHILD = "env -u IMGEDIT_API_KEY -u IMGEDIT_BASE_URL -u IMGEDIT_PROVIDER -u OPENAI_API_KEY -u AZURE_OPENAI_API_KEY"
  .. " -u AZURE_OPENAI_ENDPOINT -u OPENAI_API_VERSION LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='"
  .. H.BUILD .. "/?.so;;' "

local function child(env, code)
  local p = io.popen(CHILD .. env .. " " .. H.LUA .. " -e '" .. code .. "' 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

describe("providers", function()
  it("are told from the base url's host, and said by client.provider", function()
    for url, want in pairs {
      ["https://api.openai.com/v1"] = "openai", ["https://api.apiyi.com/v1"] = "apiyi",
      ["https://my-res.openai.azure.com"] = "azure", ["https://my-res.cognitiveservices.azure.com/"] = "azure",
      ["https://API.OpenAI.com:443/v1"] = "openai", ["http://127.0.0.1:8080/v1"] = "compatible",
      ["https://example.com/v1"] = "compatible",
    } do
      assert.are.equal(want, imgedit.new({ base_url = url, api_key = "k" }).provider, url)
    end
    assert.are.equal("apiyi", child("", 'io.write(require("imgedit").new{}.provider)'))
    -- loopback takes a provider's rules only when told
    assert.are.equal("openai", imgedit.new({ base_url = "http://127.0.0.1:1/v1", provider = "openai" }).provider)
    assert.has_error(function() imgedit.new { provider = "azur" } end)
  end)

  it("give OpenAI its own key variable, and Azure its key and endpoint variables", function()
    local emu = H.emulator()
    local out = child("OPENAI_API_KEY=" .. emu.key, string.format([[
      local c = require("imgedit").new{ base_url = %q, provider = "openai", model = "gpt-image-2-all" }
      local img, err = c:generate{ prompt = "k", size = "64x64", response_format = "b64_json" }
      io.write(img and "ok" or tostring(err))]], emu.url))
    assert.are.equal("ok", out)
    emu:stop()
    local az = H.emulator { provider = "azure" }
    out = child("AZURE_OPENAI_API_KEY=" .. az.key .. " AZURE_OPENAI_ENDPOINT=" .. az.url, [[
      local c = require("imgedit").new{ provider = "azure", deployment = "img" }
      local img, err = c:generate{ prompt = "k", model = "gpt-image-2-all", size = "64x64", response_format = "b64_json" }
      io.write(img and "ok" or tostring(err))]])
    assert.are.equal("ok", out)
    assert.matches("needs base_url %(its resource endpoint%) or AZURE_OPENAI_ENDPOINT",
      child("", 'require("imgedit").new{ provider = "azure" }'))
    az:stop()
  end)

  describe("rules", function()
    local dir
    lazy_setup(function() dir = H.tmpdir() end)
    lazy_teardown(function() H.rmtree(dir) end)

    -- A PNG of `bytes` whose header says 4000x4000 RGBA (or w x h): read,
    -- never decoded.
    local function png_of(name, bytes, w, h)
      local f = assert(io.open("/dev/urandom", "rb"))
      local data = f:read(bytes)
      f:close()
      local ihdr = H.pack(">I4I4BBBBB", w or 4000, w and h or 4000, 8, 6, 0, 0, 0)
      return H.write(dir .. "/" .. name, "\137PNG\r\n\26\n" .. H.png_chunk("IHDR", ihdr) .. H.pack(">I4", #data) .. "IDAT"
        .. data .. "\0\0\0\0" .. H.png_chunk("IEND", ""))
    end

    -- Local checks only: nothing listens at the address, so a request that
    -- passes them ends as a network error, one that fails them as invalid_request.
    local function try(provider, req)
      local c = imgedit.new { base_url = "http://127.0.0.1:1/v1", api_key = "k", provider = provider, max_retries = 0,
        model = "gpt-image-2", connect_timeout = 2 }
      local _, err = c:edit(req)
      return err.kind, err.message
    end

    it("take each provider's limits: images, image bytes, mask bytes", function()
      local small = H.write(dir .. "/s.png", H.png(64, 64))
      local eight = {}
      for i = 1, 8 do eight[i] = small end
      assert.are.equal("network", (try("openai", { prompt = "x", images = eight })))
      assert.are.equal("invalid_request", (try("apiyi", { prompt = "x", images = eight })))
      local big = png_of("big.png", math.floor(10.5 * 1024 * 1024))
      assert.are.equal("network", (try("openai", { prompt = "x", images = { big } })))
      local kind, msg = try("apiyi", { prompt = "x", images = { big } })
      assert.are.equal("invalid_request", kind)
      assert.matches("exceeds the 10 MB limit", msg)
      local base = H.write(dir .. "/base.png", H.png(64, 64))
      local mask = png_of("mask.png", 5 * 1024 * 1024, 64, 64)
      kind, msg = try("openai", { prompt = "x", images = { base }, mask = mask })
      assert.are.equal("invalid_request", kind)
      assert.matches("mask", msg)
      assert.are.equal("network", (try("apiyi", { prompt = "x", images = { base }, mask = mask })))
      -- a service of its own: the generic checks only
      assert.are.equal("network", (try("compatible", { prompt = "x", images = eight })))
    end)

    it("refuse a retired model with its date and replacement, and a prompt over the limit", function()
      local kind, msg = try("openai", { prompt = "x", model = "dall-e-3", images = { H.write(dir .. "/d.png", H.png(8, 8)) } })
      assert.are.equal("invalid_request", kind)
      assert.matches("dall%-e%-3 was shut down on 2026%-05%-12; use gpt%-image%-1 or gpt%-image%-1%-mini", msg)
      kind, msg = try("openai", { prompt = string.rep("p", 32001), images = { H.write(dir .. "/p.png", H.png(8, 8)) } })
      assert.are.equal("invalid_request", kind)
      assert.matches("at most 32000", msg)
    end)
  end)

  describe("Azure", function()
    local az, dir
    lazy_setup(function() az, dir = H.emulator { provider = "azure" }, H.tmpdir() end)
    lazy_teardown(function() az:stop() H.rmtree(dir) end)
    before_each(function() az:clear() end)

    it("sends edits and generations to the deployment, with api-key and never Authorization", function()
      local c = imgedit.new { provider = "azure", base_url = az.url, api_key = az.key, deployment = "my-image",
        model = "gpt-image-2-all" }
      assert.are.equal("azure", c.provider)
      assert(c:edit { prompt = "az", images = { H.write(dir .. "/in.png", H.png(64, 64)) }, size = "64x64",
        response_format = "b64_json" })
      assert(c:generate { prompt = "az", size = "64x64", response_format = "b64_json" })
      local r = H.api_requests(az)
      assert.are.equal(2, #r)
      assert.are.equal("/openai/deployments/my-image/images/edits", r[1].path)
      assert.are.equal("/openai/deployments/my-image/images/generations", r[2].path)
      for _, e in ipairs(r) do
        assert.is_true(e.api_key)
        assert.is_false(e.authorization)
        assert.are.equal("2025-04-01-preview", e.api_version)
      end
    end)

    it("names the deployment after the model when none is given, and takes api_version", function()
      local c = imgedit.new { provider = "azure", base_url = az.url, api_key = az.key, model = "gpt-image-2-all",
        api_version = "2025-06-01" }
      assert(c:generate { prompt = "az", size = "64x64", response_format = "b64_json" })
      local r = H.api_requests(az)[1]
      assert.are.equal("/openai/deployments/gpt-image-2-all/images/generations", r.path)
      assert.are.equal("2025-06-01", r.api_version)
    end)

    it("is reached from the command line with --provider and --deployment", function()
      local out = dir .. "/cli.png"
      local p = io.popen(CHILD .. "IMGEDIT_API_KEY=" .. az.key .. " IMGEDIT_BASE_URL=" .. az.url .. " " .. H.LUA
        .. " bin/imgedit generate -q --provider azure --deployment cli-dep --model gpt-image-2-all --size 64x64"
        .. " --response-format b64_json -p cli -o '" .. out .. "' 2>&1; echo exit=$?")
      local text = p:read("*a")
      p:close()
      assert.matches("exit=0", text)
      assert.is_true(H.exists(out))
      assert.are.equal("/openai/deployments/cli-dep/images/generations", H.api_requests(az)[1].path)
    end)

    it("refuses a wrong key in Azure's words, and a client without provider sends Bearer and fails", function()
      local c = imgedit.new { provider = "azure", base_url = az.url, api_key = "sk-wrong-key", model = "gpt-image-2-all" }
      local img, err = c:generate { prompt = "az", size = "64x64", response_format = "b64_json" }
      assert.is_nil(img)
      assert.are.equal("auth", err.kind)
      assert.matches("Access denied due to invalid subscription key", err.message)
      assert.is_nil(err.message:find("sk-wrong-key", 1, true))
      -- the same address as a generic service: /images/... and Bearer, which Azure does not take
      local plain = imgedit.new { base_url = az.url, api_key = az.key, model = "gpt-image-2-all", max_retries = 0 }
      assert.are.equal("compatible", plain.provider)
      img, err = plain:generate { prompt = "az", size = "64x64", response_format = "b64_json" }
      assert.is_nil(img)
      assert.are.equal(401, err.status)
    end)
  end)
end)
