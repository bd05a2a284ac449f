-- imgedit in Neovim: one client driven by the editor's own libuv loop
-- (imgedit.uv), so edits run while the editor answers keys and commands.
-- Callbacks come through vim.schedule, where vim.api may be called. A
-- request's own on_progress, on_partial and on_retry run inside poll, in
-- a fast event: wrap what they do with vim.schedule there.
local drive = require "imgedit.uv"

local M = {}

local client, driver

-- setup([opts]) -> the client | nil, err. opts are imgedit.new's (a bad
-- one raises). Again: the old client's live jobs are canceled, their
-- callbacks called. Defines :ImgeditEdit.
function M.setup(opts)
  M.close()
  local c = require("imgedit").new(opts)
  local d, err = drive.attach(c, vim.uv or vim.loop, { schedule = vim.schedule })
  if not d then
    c:close()
    return nil, err
  end
  client, driver = c, d
  -- :ImgeditEdit {prompt}: the current buffer's picture, edited, saved
  -- beside it under a name no file has yet.
  vim.api.nvim_create_user_command("ImgeditEdit", function(cmd)
    local path = vim.fn.expand("%:p")
    if path == "" then return vim.notify("imgedit: this buffer has no file to edit", vim.log.levels.ERROR) end
    M.edit_file(path, cmd.args)
  end, { nargs = "+", desc = "imgedit: edit the current file's picture with a prompt" })
  return c
end

-- The client made on first use when setup was not called (its key from
-- IMGEDIT_API_KEY). A failure to make it is the job's error.
local function ensure()
  if driver then return true end
  local c, err = M.setup()
  if not c then return nil, err end
  return true
end

-- submit(kind, req [, callback]) -> job | nil, err; callback(img, err)
-- runs once, through vim.schedule.
function M.submit(kind, req, callback)
  local ok, err = ensure()
  if not ok then
    if callback then vim.schedule(function() callback(nil, err) end) end
    return nil, err
  end
  return driver:submit(kind, req, callback)
end

function M.edit(req, callback) return M.submit("edit", req, callback) end
function M.generate(req, callback) return M.submit("generate", req, callback) end

-- edit_file(path, prompt [, callback]): :ImgeditEdit's work. Saves the
-- answer as <name>-edit.<ext> (-edit-2 ... when taken) and says where, or
-- why not. callback(saved_path, err) after that.
function M.edit_file(path, prompt, callback)
  if type(path) ~= "string" or path == "" then error("bad argument #1 to 'edit_file' (a file expected)", 2) end
  return M.edit({ prompt = prompt, images = { path } }, function(img, err)
    local out
    if img then
      local stem = path:gsub("%.[^./]*$", "")
      local n = 1
      repeat
        out = stem .. "-edit" .. (n > 1 and "-" .. n or "") .. "." .. img.format
        n = n + 1
      until vim.fn.filereadable(out) == 0
      local ok
      ok, err = img:save(out)
      if not ok then out = nil end
    end
    if out then
      vim.notify("imgedit: saved " .. out)
    else
      vim.notify("imgedit: " .. tostring(err), vim.log.levels.ERROR)
    end
    if callback then callback(out, err) end
  end)
end

-- close(): cancels the live jobs, closes the handles and the client.
function M.close()
  if driver then driver:close() end
  if client then client:close() end
  client, driver = nil, nil
end

-- The client, for what this module does not wrap (rules, download ...).
function M.client() return client end

-- The driver, whose wakes count the loop's calls to poll.
function M.driver() return driver end

return M
