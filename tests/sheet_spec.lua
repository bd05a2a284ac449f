-- The contact sheet and the cost in money: a pipeline with a chain, a
-- stream, a fan-out and a fused branch, its page checked as text and then
-- rendered in headless Chromium (skipped, and counted, where it is missing).
local H = require "helpers"
local imgedit = require "imgedit"
local core = require "imgedit.core"

local function chromium()
  for _, name in ipairs { "chromium", "chromium-browser" } do
    if H.ok("command -v " .. name .. " >/dev/null 2>&1") then return name end
  end
end

-- browse(page, width, height, dir, what) -> the DOM after load, or the screenshot's path
local function browse(browser, page, w, h, dir, shot)
  local cmd = string.format("%s --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run"
    .. " --user-data-dir=%s/chrome --window-size=%d,%d %s file://%s 2>/dev/null", browser, dir, w, h,
    shot and ("--screenshot=" .. shot) or "--dump-dom", page)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local function abs(path)
  if path:sub(1, 1) == "/" then return path end
  local p = io.popen("pwd")
  local cwd = p:read("*l")
  p:close()
  return cwd .. "/" .. path
end

describe("the contact sheet", function()
  local emu, dir, out, page, r
  H.world(function(e, d) emu, dir = e, d end)

  lazy_setup(function()
    out = dir .. "/run"
    H.write(dir .. "/in.png", H.png(96, 64))
    local c = H.client(emu)
    local p = imgedit.pipeline { client = c, dir = out, cache = dir .. "/cache", quiet = true }
    local a = assert(p:edit("portrait", { prompt = "a warm portrait <b>&</b> \"quoted\"", images = { dir .. "/in.png" },
      size = "1024x1024", quality = "low" }))
    local b = assert(p:edit("dusk", { prompt = "replace the sky with dusk", images = { a }, stream = true,
      partial_images = 2 }))
    local v = assert(p:fan_out("style", { { prompt = "watercolor", images = { b } }, { prompt = "pixel art", images = { b } } }))
    assert(p:branch("alt"):edit("fused", { prompt = "fuse the two styles", images = { v[1], v[2] } }))
    r = p:report { html = out .. "/index.html", quiet = true }
    page = H.read(out .. "/index.html")
  end)

  it("is one self-contained page: every step, its prompt, model, chain and cost, no network", function()
    assert.are.equal(out .. "/index.html", r.html)
    for _, name in ipairs { "portrait", "dusk", "style-1", "style-2", "alt/fused" } do
      assert.truthy(page:find(">" .. name .. "<", 1, true), name)
    end
    -- text is escaped, never markup
    assert.truthy(page:find("a warm portrait &lt;b&gt;&amp;&lt;/b&gt; &quot;quoted&quot;", 1, true))
    assert.falsy(page:find("<b>&</b>", 1, true))
    assert.falsy(page:find("https?://"))
    assert.falsy(page:find("<link", 1, true))
    -- the chain: dusk comes from portrait, the fused step from both styles
    assert.truthy(page:find('from</dt><dd><a href="#step-portrait">portrait</a>', 1, true))
    assert.truthy(page:find('<a href="#step-style-1">style-1</a>, <a href="#step-style-2">style-2</a>', 1, true))
    assert.truthy(page:find("quality=low, size=1024x1024", 1, true))
    assert.truthy(page:find("paid now", 1, true))
    -- every picture by a relative path that exists, the stream's partials too
    local n = 0
    for src in page:gmatch('src="([^"]+)"') do
      assert.falsy(src:find("^/"), src)
      assert.is_true(H.exists(out .. "/" .. src), src)
      n = n + 1
    end
    assert.are.equal(5 * 2 + 2, n) -- each step in the chain and in the grid, and two partials
    assert.truthy(page:find("dusk.partial-0.png", 1, true))
  end)

  it("imgedit report dir/ writes dir/index.html and says so, without a doubled slash", function()
    local out_text, code = H.sh(H.CHILD .. H.LUA .. " bin/imgedit report '" .. out .. "/'")
    assert.are.equal(0, code, out_text)
    assert.are.equal("contact sheet: " .. out .. "/index.html (5 steps)\n", out_text)
    local json = H.sh(H.CHILD .. H.LUA .. " bin/imgedit report --json '" .. out .. "//'")
    assert.are.equal(out .. "/index.html", require("cjson").decode(json).html)
    -- the page's pictures resolve from the folder, as without the slash
    for src in H.read(out .. "/index.html"):gmatch('src="([^"]+)"') do
      assert.is_nil(src:find("//", 1, true), src)
      assert.is_true(H.exists(out .. "/" .. src), src)
    end
  end)

  it("says what came from the cache on a re-run, and imgedit report writes it anywhere", function()
    emu:clear()
    local p = imgedit.pipeline { client = H.client(emu), dir = out, cache = dir .. "/cache", quiet = true }
    local a = assert(p:edit("portrait", { prompt = "a warm portrait <b>&</b> \"quoted\"", images = { dir .. "/in.png" },
      size = "1024x1024", quality = "low" }))
    assert.is_true(a.cached)
    assert.are.equal(0, #H.api_requests(emu))
    -- the sheet of the folder, from the shell, in another folder: paths still resolve
    core.mkdir_p(dir .. "/elsewhere")
    assert.is_true(H.ok(H.CHILD .. H.LUA .. " bin/imgedit report '" .. out .. "' -o '" .. dir .. "/elsewhere/sheet.html' >/dev/null"))
    local other = H.read(dir .. "/elsewhere/sheet.html")
    assert.truthy(other:find('class="badge cached">cached', 1, true))
    for src in other:gmatch('src="([^"]+)"') do
      assert.is_true(H.exists(dir .. "/elsewhere/" .. src), src)
    end
    -- a relative folder, and a page written through .. or at an absolute path
    local root = abs(".")
    local env = "env LUA_PATH='" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;' LUA_CPATH='" .. root .. "/"
      .. H.BUILD .. "/?.so;;' "
    local sibling = dir:match("[^/]+$") .. "-side"
    core.mkdir_p(dir .. "/../" .. sibling)
    core.mkdir_p(dir .. "/side")
    for _, o in ipairs { "../" .. sibling .. "/a.html", dir .. "/side/b.html" } do
      assert.is_true(H.ok("cd '" .. dir .. "' && " .. env .. H.LUA .. " " .. root .. "/bin/imgedit report run -o '" .. o
        .. "' >/dev/null"))
    end
    for _, f in ipairs { dir .. "/../" .. sibling .. "/a.html", dir .. "/side/b.html" } do
      local text, n = H.read(f), 0
      for src in text:gmatch('src="([^"]+)"') do
        assert.is_true(H.exists(f:match("^(.*)/") .. "/" .. src), f .. ": " .. src)
        n = n + 1
      end
      assert.are.equal(12, n)
    end
    os.execute("rm -rf '" .. dir .. "/../" .. sibling .. "'")
    -- the pipeline's own sheet shows this run's steps only, the cached one marked as paid earlier
    local r2 = p:report { html = dir .. "/one.html", quiet = true }
    local one = H.read(r2.html)
    assert.truthy(one:find(">portrait<", 1, true))
    assert.falsy(one:find(">dusk<", 1, true))
    assert.truthy(one:find("paid earlier: $0.0", 1, true))
    assert.truthy(one:find("<dt>paid now</dt><dd>$0.0000</dd>", 1, true))
  end)

  local browser = chromium()
  local test = browser and it
    or function(name) it(name, function() pending("needs a browser (the Debian package chromium)") end) end

  test("renders in headless Chromium at 1280 px and on a phone: every picture loaded, not blank, no overflow", function()
    local file = abs(out .. "/index.html")
    for _, size in ipairs { { 1280, 900 }, { 390, 844 } } do
      local dom = browse(browser, file, size[1], size[2], dir)
      local images, loaded = dom:match('data%-images="(%d+)" data%-loaded="(%d+)"')
      assert.are.equal("12", images, dom:sub(1, 300))
      assert.are.equal(images, loaded)
      assert.truthy(dom:find('data-broken="0"', 1, true))
      assert.truthy(dom:find('data-overflow="no"', 1, true), "wider than a " .. size[1] .. " px screen")
    end
    local shot = dir .. "/sheet.png"
    browse(browser, file, 1280, 1100, dir, shot)
    local px, w, h = core.decode(H.read(shot))
    assert.are.equal(1280, w)
    -- not blank: many colours, and the pictures' own (the emulator tints
    -- each by its prompt) show on the page
    local colours, n = {}, 0
    for i = 1, #px, 4 * 97 do
      local c = px:sub(i, i + 2)
      if not colours[c] then colours[c], n = true, n + 1 end
    end
    assert.is_true(n > 50, n .. " colours")
    if os.getenv("IMGEDIT_UPDATE_DOCS") then H.write("docs/contact-sheet.png", H.read(shot)) end
    assert.is_true(h >= 1100)
  end)
end)

