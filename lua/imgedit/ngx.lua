-- nginx's Lua module (lua-nginx-module, as in OpenResty or Debian's
-- libnginx-mod-http-lua): a client per worker process whose waits yield to
-- nginx. job:wait(), and so client:edit, generate, download and map, run in
-- a request's handler polls with poll(0) and sleeps with ngx.sleep between
-- polls, so the worker serves other requests while the service works.
--
-- Why a sleep and not client:fd(): lua-nginx-module waits only on what it
-- opened itself (its cosockets), and its ngx.run_worker_thread, which can
-- block in poll(2) on the descriptor in a pool thread, holds a thread per
-- waiting request and can miss a wake-up (another request's poll(0) reads
-- the descriptor before the thread is in poll), so it too needs a short
-- bound. A request looks every GRAIN seconds at most, sooner when
-- client:timeout() asks: an answer reaches it up to GRAIN late.
local imgedit = require "imgedit"

local M = { GRAIN = 0.02, FLOOR = 0.001 }

local function host()
  local ngx = rawget(_G, "ngx")
  if type(ngx) ~= "table" or not ngx.sleep then
    error("imgedit.ngx runs inside nginx's Lua module (there is no ngx here)", 3)
  end
  if ngx.get_phase() == "init" then
    -- The master would fork its threads' client into every worker, where it
    -- is refused: each worker makes its own.
    error("imgedit.ngx: make the client in a worker (init_worker_by_lua or a handler), not in init_by_lua", 3)
  end
  return ngx
end

-- new(opts) -> a client of imgedit.new(opts) whose job:wait() sleeps in
-- nginx between polls, for as long as the client's next deadline and at
-- most GRAIN seconds.
function M.new(opts)
  local ngx = host()
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
  end
  if opts and opts.yield ~= nil then error("imgedit.ngx sets the option 'yield' itself", 2) end
  local o, client = {}, nil
  for k, v in pairs(opts or {}) do o[k] = v end
  o.yield = function()
    local s = math.min(client:timeout() or M.GRAIN, M.GRAIN)
    ngx.sleep(math.max(s, M.FLOOR))
  end
  client = imgedit.new(o)
  return client
end

local mine -- this worker's client

-- client(opts) -> this worker's client, made by its first call in the
-- process (with those opts; later calls get the same client and do not
-- read theirs). Requests share it: its max_concurrency caps the jobs the
-- worker runs at once, and the rest wait their turn.
function M.client(opts)
  host()
  if not mine or mine._closed then mine = M.new(opts) end
  return mine
end

return M
