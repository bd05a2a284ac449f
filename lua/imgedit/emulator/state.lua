-- The emulated service's state, shared by its parts (service.lua, and
-- endpoints.lua for the pictures it serves back): its settings, the
-- request log and its epoch, the files a url answer points to. It lives in
-- the emulator's own Lua state, never the caller's.
local core = require "imgedit.core"

local M = {}

M.cfg = { latency = 0 }
M.log, M.files = {}, {}
-- The log's epoch: a request's answer delivered after a clear() is not
-- mistaken for one of the new log.
M.epoch = 0
M.seq = 0

-- The emulator's clock: the time, moved on by the time_offset setting (so
-- that tests can see files expire without waiting an hour). now() for
-- durations (fractions of a second), time() for the API's timestamps.
function M.now() return core.now() + (tonumber(M.cfg.time_offset) or 0) end
function M.time() return os.time() + math.floor(tonumber(M.cfg.time_offset) or 0) end

return M
