-- What the commands of the command line share: exit codes, JSON on
-- stdout, failures, option numbers, the progress display, the output
-- checks and the rescue of a paid picture that could not be written.
local cjson = require "cjson"
local core = require "imgedit.core"
local files = require "imgedit.files"
local image = require "imgedit.image"
local text = require "imgedit.text"

local M = {}

M.EXIT = { ok = 0, failure = 1, usage = 2, input = 3, auth = 4, limit = 5, service = 6, timeout = 7, unsaved = 8 }

local EXIT_OF_KIND = {
  invalid_request = 3, not_found = 3, too_large = 3, moderation = 3, auth = 4, rate_limit = 5, budget = 5,
  server = 6, network = 6, protocol = 6, timeout = 7, canceled = 1, io = 3, callback = 1,
}
M.EXIT_OF_KIND = EXIT_OF_KIND

local function stderr(...) io.stderr:write(...) end

-- The port `run --emulate` asks for first (any free one if it is taken).
local EMULATE_PORT = 47821

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
  print(text.json(s))
end

local ERROR_FIELDS = { "kind", "message", "param", "status", "code", "request_id", "url", "maybe_billed",
  "retry_after", "attempts", "index", "saved_to" }

local function error_object(err)
  local e = {}
  for _, k in ipairs(ERROR_FIELDS) do
    if err[k] ~= nil then e[k] = err[k] end
  end
  return e
end

-- The current command's --json flag (set by cli.main): failures print
-- their JSON object too.
M.json_mode = false

-- The line on stderr is made safe (text.lua): a message may hold the
-- service's words or a file's name. The JSON object keeps them exact.
local function fail(code, msg, err)
  stderr("imgedit: ", text.safe(msg, true), "\n")
  if M.json_mode then
    -- cjson escapes the controls; a url's credentials go as on stderr.
    local e = err and error_object(err) or { kind = code == 2 and "usage" or "failure", message = text.redact(msg) }
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
-- check_output(path, force [, inputs]) -> true | nil, why: an output
-- never replaces one of the inputs (by identity, however spelt), nor an
-- existing file without --force.
local function check_output(path, force, inputs)
  local ok, why = core.can_write(path)
  if not ok then return nil, string.format("cannot write %s: %s", path, why) end
  local run = files.run { overwrite = force }
  for _, p in ipairs(inputs or {}) do run:input(p) end
  local free, err = run:may_write(path)
  if not free then
    if force or not exists(path) then return nil, err.message end
    return nil, path .. " exists; use --force to overwrite it"
  end
  return true
end

-- The picture is paid for, but the output could not be written: keep it
-- beside the output, else in the current folder, else in the temporary
-- folder, and say where.
local function rescue(img, output)
  local name = string.format("imgedit-rescued-%s.%s", img.sha256:sub(1, 12), image.EXT[img.format])
  for _, dir in ipairs { output and output:match("^(.*)/[^/]*$") or ".", ".", os.getenv("TMPDIR") or "/tmp" } do
    local path = files.join(dir, name)
    if core.write_atomic(path, img.bytes) then return path end
  end
end

-- How far an edit with a mask strayed, and whether preserve put image 1
-- back: from an Image or a lineage record (mask_drift, mask_spill, preserved).
local function mask_line(t)
  local held = type(t.preserved) == "table" and tonumber(t.preserved.feather)
  return string.format("  mask: the answer changed %.1f%% of the kept area (drift), left %.1f%% of the edit area"
    .. " alone (spill)%s", t.mask_drift * 100, (tonumber(t.mask_spill) or 0) * 100,
    held and string.format("; image 1 kept outside the mask, %d-pixel seam", held) or "")
end

M.safe, M.quote = text.safe, text.quote
M.stderr, M.EMULATE_PORT, M.list, M.json_out, M.error_object = stderr, EMULATE_PORT, list, json_out, error_object
M.fail, M.fail_err, M.number_opt, M.exists, M.human = fail, fail_err, number_opt, exists, human
M.progress_display, M.check_output, M.rescue, M.mask_line = progress_display, check_output, rescue, mask_line

return M
