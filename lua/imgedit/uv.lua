-- A client driven by a libuv loop (luv, Neovim's vim.uv / vim.loop,
-- luvit): a poll handle waits on client:fd(), a timer on client:timeout(),
-- and poll(0) runs only when one of them fires, so the loop sleeps while
-- the model works. With no job live both handles stop: an idle client
-- costs the loop nothing. Pure Lua, on whatever binding the caller passes.
local errors = require "imgedit.errors"

local M = {}

local Driver = {}
Driver.__index = Driver

local function direct(fn) fn() end

-- attach(client, uv [, {schedule = fn}]) -> driver | nil, err (kind "io":
-- no descriptor to wait on). schedule(fn) is how a job's callback is called:
-- at once by default; Neovim passes vim.schedule, since handles' callbacks
-- run in a fast event where most of vim.api is refused.
function M.attach(client, uv, opts)
  if type(client) ~= "table" or type(client.fd) ~= "function" or type(client.poll) ~= "function" then
    error("bad argument #1 to 'attach' (an imgedit client expected)", 2)
  end
  -- On Windows fd() is a socket, which libuv polls only as one; elsewhere
  -- the two calls are the same.
  local new_poll = type(uv) == "table" and (uv.new_socket_poll or uv.new_poll)
  if type(new_poll) ~= "function" or type(uv.new_timer) ~= "function" then
    error("bad argument #2 to 'attach' (a libuv binding expected: luv, vim.uv or vim.loop)", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error("bad argument #3 to 'attach' (table expected)", 2) end
  local schedule = opts and opts.schedule or direct
  if type(schedule) ~= "function" then error("bad argument #3 to 'attach' (schedule: function expected)", 2) end
  local fd, err = client:fd()
  if not fd then return nil, err end
  local poll, perr = new_poll(fd)
  if not poll then return nil, errors.new("io", "cannot watch the client's descriptor: " .. tostring(perr)) end
  -- wakes counts the poll(0) calls it made: a figure to see that it
  -- does not spin.
  local d = setmetatable({ client = client, wakes = 0, _schedule = schedule, _watching = false,
    _pending = {}, _order = {}, _poll = poll, _timer = uv.new_timer() }, Driver)
  -- One function per handle, made once: re-arming the timer allocates nothing.
  d._step = function() d:_wake() end
  return d
end

-- Hands each ended job of this driver to its callback, in submit order.
-- Called last in a wake, after the handles are set: a callback may submit.
local function deliver(d)
  local ended, keep = {}, {}
  for _, job in ipairs(d._order) do
    if job:done() then ended[#ended + 1] = job else keep[#keep + 1] = job end
  end
  if #ended == 0 then return end
  d._order = keep
  -- A callback that raises must not cost the others theirs: the first error
  -- is raised again once all were called.
  local first
  for _, job in ipairs(ended) do
    local cb = d._pending[job]
    d._pending[job] = nil
    local ok, e = pcall(d._schedule, function() cb(job:result()) end)
    if not ok and first == nil then first = e end
  end
  if first ~= nil then error(first, 0) end
end

function Driver:_stop()
  self._poll:stop()
  self._timer:stop()
  self._watching = false
end

-- One wake: poll, then sleep until the descriptor or the client's clock.
function Driver:_wake()
  if self._closed then return end
  if self.client._closed then -- the caller closed the client first: its jobs ended canceled
    self:_stop()
    return deliver(self)
  end
  self.wakes = self.wakes + 1
  local live = self.client:poll(0)
  self._timer:stop()
  if live == 0 then
    self:_stop()
  else
    local t = self.client:timeout()
    if t then self._timer:start(math.ceil(t * 1000), 0, self._step) end
  end
  deliver(self)
end

-- watch(): start waiting on the client again, for jobs submitted on the
-- client itself; submit does it. The first poll comes from the loop, never
-- from inside the call, so a callback never runs before submit returns.
function Driver:watch()
  if self._closed then error("driver is closed (watch after close)", 2) end
  if self._watching then return end
  self._watching = true
  self._poll:start("r", self._step)
  self._timer:start(0, 0, self._step)
end

-- submit(kind, req [, callback]) -> job. callback(img, err) is called once,
-- through schedule, when the job ends; a request that fails the local
-- checks ends at once and is called back from the loop all the same.
function Driver:submit(kind, req, callback)
  if self._closed then error("driver is closed (submit after close)", 2) end
  if callback ~= nil and type(callback) ~= "function" then
    error("bad argument #3 to 'submit' (function expected, got " .. type(callback) .. ")", 2)
  end
  local job = self.client:submit(kind, req)
  if callback then
    self._pending[job] = callback
    self._order[#self._order + 1] = job
  end
  self:watch()
  return job
end

-- close(): cancels the jobs submitted here that still run (each callback
-- gets nil, err of kind "canceled": nobody would poll them again) and
-- closes both handles. The client stays open: it is the caller's.
-- Idempotent.
function Driver:close()
  if self._closed then return end
  self._closed = true
  for _, job in ipairs(self._order) do
    if not self.client._closed then job:cancel("the driver was closed") end
  end
  self:_stop()
  self._poll:close()
  self._timer:close()
  deliver(self)
end

return M
