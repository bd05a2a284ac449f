-- What the examples share: a client for the real service when
-- IMGEDIT_API_KEY is set (IMGEDIT_BASE_URL picks another endpoint), else
-- for an emulator started in this process; and the output folder.
local imgedit = require "imgedit"

local M = {}

-- setup(name [, client_opts [, emulator_opts]]) -> client, outdir, finish, emu
-- The output folder is arg[1], else out/<name> (out/ without a name).
function M.setup(name, opts, emu_opts)
  local outdir = arg and arg[1] or (name and ("out/" .. name) or "out")
  assert(require("imgedit.core").mkdir_p(outdir))
  local emu, client
  if os.getenv("IMGEDIT_API_KEY") then
    client = imgedit.new(opts or {})
  else
    emu = assert(require("imgedit.emulator").start(emu_opts or {}))
    local o = { base_url = emu.url, api_key = emu.key }
    for k, v in pairs(opts or {}) do o[k] = v end
    client = imgedit.new(o)
  end
  local function finish()
    if emu then emu:stop() end
  end
  return client, outdir, finish, emu
end

return M
