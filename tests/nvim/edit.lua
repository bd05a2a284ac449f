-- Run by tests/nvim_spec.lua inside `nvim --headless -u NONE -i NONE
-- --listen SOCK -c "luafile tests/nvim/edit.lua"`, from the checkout,
-- on the LuaJIT build: two edits through imgedit.nvim (one a call, one
-- :ImgeditEdit on the open file) while a 10 ms timer counts ticks. The
-- spec asks _G.imgedit_probe() over RPC meanwhile. When both edits have
-- ended, the figures go to IMGEDIT_NVIM_OUT as key=value lines and the
-- editor quits; so it does on an error or after 30 s.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "build/luajit/?.so;" .. package.cpath

local uv = vim.uv or vim.loop
local out_path = assert(os.getenv("IMGEDIT_NVIM_OUT"))
local t0 = uv.hrtime()
local lines, ended, ticks = {}, 0, 0
local tick, deadline = uv.new_timer(), uv.new_timer()

local function ms() return (uv.hrtime() - t0) / 1e6 end

local function put(k, v) lines[#lines + 1] = k .. "=" .. tostring(v) end

local function quit(why)
  tick:stop()
  deadline:stop()
  put("end", why)
  put("ticks", ticks)
  put("elapsed_ms", string.format("%.1f", ms()))
  local d = require("imgedit.nvim").driver()
  put("wakes", d and d.wakes or -1)
  local f = assert(io.open(out_path .. ".tmp", "w"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  assert(os.rename(out_path .. ".tmp", out_path))
  require("imgedit.nvim").close()
  vim.cmd("qa!")
end

-- Whether vim.api works where a callback runs (it raises in a fast event).
local function api_usable()
  local ok = pcall(function()
    local b = vim.api.nvim_create_buf(false, true)
    vim.api.nvim_buf_set_lines(b, 0, -1, false, { "done" })
    vim.api.nvim_buf_delete(b, { force = true })
  end)
  return ok
end

local function one_ended(name)
  put(name .. "_ms", string.format("%.1f", ms()))
  put(name .. "_ticks", ticks)
  put(name .. "_fast", vim.in_fast_event())
  put(name .. "_api", api_usable())
  ended = ended + 1
  if ended == 2 then quit("done") end
end

_G.imgedit_probe = function() return string.format("%s %d %.1f", ended < 2 and "pending" or "done", ticks, ms()) end

local ok, err = pcall(function()
  local nv = require "imgedit.nvim"
  assert(nv.setup { base_url = os.getenv("IMGEDIT_NVIM_URL"), api_key = os.getenv("IMGEDIT_NVIM_KEY"),
    provider = "apiyi", model = "gpt-image-2-all" })
  tick:start(10, 10, function() ticks = ticks + 1 end)
  deadline:start(30000, 0, vim.schedule_wrap(function() quit("deadline") end))
  local pic = assert(os.getenv("IMGEDIT_NVIM_PIC"))
  nv.edit({ prompt = "a call", images = { pic }, size = "64x64", response_format = "b64_json" }, function(img, e)
    put("call_image", img and (img.width .. "x" .. img.height .. " " .. img.format) or "none")
    put("call_error", e and e.kind or "none")
    one_ended("call")
  end)
  -- :ImgeditEdit tells its end by vim.notify: listened to here.
  local notify = vim.notify
  vim.notify = function(msg, level, o)
    if tostring(msg):match("^imgedit: ") then
      put("command_notify", (tostring(msg):gsub("\n", " ")))
      put("command_level", level or "info")
      one_ended("command")
    end
    return notify(msg, level, o)
  end
  vim.cmd("edit " .. vim.fn.fnameescape(pic))
  vim.cmd("ImgeditEdit make it dusk")
end)
if not ok then
  put("error", (tostring(err):gsub("\n", " ")))
  quit("error")
end
