-- Masks that hold: drift and spill figures, and preserve's composite.
local H = require "helpers"
local core = require "imgedit.core"
local imgedit = require "imgedit"

-- A picture from f(x, y) -> r, g, b [, a].
local function picture(w, h, f)
  local t = {}
  for y = 0, h - 1 do
    for x = 0, w - 1 do
      local r, g, b, a = f(x, y)
      t[#t + 1] = string.char(r, g, b, a or 255)
    end
  end
  return table.concat(t)
end

local function px_at(px, w, x, y)
  local i = (y * w + x) * 4
  return px:byte(i + 1, i + 4)
end

-- A busy base: neighbouring pixels differ, so a misplaced pixel shows.
local function base_fn(x, y) return (x * 37 + y * 11) % 200 + 20, (x * 5 + y * 23) % 180 + 40, (x * y) % 160 + 50 end

local W, H_ = 64, 64
-- The edit area: the square [16, 48) x [16, 48).
local function in_edit(x, y) return x >= 16 and x < 48 and y >= 16 and y < 48 end
-- Distance from an edit pixel to the nearest kept one.
local function depth(x, y) return math.min(x - 15, 48 - x, y - 15, 48 - y) end

local function mask_png() return assert(imgedit.mask.rect { width = W, height = H_, x = 16, y = 16, w = 32, h = 32 }) end

local function bytes(px, w, h, fmt) return { bytes = assert(core.encode(px, w, h, fmt or "png", 92)) } end

describe("mask drift and spill", function()
  it("count the kept pixels that changed past the tolerance, and the edit pixels left alone", function()
    local base = picture(W, H_, base_fn)
    local kept, moved, nudged, edit, left = 0, 0, 0, 0, 0
    local answer = picture(W, H_, function(x, y)
      local r, g, b = base_fn(x, y)
      if in_edit(x, y) then
        edit = edit + 1
        if x < 24 then left = left + 1 return r, g, b end -- the model left a strip alone
        return 255 - r, g, 0
      end
      kept = kept + 1
      if (x + y * W) % 10 == 0 then moved = moved + 1 return r, math.min(g + 60, 255), b end -- changed
      if (x + y * W) % 10 == 5 then nudged = nudged + 1 return r, g, b + 20 end -- within 30
      return r, g, b
    end)
    local r = assert(imgedit.mask.compare(bytes(answer, W, H_), bytes(base, W, H_), mask_png()))
    assert.are.same({ kept, moved, edit, left }, { r.keep, r.drifted, r.edit, r.unchanged })
    assert.are.equal(moved / kept, r.drift)
    assert.are.equal(left / edit, r.spill)
    assert.are.equal(0.25, r.spill)
    assert.is_false(r.scaled)
    -- a tighter tolerance counts the nudged pixels too
    local tight = assert(imgedit.mask.compare(bytes(answer, W, H_), bytes(base, W, H_), mask_png(), { tolerance = 10 }))
    assert.are.equal((moved + nudged) / kept, tight.drift)
    -- an answer equal to image 1: no drift, all spill
    local same = assert(imgedit.mask.compare(bytes(base, W, H_), bytes(base, W, H_), mask_png()))
    assert.are.same({ 0, 1 }, { same.drift, same.spill })
  end)

  it("names the picture that cannot be read, and refuses bad options", function()
    local base = bytes(picture(8, 8, base_fn), 8, 8)
    local _, err = imgedit.mask.compare({ bytes = "\137PNG\r\n\26\n garbage" }, base, mask_png())
    assert.are.equal("invalid_request", err.kind)
    assert.matches("the answer", err.message)
    _, err = imgedit.mask.compare(base, { bytes = "GIF89a" }, mask_png())
    assert.matches("image 1", err.message)
    assert.has_error(function() imgedit.mask.compare(base, base, mask_png(), { tolerance = 300 }) end,
      "bad option 'tolerance' (a whole number from 0 to 255 expected)")
    assert.has_error(function() imgedit.mask.preserve(base, base, mask_png(), { feather = -1 }) end)
  end)
end)

describe("preserve", function()
  local base = picture(W, H_, base_fn)
  local answer = picture(W, H_, function(x, y)
    local r, g, b = base_fn(x, y)
    if in_edit(x, y) then return 250, 10, (x * 7) % 256 end
    return math.min(r + 9, 255), g, math.max(b - 40, 0) -- the model redrew the kept area too
  end)

  it("keeps image 1 exactly outside the mask, the answer inside, and a seam of feather pixels", function()
    for _, feather in ipairs { 0, 1, 4, 7 } do
      local img = assert(imgedit.mask.preserve(bytes(answer, W, H_), bytes(base, W, H_), mask_png(), { feather = feather }))
      assert.are.same({ "png", W, H_ }, { img.format, img.width, img.height })
      assert.are.same({ feather = feather, scaled = false }, img.preserved)
      assert.is_true(img.mask_drift > 0.99) -- the raw answer changed every kept pixel
      local out = core.decode(img.bytes)
      local seam = 0
      for y = 0, H_ - 1 do
        for x = 0, W - 1 do
          local got = { px_at(out, W, x, y) }
          if not in_edit(x, y) then
            assert.are.same({ px_at(base, W, x, y) }, got, "kept pixel " .. x .. "," .. y)
          elseif depth(x, y) > feather then
            assert.are.same({ px_at(answer, W, x, y) }, got, "edit pixel " .. x .. "," .. y)
          else
            -- in the seam: between image 1 and the answer, channel by channel
            local b, a = { px_at(base, W, x, y) }, { px_at(answer, W, x, y) }
            for c = 1, 3 do
              assert.is_true(got[c] >= math.min(a[c], b[c]) and got[c] <= math.max(a[c], b[c]))
            end
            if got[1] ~= a[1] and got[1] ~= b[1] then seam = seam + 1 end
          end
        end
      end
      if feather > 0 then assert.is_true(seam > 0, "a blended seam") end
    end
  end)

  it("takes the answer's pixels when they are decoded already, and gives a PNG composite's back", function()
    local red = string.rep("\250\10\10\255", W * H_)
    -- the pixels given are used, not the bytes decoded again (they differ here on purpose)
    local a, b, m = bytes(answer, W, H_).bytes, bytes(base, W, H_).bytes, mask_png().bytes
    local r = assert(core.inpaint(a, b, m,
      { preserve = true, feather = 0, answer_rgba = red, width = W, height = H_, keep_rgba = true }))
    local out = core.decode(r.bytes)
    assert.are.equal(out, r.rgba) -- the PNG holds exactly the pixels handed back
    for _, xy in ipairs { { 20, 20 }, { 30, 40 } } do
      local i = (xy[2] * W + xy[1]) * 4
      assert.is_true(in_edit(xy[1], xy[2]))
      assert.are.equal("\250\10\10\255", out:sub(i + 1, i + 4))
    end
    -- pixels of another size are refused, not read past their end
    assert.has_error(function()
      core.inpaint(a, b, m, { answer_rgba = "xx", width = W, height = H_ })
    end)
    -- a JPEG composite's pixels are what its bytes decode to, so none are handed back
    local j = assert(core.inpaint(core.encode(answer, W, H_, "jpeg"), b, m,
      { preserve = true, keep_rgba = true }))
    assert.is_nil(j.rgba)
  end)

  it("the seam fades with distance: nearer the kept area, nearer image 1", function()
    local img = assert(imgedit.mask.preserve(bytes(answer, W, H_), bytes(base, W, H_), mask_png(), { feather = 6 }))
    local out = core.decode(img.bytes)
    -- along row 32, from the left edge of the edit area inwards: the share of
    -- image 1 falls step by step
    local last = 1
    for x = 16, 22 do
      local b, a, g = px_at(base, W, x, 32), px_at(answer, W, x, 32), px_at(out, W, x, 32)
      local share = (g - a) / (b - a)
      assert.is_true(share <= last + 1e-9, "x " .. x)
      last = share
    end
    assert.are.equal(0, last)
  end)

  it("keeps the answer's format: png, jpeg and webp (lossless stays lossless)", function()
    local smooth = picture(W, H_, function(x, y) return x * 3, y * 3, 128 end)
    for _, case in ipairs { { "png" }, { "jpeg", 6 }, { "webp", 10 }, { "webp-lossless" } } do
      local fmt, err_max = case[1], case[2] or 0
      local ans
      if fmt == "webp-lossless" then
        ans = { bytes = assert(core.encode(answer, W, H_, "webp", 90, true)) }
      else
        ans = bytes(answer, W, H_, fmt)
      end
      local img = assert(imgedit.mask.preserve(ans, bytes(smooth, W, H_), mask_png()))
      assert.are.equal(fmt == "webp-lossless" and "webp" or fmt, img.format)
      if fmt == "webp-lossless" then assert.are.equal("VP8L", img.bytes:sub(13, 16)) end
      local out = core.decode(img.bytes)
      local worst = 0
      for y = 0, H_ - 1, 3 do
        for x = 0, W - 1, 3 do
          if not in_edit(x, y) and (x < 12 or x > 52 or y < 12 or y > 52) then -- away from the edit area's edge
            local a, b = { px_at(out, W, x, y) }, { px_at(smooth, W, x, y) }
            for c = 1, 3 do worst = math.max(worst, math.abs(a[c] - b[c])) end
          end
        end
      end
      assert.is_true(worst <= err_max, fmt .. ": kept pixels off by " .. worst)
    end
  end)

  it("scales image 1 and the mask to the answer's size when theirs differ", function()
    -- image 1 and its mask at 48x32; the answer at twice that, then a mask at half
    local smooth = picture(48, 32, function(x, y) return x * 5, y * 7, 100 end)
    local mask = assert(imgedit.mask.rect { width = 48, height = 32, x = 12, y = 8, w = 24, h = 16 })
    local big = picture(96, 64, function() return 0, 255, 0 end)
    local img = assert(imgedit.mask.preserve(bytes(big, 96, 64), bytes(smooth, 48, 32), mask))
    assert.are.same({ 96, 64, true }, { img.width, img.height, img.preserved.scaled })
    local out = core.decode(img.bytes)
    for _, p in ipairs { { 4, 4 }, { 90, 10 }, { 10, 60 }, { 60, 58 } } do -- kept: image 1 scaled
      local r, g, b = px_at(out, 96, p[1], p[2])
      assert.is_true(math.abs(r - p[1] / 2 * 5) <= 6 and math.abs(g - p[2] / 2 * 7) <= 8 and math.abs(b - 100) <= 2,
        string.format("%d,%d: %d %d %d", p[1], p[2], r, g, b))
    end
    assert.are.same({ 0, 255, 0, 255 }, { px_at(out, 96, 48, 32) }) -- edit: the answer
    -- a mask of another size than both: scaled too
    local half = assert(imgedit.mask.rect { width = 24, height = 16, x = 6, y = 4, w = 12, h = 8 })
    local r = assert(imgedit.mask.compare(bytes(big, 96, 64), bytes(smooth, 48, 32), half))
    assert.is_true(r.scaled)
    -- a hard mask stays hard: its rectangle, scaled (corners within a pixel)
    assert.is_true(math.abs(r.edit - 48 * 32) <= 8, "edit area " .. r.edit)
  end)
end)

-- H.world with image 1 (the busy base) and its mask written in the folder.
local function photo_world(set)
  H.world(function(e, d)
    set(e, d, H.write(d .. "/photo.png", core.encode(picture(W, H_, base_fn), W, H_, "png")),
      H.write(d .. "/mask.png", mask_png().bytes))
  end)
end

describe("an edit with a mask, through the emulator", function()
  local emu, dir, photo, mask
  photo_world(function(e, d, p, m) emu, dir, photo, mask = e, d, p, m end)

  local function edit(extra, opts)
    local warnings = {}
    local o = { on_warning = function(m) warnings[#warnings + 1] = m end }
    for k, v in pairs(opts or {}) do o[k] = v end
    local req = H.small { images = { photo }, mask = mask, prompt = "a red door" }
    for k, v in pairs(extra or {}) do req[k] = v end
    local img, err = H.all_client(emu, o):edit(req)
    return img, err, warnings
  end

  it("says how far the answer strayed: mask_drift and mask_spill, one request", function()
    local img, err, warnings = edit()
    assert(img, tostring(err))
    -- the emulator lands its edit area a pixel off the mask's, as the service may
    assert.is_true(img.mask_drift > 0 and img.mask_drift < 0.05, tostring(img.mask_drift))
    assert.is_true(img.mask_spill > 0 and img.mask_spill < 0.2, tostring(img.mask_spill))
    assert.is_nil(img.preserved)
    assert.are.same({}, warnings)
    assert.are.equal(1, #H.api_requests(emu))
    -- the same figures as compare() of the picture against the files
    local r = assert(imgedit.mask.compare(img, photo, mask))
    assert.are.same({ r.drift, r.spill }, { img.mask_drift, img.mask_spill })
  end)

  -- on_caller(fn, ...) -> how many decodes and inpaints the caller's thread
  -- ran while fn ran (core.decode, core.inpaint: where Lua would do them),
  -- then fn's results.
  local function on_caller(fn, ...)
    local n = { decode = 0, inpaint = 0 }
    local real_decode, real_inpaint = core.decode, core.inpaint
    core.decode = function(...) n.decode = n.decode + 1 return real_decode(...) end
    core.inpaint = function(...) n.inpaint = n.inpaint + 1 return real_inpaint(...) end
    local ok, img, err = pcall(fn, ...)
    core.decode, core.inpaint = real_decode, real_inpaint
    assert(ok, img)
    return n, img, err
  end

  it("with decode = \"rgba\": the decoder makes the composite and hands its pixels over as a buffer", function()
    local n, img, err = on_caller(edit, { preserve = true }, { decode = "rgba" })
    assert(img, tostring(err))
    assert.are.same({ decode = 0, inpaint = 0 }, n) -- no pixel work on the caller's thread
    assert.is_truthy(img.preserved)
    assert.are.equal("userdata", type(img.buffer)) -- the composite's own pixels, no copy
    assert.are.equal(core.decode(img.bytes), img.pixels)
    assert.are.equal("userdata", type(img.raw.buffer)) -- and the service's picture's
    assert.are.equal(1, #H.api_requests(emu))
  end)

  it("without decode: the mask's figures and the composite are the decoder's too, and no pixels are handed over", function()
    local n, img, err = on_caller(edit)
    assert(img, tostring(err))
    assert.are.same({ decode = 0, inpaint = 0 }, n)
    assert.is_true(img.mask_drift > 0 and img.mask_drift < 0.05, tostring(img.mask_drift))
    assert.is_nil(rawget(img, "buffer"))
    assert.is_nil(img.pixels_error)
    local r = assert(imgedit.mask.compare(img, photo, mask)) -- the same figures, made here
    assert.are.same({ r.drift, r.spill }, { img.mask_drift, img.mask_spill })
    n, img, err = on_caller(edit, { preserve = true })
    assert(img, tostring(err))
    assert.are.same({ decode = 0, inpaint = 0 }, n)
    assert.is_truthy(img.preserved)
    local same = assert(imgedit.mask.preserve(img.raw, photo, mask))
    assert.are.equal(same.bytes, img.bytes) -- what the caller's thread would have made
    assert.is_nil(rawget(img, "buffer"))
    assert.are.equal(2, #H.api_requests(emu))
  end)

  it("a stream's final picture and a url answer's download are composited by the decoder; partials are not", function()
    local n, img, err = on_caller(edit, { preserve = true, stream = true, partial_images = 2,
      on_partial = function(p) assert.is_nil(p.preserved) end })
    assert(img, tostring(err))
    assert.are.same({ decode = 0, inpaint = 0 }, n)
    assert.is_truthy(img.preserved)
    n, img, err = on_caller(edit, { preserve = true, response_format = "url" })
    assert(img, tostring(err))
    assert.matches("^http://", img.url) -- downloaded from the url the answer gave
    assert.are.same({ decode = 0, inpaint = 0 }, n)
    assert.is_truthy(img.preserved)
    assert.are.equal(2, #H.api_requests(emu)) -- the download goes to the CDN, not the API
  end)

  it("warns once the drift passes drift_warning, and not with preserve", function()
    local _, _, warnings = edit(nil, { drift_warning = 0.001 })
    assert.are.equal(1, #warnings)
    assert.matches("changed %d+%.%d%% of the area the mask keeps", warnings[1])
    assert.matches("preserve = true", warnings[1])
    local _, _, quiet = edit({ preserve = true }, { drift_warning = 0.001 })
    assert.are.same({}, quiet)
  end)

  it("preserve: every kept pixel is image 1's, the edit area the service's, in the format asked", function()
    -- gpt-image-2 answers at 1024x1024 at least, in png, jpeg or webp
    -- smooth, as photos are (a busy one is all chroma error in lossy webp),
    -- yet every pixel unlike its neighbours, so a misplaced one shows
    local S = 1024
    local big = picture(S, S, function(x, y) return x % 256, y % 256, (x + 2 * y) % 256 end)
    local big_photo = H.write(dir .. "/big.png", core.encode(big, S, S, "png"))
    local big_mask = H.write(dir .. "/big-mask.png",
      assert(imgedit.mask.rect { width = S, height = S, x = 256, y = 256, w = 512, h = 512 }).bytes)
    local function in_big(x, y) return x >= 256 and x < 768 and y >= 256 and y < 768 end
    local function big_depth(x, y) return math.min(x - 255, 768 - x, y - 255, 768 - y) end
    local shift = math.floor(S / 64) -- the emulator's misplacement
    for _, fmt in ipairs { "png", "jpeg", "webp" } do
      local img, err = H.client(emu):edit { images = { big_photo }, mask = big_mask, prompt = "a red door",
        size = "1024x1024", output_format = fmt, preserve = true }
      assert(img, tostring(err))
      assert.are.equal(fmt, img.format)
      assert.are.equal(fmt, img.raw.format)
      assert.are.same({ feather = 4, scaled = false }, img.preserved)
      assert.is_true(img.mask_drift > 0)
      assert.is_truthy(img.request_id)
      local out, raw = core.decode(img.bytes), core.decode(img.raw.bytes)
      local off, deep, n, sum, kept = 0, 0, 0, 0, 0
      for y = 3, S - 1, 11 do
        for x = 5, S - 1, 7 do
          if not in_big(x, y) then
            local a, b = { px_at(out, S, x, y) }, { px_at(big, S, x, y) }
            kept = kept + 1
            for c = 1, 3 do
              off = math.max(off, math.abs(a[c] - b[c]))
              sum = sum + math.abs(a[c] - b[c])
            end
          elseif big_depth(x, y) > 4 + shift then -- past the seam and the emulator's misplacement
            n = n + 1
            local a, b = { px_at(out, S, x, y) }, { px_at(raw, S, x, y) }
            for c = 1, 3 do deep = math.max(deep, math.abs(a[c] - b[c])) end
          end
        end
      end
      assert.is_true(n > 1000)
      if fmt == "png" then
        assert.are.equal(0, off) -- exactly image 1
        assert.are.equal(0, deep) -- exactly the answer
      else -- encoded again, lossy, on a busy picture: close on the whole
        assert.is_true(sum / kept / 3 <= 3, fmt .. " kept pixels off by " .. sum / kept / 3 .. " on average")
      end
    end
    assert.are.equal(3, #H.api_requests(emu))
  end)

  it("preserve with an answer of another size: image 1 and the mask scaled to it", function()
    local warnings
    local img, err
    img, err, warnings = edit { preserve = true, size = "128x128" }
    assert(img, tostring(err))
    assert.are.same({ 128, 128, true }, { img.width, img.height, img.preserved.scaled })
    assert.are.same({}, warnings) -- the same shape: nothing stretched
    img, err, warnings = edit { preserve = true, size = "128x64" }
    assert(img, tostring(err))
    assert.are.same({ 128, 64 }, { img.width, img.height })
    assert.matches("image 1 is 64x64 and the answer 128x64: preserve stretched", warnings[1])
  end)

  it("preserve without a mask is refused before anything is sent", function()
    local img, err = H.all_client(emu):edit(H.small { images = { photo }, preserve = true })
    assert.is_nil(img)
    assert.are.equal("invalid_request", err.kind)
    assert.are.equal("preserve", err.param)
    assert.are.equal(0, #H.api_requests(emu))
    assert.has_error(function() H.all_client(emu):edit(H.small { images = { photo }, mask = mask, feather = 1.5 }) end)
    assert.has_error(function() H.all_client(emu, { drift_warning = 2 }) end)
  end)

  it("an on_warning that raises ends the job as a callback's failure, the paid picture in err.image", function()
    local img, err = H.all_client(emu, { drift_warning = 0.001, on_warning = function() error("boom") end }):edit(
      H.small { images = { photo }, mask = mask, prompt = "a red door" })
    assert.is_nil(img)
    assert.are.equal("callback", err.kind)
    assert.are.equal("on_warning", err.callback)
    assert.is_true(err.maybe_billed)
    assert.is_true(err.image.mask_drift > 0)
    assert.are.equal(1, #H.api_requests(emu))
  end)

  it("image 1 changed on disk while the request was out: the composite uses the bytes that were sent", function()
    local sent = H.read(photo)
    local mine = H.write(dir .. "/mine.png", sent)
    emu:configure { latency = 0.3 }
    local warnings = {}
    local c = H.all_client(emu, { on_warning = function(m) warnings[#warnings + 1] = m end })
    local job = c:submit("edit", H.small { images = { mine }, mask = mask, prompt = "door", preserve = true })
    c:poll(0.05)
    H.write(mine, core.encode(picture(32, 32, base_fn), 32, 32, "png"))
    local img = assert(job:wait())
    assert.is_nil(img.preserve_error)
    assert.are.same({}, warnings)
    assert.are.equal(core.sha256(sent), H.api_requests(emu)[1].files[1].sha256)
    -- image 1 as it was sent, read once: the composite is what it makes
    local again = assert(imgedit.mask.preserve(img.raw, { bytes = sent }, mask))
    assert.are.equal(again.bytes, img.bytes)
    assert.are.equal(1, #H.api_requests(emu))
  end)

  it("a composite that fails keeps the paid picture as it came, and says why", function()
    local image = require "imgedit.image"
    local saved = image.max_pixels
    image.max_pixels = 100 -- no picture decodes
    local img, err, warnings = edit { preserve = true }
    image.max_pixels = saved
    assert(img, tostring(err))
    assert.is_nil(img.preserved)
    assert.matches("more than 100 pixels", img.preserve_error)
    assert.matches("the service's picture is kept as it came", warnings[1])
    assert.are.equal(1, #H.api_requests(emu))
  end)
end)

describe("preserve in the CLI, pipelines and the contact sheet", function()
  local emu, dir, photo, mask
  photo_world(function(e, d, p, m) emu, dir, photo, mask = e, d, p, m end)

  local function cli(args)
    return H.sh("env -u IMGEDIT_API_KEY IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL=" .. emu.url
      .. " IMGEDIT_PROVIDER=apiyi " .. H.CHILD .. H.LUA .. " bin/imgedit " .. args .. " 2>&1")
  end

  it("imgedit edit --preserve: prints the figures, writes the composite, and its lineage says so", function()
    local out = dir .. "/cli.png"
    local text, code = cli("edit --model gpt-image-2-all --size 64x64 -p door -i " .. photo .. " --mask " .. mask
      .. " --preserve --feather 2 -o " .. out)
    assert.are.equal(0, code, text)
    assert.matches("mask: the answer changed %d+%.%d%% of the kept area %(drift%), left %d+%.%d%% of the edit area"
      .. " alone %(spill%); image 1 kept outside the mask, 2%-pixel seam", text)
    local px = core.decode(H.read(out))
    local base = picture(W, H_, base_fn)
    for _, p in ipairs { { 0, 0 }, { 63, 63 }, { 50, 20 }, { 15, 30 } } do -- kept: image 1's
      assert.are.same({ px_at(base, W, p[1], p[2]) }, { px_at(px, W, p[1], p[2]) })
    end
    local info = assert(imgedit.inspect(out))
    assert.are.same({ feather = 2, scaled = false }, info.lineage.preserved)
    assert.is_true(info.lineage.mask_drift > 0)
    text = cli("inspect " .. out)
    assert.matches("mask: the answer changed", text)
    -- without --preserve: the figures, the service's picture
    text, code = cli("edit --model gpt-image-2-all --size 64x64 -p door -i " .. photo .. " --mask " .. mask
      .. " --drift-warning 0.01 --json -o " .. dir .. "/raw.png")
    assert.are.equal(0, code, text)
    assert.matches("warning: the answer changed", text)
    local row = require("cjson").decode(text:match("(%b{})%s*$"))
    assert.is_true(row.mask_drift > 0 and row.mask_spill > 0)
    assert.is_nil(row.preserved)
    -- a bad --feather, and --preserve without --mask, are usage errors; nothing is sent
    emu:clear()
    for _, bad in ipairs { "2.5", "300", "=-1" } do
      text, code = cli("edit --model gpt-image-2-all --size 64x64 -p door -i " .. photo .. " --mask " .. mask
        .. " --preserve --feather" .. (bad:sub(1, 1) == "=" and bad or " " .. bad) .. " -o " .. dir .. "/y.png")
      assert.are.equal(2, code, text)
      assert.matches("%-%-feather takes a whole number of pixels, 0 to 256", text)
    end
    assert.are.equal(0, #H.api_requests(emu))
    emu:clear()
    text, code = cli("edit --model gpt-image-2-all --size 64x64 -p door -i " .. photo .. " --preserve -o " .. dir .. "/x.png")
    assert.are.equal(2, code, text)
    assert.matches("work with %-%-mask", text)
    assert.are.equal(0, #H.api_requests(emu))
  end)

  it("a pipeline step takes preserve: in its key, its sidecar, its report and the contact sheet", function()
    local c = H.all_client(emu, { on_warning = function() end })
    local out, cache = dir .. "/pipe", dir .. "/cache"
    local function run(preserve)
      local p = imgedit.pipeline { client = c, dir = out, cache = cache, quiet = true }
      local img = assert(p:edit("door", { images = { photo }, mask = mask, prompt = "door", size = "64x64",
        preserve = preserve }))
      return img, p
    end
    local raw = run(false)
    assert.is_nil(raw.preserved)
    local held, p = run(true)
    assert.are.equal(2, #H.api_requests(emu)) -- preserve is another picture: not the cached one
    assert.are.same({ feather = 4, scaled = false }, held.preserved)
    local again = run(true)
    assert.are.equal(2, #H.api_requests(emu)) -- and is cached in turn, figures and all
    assert.are.equal(held.sha256, again.sha256)
    local function near(a, b) return math.abs(a - b) < 1e-9 end -- through JSON: 14 digits
    assert.is_true(near(held.mask_drift, again.mask_drift))
    assert.are.same(held.preserved, again.preserved)
    local side = require("cjson").decode(H.read(out .. "/door.json"))
    assert.is_true(near(held.mask_drift, side.mask_drift))
    assert.are.same({ feather = 4, scaled = false }, side.preserved)
    local r = p:report { quiet = true, html = out .. "/index.html" }
    -- a composite that failed when it was paid for is made on the next run, without a request
    local image = require "imgedit.image"
    local saved = image.max_pixels
    image.max_pixels = 100
    local p3 = imgedit.pipeline { client = c, dir = dir .. "/pipe3", cache = dir .. "/cache3", quiet = true }
    local failed = assert(p3:edit("door", { images = { photo }, mask = mask, prompt = "door", size = "64x64",
      preserve = true, feather = 3 }))
    image.max_pixels = saved
    assert.is_nil(failed.preserved)
    assert.is_string(failed.preserve_error)
    local before = #H.api_requests(emu)
    local p4 = imgedit.pipeline { client = c, dir = dir .. "/pipe3", cache = dir .. "/cache3", quiet = true }
    local settled = assert(p4:edit("door", { images = { photo }, mask = mask, prompt = "door", size = "64x64",
      preserve = true, feather = 3 }))
    assert.are.equal(before, #H.api_requests(emu))
    assert.are.same({ feather = 3, scaled = false }, settled.preserved)
    assert.is_nil(settled.preserve_error)
    assert.is_true(near(held.mask_drift, r.list[1].mask_drift))
    local page = H.read(r.html)
    assert.matches("<dt>mask</dt><dd>drift %d+%.%d%%, spill %d+%.%d%%; image 1 kept outside it %(4 px seam%)</dd>", page)
  end)
end)

describe("the README's before and after", function()
  local emu, dir
  H.world(function(e, d) emu, dir = e, d end)

  -- Six 256-pixel panels, three a row: image 1, the mask, the service's
  -- answer; what the answer changed outside the mask (red), preserve's
  -- result, and what that changed outside the mask (nothing).
  it("is made here, from the emulator's answer, and docs/preserve.png is that picture", function()
    local S = 256
    local scene = picture(S, S, function(x, y)
      local dx, dy = x - 180, y - 70
      if dx * dx + dy * dy < 500 then return 255, 210, 90 end -- a sun
      if y > 170 + math.floor(12 * math.sin(x / 30)) then return 60 + y % 7, 120 + (x * y) % 9, 50 end -- a field
      return 90 + math.floor(y / 4), 150 + math.floor(y / 5), 235 -- the sky
    end)
    local photo = H.write(dir .. "/scene.png", core.encode(scene, S, S, "png"))
    local mask = assert(imgedit.mask.ellipse { width = S, height = S, x = 40, y = 120, w = 120, h = 100 })
    local img = assert(H.all_client(emu):edit { images = { photo }, mask = mask, prompt = "a red barn", size = "256x256",
      preserve = true })
    local raw, out, m = core.decode(img.raw.bytes), core.decode(img.bytes), core.decode(mask.bytes)
    local function changed(px)
      return picture(S, S, function(x, y)
        local a, b = { px_at(px, S, x, y) }, { px_at(scene, S, x, y) }
        if select(4, px_at(m, S, x, y)) == 0 then return 40, 40, 40 end -- the edit area, greyed
        for c = 1, 3 do
          if math.abs(a[c] - b[c]) > 30 then return 255, 0, 0 end
        end
        return math.floor((b[1] + 255) / 2), math.floor((b[2] + 255) / 2), math.floor((b[3] + 255) / 2)
      end)
    end
    local mask_view = picture(S, S, function(x, y)
      local a = select(4, px_at(m, S, x, y))
      local check = ((math.floor(x / 16) + math.floor(y / 16)) % 2 == 0) and 200 or 150
      return a == 0 and check or 20, a == 0 and check or 20, a == 0 and check or 20
    end)
    local panels = { scene, mask_view, raw, changed(raw), out, changed(out) }
    local rows = {}
    for r = 0, 1 do
      for y = 0, S - 1 do
        local line = {}
        for c = 1, 3 do line[c] = panels[r * 3 + c]:sub(y * S * 4 + 1, (y + 1) * S * 4) end
        rows[#rows + 1] = table.concat(line)
      end
    end
    local sheet = core.encode(table.concat(rows), 3 * S, 2 * S, "png")
    if os.getenv("IMGEDIT_UPDATE_DOCS") then H.write("docs/preserve.png", sheet) end
    -- the page's picture is this one, pixel for pixel
    local doc = core.decode(assert(H.read("docs/preserve.png")))
    assert.is_true(doc == core.decode(sheet), "docs/preserve.png is stale: run with IMGEDIT_UPDATE_DOCS=1")
    -- and it shows what it says: red outside the mask in the answer, none after preserve
    local function reds(px)
      local n = 0
      for i = 1, #px, 4 do if px:byte(i) == 255 and px:byte(i + 1) == 0 and px:byte(i + 2) == 0 then n = n + 1 end end
      return n
    end
    assert.is_true(reds(changed(raw)) > 100)
    assert.are.equal(0, reds(changed(out)))
  end)
end)
