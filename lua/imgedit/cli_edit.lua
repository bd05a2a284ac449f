-- `imgedit edit` and `imgedit generate`: one request, its picture written
-- to --output (or rescued when it cannot be), its figures printed.
local compat = require "imgedit.compat"
local cjson = require "cjson"
local core = require "imgedit.core"
local imgedit = require "imgedit"
local image = require "imgedit.image"
local lineage = require "imgedit.lineage"
local providers = require "imgedit.providers"
local request = require "imgedit.request"
local C = require "imgedit.cli_common"
local stderr, json_out, fail, fail_err = C.stderr, C.json_out, C.fail, C.fail_err
local number_opt, human, progress_display, check_output = C.number_opt, C.human, C.progress_display, C.check_output
local rescue, mask_line, safe, quote = C.rescue, C.mask_line, C.safe, C.quote

local M = {}

local function cmd_request(a)
  local inputs = {}
  for _, f in ipairs(a.image or {}) do inputs[#inputs + 1] = f end
  if a.mask then inputs[#inputs + 1] = a.mask end
  local ok, why = check_output(a.output, a.force, inputs)
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
    ca_file = a.ca_file, ca_path = a.ca_path, proxy = a.proxy, allow_http = a.allow_http or nil, provider = a.provider, deployment = a.deployment,
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
      if ok and not a.quiet and not a.json then stderr("\r\27[Kpartial image ", index, ": ", safe(path), "\n") end
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
    -- The url without its user and password; names and prompt escaped.
    stderr(safe(string.format("imgedit: POST %s model=%s prompt=%s %s",
      providers.url(client, a.command == "edit" and "edits" or "generations", model), model, quote(a.prompt),
      table.concat(parts, " "))), "\n")
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
    if err.saved_to then stderr("imgedit: the paid picture was saved to ", safe(err.saved_to), "\n") end
    return fail_err(err)
  end
  if not a.no_lineage then
    local parents = {}
    for i, f in ipairs(req.images or {}) do parents[i] = lineage.sha256_file(f) end
    local params = {}
    for k, v in pairs(req) do if type(v) ~= "function" and not request.CONTROL[k] then params[k] = v end end
    img = image.with_lineage(img, lineage.record { prompt = a.prompt, model = model, params = params, parents = parents,
      mask = req.mask and lineage.sha256_file(req.mask), request_id = img.request_id, held = img })
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
    print(string.format("%s: %s %dx%d, %s%s%s%s", safe(a.output), info.format, img.width, img.height, human(info.bytes),
      info.format ~= img.format and (" (converted from " .. img.format .. ")") or "",
      img.usage and string.format(", %d tokens", img.usage.total_tokens or 0) or "",
      img.cost and string.format(", $%.4f%s", img.cost.usd, img.cost.upper_bound and " at most" or "") or ""))
    if img.mask_drift then print(mask_line(img)) end
  end
  return 0
end

M.run = cmd_request

return M
