-- The emulated endpoints: an edit and a generation, checked by the
-- model's rules, answered with the service's picture (composed from the
-- inputs), as JSON (raw base64, a data URL, or a url to the CDN listener)
-- or as a stream of partial images and the completed one.
local core = require "imgedit.core"
local render = require "imgedit.emulator.core"
local rules = require "imgedit.emulator.rules"
local cjson = require "cjson"
local S = require "imgedit.emulator.state"
local files = require "imgedit.emulator.files"

local M = {}

local json_answer, fail, invalid = rules.json_answer, rules.fail, rules.invalid

-- ---- the picture ----

local function tint_of(prompt)
  local h = core.sha256(prompt or "")
  local function byte(i) return tonumber(h:sub(2 * i - 1, 2 * i), 16) end
  return { byte(1), byte(2), byte(3) }, { 255 - byte(1), 255 - byte(2), 255 - byte(3) }
end

-- Within the core's default bounds (50,000,000 pixels, 256 MiB of decode,
-- the client's defaults too): an input over them, a bomb, is left out of
-- the picture rather than decoded in the tests' process.
local function layer(bytes)
  local px, w, h = core.decode(bytes)
  if not px then return nil end
  return { px = px, w = w, h = h }
end

local function output_size(size, first)
  local w, h = rules.parse_size(size or "")
  if w and w > 0 and h > 0 and w <= 4096 and h <= 4096 then return w, h end
  if first and first.width and first.height then
    if first.width > first.height * 1.2 then return 1536, 1024 end
    if first.height > first.width * 1.2 then return 1024, 1536 end
  end
  return 1024, 1024
end

