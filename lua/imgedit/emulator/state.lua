-- The emulated service's state, shared by its parts (service.lua, and
-- endpoints.lua for the pictures it serves back): its settings, the
-- request log and its epoch, the files a url answer points to. It lives in
-- the emulator's own Lua state, never the caller's.
local M = {}

M.cfg = { latency = 0 }
M.log, M.files = {}, {}
-- The log's epoch: a request's answer delivered after a clear() is not
-- mistaken for one of the new log.
M.epoch = 0
M.seq = 0

return M
