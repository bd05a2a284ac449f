-- The pictures uploaded to a provider's Files API, remembered by SHA-256
-- so that one picture is uploaded once across the lines of a batch, its
-- parts, and later runs and batches. One file per user, append only (a
-- crash loses at most its last line):
--   {"sha256":..., "id":"file-...", "bytes":N, "expires_at":T, "service":S}  uploaded
--   {"use":"file-...", "dir":D}       a batch folder's run sends it in lines
--   {"release":"file-...", "dir":D}   that folder's results are written
--   {"gone":"file-..."}               deleted (or found expired)
-- S is a digest of the service's url and key: file ids belong to an
-- account, and the key itself is never written. A file is deleted only
-- when no folder that used it still holds it.
local core = require "imgedit.core"
local cjson = require "cjson"
local cjson_safe = require "cjson.safe"
local files = require "imgedit.files"

local M = {}

-- How long an uploaded picture lives at the provider: a week, well past a
-- batch's 24-hour window, so an abandoned run's files clean themselves up.
M.EXPIRES = 7 * 24 * 3600
-- A remembered file is used only while it outlives a batch's window.
local MARGIN = 26 * 3600

local Memory = {}
Memory.__index = Memory

-- The default place: $XDG_CACHE_HOME/imgedit, ~/.cache/imgedit, or the
-- batch's cache folder when it has one.
local function default_path(cache)
  if cache then return files.join(cache, "uploads.jsonl") end
  local base = os.getenv("XDG_CACHE_HOME")
  if not base or base == "" then
    local home = os.getenv("HOME") or os.getenv("USERPROFILE")
    if not home then return nil end
    base = files.join(home, ".cache")
  end
  return files.join(files.join(base, "imgedit"), "uploads.jsonl")
end
M.default_path = default_path

-- open(path | nil, client [, cache [, read_only]]) -> memory. A memory that
-- cannot be written works for this run alone.
function M.open(path, client, cache, read_only)
  path = path or default_path(cache)
  local self = setmetatable({ by_sha = {}, files = {}, service = core.sha256(client.base_url .. "\0"
    .. (client:_key() or "")):sub(1, 16), path = path }, Memory)
  local f = path and io.open(path, "rb")
  for line in f and f:lines() or function() end do
    local r = cjson_safe.decode(line)
    if type(r) == "table" then self:_apply(r) end
  end
  if f then f:close() end
  if path and not read_only then
    local dir = path:match("^(.*)[/\\][^/\\]+$")
    if dir then core.mkdir_p(dir) end
    self.out = core.append(path)
  end
  return self
end

function Memory:_apply(r)
  if type(r.sha256) == "string" and type(r.id) == "string" and r.service == self.service then
    local rec = { id = r.id, sha = r.sha256, expires_at = tonumber(r.expires_at), users = {} }
    self.files[r.id], self.by_sha[r.sha256] = rec, rec
  elseif type(r.use) == "string" and self.files[r.use] and type(r.dir) == "string" then
    self.files[r.use].users[r.dir] = true
  elseif type(r.release) == "string" and self.files[r.release] and type(r.dir) == "string" then
    self.files[r.release].users[r.dir] = nil
  elseif type(r.gone) == "string" and self.files[r.gone] then
    local rec = self.files[r.gone]
    self.files[r.gone] = nil
    if self.by_sha[rec.sha] == rec then self.by_sha[rec.sha] = nil end
  end
end

function Memory:_write(r)
  self:_apply(r)
  if self.out then self.out:write(cjson.encode(r), "\n") end
end

-- lookup(sha [, dir]) -> file id | nil: a live upload of these bytes,
-- claimed for dir's run.
function Memory:lookup(sha, dir)
  local rec = self.by_sha[sha]
  if not rec or (rec.expires_at and rec.expires_at - os.time() < MARGIN) then return nil end
  if dir then self:use(rec.id, dir) end
  return rec.id
end

function Memory:add(sha, id, bytes, expires_at, dir)
  self:_write { sha256 = sha, id = id, bytes = bytes, expires_at = expires_at, service = self.service }
  if dir then self:use(id, dir) end
end

function Memory:use(id, dir)
  local rec = self.files[id]
  if rec and not rec.users[dir] then self:_write { use = id, dir = dir } end
end

-- release(dir) -> {file id = true}: the files dir's run used that no other
-- folder holds; they are marked gone (the caller deletes them).
function Memory:release(dir)
  local free = {}
  for id, rec in pairs(self.files) do
    if rec.users[dir] then
      self:_write { release = id, dir = dir }
      if next(rec.users) == nil then free[id] = true end
    end
  end
  for id in pairs(free) do self:_write { gone = id } end
  return free
end

-- gone(id): the service has it no more (deleted by someone else, expired).
function Memory:gone(id)
  if self.files[id] then self:_write { gone = id } end
end

function Memory:close()
  if self.out then
    self.out:sync()
    self.out:close()
    self.out = nil
  end
end

return M