describe("cost in money", function()
  local emu, dir
  H.world(function(e, d) emu, dir = e, d end)

  it("is on every Image: tokens at the model's prices, or per image", function()
    local img = assert(H.client(emu):generate { prompt = "a", size = "1024x1024", quality = "low" })
    local u = img.usage
    local want = (u.input_tokens_details.text_tokens * 5 + u.input_tokens_details.image_tokens * 8
      + u.output_tokens * 30) / 1e6
    assert.are.equal("tokens", img.cost.basis)
    assert.is_true(math.abs(img.cost.usd - want) < 1e-12)
    local all = assert(H.all_client(emu):generate(H.small()))
    assert.are.same({ usd = 0.03, basis = "per_image" }, all.cost)
    -- a price of one's own, and a model with none
    local own = assert(H.client(emu, { prices = { ["gpt-image-2"] = { per_image = 0.5 } } }):generate { prompt = "b" })
    assert.are.equal(0.5, own.cost.usd)
    for _, bad in ipairs { { x = 3 }, { x = { text_in = 1 } }, { x = { text_inn = 1, image_in = 1, image_out = 1 } },
      { x = { per_image = "x" } }, { x = { per_image = -1 } }, { x = { per_image = 1, text_in = 1 } } } do
      assert.has_error(function() H.client(emu, { prices = bad }) end)
    end
    local ok, msg = pcall(H.client, emu, { prices = { x = { text_inn = 1, image_in = 1, image_out = 1 } } })
    assert.is_false(ok)
    assert.matches("unknown rate 'text_inn'", msg)
    local c = imgedit.new { base_url = emu.url, api_key = emu.key, provider = "compatible", model = "gpt-image-2" }
    assert.is_nil(assert(c:generate { prompt = "c" }).cost)
  end)

  it("keeps a pipeline's budget in usd, refusing before anything is sent", function()
    local p = imgedit.pipeline { client = H.client(emu), dir = dir .. "/b", cache = false, quiet = true,
      budget = { usd = 0.05 } }
    assert(p:generate("one", { prompt = "one", size = "1024x1024", quality = "low" }))
    local n = #H.api_requests(emu)
    local img, err = p:fan_out("many", { { prompt = "x" }, { prompt = "y" }, { prompt = "z" } }, { kind = "generate" })
    assert.is_nil(img)
    assert.are.equal("budget", err.kind)
    assert.matches("would cost up to %$", err.message)
    assert.are.equal(n, #H.api_requests(emu))
    local r = p:report { quiet = true }
    assert.is_true(r.usd > 0 and r.usd < 0.05)
    -- each kind of token at its own rate: a low-quality edit fits a budget of twice its cost
    H.write(dir .. "/small.png", H.png(64, 64))
    local tight = imgedit.pipeline { client = H.client(emu), dir = dir .. "/t", cache = false, quiet = true,
      budget = { usd = 0.02 } }
    local low = assert(tight:edit("low", { prompt = "low", images = { dir .. "/small.png" }, size = "1024x1024",
      quality = "low" }))
    assert.is_true(low.cost.usd < 0.012)
    -- no price known: a budget in usd cannot be kept, and says so
    local q = imgedit.pipeline { client = imgedit.new { base_url = emu.url, api_key = emu.key, provider = "compatible" },
      dir = dir .. "/c", cache = false, quiet = true, budget = { usd = 1 } }
    img, err = q:generate("x", { prompt = "x" })
    assert.is_nil(img)
    assert.matches("no price is known for gpt%-image%-2", err.message)
  end)

  it("is in the CLI's --json and the step's sidecar", function()
    local outp = dir .. "/cli.png"
    local p = io.popen("IMGEDIT_BASE_URL=" .. emu.url .. " IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_PROVIDER=apiyi "
      .. H.CHILD .. H.LUA .. " bin/imgedit generate -q --json -p cost -o '" .. outp .. "' --size 1024x1024 --quality low")
    local t = require("cjson").decode(p:read("*a"))
    p:close()
    assert.is_true(t.ok)
    assert.is_true(t.cost.usd > 0)
    local pl = imgedit.pipeline { client = H.client(emu), dir = dir .. "/s", cache = false, quiet = true }
    assert(pl:generate("g", { prompt = "g", size = "1024x1024", quality = "low" }))
    local side = require("cjson").decode(H.read(dir .. "/s/g.json"))
    assert.are.equal("tokens", side.cost.basis)
  end)
end)
