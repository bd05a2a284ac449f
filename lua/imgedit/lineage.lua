-- Lineage: how a picture was made, carried inside the file (an XMP packet:
-- PNG iTXt, JPEG APP1, WebP XMP; src/meta.c places it). The record is
-- canonical JSON (sorted keys) with no clock in it, so the same step gives
-- the same bytes on every run and the pipeline's cache keys stay put.
local core = require "imgedit.core"
local cjson = require "cjson.safe"

local M = {}

local NS = "https://imgedit.dev/ns/lineage/1.0/"

-- Canonical JSON: sorted keys, so equal records are equal bytes (and
-- equal requests equal cache keys: store.lua uses it too).
local function canon(v)
  if type(v) ~= "table" then return cjson.encode(v) end
  if #v > 0 or next(v) == nil then
    local parts = {}
    for i = 1, #v do parts[i] = canon(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = cjson.encode(k) .. ":" .. canon(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

M.canon = canon

local function xml_escape(s) return (s:gsub("[&<>]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;" })) end
local function xml_unescape(s)
  return (s:gsub("&(%a+);", { amp = "&", lt = "<", gt = ">", quot = '"', apos = "'" }))
end

-- packet(record) -> the XMP packet that carries it
function M.packet(t)
  return '<?xpacket begin="\239\187\191" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    .. '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    .. '<rdf:Description rdf:about="" xmlns:imgedit="' .. NS .. '"><imgedit:lineage>' .. xml_escape(canon(t))
    .. '</imgedit:lineage></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
end

-- What each field of a record must be. A picture may come from anywhere:
-- a field of another type is left out (and named), never used.
local FIELDS = { v = "number", prompt = "string", model = "string", params = "table", step = "string",
  parents = "strings", mask = "string", request_id = "string", mask_drift = "number", mask_spill = "number",
  preserved = "table" }

-- sane(t, fields) -> t with only the fields of the right type, and the
-- names of those left out (sorted). "strings": a list of strings; "table":
-- one whose values are strings, numbers or booleans; "map": any table.
function M.sane(t, fields)
  local out, dropped = {}, {}
  for k, v in pairs(t) do
    local want, ok = fields[k], false
    if want == "strings" then
      ok = type(v) == "table"
      for i, s in pairs(ok and v or {}) do ok = ok and type(i) == "number" and type(s) == "string" end
    elseif want == "map" then -- any table; its fields are the reader's to check
      ok = type(v) == "table"
    elseif want == "table" then
      ok = type(v) == "table"
      for _, s in pairs(ok and v or {}) do ok = ok and (type(s) == "string" or type(s) == "number" or type(s) == "boolean") end
    else
      ok = want ~= nil and type(v) == want
    end
    if ok then out[k] = v elseif want and v ~= cjson.null then dropped[#dropped + 1] = tostring(k) end
  end
  table.sort(dropped)
  return out, dropped
end

-- parse(packet) -> record, dropped | nil
function M.parse(x)
  local body = type(x) == "string" and x:match("<imgedit:lineage>(.-)</imgedit:lineage>")
  if not body then return nil end
  local t = cjson.decode(xml_unescape(body))
  if type(t) ~= "table" then return nil end
  return M.sane(t, FIELDS)
end

-- read(bytes) -> record, dropped | nil
function M.read(bytes) return M.parse(core.xmp_read(bytes)) end

-- strip(bytes) -> the picture without the lineage written into it: the
-- bytes the service made (WebP: in their simple form when that says all,
-- src/meta.c), what an edit sends and what cache keys hash, so that one
-- picture has one key however often, and with whatever history, it was
-- saved. The same string when it carries none.
function M.strip(bytes) return core.xmp_strip(bytes, NS) end

-- sha256(bytes) -> the SHA-256 of strip(bytes).
function M.sha256(bytes) return core.sha256(M.strip(bytes)) end

-- sha256_file(path) -> the same of a file | nil, message
function M.sha256_file(path)
  local bytes, msg = core.read_file(path)
  if not bytes then return nil, msg end
  return M.sha256(bytes)
end

local function share(x) return x and tonumber(string.format("%.6f", x)) end

-- record{...} -> the lineage of a picture: prompt, model, params (the
-- request's other fields), step, parents (the inputs' SHA-256s, in order),
-- mask (its SHA-256), request_id; from `held`, the Image of an edit with a
-- mask: mask_drift, mask_spill, and preserved ({feather=, scaled=}) when
-- it was composited onto image 1. Only what is known is kept.
function M.record(o)
  local params = {}
  for k, v in pairs(o.params or {}) do
    if k ~= "prompt" and k ~= "model" and (type(v) == "string" or type(v) == "number" or type(v) == "boolean") then
      params[k] = v
    end
  end
  local held = o.held or {}
  return { v = 1, prompt = o.prompt, model = o.model, params = params, step = o.step, parents = o.parents or {},
    mask = o.mask, request_id = o.request_id, mask_drift = share(held.mask_drift), mask_spill = share(held.mask_spill),
    preserved = held.preserved }
end


return M
