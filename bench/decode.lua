-- Answer decode: from the last byte of a 1536x1024 PNG answer to the Image,
-- as raw base64 (gpt-image-2) and as a data URL (gpt-image-2-all). Prints
-- JSON: median milliseconds and the peak extra memory (VmHWM, reset first).
local core = require "imgedit.core"
local answer = require "imgedit.answer"
local cjson = require "cjson"

local png = assert(core.read_file(arg[1]))

local function status(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+) kB")) * 1024
end

local function reset_peak()
  local f = io.open("/proc/self/clear_refs", "w")
  if f then f:write("5") f:close() end
end

local function measure(body)
  local res = { ok = true, status = 200, body = body, content_type = "application/json" }
  local times, extra = {}, 0
  for i = 1, 15 do
    collectgarbage("collect")
    collectgarbage("stop")
    local base = status("VmRSS")
    reset_peak()
    local t0 = core.now()
    local img = assert(answer.read(res, { model = "gpt-image-2" }, 1e9, "k"))
    times[i] = (core.now() - t0) * 1000
    extra = math.max(extra, status("VmHWM") - base)
    assert(#img.bytes == #png)
    img = nil
    collectgarbage("restart")
  end
  table.sort(times)
  return { ms = times[8], extra = extra }
end

local b64 = core.b64encode(png)
local raw = measure('{"created":1,"data":[{"b64_json":"' .. b64 .. '"}],"usage":{"total_tokens":1}}')
local url = measure('{"created":1,"data":[{"b64_json":"data:image/png;base64,' .. b64 .. '"}]}')
print(cjson.encode { png_bytes = #png, raw = raw, dataurl = url })
