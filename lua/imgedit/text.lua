-- Text from outside (the service's messages, lineage read from a picture,
-- names in a manifest, file names) made safe to print on a terminal, and
-- the credentials of a url kept out of what is printed. Pure Lua, for
-- every Lua the library runs on: no utf8 library, no \x escapes.
local M = {}

local function hex(b) return string.format("\\x%02x", b) end

-- The length of the valid UTF-8 sequence of 2 to 4 bytes that starts at i
-- with byte b, or nil: no overlong forms, surrogates or code points past
-- U+10FFFF, which terminals may read in ways of their own.
local function utf8_len(s, i, b)
  local n
  if b >= 0xC2 and b <= 0xDF then n = 2
  elseif b >= 0xE0 and b <= 0xEF then n = 3
  elseif b >= 0xF0 and b <= 0xF4 then n = 4
  else return nil end
  local lo, hi = 0x80, 0xBF
  if b == 0xE0 then lo = 0xA0 elseif b == 0xED then hi = 0x9F
  elseif b == 0xF0 then lo = 0x90 elseif b == 0xF4 then hi = 0x8F end
  local b2 = s:byte(i + 1)
  if not b2 or b2 < lo or b2 > hi then return nil end
  for k = 2, n - 1 do
    local c = s:byte(i + k)
    if not c or c < 0x80 or c > 0xBF then return nil end
  end
  return n
end

-- escape(s [, multiline]) -> s with every control shown as \xHH, never
-- emitted: C0 but tab (and newline when a multi-line message is meant),
-- DEL, C1 (U+0080..U+009F, shown as its two bytes), and every byte that is
-- not part of valid UTF-8 (a raw 0x9B is CSI to an 8-bit terminal).
-- Valid UTF-8 text (an accented prompt) stays as it is. A string with
-- nothing to escape is returned as it came, at the cost of one find.
function M.escape(s, multiline)
  s = tostring(s)
  if not s:find("[%z\1-\8\10-\31\127-\255]") then return s end
  local out, i, len = {}, 1, #s
  while i <= len do
    local b = s:byte(i)
    if b == 9 or (b == 10 and multiline) or (b >= 32 and b < 127) then
      out[#out + 1] = string.char(b)
      i = i + 1
    elseif b < 128 then
      out[#out + 1] = hex(b)
      i = i + 1
    else
      local n = utf8_len(s, i, b)
      if not n then
        out[#out + 1] = hex(b)
        i = i + 1
      elseif b == 0xC2 and s:byte(i + 1) <= 0x9F then -- C1 as UTF-8
        out[#out + 1] = hex(b) .. hex(s:byte(i + 1))
        i = i + 2
      else
        out[#out + 1] = s:sub(i, i + n - 1)
        i = i + n
      end
    end
  end
  return table.concat(out)
end

-- redact(s) -> s with the user and password of every url in it replaced:
-- scheme://user:password@host becomes scheme://***@host. The user goes
-- too, as it may be a token itself (https://TOKEN@host). The userinfo
-- ends at the last @ before the host's end, so a raw @ in a password is
-- covered as well.
function M.redact(s)
  if type(s) ~= "string" or not s:find("@", 1, true) then return s end
  return (s:gsub("(%a[%w+.-]*://)([^/?#%s]*)@", "%1***@"))
end

-- safe(s [, multiline]) -> s redacted, then escaped: what every line the
-- library or the command line prints goes through.
function M.safe(s, multiline) return M.escape(M.redact(tostring(s)), multiline) end

-- quote(s) -> s in double quotes, safe, its quotes and backslashes escaped
-- as %q would (so a real ESC, \x1b, differs from the text "\x1b", \\x1b).
function M.quote(s) return '"' .. M.safe((tostring(s):gsub('[\\"]', "\\%0"))) .. '"' end

-- json(encoded) -> the same JSON, its C1 characters written \u009b: cjson
-- escapes C0 and DEL but leaves U+0080..U+009F raw, which some terminals
-- obey. 0xC2 is never a continuation byte, so each match is one character
-- inside a string, and the JSON decodes to exactly the same values.
function M.json(s)
  return (s:gsub("\194([\128-\159])", function(c) return string.format("\\u%04x", c:byte()) end))
end

return M
