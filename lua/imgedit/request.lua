-- Building a request: checking the options a caller gives (on the client and
-- per request), resolving the images, checking the model's rules, and the
-- multipart or JSON spec the C transport sends. Nothing here touches the
-- network or the client's jobs, so a request that fails here leaves nothing
-- behind.
local compat = require "imgedit.compat"
local core = require "imgedit.core"
local cjson = require "cjson.safe"
local errors = require "imgedit.errors"
local options = require "imgedit.options"
local image = require "imgedit.image"
local lineage = require "imgedit.lineage"
local providers = require "imgedit.providers"
local rules = require "imgedit.rules"

local M = {}

-- ---- options ----
-- The mechanics (a check's message, "did you mean") are options.lua's,
-- shared with the emulator; what the client takes is here.

local unknown, closest = options.unknown, options.closest
M.check_option, M.check_options = options.check_option, options.check_options

-- Each option's check: a type, and a range where there is one. The messages
-- name the option and what was given, like Lua's own argument errors.

local positive, nonneg, count = options.checks.positive, options.checks.nonneg, options.checks.count
local function at_least_one(v) return compat.tointeger(v) ~= nil and v >= 1, "a whole number >= 1" end
local is = options.checks.is
local function whole(lo, hi)
  return function(v) return compat.tointeger(v) ~= nil and v >= lo and v <= hi, "a whole number from " .. lo .. " to " .. hi end
end
local function url(v)
  if type(v) ~= "string" then return false, "an http or https url" end
  local scheme = v:match("^(%a[%w+.-]*)://[^/]")
  scheme = scheme and scheme:lower()
  return scheme == "http" or scheme == "https", "an http or https url"
end

-- "file", "dir", or nil for a path that cannot be opened.
local function kind_of(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local got, _, code = f:read(1)
  f:close()
  if got == nil and code == 21 then return "dir" end -- EISDIR
  return "file"
end
local function file(v) return type(v) == "string" and kind_of(v) == "file", "a readable file" end
-- A PEM file that holds at least one certificate: an empty or wrong file
-- would otherwise show up later as the server's fault.
local function pem(v)
  local want = "a readable PEM file of certificates"
  if not file(v) then return false, want end
  local f = io.open(v, "rb")
  local text = f:read("*a")
  f:close()
  return text:find("-----BEGIN CERTIFICATE-----", 1, true) ~= nil, want
end
local function folder(v) return type(v) == "string" and kind_of(v) == "dir", "a readable folder" end
local PROXY_SCHEMES = { http = true, https = true, socks4 = true, socks4a = true, socks5 = true, socks5h = true }
local function proxy(v)
  if type(v) ~= "string" then return false, "a proxy url (http, https, socks4, socks4a, socks5, socks5h) or \"\"" end
  local scheme = v:match("^(%a[%w+.-]*)://[^/]")
  local ok = v == "" or (scheme ~= nil and PROXY_SCHEMES[scheme:lower()] == true)
  return ok, "a proxy url (http, https, socks4, socks4a, socks5, socks5h) or \"\""
end

M.checks = options.checks

-- Options a job reads, given on the client or per request.
M.JOB_OPTIONS = {
  timeout = positive, connect_timeout = positive, idle_timeout = nonneg,
  max_retries = count, retry_unanswered = is "boolean", retry_timeouts = is "boolean",
  retry_protocol = is "boolean", max_retry_after = nonneg, retry_base = nonneg, retry_cap = nonneg,
  on_progress = is "function", on_retry = is "function",
  -- masks that hold (mask.lua): the composite, its seam, and the drift figures
  preserve = is "boolean", feather = whole(0, 256), drift_tolerance = whole(0, 255),
  drift_warning = function(v) return v == false or type(v) == "number" and v >= 0 and v <= 1, "a share from 0 to 1, or false" end,
  -- pictures decoded to RGBA8 off the caller's thread (img.pixels)
  decode = function(v) return v == "rgba" or v == false, "\"rgba\" or false" end,
}

-- Options of imgedit.new.
M.CLIENT_OPTIONS = {
  api_key = is "string", base_url = url, model = is "string", max_concurrency = at_least_one,
  max_response_bytes = positive, max_download_bytes = positive, progress_interval = nonneg,
  limits = is "table", yield = function(v) return v == true or type(v) == "function", "true or a function" end,
  ca_file = pem, ca_path = folder, proxy = proxy, allow_http = is "boolean",
  provider = function(v) return v == "apiyi" or v == "openai" or v == "azure" or v == "compatible",
    "\"apiyi\", \"openai\", \"azure\" or \"compatible\"" end,
  deployment = is "string", api_version = is "string", on_warning = is "function",
  prices = function(v)
    local ok, why = require("imgedit.prices").check(v)
    return ok, "rates per model ({text_in=, image_in=, image_out=} in USD per 1M tokens, {per_image=}, or false): "
      .. tostring(why)
  end,
}
for k, check in pairs(M.JOB_OPTIONS) do M.CLIENT_OPTIONS[k] = check end

-- Request keys that steer the client; everything else is a field for the service.
M.CONTROL = { prompt = true, images = true, mask = true, model = true, on_partial = true, body = true,
  _no_checks = true, _refs = true }
for k in pairs(M.JOB_OPTIONS) do M.CONTROL[k] = true end

-- The entries a client's `limits` may override (rules.lua's tables).
local RULE_KEYS = { min_images = true, max_images = true, max_image_bytes = true, mask = true, rejected = true,
  enums = true, size = true, compression_formats = true, integers = true, booleans = true, response_formats = true,
  images_per_answer = true, max_prompt = true, image_formats = true, square = true, transparent_formats = true,
  edits = true, shutdown = true, json_edits = true }

-- check_new(opts, level): every option of imgedit.new, and no unknown ones.
function M.check_new(opts, level)
  M.check_options(opts, M.CLIENT_OPTIONS, "imgedit.new", level + 1)
  for k in pairs(opts.limits or {}) do
    if not RULE_KEYS[k] then unknown("entry of limits", k, RULE_KEYS, level + 1) end
  end
end

-- The service's fields that are known, so never taken for a misspelt option.
-- Fields whose values are words, never numbers or tables.
local TEXT_FIELDS = { size = true, quality = true, output_format = true, background = true, response_format = true,
  moderation = true, input_fidelity = true, style = true, user = true }
local FIELDS = { size = true, quality = true, output_format = true, output_compression = true, background = true,
  response_format = true, user = true, n = true, stream = true, partial_images = true, moderation = true,
  input_fidelity = true, style = true }

-- job_options(client, req, level) -> the options a job runs with.
function M.job_options(client, req, level)
  for k in pairs(req) do
    if type(k) == "string" and not M.CONTROL[k] and not FIELDS[k] then
      -- An option of the client is not a field to send; nor is a name one
      -- typo away from an option (it would be sent, paid for and ignored).
      if M.CLIENT_OPTIONS[k] then
        error(string.format("option '%s' belongs to imgedit.new, not to a request", k), level + 1)
      end
      if closest(k, M.CONTROL) then unknown("request option", k, M.CONTROL, level + 1) end
      -- One letter off a field the service knows: a typo, not a new field
      -- (other services' own fields are passed through untouched).
      if closest(k, FIELDS, #k >= 10 and 2 or 1) then unknown("request field", k, FIELDS, level + 1) end
    elseif TEXT_FIELDS[k] and req[k] ~= nil and type(req[k]) ~= "string" then
      error(string.format("bad field '%s' (string expected, got %s)", k, type(req[k])), level + 1)
    end
  end
  local o = {}
  for k in pairs(M.JOB_OPTIONS) do
    local v = M.check_option(k, req[k], M.JOB_OPTIONS, level + 1)
    if v == nil then v = client:_option(k) end
    o[k] = v
  end
  -- retry_timeouts is the older name of retry_unanswered.
  o.retry_unanswered = o.retry_unanswered or o.retry_timeouts or false
  if req.on_partial ~= nil and type(req.on_partial) ~= "function" then
    error("bad option 'on_partial' (function expected, got " .. type(req.on_partial) .. ")", level + 1)
  end
  return o
end

-- ---- images ----

local function fail(kind, message, fields, key)
  return nil, errors.new(kind, message, fields, key)
end

-- A file as the bytes checked: read once, and checked from those bytes.
-- -> bytes, info | nil, message
local function read_checked(path)
  local bytes, msg = core.read_file(path)
  if not bytes then return nil, msg end
  local info
  info, msg = core.inspect(bytes, true)
  if not info then return nil, msg end
  return bytes, info
end

-- Resolve one image source into {path|data, info, filename, label}. A path
-- is streamed from disk at send time with what vouches for the bytes
-- checked: its stamp, or for a file changed in the last seconds (whose
-- stamp cannot) the SHA-256 of the bytes checked; the transport stops the
-- upload before its end if they differ. With hold, its bytes are read now
-- and sent from memory.
local function resolve(src, label, default_name, hold)
  local info, msg, entry
  if type(src) == "string" then
    info, msg = core.inspect(src)
    entry = { path = src, filename = image.basename(src) }
    label = string.format("%s (%s)", label, entry.filename)
    if info and (hold or info.racy) then
      local bytes
      bytes, msg = read_checked(src)
      info = bytes and msg
      if hold and bytes then
        entry.data, entry.path = bytes, nil
      elseif bytes then
        entry.sha256, entry.bytes = core.sha256(bytes), #bytes
      end
    elseif info then
      entry.stamp = info.stamp
    end
  elseif M.is_ref(src) then
    -- A picture the service fetches (an https url) or holds (a file id): the
    -- library cannot see it, so only its count is checked here. A data URL
    -- carries its bytes: they are checked as any other bytes.
    if src.file_id ~= nil then
      if type(src.file_id) ~= "string" or src.file_id == "" or src.url ~= nil then return nil, nil, true end
      return { ref = { file_id = src.file_id }, label = string.format("%s (file %s)", label, src.file_id) }
    end
    local u = src.url
    if type(u) ~= "string" then return nil, nil, true end
    local scheme = (u:match("^(%a[%w+.-]*):") or ""):lower()
    if scheme == "http" or scheme == "https" then
      return { ref = { image_url = u }, label = string.format("%s (%s)", label, (u:gsub("[?#].*$", ""))) }
    end
    if scheme ~= "data" then
      return nil, string.format("%s: a picture's url must be https, http or a data: URL, not '%s:'", label, scheme)
    end
    local bytes, why = core.dataurl_decode(u)
    if not bytes then return nil, label .. " (data URL): " .. tostring(why) end
    info, msg = core.inspect(bytes, true)
    entry = { data = bytes, filename = default_name }
    label = label .. " (data URL)"
  elseif type(src) == "table" and type(src.bytes) == "string" then
    local data = src.bytes
    if image.is(src) then
      -- An Image goes as the picture the service made: the lineage the
      -- library wrote into it (earlier prompts, request ids) stays home.
      -- Its header was read when it was made.
      data = lineage.strip(data)
      info = image.header_of(src)
      if info and #data ~= info.bytes then
        local sent = { bytes = #data }
        for k, v in pairs(info) do sent[k] = sent[k] or v end
        info = sent
      end
    end
    if not info then info, msg = core.inspect(data, true) end
    entry = { data = data, filename = src.filename or default_name }
    if src.filename then label = string.format("%s (%s)", label, src.filename) end
  else
    return nil, nil, true
  end
  if not info then return nil, label .. ": " .. msg end
  if not info.accepted then
    return nil, string.format("%s: %s images are not accepted; use png, jpeg or webp", label, info.format)
  end
  -- The part's name follows the bytes, not the caller's file name.
  entry.filename = image.stem(entry.filename) .. "." .. image.EXT[info.format]
  entry.info, entry.label = info, label
  return entry
end

-- Whether src names a picture by url or file id ({url=}, {file_id=}).
function M.is_ref(src)
  return type(src) == "table" and not image.is(src) and src.bytes == nil and (src.url ~= nil or src.file_id ~= nil)
end

-- The list of image sources a request names: one source or a list of them.
function M.image_list(list)
  if type(list) ~= "table" or image.is(list) or list.bytes or M.is_ref(list) then return { list } end
  return list
end

-- A picture as the JSON edit body names it: its url or file id, the file
-- id it was uploaded as (refs: SHA-256 -> file id), or its bytes as a data URL.
local function json_ref(e, refs)
  if e.ref then return e.ref end
  local id = refs and refs[e.sha256 or core.sha256(e.data)]
  if id then return { file_id = id } end
  return { image_url = "data:" .. e.info.mime .. ";base64," .. core.b64encode(e.data) }
end

local function field_value(k, v, level)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then
    return compat.is_integer(v) and string.format("%d", v) or tostring(v)
  end
  if t == "boolean" then return tostring(v) end
  error(string.format("bad request field '%s' (string, number or boolean expected, got %s)", k, t), level + 1)
end

-- Fields a JSON generation sends as numbers and booleans.
local NUMBERS = { n = true, partial_images = true, output_compression = true }
local BOOLEANS = { stream = true }

-- The JSON value of a field (a generation's, a JSON edit's), or nil, message.
local function json_value(k, v)
  if NUMBERS[k] then
    local n = tonumber(v)
    if n == nil then return nil, string.format("%s must be a number, got '%s'", k, tostring(v)) end
    return compat.tointeger(n) or n
  end
  if BOOLEANS[k] then
    if v == true or v == "true" then return true end
    if v == false or v == "false" then return false end
    return nil, k .. " must be true or false"
  end
  return v
end

-- json_body(spec, body, names, fields, req, key) -> true | nil, err: the
-- fields added to body, typed as JSON (numbers stay numbers), and spec
-- made to send it (spec.json is the table, for the batch route's lines).
local function json_body(spec, body, names, fields, req, key)
  for _, k in ipairs(names) do
    if fields[k] ~= nil then
      local v, msg = json_value(k, req[k])
      if msg then return fail("invalid_request", msg, { param = k }, key) end
      body[k] = v
    end
  end
  spec.json, spec.body = body, cjson.encode(body)
  spec.headers[#spec.headers + 1] = "Content-Type: application/json"
  return true
end

-- prepare(client, kind, req, key, level) -> spec, fields, inpaint | nil, err
-- inpaint: for an edit with a mask, {base = image 1, mask =}, each with
-- .data, the bytes sent: what the mask's figures and preserve's composite
-- read once the answer is in.
function M.prepare(client, kind, req, key, level)
  if req.prompt ~= nil and type(req.prompt) ~= "string" then
    error("bad request field 'prompt' (string expected, got " .. type(req.prompt) .. ")", level + 1)
  end
  if req.model ~= nil and type(req.model) ~= "string" then
    error("bad request field 'model' (string expected, got " .. type(req.model) .. ")", level + 1)
  end
  if kind == "generate" then
    -- A generation takes no pictures: refuse rather than pay for a text-only one.
    for _, k in ipairs { "images", "mask" } do
      if req[k] ~= nil then
        return fail("invalid_request", string.format("generate takes no %s; use edit to work from pictures", k),
          { param = k })
      end
    end
  end
  if not key then
    local env = providers.list[client.provider].key_env
    return fail("auth", "no API key: pass api_key to imgedit.new or set IMGEDIT_API_KEY"
      .. (env and (" or " .. env) or ""), { param = "api_key" })
  end
  if key:find("%c") then
    return fail("auth", "the API key contains control characters", { param = "api_key" })
  end
  local model = req.model or client.model
  local fields = { model = model, prompt = req.prompt }
  local names = {}
  for k, v in pairs(req) do
    if not M.CONTROL[k] and type(k) == "string" then
      fields[k] = field_value(k, v, level + 1)
      names[#names + 1] = k
    end
  end
  table.sort(names)
  if req.body ~= nil and req.body ~= "json" and req.body ~= "multipart" then
    error("bad option 'body' (\"json\" or \"multipart\" expected, got " .. tostring(req.body) .. ")", level + 1)
  end
  if req._refs ~= nil and type(req._refs) ~= "table" then error("bad option '_refs' (table expected)", level + 1) end
  -- The JSON edit body: asked for, or needed by a picture given by url or file id.
  local json = req.body == "json"
  local images, mask = {}, nil
  if kind == "edit" then
    local sources = M.image_list(req.images)
    local refs = M.is_ref(req.mask)
    for _, src in ipairs(sources) do refs = refs or M.is_ref(src) end
    if refs and req.body == "multipart" then
      return fail("invalid_request", "a picture given by url or file id is sent in the JSON edit body, not"
        .. " multipart: drop body = \"multipart\"", { param = "body" }, key)
    end
    json = json or refs
    -- The seeds' gateway takes edits as multipart alone ("Request format is
    -- multipart/form-data"): refused here, before anything is paid.
    if json and client.provider == "apiyi" then
      return fail("invalid_request", "provider apiyi takes edits as multipart/form-data only: the JSON edit body"
        .. " (body = \"json\", a picture by url or file id) needs provider openai or compatible",
        { param = "body" }, key)
    end
    for i, src in ipairs(sources) do
      -- Image 1 of a masked edit is read again once the answer is in (the
      -- mask's figures, preserve's composite): its bytes are held, like the
      -- mask's, so that both read what the service was given. The JSON body
      -- carries every picture's bytes.
      local e, msg, bad = resolve(src, "image " .. i, "image-" .. i, json or (i == 1 and req.mask ~= nil))
      if bad then
        error(string.format("bad request field 'images[%d]' (path, Image, {bytes=...}, {url=...} or {file_id=...}"
          .. " expected, got %s)", i, type(src)), level + 1)
      end
      if not e then return fail("invalid_request", msg, { param = "images", index = i }, key) end
      images[i] = e
    end
    if req.mask ~= nil then
      local e, msg, bad = resolve(req.mask, "mask", "mask", true)
      if bad then
        error("bad request field 'mask' (path, Image, {bytes=...}, {url=...} or {file_id=...} expected)", level + 1)
      end
      if not e then return fail("invalid_request", msg, { param = "mask" }, key) end
      mask = e
    end
  end
  if req.preserve == true and not mask then
    return fail("invalid_request", "preserve = true needs a mask: it keeps image 1 where the mask does",
      { param = "preserve" }, key)
  end
  if req.preserve == true and (mask.ref or images[1] and images[1].ref) then
    return fail("invalid_request", "preserve = true keeps image 1 where the mask does, so both must be bytes the"
      .. " library can read (a path, an Image, {bytes=} or a data URL), not a url or file id",
      { param = "preserve" }, key)
  end
  if kind == "generate" and req.body == "multipart" then
    return fail("invalid_request", "a generation is sent as JSON; body = \"multipart\" is for edits",
      { param = "body" }, key)
  end
  if not req._no_checks then
    local r = rules.for_model(model, client.limits, client.provider)
    local msg, param, index = rules.check(r, kind, fields, images, mask, json)
    if msg then
      -- Whose rule it is: the same request may pass with another provider.
      if client.provider ~= "compatible" then
        msg = string.format("%s (%s's rules for %s: imgedit rules --provider %s --model %s)", msg, client.provider,
          model, client.provider, model)
      end
      return fail("invalid_request", msg, { param = param, index = index }, key)
    end
    client:_warn(rules.shutdown_warning(r, model))
    if r.response_formats and next(r.response_formats) == nil then
      fields.response_format = nil -- the model always answers base64
    end
  end
  -- The mask's figures need both pictures' bytes.
  local inpaint = kind == "edit" and mask and images[1] and images[1].data and mask.data
    and { base = images[1], mask = mask } or nil
  local stream = req.stream == true or req.stream == "true"
  local spec = {
    stream = stream,
    headers = { providers.auth(client, key), stream and "Accept: text/event-stream, application/json"
      or "Accept: application/json", "Expect:" },
    user_agent = client.user_agent,
    max_response_bytes = client.max_response_bytes,
    billable = true, -- sent once per attempt: libcurl may not re-send it on its own
  }
  if kind == "edit" and json then
    spec.url = providers.url(client, "edits", model)
    -- The same fields as the form, typed as JSON.
    local body = { model = model, prompt = fields.prompt, images = {} }
    for i, e in ipairs(images) do body.images[i] = json_ref(e, req._refs) end
    if mask then body.mask = json_ref(mask, req._refs) end
    local ok, err = json_body(spec, body, names, fields, req, key)
    if not ok then return nil, err end
  elseif kind == "edit" then
    spec.url = providers.url(client, "edits", model)
    local parts = { { name = "model", value = model }, { name = "prompt", value = fields.prompt } }
    for _, k in ipairs(names) do
      if fields[k] ~= nil then parts[#parts + 1] = { name = k, value = fields[k] } end
    end
    for _, e in ipairs(images) do
      parts[#parts + 1] = { name = "image[]", path = e.path, data = e.data, filename = e.filename, type = e.info.mime,
        stamp = e.stamp, sha256 = e.sha256, bytes = e.bytes }
    end
    if mask then
      parts[#parts + 1] = { name = "mask", data = mask.data, filename = mask.filename, type = mask.info.mime }
    end
    spec.parts = parts
  else
    spec.url = providers.url(client, "generations", model)
    -- JSON keeps numbers numbers: "1" for n is sent as 1, not as a string.
    local ok, err = json_body(spec, { model = model, prompt = fields.prompt }, names, fields, req, key)
    if not ok then return nil, err end
  end
  return spec, fields, inpaint
end

return M