local function picture(prompt, images, mask, w, h, fmt, compression)
  local tint, fill = tint_of(prompt)
  local spec = { width = w, height = h, tint = tint, fill = fill, insets = {} }
  for i, bytes in ipairs(images) do
    local l = layer(bytes)
    if i == 1 then spec.base = l elseif l then spec.insets[#spec.insets + 1] = l end
  end
  if mask then spec.mask = layer(mask) end
  local px = render._compose(spec)
  return core.encode(px, w, h, fmt, tonumber(compression) or 90), px
end

-- ---- endpoints ----

local function parts_of(req)
  local fields, images, mask = {}, {}, nil
  for _, p in ipairs(req.parts or {}) do
    if p.name == "image[]" or p.name == "image" then
      images[#images + 1] = p
    elseif p.name == "mask" then
      mask = p
    elseif not p.filename then
      fields[p.name] = p.data
    end
  end
  return fields, images, mask
end

local function sse(event, t)
  return "event: " .. event .. "\ndata: " .. cjson.encode(t) .. "\n\n"
end

-- A streamed answer: k partial images, each a coarser version of the final
-- one, then the completed event; the model's time is spread across them.
local function stream_answer(kind, f, bytes, px, w, h, fmt, use, entry)
  local prefix = kind == "edit" and "image_edit." or "image_generation."
  local k = tonumber(f.partial_images) or 0
  local common = { size = w .. "x" .. h, quality = f.quality or "auto", background = f.background or "auto",
    output_format = fmt, created_at = os.time() }
  local events = {}
  for i = 0, k - 1 do
    local f2 = 2 ^ (k - i + 1) -- coarse first, finer later
    local sw, sh = math.max(1, math.floor(w / f2)), math.max(1, math.floor(h / f2))
    local coarse = core.resize(core.resize(px, w, h, sw, sh), sw, sh, w, h)
    local t = { type = prefix .. "partial_image", b64_json = core.b64encode(core.encode(coarse, w, h, fmt)),
      partial_image_index = i }
    for key, v in pairs(common) do t[key] = v end
    events[#events + 1] = sse(prefix .. "partial_image", t)
  end
  local done = { type = prefix .. "completed", b64_json = core.b64encode(bytes), usage = use }
  for key, v in pairs(common) do done[key] = v end
  events[#events + 1] = sse(prefix .. "completed", done)
  entry.output_sha256 = core.sha256(bytes)
  entry.status = 200
  entry.stream = true
  return { status = 200, events = events, headers = { ["Content-Type"] = "text/event-stream",
    ["Cache-Control"] = "no-cache", ["x-request-id"] = "req_emu_" .. entry.id }, stream_parts = k + 1 }
end

local function wants_stream(m, f)
  return m.strict and (f.stream == true or f.stream == "true")
end

-- The answer's data: one item per picture (n of them where the model takes n).
local function image_answer(m, f, pictures, fmt, use, entry)
  local data = {}
  for i, bytes in ipairs(pictures) do
    S.seq = S.seq + 1
    local item = {}
    local rf = f.response_format or m.default_response or "b64_json"
    if rf == "url" then
      local name = string.format("%d-%s.%s", S.seq, core.sha256(bytes):sub(1, 12), fmt)
      S.files[name] = { bytes = bytes, type = "image/" .. fmt }
      item.url = S.cfg.cdn_url .. "/files/" .. name
    elseif m.b64 == "dataurl" then
      item.b64_json = "data:image/" .. fmt .. ";base64," .. core.b64encode(bytes)
    else
      item.b64_json = core.b64encode(bytes)
    end
    data[i] = item
  end
  local bytes = pictures[1]
  local t = { created = os.time(), data = data }
  if m.usage then t.usage = use end
  if m.strict then
    t.output_format = fmt
    t.size = nil
  end
  entry.output_sha256 = core.sha256(bytes)
  entry.status = 200
  return json_answer(200, t, { ["x-request-id"] = "req_emu_" .. entry.id })
end

-- The model a request names, or the service's refusal of it.
local function model_of(f, what)
  if type(f.model) ~= "string" then
    return nil, invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
  end
  local m = rules.model(S.cfg.provider, f.model)
  if m and m.gone and os.date("!%Y-%m-%d") >= m.gone then
    return nil, fail(404, "The model `" .. f.model .. "` has been deprecated, learn more here:"
      .. " https://platform.openai.com/docs/deprecations", nil, "model_not_found")
  end
  if not m or (what == "edits" and m.edits == false) then
    return nil, invalid("Invalid model '" .. f.model .. "' for image " .. what, "model", "model_not_found")
  end
  return m
end

-- n pictures of a request: the first is the prompt's, the others its variations.
local function pictures_for(f, datas, mask, w, h, fmt)
  local out, first_px = {}, nil
  for i = 1, tonumber(f.n) or 1 do
    local bytes, px = picture(i == 1 and f.prompt or (f.prompt .. "#" .. i), datas, mask, w, h, fmt,
      f.output_compression)
    out[i], first_px = bytes, first_px or px
  end
  return out, first_px
end

-- The edit itself, whichever body carried it: f the fields (JSON-typed or
-- strings), images and mask {data=, type=} parts, m the model. Both bodies
-- meet here, so the same request gives the same checks, picture and usage.
local function edit_core(f, m, images, mask, entry)
  entry.model = f.model
  if type(f.prompt) ~= "string" or f.prompt == "" then
    return invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
  end
  if #images == 0 then
    return invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
  end
  if m.max_images and #images > m.max_images then
    return invalid(string.format("Too many images: %d given, at most %d", #images, m.max_images), "image")
  end
  local err = rules.check_options(f, m)
  if err then return err end
  local infos = {}
  for i, p in ipairs(images) do
    local info, e = rules.check_image(p, i, m)
    if not info then return e end
    infos[i] = info
  end
  if mask and m.strict then
    local e = rules.check_mask(mask, infos[1], m)
    if e then return e end
  end
  local fmt = m.output_formats and m.output_formats[f.output_format or ""] and f.output_format or "png"
  local w, h = output_size(f.size, infos[1])
  local datas = {}
  for i, p in ipairs(images) do datas[i] = p.data end
  local use = rules.usage(f.prompt, infos, w, h, f.quality, tonumber(f.n))
  if wants_stream(m, f) then
    local bytes, px = picture(f.prompt, datas, mask and mask.data, w, h, fmt, f.output_compression)
    return stream_answer("edit", f, bytes, px, w, h, fmt, use, entry)
  end
  return image_answer(m, f, pictures_for(f, datas, mask and mask.data, w, h, fmt), fmt, use, entry)
end

-- ---- the JSON edit body: images by reference ----

-- The bytes an http(s) url names, when it is the emulator's own (its CDN's
-- pictures, its Files API's content): it has no network for any other.
local function own_url(url)
  local cdn = S.cfg.cdn_url and url:sub(1, #S.cfg.cdn_url + 7) == S.cfg.cdn_url .. "/files/"
    and url:sub(#S.cfg.cdn_url + 8)
  if cdn and S.files[cdn] then return S.files[cdn].bytes, S.files[cdn].type end
  local api = S.cfg.api_url and url:sub(1, #S.cfg.api_url + 7) == S.cfg.api_url .. "/files/"
    and url:sub(#S.cfg.api_url + 8):match("^([^/?]+)/content$")
  local file = api and files.lookup(api)
  if file then return file.data end
end

-- ref {image_url=|file_id=} -> {data=, type=}, or the 400 naming it.
local function resolve(ref, param)
  if type(ref) ~= "table" then
    return nil, invalid("Invalid type for '" .. param .. "': expected an object with image_url or file_id.", param,
      "invalid_type")
  end
  if (ref.image_url ~= nil) == (ref.file_id ~= nil) then
    return nil, invalid("Invalid '" .. param .. "': provide exactly one of image_url or file_id.", param,
      "invalid_value")
  end
  local data, mime
  if ref.file_id ~= nil then
    local file = type(ref.file_id) == "string" and files.lookup(ref.file_id)
    if not file then
      return nil, invalid("Invalid '" .. param .. ".file_id': file '" .. tostring(ref.file_id) .. "' not found.",
        param .. ".file_id", "invalid_image_url")
    end
    data = file.data
  else
    local url = ref.image_url
    if type(url) ~= "string" then
      return nil, invalid("Invalid type for '" .. param .. ".image_url': expected a string.", param .. ".image_url",
        "invalid_type")
    end
    if url:sub(1, 5):lower() == "data:" then
      local bytes, m = core.dataurl_decode(url)
      if not bytes then
        return nil, invalid("Invalid '" .. param .. ".image_url': " .. tostring(m and m.message or m), param
          .. ".image_url", "invalid_image_url")
      end
      data, mime = bytes, m
    elseif url:match("^[Hh][Tt][Tt][Pp][Ss]?://") then
      data, mime = own_url(url)
      if not data then
        return nil, invalid("Invalid '" .. param .. ".image_url': the image at " .. url
          .. " could not be downloaded.", param .. ".image_url", "invalid_image_url")
      end
    else
      return nil, invalid("Invalid '" .. param .. ".image_url': expected a URL or a base64 data URL.", param
        .. ".image_url", "invalid_image_url")
    end
  end
  -- a reference carries no part header: its type is the one declared (a
  -- data URL's), else the bytes' own
  if not mime then
    local info = core.inspect(data, true)
    mime = info and info.mime or "application/octet-stream"
  end
  return { data = data, type = mime }
end

-- The log's view of the pictures a request carried, like record()'s of parts.
local function log_files(entry, images, mask)
  entry.files = {}
  local function add(field, p)
    local info = core.inspect(p.data, true)
    entry.files[#entry.files + 1] = { field = field, content_type = p.type, size = #p.data,
      sha256 = core.sha256(p.data), format = info and info.format or nil }
  end
  for i, p in ipairs(images) do add("images[" .. (i - 1) .. "]", p) end
  if mask then add("mask", mask) end
end

-- A JSON request's fields (nulls dropped, Azure's deployment as the model),
-- or nil, the answer.
local function json_fields(req)
  local ok, f = pcall(cjson.decode, req.body or "")
  if not ok or type(f) ~= "table" then
    return nil, invalid("We could not parse the JSON body of your request.", nil, "invalid_json")
  end
  for k, v in pairs(f) do if v == cjson.null then f[k] = nil end end
  f.model = f.model or req.deployment
  return f
end

local function json_edit(req, entry)
  local f, bad_json = json_fields(req)
  if not f then return bad_json end
  -- "JSON edits support GPT image models only; DALL-E edits require
  -- multipart" (the OpenAPI spec's EditImageBodyJsonParam)
  if type(f.model) == "string" and f.model:match("^dall%-e") then
    return invalid("Invalid content type: JSON edits support GPT image models only; " .. f.model
      .. " edits take multipart/form-data.", nil, "invalid_content_type")
  end
  local m, bad = model_of(f, "edits")
  if not m then return bad end
  entry.model = f.model
  if f.image ~= nil or f["image[]"] ~= nil then
    return invalid("Unknown parameter: 'image'. JSON edits take 'images', a list of {image_url} or {file_id}.",
      "image", "unknown_parameter")
  end
  if type(f.images) ~= "table" or #f.images == 0 then
    return invalid("Missing required parameter: 'images'.", "images", "missing_required_parameter")
  end
  if #f.images > 16 then
    return invalid(string.format("Invalid 'images': array too long. Expected an array with maximum length 16,"
      .. " but got an array with length %d instead.", #f.images), "images", "array_above_max_length")
  end
  local images, mask = {}, nil
  for i, ref in ipairs(f.images) do
    local p, e = resolve(ref, "images[" .. (i - 1) .. "]")
    if not p then return e end
    images[i] = p
  end
  if f.mask ~= nil then
    local e
    mask, e = resolve(f.mask, "mask")
    if not mask then return e end
  end
  log_files(entry, images, mask)
  return edit_core(f, m, images, mask, entry)
end

local function edits(req, entry)
  local ct = (req.content_type or ""):lower()
  -- The seeds' gateway: "Request format is multipart/form-data".
  local gateway = (S.cfg.provider or "apiyi") == "apiyi"
  if ct:find("application/json", 1, true) and not gateway then return json_edit(req, entry) end
  if not ct:find("multipart/form-data", 1, true) then
    return invalid("Edits take multipart/form-data", nil, "invalid_content_type")
  end
  if req.malformed then return invalid("Malformed multipart body", nil, "invalid_body") end
  local f, parts, mask_part = parts_of(req)
  f.model = f.model or req.deployment
  local m, bad = model_of(f, "edits")
  if not m then return bad end
  local images = {}
  for i, p in ipairs(parts) do images[i] = { data = p.data, type = p.type } end
  local mask = mask_part and { data = mask_part.data, type = mask_part.type }
  return edit_core(f, m, images, mask, entry)
end

local function generations(req, entry)
  local f, bad_json = json_fields(req)
  if not f then return bad_json end
  local m, bad = model_of(f, "generations")
  if not m then return bad end
  entry.model = f.model
  if type(f.prompt) ~= "string" or f.prompt == "" then
    return invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
  end
  local err = rules.check_options(f, m)
  if err then return err end
  local fmt = m.output_formats and m.output_formats[f.output_format or ""] and f.output_format or "png"
  local w, h = output_size(f.size)
  local use = rules.usage(f.prompt, {}, w, h, f.quality, tonumber(f.n))
  if wants_stream(m, f) then
    local bytes, px = picture(f.prompt, {}, nil, w, h, fmt, f.output_compression)
    return stream_answer("generate", f, bytes, px, w, h, fmt, use, entry)
  end
  return image_answer(m, f, pictures_for(f, {}, nil, w, h, fmt), fmt, use, entry)
end

M.edits, M.generations, M.sse = edits, generations, sse

return M
