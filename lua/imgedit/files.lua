-- The one place that writes the files a run makes: pictures, sidecars,
-- journals, reports, cache entries, contact sheets. What it promises:
-- - a name given for a file or folder is checked once, the same way
--   everywhere (check_name), so nothing lands outside the folder given;
-- - nothing is written through a link: a file is written beside its place
--   and renamed over it (core.write_atomic), which replaces a planted link
--   rather than following it; journals are opened with O_NOFOLLOW
--   (core.append);
-- - a file the run did not make is not replaced unless the caller said so
--   (overwrite), and a file the run reads as an input never is: files are
--   compared by identity (device and inode), not by how a path is spelt.
local core = require "imgedit.core"
local errors = require "imgedit.errors"

local M = {}

-- Names Windows keeps for devices, whatever the extension.
local RESERVED = { con = true, prn = true, aux = true, nul = true }
for i = 1, 9 do RESERVED["com" .. i], RESERVED["lpt" .. i] = true, true end

-- check_name(name) -> name | nil, why: a name for a file or folder that a
-- run makes inside a folder it was given (a step, a branch, a batch job).
function M.check_name(name)
  if type(name) ~= "string" then return nil, "a name must be a string, not " .. type(name) end
  if name == "" then return nil, "a name cannot be empty" end
  if #name > 200 then return nil, "a name may have at most 200 bytes" end
  if name:sub(1, 1) == "." then return nil, "a name cannot start with a dot (hidden files, . and ..)" end
  if name:find("[/\\]") then return nil, "a name cannot hold a path separator (/ or \\)" end
  if name:find("[%c\127]") then return nil, "a name cannot hold control characters" end
  if name:find('[<>:"|?*]') then return nil, 'a name cannot hold < > : " | ? * (Windows refuses them)' end
  if name:find("[ .]$") then return nil, "a name cannot end with a dot or a space (Windows drops them)" end
  if RESERVED[(name:match("^[^.]*") or ""):lower()] then
    return nil, "a name cannot be one Windows keeps for a device (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
  end
  return name
end

-- join(dir, name) -> dir/name. A folder given with a trailing slash
-- ("out/") gives "out/name", never "out//name": the paths a run prints and
-- records are spelt once, as a person would write them.
function M.join(dir, name) return (dir:gsub("/+$", "")) .. "/" .. name end

-- same(a, b): whether two recorded spellings name one path, runs of
-- slashes counting as one (a run given "out/" before join recorded
-- "out//name").
function M.same(a, b)
  return a == b or (type(a) == "string" and type(b) == "string" and a:gsub("/+", "/") == b:gsub("/+", "/"))
end

-- name(name, what) -> name, or raises: check_name for an argument.
function M.name(name, what, level)
  local ok, why = M.check_name(name)
  if not ok then
    error(string.format("bad %s %s: %s", what, type(name) == "string" and string.format("%q", name) or "", why),
      (level or 1) + 1)
  end
  return name
end

local Run = {}
Run.__index = Run
M.Run = Run

-- run{overwrite = false} -> a run: what it made, and what it reads.
function M.run(o)
  return setmetatable({ overwrite = o and o.overwrite == true, made = {}, inputs = {} }, Run)
end

-- input(path): path is read by the run, so no output may replace it.
function Run:input(path)
  local st = type(path) == "string" and core.stat(path)
  if st and not st.dir then self.inputs[st.id] = path end
end

-- may_write(path [, ours]) -> true | nil, err (kind "io", param "output"):
-- whether the run may write path. ours(path) says whether a file there is
-- one the library made (an earlier run's output, unchanged): it is
-- replaced like one this run made.
function Run:may_write(path, ours)
  local st = core.stat(path, true)
  if not st then return true end
  local target = st.link and core.stat(path) or st
  if target and self.inputs[target.id] then
    return nil, errors.new("io", string.format("%s is %s, an input of this run: an output never replaces an input",
      path, self.inputs[target.id]), { param = "output" })
  end
  if st.dir then return nil, errors.new("io", path .. " is a folder", { param = "output" }) end
  if self.made[path] or self.overwrite or (not st.link and ours and ours(path)) then return true end
  return nil, errors.new("io", string.format("%s exists and this run did not make it; pass overwrite = true"
    .. " (--force) to replace it", path), { param = "output" })
end

-- write(path, bytes [, ours]) -> true | nil, err: may_write, then the bytes
-- beside it, renamed over it (a link there is replaced, not followed).
function Run:write(path, bytes, ours)
  local ok, err = self:may_write(path, ours)
  if not ok then return nil, err end
  local msg
  ok, msg = core.write_atomic(path, bytes)
  if not ok then return nil, errors.new("io", path .. ": " .. tostring(msg), { param = "output" }) end
  self.made[path] = true
  return true
end

-- own(path, bytes) -> true | nil, message: a file whose name the library
-- keeps for itself in a folder it owns (a journal, a report, a cache
-- entry): replaced, never written through a link.
function M.own(path, bytes) return core.write_atomic(path, bytes) end

return M
