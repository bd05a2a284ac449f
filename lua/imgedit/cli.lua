-- The `imgedit` command line. bin/imgedit calls main(args) and exits with
-- its result, so the commands can be tested from Lua as well as the shell.
local compat = require "imgedit.compat"
local argparse = require "argparse"
local cjson = require "cjson"
local core = require "imgedit.core"
local imgedit = require "imgedit"
local image = require "imgedit.image"
local lineage = require "imgedit.lineage"
local providers = require "imgedit.providers"
local request = require "imgedit.request"

local M = {}

M.EXIT = { ok = 0, failure = 1, usage = 2, input = 3, auth = 4, limit = 5, service = 6, timeout = 7, unsaved = 8 }

local EXIT_OF_KIND = {
  invalid_request = 3, not_found = 3, too_large = 3, moderation = 3, auth = 4, rate_limit = 5, budget = 5,
  server = 6, network = 6, protocol = 6, timeout = 7, canceled = 1, io = 3, callback = 1,
}
M.EXIT_OF_KIND = EXIT_OF_KIND

local EPILOG = [[
Environment: IMGEDIT_API_KEY (the key), IMGEDIT_BASE_URL (default https://api.apiyi.com/v1),
IMGEDIT_PROVIDER (apiyi, openai, azure or compatible; default: from the base url's host);
OPENAI_API_KEY, AZURE_OPENAI_API_KEY and AZURE_OPENAI_ENDPOINT for those providers.
Exit codes: 0 success, 1 other failure, 2 usage error, 3 invalid input (a file, a mask,
a rule of the service, an output that exists or cannot be written), 4 auth, 5 rate
limit or budget, 6 server, network or a broken answer, 7 timeout, 8 the picture was
paid for but could not be written to the output: it was saved elsewhere (the path
is printed).]]

local function stderr(...) io.stderr:write(...) end

-- The port `run --emulate` asks for first (any free one if it is taken).
local EMULATE_PORT = 47821

-- ---- the parser ----

local function build()
  local p = argparse("imgedit", "Edit and fuse images through OpenAI-compatible image APIs.")
    :epilog(EPILOG)
  p:command_target("command")
  p:flag("--version", "Show the version."):action(function()
    print(imgedit._VERSION)
    os.exit(0)
  end)

  -- The request's fields and the client's settings: edit, generate and batch.
  local function service_options(cmd)
    cmd:option("--model", "Model name (default gpt-image-2).")
    cmd:option("--size", "auto or WIDTHxHEIGHT.")
    cmd:option("--quality", "low, medium, high or auto.")
    cmd:option("--format", "Output format: png, jpeg or webp.")
    cmd:option("--compression", "Output compression 0-100, for jpeg and webp.")
    cmd:option("--background", "auto, opaque, or transparent where the model allows it (imgedit rules).")
    cmd:option("--response-format", "url or b64_json (gpt-image-2-all).")
    cmd:option("--timeout", "Seconds for one attempt (default 600).")
    cmd:option("--retries", "Retries on 429, 5xx and dropped connections (default 2).")
    cmd:option("--provider", "apiyi, openai, azure or compatible (default: from the base url's host).")
    cmd:option("--deployment", "Azure: the deployment's name (default: the model).")
    cmd:option("--ca-file", "PEM file of certificate authorities to trust, besides the system's.")
    cmd:option("--ca-path", "Folder of certificate authorities (hashed by openssl rehash), besides the system's.")
    cmd:option("--proxy", "Proxy URL (http, https, socks4, socks5, socks5h); default: HTTPS_PROXY and NO_PROXY.")
  end

  local function request_options(cmd)
    cmd:option("-p --prompt", "What to do."):count(1)
    cmd:option("-o --output", "Where to write the image."):count(1)
    service_options(cmd)
    cmd:flag("--stream", "Stream the answer (gpt-image-2): partial images as they form.")
    cmd:option("--partials", "With --stream: how many partial images, 0-3; each is written to OUT.partial-N.EXT.")
    cmd:flag("-f --force", "Overwrite the output if it exists.")
    cmd:flag("-q --quiet", "No progress display.")
    cmd:flag("-v --verbose", "Show the request (never the key) and each retry on stderr.")
    cmd:flag("--json", "Print the result's metadata as JSON on stdout.")
    cmd:flag("--no-lineage", "Do not write how the picture was made (prompt, model, inputs' hashes) into it.")
  end

  local edit = p:command("edit", "Edit or fuse images."):epilog(EPILOG)
  request_options(edit)
  edit:option("-i --image", "An input image; repeat it for more (the order is image 1, 2, ...)."):count("1+")
  edit:option("--mask", "A PNG mask with alpha (alpha 0 = edit here), the size of the first image.")
  edit:flag("--preserve", "With --mask: keep image 1 exactly wherever the mask keeps (the service may redraw"
    .. " it all); the service's pixels where it edits, a seam of --feather pixels between.")
  edit:option("--feather", "With --preserve: the seam's width in pixels, 0-256 (default 4).")
  edit:option("--drift-warning", "With --mask: warn when the answer changed more than this percentage of the"
    .. " kept area (default 10; 100 never warns).")

  local gen = p:command("generate", "Make an image from text."):epilog(EPILOG)
  request_options(gen)

  local run = p:command("run", "Run a pipeline script with the library loaded (as the global imgedit).")
    :epilog(EPILOG)
  run:argument("script", "The Lua script.")
  run:argument("args", "Arguments for the script (its arg table)."):args("*")
  run:flag("--emulate", "Run against a local emulator instead of the service.")
  run:flag("--watch", "Run again each time the script or a step's input file is saved; writes each pipeline's"
    .. " contact sheet (DIR/index.html).")
  run:option("--runs", "With --watch: stop after this many runs (default: until interrupted).")

  local insp = p:command("inspect", "Format, size and alpha of image files, and whether each is acceptable.")
    :epilog(EPILOG)
  insp:argument("files", "Image files."):args("+")
  insp:flag("--json", "Print JSON.")

  local mask = p:command("mask", "Make a mask: alpha 0 where the edit goes."):epilog(EPILOG)
  mask:option("--rect", "X,Y,W,H: open a rectangle for editing (repeatable)."):count("*")
  mask:option("--ellipse", "X,Y,W,H: open the ellipse in that box (repeatable)."):count("*")
  mask:option("--keep", "X,Y,W,H: keep a rectangle after the shapes above (repeatable)."):count("*")
  mask:option("--from-gray", "A black-and-white picture: white marks the area to edit.")
  mask:option("--from-alpha", "A picture whose transparent part marks the area to edit.")
  mask:option("--threshold", "With --from-gray: 0..1, hard edge at this grey level.")
  mask:option("--feather", "Soften the edge by this many pixels.")
  mask:flag("--invert", "Swap the areas to edit and to keep.")
  mask:option("--like", "A base image: the mask takes its size.")
  mask:option("--size", "WIDTHxHEIGHT, when there is no --like.")
  mask:option("-o --output", "Where to write the mask (PNG)."):count(1)
  mask:flag("-f --force", "Overwrite the output if it exists.")
  mask:flag("--json", "Print the mask's check report as JSON.")

  local report = p:command("report", "Write a pipeline folder's contact sheet: one HTML page of every step.")
  report:argument("dir", "The pipeline's folder (its steps' .json files).")
  report:option("-o --output", "Where to write the page (default DIR/index.html).")
  report:option("--title", "The page's title (default: the folder's name).")
  report:flag("--json", "Print JSON.")

  local rules = p:command("rules", "What a provider and model accept: the limits imgedit checks before sending.")
    :epilog("Provider by default: IMGEDIT_PROVIDER, else from IMGEDIT_BASE_URL's host, else apiyi.")
  rules:option("--provider", "apiyi, openai, azure or compatible.")
  rules:option("--model", "One model's rules; without it, the provider's models.")
  rules:flag("--json", "Print JSON.")

  local batch = p:command("batch", "Run the same kind of edit over many pictures: a manifest or --prompt over"
    .. " pictures, at the service's pace, resumable."):epilog(EPILOG)
  require("imgedit.cli_batch").options(batch)
  service_options(batch)

  local emu = p:command("emulate", "Serve the local emulator until interrupted; prints its url and key.")
    :epilog(EPILOG)
  emu:option("--port", "Port on 127.0.0.1 (default: any free one).", "0")
  emu:option("--latency", "Seconds each answer takes.", "0")
  emu:flag("--sink", "Benchmark mode: discard uploads unread and answer a fixed small image at once.")
  emu:option("--provider", "Play this provider: apiyi (default), openai, azure or compatible.")
  return p
end

-- ---- helpers ----

-- ---- JSON on stdout: exactly one object per command, {"ok": ...} ----

-- lua-cjson 2.1.0 writes an empty table as {}: lists are marked and their
-- empty ones written as [].
local EMPTY = "\1imgedit-empty-list\1"
local function list(t)
  if #t == 0 then return EMPTY end
  return t
end

local function json_out(t)
  local s = cjson.encode(t):gsub('"\\u0001imgedit%-empty%-list\\u0001"', "[]")
  print(s)
end
M.json_out = json_out

local ERROR_FIELDS = { "kind", "message", "param", "status", "code", "request_id", "url", "maybe_billed",
  "retry_after", "attempts", "index", "saved_to" }

local function error_object(err)
  local e = {}
  for _, k in ipairs(ERROR_FIELDS) do
    if err[k] ~= nil then e[k] = err[k] end
  end
  return e
end

-- The current command's --json flag: failures print their JSON object too.
local json_mode = false

local function fail(code, msg, err)
  stderr("imgedit: ", msg, "\n")
  if json_mode then
    local e = err and error_object(err) or { kind = code == 2 and "usage" or "failure", message = msg }
    json_out { ok = false, error = e }
  end
  return code
end

local function fail_err(err)
  -- The library's hints name its options; here they are flags.
  local text = tostring(err):gsub("^imgedit: ", ""):gsub("ca_file or ca_path", "--ca-file or --ca-path")
  return fail(EXIT_OF_KIND[err.kind] or 1, text, err)
end

local function number_opt(v, name)
  if v == nil then return nil end
  local n = tonumber(v)
  if not n then error({ usage = "--" .. name .. " expects a number, got '" .. v .. "'" }) end
  return n
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function human(n)
  if n >= 1024 * 1024 then return string.format("%.1f MB", n / 1048576) end
  if n >= 1024 then return string.format("%.0f KB", n / 1024) end
  return string.format("%d B", n)
end

-- A one-line progress display on stderr: a bar while uploading, a spinner
-- with the seconds waited, then the bytes downloaded.
local function progress_display()
  local spin = { "|", "/", "-", "\\" }
  local i = 0
  local shown = false
  local function show(line)
    stderr("\r", line, "\27[K")
    shown = true
  end
  local function on_progress(p)
    i = i + 1
    if p.phase == "upload" then
      local frac = p.upload_total > 0 and p.uploaded / p.upload_total or 0
      local n = math.floor(frac * 24 + 0.5)
      show(string.format("upload   [%s%s] %3d%%  %s / %s", string.rep("#", n), string.rep("-", 24 - n),
        math.floor(frac * 100 + 0.5), human(p.uploaded), human(p.upload_total)))
    elseif p.phase == "wait" then
      show(string.format("waiting for the model %s %ds", spin[i % 4 + 1], math.floor(p.elapsed)))
    else
      show(string.format("download %s%s", human(p.downloaded),
        p.download_total > 0 and (" / " .. human(p.download_total)) or ""))
    end
  end
  local function done()
    if shown then stderr("\r\27[K") end
  end
  return on_progress, done
end

-- Whether `path` can be written, before anything is paid for: not a
-- folder, a file can be made beside it (the probe that the atomic write
-- will make), and an existing file is only replaced with --force.
local function check_output(path, force)
  local ok, why = core.can_write(path)
  if not ok then return nil, string.format("cannot write %s: %s", path, why) end
  if exists(path) and not force then return nil, path .. " exists; use --force to overwrite it" end
  return true
end

-- The picture is paid for, but the output could not be written: keep it
-- beside the output, else in the current folder, else in the temporary
-- folder, and say where.
local function rescue(img, output)
  local name = string.format("imgedit-rescued-%s.%s", img.sha256:sub(1, 12), image.EXT[img.format])
  for _, dir in ipairs { output and output:match("^(.*)/[^/]*$") or ".", ".", os.getenv("TMPDIR") or "/tmp" } do
    local path = dir .. "/" .. name
    if core.write_atomic(path, img.bytes) then return path end
  end
end

-- ---- commands ----

-- How far an edit with a mask strayed, and whether preserve put image 1
-- back: from an Image or a lineage record (mask_drift, mask_spill, preserved).
local function mask_line(t)
  local held = type(t.preserved) == "table" and tonumber(t.preserved.feather)
  return string.format("  mask: the answer changed %.1f%% of the kept area (drift), left %.1f%% of the edit area"
    .. " alone (spill)%s", t.mask_drift * 100, (tonumber(t.mask_spill) or 0) * 100,
    held and string.format("; image 1 kept outside the mask, %d-pixel seam", held) or "")
end

local function cmd_request(a)
  local ok, why = check_output(a.output, a.force)
  if not ok then return fail(3, why, { kind = "io", message = why, param = "output" }) end
  for _, o in ipairs { { a.ca_file, "--ca-file" }, { a.ca_path, "--ca-path" } } do
    if o[1] then
      local f, e = io.open(o[1], "rb")
      if not f then return fail(3, o[2] .. ": " .. e, { kind = "io", message = e, param = o[2] }) end
      f:close()
    end
  end
  local cok, client = pcall(imgedit.new, {
    model = a.model, timeout = number_opt(a.timeout, "timeout"), max_retries = number_opt(a.retries, "retries"),
    ca_file = a.ca_file, ca_path = a.ca_path, proxy = a.proxy, provider = a.provider, deployment = a.deployment,
  })
  if not cok then -- a value out of range (--timeout 0) or a bad IMGEDIT_BASE_URL
    error({ usage = (tostring(client):gsub("^[^:]*:%d+: ", "")) })
  end
  local req = {
    prompt = a.prompt, size = a.size, quality = a.quality, output_format = a.format,
    output_compression = number_opt(a.compression, "compression"), background = a.background,
    response_format = a.response_format,
  }
  if a.command == "edit" then
    req.images, req.mask = a.image, a.mask
    if (a.preserve or a.feather or a.drift_warning) and not a.mask then
      error({ usage = "--preserve, --feather and --drift-warning work with --mask" })
    end
    req.preserve = a.preserve or nil
    local feather = a.feather and compat.tointeger(number_opt(a.feather, "feather"))
    if a.feather and not (feather and feather >= 0 and feather <= 256) then
      error({ usage = "--feather takes a whole number of pixels, 0 to 256" })
    end
    req.feather = feather
    local dw = a.drift_warning and number_opt(a.drift_warning, "drift-warning")
    if dw and (dw < 0 or dw > 100) then error({ usage = "--drift-warning takes a percentage, 0 to 100" }) end
    req.drift_warning = dw and dw / 100
  end
  -- -o out.jpg asks the service for jpeg, where the model takes output_format;
  -- otherwise save() converts, so the name and the bytes always agree.
  local model = a.model or client.model
  local r = client:rules(model)
  local enums = r.enums
  local wanted = image.format_of_name(a.output)
  if req.background == "transparent" and r.transparent_formats and not r.transparent_formats[req.output_format or wanted] then
    local ok_formats = require("imgedit.rules").list_of(r.transparent_formats, " or ")
    error({ usage = string.format("--background transparent needs %s output, but -o %s asks for %s;"
      .. " name the output .%s", ok_formats, a.output, req.output_format or wanted, ok_formats:gsub(" or ", " or .")) })
  end
  if req.output_format == nil and enums and enums.output_format then
    for _, f in ipairs(enums.output_format) do
      if f == wanted then req.output_format = wanted end
    end
  end
  if a.stream then
    req.stream = true
    req.partial_images = compat.tointeger(number_opt(a.partials, "partials"))
    local stem = image.stem(a.output)
    req.on_partial = function(img, index)
      local path = string.format("%s.partial-%d.%s", stem, index, img.format == "jpeg" and "jpg" or img.format)
      local ok = img:save(path)
      if ok and not a.quiet and not a.json then stderr("\r\27[Kpartial image ", index, ": ", path, "\n") end
    end
  end
  local done = function() end
  if not a.quiet and core.isatty(2) then req.on_progress, done = progress_display() end
  if a.verbose then
    local parts = {}
    for _, k in ipairs { "size", "quality", "output_format", "output_compression", "background", "response_format" } do
      if req[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(req[k]) end
    end
    for i, img in ipairs(req.images or {}) do
      local info = imgedit.inspect(img)
      parts[#parts + 1] = string.format("image[%d]=%s (%s)", i, img, info and (info.mime .. ", " .. human(info.bytes)) or "?")
    end
    if req.mask then parts[#parts + 1] = "mask=" .. req.mask end
    stderr(string.format("imgedit: POST %s model=%s prompt=%q %s\n",
      providers.url(client, a.command == "edit" and "edits" or "generations", model), model, a.prompt,
      table.concat(parts, " ")))
    req.on_retry = function(info)
      stderr(string.format("imgedit: attempt %d failed (%s%s); retrying in %.1fs\n", info.attempt, info.kind,
        info.status and (", HTTP " .. info.status) or "", info.wait))
    end
  end
  local img, err
  if a.command == "edit" then img, err = client:edit(req) else img, err = client:generate(req) end
  done()
  if not img then
    -- A callback or a download that failed after payment may still hold the picture.
    local paid = err.image
    if paid then err.saved_to = rescue(paid, a.output) end
    if err.saved_to then stderr("imgedit: the paid picture was saved to ", err.saved_to, "\n") end
    return fail_err(err)
  end
  if not a.no_lineage then
    local parents = {}
    for i, f in ipairs(req.images or {}) do parents[i] = core.sha256_file(f) end
    local params = {}
    for k, v in pairs(req) do if type(v) ~= "function" and not request.CONTROL[k] then params[k] = v end end
    img = image.with_lineage(img, lineage.record { prompt = a.prompt, model = model, params = params, parents = parents,
      mask = req.mask and core.sha256_file(req.mask), request_id = img.request_id, held = img })
  end
  local saved, serr = img:save(a.output)
  if not saved then
    serr.saved_to = rescue(img, a.output)
    serr.message = serr.message .. (serr.saved_to and ("; the paid picture was saved to " .. serr.saved_to)
      or "; the picture could not be saved anywhere")
    serr.request_id = img.request_id
    return fail(8, (tostring(serr):gsub("^imgedit: ", "")), serr)
  end
  -- What was written (converted, if the name asked for another format).
  local info = imgedit.inspect(a.output) or { format = img.format, bytes = #img.bytes }
  local sha = core.sha256_file(a.output) or img.sha256
  if a.json then
    json_out { ok = true, path = a.output, format = info.format, width = img.width, height = img.height,
      bytes = info.bytes, sha256 = sha, usage = img.usage or cjson.null, model = img.model,
      url = img.url or cjson.null, request_id = img.request_id or cjson.null, cost = img.cost or cjson.null,
      converted_from = info.format ~= img.format and img.format or nil, mask_drift = img.mask_drift,
      mask_spill = img.mask_spill, preserved = img.preserved, preserve_error = img.preserve_error }
  elseif not a.quiet then
    print(string.format("%s: %s %dx%d, %s%s%s%s", a.output, info.format, img.width, img.height, human(info.bytes),
      info.format ~= img.format and (" (converted from " .. img.format .. ")") or "",
      img.usage and string.format(", %d tokens", img.usage.total_tokens or 0) or "",
      img.cost and string.format(", $%.4f%s", img.cost.usd, img.cost.upper_bound and " at most" or "") or ""))
    if img.mask_drift then print(mask_line(img)) end
  end
  return 0
end

local function cmd_inspect(a)
  local failed, rows = false, {}
  for _, f in ipairs(a.files) do
    local info, err = imgedit.inspect(f)
    if info then local _ = info.lineage end -- read now, so the JSON row holds it
    local row = info or { error = error_object(err) }
    if row.error then row.error.attempts = nil end
    row.file = f
    if info then
      row.ok_as_image = info.accepted
      row.ok_as_mask = info.format == "png" and info.has_alpha
    else
      failed = true
    end
    rows[#rows + 1] = row
    if not a.json then
      if info then
        print(string.format("%s: %s %dx%d, %d channels%s, %s%s%s", f, info.format, info.width or 0,
          info.height or 0, info.channels or 0, info.has_alpha and " with alpha" or "", human(info.bytes),
          info.accepted and "" or ", not accepted for upload", row.ok_as_mask and ", usable as a mask" or ""))
        local l = info.lineage
        if l then
          print(string.format("  made by %s%s from %d input%s: %q", tostring(l.model), l.step and (" as step " .. l.step) or "",
            #(l.parents or {}), #(l.parents or {}) == 1 and "" or "s", tostring(l.prompt)))
          local ps = {}
          for k, v in pairs(type(l.params) == "table" and l.params or {}) do ps[#ps + 1] = k .. "=" .. tostring(v) end
          table.sort(ps)
          if #ps > 0 then print("  params " .. table.concat(ps, ", ")) end
          for i, p in ipairs(l.parents or {}) do print(string.format("  input %d sha256 %s", i, p)) end
          if l.mask then print("  mask sha256 " .. l.mask) end
          if type(l.mask_drift) == "number" then print(mask_line(l)) end
          if l.request_id then print("  request " .. l.request_id) end
        end
      else
        print(f .. ": " .. err.message)
      end
    end
  end
  if a.json then json_out { ok = not failed, files = list(rows) } end
  return failed and 3 or 0
end

local function box(s, what)
  local x, y, w, h = tostring(s):match("^(%-?%d+),(%-?%d+),(%d+),(%d+)$")
  if not x then error({ usage = what .. " expects X,Y,W,H, got '" .. tostring(s) .. "'" }) end
  return { x = compat.tointeger(tonumber(x)), y = compat.tointeger(tonumber(y)), w = compat.tointeger(tonumber(w)),
    h = compat.tointeger(tonumber(h)) }
end

local function cmd_mask(a)
  local okw, why = check_output(a.output, a.force)
  if not okw then return fail(3, why, { kind = "io", message = why, param = "output" }) end
  local sources = (a.from_gray and 1 or 0) + (a.from_alpha and 1 or 0) + ((#a.rect + #a.ellipse > 0) and 1 or 0)
  if sources ~= 1 then
    error({ usage = "give shapes (--rect, --ellipse), --from-gray or --from-alpha: exactly one kind" })
  end
  local m, err
  if a.from_gray or a.from_alpha then
    local fn = a.from_gray and imgedit.mask.from_gray or imgedit.mask.from_alpha
    m, err = fn(a.from_gray or a.from_alpha, { invert = a.invert, threshold = number_opt(a.threshold, "threshold"),
      feather = compat.tointeger(number_opt(a.feather, "feather")) })
    if m and a.like then -- match the base's size
      local fitted
      fitted, m = imgedit.fit(a.like, { mask = m, max_bytes = math.huge })
      if not fitted then return fail_err(m) end
    end
  else
    local o = { invert = a.invert, shapes = {} }
    if a.like then
      o.like = a.like
    else
      local w, h = tostring(a.size):match("^(%d+)x(%d+)$")
      if not w then error({ usage = "shapes need --like BASE or --size WIDTHxHEIGHT" }) end
      o.width, o.height = compat.tointeger(tonumber(w)), compat.tointeger(tonumber(h))
    end
    for _, s in ipairs(a.rect) do local b = box(s, "--rect"); b.kind = "rect"; o.shapes[#o.shapes + 1] = b end
    for _, s in ipairs(a.ellipse) do local b = box(s, "--ellipse"); b.kind = "ellipse"; o.shapes[#o.shapes + 1] = b end
    for _, s in ipairs(a.keep) do local b = box(s, "--keep"); b.kind, b.keep = "rect", true; o.shapes[#o.shapes + 1] = b end
    m, err = imgedit.mask.compose(o)
  end
  if not m then return fail_err(err) end
  local ok, serr = m:save(a.output)
  if not ok then return fail_err(serr) end
  local report, rerr = imgedit.mask.check(m, a.like)
  if not report then return fail_err(rerr) end
  local warnings = report.warnings
  if a.json then
    local t = {}
    for k, v in pairs(report) do t[k] = v end
    t.ok, t.path, t.warnings, t.problems = true, a.output, list(warnings), list(report.problems)
    json_out(t)
  else
    print(string.format("%s: %dx%d mask, %.1f%% to edit", a.output, m.width, m.height, (report.coverage or 0) * 100))
  end
  for _, w in ipairs(warnings) do stderr("imgedit: warning: ", w, "\n") end
  return 0
end

local function cmd_run(a)
  local emu
  if a.emulate then
    -- One port from run to run, when free: the pipeline's cache keys name
    -- the service's url, so a new port each run would never hit the cache.
    local E = require "imgedit.emulator"
    emu = E.start { port = EMULATE_PORT } or assert(E.start {})
  end
  -- With --emulate, the script's clients go to the emulator unless it names
  -- its own service: the script's library hands the choice to imgedit.new
  -- (no global is written).
  local steer = emu and { base_url = emu.url, api_key = emu.key, provider = emu.provider } or {}
  local function new(opts)
    local o = {}
    for k, v in pairs(steer) do o[k] = v end
    for k, v in pairs(opts or {}) do o[k] = v end
    return imgedit.new(o)
  end
  -- pipeline{} and batch{} without a client get one of those
  local function with_client(opts)
    if type(opts) ~= "table" or opts.client ~= nil or not emu then return opts end
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.client = new { max_concurrency = o.concurrency }
    return o
  end
  local script_arg = { [0] = a.script }
  for i, v in ipairs(a.args) do script_arg[i] = v end
  -- The script sees the library as `imgedit` and its own arguments as `arg`.
  -- assert passes an error table through on every Lua (5.1's wants a string).
  local function assert_any(v, msg, ...)
    if not v then error(msg == nil and "assertion failed!" or msg, 2) end
    return v, msg, ...
  end
  -- One run of the script: ok, err, and the pipelines it made (for --watch).
  local function once()
    local made = {}
    local lib = setmetatable({ new = new, pipeline = function(opts)
      local p = imgedit.pipeline(with_client(opts))
      made[#made + 1] = p
      return p
    end, batch = function(opts) return imgedit.batch(with_client(opts)) end }, { __index = imgedit })
    local env = setmetatable({ imgedit = lib, arg = script_arg, assert = assert_any }, { __index = _G })
    local chunk, lerr = compat.loadfile(a.script, env)
    if not chunk then return false, setmetatable({ load = lerr }, { __tostring = function() return lerr end }), made end
    local ok, e = pcall(chunk, compat.unpack(script_arg))
    return ok, e, made
  end
  local ok, e
  if a.watch then
    local runs = a.runs and compat.tointeger(number_opt(a.runs, "runs"))
    ok, e = require("imgedit.watch").loop { script = a.script, run = once, runs = runs, out = function(line)
      io.stdout:write(line, "\n")
      io.stdout:flush()
    end }
  else
    ok, e = once()
  end
  if emu then emu:stop() end
  if ok then return 0 end
  if type(e) == "table" and e.load then return fail(3, e.load) end
  if imgedit.is_error(e) then return fail_err(e) end
  return fail(1, tostring(e))
end

local function cmd_emulate(a)
  local started, emu, err = pcall(require("imgedit.emulator").start, {
    port = compat.tointeger(number_opt(a.port, "port")), latency = number_opt(a.latency, "latency"), sink = a.sink,
    provider = a.provider,
  })
  if not started then error({ usage = (tostring(emu):gsub("^[^:]*:%d+: ", "")) }) end
  if not emu then return fail(1, err) end
  print("url " .. emu.url)
  print("key " .. emu.key)
  print("provider " .. emu.provider .. " (a client on 127.0.0.1 needs --provider " .. emu.provider .. ")")
  if emu.provider == "azure" then
    print(string.format("export AZURE_OPENAI_ENDPOINT=%s AZURE_OPENAI_API_KEY=%s", emu.url, emu.key))
  end
  print(string.format("export IMGEDIT_BASE_URL=%s IMGEDIT_API_KEY=%s IMGEDIT_PROVIDER=%s", emu.url, emu.key,
    emu.provider))
  io.stdout:flush()
  -- Serve until interrupted; the emulator runs in its own threads.
  local sleeper = imgedit.new { base_url = emu.url, api_key = emu.key }
  while true do sleeper:poll(3600) end
end

local function cmd_report(a)
  local sheet = require "imgedit.sheet"
  local f = io.open(a.dir .. "/.", "rb")
  if not f then return fail(3, a.dir .. ": not a readable folder", { kind = "io", message = "not a readable folder" }) end
  f:close()
  local out = a.output or (a.dir .. "/index.html")
  local steps = sheet.steps(a.dir)
  local ok, msg = core.write_atomic(out, sheet.render(steps, out:match("^(.*)/[^/]*$") or ".",
    a.title or (a.dir:gsub("/+$", ""):match("[^/]+$") or a.dir)))
  if not ok then return fail(3, "cannot write " .. out .. ": " .. msg, { kind = "io", message = msg }) end
  if a.json then
    json_out { ok = true, html = out, steps = #steps }
  else
    print(string.format("contact sheet: %s (%d step%s)", out, #steps, #steps == 1 and "" or "s"))
  end
  return 0
end

local function cmd_rules(a)
  local provider = a.provider or os.getenv("IMGEDIT_PROVIDER")
  if provider == nil or provider == "" then
    local base = os.getenv("IMGEDIT_BASE_URL")
    provider = (base and base ~= "") and providers.detect(base) or "apiyi"
  end
  if not providers.list[provider] then
    error({ usage = "--provider must be apiyi, openai, azure or compatible, got '" .. provider .. "'" })
  end
  local R = imgedit.rules
  local names = a.model and { a.model } or R.models(provider)
  if a.json then
    local models = {}
    for _, m in ipairs(names) do models[m] = R.get(provider, m) end
    json_out { ok = true, provider = provider, source = R.sources[provider], models = models }
    return 0
  end
  print(string.format("provider %s (source: %s)", provider, R.sources[provider]))
  if #names == 0 then print("no models listed: every model gets the generic checks (a prompt; an edit needs an image)") end
  for _, m in ipairs(names) do
    local known = R.providers[provider][m] ~= nil
    print("")
    print(m .. (known and "" or " (not listed for this provider: the generic checks only)"))
    for _, row in ipairs(R.describe(R.get(provider, m))) do
      print(string.format("  %-19s %s", row[1], row[2]))
    end
  end
  return 0
end

local function cmd_batch(a)
  return require("imgedit.cli_batch").run(a, { fail_err = fail_err, number_opt = number_opt, json_out = json_out,
    EXIT = M.EXIT, EMULATE_PORT = EMULATE_PORT })
end

local COMMANDS = { batch = cmd_batch, edit = cmd_request, generate = cmd_request, inspect = cmd_inspect, mask = cmd_mask,
  run = cmd_run, emulate = cmd_emulate, rules = cmd_rules, report = cmd_report }

-- main(args) -> exit code
function M.main(args)
  local parser = build()
  json_mode = false
  for _, v in ipairs(args) do
    if v == "--json" then json_mode = true end
  end
  local ok, a = parser:pparse(args)
  if not ok then
    stderr(parser:get_usage(), "\n")
    return fail(2, a)
  end
  local rok, code = pcall(COMMANDS[a.command], a)
  if rok then return code end
  if type(code) == "table" and code.usage then return fail(2, code.usage) end
  error(code, 0)
end

return M
