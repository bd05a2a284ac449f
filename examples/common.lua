-- What the examples share: a client for the real service when
-- IMGEDIT_API_KEY is set (IMGEDIT_BASE_URL picks another endpoint), else
-- for an emulator started in this process; and the output folder.
local imgedit = require "imgedit"

local M = {}

function M.setup(name, opts)
  local outdir = arg and arg[1] or ("out/" .. name)
  local emu, client
  if os.getenv("IMGEDIT_API_KEY") then
    client = imgedit.new(opts or {})
  else
    emu = assert(require("imgedit.emulator").start {})
    local o = { base_url = emu.url, api_key = emu.key }
    for k, v in pairs(opts or {}) do o[k] = v end
    client = imgedit.new(o)
  end
  local function finish()
    if emu then emu:stop() end
  end
  return client, outdir, finish
end

return M
