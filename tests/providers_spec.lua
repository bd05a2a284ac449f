-- Providers: the same script against the emulator playing each one, where
-- only the provider option (and its address) changes.
local H = require "helpers"
local imgedit = require "imgedit"

local CHILD = "env -u IMGEDIT_API_KEY -u IMGEDIT_BASE_URL -u IMGEDIT_PROVIDER -u OPENAI_API_KEY -u AZURE_OPENAI_API_KEY"
  .. " -u AZURE_OPENAI_ENDPOINT -u OPENAI_API_VERSION LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='"
  .. H.BUILD .. "/?.so;;' "

-- shell(env, args) -> what `lua args` printed, then "exit=N"
local function shell(env, args)
  local p = io.popen(CHILD .. env .. " " .. H.LUA .. " " .. args .. " 2>&1; echo exit=$?")
  local out = p:read("*a")
  p:close()
  return out
end

local function child(env, code)
  return (shell(env, "-e '" .. code .. "'"):gsub("exit=%d+\n$", ""))
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

  it("check a known model on an unrecognised host by its maker's rules, and refuse a blank prompt anywhere", function()
    local emu = H.emulator { provider = "compatible" }
    local dir = H.tmpdir()
    local png = H.write(dir .. "/a.png", H.png(64, 64))
    local c = imgedit.new { base_url = emu.url, api_key = emu.key } -- loopback: compatible, gpt-image-2
    assert.are.equal("compatible", c.provider)
    local cases = {
      { { prompt = "x", images = { png, png, png, png, png, png, png, png, png, png, png, png, png, png, png, png,
        png } }, "images", "17 images given; gpt%-image%-2 accepts at most 16" },
      { { prompt = "x", images = { png }, input_fidelity = "high" }, "input_fidelity", "do not send input_fidelity" },
      { { prompt = "x", images = { png }, size = "1000x1000" }, "size", "multiples of 16" },
      { { prompt = string.rep("a", 40000), images = { png } }, "prompt", "40000 characters; gpt%-image%-2 takes at most 32000" },
      { { prompt = "   \n\t", images = { png } }, "prompt", "the prompt is blank" },
    }
    for _, case in ipairs(cases) do
      local img, err = c:edit(case[1])
      assert.is_nil(img)
      assert.are.equal("invalid_request", err.kind)
      assert.are.equal(case[2], err.param)
      assert.matches(case[3], err.message)
    end
    -- six images go: OpenAI takes 16, the gateway's five are not applied here
    assert(c:edit { prompt = "x", images = { png, png, png, png, png, png }, size = "1024x1024" })
    -- another name: the generic checks alone, blank prompts still refused
    local other = imgedit.new { base_url = emu.url, api_key = emu.key, model = "my-local-model" }
    assert(other:edit { prompt = "x", images = { png }, size = "1000x1000" })
    local _, err = other:generate { prompt = " " }
    assert.are.equal("prompt", err.param)
    for _, provider in ipairs { "apiyi", "openai" } do
      local p = imgedit.new { base_url = emu.url, api_key = emu.key, provider = provider }
      _, err = p:generate { prompt = "" .. string.rep(" ", 3) }
      assert.matches("blank", err.message)
      _, err = p:generate { prompt = string.rep("b", 32001) }
      assert.are.equal("prompt", err.param)
    end
    assert.are.equal(2, #H.api_requests(emu))
    emu:stop()
    H.rmtree(dir)
  end)

  it("give OpenAI its own key variable, and Azure its key and endpoint variables", function()
    local emu = H.emulator { provider = "openai" }
    local out = child("OPENAI_API_KEY=" .. emu.key, string.format([[
      local c = require("imgedit").new{ base_url = %q, provider = "openai" }
      local img, err = c:generate{ prompt = "k" }
      io.write(img and "ok" or tostring(err))]], emu.url))
    assert.are.equal("ok", out)
    emu:stop()
    local az = H.emulator { provider = "azure" }
    out = child("AZURE_OPENAI_API_KEY=" .. az.key .. " AZURE_OPENAI_ENDPOINT=" .. az.url, [[
      local c = require("imgedit").new{ provider = "azure", deployment = "img" }
      local img, err = c:generate{ prompt = "k" }
      io.write(img and "ok" or tostring(err))]])
    assert.are.equal("ok", out)
    assert.matches("needs base_url %(its resource endpoint%) or AZURE_OPENAI_ENDPOINT",
      child("", 'require("imgedit").new{ provider = "azure" }'))
    az:stop()
  end)

  -- One script, run against the emulator as each provider: only the
  -- provider (and its address) changes. Each case is tried twice: with the
  -- client's checks, and sent unchecked (_no_checks) so the emulator playing
  -- that provider gives its own verdict; the two must agree, and a local
  -- refusal sends nothing.
  describe("one script, every provider", function()
    local dir, files
    lazy_setup(function()
      dir = H.tmpdir()
      local small = H.write(dir .. "/s.png", H.png(64, 64))
      local list = function(n)
        local t = {}
        for i = 1, n do t[i] = small end
        return t
      end
      -- A PNG of `bytes` whose header says w x h RGBA: read, never decoded.
      local function png_of(name, bytes, w, h)
        local f = assert(io.open("/dev/urandom", "rb"))
        local data = f:read(bytes)
        f:close()
        local ihdr = H.pack(">I4I4BBBBB", w, h, 8, 6, 0, 0, 0)
        return H.write(dir .. "/" .. name, "\137PNG\r\n\26\n" .. H.png_chunk("IHDR", ihdr) .. H.pack(">I4", #data)
          .. "IDAT" .. data .. "\0\0\0\0" .. H.png_chunk("IEND", ""))
      end
      -- A real w x h PNG mask, clear everywhere (all of it may change), made
      -- `bytes` long by a private ancillary chunk that decoders skip: the
      -- size checks see a big mask, and the mask's figures of an accepted
      -- edit decode it.
      local function mask_of(name, bytes, w, h)
        local png = H.png(w, h, function() return 0 end)
        local pad = H.png_chunk("prVt", string.rep("\0", bytes))
        return H.write(dir .. "/" .. name, png:sub(1, 33) .. pad .. png:sub(34))
      end
      files = {
        six = list(6), sixteen = list(16), seventeen = list(17),
        big = png_of("big.png", math.floor(10.5 * 1024 * 1024), 1024, 1024),
        base = small, mask = mask_of("mask.png", 5 * 1024 * 1024, 64, 64),
        webp = H.write(dir .. "/w.webp", require("imgedit.core").encode(H.rgba(64, 64), 64, 64, "webp")),
      }
    end)
    lazy_teardown(function() H.rmtree(dir) end)

    local CASES = {
      { "6 images", function() return { images = files.six } end },
      { "16 images", function() return { images = files.sixteen } end },
      { "17 images", function() return { images = files.seventeen } end },
      { "a 10.5 MiB image", function() return { images = { files.big } } end },
      { "a 5 MB mask", function() return { images = { files.base }, mask = files.mask } end },
      { "a WebP image", function() return { images = { files.webp } } end },
      { "webp output", function() return { images = { files.base }, output_format = "webp" } end },
      { "a 32001-character prompt", function() return { images = { files.base }, prompt = string.rep("p", 32001) } end },
      { "n = 2", function() return { images = { files.base }, n = 2 } end },
      { "input_fidelity", function() return { images = { files.base }, input_fidelity = "high" } end },
    }
    -- true: accepted (and answered); false: refused, locally and by the service.
    local EXPECT = {
      apiyi = { false, false, false, false, true, true, true, false, false, false },
      openai = { true, true, false, true, false, true, true, false, true, false },
      azure = { true, true, false, true, false, false, false, false, true, false },
      compatible = { true, true, true, true, true, true, true, true, true, true },
    }

    for _, provider in ipairs { "apiyi", "openai", "azure", "compatible" } do
      it("as " .. provider, function()
        local emu = H.emulator { provider = provider }
        local warnings = {}
        local c = imgedit.new { base_url = emu.url, api_key = emu.key, provider = provider, max_retries = 0,
          model = provider == "compatible" and "any-model" or "gpt-image-2", deployment = "images",
          on_warning = function(msg) warnings[#warnings + 1] = msg end }
        for i, case in ipairs(CASES) do
          local req = case[2]()
          req.prompt = req.prompt or "one script"
          req.size = provider == "compatible" and "64x64" or nil
          emu:clear()
          local img, err = c:edit(req)
          local sent = #H.api_requests(emu)
          local want = EXPECT[provider][i]
          if want then
            assert(img, provider .. ", " .. case[1] .. ": " .. tostring(err))
            assert.are.equal(1, sent)
            if req.n then assert.are.equal(1, #img.more, "the second picture is kept") end
            -- an accepted mask is read for the mask's figures: all of it was free to change
            if req.mask then assert.are.equal(0, img.mask_drift, provider .. ", " .. case[1]) end
          else
            assert.is_nil(img, provider .. ", " .. case[1] .. " passed")
            assert.are.equal("invalid_request", err.kind, provider .. ", " .. case[1])
            assert.are.equal(0, sent, provider .. ", " .. case[1] .. " was sent")
            -- the service, asked unchecked, refuses it too
            req._no_checks = true
            emu:clear()
            local img2, err2 = c:edit(req)
            assert.is_nil(img2, provider .. ", " .. case[1] .. ": the emulator accepted what the client refused")
            assert.are.equal(400, err2.status, provider .. ", " .. case[1] .. ": " .. tostring(err2))
            assert.are.equal(1, #H.api_requests(emu))
          end
        end
        assert.are.same({}, warnings)
        if provider == "azure" then
          for _, r in ipairs(emu:requests()) do
            assert.is_true(r.api_key)
            assert.is_false(r.authorization)
          end
        end
        emu:stop()
      end)
    end

    it("name whose rule refused a request, and how to see it", function()
      local c = imgedit.new { base_url = "http://127.0.0.1:1", api_key = "k", provider = "azure" }
      local _, err = c:edit { prompt = "x", images = { files.webp } }
      assert.are.equal("invalid_request", err.kind)
      assert.matches("does not take webp images; use jpeg, png %(azure's rules for gpt%-image%-2: imgedit rules"
        .. " %-%-provider azure %-%-model gpt%-image%-2%)", err.message)
      -- a service of its own has no rules to name
      c = imgedit.new { base_url = "http://127.0.0.1:1", api_key = "k", provider = "compatible" }
      _, err = c:edit { prompt = "x", images = {} }
      assert.are.equal("at least 1 image is required", err.message)
    end)

    it("refuse a retired model with its date and replacement, sending nothing", function()
      for _, provider in ipairs { "openai", "azure" } do
        local emu = H.emulator { provider = provider }
        local c = imgedit.new { base_url = emu.url, api_key = emu.key, provider = provider, max_retries = 0 }
        local img, err = c:generate { prompt = "x", model = "dall-e-3" }
        assert.is_nil(img)
        assert.are.equal("invalid_request", err.kind)
        assert.matches("dall%-e%-3 was shut down on 2026%-05%-12; use gpt%-image%-2", err.message)
        assert.are.equal(0, #H.api_requests(emu))
        -- the service says so too
        img, err = c:generate { prompt = "x", model = "dall-e-3", _no_checks = true }
        assert.are.equal(404, err.status)
        assert.are.equal("model_not_found", err.code)
        emu:stop()
      end
    end)
  end)

  describe("asking what is accepted", function()
    it("from Lua: imgedit.rules and client:rules", function()
      local R = imgedit.rules
      assert.are.equal(16, R.get("openai", "gpt-image-2").max_images)
      assert.are.equal(5, R.get("apiyi", "gpt-image-2").max_images)
      assert.is_nil(R.get("azure", "gpt-image-2").image_formats.webp)
      -- a known model on an unrecognised host: its maker's rules; another name: the generic ones
      assert.are.equal(16, R.get("compatible", "gpt-image-2").max_images)
      assert.are.equal(32000, R.get("compatible", "gpt-image-2").max_prompt)
      assert.is_nil(R.get("compatible", "my-local-model").max_images)
      assert.is_nil(R.get("compatible", "gpt-image-2-all").max_images)
      assert.are.equal(32000, R.get("apiyi", "gpt-image-2").max_prompt)
      assert.are.same({ "gpt-image-2", "gpt-image-2-all" }, R.models("apiyi"))
      assert.has_error(function() R.get("azur", "gpt-image-2") end)
      local c = imgedit.new { provider = "openai", api_key = "k", limits = { max_images = 3 } }
      assert.are.equal(3, c:rules().max_images)
      assert.are.equal(32000, c:rules().max_prompt)
      assert.are.equal(1000, c:rules("dall-e-2").max_prompt)
      local rows = {}
      for _, row in ipairs(R.describe(c:rules())) do rows[row[1]] = row[2] end
      assert.are.equal("1 to 3, png, jpeg or webp, each under 50 MB", rows.images)
      assert.matches("under 4 MB", rows.mask)
    end)

    it("from the shell: imgedit rules", function()
      local function run(env, args) return shell(env, "bin/imgedit rules " .. args) end
      local out = run("", "--provider openai --model gpt-image-2")
      assert.matches("provider openai", out)
      assert.matches("images%s+1 to 16, png, jpeg or webp, each under 50 MB", out)
      assert.matches("exit=0", out)
      -- the provider from the base url's host, and every model without --model
      out = run("IMGEDIT_BASE_URL=https://my.openai.azure.com", "")
      assert.matches("provider azure", out)
      assert.matches("dall%-e%-3\n%s+shutdown%s+shut down on 2026%-05%-12", out)
      assert.matches("images%s+1 to 16, jpeg or png", out)
      out = run("", "--json --provider apiyi --model gpt-image-2")
      local t = require("cjson").decode(out:match("^(.-)\nexit="))
      assert.are.equal(5, t.models["gpt-image-2"].max_images)
      assert.matches("exit=2", run("", "--provider nope"))
    end)
  end)

  describe("answers with several pictures", function()
    it("keep every paid one: Images in img.more, urls to download", function()
      local emu = H.emulator { provider = "compatible" }
      local c = imgedit.new { base_url = emu.url, api_key = emu.key, model = "local-model" }
      local img = assert(c:generate { prompt = "three", n = 3, size = "64x64" })
      assert.are.equal(2, #img.more)
      assert.is_true(imgedit.is_image(img.more[1]) and imgedit.is_image(img.more[2]))
      assert.are_not.equal(img.sha256, img.more[1].sha256)
      assert.are.equal(1, #H.api_requests(emu))
      -- answered as urls: the first is downloaded, the others wait for the caller
      emu:clear()
      img = assert(c:generate { prompt = "urls", n = 2, size = "64x64", response_format = "url" })
      assert.are.equal(1, #img.more)
      assert.matches("^http://127%.0%.0%.1:%d+/files/", img.more[1].url)
      local second = assert(c:download(img.more[1]))
      assert.are_not.equal(img.sha256, second.sha256)
      assert.are.equal(1, #H.api_requests(emu), "the second picture is fetched, not made again")
      emu:stop()
    end)
  end)

  describe("moderation refusals", function()
    it("read as kind moderation in OpenAI's words and in Azure's", function()
      for _, provider in ipairs { "openai", "azure" } do
        local emu = H.emulator { provider = provider }
        local c = imgedit.new { base_url = emu.url, api_key = emu.key, provider = provider, max_retries = 2 }
        emu:inject { moderation = true }
        local img, err = c:generate { prompt = "x" }
        assert.is_nil(img)
        assert.are.equal("moderation", err.kind, provider)
        assert.are.equal(provider == "azure" and "contentFilter" or "moderation_blocked", err.code)
        assert.is_false(err.retryable)
        assert.are.equal(1, #H.api_requests(emu), "a refusal is not sent again")
        emu:stop()
      end
    end)
  end)

  describe("shutdown dates", function()
    local function day(offset) return os.date("!%Y-%m-%d", os.time() + offset * 86400) end

    it("warn once per client within 90 days, and refuse from the day itself", function()
      local emu = H.emulator { provider = "openai" }
      local said = {}
      local c = imgedit.new { base_url = emu.url, api_key = emu.key, provider = "openai", model = "gpt-image-1",
        on_warning = function(msg) said[#said + 1] = msg end,
        limits = { shutdown = { date = day(30), replacement = "gpt-image-2" } } }
      assert(c:generate { prompt = "soon" })
      assert(c:generate { prompt = "soon again" })
      assert.are.equal(1, #said)
      assert.matches("gpt%-image%-1 shuts down on " .. day(30):gsub("%-", "%%-") .. " %(in 30 days%); use gpt%-image%-2",
        said[1])
      -- far off: no warning; today: refused
      local far = imgedit.new { base_url = emu.url, api_key = emu.key, provider = "openai", model = "gpt-image-1",
        on_warning = function(msg) said[#said + 1] = msg end,
        limits = { shutdown = { date = day(200), replacement = "x" } } }
      assert(far:generate { prompt = "far" })
      assert.are.equal(1, #said)
      local gone = imgedit.new { base_url = emu.url, api_key = emu.key, provider = "openai", model = "gpt-image-1",
        limits = { shutdown = { date = day(0), replacement = "gpt-image-2" } } }
      local img, err = gone:generate { prompt = "gone" }
      assert.is_nil(img)
      assert.matches("was shut down on " .. day(0):gsub("%-", "%%-"), err.message)
      assert.are.equal(3, #H.api_requests(emu))
      emu:stop()
    end)

    it("go to stderr when no on_warning is given", function()
      local emu = H.emulator { provider = "openai" }
      local out = child("", string.format([[
        local c = require("imgedit").new{ base_url = %q, api_key = %q, provider = "openai", model = "gpt-image-1",
          limits = { shutdown = { date = %q, replacement = "gpt-image-2" } } }
        assert(c:generate{ prompt = "a" }) assert(c:generate{ prompt = "b" }) io.write("done")]],
        emu.url, emu.key, day(10)))
      local _, n = out:gsub("imgedit: warning: gpt%-image%-1 shuts down on", "")
      assert.are.equal(1, n, out)
      assert.matches("done$", out)
      emu:stop()
    end)
  end)

  describe("Azure", function()
    local az, dir
    lazy_setup(function() az, dir = H.emulator { provider = "azure" }, H.tmpdir() end)
    lazy_teardown(function() az:stop() H.rmtree(dir) end)
    before_each(function() az:clear() end)

    it("sends edits and generations to the deployment, with api-key and never Authorization", function()
      local c = imgedit.new { provider = "azure", base_url = az.url, api_key = az.key, deployment = "my-image",
        model = "gpt-image-1" }
      assert.are.equal("azure", c.provider)
      assert(c:edit { prompt = "az", images = { H.write(dir .. "/in.png", H.png(64, 64)) } })
      assert(c:generate { prompt = "az" })
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

    it("takes the resource endpoint, and refuses a v1 or deployment url with that advice", function()
      for _, url in ipairs { az.url .. "/openai/v1", az.url .. "/openai/v1/", az.url .. "/openai/deployments/x" } do
        local ok, msg = pcall(imgedit.new, { provider = "azure", base_url = url, api_key = "k" })
        assert.is_false(ok)
        assert.matches("takes the resource endpoint as base_url", msg)
      end
      assert.matches("^imgedit.client%(azure, ", tostring(imgedit.new { provider = "azure", base_url = az.url }))
    end)

    it("refuses --background transparent with a .jpg output before sending, and takes .png", function()
      local env = "IMGEDIT_API_KEY=" .. az.key .. " IMGEDIT_BASE_URL=" .. az.url .. " IMGEDIT_PROVIDER=azure"
      local text = shell(env, "bin/imgedit generate -q --model gpt-image-1 --background transparent -p t -o '"
        .. dir .. "/t.jpg'")
      assert.matches("%-%-background transparent needs png output, but %-o .*t%.jpg asks for jpeg; name the output %.png",
        text)
      assert.matches("exit=2", text)
      assert.are.equal(0, #H.api_requests(az))
      text = shell(env, "bin/imgedit generate -q --model gpt-image-1 --background transparent -p t -o '"
        .. dir .. "/t.png'")
      assert.matches("exit=0", text)
      assert.are.equal(1, #H.api_requests(az))
    end)

    it("names the deployment after the model when none is given, and takes api_version", function()
      local c = imgedit.new { provider = "azure", base_url = az.url, api_key = az.key, model = "gpt-image-1",
        api_version = "2025-06-01" }
      assert(c:generate { prompt = "az" })
      local r = H.api_requests(az)[1]
      assert.are.equal("/openai/deployments/gpt-image-1/images/generations", r.path)
      assert.are.equal("2025-06-01", r.api_version)
    end)

    it("is reached from the command line with --provider and --deployment", function()
      local out = dir .. "/cli.png"
      local text = shell("IMGEDIT_API_KEY=" .. az.key .. " IMGEDIT_BASE_URL=" .. az.url,
        "bin/imgedit generate -q --provider azure --deployment cli-dep --model gpt-image-1 -p cli -o '" .. out .. "'")
      assert.matches("exit=0", text)
      assert.is_true(H.exists(out))
      assert.are.equal("/openai/deployments/cli-dep/images/generations", H.api_requests(az)[1].path)
    end)

    it("refuses a wrong key in Azure's words, and a client without provider sends Bearer and fails", function()
      local c = imgedit.new { provider = "azure", base_url = az.url, api_key = "sk-wrong-key", model = "gpt-image-1" }
      local img, err = c:generate { prompt = "az" }
      assert.is_nil(img)
      assert.are.equal("auth", err.kind)
      assert.matches("Access denied due to invalid subscription key", err.message)
      assert.is_nil(err.message:find("sk-wrong-key", 1, true))
      -- the same address as a generic service: /images/... and Bearer, which Azure does not take
      local plain = imgedit.new { base_url = az.url, api_key = az.key, model = "gpt-image-1", max_retries = 0 }
      assert.are.equal("compatible", plain.provider)
      img, err = plain:generate { prompt = "az" }
      assert.is_nil(img)
      assert.are.equal(401, err.status)
    end)
  end)
end)
